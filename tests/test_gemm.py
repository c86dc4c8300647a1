"""_C.gemm against float64 torch.matmul: all four transpose combinations, alpha/beta, edges, ISA variants."""
import itertools
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastnn
from fastnn import _C
from utils import assert_close, randn

SIZES = [1, 7, 33, 100, 1000]
# every (M, N, K) from SIZES up to ~3.3 M multiply-adds, plus shapes that are no multiple of any
# tile (6 x 64 / 6 x 32 / 6 x 16) or vector width and that cross the K-block boundary (KC = 512)
SHAPES = [s for s in itertools.product(SIZES, repeat=3) if math.prod(s) <= 3_300_000]
SHAPES += [(13, 517, 70), (6, 64, 512), (12, 128, 1025), (300, 130, 41), (1000, 10, 784), (5, 1000, 513)]
# short K (kShortK = 64 in gemm_cpu.cpp: row split, B blocks up to 256 KB packed): C wider than one
# such block (float32 1088 columns at K = 60, float64 544), K on either side of the bound
SHAPES += [(50, 3000, 60), (200, 1100, 64), (40, 700, 65)]
TRANS = list(itertools.product([False, True], repeat=2))
# grouped by M: the leak-check fixture's gc.collect() costs ~0.1 s per test
SHAPE_GROUPS = {m: [s for s in SHAPES if s[0] == m] for m in sorted({s[0] for s in SHAPES})}


def rtol_for(dtype, k):
    # float32 sums of k products round at every step: the error relative to max|C| grows about
    # like sqrt(k) (checked against a float64 reference, so all of it is ours). 1e-5 up to k = 64.
    return 1e-5 * max(1.0, math.sqrt(k / 64)) if dtype == "float32" else 1e-10


def operands(rng, m, n, k, ta, tb, dtype):
    a = randn(rng, (k, m) if ta else (m, k), dtype)
    b = randn(rng, (n, k) if tb else (k, n), dtype)
    return a, b


def reference(a, b, ta, tb, alpha=1.0, beta=0.0, c=None):
    ta_, tb_ = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    out = alpha * ((ta_.T if ta else ta_) @ (tb_.T if tb else tb_))
    if c is not None and beta != 0:
        out = out + beta * torch.from_numpy(c).double()
    return out


@pytest.mark.parametrize("m", SHAPE_GROUPS)
def test_gemm_all_transposes(m, dtype, rng):
    for (_, n, k), ((ta, tb), (alpha, beta)) in itertools.product(
            SHAPE_GROUPS[m], zip(TRANS, [(1.0, 0.0), (0.5, 2.0), (-1.5, 1.0), (2.0, -0.25)])):
        a, b = operands(rng, m, n, k, ta, tb, dtype)
        c0 = randn(rng, (m, n), dtype)
        c = c0.copy()
        got = _C.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        assert np.shares_memory(np.asarray(got), c), "a given c is updated in place and returned"
        assert_close(c, reference(a, b, ta, tb, alpha, beta, c0), dtype, rtol_for(dtype, k),
                     what=f"gemm {m}x{n}x{k} ta={ta} tb={tb} alpha={alpha} beta={beta}")


def test_gemm_large_k_weight_gradient_accumulates(dtype, rng):
    # dW += dY^T X past the A^T copy's bound: computed as C^T = X^T dY, then added into C
    m, n, k = 100, 333, 21000
    a, b = operands(rng, m, n, k, True, False, dtype)
    c0 = randn(rng, (m, n), dtype)
    for alpha, beta in [(1.0, 1.0), (0.5, -2.0)]:
        c = c0.copy()
        _C.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=True)
        assert_close(c, reference(a, b, True, False, alpha, beta, c0), dtype, rtol_for(dtype, k),
                     what=f"alpha={alpha} beta={beta}")


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_new_output_ignores_beta(ta, tb, dtype, rng):
    a, b = operands(rng, 33, 70, 100, ta, tb, dtype)
    got = _C.gemm(a, b, alpha=0.75, beta=3.0, trans_a=ta, trans_b=tb)
    assert got.dtype == np.dtype(dtype) and tuple(got.shape) == (33, 70)
    assert_close(got, reference(a, b, ta, tb, 0.75), dtype, rtol_for(dtype, 100))


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_beta_zero_never_reads_c(ta, tb, dtype, rng):
    for m, n, k in [(7, 33, 13), (100, 1000, 33), (13, 517, 70), (1000, 7, 100)]:
        a, b = operands(rng, m, n, k, ta, tb, dtype)
        c = np.full((m, n), np.nan, dtype=dtype)
        _C.gemm(a, b, c, alpha=1.5, beta=0.0, trans_a=ta, trans_b=tb)
        assert np.isfinite(c).all(), "beta=0 must overwrite C, NaN included"
        assert_close(c, reference(a, b, ta, tb, 1.5), dtype, rtol_for(dtype, k))


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_k_zero_scales_c(ta, tb, dtype, rng):
    m, n = 7, 33
    a, b = operands(rng, m, n, 0, ta, tb, dtype)
    c0 = randn(rng, (m, n), dtype)
    c = c0.copy()
    _C.gemm(a, b, c, alpha=2.0, beta=0.5, trans_a=ta, trans_b=tb)
    assert_close(c, 0.5 * c0.astype(np.float64), dtype)
    c = np.full((m, n), np.nan, dtype=dtype)
    _C.gemm(a, b, c, beta=0.0, trans_a=ta, trans_b=tb)
    assert (c == 0).all()
    assert (np.asarray(_C.gemm(a, b, trans_a=ta, trans_b=tb)) == 0).all()


def test_gemm_empty_m_or_n(dtype, rng):
    for m, n in [(0, 5), (5, 0), (0, 0)]:
        a, b = randn(rng, (m, 4), dtype), randn(rng, (4, n), dtype)
        assert tuple(_C.gemm(a, b).shape) == (m, n)


@pytest.mark.parametrize("m,n,k,ta,tb", [
    (40, 1300, 1100, False, True),   # column blocks (NC) and K blocks on one thread
    (300, 700, 300, True, False),    # a weight gradient's shape: threads split the rows
    (256, 300, 600, True, False),    # A^T rows 1 KB apart: copied panels where tiles are narrow
    (130, 1030, 520, False, False),  # B as stored, packed
    (100, 1000, 300, False, True),   # a few dozen rows: C^T = W X^T, then transposed into C
    (1000, 20, 700, False, False),   # few columns: rows split in pieces, B packed once for all
    (600, 20, 1100, False, True),    # the same with W^T packed, in three K blocks
    (4100, 100, 520, False, True),   # a tall C whose A (8.5 MB float32) is past the caches: rows split
    (4100, 100, 520, False, False),  # the same with B as stored
    (100, 333, 21000, True, False),  # dW past the A^T copy's bound (8.4 MB float32): C^T = X^T dY
    (10, 1024, 700, True, False),    # the output layer's dW: B's rows 4 KB apart, packed for 2 row panels
    (13, 1024, 300, False, False),   # dY W with a few rows, B's rows 4 KB apart: packed
])
def test_gemm_same_bits_on_any_thread_count(m, n, k, ta, tb, dtype, rng):
    """One thread walks every block itself; two split C by rows or columns. Each element is summed
    in the same order however the threads split C, so the results are bitwise equal."""
    a, b = operands(rng, m, n, k, ta, tb, dtype)
    expected = reference(a, b, ta, tb)
    before = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(1)
        one = np.asarray(_C.gemm(a, b, trans_a=ta, trans_b=tb)).copy()
        fastnn.set_num_threads(2)
        two = np.asarray(_C.gemm(a, b, trans_a=ta, trans_b=tb))
    finally:
        fastnn.set_num_threads(before)
    assert_close(one, expected, dtype, rtol_for(dtype, k))
    assert np.array_equal(one, two)


def at_offset(a, elements):
    """A copy of `a` starting `elements` elements past a 64-byte boundary (contiguous, misaligned)."""
    buf = np.empty(a.size + elements + 64, a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + elements
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("m,n,k,ta,tb", [
    (5, 300, 200, False, True),     # dot products (a few rows)
    (70, 600, 130, False, True),    # C^T = W X^T, transposed into C
    (300, 10, 100, False, True),    # dot products (a few columns)
    (200, 300, 130, False, True),   # packed W^T
    (40, 300, 200, False, False),   # B read in place
    (130, 300, 200, False, False),  # B as stored: packed by 16-wide (AVX2) tiles, in place by 64-wide
    (300, 260, 70, True, False),    # A^T read in place, rows split
])
def test_gemm_misaligned_operands(m, n, k, ta, tb, dtype, rng):
    """Operands and C one element past a 64-byte boundary: every path loads and stores unaligned."""
    a, b = operands(rng, m, n, k, ta, tb, dtype)
    bias = randn(rng, (n,), dtype)
    expected = reference(a, b, ta, tb).numpy() + bias
    c = at_offset(np.zeros((m, n), dtype), 1)
    _C.gemm(at_offset(a, 1), at_offset(b, 3), c, trans_a=ta, trans_b=tb)
    assert_close(c, reference(a, b, ta, tb), dtype, rtol_for(dtype, k))
    if not ta and tb:  # the Linear forward, with its bias and activation epilogue
        y = np.asarray(_C.linear_forward(at_offset(a, 1), at_offset(b, 1), at_offset(bias, 1), "relu"))
        assert_close(y, np.maximum(expected, 0), dtype, rtol_for(dtype, k))


def test_gemm_torch_and_noncontiguous_inputs(dtype, rng):
    a, b = randn(rng, (100, 33), dtype), randn(rng, (70, 100), dtype)
    # a non-contiguous view arrives as a contiguous copy; torch tensors and outputs are zero-copy
    c = torch.zeros(33, 70, dtype=getattr(torch, dtype))
    _C.gemm(a.T, torch.from_numpy(b).T, c)
    assert_close(c, reference(a, b, True, True), dtype, rtol_for(dtype, 100))


def test_gemm_nan_propagates(dtype, rng):
    a, b = randn(rng, (7, 33), dtype), randn(rng, (33, 70), dtype)
    a[3, 5] = np.nan
    c = np.asarray(_C.gemm(a, b))
    assert np.isnan(c[3]).all() and np.isfinite(np.delete(c, 3, axis=0)).all()


def test_gemm_bad_inputs():
    f32 = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="^a: expected a 2-d tensor"):
        _C.gemm(np.ones(4, np.float32), f32)
    with pytest.raises(TypeError, match="^a: expected float32 or float64"):
        _C.gemm(np.ones((3, 4), np.int64), f32)
    with pytest.raises(TypeError, match="^a: expected"):
        _C.gemm([[1.0]], f32)
    with pytest.raises(TypeError, match="^b: expected float32 .*got float64"):
        _C.gemm(f32, np.ones((4, 2)))
    with pytest.raises(ValueError, match="^b: expected a 2-d tensor"):
        _C.gemm(f32, np.ones((4, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"^b: op\(b\) must have 4 rows"):
        _C.gemm(f32, np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"^b: op\(b\) must have 3 rows"):
        _C.gemm(f32, np.ones((4, 2), np.float32), trans_a=True)
    _C.gemm(f32, np.ones((2, 4), np.float32), trans_b=True)  # (3, 4) @ (4, 2): fine
    with pytest.raises(ValueError, match=r"^c: expected shape \(3, 2\)"):
        _C.gemm(f32, np.ones((4, 2), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="^c: expected float32"):
        _C.gemm(f32, np.ones((4, 2), np.float32), np.zeros((3, 2)))
    ro = np.zeros((3, 2), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="^c: "):
        _C.gemm(f32, np.ones((4, 2), np.float32), ro)
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="^c: must not share memory with a"):
        _C.gemm(sq, np.ones((4, 4), np.float32), sq)
    with pytest.raises(ValueError, match="^c: must not share memory with b"):
        _C.gemm(np.ones((4, 4), np.float32), sq, sq)


# One script, run under each FASTNN_ISA cap: the AVX-512, AVX2 and scalar micro-kernels (and
# their packers and epilogues) must all agree with a float64 reference. M = 128 and 256 with
# trans_a: A^T's rows 512 bytes apart, so the narrower kernels copy its micro-panels (pack_a);
# 300 x 3000 x 40: the short-K row split, wider than one of its B blocks under every tile width.
ISA_SCRIPT = textwrap.dedent("""
    import itertools, sys
    import numpy as np
    import fastnn
    from fastnn import _C
    rng = np.random.default_rng(7)
    print(fastnn.build_info()["cpu_isa"])
    worst = 0.0
    thread_mismatches = []
    for dt, (m, n, k), (ta, tb) in itertools.product(
            [np.float32, np.float64], [(1, 1, 1), (7, 33, 13), (13, 517, 70), (100, 10, 1000), (300, 70, 600),
             (128, 300, 70), (256, 700, 300), (300, 3000, 40)],
            itertools.product([False, True], repeat=2)):
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
        c0 = rng.standard_normal((m, n)).astype(dt)
        c = c0.copy()
        _C.gemm(a, b, c, alpha=0.5, beta=-1.0, trans_a=ta, trans_b=tb)
        A, B = a.astype(np.float64), b.astype(np.float64)
        ref = 0.5 * (A.T if ta else A) @ (B.T if tb else B) - c0
        tol = 1e-5 * max(1.0, (k / 64) ** 0.5) if dt == np.float32 else 1e-10
        worst = max(worst, np.abs(c - ref).max() / np.abs(ref).max() / tol)
        # Each kernel set splits C its own way (its tile sizes): one thread must give the same bits.
        fastnn.set_num_threads(1)
        one = c0.copy()
        _C.gemm(a, b, one, alpha=0.5, beta=-1.0, trans_a=ta, trans_b=tb)
        fastnn.set_num_threads(2)
        if not np.array_equal(one, c):
            thread_mismatches.append(f"{np.dtype(dt).name}:{m}x{n}x{k}:ta={ta}:tb={tb}")
    for dt, act in itertools.product([np.float32, np.float64], ["none", "relu", "tanh", "sigmoid"]):
        x = rng.standard_normal((33, 70)).astype(dt)
        w = rng.standard_normal((13, 70)).astype(dt)
        bias = rng.standard_normal(13).astype(dt)
        z = x.astype(np.float64) @ w.T.astype(np.float64) + bias
        ref = {"none": z, "relu": np.maximum(z, 0), "tanh": np.tanh(z), "sigmoid": 1 / (1 + np.exp(-z))}[act]
        y = np.asarray(_C.linear_forward(x, w, bias, act))
        tol = 1e-5 * max(1.0, (70 / 64) ** 0.5) if dt == np.float32 else 1e-10
        worst = max(worst, np.abs(y - ref).max() / np.abs(ref).max() / tol)
    print(worst)
    print(",".join(thread_mismatches) or "none")
""")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_gemm_every_isa_variant(isa):
    names = {"scalar": "scalar", "avx2": "AVX2", "avx512": "AVX-512"}
    native = fastnn.build_info()["cpu_isa"]
    order = ["scalar", "AVX2", "AVX-512"]
    if order.index(names[isa]) > order.index(native):
        pytest.skip(f"this CPU has no {names[isa]}")
    env = dict(os.environ, FASTNN_ISA=isa)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    used, worst, thread_mismatches = out.stdout.split()
    assert used == names[isa]
    assert float(worst) <= 1.0, f"{isa}: worst error {worst} x tolerance"
    assert thread_mismatches == "none", f"{isa}: 1 and 2 threads gave different bits for {thread_mismatches}"
