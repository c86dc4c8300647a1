"""Creating fastnn Tensors from Python data."""
import numpy as np

from fastnn import _C


def tensor(data, dtype=None, device="cpu") -> _C.Tensor:
    """A new Tensor holding a copy of ``data`` (list, numpy array, torch tensor, fastnn.Tensor).

    Floating data defaults to float32, like torch; integers to int64.
    """
    if hasattr(data, "__dlpack__") and not isinstance(data, np.ndarray):
        data = np.asarray(_C.from_dlpack(data, device="cpu"))
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype.kind == "f":
        arr = arr.astype(np.float32) if not isinstance(data, np.ndarray) else arr
    if dtype is None and arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        arr = arr.astype(np.int64)
    t = _C.from_dlpack(np.ascontiguousarray(arr), copy=True)
    return t if device in (None, "cpu") else t.to(device)


def as_tensor(data, dtype=None, device=None) -> _C.Tensor:
    """``data`` as a Tensor, sharing memory when it already is one (or a contiguous numpy/torch array)."""
    if isinstance(data, _C.Tensor):
        t = data
    elif hasattr(data, "__dlpack__"):
        t = _C.from_dlpack(data)
    else:
        t = tensor(data, dtype=dtype)
    if dtype is not None and np.dtype(dtype) != t.dtype:
        t = _C.from_dlpack(np.ascontiguousarray(np.asarray(t).astype(dtype)))
    if device is not None and t.device != device:
        t = t.to(device)
    return t
