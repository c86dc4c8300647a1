"""fastnn.optim and the _C optimizer kernels against torch.optim, step by step."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastnn
import fastnn.optim as optim
from fastnn import _C
from fastnn.nn.parameter import FlatParameters, Parameter
from utils import assert_close

# Odd sizes, no multiple of any vector width: the vector loops' tails and thread splits are exercised.
SHAPES = [(7, 33), (33,), (1000,), (1,)]
STEPS = 12
# float64 agrees with torch to a few ulps (FMA contraction is the only difference in arithmetic);
# float32 to a few float32 ulps.
RTOL = {"float32": 1e-6, "float64": 1e-12}

CASES = [
    ("SGD", {}),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.2, weight_decay=0.05, maximize=True)),
    ("Adam", {}),
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-6, amsgrad=True, weight_decay=0.05, maximize=True)),
    ("Adam", dict(lr=1e-2, betas=(0.3, 0.5))),  # 1 - beta1 >= 0.5: lerp's other branch
    ("Adam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", {}),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0, maximize=True)),
    ("RMSprop", {}),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(momentum=0.9)),
    ("RMSprop", dict(centered=True, momentum=0.9, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, eps=1e-6, maximize=True)),
    ("RMSprop", dict(alpha=0.3, centered=True)),  # 1 - alpha >= 0.5: lerp's other branch
    ("Adagrad", {}),
    ("Adagrad", dict(lr_decay=0.01)),
    ("Adagrad", dict(initial_accumulator_value=0.1, lr_decay=0.05, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, eps=1e-6, maximize=True)),
]

OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
STATEFUL = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
            "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.01),
            "AdamW": dict(lr=1e-2, amsgrad=True),
            "RMSprop": dict(centered=True, momentum=0.9),
            "Adagrad": dict(lr_decay=0.01, initial_accumulator_value=0.1)}


def case_id(case):
    name, kw = case
    return name + "-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "defaults")


def torch_optimizer(name, params, **kw):
    return getattr(torch.optim, name)(params, foreach=False, **kw)  # the single-tensor reference


def make_params(rng, dtype, shapes=SHAPES, flat=True):
    """fastnn Parameters (in one FlatParameters when flat) and torch leaves with the same values."""
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [Parameter(v) for v in values]
    if flat:
        FlatParameters(params)
    tparams = [torch.tensor(v, requires_grad=True) for v in values]
    return params, tparams


def set_grads(rng, params, tparams, dtype, only=None):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        if only is not None and i not in only:
            p.grad, tp.grad = None, None
            continue
        g = rng.standard_normal(p.shape).astype(dtype)
        if p.grad is None:
            p.grad = _C.zeros(list(p.shape), p.dtype)
        p.grad.numpy()[...] = g
        tp.grad = torch.tensor(g)


def assert_params_close(params, tparams, dtype, what):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        assert_close(p.numpy(), tp.detach(), dtype, rtol=RTOL[dtype], what=f"{what} param {i}")


def assert_state_close(opt, topt, params, tparams, dtype):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        ours, theirs = opt.state[p], topt.state[tp]
        assert set(ours) == set(theirs), (i, set(ours), set(theirs))
        for key, value in theirs.items():
            if key == "step":
                assert ours[key] == value.item()
            else:
                assert_close(ours[key].numpy(), value, dtype, rtol=RTOL[dtype], what=f"state {i} {key}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_step_by_step(case, dtype, rng):
    """Coalesced (one FlatParameters) and per-parameter (free-standing params) paths alike."""
    name, kw = case
    for flat in (True, False):
        params, tparams = make_params(rng, dtype, flat=flat)
        opt = getattr(optim, name)(params, **kw)
        topt = torch_optimizer(name, tparams, **kw)
        for step in range(STEPS):
            set_grads(rng, params, tparams, dtype)
            assert opt.step() is None
            topt.step()
            assert_params_close(params, tparams, dtype, f"flat={flat} step {step}")
        assert_state_close(opt, topt, params, tparams, dtype)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_flat_group_is_one_kernel_call_per_step(name, monkeypatch, rng):
    kernel = {"SGD": "sgd_step", "Adam": "adam_step", "AdamW": "adam_step", "RMSprop": "rmsprop_step",
              "Adagrad": "adagrad_step"}[name]
    calls = []
    real = getattr(_C, kernel)

    def counting(param, *args, **kwargs):
        calls.append(param.numel())
        return real(param, *args, **kwargs)

    monkeypatch.setattr(_C, kernel, counting)
    flat_params, _ = make_params(rng, "float64", flat=True)
    free_params, _ = make_params(rng, "float64", flat=False)
    opt = getattr(optim, name)([{"params": flat_params}, {"params": free_params}], **STATEFUL[name])
    for _ in range(3):
        opt.step()
    total = sum(int(np.prod(s)) for s in SHAPES)
    per_step = [total] + [int(np.prod(s)) for s in SHAPES]
    assert calls == per_step * 3


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_steady_state_step_allocates_nothing(name, rng):
    for flat in (True, False):
        params, _ = make_params(rng, "float32", flat=flat)
        opt = getattr(optim, name)(params, **STATEFUL[name])
        for p in params:
            p.grad.numpy()[...] = 0.5
        opt.step()
        before = _C._debug_stats()
        for _ in range(5):
            opt.step()
            opt.zero_grad()
        after = _C._debug_stats()
        assert after["live_storages"] == before["live_storages"], flat
        assert after["owned_bytes"] == before["owned_bytes"], flat


def test_state_is_views_of_flat_buffers(rng):
    params, _ = make_params(rng, "float32", flat=True)
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad.numpy()[...] = 1.0
    opt.step()
    flat = params[0].flat
    base = opt.state[params[0]]["exp_avg"].data_ptr()
    for p in params:
        assert opt.state[p]["exp_avg"].data_ptr() == base + p.offset * 4
        assert opt.state[p]["exp_avg"].shape == p.shape
    assert flat.numel() == sum(p.numel() for p in params)


def test_param_groups_with_different_lr(dtype, rng):
    """A covered FlatParameters, free-standing params and a partial slice of another flat buffer."""
    a, ta = make_params(rng, dtype, flat=True)
    b, tb = make_params(rng, dtype, shapes=[(5, 3), (7,)], flat=False)
    c, tc = make_params(rng, dtype, shapes=[(4,), (9,), (2, 2)], flat=True)
    groups = [{"params": a, "lr": 0.1}, {"params": b, "lr": 0.01, "momentum": 0.5}, {"params": c[:2]}]
    tgroups = [{"params": ta, "lr": 0.1}, {"params": tb, "lr": 0.01, "momentum": 0.5}, {"params": tc[:2]}]
    opt = optim.SGD(groups, lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(tgroups, lr=0.05, momentum=0.9, foreach=False)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01, 0.05]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.5, 0.9]
    params, tparams = a + b + c[:2], ta + tb + tc[:2]
    for step in range(STEPS):
        set_grads(rng, params, tparams, dtype)
        opt.step()
        topt.step()
        assert_params_close(params, tparams, dtype, f"step {step}")
    assert_state_close(opt, topt, params, tparams, dtype)
    # the slice of c outside the optimizer never moved
    assert_close(c[2].numpy(), tc[2].detach(), dtype, rtol=0)


def test_lr_changed_between_steps_like_a_scheduler(rng):
    params, tparams = make_params(rng, "float64")
    opt, topt = optim.Adam(params), torch.optim.Adam(tparams, foreach=False)
    for step in range(STEPS):
        for g, tg in zip(opt.param_groups, topt.param_groups):
            g["lr"] = tg["lr"] = 1e-2 * 0.8 ** step
        set_grads(rng, params, tparams, "float64")
        opt.step()
        topt.step()
    assert_params_close(params, tparams, "float64", "scheduled lr")


def test_add_param_group(rng):
    a, ta = make_params(rng, "float64", flat=True)
    b, tb = make_params(rng, "float64", shapes=[(3, 4)], flat=False)
    opt, topt = optim.Adagrad(a, lr=0.1), torch.optim.Adagrad(ta, lr=0.1, foreach=False)
    opt.add_param_group({"params": b, "lr": 0.05})
    # torch's Adagrad creates state only in its constructor; give the new group the same
    topt.add_param_group({"params": tb, "lr": 0.05})
    for tp in tb:
        topt.state[tp] = {"step": torch.tensor(0.0), "sum": torch.zeros_like(tp)}
    for _ in range(STEPS):
        set_grads(rng, a + b, ta + tb, "float64")
        opt.step()
        topt.step()
    assert_params_close(a + b, ta + tb, "float64", "added group")
    assert opt.param_groups[1]["lr_decay"] == 0


def test_params_without_grad_are_skipped_like_torch(rng):
    params, tparams = make_params(rng, "float64", flat=False)
    opt, topt = optim.Adam(params, lr=0.1), torch.optim.Adam(tparams, lr=0.1, foreach=False)
    for step in range(6):
        set_grads(rng, params, tparams, "float64", only={0, 2} if step < 3 else None)
        opt.step()
        topt.step()
    assert_params_close(params, tparams, "float64", "partial grads")
    assert_state_close(opt, topt, params, tparams, "float64")


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_param"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip(name, flat, dtype):
    """Save after 5 steps, load into a fresh optimizer, 5 more steps: identical to 10 uninterrupted."""
    kw = STATEFUL[name]
    rng = np.random.default_rng(7)
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(10)]
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]

    def fresh_params(flat_layout, values=start):
        params = [Parameter(v) for v in values]
        if flat_layout:
            FlatParameters(params)
        return params

    def run(opt, params, steps):
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad.numpy()[...] = g
            opt.step()

    ref = fresh_params(flat)
    run(getattr(optim, name)(ref, **kw), ref, grads)

    params = fresh_params(flat)
    first = getattr(optim, name)(params, **kw)
    run(first, params, grads[:5])
    saved = first.state_dict()
    values = [p.numpy().copy() for p in params]
    run(first, params, grads[5:6])  # the saved dict holds copies: stepping on changes nothing in it
    del first

    # continue from the saved state and 5-step values, in both layouts (state is layout-free)
    for layout in (flat, not flat):
        resumed = fresh_params(layout, values)
        again = getattr(optim, name)(resumed, **kw)
        again.load_state_dict(saved)
        run(again, resumed, grads[5:])
        for p, r in zip(resumed, ref):
            np.testing.assert_array_equal(p.numpy(), r.numpy())


def test_state_dict_structure_matches_torch(rng):
    a, ta = make_params(rng, "float64", flat=True)
    b, tb = make_params(rng, "float64", shapes=[(3,)], flat=False)
    opt = optim.Adam([{"params": a}, {"params": b, "lr": 0.5}], amsgrad=True)
    topt = torch.optim.Adam([{"params": ta}, {"params": tb, "lr": 0.5}], amsgrad=True, foreach=False)
    for _ in range(3):
        set_grads(rng, a + b, ta + tb, "float64")
        opt.step()
        topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for g, tg in zip(ours["param_groups"], theirs["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"):
            assert g[key] == tg[key], key
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for i, s in theirs["state"].items():
        assert list(ours["state"][i]) == list(s)
        assert ours["state"][i]["step"] == s["step"].item()
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert isinstance(ours["state"][i][key], np.ndarray)
            assert_close(ours["state"][i][key], s[key], "float64", rtol=RTOL["float64"])


def test_load_torch_state_dict(rng):
    """A torch.optim state_dict (tensors, tensor steps) loads and continues with torch's numbers."""
    params, tparams = make_params(rng, "float64", flat=True)
    topt = torch.optim.RMSprop(tparams, momentum=0.9, centered=True, foreach=False)
    for _ in range(4):
        set_grads(rng, params, tparams, "float64")
        topt.step()
    for p, tp in zip(params, tparams):
        p.data.copy_(tp.detach().numpy())
    opt = optim.RMSprop(params, momentum=0.9, centered=True)
    opt.load_state_dict(topt.state_dict())
    for _ in range(4):
        set_grads(rng, params, tparams, "float64")
        opt.step()
        topt.step()
    assert_params_close(params, tparams, "float64", "after torch state")


def test_uneven_state_loads_into_a_flat_group(rng):
    """State saved when only some params had gradients: the flat group steps per parameter, as torch."""
    src, tparams = make_params(rng, "float64", flat=False)
    src_opt = optim.Adam(src, lr=0.1)
    topt = torch.optim.Adam(tparams, lr=0.1, foreach=False)
    for _ in range(3):
        set_grads(rng, src, tparams, "float64", only={1, 3})
        src_opt.step()
        topt.step()
    params = [Parameter(p.numpy()) for p in src]
    FlatParameters(params)
    opt = optim.Adam(params, lr=0.1)
    opt.load_state_dict(src_opt.state_dict())
    for _ in range(4):
        set_grads(rng, params, tparams, "float64")
        opt.step()
        topt.step()
    assert_params_close(params, tparams, "float64", "uneven state")
    assert_state_close(opt, topt, params, tparams, "float64")


def test_load_state_dict_errors(rng):
    params, _ = make_params(rng, "float64", flat=True)
    opt = optim.Adam(params)
    for p in params:
        p.grad.numpy()[...] = 1.0
    opt.step()
    saved = opt.state_dict()
    other = optim.Adam(params[:2])
    with pytest.raises(ValueError, match="doesn't match the size"):
        other.load_state_dict(saved)
    two = optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ValueError, match="different number of parameter groups"):
        two.load_state_dict(saved)
    saved["state"][1]["exp_avg"] = np.zeros(5)
    fresh = optim.Adam(params)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] of parameter 1 has shape \(5,\), expected \(33,\)"):
        fresh.load_state_dict(saved)
    assert not fresh.state  # nothing half-loaded


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per_param"])
def test_zero_grad(flat, rng):
    params, _ = make_params(rng, "float32", flat=flat)
    others, _ = make_params(rng, "float32", flat=True)
    for p in params + others:
        p.grad.numpy()[...] = 3.0
    optim.SGD(params, lr=0.1).zero_grad()
    assert all((p.grad.numpy() == 0).all() for p in params)
    assert all((p.grad.numpy() == 3).all() for p in others)


def test_closure_is_called_and_its_loss_returned(rng):
    params, _ = make_params(rng, "float64")
    opt = optim.SGD(params, lr=0.1)
    calls = []
    assert opt.step(lambda: calls.append(1) or 1.5) == 1.5
    assert calls == [1]


def test_accepts_flat_parameters_and_generators(rng):
    params, _ = make_params(rng, "float64")
    assert optim.Adam(params[0].flat).param_groups[0]["params"] == params
    assert optim.Adam(p for p in params).param_groups[0]["params"] == params


def test_defaults_match_torch():
    params = [Parameter(np.zeros(3))]
    tparams = [torch.zeros(3, requires_grad=True)]
    for name in OPTIMIZERS:
        ours = getattr(optim, name)(params).param_groups[0]
        theirs = getattr(torch.optim, name)(tparams).param_groups[0]
        for key, value in ours.items():
            if key != "params":
                assert theirs[key] == value, (name, key)


VALIDATION_CASES = [
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, "Invalid learning rate: -0.1"),
    (lambda p: optim.SGD(p, momentum=-1), ValueError, "Invalid momentum value"),
    (lambda p: optim.SGD(p, weight_decay=-1), ValueError, "Invalid weight_decay value"),
    (lambda p: optim.SGD(p, nesterov=True), ValueError, "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda p: optim.Adam(p, lr=-1e-3), ValueError, "Invalid learning rate"),
    (lambda p: optim.Adam(p, eps=-1e-8), ValueError, "Invalid epsilon value"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), ValueError, "Invalid beta parameter at index 0"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1"),
    (lambda p: optim.Adam(p, betas=(0.9,)), ValueError, "Invalid betas"),
    (lambda p: optim.AdamW(p, weight_decay=-0.01), ValueError, "Invalid weight_decay value"),
    (lambda p: optim.Adam(p, differentiable=True), ValueError, "differentiable=True is not supported"),
    (lambda p: optim.Adam(p, fused=True, foreach=True), RuntimeError, "cannot be `True` together"),
    (lambda p: optim.RMSprop(p, alpha=-0.1), ValueError, "Invalid alpha value"),
    (lambda p: optim.RMSprop(p, momentum=-0.1), ValueError, "Invalid momentum value"),
    (lambda p: optim.RMSprop(p, eps=-1), ValueError, "Invalid epsilon value"),
    (lambda p: optim.Adagrad(p, lr_decay=-1), ValueError, "Invalid lr_decay value"),
    (lambda p: optim.Adagrad(p, initial_accumulator_value=-1), ValueError, "Invalid initial_accumulator_value"),
    (lambda p: optim.Adagrad(p, eps=-1), ValueError, "Invalid epsilon value"),
    (lambda p: optim.SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda p: optim.SGD(p[0], lr=0.1), TypeError, "should be an iterable"),
    (lambda p: optim.SGD(p[:1], lr=0.1).add_param_group({"params": set(p[1:])}), TypeError, "ordered collections"),
    (lambda p: optim.SGD([np.zeros(3)], lr=0.1), TypeError, "can only optimize Parameters, but one of the params is ndarray"),
    (lambda p: optim.SGD([{"params": p[:1]}, {"params": p}], lr=0.1), ValueError, "more than one parameter group"),
    (lambda p: optim.SGD(p, lr=0.1).add_param_group(p), TypeError, "param_group must be a dict"),
]


def test_argument_validation():
    for make, error, match in VALIDATION_CASES:
        params = [Parameter(np.zeros(3)), Parameter(np.zeros(2))]
        with pytest.raises(error, match=match):
            make(params)


def test_torch_raises_the_same_validation_errors():
    """The messages above are torch's own (where torch checks the same thing)."""
    tp = [torch.zeros(3, requires_grad=True)]
    for make, match in [(lambda: torch.optim.SGD(tp, lr=-0.1), "Invalid learning rate: -0.1"),
                        (lambda: torch.optim.SGD(tp, nesterov=True), "Nesterov momentum requires"),
                        (lambda: torch.optim.Adam(tp, betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
                        (lambda: torch.optim.RMSprop(tp, alpha=-0.1), "Invalid alpha value"),
                        (lambda: torch.optim.Adagrad(tp, initial_accumulator_value=-1), "Invalid initial_accumulator_value"),
                        (lambda: torch.optim.SGD([], lr=0.1), "empty parameter list")]:
        with pytest.raises(ValueError, match=match):
            make()


# ---- kernel level -------------------------------------------------------------------------------

def adam_args(n=10, dtype=np.float64):
    return [np.ones(n, dtype), np.ones(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)]


ADAM_KW = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


KERNEL_ERROR_CASES = [
    (lambda: _C.adam_step(*adam_args()[:1], np.ones(10, np.float32), *adam_args()[2:], **ADAM_KW),
     TypeError, "grad: expected float64 \\(the dtype of param\\), got float32"),
    (lambda: _C.adam_step(*adam_args()[:2], np.zeros(9), adam_args()[3], **ADAM_KW),
     ValueError, "exp_avg: expected shape \\(10,\\), got \\(9,\\)"),
    (lambda: _C.adam_step(*adam_args()[:3], np.zeros((2, 5)), **ADAM_KW),
     ValueError, "exp_avg_sq: expected shape"),
    (lambda: _C.adam_step(*adam_args(), None, amsgrad=True, **ADAM_KW),
     ValueError, "max_exp_avg_sq: required when amsgrad=True"),
    (lambda: _C.adam_step(*adam_args(), np.zeros(10, np.float32), amsgrad=True, **ADAM_KW),
     TypeError, "max_exp_avg_sq: expected float64"),
    (lambda: _C.adam_step(*adam_args(), **dict(ADAM_KW, step=0)), ValueError, "step: expected the step number"),
    (lambda: _C.adam_step(np.ones(10, np.int64), np.ones(10, np.int64), np.zeros(10, np.int64),
                          np.zeros(10, np.int64), **ADAM_KW), TypeError, "param: expected float32 or float64"),
    (lambda: _C.adam_step([1.0], *adam_args()[1:], **ADAM_KW), TypeError, "param: expected a fastnn.Tensor"),
    (lambda: _C.sgd_step(np.ones(4), np.ones(4), lr=0.1, momentum=0.9),
     ValueError, "momentum_buffer: required when momentum != 0"),
    (lambda: _C.sgd_step(np.ones(4), np.ones(5), lr=0.1), ValueError, "grad: expected shape \\(4,\\)"),
    (lambda: _C.rmsprop_step(np.ones(4), np.ones(4), np.zeros(4), lr=0.1, alpha=0.9, eps=1e-8, momentum=0.5),
     ValueError, "momentum_buffer: required when momentum > 0"),
    (lambda: _C.rmsprop_step(np.ones(4), np.ones(4), np.zeros(4), lr=0.1, alpha=0.9, eps=1e-8, centered=True),
     ValueError, "grad_avg: required when centered=True"),
    (lambda: _C.rmsprop_step(np.ones(4), np.ones(4), np.zeros(3), lr=0.1, alpha=0.9, eps=1e-8),
     ValueError, "square_avg: expected shape"),
    (lambda: _C.adagrad_step(np.ones(4), np.ones(4), np.zeros(4, np.float32), step=1, lr=0.1),
     TypeError, "state_sum: expected float64"),
    (lambda: _C.adagrad_step(np.ones(4), np.ones(4), np.zeros(4), step=0, lr=0.1), ValueError, "step"),
]


def test_kernel_argument_errors():
    """Each message names the argument and what was expected."""
    for call, error, match in KERNEL_ERROR_CASES:
        with pytest.raises(error, match=match):
            call()


def test_kernel_rejects_read_only_and_shared_memory():
    p = np.ones(8)
    readonly = np.zeros(8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg: tensor is read-only"):
        _C.adam_step(p, np.ones(8), readonly, np.zeros(8), **ADAM_KW)
    frozen = np.ones(8)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="param: tensor is read-only"):
        _C.sgd_step(frozen, np.ones(8), lr=0.1)
    _C.sgd_step(p, readonly, lr=0.1)  # the gradient is only read
    state = np.zeros(16)
    with pytest.raises(ValueError, match="exp_avg_sq: shares memory with exp_avg"):
        _C.adam_step(p, np.ones(8), state[:8], state[4:12], **ADAM_KW)
    with pytest.raises(ValueError, match="grad: shares memory with param"):
        _C.sgd_step(p, p, lr=0.1)


def test_kernel_on_empty_and_torch_tensors(dtype):
    empty = [np.zeros(0, dtype) for _ in range(4)]
    _C.adam_step(*empty, **ADAM_KW)  # nothing to do, no error
    p = torch.ones(5, dtype=getattr(torch, dtype))
    _C.sgd_step(p, torch.ones_like(p), lr=0.25)  # torch tensors are updated in place, zero-copy
    assert (p == 0.75).all()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_nan_gradient_propagates_like_torch(amsgrad):
    g = np.ones(20)
    g[3] = np.nan
    p, tp = np.ones(20), torch.ones(20, requires_grad=True)
    m, v, vmax = np.zeros(20), np.zeros(20), np.zeros(20)
    topt = torch.optim.Adam([tp], amsgrad=amsgrad, foreach=False)
    for step in range(1, 4):
        _C.adam_step(p, g, m, v, vmax if amsgrad else None, amsgrad=amsgrad, **dict(ADAM_KW, step=step))
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_array_equal(np.isnan(p), np.isnan(tp.detach().numpy()))
    assert np.isnan(p[3]) and not np.isnan(p[4])


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_every_isa_variant_matches_torch(isa):
    """The baseline and AVX2 loops (this machine otherwise runs its widest) agree with torch too."""
    if fastnn.build_info()["cpu_isa"] == "scalar" and isa == "avx2":
        pytest.skip("CPU without AVX2")
    script = textwrap.dedent("""
        import numpy as np, torch, fastnn.optim as optim
        from fastnn.nn.parameter import Parameter, FlatParameters
        import fastnn
        assert fastnn.build_info()["cpu_isa"] == {expected!r}, fastnn.build_info()
        rng = np.random.default_rng(3)
        cases = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                 ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
                 ("AdamW", dict(lr=1e-2)), ("RMSprop", dict(centered=True, momentum=0.9, weight_decay=0.01)),
                 ("Adagrad", dict(lr_decay=0.01, initial_accumulator_value=0.1))]
        for dtype, rtol in (("float32", 1e-6), ("float64", 1e-12)):
            for name, kw in cases:
                values = [rng.standard_normal(n).astype(dtype) for n in (1000, 33, 1)]
                params = [Parameter(v) for v in values]
                FlatParameters(params)
                tparams = [torch.tensor(v, requires_grad=True) for v in values]
                opt = getattr(optim, name)(params, **kw)
                topt = getattr(torch.optim, name)(tparams, foreach=False, **kw)
                for _ in range(10):
                    for p, tp in zip(params, tparams):
                        g = rng.standard_normal(p.shape).astype(dtype)
                        p.grad.numpy()[...] = g
                        tp.grad = torch.tensor(g)
                    opt.step(); topt.step()
                for p, tp in zip(params, tparams):
                    e = tp.detach().numpy().astype(np.float64)
                    err = np.abs(p.numpy() - e).max() / np.abs(e).max()
                    assert err <= rtol, (name, dtype, err)
        print("ok")
    """).format(expected={"scalar": "scalar", "avx2": "AVX2"}[isa])
    env = dict(os.environ, FASTNN_ISA=isa)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
