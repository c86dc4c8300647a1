"""Creating fastnn Tensors from Python data, and pickling them."""
import weakref

import numpy as np

from fastnn import _C


# numpy dtypes a fastnn Tensor holds as they are (the DLPack kinds _C.from_dlpack takes)
_HELD = {np.dtype(t) for t in _C.dtypes}


def _holdable(arr: np.ndarray, dtype_given: bool) -> np.ndarray:
    """``arr`` in a dtype fastnn holds: native byte order, and with no dtype given, float16 widened
    to float32, longdouble rounded to float64 and other integers widened to int64; an asked-for
    dtype fastnn lacks raises."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if dtype_given and arr.dtype not in _HELD:
        raise TypeError(f"dtype: fastnn has no {arr.dtype} tensors; it takes {_C.dtype_list}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"data: expected numbers or bools, got an array of dtype {arr.dtype}")
    if arr.dtype not in _HELD:
        wide = np.float32 if arr.dtype.itemsize < 4 else np.float64  # float16 up, longdouble down
        arr = arr.astype(wide if arr.dtype.kind == "f" else np.int64)
    return arr


def tensor(data, dtype=None, device="cpu") -> _C.Tensor:
    """A new Tensor holding a copy of ``data`` (list, numpy array, torch tensor, fastnn.Tensor).

    Floating data defaults to float32, like torch (a float64 numpy array stays float64, float16
    widens to float32); integers to int64.
    """
    if hasattr(data, "__dlpack__") and not isinstance(data, np.ndarray):
        if getattr(data, "requires_grad", False):  # a copy is asked for: no need to refuse the graph
            data = data.detach()
        data = np.asarray(_C.as_tensor(data, "data").to("cpu"))
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype.kind == "f" and not isinstance(data, np.ndarray):
        arr = arr.astype(np.float32)
    if dtype is None and arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        arr = arr.astype(np.int64)
    t = _C.from_dlpack(np.ascontiguousarray(_holdable(arr, dtype is not None)), copy=True)
    return t if device in (None, "cpu") else t.to(device)


def as_tensor(data, dtype=None, device=None) -> _C.Tensor:
    """``data`` as a Tensor, sharing memory when it already is one (or a contiguous numpy/torch array
    of a dtype fastnn holds; a float16 or byte-swapped numpy array is copied, as :func:`tensor` does)."""
    if isinstance(data, np.ndarray) and (data.dtype not in _HELD or not data.dtype.isnative):
        t = tensor(data, dtype=dtype)
    elif isinstance(data, _C.Tensor) or hasattr(data, "__dlpack__"):
        t = _C.as_tensor(data, "data")  # what it cannot share raises a TypeError naming data
    else:
        t = tensor(data, dtype=dtype)
    if dtype is not None and np.dtype(dtype) != t.dtype:
        t = _C.from_dlpack(np.ascontiguousarray(_holdable(np.asarray(t).astype(dtype), True)))
    if device is not None and t.device != device:
        t = t.to(device)
    return t


# -- pickling -----------------------------------------------------------------------------------
# Like torch, fastnn pickles storages, not tensors: every tensor that views one Storage refers to a
# single _StorageRef, which pickle's memo writes once. Unpickled, the views share memory again, so
# a model's parameters stay views of its flat buffer and one optimizer call still updates them all.

_live_refs: "weakref.WeakValueDictionary[int, _StorageRef]" = weakref.WeakValueDictionary()


class _StorageRef:
    __slots__ = ("bytes", "__weakref__")

    def __init__(self, storage_bytes):
        self.bytes = storage_bytes

    def __reduce__(self):
        device = self.bytes.device
        data = np.array(self.bytes.to("cpu").numpy(), copy=True)
        return _rebuild_storage, (data, device)


def _rebuild_storage(data, device):
    t = _C.from_dlpack(np.ascontiguousarray(data, dtype=np.uint8), copy=True)
    return _StorageRef(t if device == "cpu" else t.to(device))


def _rebuild_tensor(ref, byte_offset, shape, dtype):
    return _C._tensor_view(ref.bytes, byte_offset, list(shape), dtype)


def _reduce_tensor(t):
    sid = t._storage_id()
    ref = _live_refs.get(sid)
    if ref is None:  # kept alive by pickle's memo for the rest of this dump
        ref = _StorageRef(t._storage_bytes())
        _live_refs[sid] = ref
    return _rebuild_tensor, (ref, t._byte_offset, tuple(t.shape), str(t.dtype))


_C.Tensor.__reduce__ = _reduce_tensor
