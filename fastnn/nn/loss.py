"""Loss modules: ``loss = criterion(output, target)`` then ``dy = criterion.backward()``."""
from __future__ import annotations

from fastnn import _C
from fastnn.nn.module import Module

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


class _Loss(Module):
    def __call__(self, input, target):
        return self.forward(input, target)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy from logits (N, C) and integer class labels (N,), as torch's.

    With reduction 'mean' or 'sum' the forward also computes d loss / d logits in the same pass
    (one softmax per row), so ``backward()`` costs nothing more.
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        self.weight = None if weight is None else _C.as_tensor(weight, "weight")
        self.ignore_index = int(ignore_index)
        self.reduction = _check_reduction(reduction)

    def forward(self, input, target):
        self._input, self._target = input, target
        if self.reduction == "none":
            self._grad = None
            return _C.cross_entropy_forward(input, target, self.weight, "none", self.ignore_index)
        loss, self._grad = _C.cross_entropy(input, target, self.weight, self.reduction, self.ignore_index)
        return loss

    def backward(self, dloss=1.0):
        saved = self._from_forward("_input")
        grad = self.__dict__.get("_grad")
        if grad is not None and (isinstance(dloss, (int, float)) and dloss == 1.0):
            return grad
        return _C.cross_entropy_backward(saved, self._target, dloss, self.weight,
                                         self.reduction, self.ignore_index)


class MSELoss(_Loss):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, input, target):
        self._input, self._target = input, target
        return _C.mse_forward(input, target, self.reduction)

    def backward(self, dloss=1.0):
        return _C.mse_backward(self._from_forward("_input"), self._target, dloss, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """torch.nn.BCEWithLogitsLoss. ``weight`` and ``pos_weight`` broadcast to the input as in torch:
    (C,) per label and (N, 1) per sample of an (N, C) input, the input's own shape, or one value.
    A shape torch broadcasts over non-adjacent dimensions ((N, 1, L) on (N, C, L)) raises
    ValueError; pass it expanded (``numpy.broadcast_to(w, shape).copy()``)."""

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__()
        self.weight = None if weight is None else _C.as_tensor(weight, "weight")
        self.pos_weight = None if pos_weight is None else _C.as_tensor(pos_weight, "pos_weight")
        self.reduction = _check_reduction(reduction)

    def forward(self, input, target):
        self._input, self._target = input, target
        return _C.bce_with_logits_forward(input, target, self.weight, self.pos_weight, self.reduction)

    def backward(self, dloss=1.0):
        return _C.bce_with_logits_backward(self._from_forward("_input"), self._target, dloss, self.weight,
                                           self.pos_weight, self.reduction)
