"""Activations and softmax / log-softmax: forward and backward against torch autograd."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastnn
from fastnn import _C
from utils import ODD_SIZES, assert_close, randn, torch_of

TORCH_ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "none": lambda x: x}


@pytest.mark.parametrize("kind", list(TORCH_ACT))
@pytest.mark.parametrize("shape", [(1,), (7, 33), (1000, 7), (33, 1000)])
def test_activation_matches_torch(kind, shape, dtype, rng):
    x = randn(rng, shape, dtype, scale=3.0)
    dy = randn(rng, shape, dtype)
    xt = torch_of(x, requires_grad=True)
    yt = TORCH_ACT[kind](xt)
    yt.backward(torch_of(dy))
    y = _C.activation_forward(x, kind)
    assert_close(y, yt, dtype, what="y")
    dx = _C.activation_backward(y, dy, kind)
    # tanh/sigmoid derivatives are computed from the output y (as torch does); 1 - y^2 cancels
    # when |y| -> 1, so one ulp of difference in y becomes an error of ~eps * |dy|, not eps * |dx|
    assert_close(dx, xt.grad, dtype, what="dx", scale=np.max(np.abs(dy)))


def test_float32_tanh_and_sigmoid_are_accurate_everywhere():
    """float32 tanh and sigmoid are polynomials on the CPU (ops/fast_math.h): within a few ulp of
    float64 torch over the whole range, across the 0.625 switch of tanh and the exp cut-off at -86,
    with signed zeros, infinities and NaN handled as torch does."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-100, 100, 400001), rng.standard_normal(100000) * 4,
                        np.float32(0.625) + np.arange(-64, 64) * np.float32(6e-8),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 43.0, -43.0, 87.0, -87.0, 89.0, -89.0])
                        ]).astype(np.float32)
    for kind in ("tanh", "sigmoid"):
        y = np.asarray(_C.activation_forward(x, kind), dtype=np.float64)
        ref = TORCH_ACT[kind](torch.from_numpy(x).double()).numpy()
        rel = np.abs(y - ref) / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
        assert rel.max() < 4e-7, f"{kind}: worst relative error {rel.max():.3g} at x = {x[rel.argmax()]!r}"
    special = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0], np.float32)
    t = np.asarray(_C.activation_forward(special, "tanh"))
    assert t[0] == 1 and t[1] == -1 and np.isnan(t[2]) and t[4] == 0
    s = np.asarray(_C.activation_forward(special, "sigmoid"))
    assert s[0] == 1 and s[1] == 0 and np.isnan(s[2]) and s[3] == 0.5 and s[4] == 0.5
    r = np.asarray(_C.activation_forward(special, "relu"))
    assert r[0] == np.inf and r[1] == 0 and np.isnan(r[2])


def test_float64_tanh_and_sigmoid_are_accurate_everywhere():
    """float64 tanh and sigmoid are vectorised too (Cephes' forms on a Pade exp, ops/fast_math.h):
    within a few ulp of libm from subnormal outputs to saturation, across tanh's
    0.625 switch, with signed zeros, infinities and NaN handled as torch does. The bound is 4 ulp
    of the result (measured worst: 2.4 for sigmoid, 1.7 for tanh); outputs under the normal range
    are compared in absolute units of the smallest subnormal, as one rounding leaves them."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-760, 760, 400001), rng.standard_normal(100000) * 4,
                        0.625 + np.arange(-64, 64) * 1e-16, -0.625 + np.arange(-64, 64) * 1e-16,
                        np.geomspace(1e-300, 1.0, 20000), -np.geomspace(1e-300, 1.0, 20000),
                        np.linspace(-745.2, -708.0, 5001),
                        np.array([0.0, -0.0, 5e-324, -5e-324, 36.0, -36.0, 19.1, -19.1])])
    # torch's float64 sigmoid is 1 / (1 + exp(-x)), 0 below x = -709.78 where exp(-x) overflows;
    # the true value stays subnormal down to -745.13, and e / (1 + e) with e = exp(x) gives it
    e = np.exp(np.minimum(x, 0.0))
    true_sigmoid = np.where(x < 0, e / (1 + e), 1 / (1 + np.exp(-np.maximum(x, 0.0))))
    for kind, ref in (("tanh", torch.tanh(torch.from_numpy(x)).numpy()), ("sigmoid", true_sigmoid)):
        y = np.asarray(_C.activation_forward(x, kind))
        ulp = np.spacing(np.abs(ref))  # the smallest subnormal under the normal range
        err = np.abs(y - ref) / ulp
        assert err.max() <= 4, f"{kind}: worst error {err.max():.3g} ulp at x = {x[err.argmax()]!r}"
    special = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0])
    t = np.asarray(_C.activation_forward(special, "tanh"))
    assert t[0] == 1 and t[1] == -1 and np.isnan(t[2]) and t[4] == 0
    assert np.signbit(t[3]) and not np.signbit(t[4])  # tanh(-0) = -0, as in torch
    s = np.asarray(_C.activation_forward(special, "sigmoid"))
    assert s[0] == 1 and s[1] == 0 and np.isnan(s[2]) and s[3] == 0.5 and s[4] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_other_isa_variants(isa):
    """The activation loops are compiled for the baseline x86-64, AVX2 and AVX-512 and the best
    runs; the others are checked in a child process whose FASTNN_ISA caps the choice."""
    env = dict(os.environ, FASTNN_ISA=isa)
    r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
                        "-k", "not other_isa"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_sigmoid_is_stable_at_extremes(dtype):
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], dtype)
    y = _C.activation_forward(x, "sigmoid").numpy()
    assert np.isfinite(y).all()
    assert_close(y, torch.sigmoid(torch_of(x)), dtype)


def test_in_place_and_empty(dtype):
    x = np.array([-1.0, 2.0], dtype)
    t = _C.as_tensor(x)
    _C.activation_forward(t, "relu", out=t)
    assert list(x) == [0.0, 2.0]
    e = _C.activation_forward(np.zeros((0, 5), dtype), "tanh")
    assert e.shape == (0, 5)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 1000])
@pytest.mark.parametrize("cols", ODD_SIZES)
def test_softmax_matches_torch(log, rows, cols, dtype, rng):
    x = randn(rng, (rows, cols), dtype, scale=5.0)
    dy = randn(rng, (rows, cols), dtype)
    xt = torch_of(x, requires_grad=True)
    yt = (torch.log_softmax if log else torch.softmax)(xt, dim=-1)
    yt.backward(torch_of(dy))
    y = _C.softmax_forward(x, log)
    assert_close(y, yt, dtype, what="y")
    dx = _C.softmax_backward(y, dy, log)
    # dx = y (dy - sum(dy y)) cancels where y -> 1: the sum's rounding (eps * max|dy|) is then the
    # error, however small dx is; two float32 sums in different orders differ by that much.
    assert_close(dx, xt.grad, dtype, rtol=3e-5 if dtype == "float32" else None, what="dx", scale=np.abs(dy).max())


def test_softmax_extreme_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [-np.inf, 0.0, 1.0]], dtype)
    y = _C.softmax_forward(x, False).numpy()
    assert np.isfinite(y).all()
    assert_close(y, torch.softmax(torch_of(x), -1), dtype)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_wide_rows_treat_special_values_as_narrow_ones(dtype, log):
    # Rows under 64 columns take the tiled path, wider ones the row loops: padding a row with -inf
    # (exp(-inf) = 0 changes neither its max nor its sum) moves it from one to the other, and must
    # not change its values, NaN and infinities included (an infinite max is taken as 0, as the
    # CUDA kernels do).
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.nan, 0.0, 1.0], [1e30, 0.0, -1e30],
                  [np.inf, 0.0, 1.0], [3.0, 2.0, -50.0]], dtype)
    wide = np.full((x.shape[0], 100), -np.inf, dtype)
    wide[:, 17:20] = x
    narrow_y = _C.softmax_forward(x, log).numpy()
    wide_y = _C.softmax_forward(wide, log).numpy()
    np.testing.assert_allclose(wide_y[:, 17:20], narrow_y, rtol=1e-6 if dtype == "float32" else 1e-14)
    assert np.array_equal(np.isnan(wide_y[:, 17:20]), np.isnan(narrow_y))
    finite_rows = np.isfinite(narrow_y).all(axis=1)
    pad = np.delete(wide_y, [17, 18, 19], axis=1)[finite_rows]
    assert (pad == (-np.inf if log else 0.0)).all()
    assert_close(narrow_y[5], torch.softmax(torch_of(x[5]), -1).log() if log else torch.softmax(torch_of(x[5]), -1),
                 dtype)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_rows_are_independent(dtype, log):
    # each row's loop also takes the next row's max: a matrix's rows, split over threads, special
    # rows among them, in place too, are bit for bit each row's softmax taken alone
    rng = np.random.default_rng(8)
    x = randn(rng, (301, 257), dtype, scale=5.0)
    x[7, :] = -np.inf
    x[8, 3] = np.nan
    x[100, 5] = np.inf
    x[101, :] = np.inf
    alone = np.stack([_C.softmax_forward(x[r:r + 1], log).numpy()[0] for r in range(x.shape[0])])
    before = fastnn.get_num_threads()
    try:
        for threads in (1, 2):
            fastnn.set_num_threads(threads)
            np.testing.assert_array_equal(_C.softmax_forward(x, log).numpy(), alone)
            inplace = x.copy()
            t = _C.as_tensor(inplace)
            _C.softmax_forward(t, log, out=t)
            np.testing.assert_array_equal(inplace, alone)
    finally:
        fastnn.set_num_threads(before)


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_large_passes_stream_the_same_values(kind):
    # Passes over more than 16 MB write through an L1 buffer with streaming stores; every output
    # element must be what the plain loop of a small call gives, whatever the alignment of out,
    # in place too.
    rng = np.random.default_rng(5)
    n = 3_000_001
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    pieces = [(b, min(n, b + 100_000)) for b in range(0, n, 100_000)]  # 0.8 MB moved each: no streaming
    want_y = np.concatenate([_C.activation_forward(x[b:e], kind).numpy() for b, e in pieces])
    want_dx = np.concatenate([_C.activation_backward(want_y[b:e], dy[b:e], kind).numpy() for b, e in pieces])
    assert np.array_equal(_C.activation_forward(x, kind).numpy(), want_y)  # out 64-byte aligned
    assert np.array_equal(_C.activation_backward(want_y, dy, kind).numpy(), want_dx)
    buf = np.zeros(n + 16, np.float32)
    out = buf[3:3 + n]  # 12 bytes past numpy's 16-byte alignment: never on a 64-byte line
    _C.activation_forward(x, kind, out=out)
    assert np.array_equal(out, want_y)
    _C.activation_backward(want_y, dy, kind, out=out)
    assert np.array_equal(out, want_dx)
    inplace = x.copy()
    t = _C.as_tensor(inplace)
    _C.activation_forward(t, kind, out=t)
    assert np.array_equal(inplace, want_y)


def test_log_softmax_backward_takes_any_y(dtype):
    # dx = dy - exp(y) sum(dy): the vector exp assumes y <= 0, as log-softmax outputs are; a row with
    # a positive y (a caller's own values) must still get the formula's value.
    for y in ([[0.5, -1.0, -80.0]], [[-0.5, -1.0, -80.0]], [[-0.5] * 70 + [0.25]]):
        y = np.array(y, dtype)
        dy = np.linspace(-1, 2, y.size).reshape(y.shape).astype(dtype)
        want = dy.astype(np.float64) - np.exp(y.astype(np.float64)) * dy.astype(np.float64).sum()
        assert_close(_C.softmax_backward(y, dy, True), want, dtype, scale=np.abs(dy).sum())


def test_nan_propagates_without_crash():
    y = _C.activation_forward(np.array([np.nan, 1.0]), "tanh").numpy()
    assert np.isnan(y[0]) and y[1] == np.tanh(1.0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="x: expected float32 or float64, got int64"):
        _C.activation_forward(np.arange(3), "relu")
    with pytest.raises(ValueError, match="activation: expected"):
        _C.activation_forward(np.zeros(3), "gelu")
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.activation_backward(np.zeros(3), np.zeros(4), "relu")
    with pytest.raises(TypeError, match="dy: expected float64"):
        _C.activation_backward(np.zeros(3), np.zeros(3, np.float32), "relu")
    with pytest.raises(ValueError, match="out: expected shape"):
        _C.activation_forward(np.zeros(3), "relu", out=np.zeros(4))
    with pytest.raises(ValueError, match="0-d"):
        _C.softmax_forward(np.array(1.0))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: tensor is read-only"):
        _C.activation_forward(np.zeros(3), "relu", out=ro)
