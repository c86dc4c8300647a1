"""Trainable parameters, kept in one flat buffer per model so one optimizer launch updates them all."""
from __future__ import annotations

import operator

import numpy as np

from fastnn import _C


class Parameter:
    """A trainable tensor: ``data`` and its gradient ``grad``.

    Inside a model both are views into the model's :class:`FlatParameters` buffers; ``flat`` and
    ``offset`` say where. A free-standing Parameter owns its own memory (``flat`` is None).

    ``zero_grad`` on the CPU zeroes lazily: it marks the gradient as zero, and the next backward
    writes it instead of adding to it (no memset, and the weight-gradient GEMM does not read the
    old values: 5-10% of a batch-128 training step here). Reading ``grad`` before that backward,
    or an optimizer step, writes the zeros first, so the gradient always reads as what it is.
    """

    __slots__ = ("data", "_grad", "_zero_pending", "flat", "offset", "__weakref__")

    def __init__(self, data, requires_grad: bool = True):
        # np.array, not np.ascontiguousarray: the latter turns 0-d arrays into 1-d
        self.data = data if isinstance(data, _C.Tensor) else _C.from_dlpack(np.array(data, order="C"), copy=True)
        self.grad = _C.zeros(self.data.shape, self.data.dtype, self.data.device)
        self.flat = None
        self.offset = 0

    @property
    def grad(self):
        if self._zero_pending:
            self._zero_pending = False
            self._grad.zero_()
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad, self._zero_pending = value, False

    def zero_grad(self) -> None:
        """Zero the gradient: lazily on the CPU (see the class), at once on a GPU, where a CUDA
        graph being captured must record the zeroing where it happens."""
        if self._grad.device == "cpu":
            self._zero_pending = True
        else:
            self._zero_pending = False
            self._grad.zero_()

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

    def zero_grad(self) -> None:
        """Zero every parameter's gradient: one memset on a GPU, lazily on the CPU (Parameter)."""
        if self.grad.device == "cpu":
            for p in self.params:
                p._zero_pending = True
        else:
            self.grad.zero_()
            for p in self.params:
                p._zero_pending = False

    def settled_grad(self):
        """``grad`` with every zero still pending written: what an optimizer step may read whole."""
        for p in self.params:
            if p._zero_pending:
                p.grad  # noqa: B018 (the property writes the zeros)
        return self.grad

    def covers(self, params) -> bool:
        """True when ``params`` is exactly this buffer's parameter list, in order."""
        params = list(params)
        return len(params) == len(self.params) and all(map(operator.is_, params, self.params))


def covering_flat(params):
    """The FlatParameters whose parameter list is exactly ``params``, or None."""
    if not params:
        return None
    flat = params[0].flat
    return flat if flat is not None and flat.covers(params) else None


def zero_grads(params) -> None:
    """Zero the gradients of ``params``: one call for a whole flat buffer (no memset on the CPU,
    see Parameter), else one per parameter."""
    flat = covering_flat(params)
    if flat is not None:
        flat.zero_grad()
        return
    for p in params:
        p.zero_grad()


def grads_for_backward(*params):
    """The gradient buffers a backward kernel adds into (None for a None parameter), and whether
    it must add (True) or may overwrite them (False: every one of them was zeroed by a zero_grad
    that is still pending, so their old values are not needed)."""
    # plain loops: this runs for every layer of every step
    pending = False
    for p in params:
        if p is not None:
            if not p._zero_pending:
                return [None if p is None else p.grad for p in params], True
            pending = True
    if not pending:
        return [None] * len(params), True
    for p in params:
        if p is not None:
            p._zero_pending = False
    return [None if p is None else p._grad for p in params], False
