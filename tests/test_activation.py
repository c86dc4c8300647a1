"""Activations and softmax / log-softmax: forward and backward against torch autograd."""
import numpy as np
import pytest
import torch

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
    assert_close(dx, xt.grad, dtype, rtol=3e-5 if dtype == "float32" else None, what="dx")


def test_softmax_extreme_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [-np.inf, 0.0, 1.0]], dtype)
    y = _C.softmax_forward(x, False).numpy()
    assert np.isfinite(y).all()
    assert_close(y, torch.softmax(torch_of(x), -1), dtype)


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
