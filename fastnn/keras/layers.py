"""Keras-style layers. Each one describes itself; the model builds fastnn.nn modules from them."""
from __future__ import annotations

import math

import numpy as np

from fastnn import nn
from fastnn._random import init_generator

_ACTIVATIONS = {None: None, "linear": None, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                "softmax": "softmax"}


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of 'relu', 'tanh', 'sigmoid', 'softmax', 'linear' or None, got {activation!r}")
    return _ACTIVATIONS[activation]


def _truncated_normal(g, std, shape):
    # Keras's truncated normal: draws beyond two standard deviations are drawn again
    out = g.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = g.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std


def initialize(name: str, fan_in: int, fan_out: int, shape, g) -> np.ndarray:
    if name == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return g.uniform(-limit, limit, shape)
    if name == "glorot_normal":
        # Keras divides by .87962566 so the truncated distribution keeps the intended variance
        return _truncated_normal(g, math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978, shape)
    if name == "he_uniform":
        limit = math.sqrt(6.0 / fan_in)
        return g.uniform(-limit, limit, shape)
    if name == "he_normal":
        return _truncated_normal(g, math.sqrt(2.0 / fan_in) / 0.87962566103423978, shape)
    if name == "zeros":
        return np.zeros(shape)
    raise ValueError(f"kernel_initializer: expected 'glorot_uniform', 'glorot_normal', 'he_uniform', 'he_normal' or 'zeros', got {name!r}")


class Layer:
    """A layer description: its name, output width, parameter counts and the modules it becomes."""

    _counter: dict = {}

    def __init__(self, name: str | None = None, input_shape=None, input_dim=None):
        base = type(self).__name__.lower() if type(self).__name__ != "BatchNormalization" else "batch_normalization"
        if name is None:
            n = Layer._counter.get(base, 0)
            Layer._counter[base] = n + 1
            name = base if n == 0 else f"{base}_{n}"
        self.name = name
        if input_dim is not None:
            input_shape = (input_dim,)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.modules: list[nn.Module] = []

    def output_dim(self, input_dim: int) -> int:
        return input_dim

    def build(self, input_dim: int, dtype: str) -> list[nn.Module]:
        raise NotImplementedError

    def param_counts(self, input_dim: int) -> tuple[int, int]:
        """(trainable, non-trainable) parameter counts."""
        return 0, 0

    def config(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape) if self.input_shape else None}


class InputLayer(Layer):
    def __init__(self, shape, name=None):
        super().__init__(name=name, input_shape=shape)

    def build(self, input_dim, dtype):
        return []


def Input(shape, name=None):
    return InputLayer(shape, name=name)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...). Flattening happens on the input data before the modules run."""

    def build(self, input_dim, dtype):
        return []


class Dense(Layer):
    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 input_shape=None, input_dim=None, name=None):
        super().__init__(name=name, input_shape=input_shape, input_dim=input_dim)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"units: expected a positive int, got {units!r}")
        self.units = int(units)
        self.activation = _check_activation(activation)
        self.use_bias = bool(use_bias)
        initialize(kernel_initializer, 1, 1, (1,), np.random.default_rng(0))  # validates the name
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def output_dim(self, input_dim):
        return self.units

    def param_counts(self, input_dim):
        return input_dim * self.units + (self.units if self.use_bias else 0), 0

    def build(self, input_dim, dtype):
        act = self.activation if self.activation in ("relu", "tanh", "sigmoid") else None
        lin = nn.Linear(input_dim, self.units, bias=self.use_bias, activation=act, dtype=dtype)
        g = init_generator()
        # Keras's kernel is (in, out); fastnn stores torch's (out, in)
        kernel = initialize(self.kernel_initializer, input_dim, self.units, (input_dim, self.units), g)
        lin.weight.data.copy_(np.ascontiguousarray(kernel.T, dtype=dtype))
        if self.use_bias:
            lin.bias.data.copy_(initialize(self.bias_initializer, input_dim, self.units, (self.units,), g).astype(dtype))
        self.modules = [lin] + ([nn.Softmax()] if self.activation == "softmax" else [])
        return self.modules

    def config(self):
        return {**super().config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Activation(Layer):
    def __init__(self, activation, input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        self.activation = _check_activation(activation)

    def build(self, input_dim, dtype):
        cls = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softmax": nn.Softmax, None: nn.Identity}
        self.modules = [cls[self.activation]()]
        return self.modules

    def config(self):
        return {**super().config(), "activation": self.activation}


class Dropout(Layer):
    def __init__(self, rate: float, input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"rate: expected a float in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def build(self, input_dim, dtype):
        self.modules = [nn.Dropout(self.rate)]
        return self.modules

    def config(self):
        return {**super().config(), "rate": self.rate}


class BatchNormalization(Layer):
    """Keras's convention: ``momentum`` is the weight of the *old* moving average (0.99), so the
    torch-style update factor is ``1 - momentum``; ``epsilon`` defaults to 1e-3.

    One difference from Keras: the moving variance is updated with the unbiased batch variance,
    as torch does (Keras uses the biased one); for batches of 128 they differ by 0.8%.
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, input_shape=None, name=None):
        super().__init__(name=name, input_shape=input_shape)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a float in [0, 1], got {momentum!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        if not (center and scale):
            if center or scale:
                raise ValueError("center and scale: fastnn supports both on or both off")
        self.affine = bool(center and scale)

    def param_counts(self, input_dim):
        return (2 * input_dim if self.affine else 0), 2 * input_dim

    def build(self, input_dim, dtype):
        self.modules = [nn.BatchNorm1d(input_dim, eps=self.epsilon, momentum=1.0 - self.momentum,
                                       affine=self.affine, dtype=dtype)]
        return self.modules

    def config(self):
        return {**super().config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.affine, "scale": self.affine}


LAYER_TYPES = {cls.__name__: cls for cls in (InputLayer, Flatten, Dense, Activation, Dropout, BatchNormalization)}


def layer_from_config(type_name: str, config: dict) -> Layer:
    if type_name not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {type_name!r} in saved model")
    config = dict(config)
    input_shape = config.pop("input_shape", None)
    if type_name == "InputLayer":
        return InputLayer(input_shape, name=config["name"])
    if type_name == "BatchNormalization":
        affine = config.pop("center", True)
        config.pop("scale", None)
        return BatchNormalization(center=affine, scale=affine, input_shape=input_shape, **config)
    return LAYER_TYPES[type_name](input_shape=input_shape, **config)
