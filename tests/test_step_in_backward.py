"""The optimizer step taken inside the backward pass: ``Module.backward(dy, optimizer=opt)`` and the
kernel under it, ``_C.linear_backward(..., update=_C.ParamUpdate.<rule>(...))``, which runs the
optimizer's loop on each block of the weight gradient as the GEMM finishes it. Both must equal
backward then ``step()`` bit for bit (the same vector loop runs on the same values), and the
arithmetic is torch's: checked against torch autograd + torch.optim here too."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastnn
import fastnn.optim as optim
from fastnn import _C, nn
from fastnn.optim.optimizer import _FUSED_MIN_ELEMENTS

# (rule, the state tensors its kernels take, keyword options): every option branch of every rule
RULE_CASES = [
    ("sgd", ["momentum_buffer"], dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", ["momentum_buffer"], dict(lr=0.1, momentum=0.9, dampening=0.3, first_step=True, maximize=True)),
    ("sgd", [None], dict(lr=0.1)),
    ("adam", ["exp_avg", "exp_avg_sq", None], dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adam", ["exp_avg", "exp_avg_sq", "max"], dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=True)),
    ("adam", ["exp_avg", "exp_avg_sq", None], dict(step=2, lr=1e-2, beta1=0.3, beta2=0.5, eps=1e-8, weight_decay=0.1)),
    ("adam", ["exp_avg", "exp_avg_sq", None], dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                                                   weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("rmsprop", ["square_avg", None, None], dict(lr=1e-2, alpha=0.99, eps=1e-8)),
    ("rmsprop", ["square_avg", "momentum_buffer", "grad_avg"],
     dict(lr=1e-2, alpha=0.9, eps=1e-6, momentum=0.9, centered=True, weight_decay=0.01, maximize=True)),
    ("adagrad", ["state_sum"], dict(step=3, lr=1e-2, lr_decay=0.01, weight_decay=0.1, eps=1e-10)),
]

# (batch, in, out): odd sizes; 128 x 1024 -> 1024 float32 takes the GEMM's block-by-block update
# (rows of C's whole width), 1024 rows (two K blocks) and float64 at 784 inputs the update after the
# whole product; 0 rows the K == 0 path; 10 outputs the in-place A^T path; tiny ones one thread.
SHAPES = [(1, 1, 1), (7, 33, 7), (33, 1000, 7), (65, 257, 130), (128, 1024, 1024), (128, 784, 1024),
          (1024, 300, 10), (0, 5, 7)]


def adam_kwargs(step=3, **options):
    kw = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    kw.update(options)
    return kw


def layer_arrays(rng, n, inn, out, dtype):
    return dict(x=rng.standard_normal((n, inn)).astype(dtype), w=rng.standard_normal((out, inn)).astype(dtype),
                dy=rng.standard_normal((n, out)).astype(dtype),
                y=np.maximum(rng.standard_normal((n, out)), 0).astype(dtype),
                dw=rng.standard_normal((out, inn)).astype(dtype),
                # state: positive where a rule takes square roots of it; the third (centered
                # RMSprop's grad_avg) small enough that square_avg - grad_avg^2 stays positive
                states=[rng.random((out, inn)).astype(dtype) + 0.5, rng.random((out, inn)).astype(dtype) + 0.5,
                        0.1 * rng.random((out, inn)).astype(dtype)])


def run_layer(a, fused, act, accumulate, need_dx, rule, names, options):
    w, dw = a["w"].copy(), a["dw"].copy()
    states = [None if name is None else s.copy() for name, s in zip(names, a["states"])]
    update = getattr(_C.ParamUpdate, rule)(w, *states, **options) if fused else None
    dx, _, db = _C.linear_backward(a["x"], w, a["dy"], a["y"], act, dweight=dw, accumulate=accumulate,
                                   need_dx=need_dx, update=update)
    if not fused:
        getattr(_C, rule + "_step")(w, dw, *states, **options)
    return [None if dx is None else np.asarray(dx), np.asarray(db), w, dw, *states]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_update_equals_backward_then_step_bitwise(shape, dtype, rng):
    a = layer_arrays(rng, *shape, dtype)
    for rule, names, options in RULE_CASES:
        for act, accumulate, need_dx in (("relu", False, True), ("none", True, False)):
            unfused = run_layer(a, False, act, accumulate, need_dx, rule, names, options)
            fused = run_layer(a, True, act, accumulate, need_dx, rule, names, options)
            for name, u, f in zip(["dx", "dbias", "weight", "dweight"] + names, unfused, fused):
                assert (u is None and f is None) or np.array_equal(u, f), (shape, rule, options, act, name)


def test_update_on_a_gpu_is_backward_then_adam_step(devices, rng):
    """On CUDA the update is a separate adam_step after the backward kernels (launch-bound there)."""
    if "cuda" not in devices:
        pytest.skip("no CUDA device in this build")
    a = layer_arrays(rng, 33, 70, 20, np.float32)
    out = []
    for fused in (False, True):
        t = {k: _C.from_dlpack(v.copy()).to("cuda") for k, v in a.items() if k != "states"}
        kw = adam_kwargs(weight_decay=0.1)
        m, v = (_C.from_dlpack(s.copy()).to("cuda") for s in a["states"][:2])
        update = _C.ParamUpdate.adam(t["w"], m, v, **kw) if fused else None
        dx, _, _ = _C.linear_backward(t["x"], t["w"], t["dy"], t["y"], "relu", dweight=t["dw"], update=update)
        if not fused:
            _C.adam_step(t["w"], t["dw"], m, v, **kw)
        out.append([np.asarray(u.to("cpu").numpy()) for u in (dx, t["w"], m, v, t["dw"])])
    for u, f in zip(*out):
        assert np.array_equal(u, f)


def test_fused_update_matches_torch(dtype, rng):
    """A Linear+ReLU layer's backward with the fused Adam step against torch autograd + torch.optim.Adam."""
    n, inn, out = 37, 300, 130
    tdt = getattr(torch, dtype)
    x = rng.standard_normal((n, inn)).astype(dtype)
    w0 = rng.standard_normal((out, inn)).astype(dtype) * 0.1
    dy = rng.standard_normal((n, out)).astype(dtype)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    tw = torch.tensor(w0, dtype=tdt, requires_grad=True)
    topt = torch.optim.Adam([tw], lr=1e-2, weight_decay=0.05, foreach=False)
    tx = torch.tensor(x, dtype=tdt, requires_grad=True)
    for step in range(1, 4):
        y = np.asarray(_C.linear_forward(x, w, None, "relu"))
        update = _C.ParamUpdate.adam(w, m, v, step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
        dx, dw, _ = _C.linear_backward(x, w, dy, y, "relu", need_dbias=False, update=update)
        topt.zero_grad()
        tx.grad = None
        torch.relu(tx @ tw.T).backward(torch.tensor(dy, dtype=tdt))
        rtol = 1e-5 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy(), rtol=rtol, atol=rtol * np.abs(tx.grad.numpy()).max())
        np.testing.assert_allclose(np.asarray(dw), tw.grad.numpy(), rtol=rtol, atol=rtol * np.abs(tw.grad.numpy()).max())
        topt.step()
        # float32: Adam divides by sqrt(v) + eps, so a weight whose gradient is tiny moves by a
        # ratio of two tiny numbers; compare to the size of the step taken (lr), as in test_optim
        expected = tw.detach().numpy()
        tol = 1e-5 * 1e-2 if dtype == "float32" else 1e-12
        assert np.abs(w - expected).max() <= tol + 1e-6 * np.abs(expected).max(), step


def test_every_isa_variant_gives_the_same_bits():
    """The AVX2 and scalar builds of the GEMM and the optimizer loops (FASTNN_ISA caps them in a child)."""
    script = textwrap.dedent("""
        import numpy as np
        from fastnn import _C
        rng = np.random.default_rng(5)
        for dt in (np.float32, np.float64):
            for n, inn, out in ((7, 33, 7), (65, 257, 130), (128, 520, 300), (0, 3, 5)):
                x, w, dy = (rng.standard_normal(s).astype(dt) for s in ((n, inn), (out, inn), (n, out)))
                states = [rng.random((out, inn)).astype(dt) + 0.5 for _ in range(2)] + [
                    0.1 * rng.random((out, inn)).astype(dt)]
                for rule, count, kw in (
                        ("adam", 2, dict(step=2, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)),
                        ("sgd", 1, dict(lr=0.1, momentum=0.9, nesterov=True)),
                        ("rmsprop", 3, dict(lr=1e-2, alpha=0.9, eps=1e-8, momentum=0.5, centered=True)),
                        ("adagrad", 1, dict(step=2, lr=1e-2, lr_decay=0.01))):
                    w1, s1 = w.copy(), [s.copy() for s in states[:count]]
                    update = getattr(_C.ParamUpdate, rule)(w1, *s1, **kw)
                    dx1, dw1, _ = _C.linear_backward(x, w1, dy, None, "none", update=update)
                    w2, s2 = w.copy(), [s.copy() for s in states[:count]]
                    dx2, dw2, _ = _C.linear_backward(x, w2, dy, None, "none")
                    getattr(_C, rule + "_step")(w2, dw2, *s2, **kw)
                    for a, b in zip([dx1, dw1, w1] + s1, [dx2, dw2, w2] + s2):
                        assert np.array_equal(np.asarray(a), np.asarray(b)), (rule, dt, n, inn, out)
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    for isa in ("scalar", "avx2"):
        if isa == "avx2" and fastnn.build_info()["cpu_isa"] == "scalar":
            continue
        env = dict(os.environ, FASTNN_ISA=isa, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (isa, out.stderr[-3000:])


# ---- Module.backward(dy, optimizer=) ---------------------------------------------------------------

def lecture_like(dtype="float32", width=512):
    """The lecture's layer pattern, with weights large enough (width^2 >= _FUSED_MIN_ELEMENTS) to be
    updated inside the backward pass, and a small output layer that is not."""
    assert width * width >= _FUSED_MIN_ELEMENTS
    return nn.Sequential(nn.Linear(300, width, dtype=dtype), nn.BatchNorm1d(width, dtype=dtype), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(width, width, dtype=dtype), nn.ReLU(),
                         nn.Linear(width, 10, dtype=dtype))


def train(model, opt, x, y, steps, in_backward, device="cpu"):
    crit = nn.CrossEntropyLoss()
    x, y = _C.from_dlpack(x).to(device), _C.from_dlpack(y).to(device)
    for _ in range(steps):
        crit(model(x), y)
        if in_backward:
            model.backward(crit.backward(), optimizer=opt)
        else:
            model.backward(crit.backward())
            opt.step()
        opt.zero_grad()


def snapshot(model, opt):
    params = [np.array(p.data.to("cpu").numpy(), copy=True) for p in model.parameters()]
    sd = opt.state_dict()
    return params, sd


def assert_same_training(a, b):
    (pa, sa), (pb, sb) = a, b
    for i, (u, v) in enumerate(zip(pa, pb)):
        assert np.array_equal(u, v), f"parameter {i}"
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, value in sa["state"][k].items():
            other = sb["state"][k][name]
            assert np.array_equal(np.asarray(value), np.asarray(other)), (k, name)


@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-3)), ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=1e-3)),
                                     ("AdamW", dict(lr=1e-2)), ("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("SGD", dict(lr=0.1)), ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5)),
                                     ("Adagrad", dict(lr=1e-2, lr_decay=0.01))])
def test_sequential_backward_with_optimizer_equals_backward_then_step(name, kw, dtype, device, rng):
    x = rng.standard_normal((48, 300)).astype(dtype)
    y = rng.integers(0, 10, 48)
    results = []
    for in_backward in (False, True):
        fastnn.manual_seed(11)
        model = lecture_like(dtype).to(device)
        opt = getattr(optim, name)(model.parameters(), **kw)
        train(model, opt, x, y, 3, in_backward, device)
        results.append(snapshot(model, opt))
    assert_same_training(*results)
    if name != "SGD":
        assert results[1][1]["state"][0]["step"] == 3


def test_only_large_cpu_weights_are_updated_in_the_backward_pass(monkeypatch, rng):
    model = lecture_like()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x, y = rng.standard_normal((16, 300)).astype(np.float32), rng.integers(0, 10, 16)
    seen = []
    real = _C.linear_backward

    def spy(*args, **kwargs):
        seen.append((tuple(args[1].shape), kwargs.get("update") is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(_C, "linear_backward", spy)
    train(model, opt, x, y, 1, True)
    assert seen == [((10, 512), False), ((512, 512), True), ((512, 300), False)]


def test_parameter_groups_fall_back_to_step(rng):
    """Two parameter groups (not one flat buffer) take backward then step() whole, with the same results."""
    x, y = rng.standard_normal((16, 300)).astype(np.float32), rng.integers(0, 10, 16)
    results = []
    for in_backward in (False, True):
        fastnn.manual_seed(3)
        model = lecture_like()
        params = list(model.parameters())
        opt = optim.Adam([{"params": params[:4]}, {"params": params[4:], "lr": 1e-2}], lr=1e-3)
        assert opt._begin_step_in_backward(model) is None
        train(model, opt, x, y, 2, in_backward)
        results.append(snapshot(model, opt))
    assert_same_training(*results)


def test_linear_backward_with_optimizer(rng):
    x = rng.standard_normal((20, 600)).astype(np.float32)
    dy = rng.standard_normal((20, 512)).astype(np.float32)
    results = []
    for in_backward in (False, True):
        fastnn.manual_seed(5)
        lin = nn.Linear(600, 512)
        opt = optim.Adam(lin.parameters(), lr=1e-2)
        for _ in range(2):
            lin(x)
            dx = lin.backward(dy, optimizer=opt) if in_backward else lin.backward(dy)
            if not in_backward:
                opt.step()
            opt.zero_grad()
        results.append((np.asarray(dx), snapshot(lin, opt)))
    assert np.array_equal(results[0][0], results[1][0])
    assert_same_training(results[0][1], results[1][1])


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
def test_a_weight_two_layers_share_is_stepped_after_both(rng):
    """Tied weights: the second layer's gradient adds to the first's, so the shared weight is not
    updated inside the backward pass; the rest is, and the result is backward then step()'s."""
    x = rng.standard_normal((8, 512)).astype(np.float32)
    dy = rng.standard_normal((8, 512)).astype(np.float32)
    results = []
    for in_backward in (False, True):
        fastnn.manual_seed(2)
        first, second, own = nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, 512)
        second.register_parameter("weight", first.weight)
        model = nn.Sequential(own, nn.ReLU(), first, nn.ReLU(), second)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        if in_backward:
            step = opt._begin_step_in_backward(model)
            assert list(step.updates) == [id(own.weight)]
            step.abort()
        for _ in range(2):
            model(x)
            model.backward(dy, optimizer=opt) if in_backward else (model.backward(dy), opt.step())
            opt.zero_grad()
        results.append(snapshot(model, opt))
    assert_same_training(*results)


class Boom(nn.Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        raise RuntimeError("boom")


def test_interrupted_backward_keeps_the_updates_taken(rng):
    """An exception after the last layer updated its weight: that weight keeps its step (and the step
    count says so), the layers before it keep their values."""
    model = nn.Sequential(nn.Linear(300, 512), nn.ReLU(), Boom(), nn.Linear(512, 512))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    first, last = model[0].weight, model[3].weight
    before_first, before_last = first.numpy().copy(), last.numpy().copy()
    x = rng.standard_normal((8, 300)).astype(np.float32)
    model(x)
    with pytest.raises(RuntimeError, match="boom"):
        model.backward(rng.standard_normal((8, 512)).astype(np.float32), optimizer=opt)
    assert np.array_equal(first.numpy(), before_first)
    assert not np.array_equal(last.numpy(), before_last)
    assert opt.state[last]["step"] == 1
    # the next step runs normally
    opt.zero_grad()
    model[2].backward = lambda dy: dy
    model(x)
    model.backward(rng.standard_normal((8, 512)).astype(np.float32), optimizer=opt)
    assert opt.state[first]["step"] == 2


def test_backward_rejected_before_any_update_leaves_the_optimizer_as_it_was(rng):
    """A wrong dy fails in the last layer's argument checks, before any update: the state the step
    had created is dropped, and the next step is the first, as with backward then step()."""
    model = nn.Sequential(nn.Linear(300, 512), nn.ReLU(), nn.Linear(512, 512))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    weights = [p.numpy().copy() for p in model.parameters()]
    x = rng.standard_normal((8, 300)).astype(np.float32)
    model(x)
    with pytest.raises(ValueError, match="dy"):
        model.backward(np.zeros((8, 7), np.float32), optimizer=opt)
    assert all(np.array_equal(p.numpy(), w) for p, w in zip(model.parameters(), weights))
    assert not any(opt.state.values())
    assert not any(fs.state for fs in opt._flat_states.values())


def test_steady_state_step_in_backward_allocates_nothing(rng):
    model = lecture_like()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x, y = rng.standard_normal((16, 300)).astype(np.float32), rng.integers(0, 10, 16)
    train(model, opt, x, y, 2, True)
    before = _C._debug_stats()
    train(model, opt, x, y, 3, True)
    after = _C._debug_stats()
    assert after["live_storages"] == before["live_storages"]
    assert after["owned_bytes"] == before["owned_bytes"]


# ---- argument errors -------------------------------------------------------------------------------

def test_update_argument_errors(rng):
    a = layer_arrays(rng, 5, 8, 6, np.float32)
    x, w, dy = a["x"], a["w"], a["dy"]
    m, v = np.zeros_like(w), np.zeros_like(w)
    kw = adam_kwargs()
    with pytest.raises(TypeError, match="^update: expected a ParamUpdate or None"):
        _C.linear_backward(x, w, dy, update="adam")
    other = np.zeros_like(w)
    with pytest.raises(ValueError, match="^update: its param must be `weight` itself"):
        _C.linear_backward(x, w, dy, update=_C.ParamUpdate.adam(other, m, v, **kw))
    with pytest.raises(ValueError, match="^step: expected the step number counting from 1"):
        _C.ParamUpdate.adam(w, m, v, **adam_kwargs(step=0))
    with pytest.raises(TypeError, match="exp_avg"):
        _C.ParamUpdate.adam(w, m.astype(np.float64), v, **kw)
    with pytest.raises(ValueError, match="^exp_avg_sq: expected shape"):
        _C.ParamUpdate.adam(w, m, v[:, :3].copy(), **kw)
    with pytest.raises(ValueError, match="^max_exp_avg_sq: required when amsgrad=True"):
        _C.ParamUpdate.adam(w, m, v, **adam_kwargs(amsgrad=True))
    with pytest.raises(ValueError, match="^exp_avg_sq: shares memory with exp_avg"):
        _C.ParamUpdate.adam(w, m, m, **kw)
    # the GEMM reads x while the update writes the state: disjoint
    big = np.zeros((2 * w.shape[0], w.shape[1]), np.float32)
    with pytest.raises(ValueError, match="^x: must not share memory with update's optimizer state"):
        _C.linear_backward(big[:5], w, dy, update=_C.ParamUpdate.adam(w, big[:6], v, **kw))
    with pytest.raises(ValueError, match="^dweight: must not share memory with update's optimizer state"):
        _C.linear_backward(x, w, dy, dweight=v, update=_C.ParamUpdate.adam(w, m, v, **kw))
    # nothing was written by the failed calls
    assert not m.any()
