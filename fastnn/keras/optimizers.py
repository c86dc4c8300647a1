"""Keras-named optimizers with Keras's defaults, running fastnn's fused optimizer kernels."""
from __future__ import annotations

from fastnn import optim


class Optimizer:
    fastnn_class = None

    def __init__(self, learning_rate: float, **kwargs):
        if learning_rate <= 0:
            raise ValueError(f"learning_rate: expected a positive float, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.kwargs = kwargs

    def create(self, params):
        return self.fastnn_class(params, lr=self.learning_rate, **self.kwargs)

    def get_config(self):
        return {"name": type(self).__name__, "learning_rate": self.learning_rate, **self.kwargs}


class SGD(Optimizer):
    fastnn_class = optim.SGD

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate, momentum=momentum, nesterov=nesterov)


class Adam(Optimizer):
    fastnn_class = optim.Adam

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
        super().__init__(learning_rate, betas=(beta_1, beta_2), eps=epsilon, amsgrad=amsgrad)

    def get_config(self):
        b1, b2 = self.kwargs["betas"]
        return {"name": "Adam", "learning_rate": self.learning_rate, "beta_1": b1, "beta_2": b2,
                "epsilon": self.kwargs["eps"], "amsgrad": self.kwargs["amsgrad"]}


class RMSprop(Optimizer):
    fastnn_class = optim.RMSprop

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
        super().__init__(learning_rate, alpha=rho, momentum=momentum, eps=epsilon, centered=centered)

    def get_config(self):
        k = self.kwargs
        return {"name": "RMSprop", "learning_rate": self.learning_rate, "rho": k["alpha"],
                "momentum": k["momentum"], "epsilon": k["eps"], "centered": k["centered"]}


class Adagrad(Optimizer):
    fastnn_class = optim.Adagrad

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7):
        super().__init__(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=epsilon)

    def get_config(self):
        k = self.kwargs
        return {"name": "Adagrad", "learning_rate": self.learning_rate,
                "initial_accumulator_value": k["initial_accumulator_value"], "epsilon": k["eps"]}


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(identifier) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("name", "").lower() in _BY_NAME:
        cfg = dict(identifier)
        return _BY_NAME[cfg.pop("name").lower()](**cfg)
    raise ValueError(f"optimizer: expected 'sgd', 'adam', 'rmsprop', 'adagrad' or a fastnn.keras.optimizers object, got {identifier!r}")
