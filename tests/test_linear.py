"""_C.linear_forward / _C.linear_backward against torch autograd (torch.nn.functional.linear + activation)."""
import math

import numpy as np
import pytest
import torch

from fastnn import _C
from utils import assert_close, randn, torch_of

ACTIVATIONS = ["none", "relu", "tanh", "sigmoid"]
# (N, in, out): 1, 7, 33, 1000 and sizes that are no multiple of a 6 x 64 / 6 x 32 tile or vector
# (batch, in, out). Batches of up to 32 with 64+ inputs take the dot-product forward (W read in
# place); 33 and more the packed GEMM.
SHAPES = [(1, 1, 1), (7, 33, 13), (33, 7, 1000), (100, 1000, 10), (50, 100, 7), (1000, 70, 33), (128, 784, 100),
          (5, 100, 70), (32, 200, 1000)]
TORCH_ACT = {"none": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def rtol_for(dtype, k):
    # float32 dot products of length k: rounding relative to max|result| grows about like sqrt(k)
    return 1e-5 * max(1.0, math.sqrt(k / 64)) if dtype == "float32" else 1e-10


def torch_layer(x, w, b, act, dy):
    """Forward and all gradients from torch autograd, in float64 from the same inputs."""
    xt, wt = torch_of(x.astype(np.float64), True), torch_of(w.astype(np.float64), True)
    bt = torch_of(b.astype(np.float64), True) if b is not None else None
    y = TORCH_ACT[act](torch.nn.functional.linear(xt, wt, bt))
    y.backward(torch.from_numpy(dy.astype(np.float64)))
    return y.detach(), xt.grad, wt.grad, (bt.grad if bt is not None else None)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward(act, with_bias, dtype, rng):
    for n, fin, fout in SHAPES:
        x, w = randn(rng, (n, fin), dtype), randn(rng, (fout, fin), dtype, 1 / math.sqrt(fin))
        b = randn(rng, (fout,), dtype) if with_bias else None
        y = _C.linear_forward(x, w, b, act)
        ref = TORCH_ACT[act](torch.nn.functional.linear(
            torch.from_numpy(x).double(), torch.from_numpy(w).double(), None if b is None else torch.from_numpy(b).double()))
        assert_close(y, ref, dtype, rtol_for(dtype, fin), what=f"forward {act} {(n, fin, fout)}")


def test_linear_forward_out_and_torch_tensors(dtype, rng):
    tdt = getattr(torch, dtype)
    x, w, b = (torch.from_numpy(randn(rng, s, dtype)) for s in [(33, 70), (13, 70), (13,)])
    out = torch.full((33, 13), float("nan"), dtype=tdt)
    got = _C.linear_forward(x, w, b, "relu", out=out)
    assert torch.from_dlpack(got).data_ptr() == out.data_ptr()
    assert_close(out, torch.relu(x.double() @ w.double().T + b.double()), dtype, rtol_for(dtype, 70))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_backward(act, with_bias, dtype, rng):
    for n, fin, fout in SHAPES:
        x, w = randn(rng, (n, fin), dtype), randn(rng, (fout, fin), dtype, 1 / math.sqrt(fin))
        b = randn(rng, (fout,), dtype) if with_bias else None
        dy = randn(rng, (n, fout), dtype)
        y = np.asarray(_C.linear_forward(x, w, b, act))
        dx, dw, db = _C.linear_backward(x, w, dy, y if act != "none" else None, act, need_dbias=with_bias)
        _, rdx, rdw, rdb = torch_layer(x, w, b, act, dy)
        what = f"{act} {(n, fin, fout)}"
        assert_close(dx, rdx, dtype, rtol_for(dtype, fout), what="dx " + what)
        assert_close(dw, rdw, dtype, rtol_for(dtype, n), what="dweight " + what)
        if with_bias:
            assert_close(db, rdb, dtype, rtol_for(dtype, n), what="dbias " + what)
        else:
            assert db is None


def test_linear_backward_outputs_and_accumulate(dtype, rng):
    n, fin, fout = 100, 70, 33
    x, w, b = randn(rng, (n, fin), dtype), randn(rng, (fout, fin), dtype), randn(rng, (fout,), dtype)
    dy = randn(rng, (n, fout), dtype)
    y = np.asarray(_C.linear_forward(x, w, b, "tanh"))
    _, rdx, rdw, rdb = torch_layer(x, w, b, "tanh", dy)
    rtol = rtol_for(dtype, n)

    dw0, db0 = randn(rng, (fout, fin), dtype), randn(rng, (fout,), dtype)
    dx_buf = np.full((n, fin), np.nan, dtype)
    dw, db = dw0.copy(), db0.copy()
    gx, gw, gb = _C.linear_backward(x, w, dy, y, "tanh", dx=dx_buf, dweight=dw, dbias=db, accumulate=True)
    assert np.shares_memory(np.asarray(gx), dx_buf) and np.shares_memory(np.asarray(gw), dw)
    assert np.shares_memory(np.asarray(gb), db)
    assert_close(dx_buf, rdx, dtype, rtol_for(dtype, fout), what="dx (never accumulated)")
    assert_close(dw, rdw + torch.from_numpy(dw0).double(), dtype, rtol, what="dweight accumulated")
    assert_close(db, rdb + torch.from_numpy(db0).double(), dtype, rtol, what="dbias accumulated")

    # accumulating twice adds twice (gradient accumulation over micro-batches)
    _C.linear_backward(x, w, dy, y, "tanh", dweight=dw, dbias=db, need_dx=False, accumulate=True)
    assert_close(dw, 2 * rdw + torch.from_numpy(dw0).double(), dtype, rtol)
    assert_close(db, 2 * rdb + torch.from_numpy(db0).double(), dtype, rtol)

    # accumulate=False overwrites what is there, NaN included
    dw[:], db[:] = np.nan, np.nan
    gx, _, _ = _C.linear_backward(x, w, dy, y, "tanh", dweight=dw, dbias=db, need_dx=False)
    assert gx is None
    assert_close(dw, rdw, dtype, rtol)
    assert_close(db, rdb, dtype, rtol)

    # accumulate=True into a given dweight with dbias allocated here: the new dbias is the gradient
    dw = dw0.copy()
    _, _, gb = _C.linear_backward(x, w, dy, y, "tanh", dweight=dw, accumulate=True)
    assert_close(dw, rdw + torch.from_numpy(dw0).double(), dtype, rtol)
    assert_close(gb, rdb, dtype, rtol)
    db = db0.copy()
    _, gw, _ = _C.linear_backward(x, w, dy, y, "tanh", dbias=db, accumulate=True)
    assert_close(gw, rdw, dtype, rtol)
    assert_close(db, rdb + torch.from_numpy(db0).double(), dtype, rtol)


def test_linear_backward_is_deterministic(rng):
    x, w, dy = randn(rng, (1000, 300), "float32"), randn(rng, (130, 300), "float32"), randn(rng, (1000, 130), "float32")
    y = np.asarray(_C.linear_forward(x, w, None, "relu"))
    first = [np.asarray(t).copy() for t in _C.linear_backward(x, w, dy, y, "relu")]
    for _ in range(3):
        again = _C.linear_backward(x, w, dy, y, "relu")
        for a, b in zip(first, again):
            assert np.array_equal(a, np.asarray(b))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_empty_batch(act, dtype, rng):
    w, b = randn(rng, (13, 7), dtype), randn(rng, (13,), dtype)
    x = np.zeros((0, 7), dtype)
    y = _C.linear_forward(x, w, b, act)
    assert tuple(y.shape) == (0, 13)
    dy = np.zeros((0, 13), dtype)
    dx, dw, db = _C.linear_backward(x, w, dy, np.asarray(y), act)
    assert tuple(dx.shape) == (0, 7)
    assert (np.asarray(dw) == 0).all() and np.asarray(dw).shape == (13, 7)
    assert (np.asarray(db) == 0).all() and np.asarray(db).shape == (13,)
    dw0, db0 = randn(rng, (13, 7), dtype), randn(rng, (13,), dtype)
    dwa, dba = dw0.copy(), db0.copy()
    _C.linear_backward(x, w, dy, np.asarray(y), act, dweight=dwa, dbias=dba, accumulate=True)
    assert np.array_equal(dwa, dw0) and np.array_equal(dba, db0)


def test_linear_zero_in_features(dtype, rng):
    """in = 0: the product is empty, y = act(bias)."""
    w, b = np.zeros((5, 0), dtype), randn(rng, (5,), dtype)
    y = _C.linear_forward(np.zeros((3, 0), dtype), w, b, "tanh")
    assert_close(y, np.tanh(np.broadcast_to(b, (3, 5)).astype(np.float64)), dtype)


@pytest.mark.parametrize("act", ["none", "tanh", "sigmoid"])
def test_linear_nan_propagates(act, dtype, rng):
    x, w = randn(rng, (7, 33), dtype), randn(rng, (13, 33), dtype)
    x[2, 4] = np.nan
    y = np.asarray(_C.linear_forward(x, w, None, act))
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    dy = randn(rng, (7, 13), dtype)
    dx, dw, _ = _C.linear_backward(x, w, dy, y, act, need_dbias=False)
    assert np.isnan(np.asarray(dw)).any() and np.isfinite(np.delete(np.asarray(dx), 2, axis=0)).all()


def test_linear_bad_inputs():
    f32 = np.float32
    x, w, b = np.ones((4, 33), f32), np.ones((10, 33), f32), np.ones(10, f32)
    dy = np.ones((4, 10), f32)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(10, 33\).*got \(10, 32\)"):
        _C.linear_forward(x, np.ones((10, 32), f32))
    with pytest.raises(ValueError, match="^x: expected a 2-d tensor"):
        _C.linear_forward(np.ones(33, f32), w)
    with pytest.raises(TypeError, match="^x: expected float32 or float64"):
        _C.linear_forward(np.ones((4, 33), np.int32), w)
    with pytest.raises(TypeError, match=r"^weight: expected float32 \(the dtype of x\), got float64"):
        _C.linear_forward(x, np.ones((10, 33)))
    with pytest.raises(ValueError, match=r"^bias: expected shape \(10,\)"):
        _C.linear_forward(x, w, np.ones(9, f32))
    with pytest.raises(TypeError, match="^bias: expected float32"):
        _C.linear_forward(x, w, np.ones(10))
    with pytest.raises(ValueError, match=r"^out: expected shape \(4, 10\)"):
        _C.linear_forward(x, w, b, out=np.ones((10, 4), f32))
    with pytest.raises(ValueError, match="^out: must not share memory with x"):
        sq = np.ones((33, 33), f32)
        _C.linear_forward(sq, np.ones((33, 33), f32), out=sq)
    with pytest.raises(ValueError, match="^activation: expected 'relu'"):
        _C.linear_forward(x, w, b, "gelu")
    with pytest.raises(TypeError, match="^weight: expected a"):
        _C.linear_forward(x, None)

    with pytest.raises(ValueError, match="^y: the forward output is required for activation 'relu'"):
        _C.linear_backward(x, w, dy, None, "relu")
    with pytest.raises(ValueError, match=r"^y: expected shape \(4, 10\)"):
        _C.linear_backward(x, w, dy, np.ones((4, 9), f32), "relu")
    with pytest.raises(ValueError, match=r"^dy: expected shape \(4, 10\)"):
        _C.linear_backward(x, w, np.ones((4, 11), f32))
    with pytest.raises(TypeError, match="^dy: expected float32"):
        _C.linear_backward(x, w, np.ones((4, 10)))
    with pytest.raises(ValueError, match=r"^dweight: expected shape \(10, 33\)"):
        _C.linear_backward(x, w, dy, dweight=np.ones((33, 10), f32))
    with pytest.raises(ValueError, match=r"^dbias: expected shape \(10,\)"):
        _C.linear_backward(x, w, dy, dbias=np.ones(11, f32))
    with pytest.raises(ValueError, match=r"^dx: expected shape \(4, 33\)"):
        _C.linear_backward(x, w, dy, dx=np.ones((4, 10), f32))
    with pytest.raises(TypeError, match="^dx: expected float32"):
        _C.linear_backward(x, w, dy, dx=np.ones((4, 33)))
    with pytest.raises(ValueError, match="^dweight: must not share memory with weight"):
        _C.linear_backward(x, w, dy, dweight=w)
    with pytest.raises(ValueError, match="^dx: must not share memory with x"):
        _C.linear_backward(x, w, dy, dx=x)
