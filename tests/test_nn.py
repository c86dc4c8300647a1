"""fastnn.nn against torch.nn: single layers, state dicts both ways, and whole training runs in lock-step."""
import numpy as np
import pytest
import torch

import fastnn
from fastnn import functional as F
from fastnn import nn, optim
from utils import assert_close, randn, torch_of


def host(t):
    return t.to("cpu").numpy() if hasattr(t, "to") else np.asarray(t)


def lecture_models(dtype, in_f=20, hidden=33, classes=7, p=0.5):
    """The lecture's architecture (Linear+BatchNorm+ReLU+Dropout twice, then Linear), small."""
    fm = nn.Sequential(
        nn.Linear(in_f, hidden, dtype=dtype), nn.BatchNorm1d(hidden, dtype=dtype), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, hidden, dtype=dtype), nn.BatchNorm1d(hidden, dtype=dtype), nn.ReLU(), nn.Dropout(p),
        nn.Linear(hidden, classes, dtype=dtype),
    )
    tdt = getattr(torch, dtype)
    tm = torch.nn.Sequential(
        torch.nn.Linear(in_f, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(), torch.nn.Dropout(p),
        torch.nn.Linear(hidden, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(), torch.nn.Dropout(p),
        torch.nn.Linear(hidden, classes),
    ).to(tdt)
    return fm, tm


def torch_forward_with_fastnn_masks(tm, fm, x):
    """Runs torch's layers one by one, applying the dropout masks fastnn's forward just used."""
    for i, layer in enumerate(tm):
        if isinstance(layer, torch.nn.Dropout) and layer.training:
            drop = fm[i]
            mask = torch.from_numpy(F.dropout_mask(x.shape, drop.p, drop._key).numpy().copy())
            x = x * mask / (1 - drop.p)
        else:
            x = layer(x)
    return x


def test_state_dict_keys_shapes_and_round_trip(dtype):
    fm, tm = lecture_models(dtype)
    fsd, tsd = fm.state_dict(), tm.state_dict()
    assert list(fsd) == list(tsd)
    for k in tsd:
        assert fsd[k].shape == tuple(tsd[k].shape), k
    fm.load_state_dict({k: v.numpy() for k, v in tsd.items()})
    for k, v in fm.state_dict().items():
        np.testing.assert_array_equal(v, tsd[k].numpy())
    # and the reverse: torch loads what fastnn saved
    fm2, _ = lecture_models(dtype)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in fm2.state_dict().items()})
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), fm2.state_dict()[k])


def test_load_state_dict_errors_leave_model_untouched():
    fm, tm = lecture_models("float32")
    before = fm.state_dict()
    bad = {k: v.numpy() for k, v in tm.state_dict().items()}
    bad["4.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="4.weight: expected shape"):
        fm.load_state_dict(bad)
    missing = {k: v.numpy() for k, v in tm.state_dict().items() if k != "0.bias"}
    with pytest.raises(KeyError, match="0.bias"):
        fm.load_state_dict(missing)
    for k, v in fm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_linear_layer_matches_torch(activation, dtype, rng):
    lin = nn.Linear(33, 7, activation=activation, dtype=dtype)
    tl = torch.nn.Linear(33, 7).to(getattr(torch, dtype))
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    x = randn(rng, (13, 33), dtype)
    dy = randn(rng, (13, 7), dtype)
    xt = torch_of(x, requires_grad=True)
    act = {None: lambda v: v, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]
    yt = act(tl(xt))
    yt.backward(torch_of(dy))
    y = lin(x)
    dx = lin.backward(dy)
    assert_close(y, yt, dtype, what="y")
    assert_close(dx, xt.grad, dtype, rtol=3e-5 if dtype == "float32" else None, what="dx")
    assert_close(lin.weight.grad, tl.weight.grad, dtype, rtol=3e-5 if dtype == "float32" else None, what="dW")
    assert_close(lin.bias.grad, tl.bias.grad, dtype, rtol=3e-5 if dtype == "float32" else None, what="db")


def test_gradients_accumulate_until_zero_grad(rng):
    lin = nn.Linear(5, 3, dtype="float64")
    x, dy = randn(rng, (4, 5), "float64"), randn(rng, (4, 3), "float64")
    lin(x)
    lin.backward(dy)
    once = lin.weight.grad.numpy().copy()
    lin(x)
    lin.backward(dy)
    np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * once, rtol=1e-12)
    lin.zero_grad()
    assert not lin.weight.grad.numpy().any()


def test_batchnorm_counts_batches_through_load_copy_and_pickle(rng):
    # the module keeps a numpy view of num_batches_tracked between steps: it must follow the
    # buffer through load_state_dict (in place), and never be shared by a deep copy or an unpickled one
    import copy
    import pickle

    bn = nn.BatchNorm1d(3, momentum=None)  # momentum None: the count sets the averaging factor
    x = randn(rng, (4, 3), "float32")
    bn(x)
    bn(x)
    assert bn.num_batches_tracked.item() == 2
    state = bn.state_dict()
    state["num_batches_tracked"] = np.array(10)
    bn.load_state_dict(state)
    bn(x)
    assert bn.num_batches_tracked.item() == 11
    twin, thawed = copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))
    twin(x)
    twin(x)
    thawed(x)
    assert (bn.num_batches_tracked.item(), twin.num_batches_tracked.item(), thawed.num_batches_tracked.item()) \
        == (11, 13, 12)
    bn(x)
    assert bn.num_batches_tracked.item() == 12 and twin.state_dict()["num_batches_tracked"] == 13


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_module_train_and_eval(affine, dtype, rng):
    bn = nn.BatchNorm1d(7, affine=affine, dtype=dtype)
    tb = torch.nn.BatchNorm1d(7, affine=affine).to(getattr(torch, dtype))
    for step in range(3):
        x = randn(rng, (9, 7), dtype, scale=2.0) + 3
        assert_close(bn(x), tb(torch_of(x)).detach(), dtype, what=f"train y step {step}")
    assert_close(bn.running_mean, tb.running_mean, dtype, what="running_mean")
    assert_close(bn.running_var, tb.running_var, dtype, what="running_var")
    assert bn.num_batches_tracked.item() == tb.num_batches_tracked.item() == 3
    bn.eval()
    tb.eval()
    x = randn(rng, (5, 7), dtype)
    xt = torch_of(x, requires_grad=True)
    yt = tb(xt)
    dy = randn(rng, (5, 7), dtype)
    yt.backward(torch_of(dy))
    assert_close(bn(x), yt, dtype, what="eval y")
    assert_close(bn.backward(dy), xt.grad, dtype, what="eval dx")


def test_dropout_module_modes():
    fastnn.manual_seed(3)
    d = nn.Dropout(0.25)
    x = np.ones((50, 40))
    y = d(x).numpy()
    kept = y != 0
    np.testing.assert_array_equal(kept, F.dropout_mask(x.shape, 0.25, d._key).numpy())
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    dx = d.backward(np.ones_like(x)).numpy()
    np.testing.assert_array_equal(dx, y)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError, match="p: dropout probability"):
        nn.Dropout(1.5)


def test_manual_seed_reproduces_weights_and_masks():
    def run():
        fastnn.manual_seed(42)
        m, _ = lecture_models("float32")
        return m.state_dict(), m(np.ones((4, 20), np.float32)).numpy()

    (sd1, y1), (sd2, y2) = run(), run()
    for k in sd1:
        np.testing.assert_array_equal(sd1[k], sd2[k])
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 2e-4)])
def test_lecture_model_trains_in_lock_step_with_torch(dtype, rtol, rng):
    # 20 Adam steps compound rounding (float32: Adam's m / sqrt(v) amplifies last-bit differences in
    # gradients of near-zero entries), hence 2e-4 for float32 after 20 steps and 1e-9 for float64.
    fastnn.manual_seed(0)
    fm, tm = lecture_models(dtype)
    fm.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    fopt = optim.Adam(fm.parameters(), lr=1e-2)
    topt = torch.optim.Adam(tm.parameters(), lr=1e-2)
    fcrit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(20):
        x = randn(rng, (32, 20), dtype)
        y = rng.integers(0, 7, 32)
        floss = fcrit(fm(x), y)
        fm.backward(fcrit.backward())
        fopt.step()
        fopt.zero_grad()
        tloss = tcrit(torch_forward_with_fastnn_masks(tm, fm, torch_of(x)), torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert_close(np.array(floss.item()), tloss.detach(), dtype, rtol=rtol, what=f"loss at step {step}")
    tsd = tm.state_dict()
    for k, v in fm.state_dict().items():
        if dtype == "float32" and k in ("0.bias", "1.running_mean", "4.bias", "5.running_mean"):
            # A bias feeding BatchNorm has an exactly zero gradient (BN subtracts the batch mean);
            # what remains is float32 rounding noise, which Adam's m / sqrt(v) scales up to full
            # +-lr steps, differently in any two float32 implementations; the running mean of the
            # BatchNorm after it inherits that drift. Nothing downstream depends on either (the
            # losses and every other tensor match); the float64 run checks these too.
            continue
        assert_close(v, tsd[k], dtype, rtol=rtol, what=k)


def test_sequential_input_grad_and_plan(rng):
    m = nn.Sequential(nn.Linear(6, 5, dtype="float64"), nn.Tanh(), nn.Linear(5, 2, dtype="float64"))
    tm = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = randn(rng, (3, 6), "float64")
    xt = torch_of(x, requires_grad=True)
    tm(xt).sum().backward()
    m(x)
    dx = m.backward(np.ones((3, 2)))
    assert_close(dx, xt.grad, "float64", what="dx")
    assert [kind for kind, _ in m._plan] == ["linear_act", "single"]
    m.needs_input_grad = False
    m(x)
    assert m.backward(np.ones((3, 2))) is None


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_relu_dropout_fused_equals_the_layers_one_by_one(device, dtype, rng, training):
    # Sequential runs BatchNorm -> ReLU (-> Dropout) as one op each way; called layer by layer the
    # same modules give the same bits (the same dropout keys: a seeded layer draws the same stream)
    def build():
        return nn.Sequential(nn.Linear(9, 33, dtype=dtype), nn.BatchNorm1d(33, dtype=dtype), nn.ReLU(),
                             nn.Dropout(0.4, seed=7), nn.Linear(33, 7, dtype=dtype), nn.BatchNorm1d(7, dtype=dtype),
                             nn.ReLU(), nn.Linear(7, 3, dtype=dtype)).to(device)

    fused, layers = build(), build()
    layers.load_state_dict(fused.state_dict())
    fused.train(training)
    layers.train(training)
    x = fastnn.tensor(randn(rng, (12, 9), dtype)).to(device)
    dy = fastnn.tensor(randn(rng, (12, 3), dtype)).to(device)
    for _ in range(2):  # the second step: new masks, running statistics moved
        out = fused(x)
        dx = fused.backward(dy)
        h = x
        for m in layers:
            h = m.forward(h)
        g = dy
        for m in reversed(list(layers)):
            g = m.backward(g)
        np.testing.assert_array_equal(host(out), host(h))
        np.testing.assert_array_equal(host(dx), host(g))
        for (name, p), q in zip(fused.named_parameters(), layers.parameters()):
            np.testing.assert_array_equal(host(p.grad), host(q.grad), err_msg=name)
        for (name, b), c in zip(fused.named_buffers(), [c for _, c in layers.named_buffers()]):
            np.testing.assert_array_equal(host(b), host(c), err_msg=name)
        fused.zero_grad()
        layers.zero_grad()
    assert [kind for kind, _ in fused._plan] == ["single", "batchnorm_relu_dropout", "single", "batchnorm_relu", "single"]


def test_to_device_keeps_one_flat_buffer_and_fails_cleanly():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    before = m.state_dict()
    m.to("cpu")
    assert m.device == "cpu" and m._flat.covers(m.parameters())
    assert m.parameters()[0].data.data_ptr() == m._flat.data.data_ptr()
    if not fastnn.build_info()["cuda_available"]:
        with pytest.raises(ValueError):
            m.to("cuda")
        for k, v in m.state_dict().items():  # a failed move changes nothing
            np.testing.assert_array_equal(v, before[k])
        assert m(np.ones((2, 4), np.float32)).shape == (2, 2)


def test_backward_before_forward_names_the_module():
    # explicit backward needs what forward saved: without a forward, a RuntimeError naming the module
    dy = np.ones((4, 3), np.float32)
    for module in (nn.Sequential(nn.Linear(3, 3), nn.ReLU()), nn.Linear(3, 3), nn.ReLU(), nn.Tanh(),
                   nn.Softmax(), nn.LogSoftmax(), nn.BatchNorm1d(3)):
        with pytest.raises(RuntimeError, match=rf"^{type(module).__name__}\.backward called before forward"):
            module.backward(dy)
    for criterion in (nn.CrossEntropyLoss(), nn.MSELoss(), nn.BCEWithLogitsLoss()):
        with pytest.raises(RuntimeError, match=rf"^{type(criterion).__name__}\.backward called before forward"):
            criterion.backward()
    assert np.asarray(nn.Dropout(0.5).backward(dy)).sum() == 12  # nothing drawn yet: identity


def test_double_float_and_to_dtype_convert_the_whole_model(device, rng):
    # model.double() for a float64 check of a float32 model, as with torch: parameters, gradients
    # and running statistics convert; num_batches_tracked stays int64; the flat buffer is rebuilt
    # (BatchNorm after the activation: a bias right before BatchNorm has a zero gradient, all rounding)
    fm = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.BatchNorm1d(7), nn.Linear(7, 3)).to(device)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in fm.state_dict().items()})
    assert fm.double() is fm and fm.device.startswith(device)
    tm.double()
    assert {str(v.dtype) for k, v in fm.state_dict().items() if "num_batches" not in k} == {"float64"}
    assert fm.state_dict()["2.num_batches_tracked"].dtype == np.int64
    assert fm._flat.covers(fm.parameters()) and str(fm._flat.data.dtype) == "float64"
    x, y = randn(rng, (9, 5), "float64"), rng.integers(0, 3, 9)
    xd, yd = fastnn.tensor(x).to(device), fastnn.tensor(y).to(device)
    crit = nn.CrossEntropyLoss()
    loss = crit(fm(xd), yd)
    fm.backward(crit.backward())
    tloss = torch.nn.functional.cross_entropy(tm(torch_of(x)), torch.from_numpy(y))
    tloss.backward()
    assert_close(loss.to("cpu"), tloss.detach(), "float64", what="loss after double()")
    for (name, p), tp in zip(fm.named_parameters(), tm.parameters()):
        assert_close(p.grad.to("cpu"), tp.grad, "float64", what=f"{name}.grad after double()")
    # back to float32 by name, numpy or torch dtype; positional device and dtype together
    for dt in ("float32", np.float32, torch.float32):
        fm.double()
        fm.to(dt)
        assert str(fm.parameters()[0].data.dtype) == "float32"
    fm.to(device, torch.float64)
    assert str(fm.parameters()[0].data.dtype) == "float64"
    before = fm.state_dict()
    for bad in ("int32", torch.int64, np.float16):
        with pytest.raises(TypeError, match="^dtype: expected float32 or float64"):
            fm.to(bad)
    with pytest.raises(ValueError, match="device"):  # a string that is no dtype is a device
        fm.to("tpu", "float32")
    for k, v in fm.state_dict().items():  # a refused conversion changes nothing
        np.testing.assert_array_equal(v, before[k])


def test_zero_grad_is_lazy_but_always_reads_as_zero(rng):
    # On the CPU zero_grad only marks gradients as zero; the next backward overwrites them. Every way
    # of looking at a gradient must still see exactly what an eager memset would have left.
    def model():
        fastnn.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))

    x, y = randn(rng, (8, 6), "float32"), rng.integers(0, 3, 8)
    crit = nn.CrossEntropyLoss()

    def backward(m):
        crit(m(x), y)
        m.backward(crit.backward())

    ref = model()
    backward(ref)
    one = [np.array(p.grad.numpy()) for p in ref.parameters()]

    m = model()
    opt = optim.SGD(m.parameters(), lr=0.1)
    backward(m)
    backward(m)  # stale, nonzero gradients
    opt.zero_grad()
    assert all((p.grad.numpy() == 0).all() for p in m.parameters())  # read before any backward: zeros
    opt.zero_grad()
    backward(m)  # overwrites: the same bits as one backward from fresh zeros
    for a, b in zip((p.grad.numpy() for p in m.parameters()), one):
        np.testing.assert_array_equal(a, b)
    backward(m)  # accumulates again
    for a, b in zip((p.grad.numpy() for p in m.parameters()), one):
        np.testing.assert_allclose(a, 2 * b, rtol=1e-6, atol=1e-7)
    # a zero made real for one parameter of a layer (the bias read) and still pending for the other
    m.zero_grad()
    assert (m[0].bias.grad.numpy() == 0).all()
    backward(m)
    for a, b in zip((p.grad.numpy() for p in m.parameters()), one):
        np.testing.assert_array_equal(a, b)
    # a parameter no backward reached since zero_grad: the optimizer reads its zero, not old values
    free = nn.Linear(6, 2)
    free_opt = optim.SGD(list(m.parameters()) + list(free.parameters()), lr=0.1)
    free(x)
    free.backward(np.ones((8, 2), np.float32))
    before = free.weight.data.numpy().copy()
    free_opt.zero_grad()
    backward(m)
    free_opt.step()
    np.testing.assert_array_equal(free.weight.data.numpy(), before)
    # the flat buffer's optimizer path as well
    m2 = model()
    opt2 = optim.Adam(m2.parameters(), lr=0.1)
    backward(m2)
    opt2.zero_grad()
    w0 = [p.data.numpy().copy() for p in m2.parameters()]
    opt2.step()  # zero gradients: Adam moves nothing
    for p, w in zip(m2.parameters(), w0):
        np.testing.assert_array_equal(p.data.numpy(), w)
