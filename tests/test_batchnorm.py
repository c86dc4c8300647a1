"""BatchNorm1d on (N, C) against torch.nn.functional.batch_norm and torch autograd.

float32 results are compared with torch in float64 on the same (upcast) values: the truth, rather
than torch's own float32 rounding."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastnn
from fastnn import _C
from utils import assert_close, randn

SHAPES = [(2, 2), (2, 1000), (7, 33), (33, 7), (1000, 2), (1000, 33), (33, 1000), (65, 257), (9, 513)]
# Over 16 MiB of traffic for both dtypes: the statistics passes prefetch, and the AVX-512
# elementwise pass streams its output when every row is whole cache lines (2048 columns) and not
# otherwise (4099); both column counts take its 4-row blocks, and 1031 and 517 rows leave 3 and 1
# rows after them.
LARGE = [(1031, 2048), (517, 4099)]
# Over 24 MiB of input: the one-read path (kOneReadAboveBytes in batchnorm_cpu.cpp), blocks of
# 240-496 columns whose statistics and elementwise pass run back to back. 4096 columns stream their
# output, 4100 end in a partial vector and do not; 2051 rows leave 3 after the 8-row blocks. The
# path is taken by default under AVX-512 only; its tests force it (the one_read fixture), so an
# AVX2 machine runs it too.
ONE_READ = {"float32": [(2051, 4096), (2051, 4100)], "float64": [(1031, 4096), (1031, 4100)]}


@pytest.fixture
def one_read(monkeypatch):
    monkeypatch.setenv("FASTNN_BN_ONE_READ", "1")


def t64(a, requires_grad=False):
    t = torch.tensor(np.asarray(a), dtype=torch.float64)
    return t.requires_grad_(requires_grad) if requires_grad else t


def reference(x, w, b, rm, rv, training, momentum, eps, dy):
    """torch in float64: y, dx, dweight, dbias, running_mean, running_var (after the update)."""
    xt = t64(x, True)
    wt = t64(w, True) if w is not None else None
    bt = t64(b, True) if b is not None else None
    rmt = t64(rm) if rm is not None else None
    rvt = t64(rv) if rv is not None else None
    y = F.batch_norm(xt, rmt, rvt, wt, bt, training, momentum, eps)
    y.backward(t64(dy))
    grad = lambda t: None if t is None else t.grad
    return y, xt.grad, grad(wt), grad(bt), rmt, rvt


def make(rng, shape, dtype, affine=True, tracked=True, loc=0.5, scale=2.0):
    n, c = shape
    x = randn(rng, shape, dtype, scale) + np.asarray(loc, dtype=dtype)
    w = randn(rng, c, dtype) if affine else None
    b = randn(rng, c, dtype) if affine else None
    rm = randn(rng, c, dtype) if tracked else None
    rv = (rng.random(c) + 0.5).astype(dtype) if tracked else None
    dy = randn(rng, shape, dtype)
    return x, w, b, rm, rv, dy


def copy(a):
    return None if a is None else a.copy()


@pytest.mark.parametrize("shape", SHAPES)
def test_training_matches_torch(dtype, rng, shape):
    for affine, tracked in [(True, True), (False, False), (True, False), (False, True)]:
        check_training(dtype, rng, shape, affine, tracked)


def check_training(dtype, rng, shape, affine, tracked):
    x, w, b, rm, rv, dy = make(rng, shape, dtype, affine, tracked)
    y_ref, dx_ref, dw_ref, db_ref, rm_ref, rv_ref = reference(x, w, b, copy(rm), copy(rv), True, 0.1, 1e-5, dy)

    y, save_mean, save_invstd = _C.batchnorm_forward(x, w, b, rm, rv, True)
    assert_close(y, y_ref, dtype, what="y")
    assert save_mean.dtype == np.float64 and save_invstd.dtype == np.float64
    x64 = x.astype(np.float64)
    assert_close(save_mean, x64.mean(0), dtype, what="save_mean")
    assert_close(save_invstd, 1 / np.sqrt(x64.var(0) + 1e-5), dtype, what="save_invstd")
    if tracked:
        assert_close(rm, rm_ref, dtype, what="running_mean")
        assert_close(rv, rv_ref, dtype, what="running_var")

    dx, dw, db = _C.batchnorm_backward(x, dy, w, save_mean, save_invstd, True)
    assert_close(dx, dx_ref, dtype, what="dx")
    if affine:
        assert_close(dw, dw_ref, dtype, what="dweight")
        assert_close(db, db_ref, dtype, what="dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("shape", [(2, 7), (33, 1000), (1000, 33), (1, 5), (0, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_matches_torch(dtype, rng, shape, affine):
    x, w, b, rm, rv, dy = make(rng, shape, dtype, affine)
    rm0, rv0 = rm.copy(), rv.copy()
    y_ref, dx_ref, dw_ref, db_ref, _, _ = reference(x, w, b, rm, rv, False, 0.1, 1e-3, dy)

    y, save_mean, save_invstd = _C.batchnorm_forward(x, w, b, rm, rv, False, eps=1e-3)
    assert_close(y, y_ref, dtype, what="y")
    np.testing.assert_array_equal(rm, rm0)  # eval never moves the running statistics
    np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_array_equal(save_mean, rm0)
    assert_close(save_invstd, 1 / np.sqrt(rv0.astype(np.float64) + 1e-3), dtype, what="save_invstd")

    dx, dw, db = _C.batchnorm_backward(x, dy, w, save_mean, save_invstd, False)
    assert_close(dx, dx_ref, dtype, what="dx")
    if affine:
        assert_close(dw, dw_ref, dtype, what="dweight")
        assert_close(db, db_ref, dtype, what="dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("rows", [7, 33, 1000, 4097])
@pytest.mark.parametrize("cols", [1, 7, 33, 1000])
def test_rows_and_columns_grid(dtype, rng, rows, cols):
    """Row counts off the 8-row blocks the statistics pass sums in registers (4097 = 512 blocks +
    1), and column counts off the vector widths (the 2048-column strips: LARGE[1] spans two)."""
    check_training(dtype, rng, (rows, cols), True, True)


@pytest.mark.parametrize("shape", [(64, 2100), (2, 1100), (9, 1031)])
def test_segments_where_dx_cancels(dtype, rng, shape):
    """Columns whose dx cancels (constant dy, so dx ~ 0) are formed in double, in 1024-column row
    segments that other columns share: each segment takes its own path, and both match torch."""
    x, w, b, _, _, dy = make(rng, shape, dtype)
    dy[:, 1030] = dy[0, 1030]  # dx = 0 in exact arithmetic: cancellation in the second segment
    dy[:, 3] = dy[0, 3]
    ref = reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    y, m, s = _C.batchnorm_forward(x, w, b, None, None, True)
    dx, dw, db = _C.batchnorm_backward(x, dy, w, m, s, True)
    # the cancelling columns' dx is rounding noise of size ~eps * k * |dy|: measured against that
    assert_close(dx, ref[1], dtype, what="dx", scale=float(np.max(np.abs(dy)) * np.max(np.abs(w))))
    for col in (3, 1030):
        assert np.max(np.abs(np.asarray(dx)[:, col])) <= 1e-5 * np.max(np.abs(dy[:, col] * w[col]))
    assert_close(dw, ref[2], dtype, what="dweight")
    assert_close(db, ref[3], dtype, what="dbias")


@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0, 0.0])
def test_running_stats_over_several_steps(dtype, rng, momentum):
    c = 33
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_t, rv_t = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    for step in range(6):
        n = [7, 1000, 2, 33, 64, 5][step]
        x = randn(rng, (n, c), dtype, scale=1 + step) + np.asarray(step - 2.5, dtype=dtype)
        _C.batchnorm_forward(x, None, None, rm, rv, True, momentum=momentum)
        F.batch_norm(t64(x), rm_t, rv_t, None, None, True, momentum, 1e-5)
    assert_close(rm, rm_t, dtype, what="running_mean")
    assert_close(rv, rv_t, dtype, what="running_var")
    # then eval normalises with exactly those statistics
    x = randn(rng, (9, c), dtype)
    y, _, _ = _C.batchnorm_forward(x, None, None, rm, rv, False)
    assert_close(y, F.batch_norm(t64(x), t64(rm), t64(rv), None, None, False), dtype, what="eval y")


def test_large_mean_float32(rng):
    """float32 data 1e6 + O(1) noise: statistics, y and gradients stay accurate to float32."""
    shape = (4096, 40)
    noise_scale = np.linspace(0.5, 50, shape[1])
    x = (1e6 + rng.standard_normal(shape) * noise_scale).astype(np.float32)
    w, b = randn(rng, shape[1], "float32"), randn(rng, shape[1], "float32")
    rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
    dy = randn(rng, shape, "float32")
    y_ref, dx_ref, dw_ref, db_ref, rm_ref, rv_ref = reference(x, w, b, rm.copy(), rv.copy(), True, 0.1, 1e-5, dy)

    y, save_mean, save_invstd = _C.batchnorm_forward(x, w, b, rm, rv, True)
    assert_close(y, y_ref, "float32", what="y")
    assert_close(save_invstd, 1 / np.sqrt(x.astype(np.float64).var(0) + 1e-5), "float32", what="invstd")
    assert_close(rv, rv_ref, "float32", what="running_var")
    dx, dw, db = _C.batchnorm_backward(x, dy, w, save_mean, save_invstd, True)
    # save_mean is the float32 rounding of a mean near 1e6 (off by up to 1/32); the backward
    # corrects for it, so dx is as accurate as y
    assert_close(dx, dx_ref, "float32", what="dx")
    assert_close(dw, dw_ref, "float32", what="dweight")
    assert_close(db, db_ref, "float32", what="dbias")
    # statistics rounded to float32 (as torch keeps them): the mean correction still holds dx
    dx32, _, _ = _C.batchnorm_backward(x, dy, w, np.asarray(save_mean).astype(np.float32),
                                       np.asarray(save_invstd).astype(np.float32), True)
    assert_close(dx32, dx_ref, "float32", what="dx from float32 statistics")


def test_large_mean_float64(rng):
    x = 1e4 + rng.standard_normal((1000, 7)) * 1e-2
    dy = rng.standard_normal(x.shape)
    y_ref, dx_ref, _, _, _, _ = reference(x, None, None, None, None, True, 0.1, 1e-5, dy)
    y, m, s = _C.batchnorm_forward(x, None, None, None, None, True)
    assert_close(y, y_ref, "float64", rtol=1e-9, what="y")  # rounding of x near 1e4: 2e-12 / 1e-2
    dx, _, _ = _C.batchnorm_backward(x, dy, None, m, s, True)
    assert_close(dx, dx_ref, "float64", rtol=1e-9, what="dx")


@pytest.mark.parametrize("training", [True, False])
def test_weight_or_bias_alone(dtype, rng, training):
    x, w, b, rm, rv, dy = make(rng, (33, 70), dtype)
    for weight, bias in [(w, None), (None, b)]:
        ref = reference(x, weight, bias, rm.copy(), rv.copy(), training, 0.1, 1e-5, dy)
        y, m, s = _C.batchnorm_forward(x, weight, bias, rm.copy(), rv.copy(), training)
        assert_close(y, ref[0], dtype, what="y")
        dx, dw, db = _C.batchnorm_backward(x, dy, weight, m, s, training)
        assert_close(dx, ref[1], dtype, what="dx")
        if weight is not None:
            assert_close(dw, ref[2], dtype, what="dweight")
            assert_close(db, dy.astype(np.float64).sum(0), dtype, what="dbias")


def test_accumulate_and_buffers(dtype, rng):
    x, w, b, rm, rv, dy = make(rng, (33, 7), dtype)
    _, dw_ref, db_ref = None, *reference(x, w, b, None, None, True, 0.1, 1e-5, dy)[2:4]
    y, m, s = _C.batchnorm_forward(x, w, b, None, None, True)
    dw_buf, db_buf = np.full(7, 2.0, dtype), np.full(7, -1.0, dtype)
    dx_buf = np.empty_like(x)
    dx, dw, db = _C.batchnorm_backward(x, dy, w, m, s, True, dx=dx_buf, dweight=dw_buf, dbias=db_buf,
                                       accumulate=True)
    assert np.asarray(dx).ctypes.data == dx_buf.ctypes.data
    assert np.asarray(dw).ctypes.data == dw_buf.ctypes.data
    assert_close(dw_buf, dw_ref.numpy() + 2.0, dtype, what="accumulated dweight")
    assert_close(db_buf, db_ref.numpy() - 1.0, dtype, what="accumulated dbias")
    _C.batchnorm_backward(x, dy, w, m, s, True, dweight=dw_buf, dbias=db_buf)  # overwrite
    assert_close(dw_buf, dw_ref, dtype, what="written dweight")
    assert_close(db_buf, db_ref, dtype, what="written dbias")
    # accumulate=True without buffers: fresh zeros, so the plain gradient
    _, dw2, db2 = _C.batchnorm_backward(x, dy, w, m, s, True, accumulate=True)
    assert_close(dw2, dw_ref, dtype, what="fresh dweight")
    # no weight, but buffers given: the gradients with respect to a unit weight and zero bias
    _, dw3, db3 = _C.batchnorm_backward(x, dy, None, m, s, True, dweight=np.empty(7, dtype))
    assert db3 is None
    assert_close(dw3, dw_ref, dtype, what="dweight without weight")


@pytest.mark.parametrize("shape", LARGE)
def test_large_inputs_match_torch(dtype, rng, shape):
    check_training(dtype, rng, shape, True, True)


@pytest.mark.parametrize("which", [0, 1])
def test_one_read_path_matches_torch(dtype, rng, which, one_read):
    check_training(dtype, rng, ONE_READ[dtype][which], True, True)


def test_one_read_switch(rng, monkeypatch):
    """FASTNN_BN_ONE_READ=0 takes two passes over an input that size, and matches torch as well;
    a value other than 0 or 1 raises a ValueError naming the variable (only where the input is
    large enough for the switch to matter)."""
    monkeypatch.setenv("FASTNN_BN_ONE_READ", "0")
    check_training("float32", rng, ONE_READ["float32"][1], True, True)
    x = np.zeros(ONE_READ["float32"][0], np.float32)
    monkeypatch.setenv("FASTNN_BN_ONE_READ", "yes")
    _C.batchnorm_forward(x[:64], None, None, None, None, True)  # small: not consulted
    with pytest.raises(ValueError, match="FASTNN_BN_ONE_READ"):
        _C.batchnorm_forward(x, None, None, None, None, True)


def test_one_read_path_where_dx_cancels_any_thread_count(dtype, rng, one_read):
    """Columns whose dx cancels are formed in double per 16-column group, never per block, so a
    thread count that moves the blocks (3 threads cut the columns elsewhere) gives the same bits:
    495 and 496 sit on either side of a 496-column block boundary."""
    shape = ONE_READ[dtype][1]
    x, w, b, _, _, dy = make(rng, shape, dtype)
    cancelling = (3, 495, 496, 1030, 4099)
    for col in cancelling:
        dy[:, col] = dy[0, col]
    ref = reference(x, w, b, None, None, True, 0.1, 1e-5, dy)
    before = fastnn.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            y, m, s = _C.batchnorm_forward(x, w, b, None, None, True)
            dx, dw, db = _C.batchnorm_backward(x, dy, w, m, s, True)
            outs.append([np.asarray(t).copy() for t in (y, m, s, dx, dw, db)])
    finally:
        fastnn.set_num_threads(before)
    for other in outs[1:]:
        for a, b_ in zip(outs[0], other):
            assert a.tobytes() == b_.tobytes()
    y, _, _, dx, dw, db = outs[0]
    assert_close(y, ref[0], dtype, what="y")
    assert_close(dx, ref[1], dtype, what="dx", scale=float(np.max(np.abs(dy)) * np.max(np.abs(w))))
    for col in cancelling:
        assert np.max(np.abs(dx[:, col])) <= 1e-5 * np.max(np.abs(dy[:, col] * w[col]))
    assert_close(dw, ref[2], dtype, what="dweight")
    assert_close(db, ref[3], dtype, what="dbias")


def aligned(a):
    """A copy of a in fastnn's 64-byte aligned storage, which the streaming stores need (numpy's
    own buffers are 16-byte aligned)."""
    out = np.asarray(_C.zeros(list(a.shape), str(a.dtype)))
    out[...] = a
    assert out.ctypes.data % 64 == 0
    return out


@pytest.mark.parametrize("shape", [(64, 300)] + LARGE + ["one-read"])
def test_in_place_forward_and_backward(dtype, rng, shape, monkeypatch):
    if shape == "one-read":
        shape = ONE_READ[dtype][0]
        monkeypatch.setenv("FASTNN_BN_ONE_READ", "1")
    x, w, b, _, _, dy = make(rng, shape, dtype)
    x, dy = aligned(x), aligned(dy)
    y, m, s = _C.batchnorm_forward(x, w, b, None, None, True)
    dx, _, _ = _C.batchnorm_backward(x, dy, w, m, s, True)
    y, dx = np.asarray(y).copy(), np.asarray(dx).copy()
    _C.batchnorm_backward(x, dy, w, m, s, True, dx=dy)  # dx aliasing dy
    np.testing.assert_array_equal(dy, dx)
    _C.batchnorm_forward(x, w, b, None, None, True, out=x)  # y aliasing x
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("shape", [(500, 1000), (4097, 33), (300, 2100), LARGE[0]])
def test_deterministic_across_thread_counts(dtype, rng, shape):
    """Bitwise: the statistics pass splits columns and the elementwise pass rows, never a column's
    sum; (300, 2100) spans several row segments, (4097, 33) splits rows only, and LARGE[0] row
    blocks that start wherever a thread's rows do."""
    x, w, b, rm, rv, dy = make(rng, shape, dtype)
    before = fastnn.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            fastnn.set_num_threads(threads)
            rm_i, rv_i = rm.copy(), rv.copy()
            y, m, s = _C.batchnorm_forward(x, w, b, rm_i, rv_i, True)
            dx, dw, db = _C.batchnorm_backward(x, dy, w, m, s, True)
            outs.append([np.asarray(t).copy() for t in (y, m, s, dx, dw, db)] + [rm_i, rv_i])
    finally:
        fastnn.set_num_threads(before)
    for other in outs[1:]:
        for a, b_ in zip(outs[0], other):
            assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("shape", [(70, 300), LARGE[0]])
def test_every_isa_variant_matches_torch(tmp_path, rng, shape):
    """The AVX-512, AVX2 and baseline builds of each kernel, run in subprocesses."""
    x, w, b, rm, rv, dy = make(rng, shape, "float64")
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b, rm=rm, rv=rv, dy=dy)
    code = f"""
import numpy as np, fastnn
d = np.load({str(tmp_path / 'in.npz')!r})
out = {{}}
for dt in ("float32", "float64"):
    x, w, b, dy = (d[k].astype(dt) for k in ("x", "w", "b", "dy"))
    rm, rv = d["rm"].astype(dt), d["rv"].astype(dt)
    y, m, s = fastnn._C.batchnorm_forward(x, w, b, rm, rv, True)
    dx, dw, db = fastnn._C.batchnorm_backward(x, dy, w, m, s, True)
    ye, me, se = fastnn._C.batchnorm_forward(x, w, b, rm, rv, False)
    dxe, dwe, dbe = fastnn._C.batchnorm_backward(x, dy, w, me, se, False)
    for k, v in dict(y=y, dx=dx, dw=dw, db=db, rm=rm, rv=rv, ye=ye, dxe=dxe, dwe=dwe).items():
        out[dt + k] = np.asarray(v)
np.savez({str(tmp_path / 'out')!r} + fastnn.build_info()["cpu_isa"] + ".npz", **out)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for isa in ("scalar", "avx2", "avx512"):
        subprocess.run([sys.executable, "-c", code], env=dict(env, FASTNN_ISA=isa), check=True)
    isas = sorted(p.name for p in tmp_path.glob("out*.npz"))
    assert "outscalar.npz" in isas
    ref = reference(x, w, b, rm.copy(), rv.copy(), True, 0.1, 1e-5, dy)
    ref_eval = reference(x, w, b, ref[4].numpy(), ref[5].numpy(), False, 0.1, 1e-5, dy)
    for name in isas:
        got = np.load(tmp_path / name)
        for dt in ("float32", "float64"):
            for key, expected in dict(y=ref[0], dx=ref[1], dw=ref[2], db=ref[3], rm=ref[4], rv=ref[5],
                                      ye=ref_eval[0], dxe=ref_eval[1], dwe=ref_eval[2]).items():
                assert_close(got[dt + key], expected, dt, what=f"{name} {dt} {key}")


def test_nan_stays_in_its_column(dtype, rng):
    x, w, b, _, _, dy = make(rng, (33, 7), dtype)
    x[5, 2] = np.nan
    y, m, s = _C.batchnorm_forward(x, w, b, None, None, True)
    y = np.asarray(y)
    assert np.isnan(y[:, 2]).all() and not np.isnan(np.delete(y, 2, axis=1)).any()
    dx, dw, db = _C.batchnorm_backward(x, dy, w, m, s, True)
    assert np.isnan(np.asarray(dx)[:, 2]).all() and not np.isnan(np.delete(np.asarray(dx), 2, axis=1)).any()


def test_empty_batch_and_no_channels(dtype):
    x = np.empty((0, 5), dtype)
    rm, rv = np.zeros(5, dtype), np.ones(5, dtype)
    y, m, s = _C.batchnorm_forward(x, None, None, rm, rv, False)
    assert np.asarray(y).shape == (0, 5)
    dx, dw, db = _C.batchnorm_backward(x, x, np.ones(5, dtype), m, s, False)
    assert np.asarray(dx).shape == (0, 5)
    np.testing.assert_array_equal(dw, np.zeros(5))
    np.testing.assert_array_equal(db, np.zeros(5))
    dx, dw, db = _C.batchnorm_backward(x, x, np.ones(5, dtype), m, s, True)
    np.testing.assert_array_equal(dw, np.zeros(5))
    y, m, s = _C.batchnorm_forward(np.empty((4, 0), dtype), None, None, None, None, True)
    assert np.asarray(y).shape == (4, 0) and np.asarray(m).shape == (0,)


def test_errors(rng):
    x = randn(rng, (4, 3), "float64")
    c3 = np.zeros(3)
    with pytest.raises(ValueError, match=r"^x: expected more than 1 value per channel when training, "
                                         r"got input of shape \(1, 3\)$"):
        _C.batchnorm_forward(x[:1].copy(), None, None, None, None, True)
    with pytest.raises(ValueError, match=r"x: expected more than 1 value per channel when training, "
                                         r"got input of shape \(0, 3\)"):
        _C.batchnorm_forward(x[:0].copy(), None, None, c3, c3 + 1, True)
    with pytest.raises(ValueError, match="x: expected a 2-d tensor"):
        _C.batchnorm_forward(np.zeros(3), None, None, None, None, True)
    with pytest.raises(TypeError, match="x: "):
        _C.batchnorm_forward(np.zeros((4, 3), np.int64), None, None, None, None, True)
    with pytest.raises(ValueError, match="weight: expected shape"):
        _C.batchnorm_forward(x, np.ones(4), None, None, None, True)
    with pytest.raises(TypeError, match="bias: expected float64"):
        _C.batchnorm_forward(x, None, np.ones(3, np.float32), None, None, True)
    with pytest.raises(ValueError, match="running_var: "):
        _C.batchnorm_forward(x, None, None, c3, None, True)
    with pytest.raises(ValueError, match="running_mean: required when training=False"):
        _C.batchnorm_forward(x, None, None, None, None, False)
    with pytest.raises(ValueError, match="eps: "):
        _C.batchnorm_forward(x, None, None, None, None, True, eps=-1.0)
    with pytest.raises(ValueError, match="out: expected shape"):
        _C.batchnorm_forward(x, None, None, None, None, True, out=np.zeros((3, 4)))
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean: .*read-only"):
        _C.batchnorm_forward(x, None, None, frozen, c3 + 1, True)
    y, m, s = _C.batchnorm_forward(x, None, None, None, None, True)
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.batchnorm_backward(x, np.zeros((4, 4)), None, m, s, True)
    with pytest.raises(TypeError, match="dy: expected float64"):
        _C.batchnorm_backward(x, np.zeros((4, 3), np.float32), None, m, s, True)
    with pytest.raises(TypeError, match="save_mean: "):
        _C.batchnorm_backward(x, x, None, None, s, True)
    with pytest.raises(TypeError, match="save_mean: expected float64 or float64"):
        _C.batchnorm_backward(x, x, None, np.zeros(3, np.int64), s, True)
    with pytest.raises(TypeError, match="save_invstd: expected float64 or float32"):
        _C.batchnorm_backward(x.astype(np.float32), x.astype(np.float32), None, m, np.ones(3, np.int32), True)
    with pytest.raises(ValueError, match="save_invstd: expected shape"):
        _C.batchnorm_backward(x, x, None, m, np.ones(4), True)
    with pytest.raises(ValueError, match="dweight: expected shape"):
        _C.batchnorm_backward(x, x, np.ones(3), m, s, True, dweight=np.zeros(4))
    with pytest.raises(ValueError, match="dx: expected shape"):
        _C.batchnorm_backward(x, x, None, m, s, True, dx=np.zeros(12))


# ---------------------------------------------------------------------------------------------
# BatchNorm -> ReLU -> Dropout as one op: activation= and dropout= of the forward, y= of the backward

def host(t):
    return t.to("cpu").numpy() if hasattr(t, "to") else np.asarray(t)


def on(device, a):
    return None if a is None else fastnn.tensor(a).to(device)


@pytest.mark.parametrize("shape", [(2, 1), (7, 33), (33, 7), (1000, 2), (65, 257), (128, 1024)])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_fused_relu_dropout_matches_torch(device, dtype, rng, shape, p):
    # torch: batch_norm -> relu -> times fastnn's own mask / (1 - p), in float64, with autograd
    x, w, b, rm, rv, dy = make(rng, shape, dtype)
    seed, offset = int(rng.integers(2**63)), int(rng.integers(2**40))
    y, mean, invstd = _C.batchnorm_forward(on(device, x), on(device, w), on(device, b), on(device, rm),
                                           on(device, rv), True, activation="relu", dropout=(p, seed, offset))
    mask = _C.dropout_mask(list(shape), p, seed, offset).numpy()
    xt, wt, bt = t64(x, True), t64(w, True), t64(b, True)
    keep = torch.from_numpy(mask.astype(np.float64)) * (1.0 / (1.0 - p) if p < 1 else 0.0)
    normalised = F.batch_norm(xt, t64(rm), t64(rv), wt, bt, True, 0.1, 1e-5)
    # relu's gradient switches at 0: where a float32 normalised value lies that close to 0 torch's
    # float64 one may fall on the other side, so there relu follows fastnn (whose y > 0 says it
    # passed, for kept elements; dropped ones are zero either way)
    positive = normalised.detach() > 0
    near_zero = normalised.detach().abs() < 1e-4
    positive = torch.where(near_zero, torch.from_numpy(host(y) > 0), positive)
    yt = normalised * positive * keep
    yt.backward(t64(dy))
    assert_close(host(y), yt, dtype, what="y")
    dx, dw, db = _C.batchnorm_backward(on(device, x), on(device, dy), on(device, w), mean, invstd, True,
                                       y=y, activation="relu", p=p)
    assert_close(host(dx), xt.grad, dtype, what="dx")
    assert_close(host(dw), wt.grad, dtype, what="dweight")
    assert_close(host(db), bt.grad, dtype, what="dbias")


@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("p", [0.4, 0.5, 0.25, 3 / 256])  # 16, 1, 2 and 8 random bits an element
def test_fused_forward_is_bitwise_batchnorm_then_dropout(device, dtype, rng, act, training, p):
    # the same mask, the same single multiply: fusing changes no bit, in either mode; 1030 columns
    # put row starts mid-quad at every bit count
    x, w, b, rm, rv, dy = make(rng, (37, 1030), dtype)
    args = [on(device, a) for a in (x, w, b, rm, rv)]
    plain, _, _ = _C.batchnorm_forward(*args, training)
    args = [on(device, a) for a in (x, w, b, rm, rv)]
    fused, _, _ = _C.batchnorm_forward(*args, training, activation=act, dropout=(p, 9, 1 << 33))
    np.testing.assert_array_equal(host(fused), host(_C.dropout_forward(plain, p, 9, 1 << 33, act)))
    relu_only, _, _ = _C.batchnorm_forward(*[on(device, a) for a in (x, w, b, rm, rv)], training, activation=act)
    np.testing.assert_array_equal(host(relu_only), np.maximum(host(plain), 0) if act == "relu" else host(plain))


@pytest.mark.parametrize("shape", [(2, 1), (9, 33), (127, 1030), (1000, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_backward_is_bitwise_dropout_backward_then_batchnorm(device, dtype, rng, shape, training):
    # the backward forms relu + dropout's gradient as it reads dy (no pass of its own): the same
    # value in the same dtype, so every bit as dropout_backward then BatchNorm's backward; rows not a
    # multiple of the statistics' 8-row blocks, columns not of any vector width; a NaN in y counts
    # as not positive there as in dropout_backward
    x, w, b, rm, rv, dy = make(rng, shape, dtype)
    y, mean, invstd = _C.batchnorm_forward(on(device, x), on(device, w), on(device, b), on(device, rm),
                                           on(device, rv), training, activation="relu", dropout=(0.3, 7, 2))
    y = host(y).copy()
    y.flat[::5] = np.nan
    want = _C.batchnorm_backward(on(device, x), _C.dropout_backward(on(device, dy), 0.3, 7, 2, on(device, y), "relu"),
                                 on(device, w), mean, invstd, training)
    got = _C.batchnorm_backward(on(device, x), on(device, dy), on(device, w), mean, invstd, training,
                                y=on(device, y), activation="relu", p=0.3)
    for name, a, b in zip(("dx", "dweight", "dbias"), got, want):
        np.testing.assert_array_equal(host(a), host(b), err_msg=name)
    # dx written over dy: each element is read before it is written
    g = on(device, dy)
    _C.batchnorm_backward(on(device, x), g, on(device, w), mean, invstd, training, dx=g, y=on(device, y),
                          activation="relu", p=0.3)
    np.testing.assert_array_equal(host(g), host(want[0]))


def test_fused_forward_on_the_one_read_and_streaming_paths(rng, one_read):
    # the one-read path (column blocks) runs the epilogue as a pass of its own, and a fused
    # forward large enough to stream keeps y in the caches instead: both bit for bit as unfused
    for shape in [(2051, 4100), (1031, 2048)]:
        x, w, b, rm, rv, dy = make(rng, shape, "float32")
        plain, mean, invstd = _C.batchnorm_forward(x, w, b, None, None, True)
        fused, _, _ = _C.batchnorm_forward(x, w, b, None, None, True, activation="relu", dropout=(0.5, 3, 4))
        np.testing.assert_array_equal(host(fused), host(_C.dropout_forward(plain, 0.5, 3, 4, "relu")))
        dx, dw, db = _C.batchnorm_backward(x, dy, w, mean, invstd, True, y=fused, activation="relu", p=0.5)
        ref = _C.batchnorm_backward(x, _C.dropout_backward(dy, 0.5, 3, 4, fused, "relu"), w, mean, invstd, True)
        for got, want in zip((dx, dw, db), ref):
            np.testing.assert_array_equal(host(got), host(want))


def test_fused_errors(rng):
    x = randn(rng, (4, 3), "float64")
    with pytest.raises(ValueError, match="activation: dropout fuses only 'relu' or 'none', got 'tanh'"):
        _C.batchnorm_forward(x, None, None, None, None, True, activation="tanh")
    with pytest.raises(ValueError, match="p: expected a dropout probability in"):
        _C.batchnorm_forward(x, None, None, None, None, True, dropout=(1.5, 0, 0))
    with pytest.raises(TypeError, match=r"dropout: expected None or a tuple \(p, seed, offset\)"):
        _C.batchnorm_forward(x, None, None, None, None, True, dropout=0.5)
    with pytest.raises(ValueError, match="seed: expected an int in"):
        _C.batchnorm_forward(x, None, None, None, None, True, dropout=(0.5, -1, 0))
    with pytest.raises(TypeError, match="slot: expected None or a fastnn graph slot"):
        _C.batchnorm_forward(x, None, None, None, None, True, dropout=(0.5, 1, 2), slot=3)
    y, m, s = _C.batchnorm_forward(x, None, None, None, None, True, activation="relu", dropout=(0.5, 1, 2))
    with pytest.raises(ValueError, match="p: .*needs activation='relu'"):
        _C.batchnorm_backward(x, x, None, m, s, True, p=0.5)
    with pytest.raises(ValueError, match="y: the fused forward's output is required"):
        _C.batchnorm_backward(x, x, None, m, s, True, activation="relu", p=0.5)
    with pytest.raises(ValueError, match="y: expected shape"):
        _C.batchnorm_backward(x, x, None, m, s, True, y=np.zeros((4, 4)), activation="relu", p=0.5)
    with pytest.raises(TypeError, match="y: expected float64"):
        _C.batchnorm_backward(x, x, None, m, s, True, y=np.zeros((4, 3), np.float32), activation="relu")


@pytest.mark.skipif(not fastnn.build_info()["cuda_available"], reason="no CUDA device (real or emulated)")
@pytest.mark.parametrize("path", ["one launch", "chunks", "chunks, 16-byte vectors", "pipeline"])
def test_fused_batchnorm_on_every_cuda_path(dtype, rng, path, monkeypatch):
    # each launch that writes y applies the epilogue, and each that reads dy the relu + dropout
    # backward: the single launch, the chunked scalar and 16-byte passes, and the one-read
    # pipeline; bitwise BatchNorm then dropout_forward (and dropout_backward then BatchNorm)
    shape = {"one launch": (37, 1030), "chunks": (1000, 7), "chunks, 16-byte vectors": (2000, 64),
             "pipeline": (2000, 64)}[path]
    if path == "pipeline":
        monkeypatch.setenv("FASTNN_BN_PIPELINE_ABOVE", "0")
    x, w, b, rm, rv, dy = make(rng, shape, dtype)
    for p, act in [(0.5, "relu"), (0.5, "none"), (1.0, "relu"), (0.0, "relu")]:
        dev = [on("cuda", a) for a in (x, w, b)]
        plain, mean, invstd = _C.batchnorm_forward(*dev, None, None, True)
        fused, _, _ = _C.batchnorm_forward(*dev, None, None, True, activation=act, dropout=(p, 11, 5))
        np.testing.assert_array_equal(host(fused), host(_C.dropout_forward(plain, p, 11, 5, act)), err_msg=f"{p} {act}")
        if act != "relu":
            continue
        # and the backward reads dy through relu + dropout in each of its launches, train and eval
        for training in (True, False):
            g = on("cuda", dy)
            through = _C.dropout_backward(g, p, 11, 5, fused, "relu")
            want = _C.batchnorm_backward(dev[0], through, dev[1], mean, invstd, training)
            got = _C.batchnorm_backward(dev[0], g, dev[1], mean, invstd, training, y=fused, activation="relu", p=p)
            for name, a, b in zip(("dx", "dweight", "dbias"), got, want):
                np.testing.assert_array_equal(host(a), host(b), err_msg=f"{name} {p} training={training}")
