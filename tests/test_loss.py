"""Losses (cross-entropy, MSE, BCE with logits): forward, backward and the fused cross-entropy
against torch autograd, plus edge cases (empty batch, ignored rows, extreme logits, NaN), thread
count independence and argument errors.

References are computed by torch in float64 from the very same (possibly float32) inputs, so the
tolerance measures fastnn's own rounding error: ~1e-5 relative for float32, ~1e-10 for float64.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastnn
from fastnn import _C
from utils import ODD_SIZES, assert_close, randn, torch_of

REDUCTIONS = ["mean", "sum", "none"]
CLASSES = [1, 2, 7, 10, 33, 1000]


def close(actual, expected, dtype, what=""):
    """assert_close, where a NaN must meet a NaN (torch's mean over zero rows is NaN too)."""
    a = np.asarray(actual, dtype=np.float64)
    e = expected.numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    nan = np.isnan(e)
    np.testing.assert_array_equal(np.isnan(a), nan, err_msg=f"{what}: NaN positions differ")
    assert_close(a[~nan], e[~nan], dtype, what=what)


def f64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64).copy())


def labels(rng, n, classes, label_dtype="int64", ignore_index=None, ignored=0.0):
    y = rng.integers(0, classes, n).astype(label_dtype)
    if ignore_index is not None and n:
        y[rng.random(n) < ignored] = ignore_index
    return y


def torch_cross_entropy(x, y, weight, reduction, ignore_index, dloss):
    """Loss and dlogits by torch autograd in float64; dloss is the upstream gradient."""
    xt = f64(x).requires_grad_(True)
    wt = None if weight is None else f64(weight)
    loss = F.cross_entropy(xt, torch.from_numpy(y.astype(np.int64)), weight=wt,
                           reduction=reduction, ignore_index=ignore_index)
    loss.backward(f64(dloss) if reduction == "none" else torch.tensor(float(dloss), dtype=torch.float64))
    return loss.detach(), xt.grad


def upstream(rng, reduction, n, dtype):
    return randn(rng, (n,), dtype) if reduction == "none" else float(rng.standard_normal())


# ---- cross-entropy ----------------------------------------------------------------------------

@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("n", ODD_SIZES)
def test_cross_entropy_matches_torch(n, classes, dtype, rng):
    x = randn(rng, (n, classes), dtype, scale=3.0)
    weight = rng.uniform(0.1, 2.0, classes).astype(dtype)
    for w in (None, weight):
        for ignore_index, ignored in ((-100, 0.0), (-100, 0.3), (classes // 2, 0.0)):
            y = labels(rng, n, classes, ignore_index=ignore_index, ignored=ignored)
            what = f"weight={w is not None} ignore_index={ignore_index} ignored={ignored}"
            for reduction in REDUCTIONS:
                g = upstream(rng, reduction, n, dtype)
                ref_loss, ref_grad = torch_cross_entropy(x, y, w, reduction, ignore_index, g)
                loss = _C.cross_entropy_forward(x, y, w, reduction, ignore_index)
                close(loss, ref_loss, dtype, what=f"loss {reduction} {what}")
                grad = _C.cross_entropy_backward(x, y, g, w, reduction, ignore_index)
                close(grad, ref_grad, dtype, what=f"dlogits {reduction} {what}")
                if reduction == "none":
                    continue
                ref_loss, ref_grad = torch_cross_entropy(x, y, w, reduction, ignore_index, 1.0)
                fused_loss, fused_grad = _C.cross_entropy(x, y, w, reduction, ignore_index)
                close(fused_loss, ref_loss, dtype, what=f"fused loss {reduction} {what}")
                close(fused_grad, ref_grad, dtype, what=f"fused dlogits {reduction} {what}")


@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
@pytest.mark.parametrize("n,classes", [(1, 1), (33, 7), (1000, 10), (7, 1000)])
def test_cross_entropy_label_dtypes(n, classes, label_dtype, dtype, rng):
    x = randn(rng, (n, classes), dtype, scale=2.0)
    y = labels(rng, n, classes, label_dtype, ignore_index=-1, ignored=0.2)
    w = rng.uniform(0.5, 1.5, classes).astype(dtype)
    ref_loss, ref_grad = torch_cross_entropy(x, y, w, "mean", -1, 1.0)
    loss, grad = _C.cross_entropy(x, y, w, ignore_index=-1)
    close(loss, ref_loss, dtype, what="loss")
    close(grad, ref_grad, dtype, what="dlogits")
    close(_C.cross_entropy_forward(x, y, w, "none", -1),
                 torch_cross_entropy(x, y, w, "none", -1, np.ones(n))[0], dtype, what="loss none")


def test_cross_entropy_extreme_logits(dtype, rng):
    n, classes = 33, 10
    x = (rng.choice([-1e4, 1e4], (n, classes)) + rng.standard_normal((n, classes))).astype(dtype)
    x[0] = 1e4  # a row of ties
    x[1] = -1e4
    y = labels(rng, n, classes)
    for reduction in REDUCTIONS:
        g = upstream(rng, reduction, n, dtype)
        ref_loss, ref_grad = torch_cross_entropy(x, y, None, reduction, -100, g)
        loss = np.asarray(_C.cross_entropy_forward(x, y, reduction=reduction))
        grad = np.asarray(_C.cross_entropy_backward(x, y, g, reduction=reduction))
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert_close(loss, ref_loss, dtype, what=f"loss {reduction}")
        assert_close(grad, ref_grad, dtype, what=f"dlogits {reduction}")
    loss, grad = _C.cross_entropy(x, y)
    assert np.isfinite(np.asarray(loss)) and np.isfinite(np.asarray(grad)).all()


def test_softmax_probabilities_are_accurate_elementwise(rng):
    # the vectorised exp, checked per element (not relative to the largest) over its whole range
    x = np.concatenate([np.linspace(-700.0, 0.0, 997), [-1e-300, -1e-10, 0.0]]).reshape(1, -1)
    y = np.zeros(1, np.int64)
    _, grad = _C.cross_entropy(x, y, reduction="sum")
    p = np.asarray(grad).copy()
    p[0, 0] += 1.0  # dlogits = softmax - onehot
    ref = torch.softmax(f64(x), dim=-1).numpy()
    mask = ref > 1e-290  # below, libm's subnormal results are compared against a clean 0
    np.testing.assert_allclose(p[mask], ref[mask], rtol=5e-14, atol=0)
    assert np.all(p[~mask] <= 1e-290)
    x32 = np.linspace(-87.0, 0.0, 1000).astype(np.float32).reshape(1, -1)
    _, grad32 = _C.cross_entropy(x32, y, reduction="sum")
    p32 = np.asarray(grad32).astype(np.float64)
    p32[0, 0] += 1.0
    ref32 = torch.softmax(f64(x32), dim=-1).numpy()
    mask = ref32 > 1e-30
    np.testing.assert_allclose(p32[mask], ref32[mask], rtol=2e-6, atol=0)


def test_cross_entropy_fused_equals_forward_and_backward(dtype, rng):
    x = randn(rng, (1000, 33), dtype, scale=3.0)
    y = labels(rng, 1000, 33, ignore_index=-100, ignored=0.1)
    w = rng.uniform(0.1, 2.0, 33).astype(dtype)
    for reduction in ("mean", "sum"):
        loss, grad = _C.cross_entropy(x, y, w, reduction)
        assert np.asarray(loss) == np.asarray(_C.cross_entropy_forward(x, y, w, reduction))
        np.testing.assert_array_equal(grad, _C.cross_entropy_backward(x, y, 1.0, w, reduction))


def test_cross_entropy_in_place_and_out(dtype, rng):
    x = randn(rng, (33, 7), dtype)
    y = labels(rng, 33, 7)
    loss, grad = _C.cross_entropy(x, y)
    buf = x.copy()
    loss2, grad2 = _C.cross_entropy(buf, y, dlogits=buf)  # the gradient overwrites the logits
    assert np.asarray(loss2) == np.asarray(loss)
    np.testing.assert_array_equal(buf, grad)
    out = np.full((33, 7), np.nan, dtype)
    _C.cross_entropy_backward(x, y, 1.0, out=out)
    np.testing.assert_array_equal(out, grad)


@pytest.mark.parametrize("classes", [7, 100])  # the tiled path for few classes, the row loops for many
def test_cross_entropy_nan_logit_poisons_its_row_only(dtype, rng, classes):
    """A NaN logit first, inside or last in its row (the row max passes NaN over, wherever it is)
    makes that row's loss and gradient NaN, as in torch, and leaves the other rows exact."""
    x = randn(rng, (4, classes), dtype)
    for row, col in ((0, 0), (1, classes // 2), (2, classes - 1)):
        x[row, col] = np.nan
    y = np.array([1, 0, 2, 3])
    loss = np.asarray(_C.cross_entropy_forward(x, y, reduction="none"))
    ref = torch.nn.functional.cross_entropy(torch_of(x), torch.from_numpy(y), reduction="none").numpy()
    assert np.isnan(loss[:3]).all() and np.isnan(ref[:3]).all()
    assert_close(loss[3], ref[3], dtype)
    _, grad = _C.cross_entropy(x, y, reduction="sum")
    grad = np.asarray(grad)
    assert np.isnan(grad[:3]).all() and np.isfinite(grad[3]).all()


def test_cross_entropy_wide_rows_are_independent(dtype, rng):
    # with many classes each row's loop also takes the next row's max: over threads, beside ignored
    # and NaN rows, in place too, every row's loss and gradient are bit for bit the row's alone
    x = randn(rng, (301, 100), dtype, scale=3.0)
    y = labels(rng, 301, 100, ignore_index=-100, ignored=0.1)
    x[5, 7] = np.nan
    x[y == -100] = np.nan  # never used, whatever is read
    w = rng.uniform(0.1, 2.0, 100).astype(dtype)
    alone = [_C.cross_entropy(x[r:r + 1], y[r:r + 1], w, "sum") for r in range(301)]
    want_loss = np.array([np.asarray(a[0]) for a in alone])
    want_grad = np.concatenate([np.asarray(a[1]) for a in alone])
    before = fastnn.get_num_threads()
    try:
        for threads in (1, 2):
            fastnn.set_num_threads(threads)
            np.testing.assert_array_equal(np.asarray(_C.cross_entropy_forward(x, y, w, "none")), want_loss)
            np.testing.assert_array_equal(np.asarray(_C.cross_entropy_backward(x, y, 1.0, w, "sum")), want_grad)
            buf = x.copy()
            _C.cross_entropy(buf, y, w, "sum", dlogits=buf)
            np.testing.assert_array_equal(buf, want_grad)
    finally:
        fastnn.set_num_threads(before)


def test_cross_entropy_ignored_rows(dtype, rng):
    x = randn(rng, (7, 5), dtype)
    y = np.array([0, -100, 4, -100, 1, 2, 3])
    x[1] = np.nan  # an ignored row is never read
    loss = np.asarray(_C.cross_entropy_forward(x, y, reduction="none"))
    assert loss[1] == 0 and loss[3] == 0 and np.isfinite(loss).all()
    grad = np.asarray(_C.cross_entropy_backward(x, y, np.ones(7, dtype), reduction="none"))
    assert (grad[[1, 3]] == 0).all()
    _, grad = _C.cross_entropy(x, y)
    assert (np.asarray(grad)[[1, 3]] == 0).all() and np.isfinite(np.asarray(grad)).all()


def test_cross_entropy_all_ignored_is_nan_like_torch(dtype, rng):
    """Mean over zero rows is 0/0: NaN, as in torch; the gradient is all zeros."""
    x = randn(rng, (7, 5), dtype)
    y = np.full(7, -100)
    ref = F.cross_entropy(f64(x), torch.from_numpy(y))
    assert torch.isnan(ref)
    loss, grad = _C.cross_entropy(x, y)
    assert np.isnan(np.asarray(loss))
    assert (np.asarray(grad) == 0).all()
    assert np.isnan(np.asarray(_C.cross_entropy_forward(x, y)))
    assert (np.asarray(_C.cross_entropy_backward(x, y, 1.0)) == 0).all()
    assert np.asarray(_C.cross_entropy_forward(x, y, reduction="sum")) == 0


def test_cross_entropy_zero_total_weight_matches_torch(dtype, rng):
    x = randn(rng, (7, 3), dtype)
    y = np.array([0, 0, 1, 0, 1, 1, 0])
    w = np.array([0.0, 0.0, 1.0], dtype)
    ref_loss, ref_grad = torch_cross_entropy(x, y, w, "mean", -100, 1.0)
    loss, grad = _C.cross_entropy(x, y, w)
    assert np.isnan(np.asarray(loss)) and torch.isnan(ref_loss)
    np.testing.assert_array_equal(np.isnan(np.asarray(grad)), torch.isnan(ref_grad).numpy())


@pytest.mark.parametrize("classes", [1, 10])
def test_cross_entropy_empty_batch(classes, dtype):
    x = np.zeros((0, classes), dtype)
    y = np.zeros(0, np.int64)
    ref = {r: F.cross_entropy(f64(x), torch.from_numpy(y), reduction=r) for r in REDUCTIONS}
    assert torch.isnan(ref["mean"]) and ref["sum"] == 0 and ref["none"].shape == (0,)
    assert np.isnan(np.asarray(_C.cross_entropy_forward(x, y)))
    assert np.asarray(_C.cross_entropy_forward(x, y, reduction="sum")) == 0
    assert _C.cross_entropy_forward(x, y, reduction="none").shape == (0,)
    loss, grad = _C.cross_entropy(x, y)
    assert np.isnan(np.asarray(loss)) and grad.shape == (0, classes)
    loss, grad = _C.cross_entropy(x, y, reduction="sum")
    assert np.asarray(loss) == 0 and grad.shape == (0, classes)
    assert _C.cross_entropy_backward(x, y, 1.0).shape == (0, classes)
    assert _C.cross_entropy_backward(x, y, np.zeros(0, dtype), reduction="none").shape == (0, classes)


def test_cross_entropy_nan_propagates(dtype, rng):
    x = randn(rng, (3, 5), dtype)
    y = np.array([0, 1, 2])
    x[0, 3] = np.nan  # not the row's target and not its max: must still poison the row
    x[1, 1] = np.nan  # the target itself
    loss = np.asarray(_C.cross_entropy_forward(x, y, reduction="none"))
    assert np.isnan(loss[:2]).all() and np.isfinite(loss[2])
    assert np.isnan(np.asarray(_C.cross_entropy(x, y)[0]))
    x[0, 0] = np.nan  # the first element, where the max starts
    assert np.isnan(np.asarray(_C.cross_entropy_forward(x, y, reduction="none"))[0])


def test_cross_entropy_dloss_forms(dtype, rng):
    x = randn(rng, (7, 4), dtype)
    y = labels(rng, 7, 4)
    a = np.asarray(_C.cross_entropy_backward(x, y, 2.0))
    b = np.asarray(_C.cross_entropy_backward(x, y, np.array(2.0, dtype)))
    c = np.asarray(_C.cross_entropy_backward(x, y, 2))
    d = np.asarray(_C.cross_entropy_backward(x, y, np.float32(2.0)))
    e = np.asarray(_C.cross_entropy_backward(x, y, torch.tensor(2.0, dtype=getattr(torch, dtype))))
    for other in (b, c, d, e):
        np.testing.assert_array_equal(a, other)


# ---- MSE ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (1,), (7,), (33, 7), (1000,), (1000, 33)])
def test_mse_matches_torch(shape, dtype, rng):
    x = np.asarray(randn(rng, shape, dtype, scale=3.0))  # shape (): a 0-d array, not a scalar
    t = np.asarray(randn(rng, shape, dtype))
    for reduction in REDUCTIONS:
        xt = f64(x).requires_grad_(True)
        ref = F.mse_loss(xt, f64(t), reduction=reduction)
        g = np.asarray(randn(rng, shape, dtype)) if reduction == "none" else float(rng.standard_normal())
        ref.backward(f64(g) if reduction == "none" else torch.tensor(g, dtype=torch.float64))
        loss = _C.mse_forward(x, t, reduction)
        assert loss.shape == tuple(ref.shape)
        assert_close(loss, ref.detach(), dtype, what=f"loss {reduction}")
        assert_close(_C.mse_backward(x, t, g, reduction), xt.grad, dtype, what=f"dinput {reduction}")


def test_mse_empty_and_nan(dtype):
    e = np.zeros((0, 3), dtype)
    assert torch.isnan(F.mse_loss(f64(e), f64(e)))
    assert np.isnan(np.asarray(_C.mse_forward(e, e)))
    assert np.asarray(_C.mse_forward(e, e, "sum")) == 0
    assert _C.mse_forward(e, e, "none").shape == (0, 3)
    assert _C.mse_backward(e, e, 1.0).shape == (0, 3)
    x = np.array([1.0, np.nan, 2.0], dtype)
    t = np.zeros(3, dtype)
    assert np.isnan(np.asarray(_C.mse_forward(x, t)))
    assert np.isnan(np.asarray(_C.mse_backward(x, t, 1.0))[1])


# ---- BCE with logits ----------------------------------------------------------------------------

def torch_bce(x, t, weight, pos_weight, reduction, dloss):
    xt = f64(x).requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(
        xt, f64(t), weight=None if weight is None else f64(weight),
        pos_weight=None if pos_weight is None else f64(pos_weight), reduction=reduction)
    loss.backward(f64(dloss) if reduction == "none" else torch.tensor(float(dloss), dtype=torch.float64))
    return loss.detach(), xt.grad


def broadcast_weights(rng, shape, dtype, low, high):
    """Weights that torch broadcasts to `shape` whose dimensions other than 1 are adjacent: one per
    row, per element of the trailing dimensions, per middle dimension, and a 0-d one for all."""
    shapes = {shape[:1] + (1,) * (len(shape) - 1), shape[1:], (1,) + shape[1:], ()}
    if len(shape) == 3:
        shapes |= {(shape[1], 1), shape[:2] + (1,)}
    return [np.asarray(rng.uniform(low, high, s)).astype(dtype) for s in sorted(shapes)]


@pytest.mark.parametrize("shape", [(1,), (7,), (33, 1), (1000, 7), (7, 1000), (33, 4, 3)])
def test_bce_with_logits_matches_torch(shape, dtype, rng):
    x = randn(rng, shape, dtype, scale=4.0)
    t = rng.random(shape).astype(dtype)
    t.reshape(-1)[::3] = np.round(t.reshape(-1)[::3])  # hard labels as well as soft ones
    last = shape[-1]
    weights = (None, rng.uniform(0.0, 2.0, shape).astype(dtype), *broadcast_weights(rng, shape, dtype, 0.0, 2.0))
    pos_weights = (None, rng.uniform(0.1, 5.0, last).astype(dtype), np.array([3.0], dtype),
                   *broadcast_weights(rng, shape, dtype, 0.1, 5.0))
    for w in weights:
        for pw in pos_weights:
            for reduction in REDUCTIONS:
                what = f"{reduction} weight={None if w is None else w.shape} pos_weight={None if pw is None else pw.shape}"
                g = randn(rng, shape, dtype) if reduction == "none" else float(rng.standard_normal())
                ref_loss, ref_grad = torch_bce(x, t, w, pw, reduction, g)
                loss = _C.bce_with_logits_forward(x, t, w, pw, reduction)
                assert loss.shape == tuple(ref_loss.shape)
                assert_close(loss, ref_loss, dtype, what=f"loss {what}")
                grad = _C.bce_with_logits_backward(x, t, g, w, pw, reduction)
                assert_close(grad, ref_grad, dtype, what=f"dinput {what}")


def test_bce_with_logits_extreme_logits(dtype, rng):
    x = np.array([-1e4, -1e3, -100.0, -30.0, -1e-8, 0.0, 1e-8, 30.0, 100.0, 1e3, 1e4], dtype)
    for t in (np.zeros_like(x), np.ones_like(x), np.full_like(x, 0.25)):
        for pw in (None, np.array([2.5], dtype)):
            ref_loss, ref_grad = torch_bce(x, t, None, pw, "none", np.ones_like(x))
            loss = np.asarray(_C.bce_with_logits_forward(x, t, pos_weight=pw, reduction="none"))
            grad = np.asarray(_C.bce_with_logits_backward(x, t, np.ones_like(x), pos_weight=pw, reduction="none"))
            assert np.isfinite(loss).all() and np.isfinite(grad).all()
            assert_close(loss, ref_loss, dtype, what="loss")
            assert_close(grad, ref_grad, dtype, what="dinput")


def test_bce_softplus_is_accurate_elementwise():
    # with t = 0 and x <= 0 the loss is log1p(exp(x)) exactly: checks the vectorised exp and
    # log1p per element, across the switch point of log1p's two ranges (exp(x) = sqrt(2) - 1)
    x = -np.concatenate([np.geomspace(1e-12, 700.0, 2000), [0.0, np.log(np.sqrt(2) - 1) * -1]])
    t = np.zeros_like(x)
    loss = np.asarray(_C.bce_with_logits_forward(x, t, reduction="none"))
    ref = torch.log1p(torch.exp(f64(x))).numpy()
    np.testing.assert_allclose(loss, ref, rtol=5e-15, atol=0)
    x32 = x[x > -87.0].astype(np.float32)
    loss32 = np.asarray(_C.bce_with_logits_forward(x32, np.zeros_like(x32), reduction="none"))
    ref32 = torch.log1p(torch.exp(f64(x32))).numpy()
    np.testing.assert_allclose(loss32, ref32, rtol=1e-6, atol=0)
    # the gradient is sigmoid(x): same check for the exp used there, both signs of x
    xs = np.concatenate([x, -x])
    grad = np.asarray(_C.bce_with_logits_backward(xs, np.zeros_like(xs), np.ones_like(xs), reduction="none"))
    np.testing.assert_allclose(grad, torch.sigmoid(f64(xs)).numpy(), rtol=5e-15, atol=1e-300)


def test_bce_with_logits_empty_and_nan(dtype):
    e = np.zeros((0, 4), dtype)
    pw = np.ones(4, dtype)
    assert torch.isnan(F.binary_cross_entropy_with_logits(f64(e), f64(e)))
    assert np.isnan(np.asarray(_C.bce_with_logits_forward(e, e, pos_weight=pw)))
    assert np.asarray(_C.bce_with_logits_forward(e, e, reduction="sum")) == 0
    assert _C.bce_with_logits_forward(e, e, reduction="none").shape == (0, 4)
    assert _C.bce_with_logits_backward(e, e, 1.0, pos_weight=pw).shape == (0, 4)
    x = np.array([0.5, np.nan, -2.0], dtype)
    t = np.array([1.0, 0.0, 0.0], dtype)
    loss = np.asarray(_C.bce_with_logits_forward(x, t, reduction="none"))
    assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2]]).all()
    assert np.isnan(np.asarray(_C.bce_with_logits_backward(x, t, 1.0)))[1]


# ---- determinism across thread counts -----------------------------------------------------------

@pytest.fixture
def restore_threads():
    n = fastnn.get_num_threads()
    yield
    fastnn.set_num_threads(n)


def test_reductions_independent_of_thread_count(dtype, rng, restore_threads):
    x = randn(rng, (2000, 100), dtype, scale=3.0)  # large enough for parallel_for to split
    y = labels(rng, 2000, 100, ignore_index=-100, ignored=0.1)
    w = rng.uniform(0.1, 2.0, 100).astype(dtype)
    big = randn(rng, (300000,), dtype)
    t = rng.random(300000).astype(dtype)

    def run_all():
        ce = _C.cross_entropy(x, y, w)
        return [np.asarray(v).copy() for v in (
            ce[0], ce[1], _C.cross_entropy_forward(x, y, w, "sum"),
            _C.mse_forward(big, t), _C.bce_with_logits_forward(big, t),
            _C.bce_with_logits_forward(big.reshape(-1, 3), t.reshape(-1, 3), pos_weight=np.ones(3, dtype)),
            # broadcast weights read in short runs (gathered per block, from mid-row at block edges)
            _C.bce_with_logits_forward(big.reshape(-1, 3), t.reshape(-1, 3), row_w, pos_w),
            _C.bce_with_logits_backward(big.reshape(-1, 3), t.reshape(-1, 3), 1.0, row_w, pos_w))]

    row_w = rng.uniform(0.1, 2.0, (100000, 1)).astype(dtype)
    pos_w = rng.uniform(0.5, 3.0, 3).astype(dtype)

    fastnn.set_num_threads(1)
    one = run_all()
    fastnn.set_num_threads(2)
    two = run_all()
    fastnn.set_num_threads(3)  # more threads than the 2 cores some CI machines have: still the same
    three = run_all()
    for a, b, c in zip(one, two, three):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    ref_loss, ref_grad = torch_bce(big.reshape(-1, 3), t.reshape(-1, 3), row_w, pos_w, "mean", 1.0)
    assert_close(one[-2], ref_loss, dtype, what="broadcast-weighted loss")
    assert_close(one[-1], ref_grad, dtype, what="broadcast-weighted dinput")


def test_float32_mean_accumulates_in_double(rng):
    """A long float32 reduction stays within 1e-5 of the float64 reference."""
    x = (rng.standard_normal(1_000_000) * 3).astype(np.float32)
    t = rng.random(1_000_000).astype(np.float32)
    assert_close(_C.mse_forward(x, t), F.mse_loss(f64(x), f64(t)), "float32", rtol=1e-6)
    assert_close(_C.bce_with_logits_forward(x, t), F.binary_cross_entropy_with_logits(f64(x), f64(t)),
                 "float32", rtol=1e-6)
    logits = (rng.standard_normal((5000, 10)) * 3).astype(np.float32)
    y = labels(rng, 5000, 10)
    assert_close(_C.cross_entropy_forward(logits, y, reduction="sum"),
                 F.cross_entropy(f64(logits), torch.from_numpy(y), reduction="sum"), "float32", rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_other_isa_variants(isa):
    """The kernels are compiled for the baseline x86-64, AVX2 and AVX-512 and the best runs; the
    others are checked in a child process whose FASTNN_ISA caps the choice (read once per process)."""
    env = dict(os.environ, FASTNN_ISA=isa)
    info = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.build_info()['cpu_isa'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert info in ("scalar", "AVX2" if isa == "avx2" else "scalar")
    subset = ("accurate or extreme or fused_equals or independent or label_dtypes or "
              "bce_with_logits_matches or mse_matches")
    r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
                        "-k", f"({subset}) and not other_isa"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# ---- argument errors ----------------------------------------------------------------------------

def test_cross_entropy_errors():
    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"target: label 3 at index 2 .*\[0, 3\)"):
        _C.cross_entropy(x, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"target: label -1 at index 0"):
        _C.cross_entropy_forward(x, np.array([-1, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"target: label -100"):
        _C.cross_entropy_backward(x, np.array([-100, 1, 2, 1], np.int32), 1.0, ignore_index=-1)
    with pytest.raises(TypeError, match="target: expected int64 or int32"):
        _C.cross_entropy(x, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        _C.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        _C.cross_entropy(x, y.reshape(4, 1))
    with pytest.raises(ValueError, match="logits: expected a 2-d tensor"):
        _C.cross_entropy(np.zeros(4, np.float32), y)
    with pytest.raises(ValueError, match="logits: expected at least one class"):
        _C.cross_entropy(np.zeros((4, 0), np.float32), y)
    with pytest.raises(TypeError, match="logits: expected float32 or float64"):
        _C.cross_entropy(np.zeros((4, 3), np.int64), y)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\)"):
        _C.cross_entropy(x, y, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="weight: expected float32"):
        _C.cross_entropy(x, y, np.ones(3, np.float64))
    with pytest.raises(ValueError, match="reduction: expected 'mean', 'sum' or 'none', got 'avg'"):
        _C.cross_entropy_forward(x, y, reduction="avg")
    with pytest.raises(ValueError, match="reduction: the fused cross_entropy takes 'mean' or 'sum'"):
        _C.cross_entropy(x, y, reduction="none")
    with pytest.raises(ValueError, match=r"dloss: expected shape \(4,\)"):
        _C.cross_entropy_backward(x, y, np.ones(3, np.float32), reduction="none")
    with pytest.raises(ValueError, match="dloss: reduction 'none' needs a tensor"):
        _C.cross_entropy_backward(x, y, 1.0, reduction="none")
    with pytest.raises(ValueError, match=r"dloss: expected shape \(\)"):
        _C.cross_entropy_backward(x, y, np.ones(1, np.float32))
    with pytest.raises(TypeError, match="dloss: expected float32"):
        _C.cross_entropy_backward(x, y, np.array(1.0))
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(4, 3\)"):
        _C.cross_entropy(x, y, dlogits=np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError):
        _C.cross_entropy(x, y, None, "mean", -100, np.zeros((4, 3), np.float32))  # dlogits is keyword-only


def test_elementwise_loss_errors():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"target: expected shape \(4, 3\)"):
        _C.mse_forward(x, np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="target: expected float32"):
        _C.mse_forward(x, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="input: expected float32 or float64"):
        _C.mse_backward(np.zeros(3, np.int32), np.zeros(3, np.int32), 1.0)
    with pytest.raises(ValueError, match="reduction: expected"):
        _C.mse_backward(x, x, 1.0, "max")
    with pytest.raises(ValueError, match=r"dloss: expected shape \(4, 3\)"):
        _C.mse_backward(x, x, np.ones(4, np.float32), "none")
    with pytest.raises(ValueError, match=r"target: expected shape \(4, 3\)"):
        _C.bce_with_logits_forward(x, np.zeros(12, np.float32))
    with pytest.raises(ValueError, match=r"weight: shape \(4,\) does not broadcast to input's shape \(4, 3\)"):
        _C.bce_with_logits_forward(x, x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"pos_weight: shape \(2, 3\) does not broadcast"):
        _C.bce_with_logits_backward(x, x, 1.0, pos_weight=np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"pos_weight: shape \(1, 4, 3\) has more dimensions than input \(4, 3\)"):
        _C.bce_with_logits_forward(x, x, pos_weight=np.ones((1, 4, 3), np.float32))
    with pytest.raises(TypeError, match="pos_weight: expected float32"):
        _C.bce_with_logits_forward(x, x, pos_weight=np.ones(3))
    with pytest.raises(ValueError, match="pos_weight: shape \\(1,\\) has more dimensions than input \\(\\)"):
        _C.bce_with_logits_forward(np.zeros((), np.float32), np.zeros((), np.float32),
                                   pos_weight=np.ones(1, np.float32))
    # torch broadcasts a (5, 1, 3) weight over (5, 4, 3); fastnn's kernels read weights whose
    # dimensions other than 1 are adjacent, and say so
    x3 = np.zeros((5, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight: shape \(5, 1, 3\) repeats along a dimension .* expanded"):
        _C.bce_with_logits_forward(x3, x3, np.ones((5, 1, 3), np.float32))
    loss = _C.bce_with_logits_forward(x3, x3, np.broadcast_to(np.ones((5, 1, 3), np.float32), x3.shape).copy())
    assert np.isclose(float(np.asarray(loss)), np.log(2.0))
    with pytest.raises(ValueError, match="reduction: expected"):
        _C.bce_with_logits_forward(x, x, reduction="Mean")
    with pytest.raises(TypeError, match="input: expected a fastnn.Tensor"):
        _C.bce_with_logits_forward([1.0], [1.0])
