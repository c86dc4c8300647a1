"""Stochastic gradient descent, with torch.optim.SGD's arguments, defaults and arithmetic."""
from fastnn.optim.optimizer import Optimizer, _check_compat_flags, _no_commit


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum, dampening, L2 weight decay and maximize.

    The momentum buffer starts as the first step's gradient, as in torch. ``foreach`` and ``fused``
    are accepted for torch compatibility: every step is one fused pass.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        _check_compat_flags(foreach, fused, differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _prepare(self, group, state, new_tensor):
        momentum = group["momentum"]
        buf, first_step = None, False
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = new_tensor()
                first_step = True
        return ("sgd", [buf], dict(lr=group["lr"], momentum=momentum, dampening=group["dampening"],
                                   weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                                   maximize=group["maximize"], first_step=first_step), _no_commit)
