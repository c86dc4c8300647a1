"""The CUDA kernels of GEMM, Linear, BatchNorm1d, the losses and the optimizers, on device "cuda".

Every op is checked twice: against torch autograd in float64 (the truth) and against fastnn's own CPU
kernel on the same inputs. In CI "cuda" is the CPU emulation of CUDA (FASTNN_CUDA=EMULATE), run
under CUEMU_SCHEDULE=forward, reverse and random: a missing barrier shows up as a result that
changes with the schedule. The emulator costs ~40 ns per thread per sync point, so shapes stay
small, with a few chosen to cross the kernels' internal boundaries (GEMM tile configurations and
vector paths, multi-chunk column reductions, multi-block loss reductions).

float32 tolerances: on a GPU, nvcc contracts a * b + c into one FMA (rounded once instead of
twice), so float32 sums differ from the CPU's, and from torch's, by a few float32 ulps of the
running sum: 1e-5 relative to max|result|, growing like sqrt(k) for sums of k terms.
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastnn
from fastnn import _C
from utils import assert_close, randn

pytestmark = pytest.mark.skipif(not fastnn.build_info()["cuda_available"],
                                reason="no CUDA device in this build (real or emulated)")

ACTIVATIONS = ["none", "relu", "tanh", "sigmoid"]
TORCH_ACT = {"none": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
TRANS = [(False, False), (False, True), (True, False), (True, True)]


def rtol_for(dtype, k):
    """float32 sums of k terms: rounding relative to max|result| grows about like sqrt(k)."""
    return 1e-5 * max(1.0, math.sqrt(k / 64)) if dtype == "float32" else 1e-10


def cu(a):
    """A copy of numpy array `a` on the CUDA device (dtype kept, 0-d kept); None stays None."""
    if a is None:
        return None
    return _C.from_dlpack(np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a), copy=True).to("cuda")


def host(t):
    """A CUDA (or CPU) tensor as a numpy array on the host; None stays None."""
    if t is None:
        return None
    assert str(t.device).startswith("cuda"), f"expected a CUDA result, got {t.device}"
    return np.asarray(t.to("cpu"))


def t64(a, requires_grad=False):
    t = torch.tensor(np.asarray(a), dtype=torch.float64)
    return t.requires_grad_(requires_grad) if requires_grad else t


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- GEMM ----------------------------------------------------------------------------------------

# (M, N, K): 1, 7, 33, 70 and no multiple of a 32 or 64 tile, a 16-wide K slab or a 4-wide vector;
# (64, 128, 32) and (33, 68, 36) take the 16-byte load and store paths, (130, 260, 70) several tiles
# each way with 16-byte stores but scalar loads.
GEMM_SHAPES = [(1, 1, 1), (1, 7, 33), (7, 33, 70), (33, 70, 7), (70, 1, 33), (64, 128, 32), (33, 68, 36),
               (130, 260, 70)]


def gemm_reference(a, b, ta, tb, alpha=1.0, beta=0.0, c=None):
    at, bt = t64(a), t64(b)
    out = alpha * ((at.T if ta else at) @ (bt.T if tb else bt))
    return out + beta * t64(c) if c is not None and beta != 0 else out


def gemm_operands(rng, m, n, k, ta, tb, dtype):
    return randn(rng, (k, m) if ta else (m, k), dtype), randn(rng, (n, k) if tb else (k, n), dtype)


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_matches_torch_and_cpu(ta, tb, dtype, rng):
    for (m, n, k), (alpha, beta) in zip(GEMM_SHAPES, [(1.0, 0.0), (0.5, 2.0), (-1.5, 1.0), (2.0, -0.25)] * 2):
        a, b = gemm_operands(rng, m, n, k, ta, tb, dtype)
        c0 = randn(rng, (m, n), dtype)
        c = cu(c0)
        got = _C.gemm(cu(a), cu(b), c, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        what = f"gemm {m}x{n}x{k} ta={ta} tb={tb} alpha={alpha} beta={beta}"
        assert_close(host(c), gemm_reference(a, b, ta, tb, alpha, beta, c0), dtype, rtol_for(dtype, k), what=what)
        assert same_bits(host(got), host(c)), "a given c is updated in place and returned"
        c_cpu = c0.copy()
        _C.gemm(a, b, c_cpu, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        assert_close(host(c), c_cpu, dtype, rtol_for(dtype, k), what=what + " vs CPU")


@pytest.mark.parametrize("m,n,k,ta,tb", [(1030, 2050, 16, False, True), (1030, 2050, 9, True, False),
                                          (1030, 800, 16, False, True), (1030, 800, 9, True, False),
                                          (520, 1030, 32, False, False), (520, 1030, 33, True, True),
                                          (1030, 800, 520, True, True), (1030, 800, 700, False, False),
                                          (1030, 800, 600, True, False)])
def test_gemm_float32_tile_configurations(m, n, k, ta, tb, rng):
    """Enough tiles for the 128 x 128 (1030 x 2050), 128 x 64 (1030 x 800) and 64 x 64 (520 x 1030)
    float32 configurations (the shapes above use 32 x 32), with 16-byte loads (K = 16, 32) and
    scalar ones (K = 9, 33); 128 x 64 with K in two chunks (K = 520, 700: one wave of tiles), and
    128 x 128 with K in four for dY^T X there (K = 600)."""
    a, b = gemm_operands(rng, m, n, k, ta, tb, "float32")
    got = host(_C.gemm(cu(a), cu(b), trans_a=ta, trans_b=tb))
    assert_close(got, gemm_reference(a, b, ta, tb), "float32", rtol_for("float32", k))


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_split_k(ta, tb, dtype, rng):
    """Few output tiles and a long K (an MLP layer at small batch, the 10-wide output layer) split
    K across blocks: chunks of a multiple of the slab depth, the last one short, and a reduction
    that applies alpha, beta, bias and the activation; the same bits on every call."""
    for (m, n, k), (alpha, beta) in zip([(7, 33, 300), (128, 10, 1024), (70, 130, 257), (1, 1, 129)],
                                        [(1.0, 0.0), (0.5, 2.0), (-1.5, 1.0), (2.0, -0.25)]):
        a, b = gemm_operands(rng, m, n, k, ta, tb, dtype)
        c0 = randn(rng, (m, n), dtype)
        c = cu(c0)
        _C.gemm(cu(a), cu(b), c, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        what = f"split-K gemm {m}x{n}x{k} ta={ta} tb={tb}"
        assert_close(host(c), gemm_reference(a, b, ta, tb, alpha, beta, c0), dtype, rtol_for(dtype, k), what=what)
        again = cu(c0)
        _C.gemm(cu(a), cu(b), again, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        assert same_bits(host(again), host(c)), what + ": not deterministic"


def test_linear_split_k_fuses_bias_and_relu(dtype, rng):
    x, w, bias = randn(rng, (9, 700), dtype), randn(rng, (20, 700), dtype), randn(rng, (20,), dtype)
    y = host(_C.linear_forward(cu(x), cu(w), cu(bias), "relu"))
    ref = torch.relu(t64(x) @ t64(w).T + t64(bias))
    assert_close(y, ref, dtype, rtol_for(dtype, 700), what="linear 9x700->20 relu")


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_beta_zero_never_reads_c(ta, tb, dtype, rng):
    for m, n, k in [(7, 33, 13), (64, 128, 32), (130, 70, 33)]:
        a, b = gemm_operands(rng, m, n, k, ta, tb, dtype)
        c = cu(np.full((m, n), np.nan, dtype))
        _C.gemm(cu(a), cu(b), c, alpha=1.5, beta=0.0, trans_a=ta, trans_b=tb)
        out = host(c)
        assert np.isfinite(out).all(), "beta=0 must overwrite C, NaN included"
        assert_close(out, gemm_reference(a, b, ta, tb, 1.5), dtype, rtol_for(dtype, k))


def test_gemm_k_zero_scales_c(dtype, rng):
    c0 = randn(rng, (7, 33), dtype)
    c = cu(c0)
    _C.gemm(cu(np.zeros((7, 0), dtype)), cu(np.zeros((0, 33), dtype)), c, alpha=3.0, beta=-2.0)
    assert_close(host(c), -2.0 * c0.astype(np.float64), dtype)


def test_gemm_unaligned_operands(dtype, rng):
    """Operands viewed one element past a 16-byte boundary take the scalar loads; results agree."""
    m, n, k = 33, 64, 32
    a, b = gemm_operands(rng, m, n, k, False, False, dtype)
    size = np.dtype(dtype).itemsize
    padded = cu(np.concatenate([np.zeros(1, dtype), a.ravel()]))
    a_view = _C._tensor_view(padded._storage_bytes(), padded._byte_offset + size, [m, k], dtype)
    assert_close(host(_C.gemm(a_view, cu(b))), gemm_reference(a, b, False, False), dtype, rtol_for(dtype, k))


def test_gemm_nan_propagates(dtype, rng):
    a, b = gemm_operands(rng, 33, 70, 36, False, False, dtype)
    a[5, 7] = np.nan
    out = host(_C.gemm(cu(a), cu(b)))
    assert np.isnan(out[5]).all() and np.isfinite(np.delete(out, 5, axis=0)).all()


# Stream-K (gemm_streamk.cuh): with FASTNN_GEMM_STREAMK=1 it replaces the K split at the one-wave
# float32 shapes (96-119 tiles of 128 x 64; too large to emulate); `always` sends every float32
# GEMM with K > 0 there, so these shapes check its ranges (one block per SM of the emulated GPU's
# 4 SMs x 2: ranges that start and end inside tiles, tiles shared by several blocks, ragged K)
# and its epilogue (alpha, beta, NaN in a beta = 0 C, bias and ReLU) against torch.
STREAMK_SHAPES = [(1, 7, 33), (7, 33, 70), (130, 260, 70), (64, 128, 32), (200, 70, 300)]


@pytest.fixture
def streamk_always(monkeypatch):
    monkeypatch.setenv("FASTNN_GEMM_STREAMK", "always")


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_streamk_matches_torch(streamk_always, ta, tb, rng):
    for (m, n, k), (alpha, beta) in zip(STREAMK_SHAPES, [(1.0, 0.0), (0.5, 2.0), (-1.5, 1.0), (2.0, -0.25), (1.0, 0.0)]):
        a, b = gemm_operands(rng, m, n, k, ta, tb, "float32")
        c0 = randn(rng, (m, n), "float32")
        if beta == 0.0:
            c0[:] = np.nan  # never read
        c = cu(c0)
        _C.gemm(cu(a), cu(b), c, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        what = f"stream-K gemm {m}x{n}x{k} ta={ta} tb={tb} alpha={alpha} beta={beta}"
        ref = gemm_reference(a, b, ta, tb, alpha, beta, None if beta == 0.0 else c0)
        assert_close(host(c), ref, "float32", rtol_for("float32", k), what=what)
        again = cu(c0)
        _C.gemm(cu(a), cu(b), again, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        assert same_bits(host(again), host(c)), what + ": not deterministic"


def test_linear_streamk_fuses_bias_and_relu(streamk_always, rng):
    x, w, bias = randn(rng, (130, 300), "float32"), randn(rng, (70, 300), "float32"), randn(rng, (70,), "float32")
    y = host(_C.linear_forward(cu(x), cu(w), cu(bias), "relu"))
    ref = torch.relu(t64(x) @ t64(w).T + t64(bias))
    assert_close(y, ref, "float32", rtol_for("float32", 300), what="stream-K linear 130x300->70 relu")


def test_gemm_streamk_off_and_k_zero(monkeypatch, rng):
    """`0` is off (the production tiles' bits, which stream-K's partial sums do not give), and a
    K = 0 product still scales C under `always` (stream-K has no iterations: the tiles do it)."""
    a, b = gemm_operands(rng, 200, 70, 300, False, True, "float32")
    outs = {}
    for mode in ("0", "always", ""):
        monkeypatch.setenv("FASTNN_GEMM_STREAMK", mode)
        outs[mode] = host(_C.gemm(cu(a), cu(b), trans_b=True))
    assert same_bits(outs["0"], outs[""])
    assert not same_bits(outs["0"], outs["always"])
    monkeypatch.setenv("FASTNN_GEMM_STREAMK", "always")
    c0 = randn(rng, (7, 33), "float32")
    c = cu(c0)
    _C.gemm(cu(np.zeros((7, 0), np.float32)), cu(np.zeros((0, 33), np.float32)), c, alpha=3.0, beta=-2.0)
    assert_close(host(c), -2.0 * c0.astype(np.float64), "float32")


@pytest.mark.parametrize("var,value,call", [
    ("FASTNN_GEMM_STREAMK", "off", "gemm"), ("FASTNN_GEMM_STREAMK", "2", "gemm"),
    ("FASTNN_BN_PIPELINE_ABOVE", "off", "batchnorm"), ("FASTNN_BN_PIPELINE_ABOVE", "-1", "batchnorm"),
    ("FASTNN_BN_PIPELINE_ABOVE", "64MB", "batchnorm"), ("FASTNN_BN_PIPELINE_LOOKAHEAD", "0", "batchnorm")])
def test_candidate_switches_reject_values_they_do_not_take(monkeypatch, rng, var, value, call):
    """A switch set to a value it does not take raises, naming it: a lenient parse would read 'off'
    as 0, which for FASTNN_BN_PIPELINE_ABOVE means on for every input."""
    monkeypatch.setenv("FASTNN_BN_PIPELINE_ABOVE", "0")  # so that the lookahead is read
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        if call == "gemm":
            _C.gemm(cu(randn(rng, (7, 5), "float32")), cu(randn(rng, (5, 3), "float32")))
        else:
            _C.batchnorm_forward(cu(randn(rng, (9, 8), "float32")), None, None, None, None, True)


# ---- Linear --------------------------------------------------------------------------------------

# (N, in, out); N = 1100 splits the bias-gradient column sums into row chunks (a second launch).
LINEAR_SHAPES = [(1, 7, 33), (7, 33, 1), (33, 70, 7), (1100, 5, 7)]


def torch_linear(x, w, b, act, dy):
    xt, wt = t64(x, True), t64(w, True)
    bt = t64(b, True) if b is not None else None
    y = TORCH_ACT[act](F.linear(xt, wt, bt))
    y.backward(t64(dy))
    return y.detach(), xt.grad, wt.grad, (bt.grad if bt is not None else None)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_matches_torch_and_cpu(act, dtype, rng):
    for (n, fin, fout), with_bias in zip(LINEAR_SHAPES, [True, False, True, True]):
        x, w = randn(rng, (n, fin), dtype), randn(rng, (fout, fin), dtype, 1 / math.sqrt(fin))
        b = randn(rng, (fout,), dtype) if with_bias else None
        dy = randn(rng, (n, fout), dtype)
        what = f"{act} {(n, fin, fout)} bias={with_bias}"
        ry, rdx, rdw, rdb = torch_linear(x, w, b, act, dy)

        y = _C.linear_forward(cu(x), cu(w), cu(b), act)
        assert_close(host(y), ry, dtype, rtol_for(dtype, fin), what="y " + what)
        y_cpu = np.asarray(_C.linear_forward(x, w, b, act))
        assert_close(host(y), y_cpu, dtype, rtol_for(dtype, fin), what="y vs CPU " + what)

        dx, dw, db = _C.linear_backward(cu(x), cu(w), cu(dy), y if act != "none" else None, act,
                                        need_dbias=with_bias)
        assert_close(host(dx), rdx, dtype, rtol_for(dtype, fout), what="dx " + what)
        assert_close(host(dw), rdw, dtype, rtol_for(dtype, n), what="dweight " + what)
        cdx, cdw, cdb = _C.linear_backward(x, w, dy, y_cpu if act != "none" else None, act, need_dbias=with_bias)
        assert_close(host(dx), cdx, dtype, rtol_for(dtype, fout), what="dx vs CPU " + what)
        assert_close(host(dw), cdw, dtype, rtol_for(dtype, n), what="dweight vs CPU " + what)
        if with_bias:
            assert_close(host(db), rdb, dtype, rtol_for(dtype, n), what="dbias " + what)
            assert_close(host(db), cdb, dtype, rtol_for(dtype, n), what="dbias vs CPU " + what)
        else:
            assert db is None


@pytest.mark.parametrize("n", [33, 1100])
def test_linear_backward_accumulates(n, dtype, rng):
    fin, fout = 9, 7
    x, w, b = randn(rng, (n, fin), dtype), randn(rng, (fout, fin), dtype), randn(rng, (fout,), dtype)
    dy = randn(rng, (n, fout), dtype)
    _, _, rdw, rdb = torch_linear(x, w, b, "tanh", dy)
    y = _C.linear_forward(cu(x), cu(w), cu(b), "tanh")
    dw0, db0 = randn(rng, (fout, fin), dtype), randn(rng, (fout,), dtype)
    dw, db = cu(dw0), cu(db0)
    for times in (1, 2):
        _C.linear_backward(cu(x), cu(w), cu(dy), y, "tanh", dweight=dw, dbias=db, need_dx=False, accumulate=True)
        assert_close(host(dw), times * rdw + t64(dw0), dtype, rtol_for(dtype, n), what=f"dweight x{times}")
        assert_close(host(db), times * rdb + t64(db0), dtype, rtol_for(dtype, n), what=f"dbias x{times}")
    dw, db = cu(np.full((fout, fin), np.nan, dtype)), cu(np.full((fout,), np.nan, dtype))
    _C.linear_backward(cu(x), cu(w), cu(dy), y, "tanh", dweight=dw, dbias=db, need_dx=False)
    assert_close(host(dw), rdw, dtype, rtol_for(dtype, n), what="dweight overwritten")
    assert_close(host(db), rdb, dtype, rtol_for(dtype, n), what="dbias overwritten")


@pytest.mark.parametrize("act", ["none", "relu"])
def test_linear_empty_batch(act, dtype, rng):
    w, b = randn(rng, (13, 7), dtype), randn(rng, (13,), dtype)
    x, dy = cu(np.zeros((0, 7), dtype)), cu(np.zeros((0, 13), dtype))
    y = _C.linear_forward(x, cu(w), cu(b), act)
    assert tuple(y.shape) == (0, 13)
    dx, dw, db = _C.linear_backward(x, cu(w), dy, y, act)
    assert tuple(dx.shape) == (0, 7)
    assert (host(dw) == 0).all() and (host(db) == 0).all()
    dw0, db0 = randn(rng, (13, 7), dtype), randn(rng, (13,), dtype)
    dwa, dba = cu(dw0), cu(db0)
    _C.linear_backward(x, cu(w), dy, y, act, dweight=dwa, dbias=dba, accumulate=True)
    assert same_bits(host(dwa), dw0) and same_bits(host(dba), db0)


def test_linear_zero_in_features(dtype, rng):
    b = randn(rng, (5,), dtype)
    y = _C.linear_forward(cu(np.zeros((3, 0), dtype)), cu(np.zeros((5, 0), dtype)), cu(b), "tanh")
    assert_close(host(y), np.tanh(np.broadcast_to(b, (3, 5)).astype(np.float64)), dtype)


def test_linear_backward_is_deterministic(rng):
    x, w, dy = randn(rng, (1100, 9), "float32"), randn(rng, (33, 9), "float32"), randn(rng, (1100, 33), "float32")
    y = _C.linear_forward(cu(x), cu(w), None, "relu")
    first = [host(t) for t in _C.linear_backward(cu(x), cu(w), cu(dy), y, "relu")]
    again = [host(t) for t in _C.linear_backward(cu(x), cu(w), cu(dy), y, "relu")]
    assert all(same_bits(a, b) for a, b in zip(first, again))


# ---- BatchNorm1d ---------------------------------------------------------------------------------

# (1100, 5), (600, 40) and (1030, 132) split the rows into chunks (stats, finish and apply
# launches); with C a multiple of the 16-byte vector (40, 132) the stats and apply passes take
# whole vectors of columns (132: 33 float vectors, a second column block with one lane); the
# others run in one launch; C = 1, 5, 7 use column blocks narrower than a warp.
BN_SHAPES = [(2, 2), (7, 33), (33, 7), (65, 1), (1100, 5), (600, 40), (1030, 132)]


def bn_reference(x, w, b, rm, rv, training, momentum, eps, dy):
    xt = t64(x, True)
    wt = t64(w, True) if w is not None else None
    bt = t64(b, True) if b is not None else None
    rmt = t64(rm) if rm is not None else None
    rvt = t64(rv) if rv is not None else None
    y = F.batch_norm(xt, rmt, rvt, wt, bt, training, momentum, eps)
    y.backward(t64(dy))
    grad = lambda t: None if t is None else t.grad
    return y, xt.grad, grad(wt), grad(bt), rmt, rvt


def bn_inputs(rng, shape, dtype, affine=True, tracked=True, loc=0.5, scale=2.0):
    n, c = shape
    x = randn(rng, shape, dtype, scale) + np.asarray(loc, dtype=dtype)
    w = randn(rng, c, dtype) if affine else None
    b = randn(rng, c, dtype) if affine else None
    rm = randn(rng, c, dtype) if tracked else None
    rv = (rng.random(c) + 0.5).astype(dtype) if tracked else None
    return x, w, b, rm, rv, randn(rng, shape, dtype)


def copy(a):
    return None if a is None else a.copy()


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_training_matches_torch_and_cpu(shape, dtype, rng):
    for affine, tracked in [(True, True), (False, False), (True, False), (False, True)]:
        check_batchnorm_training(shape, dtype, rng, affine, tracked)


def check_batchnorm_training(shape, dtype, rng, affine, tracked):
    x, w, b, rm, rv, dy = bn_inputs(rng, shape, dtype, affine, tracked)
    ry, rdx, rdw, rdb, rrm, rrv = bn_reference(x, w, b, copy(rm), copy(rv), True, 0.1, 1e-5, dy)
    what = f"{shape} affine={affine} tracked={tracked}"
    rm_cu, rv_cu = cu(rm), cu(rv)
    y, save_mean, save_invstd = _C.batchnorm_forward(cu(x), cu(w), cu(b), rm_cu, rv_cu, True)
    assert save_mean.dtype == np.float64 and save_invstd.dtype == np.float64
    assert_close(host(y), ry, dtype, what="y " + what)
    x64 = x.astype(np.float64)
    assert_close(host(save_mean), x64.mean(0), "float64", what="save_mean " + what)
    assert_close(host(save_invstd), 1 / np.sqrt(x64.var(0) + 1e-5), "float64", what="save_invstd " + what)
    if tracked:
        assert_close(host(rm_cu), rrm, dtype, what="running_mean " + what)
        assert_close(host(rv_cu), rrv, dtype, what="running_var " + what)

    rm_cpu, rv_cpu = copy(rm), copy(rv)
    y_cpu, sm_cpu, si_cpu = _C.batchnorm_forward(x, w, b, rm_cpu, rv_cpu, True)
    assert_close(host(y), y_cpu, dtype, what="y vs CPU " + what)
    assert_close(host(save_mean), sm_cpu, "float64", what="save_mean vs CPU " + what)
    if tracked:
        assert_close(host(rv_cu), rv_cpu, dtype, what="running_var vs CPU " + what)

    dx, dw, db = _C.batchnorm_backward(cu(x), cu(dy), cu(w), save_mean, save_invstd, True)
    assert_close(host(dx), rdx, dtype, what="dx " + what)
    cdx, cdw, cdb = _C.batchnorm_backward(x, dy, w, sm_cpu, si_cpu, True)
    assert_close(host(dx), cdx, dtype, what="dx vs CPU " + what)
    if affine:
        assert_close(host(dw), rdw, dtype, rtol_for(dtype, shape[0]), what="dweight " + what)
        assert_close(host(db), rdb, dtype, rtol_for(dtype, shape[0]), what="dbias " + what)
        assert_close(host(dw), cdw, dtype, rtol_for(dtype, shape[0]), what="dweight vs CPU " + what)
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("shape", [(2, 7), (33, 40), (1100, 5), (1, 5), (0, 5)])
def test_batchnorm_eval_matches_torch_and_cpu(shape, dtype, rng):
    x, w, b, rm, rv, dy = bn_inputs(rng, shape, dtype)
    ry, rdx, rdw, rdb, _, _ = bn_reference(x, w, b, copy(rm), copy(rv), False, 0.1, 1e-3, dy)
    rm_cu, rv_cu = cu(rm), cu(rv)
    y, save_mean, save_invstd = _C.batchnorm_forward(cu(x), cu(w), cu(b), rm_cu, rv_cu, False, eps=1e-3)
    assert_close(host(y), ry, dtype, what="y")
    assert same_bits(host(rm_cu), rm) and same_bits(host(rv_cu), rv), "eval never moves the running stats"
    assert same_bits(host(save_mean), rm.astype(np.float64))
    y_cpu, _, si_cpu = _C.batchnorm_forward(x, w, b, copy(rm), copy(rv), False, eps=1e-3)
    assert_close(host(y), y_cpu, dtype, what="y vs CPU")
    assert_close(host(save_invstd), si_cpu, "float64", what="save_invstd vs CPU")

    dx, dw, db = _C.batchnorm_backward(cu(x), cu(dy), cu(w), save_mean, save_invstd, False)
    assert_close(host(dx), rdx, dtype, what="dx")
    assert_close(host(dw), rdw, dtype, rtol_for(dtype, shape[0]), what="dweight")
    assert_close(host(db), rdb, dtype, rtol_for(dtype, shape[0]), what="dbias")
    # without parameter gradients only dx is formed
    dx2, dw2, db2 = _C.batchnorm_backward(cu(x), cu(dy), None, save_mean, save_invstd, False)
    assert dw2 is None and db2 is None
    assert_close(host(dx2), dy.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-3), dtype, what="dx (no weight)")


@pytest.mark.parametrize("shape", [(33, 7), (1100, 5)])
def test_batchnorm_accumulate_and_in_place(shape, dtype, rng):
    x, w, b, rm, rv, dy = bn_inputs(rng, shape, dtype)
    _, rdx, rdw, rdb, _, _ = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    x_cu = cu(x)
    # forward in place: y overwrites x (every read of a column happens before its writes)
    y, save_mean, save_invstd = _C.batchnorm_forward(x_cu, cu(w), cu(b), None, None, True, out=x_cu)
    y_ref = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)[0]
    assert_close(host(x_cu), y_ref, dtype, what="y written over x")
    # backward in place: dx overwrites dy; parameter gradients added to given buffers
    dy_cu = cu(dy)
    dw0, db0 = randn(rng, shape[1], dtype), randn(rng, shape[1], dtype)
    dw, db = cu(dw0), cu(db0)
    _C.batchnorm_backward(cu(x), dy_cu, cu(w), save_mean, save_invstd, True, dx=dy_cu, dweight=dw, dbias=db,
                          accumulate=True)
    assert_close(host(dy_cu), rdx, dtype, what="dx written over dy")
    assert_close(host(dw), rdw + t64(dw0), dtype, rtol_for(dtype, shape[0]), what="dweight accumulated")
    assert_close(host(db), rdb + t64(db0), dtype, rtol_for(dtype, shape[0]), what="dbias accumulated")


def misaligned(a):
    """A CUDA copy of `a` that starts 4 bytes past a 16-byte boundary: vector loads are off."""
    buf = fastnn.zeros([a.size + 1], a.dtype, "cuda")
    view = buf._flat_slice(1, list(a.shape))
    view.copy_(a)
    return view


@pytest.mark.parametrize("shape", [(600, 40), (1100, 8)])
def test_batchnorm_vector_passes_match_scalar_bits(shape, dtype, rng):
    """With whole 16-byte vectors of columns, the multi-chunk statistics and apply passes (y, dx)
    load and store vectors; a misaligned copy of the same input takes the scalar loops. Same bits
    either way: the vector statistics reduce each column over the scalar pass's rows, in its order."""
    x, w, b, _, _, dy = bn_inputs(rng, shape, dtype)
    y_vec, sm, si = _C.batchnorm_forward(cu(x), cu(w), cu(b), None, None, True)
    y_sca, sm2, si2 = _C.batchnorm_forward(misaligned(x), cu(w), cu(b), None, None, True)
    assert same_bits(host(sm), host(sm2)) and same_bits(host(si), host(si2))
    assert same_bits(host(y_vec), host(y_sca)), "y"
    dx_vec, _, _ = _C.batchnorm_backward(cu(x), cu(dy), cu(w), sm, si, True)
    dx_sca, _, _ = _C.batchnorm_backward(cu(x), misaligned(dy), cu(w), sm, si, True)
    assert same_bits(host(dx_vec), host(dx_sca)), "dx"
    _, rdx, _, _, _, _ = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    assert_close(host(dx_vec), rdx, dtype, what="dx")


def test_batchnorm_large_mean_float32(rng):
    """Columns near 1e6 with unit spread: statistics in double and the hi/lo split of the mean keep y
    and dx accurate in float32."""
    for shape in [(33, 7), (1100, 5)]:
        x = (rng.standard_normal(shape) + 1e6).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        ry, rdx, _, _, _, _ = bn_reference(x, None, None, None, None, True, 0.1, 1e-5, dy)
        y, sm, si = _C.batchnorm_forward(cu(x), None, None, None, None, True)
        assert_close(host(y), ry, "float32", what=f"y {shape}")
        dx, _, _ = _C.batchnorm_backward(cu(x), cu(dy), None, sm, si, True)
        assert_close(host(dx), rdx, "float32", what=f"dx {shape}")


@pytest.mark.parametrize("shape", [(33, 7), (1100, 5), (2000, 132)])
def test_batchnorm_first_row_outlier(shape, dtype, rng):
    """The statistics sum x - k with k the column's first value: a first row 100 standard deviations
    out costs m2 a factor ~1e4 / N of its precision (shifted_moments), still far inside float64's
    tolerance; the multi-chunk and 16-byte paths (1100 and 2000 rows) use the same shift."""
    x, w, b, rm, rv, dy = bn_inputs(rng, shape, dtype)
    x[0] = 0.5 + 200.0
    x64 = x.astype(np.float64)
    for device, to, back in [("cuda", cu, host), ("cpu", lambda a: a, np.asarray)]:
        y, sm, si = _C.batchnorm_forward(to(x), to(w), to(b), None, None, True)
        assert_close(back(sm), x64.mean(0), "float64", what=f"save_mean {device}")
        assert_close(back(si), 1 / np.sqrt(x64.var(0) + 1e-5), "float64", what=f"save_invstd {device}")
        ry = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)[0]
        assert_close(back(y), ry, dtype, what=f"y {device}")


def test_batchnorm_nan_stays_in_its_column(dtype, rng):
    x, w, b, _, _, dy = bn_inputs(rng, (33, 7), dtype)
    x[4, 2] = np.nan
    y, sm, si = _C.batchnorm_forward(cu(x), cu(w), cu(b), None, None, True)
    out = host(y)
    assert np.isnan(out[:, 2]).all() and np.isfinite(np.delete(out, 2, axis=1)).all()
    dx, dw, _ = _C.batchnorm_backward(cu(x), cu(dy), cu(w), sm, si, True)
    assert np.isnan(host(dx)[:, 2]).all() and np.isfinite(np.delete(host(dx), 2, axis=1)).all()
    assert np.isnan(host(dw)[2]) and np.isfinite(np.delete(host(dw), 2)).all()


def test_batchnorm_is_deterministic(rng):
    for shape in [(33, 7), (1100, 5), (600, 40)]:
        x, w, b, rm, rv, dy = bn_inputs(rng, shape, "float32")
        runs = []
        for _ in range(2):
            y, sm, si = _C.batchnorm_forward(cu(x), cu(w), cu(b), None, None, True)
            runs.append([host(y), host(sm), host(si)] +
                        [host(t) for t in _C.batchnorm_backward(cu(x), cu(dy), cu(w), sm, si, True)])
        assert all(same_bits(a, b) for a, b in zip(*runs)), shape


# ---- BatchNorm's one-read pipeline ----------------------------------------------------------------
#
# Training inputs larger than L2 take one persistent launch (batchnorm_kernels.cuh): slabs of 128
# float32 / 64 float64 columns, 128-row items from a ticket, each slab finished by its last
# statistics item and applied after its flag. FASTNN_BN_PIPELINE_ABOVE=0 sends every input of
# whole 16-byte vectors there, and FASTNN_BN_PIPELINE_LOOKAHEAD=2 makes a slab's apply items wait
# two slabs' statistics (these slabs are so small that every one would fit the L2 budget). Shapes:
# one slab and one chunk (7 rows); partial last slabs of 4 columns (132, 260); 9 chunks, the last
# of 76 rows (1100); 20 / 40 slabs of 2 chunks (2560 columns): statistics and apply items
# alternate for most of the launch.
PIPE_SHAPES = [(7, 4), (300, 132), (1100, 260), (129, 2560)]


@pytest.fixture
def bn_pipeline(monkeypatch):
    monkeypatch.setenv("FASTNN_BN_PIPELINE_ABOVE", "0")
    monkeypatch.setenv("FASTNN_BN_PIPELINE_LOOKAHEAD", "2")


@pytest.mark.parametrize("shape", PIPE_SHAPES)
def test_batchnorm_pipeline_matches_torch_and_cpu(bn_pipeline, shape, dtype, rng):
    for affine, tracked in [(True, True), (False, False)]:
        check_batchnorm_training(shape, dtype, rng, affine, tracked)


def test_batchnorm_pipeline_is_taken_only_when_asked(monkeypatch, rng):
    """The switch routes there, and only there: the pipeline's 128-row chunks are not the chunked
    path's, so float64 sums round differently (a proxy; both are deterministic, so this never
    flakes). Unset or empty, it is off (until a GPU has measured it); 1e12 bytes is above this input."""
    x = randn(rng, (1100, 260), "float64", 3.0) + 1.0
    sm = {}
    for above in ("0", "", "1000000000000", None):
        if above is None:
            monkeypatch.delenv("FASTNN_BN_PIPELINE_ABOVE", raising=False)
        else:
            monkeypatch.setenv("FASTNN_BN_PIPELINE_ABOVE", above)
        sm[above] = host(_C.batchnorm_forward(cu(x), None, None, None, None, True)[1])
    assert not same_bits(sm["0"], sm[None])
    assert same_bits(sm[""], sm[None]) and same_bits(sm["1000000000000"], sm[None])


@pytest.mark.parametrize("shape", [(300, 132), (1100, 260)])
def test_batchnorm_pipeline_in_place(bn_pipeline, shape, dtype, rng):
    """y over x and dx over dy: a slab's apply items write only its own columns, after every
    statistics item of the slab has read them."""
    x, w, b, _, _, dy = bn_inputs(rng, shape, dtype)
    ry, rdx, _, _, _, _ = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    x_cu, dy_cu = cu(x), cu(dy)
    _, sm, si = _C.batchnorm_forward(x_cu, cu(w), cu(b), None, None, True, out=x_cu)
    assert_close(host(x_cu), ry, dtype, what="y written over x")
    _C.batchnorm_backward(cu(x), dy_cu, cu(w), sm, si, True, dx=dy_cu)
    assert_close(host(dy_cu), rdx, dtype, what="dx written over dy")


def test_batchnorm_pipeline_is_deterministic_and_cancels(bn_pipeline, dtype, rng):
    """Run to run the same bits; columns whose dx cancels (constant dy) stay at rounding noise."""
    shape = (1100, 260)
    x, w, b, _, _, dy = bn_inputs(rng, shape, dtype)
    for col in (3, 131, 259):
        dy[:, col] = dy[0, col]
    runs = []
    for _ in range(2):
        y, sm, si = _C.batchnorm_forward(cu(x), cu(w), cu(b), None, None, True)
        runs.append([host(y), host(sm), host(si)] + [host(t) for t in _C.batchnorm_backward(cu(x), cu(dy), cu(w), sm, si, True)])
    assert all(same_bits(a, b_) for a, b_ in zip(*runs))
    dx = runs[0][3]
    for col in (3, 131, 259):
        assert np.max(np.abs(dx[:, col])) <= 1e-5 * np.max(np.abs(dy[:, col] * w[col]))


@pytest.mark.parametrize("shape", [(300, 130), (33, 6)])
def test_batchnorm_pipeline_falls_back_without_whole_vectors(bn_pipeline, shape, dtype, rng):
    """Rows not of whole 16-byte vectors (130 float32 columns; whole in float64, which takes the
    pipeline, as 6 columns do in both) or misaligned inputs keep the chunked paths."""
    check_batchnorm_training(shape, dtype, rng, True, True)
    x, w, b, _, _, dy = bn_inputs(rng, shape, dtype)
    ry, rdx, _, _, _, _ = bn_reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    y, sm, si = _C.batchnorm_forward(misaligned(x), cu(w), cu(b), None, None, True)
    assert_close(host(y), ry, dtype, what="y (misaligned)")
    dx, _, _ = _C.batchnorm_backward(cu(x), misaligned(dy), cu(w), sm, si, True)
    assert_close(host(dx), rdx, dtype, what="dx (misaligned)")


# ---- losses --------------------------------------------------------------------------------------

# (N, C): C = 1; N > 8 (several warps, blocks); N = 1100 (137 blocks). A row is held in 1, 8 or 32
# registers per lane up to 32, 256 and 1024 classes (70, 1000: partly filled), streamed above (1025);
# rows of whole 16-byte vectors (C a multiple of 4 floats / 2 doubles: 36, 256, 1000, 1024) are
# loaded and stored as vectors, 70 and 1022 so in float64 only.
CE_SHAPES = [(1, 1), (7, 3), (33, 70), (1100, 10), (9, 36), (17, 256), (5, 1000), (4, 1022), (3, 1024), (3, 1025)]


def torch_cross_entropy(x, y, w, reduction, ignore_index, dloss):
    xt = t64(x, True)
    loss = F.cross_entropy(xt, torch.from_numpy(y.astype(np.int64)), weight=None if w is None else t64(w),
                           reduction=reduction, ignore_index=ignore_index)
    loss.backward(t64(dloss))
    return loss.detach(), xt.grad


def ce_inputs(rng, n, c, dtype, label_dtype=np.int64, ignore_index=-100):
    x = randn(rng, (n, c), dtype, 3.0)
    y = rng.integers(0, c, n).astype(label_dtype)
    if n > 2:
        y[1] = ignore_index
    return x, y, (rng.random(c) + 0.5).astype(dtype)


@pytest.mark.parametrize("n,classes", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_and_cpu(n, classes, reduction, dtype, rng):
    for label_dtype, weighted in [(np.int64, False), (np.int32, True)]:
        x, y, w = ce_inputs(rng, n, classes, dtype, label_dtype)
        w = w if weighted else None
        dloss = randn(rng, (n,) if reduction == "none" else (), dtype)
        rloss, rdx = torch_cross_entropy(x, y, w, reduction, -100, dloss)
        what = f"{(n, classes)} {reduction} labels={label_dtype.__name__} weighted={weighted}"
        loss = _C.cross_entropy_forward(cu(x), cu(y), cu(w), reduction)
        assert_close(host(loss), rloss, dtype, rtol_for(dtype, n), what="loss " + what)
        assert_close(host(loss), np.asarray(_C.cross_entropy_forward(x, y, w, reduction)), dtype,
                     rtol_for(dtype, n), what="loss vs CPU " + what)
        dx = _C.cross_entropy_backward(cu(x), cu(y), cu(dloss), cu(w), reduction)
        assert_close(host(dx), rdx, dtype, what="dlogits " + what)
        assert_close(host(dx), np.asarray(_C.cross_entropy_backward(x, y, dloss, w, reduction)), dtype,
                     what="dlogits vs CPU " + what)
        if reduction != "none":
            one = np.ones((), dtype)
            rloss1, rdx1 = torch_cross_entropy(x, y, w, reduction, -100, one)
            floss, fdx = _C.cross_entropy(cu(x), cu(y), cu(w), reduction)
            assert_close(host(floss), rloss1, dtype, rtol_for(dtype, n), what="fused loss " + what)
            assert_close(host(fdx), rdx1, dtype, what="fused dlogits " + what)
            # a Python number as the upstream gradient
            dx_num = _C.cross_entropy_backward(cu(x), cu(y), 2.5, cu(w), reduction)
            assert_close(host(dx_num), 2.5 * rdx1, dtype, what="dlogits (dloss=2.5) " + what)


def test_cross_entropy_many_rows_mean(dtype, rng):
    # 20,000 rows: the "mean" denominator sums 5 blocks of labels and a finish launch adds them; the
    # loss adds 2,500 per-block partials, enough for the finish's batched loads.
    x, y, w = ce_inputs(rng, 20_000, 3, dtype)
    y[::7] = -100
    for weight in (None, w):
        rloss, rdx = torch_cross_entropy(x, y, weight, "mean", -100, np.ones((), dtype))
        loss, dx = _C.cross_entropy(cu(x), cu(y), cu(weight), "mean")
        what = f"weighted={weight is not None}"
        assert_close(host(loss), rloss, dtype, rtol_for(dtype, 20_000), what="loss " + what)
        assert_close(host(dx), rdx, dtype, what="dlogits " + what)


@pytest.mark.parametrize("classes", [70, 72, 1000, 1025])  # rows in registers (72, 1000: as vectors); streamed
def test_cross_entropy_in_place_and_ignored(classes, dtype, rng):
    x, y, w = ce_inputs(rng, 33, classes, dtype, ignore_index=5)
    y[[0, 7, 8]] = 5
    _, rdx = torch_cross_entropy(x, y, w, "mean", 5, np.ones((), dtype))
    rloss = torch_cross_entropy(x, y, w, "mean", 5, np.ones((), dtype))[0]
    x_cu = cu(x)
    loss, dx = _C.cross_entropy(x_cu, cu(y), cu(w), "mean", 5, dlogits=x_cu)
    assert_close(host(x_cu), rdx, dtype, what="dlogits written over the logits")
    assert_close(host(loss), rloss, dtype, what="loss")
    assert (host(x_cu)[[0, 7, 8]] == 0).all()


def test_cross_entropy_all_ignored_and_empty(dtype, rng):
    x = randn(rng, (4, 3), dtype)
    y = np.full(4, -100, np.int64)
    loss, dx = _C.cross_entropy(cu(x), cu(y))
    assert np.isnan(host(loss)) and (host(dx) == 0).all()
    assert host(_C.cross_entropy_forward(cu(x), cu(y), None, "sum")) == 0
    empty_x, empty_y = cu(np.zeros((0, 3), dtype)), cu(np.zeros(0, np.int64))
    assert np.isnan(host(_C.cross_entropy_forward(empty_x, empty_y)))
    assert host(_C.cross_entropy_forward(empty_x, empty_y, None, "sum")) == 0
    assert host(_C.cross_entropy_forward(empty_x, empty_y, None, "none")).shape == (0,)
    loss, dx = _C.cross_entropy(empty_x, empty_y)
    assert np.isnan(host(loss)) and host(dx).shape == (0, 3)
    assert host(_C.cross_entropy_backward(empty_x, empty_y, 1.0)).shape == (0, 3)


def test_cross_entropy_extreme_and_nan_logits(dtype, rng):
    x = randn(rng, (7, 5), dtype)
    x[0] = [1000, -1000, 0, 0, 0]
    x[1, 2] = -1e30
    x[3, 1] = np.nan
    y = np.array([0, 2, 1, 4, 0, 3, 1])
    loss = host(_C.cross_entropy_forward(cu(x), cu(y), None, "none"))
    cpu = np.asarray(_C.cross_entropy_forward(x, y, None, "none"))
    assert np.isnan(loss[3]) and np.isnan(cpu[3])
    ok = [0, 1, 2, 4, 5, 6]
    assert_close(loss[ok], cpu[ok], dtype, what="extreme rows vs CPU")
    rloss = F.cross_entropy(t64(x[ok]), torch.from_numpy(y[ok]), reduction="none")
    assert_close(loss[ok], rloss, dtype, what="extreme rows vs torch")


@pytest.mark.parametrize("label", [-1, 3, 100])
def test_cross_entropy_bad_label_found_on_device(label, rng):
    x = randn(rng, (1100, 3), "float32")
    y = rng.integers(0, 3, 1100)
    y[[700, 1050]] = label
    with pytest.raises(ValueError, match=f"label {label} at index 700 is out of range"):
        _C.cross_entropy_forward(cu(x), cu(y))
    y[[700, 1050]] = -100
    assert np.isfinite(host(_C.cross_entropy_forward(cu(x), cu(y))))


# The CUDA check reads the labels pass on the host while the rows kernel runs (ops/loss_cuda.cu):
# every entry point raises, for one block of labels (4096) and for several with a finishing
# launch, and a later call on the same thread's pinned slot still sees its own labels.
@pytest.mark.parametrize("rows", [9, 4096, 9000])
@pytest.mark.parametrize("entry", ["forward_none", "forward_mean", "backward_mean", "backward_none", "fused_sum"])
def test_cross_entropy_bad_label_raises_from_every_entry_point(rows, entry, rng):
    x = randn(rng, (rows, 4), "float32")
    y = rng.integers(0, 4, rows)
    bad_at = rows - 2
    y[bad_at] = 4
    calls = {
        "forward_none": lambda y: _C.cross_entropy_forward(cu(x), cu(y), None, "none"),
        "forward_mean": lambda y: _C.cross_entropy_forward(cu(x), cu(y)),
        "backward_mean": lambda y: _C.cross_entropy_backward(cu(x), cu(y), 1.0),
        "backward_none": lambda y: _C.cross_entropy_backward(cu(x), cu(y), cu(np.ones(rows, np.float32)), None,
                                                              "none"),
        "fused_sum": lambda y: _C.cross_entropy(cu(x), cu(y), None, "sum"),
    }
    with pytest.raises(ValueError, match=f"target: label 4 at index {bad_at} is out of range \\[0, 4\\)"):
        calls[entry](y)
    y[bad_at] = 0
    out = calls[entry](y)
    values = [host(t) for t in (out if isinstance(out, tuple) else (out,))]
    assert all(np.isfinite(v).all() for v in values)


# dlogits given as the logits themselves: a bad label raises before the logits are overwritten.
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cross_entropy_bad_label_leaves_in_place_logits_untouched(device, rng):
    x = randn(rng, (5000, 10), "float32")
    y = rng.integers(0, 10, 5000)
    y[4321] = -7
    logits, labels = (cu(x), cu(y)) if device == "cuda" else (x.copy(), y)
    with pytest.raises(ValueError, match="label -7 at index 4321"):
        _C.cross_entropy(logits, labels, dlogits=logits)
    with pytest.raises(ValueError, match="label -7 at index 4321"):
        _C.cross_entropy_backward(logits, labels, 1.0, out=logits)
    np.testing.assert_array_equal(host(logits) if device == "cuda" else logits, x)


def torch_elementwise(kind, x, t, reduction, dloss, weight=None, pos_weight=None):
    xt = t64(x, True)
    if kind == "mse":
        loss = F.mse_loss(xt, t64(t), reduction=reduction)
    else:
        loss = F.binary_cross_entropy_with_logits(xt, t64(t), weight=None if weight is None else t64(weight),
                                                  pos_weight=None if pos_weight is None else t64(pos_weight),
                                                  reduction=reduction)
    loss.backward(t64(dloss))
    return loss.detach(), xt.grad


# 5000 elements: two blocks of partial sums (a block sums 4096)
ELEMENTWISE_SHAPES = [(1,), (7, 33), (5000,)]


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch_and_cpu(shape, reduction, dtype, rng):
    x, t = randn(rng, shape, dtype), randn(rng, shape, dtype)
    dloss = randn(rng, shape if reduction == "none" else (), dtype)
    rloss, rdx = torch_elementwise("mse", x, t, reduction, dloss)
    n = int(np.prod(shape))
    loss = _C.mse_forward(cu(x), cu(t), reduction)
    assert_close(host(loss), rloss, dtype, rtol_for(dtype, n), what="loss")
    assert_close(host(loss), np.asarray(_C.mse_forward(x, t, reduction)), dtype, rtol_for(dtype, n), what="loss vs CPU")
    dx = _C.mse_backward(cu(x), cu(t), cu(dloss), reduction)
    assert_close(host(dx), rdx, dtype, what="dinput")
    assert_close(host(dx), np.asarray(_C.mse_backward(x, t, dloss, reduction)), dtype, what="dinput vs CPU")


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_torch_and_cpu(shape, reduction, dtype, rng):
    last, first = shape[-1], shape[:1] + (1,) * (len(shape) - 1)
    # weights broadcast as torch does: the input's shape, one per row (first), one per element of
    # the last dimension, one for all
    for w_shape, pw_shape in [(None, None), (shape, (last,)), (None, (1,)), (first, None), ((last,), first)]:
        x, t = randn(rng, shape, dtype, 4.0), rng.random(shape).astype(dtype)
        w = None if w_shape is None else (rng.random(w_shape) + 0.5).astype(dtype)
        pw = None if pw_shape is None else (rng.random(pw_shape) + 0.5).astype(dtype)
        dloss = randn(rng, shape if reduction == "none" else (), dtype)
        rloss, rdx = torch_elementwise("bce", x, t, reduction, dloss, w, pw)
        n, what = int(np.prod(shape)), f"{shape} {reduction} weight {w_shape} pos_weight {pw_shape}"
        loss = _C.bce_with_logits_forward(cu(x), cu(t), cu(w), cu(pw), reduction)
        assert_close(host(loss), rloss, dtype, rtol_for(dtype, n), what="loss " + what)
        cpu_loss = np.asarray(_C.bce_with_logits_forward(x, t, w, pw, reduction))
        assert_close(host(loss), cpu_loss, dtype, rtol_for(dtype, n), what="loss vs CPU " + what)
        dx = _C.bce_with_logits_backward(cu(x), cu(t), cu(dloss), cu(w), cu(pw), reduction)
        assert_close(host(dx), rdx, dtype, what="dinput " + what)
        cpu_dx = np.asarray(_C.bce_with_logits_backward(x, t, dloss, w, pw, reduction))
        assert_close(host(dx), cpu_dx, dtype, what="dinput vs CPU " + what)


def test_elementwise_losses_empty_and_nan(dtype):
    empty = cu(np.zeros((0, 3), dtype))
    for forward in (lambda r: _C.mse_forward(empty, empty, r),
                    lambda r: _C.bce_with_logits_forward(empty, empty, None, None, r)):
        assert np.isnan(host(forward("mean"))) and host(forward("sum")) == 0
        assert host(forward("none")).shape == (0, 3)
    assert host(_C.mse_backward(empty, empty, 1.0)).shape == (0, 3)
    x, t = np.array([0.5, np.nan, 2.0], dtype), np.array([1.0, 0.0, 1.0], dtype)
    assert np.isnan(host(_C.mse_forward(cu(x), cu(t))))
    g = host(_C.bce_with_logits_backward(cu(x), cu(t), 1.0))
    assert np.isnan(g[1]) and np.isfinite(g[[0, 2]]).all()


def test_losses_are_deterministic(rng):
    x, t = randn(rng, (9000,), "float32"), rng.random(9000).astype(np.float32)
    logits, labels = randn(rng, (1100, 10), "float32"), rng.integers(0, 10, 1100)
    runs = []
    for _ in range(2):
        fused = _C.cross_entropy(cu(logits), cu(labels))
        runs.append([host(_C.mse_forward(cu(x), cu(t))), host(_C.bce_with_logits_forward(cu(x), cu(t))),
                     host(fused[0]), host(fused[1]), host(_C.cross_entropy_forward(cu(logits), cu(labels)))])
    assert all(same_bits(a, b) for a, b in zip(*runs))


# ---- optimizers ----------------------------------------------------------------------------------

OPTIM_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05, amsgrad=True, maximize=True)),
    ("adam", dict(lr=1e-2, beta1=0.3, beta2=0.5, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True)),
    ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8)),
    ("rmsprop", dict(lr=1e-2, alpha=0.3, eps=1e-8, centered=True, momentum=0.9, weight_decay=0.01)),
    ("adagrad", dict(lr=1e-2, eps=1e-10)),
    ("adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, eps=1e-6, maximize=True)),
]
# the state tensors each optimizer keeps, by kernel argument name, and when it needs them
STATE = {"sgd": [("momentum_buffer", lambda kw: kw.get("momentum", 0) != 0)],
         "adam": [("exp_avg", lambda kw: True), ("exp_avg_sq", lambda kw: True),
                  ("max_exp_avg_sq", lambda kw: kw.get("amsgrad", False))],
         "rmsprop": [("square_avg", lambda kw: True), ("momentum_buffer", lambda kw: kw.get("momentum", 0) > 0),
                     ("grad_avg", lambda kw: kw.get("centered", False))],
         "adagrad": [("state_sum", lambda kw: True)]}
OPTIM_CASES_BY_NAME = {}
for _name, _kw in OPTIM_CASES:  # the richest case of each optimizer: every state buffer in use
    if len(_kw) >= len(OPTIM_CASES_BY_NAME.get(_name, {})):
        OPTIM_CASES_BY_NAME[_name] = _kw


def torch_optimizer(name, param, kw):
    kw = dict(kw)
    if name == "sgd":
        return torch.optim.SGD([param], foreach=False, **kw)
    if name == "adam":
        betas = (kw.pop("beta1"), kw.pop("beta2"))
        return torch.optim.Adam([param], betas=betas, foreach=False, **kw)
    if name == "rmsprop":
        return torch.optim.RMSprop([param], foreach=False, **kw)
    return torch.optim.Adagrad([param], foreach=False, **kw)


def run_kernel(name, kw, param, grads, convert):
    """Steps `param` (a numpy array) with the _C kernel, tensors made by `convert`; returns param, state."""
    p = convert(param.copy())
    state = {key: convert(np.zeros_like(param)) if needed(kw) else None for key, needed in STATE[name]}
    for step, g in enumerate(grads, start=1):
        extra = {"first_step": step == 1} if name == "sgd" else {}
        if name in ("adam", "adagrad"):
            extra["step"] = step
        getattr(_C, f"{name}_step")(p, convert(g), *state.values(), **kw, **extra)
    return p, state


@pytest.mark.parametrize("case", OPTIM_CASES, ids=lambda c: c[0] + "-" + "-".join(f"{k}={v}" for k, v in c[1].items()))
def test_optimizer_matches_torch_and_cpu(case, dtype, rng):
    name, kw = case
    for shape in [(7, 33), (1,)]:
        param = randn(rng, shape, dtype)
        grads = [randn(rng, shape, dtype) for _ in range(4)]
        p_cu, _ = run_kernel(name, kw, param, grads, cu)
        p_cpu, _ = run_kernel(name, kw, param, grads, lambda a: a)
        tp = torch.tensor(param, requires_grad=True)
        opt = torch_optimizer(name, tp, kw)
        for g in grads:
            tp.grad = torch.tensor(g)
            opt.step()
        # a few ulps: the GPU may contract the update into FMAs where torch's CPU kernels do not
        rtol = 1e-6 if dtype == "float32" else 1e-12
        assert_close(host(p_cu), tp.detach(), dtype, rtol, what=f"{name} {kw} vs torch")
        assert_close(host(p_cu), p_cpu, dtype, rtol, what=f"{name} {kw} vs CPU")


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad"])
def test_optimizer_vector_and_scalar_paths_agree(name, dtype, rng):
    """Aligned buffers move in 16-byte groups, a view one element off takes the scalar loop: the
    same update either way, bit for bit (n = 37: whole groups and a tail)."""
    kw = dict(OPTIM_CASES_BY_NAME[name])
    param = randn(rng, (37,), dtype)
    grads = [randn(rng, (37,), dtype) for _ in range(3)]
    size = np.dtype(dtype).itemsize

    def unaligned(a):
        padded = cu(np.concatenate([np.zeros(1, dtype), a.ravel()]))
        return _C._tensor_view(padded._storage_bytes(), padded._byte_offset + size, list(a.shape), dtype)

    p_vec, _ = run_kernel(name, kw, param, grads, cu)
    p_scalar, _ = run_kernel(name, kw, param, grads, unaligned)
    assert same_bits(host(p_vec), host(p_scalar))


def test_optimizer_empty_buffer(dtype):
    p = cu(np.zeros(0, dtype))
    _C.adam_step(p, cu(np.zeros(0, dtype)), cu(np.zeros(0, dtype)), cu(np.zeros(0, dtype)), step=1, lr=1e-3,
                 beta1=0.9, beta2=0.999, eps=1e-8)
    assert host(p).shape == (0,)


# ---- a whole training run ------------------------------------------------------------------------

def mlp_step(params, state, x, y, step, to_device):
    """One training step of Linear(20, 33, bias=False) -> BatchNorm1d -> ReLU -> Linear(33, 7) ->
    cross-entropy, Adam, through the _C kernels on whatever device `params` live on; returns the loss.
    (No bias before the batch norm: its gradient is rounding noise, which Adam would amplify.)"""
    w1, gamma, beta, w2, b2 = params
    h = _C.linear_forward(x, w1, None, "none")
    z, save_mean, save_invstd = _C.batchnorm_forward(h, gamma, beta, state["rm"], state["rv"], True)
    a = _C.activation_forward(z, "relu")
    logits = _C.linear_forward(a, w2, b2, "none")
    loss, dlogits = _C.cross_entropy(logits, y)
    da, dw2, db2 = _C.linear_backward(a, w2, dlogits, None, "none")
    dz = _C.activation_backward(a, da, "relu")
    dh, dgamma, dbeta = _C.batchnorm_backward(h, dz, gamma, save_mean, save_invstd, True)
    _, dw1, _ = _C.linear_backward(x, w1, dh, None, "none", need_dx=False, need_dbias=False)
    for p, g, m, v in zip(params, [dw1, dgamma, dbeta, dw2, db2], state["m"], state["v"]):
        _C.adam_step(p, g, m, v, step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    return loss


def torch_mlp_losses(values, x, y, steps):
    params = [torch.tensor(v, requires_grad=True) for v in values]
    w1, gamma, beta, w2, b2 = params
    rm, rv = torch.zeros(33, dtype=torch.float64), torch.ones(33, dtype=torch.float64)
    opt = torch.optim.Adam(params, lr=1e-2, foreach=False)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        h = F.batch_norm(F.linear(torch.from_numpy(x), w1), rm, rv, gamma, beta, True)
        loss = F.cross_entropy(F.linear(torch.relu(h), w2, b2), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach() for p in params]


def test_mlp_training_run_matches_torch_and_cpu(rng):
    """Six steps of a small MLP in float64 on cuda, on the CPU and in torch: the same losses, and the
    same parameters after the last step. From the third step on, a step allocates no new device
    memory: every scratch buffer (bias-gradient and loss partials, the mean denominator) comes back
    from the caching allocator."""
    steps = 6
    x, y = rng.standard_normal((64, 20)), rng.integers(0, 7, 64)
    values = [rng.standard_normal((33, 20)) / np.sqrt(20), 1 + 0.1 * rng.standard_normal(33), 0.1 * rng.standard_normal(33),
              rng.standard_normal((7, 33)) / np.sqrt(33), rng.standard_normal(7) * 0.1]
    ref_losses, ref_params = torch_mlp_losses(values, x, y, steps)

    results = {}
    for device, convert, read in [("cuda", cu, host), ("cpu", lambda a: np.array(a, copy=True), np.asarray)]:
        params = [convert(v) for v in values]
        state = {"rm": convert(np.zeros(33)), "rv": convert(np.ones(33)),
                 "m": [convert(np.zeros_like(v)) for v in values], "v": [convert(np.zeros_like(v)) for v in values]}
        xd, yd = convert(x), convert(y)
        losses = []
        for step in range(1, steps + 1):
            if device == "cuda" and step == 3:
                mallocs = _C._cuda_memory_stats()["malloc_calls"]
            losses.append(float(read(mlp_step(params, state, xd, yd, step, convert))))
        if device == "cuda":
            assert _C._cuda_memory_stats()["malloc_calls"] == mallocs, "steady-state steps must not cudaMalloc"
        results[device] = losses, [read(p) for p in params]

    for device, (losses, params) in results.items():
        assert_close(np.array(losses), np.array(ref_losses), "float64", 1e-10, what=f"{device} losses vs torch")
        for i, (p, r) in enumerate(zip(params, ref_params)):
            assert_close(p, r, "float64", 1e-10, what=f"{device} param {i} vs torch")
    for i, (a, b) in enumerate(zip(results["cuda"][1], results["cpu"][1])):
        assert_close(a, b, "float64", 1e-11, what=f"param {i} cuda vs cpu")


def test_gpu_visit_sanitizer_workload():
    """benchmarks/gpu/sanitize_kernels.py, which a GPU visit runs under compute-sanitizer, passes
    its own checks here, so the visit never finds it broken."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "sanitize_kernels.py"
    if not script.exists():
        pytest.skip("benchmarks/ is not beside tests/")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "checks passed" in done.stdout
