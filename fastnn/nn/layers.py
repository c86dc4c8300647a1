"""Layers: Linear, activations, Dropout, BatchNorm1d. Each keeps what its backward needs."""
from __future__ import annotations

import math

import numpy as np

from fastnn import _C
from fastnn import cuda as _cuda
from fastnn._random import init_generator, next_dropout_key
from fastnn.nn.module import Module
from fastnn.nn.parameter import Parameter, grads_for_backward

_ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _check_float_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype: expected float32 or float64, got {name}")
    return name


class Linear(Module):
    """``y = act(x W^T + b)`` with W of shape (out_features, in_features), as torch.nn.Linear.

    Initialised like torch: W and b uniform in +-1/sqrt(in_features). ``activation`` (None,
    'relu', 'tanh', 'sigmoid') is applied in the GEMM epilogue.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str | None = None, dtype="float32"):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if activation not in (None, "none", "linear", *_ACTIVATIONS):
            raise ValueError(f"activation: expected None, 'relu', 'tanh' or 'sigmoid', got {activation!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = None if activation in (None, "none", "linear") else activation
        dtype = _check_float_dtype(dtype)
        g = init_generator()
        bound = 1.0 / math.sqrt(self.in_features)
        self.register_parameter("weight", Parameter(
            g.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype)))
        self.register_parameter("bias", Parameter(g.uniform(-bound, bound, self.out_features).astype(dtype))
                                if bias else None)
        self._x = self._y = None
        self._act = self.activation

    def forward(self, x):
        return self._forward_fused(x, self.activation)

    def _forward_fused(self, x, activation):
        # the per-step paths read parameters from the dicts: Module.__getattr__ is a Python call each
        params = self._parameters
        b = params["bias"]
        y = _C.linear_forward(x, params["weight"].data, b.data if b is not None else None, activation or "none")
        self._x, self._act = x, activation
        self._y = y if activation else None
        return y

    def backward(self, dy, optimizer=None):
        """Gradients of the last forward; with ``optimizer``, its step follows (see
        :meth:`fastnn.nn.Sequential.backward`)."""
        if optimizer is not None:
            if self._x is None:
                raise RuntimeError("Linear.backward called before forward")
            return self._backward_and_step(dy, optimizer)
        return self._backward_in_step(dy, None)

    def _backward_in_step(self, dy, step):
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        params = self._parameters
        w, b = params["weight"], params["bias"]
        update = step.updates.get(id(w)) if step is not None else None
        (dweight, dbias), accumulate = grads_for_backward(w, b)
        dx, _, _ = _C.linear_backward(
            self._x, w.data, dy, self._y, self._act or "none", dweight=dweight, dbias=dbias,
            need_dx=self.needs_input_grad, need_dbias=b is not None, accumulate=accumulate, update=update)
        if update is not None:
            step.applied(w)
        return dx

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}"


class _Activation(Module):
    kind = "none"
    fusable = True

    def forward(self, x):
        self._y = _C.activation_forward(x, self.kind)
        return self._y

    def backward(self, dy):
        return _C.activation_backward(self._from_forward("_y"), dy, self.kind)


class ReLU(_Activation):
    kind = "relu"


class Tanh(_Activation):
    kind = "tanh"


class Sigmoid(_Activation):
    kind = "sigmoid"


class Softmax(_Activation):
    """Softmax over the last dimension (``dim`` must be -1 or the last axis)."""

    kind = "softmax"
    fusable = False
    log = False  # the kernels' log-softmax switch

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        x = _C.as_tensor(x, "x")  # a TypeError naming x for what is not a tensor, before dim is read
        _check_last_dim(self.dim, x)
        self._y = _C.softmax_forward(x, self.log)
        return self._y

    def backward(self, dy):
        return _C.softmax_backward(self._from_forward("_y"), dy, self.log)


class LogSoftmax(Softmax):
    kind = "log_softmax"
    log = True


def _check_last_dim(dim, x):
    ndim = len(x.shape)
    if dim not in (-1, ndim - 1):
        raise ValueError(f"dim: fastnn's softmax runs over the last dimension (-1), got dim={dim}")


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class Dropout(Module):
    """Inverted dropout: zeroes each element with probability ``p`` and scales the rest by 1/(1-p).

    The mask is regenerated in backward from (seed, offset), never stored. Identity in eval mode.
    Masks come from the global seed (:func:`fastnn.manual_seed`) unless ``seed`` gives this layer
    a stream of its own.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p: dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)
        self.seed = None if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF
        self._calls = 0
        self._key = None
        self._slot = None
        self._act = None

    def forward(self, x):
        return self._forward_fused(x, None)

    def _forward_fused(self, x, activation):
        self._act = activation
        if not self.training:
            self._key = None
            self._y = _C.activation_forward(x, activation) if activation else x
            return self._y
        act = activation or "none"
        key, slot = self._draw_key(x, act)
        self._y = _C.dropout_forward(x, self.p, *key, act, slot=slot)
        return self._y

    def _draw_key(self, x, act):
        """This call's (seed, offset) and, while a graph captures, the slot its kernel reads the key
        from: the graph refills the slot before every replay with the key an eager call would draw,
        so masks differ step to step as they should."""
        self._key = self._next_key()
        self._slot = None
        g = _cuda._capturing()
        if g is not None:
            slot = self._slot = g._new_slot(self)
            g._on_replay(lambda: _C.dropout_forward(x, self.p, *self._next_key(), act, slot=slot))
        return self._key, self._slot

    def _next_key(self):
        if self.seed is None:
            return next_dropout_key()
        key = (self.seed, self._calls)
        self._calls += 1
        return key

    def backward(self, dy):
        if self._key is None:
            return _C.activation_backward(self._y, dy, self._act) if self._act else dy
        slot = self._slot if _cuda._capturing() is not None else None
        return _C.dropout_backward(dy, self.p, *self._key, self._y if self._act else None, self._act or "none",
                                   slot=slot)

    def extra_repr(self):
        return f"p={self.p}"


class BatchNorm1d(Module):
    """Batch normalisation over (N, C) with torch's semantics and state-dict keys.

    Training normalises with the biased batch variance and updates ``running_mean`` /
    ``running_var`` (unbiased) with ``momentum``; ``momentum=None`` uses a cumulative average.
    Eval mode normalises with the running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype="float32"):
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features <= 0:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        dtype = _check_float_dtype(dtype)
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype)) if affine else None)
        self._relu_output = None  # the output of a fused forward with relu (see _forward_fused)
        if track_running_stats:
            self.register_buffer("running_mean", _C.zeros([num_features], dtype))
            self.register_buffer("running_var", _C.from_dlpack(np.ones(num_features, dtype)))
            self.register_buffer("num_batches_tracked", _C.zeros([], "int64"))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        return self._forward_fused(x, None, None)

    def _forward_fused(self, x, activation, dropout):
        """y = dropout(act(batchnorm(x))) in one op: ``activation`` None or 'relu', ``dropout`` None
        or the Dropout module that follows (identity in eval mode, as it is on its own).
        backward() then takes the gradient of that output."""
        epilogue = {}
        self._relu_output = None
        if activation is not None:
            epilogue["activation"] = activation
            if dropout is not None and dropout.training:
                key, slot = dropout._draw_key(x, activation)
                epilogue["dropout"], epilogue["slot"] = (dropout.p, *key), slot
                self._relu_p = dropout.p
            else:
                if dropout is not None:
                    dropout._key = None
                self._relu_p = 0.0
        use_batch_stats = self.training or not self.track_running_stats
        factor = 0.0 if self.momentum is None else float(self.momentum)
        if self.training and self.track_running_stats:
            nbt = self._batches_tracked_view()
            nbt[()] += 1  # a 0-d array's own += takes 3 us (ufunc dispatch), this 0.3
            if self.momentum is None:
                factor = 1.0 / float(nbt)
            g = _cuda._capturing()
            if g is not None:
                if self.momentum is None:
                    raise ValueError("BatchNorm1d(momentum=None) cannot be captured in a CUDA graph: its "
                                     "averaging factor 1/num_batches_tracked changes every step; give a momentum")
                g._on_replay(lambda: nbt.__setitem__((), nbt[()] + 1))  # the count a replayed step adds, as an eager one
        params, buffers = self._parameters, self._buffers
        w, b = params["weight"], params["bias"]
        y, mean, invstd = _C.batchnorm_forward(
            x, w.data if w is not None else None, b.data if b is not None else None,
            buffers["running_mean"], buffers["running_var"], use_batch_stats, factor, self.eps, **epilogue)
        self._x, self._saved, self._batch_stats = x, (mean, invstd), use_batch_stats
        if activation is not None:
            self._relu_output = y
        return y

    def _batches_tracked_view(self):
        """num_batches_tracked as a numpy view, made once per buffer: .numpy() costs a few
        microseconds a step, and load_state_dict writes into the buffer in place (the view stays
        valid) while a replaced buffer gets a new view."""
        buffer = self._buffers["num_batches_tracked"]
        cached = self.__dict__.get("_count_view")
        if cached is None or cached[0] is not buffer:
            cached = self._count_view = (buffer, buffer.numpy())
        return cached[1]

    def __getstate__(self):
        # a copied or pickled view would no longer view the copy's buffer: made again on first use
        state = self.__dict__.copy()
        state.pop("_count_view", None)
        return state

    def backward(self, dy):
        params = self._parameters
        w, b = params["weight"], params["bias"]
        x = self._from_forward("_x")
        (dweight, dbias), accumulate = grads_for_backward(w, b)
        relu = {} if self._relu_output is None else {"y": self._relu_output, "activation": "relu", "p": self._relu_p}
        dx, _, _ = _C.batchnorm_backward(
            x, dy, w.data if w is not None else None, self._saved[0], self._saved[1],
            self._batch_stats, dweight=dweight, dbias=dbias, accumulate=accumulate, **relu)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
