"""Adam and AdamW, with torch.optim's arguments, defaults and arithmetic."""
from fastnn import _C
from fastnn import cuda as _cuda
from fastnn.optim.optimizer import Optimizer, StepInBackward, _check_compat_flags


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

    @staticmethod
    def _init_state(group, state, new_tensor):
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = new_tensor()
            state["exp_avg_sq"] = new_tensor()
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = new_tensor()

    @staticmethod
    def _options(group, step):
        beta1, beta2 = group["betas"]
        return dict(step=int(step), lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                    amsgrad=group["amsgrad"], maximize=group["maximize"])

    def _update(self, group, data, grad, state, new_tensor):
        self._init_state(group, state, new_tensor)
        state["step"] += 1
        _C.adam_step(data, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")
                     if group["amsgrad"] else None, slot=self._graph_slot(), **self._options(group, state["step"]))

    # ---- the step inside a backward pass ------------------------------------------------------------

    def _begin_step_in_backward(self):
        """Each large weight of a coalesced CPU group is updated by its layer's backward, on each
        block of the gradient the GEMM has just computed (see ``_C.AdamUpdate``); the rest in
        ``finish``. Not inside a CUDA graph capture, and not on a GPU (launch-bound there)."""
        if _cuda._capturing() is not None or _cuda._preparing() is not None:
            return None
        fused = StepInBackward(self)
        for group in self.param_groups:
            fs = self._flat_state_for(group)
            if fs is None or fs.flat.data.device != "cpu":
                continue
            weights = [p for p in group["params"] if len(p.shape) == 2 and p.numel() >= _FUSED_MIN_ELEMENTS]
            if not weights:
                continue
            state = fs.state
            self._init_state(group, state, fs.new_tensor)
            step = state["step"] + 1
            options = self._options(group, step)
            amsgrad = group["amsgrad"]
            for p in weights:
                shape = list(p.shape)
                fused.updates[id(p)] = _C.AdamUpdate(
                    p.data, state["exp_avg"]._flat_slice(p.offset, shape),
                    state["exp_avg_sq"]._flat_slice(p.offset, shape),
                    state["max_exp_avg_sq"]._flat_slice(p.offset, shape) if amsgrad else None, **options)
            fused.groups[id(group)] = (fs, step)
        return fused if fused.updates else None

    def _finish_step_in_backward(self, fused):
        self._slot_calls = 0
        for group in self.param_groups:
            entry = fused.groups.get(id(group))
            if entry is None:
                self._step_group(group)
                continue
            fs, step = entry
            flat, state = fs.flat, fs.state
            grad = flat.settled_grad()
            options = self._options(group, step)
            for offset, numel in _runs_not_done(flat.params, fused.done):
                view = [numel]
                _C.adam_step(flat.data._flat_slice(offset, view), grad._flat_slice(offset, view),
                             state["exp_avg"]._flat_slice(offset, view),
                             state["exp_avg_sq"]._flat_slice(offset, view),
                             state["max_exp_avg_sq"]._flat_slice(offset, view) if group["amsgrad"] else None,
                             **options)
            state["step"] = step
            fs.publish(self.state)

    def _abort_step_in_backward(self, fused):
        for group in self.param_groups:
            entry = fused.groups.get(id(group))
            if entry is not None and any(id(p) in fused.done for p in group["params"]):
                fs, step = entry
                fs.state["step"] = step
                fs.publish(self.state)


# Weights from this size (1 MB in float32, beyond a core's L2) are updated inside the backward
# pass: Adam fused into the weight-gradient GEMM took 0.93x the time of the GEMM then adam_step
# at 128 x 784 / 1024 -> 1024 (Zen 3, 2 threads, interleaved): it reads the gradient from cache
# instead of DRAM. Smaller ones stay in one adam_step over the rest of the flat buffer.
_FUSED_MIN_ELEMENTS = 1 << 18


def _runs_not_done(params, done):
    """(offset, numel) of each run of consecutive flat parameters not in ``done`` (ids)."""
    runs, start, end = [], None, None
    for p in params:
        if id(p) in done:
            if start is not None:
                runs.append((start, end - start))
                start = None
            continue
        if start is None:
            start = p.offset
        end = p.offset + p.numel()
    if start is not None:
        runs.append((start, end - start))
    return runs


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
