"""RMSprop, with torch.optim.RMSprop's arguments, defaults and arithmetic."""
from fastnn.optim.optimizer import Optimizer, _check_compat_flags, _next_step


class RMSprop(Optimizer):
    """RMSprop with optional momentum, centering (variance instead of second moment), L2 weight
    decay and maximize. ``capturable`` and ``foreach`` are accepted for torch compatibility."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        _check_compat_flags(foreach, None, differentiable)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _prepare(self, group, state, new_tensor):
        momentum, centered = group["momentum"], group["centered"]
        if not state:
            state["step"] = 0.0
            state["square_avg"] = new_tensor()
        if momentum > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = new_tensor()
        if centered and "grad_avg" not in state:
            state["grad_avg"] = new_tensor()
        step, commit = _next_step(state)

        return ("rmsprop", [state["square_avg"], state["momentum_buffer"] if momentum > 0 else None,
                            state["grad_avg"] if centered else None],
                dict(lr=group["lr"], alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                     momentum=momentum, centered=centered, maximize=group["maximize"]), commit)
