"""Adagrad, with torch.optim.Adagrad's arguments, defaults and arithmetic."""
from fastnn.optim.optimizer import Optimizer, _check_compat_flags, _next_step


class Adagrad(Optimizer):
    """Adagrad with learning-rate decay, L2 weight decay, an initial accumulator value and maximize.

    As in torch, every parameter's state (``step`` 0, ``sum`` filled with
    ``initial_accumulator_value``) exists from construction. ``foreach`` and ``fused`` are accepted
    for torch compatibility.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_compat_flags(foreach, fused, differentiable)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._each_target(group, lambda data, grad, state, new_tensor, group=group:
                              self._init_state(group, state, new_tensor), with_grad_only=False)

    @staticmethod
    def _init_state(group, state, new_tensor):
        if not state:
            state["step"] = 0.0
            state["sum"] = new_tensor(group["initial_accumulator_value"])

    def _prepare(self, group, state, new_tensor):
        self._init_state(group, state, new_tensor)  # groups added after construction
        step, commit = _next_step(state)

        return ("adagrad", [state["sum"]], dict(step=int(step), lr=group["lr"], lr_decay=group["lr_decay"],
                                                 weight_decay=group["weight_decay"], eps=group["eps"],
                                                 maximize=group["maximize"]), commit)
