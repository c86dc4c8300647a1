"""Adam and AdamW, with torch.optim's arguments, defaults and arithmetic."""
from fastnn.optim.optimizer import Optimizer, _check_compat_flags, _next_step


class Adam(Optimizer):
    """Adam with bias correction, L2 (or, with ``decoupled_weight_decay``, AdamW) weight decay,
    AMSGrad and maximize.

    ``foreach``, ``fused`` and ``capturable`` are accepted for torch compatibility: every step is
    one fused pass with the bias corrections computed on the host.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: expected (beta1, beta2), got {betas}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        _check_compat_flags(foreach, fused, differentiable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _prepare(self, group, state, new_tensor):
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = new_tensor()
            state["exp_avg_sq"] = new_tensor()
        amsgrad = group["amsgrad"]
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = new_tensor()
        step, commit = _next_step(state)
        beta1, beta2 = group["betas"]

        return ("adam", [state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"] if amsgrad else None],
                dict(step=int(step), lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                     amsgrad=amsgrad, maximize=group["maximize"]), commit)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2): the parameter shrinks by lr * weight_decay
    before the Adam update, instead of the decay entering the moments."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # an AdamW always decouples, whatever was saved
            group["decoupled_weight_decay"] = True
