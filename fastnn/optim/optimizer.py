"""The optimizer base class: torch.optim's parameter groups, state and state_dict over fastnn Parameters.

A parameter group whose ``params`` are exactly one :class:`FlatParameters`' list is *coalesced*: its
optimizer state lives in flat buffers parallel to ``flat.data``, one kernel call updates the whole
group, and ``zero_grad`` clears ``flat.grad`` in one call. Each parameter's ``state[p]`` then holds
views into those buffers, so it reads like torch's per-parameter state. Any other group is updated
one kernel call per parameter.

State tensors are allocated on a parameter's first step and reused after that: a steady-state
``step()`` allocates nothing. Change state only through ``load_state_dict`` (or in place).
"""
from __future__ import annotations

import numbers
import warnings
from collections import defaultdict
from itertools import chain

import numpy as np

from fastnn import _C
from fastnn import cuda as _cuda
from fastnn.nn.parameter import FlatParameters, Parameter, covering_flat, zero_grads


def _zeros_like(data, fill: float = 0.0):
    t = _C.zeros(list(data.shape), data.dtype, data.device)
    if fill != 0:
        t.fill_(fill)
    return t


def _to_numpy(t) -> np.ndarray:
    """A numpy copy of a fastnn Tensor, whatever its device."""
    return np.array((t if t.device == "cpu" else t.to("cpu")).numpy(), copy=True)


def _refuse_new_state(fill: float = 0.0):
    raise ValueError("optimizer state is created on a parameter's first step, which a CUDA graph capture "
                     "cannot record (every replay would re-create it): run at least one step eagerly "
                     "before capturing")


class _FlatState:
    """Optimizer state of a coalesced group: flat tensors parallel to ``flat.data``.

    ``state`` is the dict the update rule reads and writes (as it would a single parameter's);
    ``publish`` mirrors it into every parameter's state as views and numbers.
    """

    __slots__ = ("flat", "state", "disabled", "_published")

    def __init__(self, flat: FlatParameters):
        self.flat = flat
        self.state = {}
        self.disabled = False  # the parameters' states disagree (see load_state_dict): go per parameter
        self._published = {}   # key -> the flat tensor whose views the parameters hold

    def new_tensor(self, fill: float = 0.0):
        return _zeros_like(self.flat.data, fill)

    def publish(self, param_state) -> None:
        params = self.flat.params
        for key, value in self.state.items():
            if isinstance(value, _C.Tensor):
                if self._published.get(key) is not value:
                    for p in params:
                        param_state[p][key] = value._flat_slice(p.offset, list(p.shape))
                    self._published[key] = value
            else:
                for p in params:
                    param_state[p][key] = value


class Optimizer:
    """Base class of fastnn's optimizers, with torch.optim.Optimizer's interface.

    Subclasses implement ``_prepare(group, state, new_tensor)`` (see there): this step's update of
    one target, as the kernel to call and its arguments. ``step()`` runs it on each target;
    ``Module.backward(dy, optimizer=self)`` runs it on large CPU weights inside the backward pass.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []
        self._flat_states: dict[FlatParameters, _FlatState] = {}

        if isinstance(params, Parameter):
            raise TypeError("params argument given to the optimizer should be an iterable of Parameters "
                            "or dicts, but got Parameter")
        if isinstance(params, FlatParameters):
            params = params.params
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    # ---- parameter groups ------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters, with hyperparameters that default to the optimizer's."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, FlatParameters):
            params = list(params.params)
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the "
                            "ordering of tensors in sets will change between runs. Please use a list instead.")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, but one of the params is {type(p).__name__}")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; each is "
                          "updated once per appearance", stacklevel=3)
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        param_group["params"] = params
        self.param_groups.append(param_group)

    # ---- stepping --------------------------------------------------------------------------------

    def _flat_state_for(self, group):
        """The coalesced state of ``group``, or None when it is updated parameter by parameter."""
        flat = covering_flat(group["params"])
        if flat is None:
            return None
        fs = self._flat_states.get(flat)
        if fs is None:
            # state made per parameter (a partial load_state_dict) stays per parameter
            if any(self.state.get(p) for p in flat.params):
                return None
            fs = self._flat_states[flat] = _FlatState(flat)
        return None if fs.disabled else fs

    def _each_target(self, group, fn, with_grad_only: bool = True) -> None:
        """fn(data, grad, state, new_tensor) once for a coalesced group, else once per parameter."""
        fs = self._flat_state_for(group)
        if fs is not None:
            fn(fs.flat.data, fs.flat.settled_grad(), fs.state, fs.new_tensor)
            fs.publish(self.state)
            return
        for p in group["params"]:
            if with_grad_only and p.grad is None:
                continue
            data = p.data
            fn(data, p.grad, self.state[p], lambda fill=0.0, data=data: _zeros_like(data, fill))

    def step(self, closure=None):
        """One update of every parameter; returns ``closure()``'s loss when a closure is given.

        Inside a CUDA graph capture (fastnn.cuda) the update kernels are recorded reading their
        per-step scalars (step count, bias corrections, learning rate) from graph slots, and this
        same method refills them before each replay.
        """
        loss = closure() if closure is not None else None
        self._slot_calls = 0
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group) -> None:
        no_new_state = _cuda._capturing() is not None
        self._each_target(group, lambda data, grad, state, new_tensor:
                          self._update(group, data, grad, state,
                                       _refuse_new_state if no_new_state else new_tensor))

    # ---- the step inside a backward pass ------------------------------------------------------------

    def _begin_step_in_backward(self, module):
        """A :class:`StepInBackward` for ``module.backward(dy, optimizer=self)``, or None when no
        update can be taken inside the backward pass (then ``step()`` follows it). Each large weight
        of a coalesced CPU group is updated by its layer's backward, on each block of the gradient the
        GEMM has just computed (``_C.ParamUpdate``); the rest in ``finish``. Not inside a CUDA graph
        capture, and not on a GPU (a GPU step is bound by launches, not by this memory traffic)."""
        if _cuda._capturing() is not None or _cuda._preparing() is not None:
            return None
        fused = StepInBackward(self)
        single_use = None
        for group in self.param_groups:
            fs = self._flat_state_for(group)
            if fs is None or fs.flat.data.device != "cpu":
                continue
            weights = [p for p in group["params"] if len(p.shape) == 2 and p.numel() >= _FUSED_MIN_ELEMENTS]
            if weights:
                single_use = _single_use_parameters(module) if single_use is None else single_use
                weights = [p for p in weights if id(p) in single_use]
            if not weights:
                continue
            had = set(fs.state)
            rule, states, options, commit = self._prepare(group, fs.state, fs.new_tensor)
            make = getattr(_C.ParamUpdate, rule)
            for p in weights:
                shape = list(p.shape)
                fused.updates[id(p)] = make(p.data, *[s if s is None else s._flat_slice(p.offset, shape)
                                                      for s in states], **options)
            fused.groups[id(group)] = (fs, rule, states, options, commit, set(fs.state) - had)
        return fused if fused.updates else None

    def _finish_step_in_backward(self, fused):
        self._slot_calls = 0
        for group in self.param_groups:
            entry = fused.groups.get(id(group))
            if entry is None:
                self._step_group(group)
                continue
            fs, rule, states, options, commit, _ = entry
            flat = fs.flat
            grad = flat.settled_grad()
            kernel = getattr(_C, rule + "_step")
            for offset, numel in _runs_not_done(flat.params, fused.done):
                view = [numel]
                kernel(flat.data._flat_slice(offset, view), grad._flat_slice(offset, view),
                       *[s if s is None else s._flat_slice(offset, view) for s in states], **options)
            commit()
            fs.publish(self.state)

    def _abort_step_in_backward(self, fused):
        for group in self.param_groups:
            entry = fused.groups.get(id(group))
            if entry is None:
                continue
            fs, _, _, _, commit, created = entry
            if any(id(p) in fused.done for p in group["params"]):
                commit()
                fs.publish(self.state)
            else:  # nothing ran: forget the state this step created, as if it never began
                for key in created:
                    del fs.state[key]

    def _graph_slot(self):
        """The graph slot of this step's next update call: None in an eager step."""
        g = _cuda._capturing()
        if g is not None:
            if id(self) not in g._slots:
                g._on_replay(self.step)
            slot = g._new_slot(self)
        else:
            g = _cuda._preparing()
            if g is None:
                return None
            slot = g._slot(self, self._slot_calls)
        self._slot_calls += 1
        return slot

    def _prepare(self, group, state, new_tensor):
        """This step's update of one target (a flat group's buffer or one parameter) whose optimizer
        state is ``state``, not yet run: ``(rule, states, options, commit)``. The kernels are
        ``_C.<rule>_step(data, grad, *states, **options)`` and ``_C.ParamUpdate.<rule>(data, *states,
        **options)``; ``states`` are state tensors (created here from ``new_tensor(fill=0.0)`` when
        missing) or None; ``commit()`` records in ``state`` that the step ran (e.g. the step count)."""
        raise NotImplementedError

    def _update(self, group, data, grad, state, new_tensor) -> None:
        rule, states, options, commit = self._prepare(group, state, new_tensor)
        getattr(_C, rule + "_step")(data, grad, *states, slot=self._graph_slot(), **options)
        commit()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient: one call per coalesced group, one per parameter otherwise.

        fastnn gradients live in preallocated buffers (views of ``FlatParameters.grad``), so they are
        always zeroed in place, on the CPU lazily (see :class:`fastnn.nn.Parameter`: the next
        backward overwrites instead of adding); ``set_to_none`` is accepted for torch compatibility.
        """
        for group in self.param_groups:
            zero_grads(group["params"])

    # ---- saving and loading ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{'state': {index: {name: numpy array copy or number}}, 'param_groups': [... 'params': [indices]]}.

        Indices number the parameters in group order, as torch's do; arrays are copies.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if s and id(p) in index:
                state[index[id(p)]] = {k: _to_numpy(v) if isinstance(v, _C.Tensor) else v for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``: hyperparameters per group and each parameter's state (copied)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                             "of optimizer's group")
        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))

        # Convert and check everything before changing anything.
        loaded: dict = {}
        foreign = {}
        for key, entries in state_dict["state"].items():
            p = id_map.get(key)
            if p is None:
                foreign[key] = entries  # kept as is, as torch keeps state it cannot place
                continue
            converted = {}
            for name, value in entries.items():
                if name == "step" or isinstance(value, numbers.Number):
                    converted[name] = float(np.asarray(value)) if name == "step" else value
                    continue
                arr = np.ascontiguousarray(np.asarray(value), dtype=p.dtype)
                if arr.shape != tuple(p.shape):
                    raise ValueError(f"load_state_dict: state['{name}'] of parameter {key} has shape "
                                     f"{arr.shape}, expected {tuple(p.shape)}")
                converted[name] = arr
            loaded[p] = converted

        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new_group = {k: v for k, v in saved.items() if k != "params"}
            for name, default in self.defaults.items():
                new_group.setdefault(name, default)
            new_group["params"] = group["params"]
            new_groups.append(new_group)

        self.param_groups = new_groups
        self.state = defaultdict(dict)
        self.state.update(foreign)
        self._flat_states = {}
        for group in self.param_groups:
            params = group["params"]
            flat = covering_flat(params)
            states = [loaded.get(p, {}) for p in params]
            if flat is not None and not any(states):
                continue  # created on the first step, coalesced
            if flat is not None:
                fs = self._flat_states[flat] = _FlatState(flat)
                if self._uniform(states):
                    for name, value in states[0].items():
                        if isinstance(value, np.ndarray):
                            t = fs.new_tensor()
                            for p, s in zip(params, states):
                                t._flat_slice(p.offset, list(p.shape)).copy_(s[name])
                            fs.state[name] = t
                        else:
                            fs.state[name] = value
                    fs.publish(self.state)
                    continue
                fs.disabled = True
            for p, s in zip(params, states):
                for name, value in s.items():
                    if isinstance(value, np.ndarray):
                        t = _zeros_like(p.data)
                        t.copy_(value)
                        value = t
                    self.state[p][name] = value

    @staticmethod
    def _uniform(states) -> bool:
        """Every state has the same entries and the same numbers (e.g. step), so one flat state serves all."""
        first = states[0]
        if not first:
            return False
        for s in states[1:]:
            if s.keys() != first.keys():
                return False
            for name, value in first.items():
                if not isinstance(value, np.ndarray) and s[name] != value:
                    return False
        return True

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


class StepInBackward:
    """One optimizer step taken during a backward pass (``Module.backward(dy, optimizer=...)``).

    ``updates`` maps ``id(param)`` to the kernel argument that makes a layer's backward update that
    parameter as soon as its gradient is computed (on the CPU, block by block while the gradient is
    still in cache); the layer reports it with ``applied(param)``. ``finish()`` then updates every
    other parameter as ``step()`` would: the whole is ``backward(dy)`` then ``step()``, bit for bit.
    """

    __slots__ = ("optimizer", "updates", "groups", "done")

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.updates: dict = {}
        self.groups: dict = {}   # id(group) -> what the optimizer needs to finish that group
        self.done: set = set()   # id(param) of the parameters already updated

    def applied(self, param) -> None:
        self.done.add(id(param))

    def finish(self) -> None:
        self.optimizer._finish_step_in_backward(self)

    def abort(self) -> None:
        """The backward pass failed: the parameters already updated keep their step (their state
        says so); the others keep the values and state they had."""
        self.optimizer._abort_step_in_backward(self)


# Weights from this size (1 MB in float32, beyond a core's L2) are updated inside the backward pass:
# Adam fused into the weight-gradient GEMM took 0.93x the time of the GEMM then adam_step at
# 128 x 784 / 1024 -> 1024 (Zen 3, 2 threads, interleaved): it reads the gradient from cache
# instead of DRAM. Smaller ones are stepped with the rest of the flat buffer.
_FUSED_MIN_ELEMENTS = 1 << 18


def _single_use_parameters(module) -> set:
    """ids of the parameters exactly one place in ``module`` holds. Only those may take their step
    inside the backward pass: a weight two layers share (or a layer used twice) gets its gradient
    from both, and must be stepped once both have added theirs."""
    counts: dict = {}
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None:
                counts[id(p)] = counts.get(id(p), 0) + 1
    return {key for key, count in counts.items() if count == 1}


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


def _no_commit():
    pass


def _next_step(state):
    """This step's count for a rule that keeps one in ``state["step"]``, and the ``commit`` that
    records it once the update has run (a failed step leaves the count where it was)."""
    step = state["step"] + 1

    def commit():
        state["step"] = step

    return step, commit


def _check_compat_flags(foreach=None, fused=None, differentiable=False) -> None:
    """torch's implementation switches: fastnn always runs one fused pass, so only conflicts matter."""
    if differentiable:
        raise ValueError("differentiable=True is not supported: fastnn optimizers update their buffers "
                         "in place, outside autograd")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
