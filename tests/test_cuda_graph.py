"""CUDA graphs of whole training steps (fastnn.cuda): a replayed step must be the very step an eager
call makes (same dropout masks, optimizer step counts, BatchNorm counts: bit for bit), capture must
refuse what it cannot record, and the graph's memory must stay reserved for it. Runs on a real GPU or
the CPU emulation of CUDA (where a host-synchronous call during capture fails the capture too)."""
import numpy as np
import pytest

import fastnn
from fastnn import nn, optim

INFO = fastnn.build_info()
pytestmark = pytest.mark.skipif(not INFO["cuda_available"], reason="no CUDA device (real or emulated)")
C = fastnn._C


def cuda(a):
    return fastnn.as_tensor(np.ascontiguousarray(a)).to("cuda")


def host(t):
    return np.array(t.to("cpu").numpy(), copy=True)


# Small enough for the emulator; every per-step scalar is there: two dropout layers (global seed
# and a layer seed), BatchNorm running statistics, the optimizer's step count and learning rate.
def lecture_model(dtype, seed=0):
    fastnn.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 16, dtype=dtype), nn.BatchNorm1d(16, dtype=dtype), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16, 16, dtype=dtype), nn.BatchNorm1d(16, dtype=dtype), nn.ReLU(), nn.Dropout(0.3, seed=99),
        nn.Linear(16, 5, dtype=dtype)).to("cuda")


OPTIMIZERS = {
    "adam": lambda p: optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: optim.AdamW(p, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
    "adagrad": lambda p: optim.Adagrad(p, lr=0.05, lr_decay=0.01),
}


def batches(dtype, n_steps, batch=8, seed=1):
    g = np.random.default_rng(seed)
    return [(g.standard_normal((batch, 20)).astype(dtype), g.integers(0, 5, batch).astype(np.int64))
            for _ in range(n_steps)]


def train_step(model, crit, opt, x, y):
    loss = crit(model(x), y)
    model.backward(crit.backward())
    opt.step()
    opt.zero_grad()
    return loss


def state_of(model, opt):
    params = [host(p.data) for p in model.parameters()]
    buffers = [host(b) for _, b in model.named_buffers()]
    return params, buffers


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_replayed_training_matches_eager_bit_for_bit(dtype, opt_name):
    data = batches(dtype, 6)
    lr_changes = {4: 0.5}  # a scheduler halving the learning rate: a replay must see it

    # eager
    model = lecture_model(dtype)
    opt = OPTIMIZERS[opt_name](model.parameters())
    crit = nn.CrossEntropyLoss()
    eager_losses = []
    for i, (x, y) in enumerate(data):
        if i in lr_changes:
            for g in opt.param_groups:
                g["lr"] *= lr_changes[i]
        eager_losses.append(host(train_step(model, crit, opt, cuda(x), cuda(y))))
    eager_state = state_of(model, opt)
    eager_next_key = fastnn._random.next_dropout_key()

    # the same run, steps 1.. replayed from a graph captured after one eager warm-up step
    model = lecture_model(dtype)
    opt = OPTIMIZERS[opt_name](model.parameters())
    crit = nn.CrossEntropyLoss()
    static_x, static_y = cuda(data[0][0]), cuda(data[0][1])
    losses = [host(train_step(model, crit, opt, static_x, static_y))]
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        static_loss = train_step(model, crit, opt, static_x, static_y)
    assert graph.num_nodes > 10
    for i, (x, y) in enumerate(data[1:], start=1):
        if i in lr_changes:
            for g in opt.param_groups:
                g["lr"] *= lr_changes[i]
        static_x.copy_(cuda(x))
        static_y.copy_(cuda(y))
        graph.replay()
        losses.append(host(static_loss))

    for a, b in zip(eager_losses, losses):
        assert a.tobytes() == b.tobytes()
    assert_same_bits(eager_state[0], state_of(model, opt)[0])
    assert_same_bits(eager_state[1], state_of(model, opt)[1])
    assert fastnn._random.next_dropout_key() == eager_next_key
    assert int(host(model[1].num_batches_tracked)) == len(data)
    steps = {s["step"] for s in opt.state.values() if "step" in s}
    assert steps in (set(), {float(len(data))})


def test_capture_runs_nothing_and_first_replay_runs_the_captured_step():
    x = cuda(np.arange(6, dtype=np.float32))
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        y = C.activation_forward(x, "relu")
        x.fill_(-1.0)
    assert graph.num_nodes == 2
    assert graph._graph.captured
    np.testing.assert_array_equal(host(x), np.arange(6, dtype=np.float32))  # nothing ran
    graph.replay()
    np.testing.assert_array_equal(host(y), np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(host(x), -np.ones(6, np.float32))
    graph.replay()  # now reads the -1s
    np.testing.assert_array_equal(host(y), np.zeros(6, np.float32))


def test_host_copies_and_syncs_inside_a_capture_raise_and_leave_no_graph():
    x = cuda(np.ones(4, np.float32))
    for action, message in [(lambda: x.to("cpu"), "cannot be captured"),
                            (lambda: cuda(np.ones(3, np.float32)), "cannot be captured"),
                            (lambda: fastnn.cuda.synchronize(), "capture")]:
        graph = fastnn.cuda.CUDAGraph()
        with pytest.raises(ValueError, match=message):
            with fastnn.cuda.graph(graph):
                C.activation_forward(x, "relu")
                action()
        assert not fastnn.cuda.is_current_stream_capturing()
        assert graph.num_nodes == 0
        with pytest.raises(ValueError, match="nothing captured"):
            graph.replay()
    # eager work still runs afterwards
    np.testing.assert_array_equal(host(C.activation_forward(x, "relu")), np.ones(4, np.float32))


def test_capture_refuses_to_create_optimizer_state():
    model = lecture_model("float32")
    opt = optim.Adam(model.parameters())
    crit = nn.CrossEntropyLoss()
    x, y = (cuda(a) for a in batches("float32", 1)[0])
    graph = fastnn.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="run at least one step eagerly"):
        with fastnn.cuda.graph(graph):
            train_step(model, crit, opt, x, y)


def test_batchnorm_cumulative_average_is_refused():
    bn = nn.BatchNorm1d(4, momentum=None).to("cuda")
    x = cuda(np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="momentum=None"):
        with fastnn.cuda.graph(fastnn.cuda.CUDAGraph()):
            bn(x)


def test_bad_label_in_a_captured_step_gives_nan_not_a_crash():
    logits = cuda(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    labels = cuda(np.array([0, 1, 2, 1], np.int64))
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        loss, grad = C.cross_entropy(logits, labels, None, "mean", -100)
    graph.replay()
    assert np.isfinite(host(loss))
    labels.copy_(cuda(np.array([0, 7, 2, 1], np.int64)))
    graph.replay()
    assert np.isnan(host(loss))
    assert np.isnan(host(grad)[1]).all()
    with pytest.raises(ValueError, match="label 7 at index 1"):  # eager calls still check
        C.cross_entropy(logits, labels, None, "mean", -100)


def test_graph_memory_stays_reserved_until_reset():
    x = cuda(np.ones(1000, np.float32))
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        y = C.activation_forward(x, "relu")
    y_block = y.data_ptr()
    del y  # the graph still writes this block at every replay: nobody else may get it
    others = [C.zeros([1000], "float32", "cuda") for _ in range(4)]
    assert y_block not in {t.data_ptr() for t in others}
    graph.replay()
    for t in others:
        np.testing.assert_array_equal(host(t), np.zeros(1000, np.float32))
    graph.reset()  # now the block is the allocator's again, first in line
    assert C.zeros([1000], "float32", "cuda").data_ptr() == y_block


def test_slot_arguments_are_checked():
    p = cuda(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="slot"):
        C.sgd_step(p, cuda(np.ones(3, np.float32)), lr=0.1, slot=3)
    with pytest.raises(TypeError, match="cuda_graph"):
        fastnn.cuda.graph(object())
    graph = fastnn.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="during capture"):
        graph._graph.new_slot()


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "mse"])
def test_keras_fit_replays_a_graph_and_matches_eager_fit(loss):
    from fastnn.keras import Sequential
    from fastnn.keras.layers import Activation, BatchNormalization, Dense, Dropout

    g = np.random.default_rng(0)
    x = g.standard_normal((70, 6)).astype(np.float32)  # 70 = 4 batches of 16 and one of 6
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    if loss == "mse":
        y = np.stack([x[:, 0] - x[:, 2], x[:, 1]], axis=1).astype(np.float32)

    def fit(jit):
        fastnn.manual_seed(0)
        head = "softmax" if loss != "mse" else None
        model = Sequential([Dense(8, input_shape=(6,)), BatchNormalization(), Activation("relu"), Dropout(0.2),
                            Dense(2, activation=head)], device="cuda")
        model.compile("adam", loss, metrics=["accuracy"] if loss != "mse" else None, jit_compile=jit)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=True)
        return model, history.history

    graphed, h_graphed = fit("auto")
    eager, h_eager = fit(False)
    assert graphed._graphed_step is not None and graphed._graphed_step.uses == 3 * 4 - 1
    assert getattr(eager, "_graphed_step", None) is None
    assert h_graphed == h_eager  # losses and accuracies, exactly
    for a, b in zip(graphed.get_weights(), eager.get_weights()):
        assert a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(graphed.predict(x), eager.predict(x))


@pytest.mark.parametrize("solver,alpha", [("adam", 1e-3), ("sgd", 0.0)])
def test_sklearn_replays_a_graph_and_matches_the_cpu(solver, alpha, monkeypatch):
    from fastnn.sklearn import MLPClassifier

    replays = []
    real_call = fastnn.cuda._GraphedStep.__call__
    monkeypatch.setattr(fastnn.cuda._GraphedStep, "__call__", lambda self, *a: replays.append(1) or real_call(self, *a))

    g = np.random.default_rng(0)
    x = g.standard_normal((90, 6)).astype(np.float32)  # 90 = 4 batches of 20 and one of 10
    y = (x[:, 0] - x[:, 3] > 0).astype(int)
    kw = dict(hidden_layer_sizes=(8,), max_iter=4, batch_size=20, random_state=0, solver=solver, alpha=alpha,
              dropout=0.1, batch_norm=True, momentum=0.9)
    cuda_clf = MLPClassifier(device="cuda", **kw).fit(x, y)
    cpu_clf = MLPClassifier(**kw).fit(x, y)
    assert len(replays) == 4 * 4 - 1  # every full batch but the first
    # the same steps (dropout masks included) on both devices: losses agree to float32 rounding
    np.testing.assert_allclose(cuda_clf.loss_curve_, cpu_clf.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(cuda_clf.predict_proba(x), cpu_clf.predict_proba(x), rtol=1e-3, atol=1e-5)
