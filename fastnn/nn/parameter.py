"""Trainable parameters, kept in one flat buffer per model so one optimizer launch updates them all."""
from __future__ import annotations

import numpy as np

from fastnn import _C


class Parameter:
    """A trainable tensor: ``data`` and its gradient ``grad``.

    Inside a model both are views into the model's :class:`FlatParameters` buffers; ``flat`` and
    ``offset`` say where. A free-standing Parameter owns its own memory (``flat`` is None).
    """

    __slots__ = ("data", "grad", "flat", "offset", "__weakref__")

    def __init__(self, data, requires_grad: bool = True):
        # np.array, not np.ascontiguousarray: the latter turns 0-d arrays into 1-d
        self.data = data if isinstance(data, _C.Tensor) else _C.from_dlpack(np.array(data, order="C"), copy=True)
        self.grad = _C.zeros(self.data.shape, self.data.dtype, self.data.device)
        self.flat = None
        self.offset = 0

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return self.data.device

    def numel(self) -> int:
        return self.data.numel()

    def numpy(self) -> np.ndarray:
        return self.data.numpy()

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class FlatParameters:
    """One contiguous data buffer and one gradient buffer holding a list of parameters, in order.

    ``data`` and ``grad`` are 1-D Tensors; each parameter's ``data``/``grad`` are views into them.
    """

    def __init__(self, params: list[Parameter]):
        if not params:
            raise ValueError("FlatParameters: no parameters")
        dtypes = {str(p.dtype) for p in params}
        devices = {p.device for p in params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"FlatParameters: parameters must share one dtype and device, got {dtypes} on {devices}")
        self.params = list(params)
        total = sum(p.numel() for p in params)
        dtype, device = params[0].dtype, params[0].device
        self.data = _C.zeros([total], dtype, device)
        self.grad = _C.zeros([total], dtype, device)
        offset = 0
        for p in params:
            n = p.numel()
            view = self.data._flat_slice(offset, list(p.shape))
            view.copy_(p.data)
            p.data = view
            p.grad = self.grad._flat_slice(offset, list(p.shape))
            p.flat, p.offset = self, offset
            offset += n

    def numel(self) -> int:
        return self.data.numel()

    def covers(self, params) -> bool:
        """True when ``params`` is exactly this buffer's parameter list, in order."""
        params = list(params)
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))
