"""The Keras-style API: the lecture's code with only its imports changed."""
import io
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import checkpoint
from fastnn.keras import (Activation, BatchNormalization, Dense, Dropout, EarlyStopping, Flatten,
                          ModelCheckpoint, Sequential, load_model)
from fastnn.keras.utils import to_categorical


def blobs(n=600, features=20, classes=3, seed=0):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((classes, features)) * 3
    y = g.integers(0, classes, n)
    x = centers[y] + g.standard_normal((n, features))
    return x.astype(np.float32), y


def lecture_model(input_dim=784, hidden=1024, classes=10):
    return Sequential([
        Dense(hidden, input_shape=(input_dim,)), BatchNormalization(), Activation("relu"), Dropout(.5),
        Dense(hidden), BatchNormalization(), Activation("relu"), Dropout(.5),
        Dense(classes, activation="softmax"),
    ])


def test_summary_counts_the_lecture_models(capsys):
    small = Sequential([Dense(32, input_shape=(784,), activation="relu"), Dense(10, activation="softmax")])
    assert small.count_params() == 25450
    small.summary()
    text = capsys.readouterr().out
    assert "Layer (type)" in text and "Output Shape" in text and "Param #" in text
    assert "Total params: 25,450" in text and "Trainable params: 25,450" in text
    assert "Non-trainable params: 0" in text and "(None, 32)" in text
    big = lecture_model()
    big.summary()
    text = capsys.readouterr().out
    # BatchNormalization: gamma and beta trainable, the moving mean and variance are not
    assert "Non-trainable params: 4,096" in text
    assert f"Total params: {784 * 1024 + 1024 + 4 * 1024 + 1024 * 1024 + 1024 + 4 * 1024 + 10250:,}" in text


def test_fit_history_keys_lengths_and_learning():
    fastnn.manual_seed(0)
    x, y = blobs()
    model = Sequential([Dense(32, input_shape=(20,), activation="relu"), Dropout(0.2), Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, to_categorical(y), batch_size=32, epochs=4, verbose=0, validation_split=0.1)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    loss, acc = model.evaluate(x, to_categorical(y), verbose=0)
    assert acc > 0.9
    proba = model.predict(x[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_validation_split_takes_the_last_samples():
    x, y = blobs(n=100)
    seen = {}

    model = Sequential([Dense(3, input_shape=(20,), activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    real_eval = model._evaluate_arrays

    def spy(vx, vy, batch_size):
        seen["vx"] = vx.copy()
        return real_eval(vx, vy, batch_size)

    model._evaluate_arrays = spy
    model.fit(x, y, epochs=1, verbose=0, validation_split=0.2)
    np.testing.assert_array_equal(seen["vx"], x[80:])


def test_early_stopping_stops():
    x, y = blobs(n=200)
    model = Sequential([Dense(3, input_shape=(20,), activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    # lr so small nothing improves by min_delta: training must stop after patience + 1 epochs
    model.compile(__import__("fastnn.keras.optimizers", fromlist=["SGD"]).SGD(learning_rate=1e-9),
                  "sparse_categorical_crossentropy")
    stopper = EarlyStopping(monitor="loss", patience=2, min_delta=1e-3)
    history = model.fit(x, y, epochs=50, verbose=0, callbacks=[stopper])
    assert len(history.history["loss"]) == 3
    assert stopper.stopped_epoch == 2


def test_save_load_gives_identical_predictions(tmp_path):
    fastnn.manual_seed(1)
    x, y = blobs(n=300)
    model = Sequential([Dense(16, input_shape=(20,)), BatchNormalization(), Activation("tanh"), Dropout(0.3),
                        Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, to_categorical(y), epochs=2, verbose=0)
    path = model.save(tmp_path / "model.npz")
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # the optimizer state came along: one more epoch from both gives the same weights
    fastnn.manual_seed(7)
    model.fit(x, to_categorical(y), epochs=1, verbose=0, shuffle=False)
    fastnn.manual_seed(7)
    loaded.fit(x, to_categorical(y), epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_and_killed_write_keeps_old_file(tmp_path):
    x, y = blobs(n=100)
    model = Sequential([Dense(3, input_shape=(20,), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    path = tmp_path / "ck.npz"
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(str(path), monitor="loss")])
    assert path.exists()
    good = path.read_bytes()
    # a writer killed mid-save (SIGKILL) must leave the previous checkpoint readable
    code = f"""
import os, numpy as np, signal
import fastnn.checkpoint as c
real = np.savez
def dying(f, **kw):
    f.write(b"partial garbage")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = dying
c.save({str(path)!r}, {{"w": np.zeros(3)}}, {{}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode != 0
    assert path.read_bytes() == good
    assert load_model(path).predict(x[:3]).shape == (3, 3)


def test_saved_file_mode_follows_the_umask_or_the_file_it_replaces(tmp_path):
    # the temporary file behind the atomic write is created 0600; the saved file must not be
    old = os.umask(0o022)
    try:
        path = checkpoint.save(tmp_path / "m.npz", {"w": np.zeros(3)}, {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        checkpoint.save(path, {"w": np.ones(3)}, {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        np.testing.assert_array_equal(checkpoint.load(path)[0]["w"], np.ones(3))
    finally:
        os.umask(old)


def test_truncated_and_foreign_files_raise_clearly(tmp_path):
    x, y = blobs(n=50)
    model = Sequential([Dense(3, input_shape=(20,), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    path = model.save(tmp_path / "m.npz")
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or foreign"):
        load_model(tmp_path / "trunc.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a fastnn checkpoint"):
        load_model(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(checkpoint.CheckpointError):
        load_model(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")


def test_input_handling_pandas_bool_labels_and_dtypes():
    pd = pytest.importorskip("pandas")
    g = np.random.default_rng(0)
    df = pd.DataFrame({"genre": g.choice(["a", "b", "c"], 300), "year": g.integers(1990, 2020, 300)})
    features = pd.get_dummies(df, columns=["genre"])  # bool columns, as in the lecture's MovieLens example
    features["year"] = (features["year"] - 2005) / 10
    target = (features["genre_a"] | (features["year"] > 0)).to_numpy()  # bools, like rating >= 4
    model = Sequential([Dense(8, activation="relu", input_shape=(features.shape[1],)), Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(features, target, epochs=30, batch_size=32, verbose=0)
    loss, acc = model.evaluate(features, target, verbose=0)
    assert acc > 0.85
    p = model.predict(features.to_numpy().astype(np.float64))
    assert p.shape == (300, 1) and ((p > 0) & (p < 1)).all()
    for dt in (np.uint8, np.int32, np.float64):
        model.predict(np.ones((2, features.shape[1]), dt))


def test_fit_takes_torch_tensors_even_ones_that_require_grad():
    torch = pytest.importorskip("torch")
    x, y = blobs(n=120, features=6)
    model = Sequential([Dense(3, activation="softmax", input_shape=(6,))])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    xt = torch.from_numpy(x).requires_grad_(True)  # fit only reads it
    model.fit(xt, torch.from_numpy(y), epochs=2, batch_size=32, verbose=0)
    np.testing.assert_allclose(model.predict(xt, verbose=0), model.predict(x, verbose=0), rtol=0, atol=0)
    assert xt.grad is None


def test_mse_and_flatten_and_errors():
    x = np.random.default_rng(0).random((64, 4, 4)).astype(np.float32)
    y = x.reshape(64, -1).sum(axis=1, keepdims=True)
    model = Sequential([Flatten(input_shape=(4, 4)), Dense(1)])
    model.compile("adam", "mse")
    h = model.fit(x, y, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 3
    with pytest.raises(ValueError, match="loss"):
        model.compile("adam", "hinge")
    with pytest.raises(ValueError, match="optimizer"):
        model.compile("lion", "mse")
    with pytest.raises(ValueError, match="activation"):
        Dense(3, activation="gelu")
    with pytest.raises(ValueError, match="expected samples of shape"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(RuntimeError, match="compiled"):
        Sequential([Dense(1, input_shape=(3,))]).fit(np.zeros((4, 3)), np.zeros(4))
    # empty batches: fit and evaluate say which array is empty; predict gives no rows
    empty = np.zeros((0, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"^x: expected at least one sample"):
        model.fit(empty, np.zeros((0, 1)), verbose=0)
    with pytest.raises(ValueError, match=r"^x: expected at least one sample"):
        model.evaluate(empty, np.zeros((0, 1)), verbose=0)
    with pytest.raises(ValueError, match=r"^validation_data\[0\]: expected at least one sample"):
        model.fit(x, y, validation_data=(empty, np.zeros((0, 1))), verbose=0)
    assert model.predict(empty).shape == (0, 1)
    with pytest.raises(ValueError, match="^y: expected an array of labels"):
        model.fit(x, 1.0, verbose=0)


def test_verbose_progress_bar_shows_batch_and_running_loss(capsys):
    x, y = blobs(n=200)
    model = Sequential([Dense(3, input_shape=(20,), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=1, validation_split=0.2)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "steps/s" in out and "val_loss" in out
    model.fit(x, y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert out.count("steps/s") == 2 and "\r" not in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_redraws_only_on_a_terminal(terminal, monkeypatch):
    """On a terminal the bar redraws in place with the batch loss; into a pipe or a file (capsys, a
    CI log) verbose=1 writes one finished line an epoch and no carriage returns."""
    from fastnn.keras import progress
    monkeypatch.setattr(progress.time, "perf_counter", iter(np.arange(0.0, 100.0, 0.25)).__next__)
    stream = _Terminal() if terminal else io.StringIO()
    bar = progress.ProgressBar(steps=20, epoch=0, epochs=3, stream=stream)
    for step in range(1, 21):
        bar.update(step, batch_loss=0.5, logs={"loss": 0.75})
    bar.finish({"loss": 0.75, "val_loss": 0.8})
    out = stream.getvalue()
    assert out.startswith("Epoch 1/3\n") and out.rstrip().endswith("val_loss: 0.8000") and out.count("\n") == 2
    if terminal:
        assert out.count("\r") == 21 and "batch loss: 0.5000 - loss: 0.7500" in out
    else:
        assert "\r" not in out and "batch loss" not in out
        assert out.splitlines()[1].startswith("20/20 [========================] ")


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's ConvergenceWarning at max_iter=5
def test_keras_and_sklearn_train_on_every_device(device):
    """The same small model on each available device ("cuda" is the emulated one in CI) learns alike."""
    from fastnn.sklearn import MLPClassifier

    g = np.random.default_rng(0)
    x = g.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    fastnn.manual_seed(0)
    model = Sequential([Dense(8, input_shape=(6,)), BatchNormalization(), Activation("relu"), Dropout(0.2),
                        Dense(2, activation="softmax")], device=device)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    fastnn.manual_seed(0)
    ref = Sequential([Dense(8, input_shape=(6,)), BatchNormalization(), Activation("relu"), Dropout(0.2),
                      Dense(2, activation="softmax")], device="cpu")
    ref.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ref_history = ref.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    # same seed, same dropout masks (Philox is device-independent): the losses agree to float32 rounding
    np.testing.assert_allclose(history.history["loss"], ref_history.history["loss"], rtol=1e-4)
    assert model.predict(x).shape == (64, 2)
    for solver in ("adam", "lbfgs"):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, solver=solver, device=device)
        ref_clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, solver=solver)
        assert clf.fit(x, y).score(x, y) == ref_clf.fit(x, y).score(x, y)
