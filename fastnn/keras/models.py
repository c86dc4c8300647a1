"""Keras's Sequential model on fastnn's kernels: compile, fit, evaluate, predict, summary, save."""
from __future__ import annotations

import math

import numpy as np

from fastnn import _C, checkpoint, nn
from fastnn import cuda as _cuda
from fastnn import functional as F
from fastnn._random import init_generator
from fastnn.keras import callbacks as callbacks_module
from fastnn.keras import optimizers
from fastnn.keras.layers import Activation, Dense, Flatten, InputLayer, Layer, layer_from_config
from fastnn.keras.progress import ProgressBar

LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy", "mse")
_LOSS_ALIASES = {"mean_squared_error": "mse", "MSE": "mse"}
_EPS = 1e-7  # Keras clips probabilities to [eps, 1 - eps] before taking logs


def _host_array(data) -> np.ndarray:
    """numpy's view of data: a pandas DataFrame / Series, or a torch tensor on any device (one that
    requires grad too: fit only reads it), or anything np.asarray takes."""
    if hasattr(data, "to_numpy"):  # pandas
        data = data.to_numpy()
    elif hasattr(data, "detach") and hasattr(data, "cpu"):  # torch
        data = data.detach().cpu()
    return np.asarray(data)


def _features(x, name="x") -> np.ndarray:
    """Any real-valued array-like (numpy of any real dtype, pandas DataFrame, torch tensor, bools) as
    float32 (N, ...)."""
    x = _host_array(x)
    if x.dtype == object:
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected numeric data, got an object array that is not numeric") from e
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers or bools, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name}: expected an array of samples, got a scalar")
    if x.ndim == 1:
        x = x[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def _nonempty(x: np.ndarray, name: str) -> np.ndarray:
    """x, if it has a sample: fit and evaluate have nothing to learn from or score in an empty batch."""
    if len(x) == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty array of shape {x.shape}")
    return x


def _targets(y, name="y") -> np.ndarray:
    y = _host_array(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected numeric or bool labels, got dtype {y.dtype}")
    return y


class Sequential:
    """A stack of Keras-style layers trained by fastnn's kernels.

    A final softmax followed by categorical cross-entropy (or a final sigmoid followed by binary
    cross-entropy) trains on the logits through the fused, numerically stable loss kernel; the
    activation is applied only when predicting.
    """

    def __init__(self, layers=None, name: str = "sequential", dtype="float32", device: str = "cpu"):
        self.name = name
        self.device = str(device)
        self.dtype = np.dtype(dtype).name
        self.layers: list[Layer] = []
        self._net = None
        self._head = None
        self.optimizer = None
        self.loss = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.history = None
        for layer in layers or []:
            self.add(layer)

    # -- structure ----------------------------------------------------------------------------
    def add(self, layer: Layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer: expected a fastnn.keras layer, got {type(layer).__name__}")
        if self._net is not None:
            raise RuntimeError("add: the model is already built; add layers before compile/fit")
        self.layers.append(layer)

    def _declared_input_shape(self):
        for layer in self.layers:
            if layer.input_shape is not None:
                return layer.input_shape
        return None

    @property
    def built(self) -> bool:
        return self._net is not None

    def build(self, input_shape=None):
        if self.built:
            return
        shape = self._declared_input_shape() if input_shape is None else tuple(input_shape)
        if shape is None:
            raise ValueError("build: the input shape is unknown; give the first layer input_shape=(features,) "
                             "or call fit() first")
        shape = tuple(shape[1:]) if len(shape) > 1 and shape[0] is None else tuple(shape)
        if len(shape) > 1 and not any(isinstance(layer, Flatten) for layer in self.layers):
            raise ValueError(f"input_shape {shape}: Dense layers take flat features; add a Flatten() layer first")
        self._input_shape = shape
        dim = int(np.prod(shape))
        self._dims = []
        modules = []
        for layer in self.layers:
            self._dims.append(dim)
            modules.extend(layer.build(dim, self.dtype))
            dim = layer.output_dim(dim)
        self._output_dim = dim
        self._modules = modules
        self._net = None  # the trainable stack is made by _assemble once the loss is known
        self._assemble()

    def _assemble(self):
        """Chooses the head (fused softmax / sigmoid) for the loss, and makes the module stack.

        Idempotent: compile() may call it again with another loss.
        """
        modules = list(self._modules)
        last_layer = self.layers[-1] if self.layers else None
        final = getattr(last_layer, "activation", None) if isinstance(last_layer, (Dense, Activation)) else None
        fuse = ((final == "softmax" and self.loss in ("categorical_crossentropy", "sparse_categorical_crossentropy"))
                or (final == "sigmoid" and self.loss == "binary_crossentropy"))
        if isinstance(last_layer, Dense) and final == "sigmoid":
            modules[-1].activation = None if fuse else "sigmoid"  # sigmoid lives in the GEMM epilogue
        elif fuse:
            modules = modules[:-1]  # the trailing Softmax / Sigmoid module
        self._head = final if fuse else None
        net = nn.Sequential(*modules)
        net.needs_input_grad = False  # the data needs no gradient: the first GEMM's dX is skipped
        if self.device != "cpu":
            net.to(self.device)
        self._net = net

    def _dev(self, array):
        """A batch as the network's device wants it: numpy as is on the CPU, else copied over."""
        if self.device == "cpu":
            return array
        return _C.from_dlpack(np.ascontiguousarray(array)).to(self.device)

    @staticmethod
    def _host(t) -> np.ndarray:
        return t.to("cpu").numpy() if hasattr(t, "to") else np.asarray(t)

    def count_params(self) -> int:
        self.build()
        return sum(sum(layer.param_counts(d)) for layer, d in zip(self.layers, self._dims))

    def summary(self, print_fn=print):
        """Layer (type) / Output Shape / Param # table with total, trainable and non-trainable counts."""
        self.build()
        rows, trainable, frozen = [], 0, 0
        for layer, dim in zip(self.layers, self._dims):
            t, n = layer.param_counts(dim)
            trainable, frozen = trainable + t, frozen + n
            rows.append((f"{layer.name} ({type(layer).__name__})", f"(None, {layer.output_dim(dim)})", f"{t + n:,}"))
        w = (max(29, max((len(r[0]) for r in rows), default=0) + 2), 26, 10)
        line = "_" * sum(w)
        out = [f'Model: "{self.name}"', line,
               f"{'Layer (type)':<{w[0]}}{'Output Shape':<{w[1]}}{'Param #':>{w[2]}}", "=" * sum(w)]
        for i, (a, b, c) in enumerate(rows):
            out.append(f"{a:<{w[0]}}{b:<{w[1]}}{c:>{w[2]}}")
            out.append(line if i == len(rows) - 1 else "")
        out[-1] = "=" * sum(w)
        out += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {frozen:,}", line]
        print_fn("\n".join(out))

    # -- compile and train -------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, jit_compile="auto"):
        """As Keras's. ``jit_compile`` ("auto", True or False): on a CUDA device, capture the training
        step (forward, loss, backward, optimizer update) in a CUDA graph and replay it for every
        full-size batch (see fastnn.cuda); False runs every step eagerly. Ignored on the CPU."""
        if jit_compile not in ("auto", True, False):
            raise ValueError(f"jit_compile: expected 'auto', True or False, got {jit_compile!r}")
        self.jit_compile = jit_compile
        self._graphed_step = None
        loss = _LOSS_ALIASES.get(loss, loss)
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        metrics = list(metrics or [])
        for m in metrics:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"metrics: only 'accuracy' is supported, got {m!r}")
        self.loss, self.metrics = loss, metrics
        self._optimizer_spec = optimizers.get(optimizer)
        self.optimizer = None
        if self._declared_input_shape() is not None:
            self.build()
            self._assemble()
            self.optimizer = self._optimizer_spec.create(self._net.parameters())
        return self

    def _ensure_ready(self, x: np.ndarray):
        if self.loss is None:
            raise RuntimeError("the model must be compiled before fit/evaluate (model.compile(...))")
        if not self.built:
            self.build(x.shape[1:])
        if self.optimizer is None:
            self._assemble()
            self.optimizer = self._optimizer_spec.create(self._net.parameters())

    def _prepare_x(self, x, name="x"):
        x = _features(x, name)
        if self.built:
            expected = int(np.prod(self._input_shape))
            if int(np.prod(x.shape[1:])) != expected:
                raise ValueError(f"{name}: expected samples of shape {self._input_shape}, got {x.shape[1:]}")
        # the width spelled out: reshape cannot infer -1 for an empty batch
        return x.reshape(len(x), int(np.prod(x.shape[1:]))) if x.ndim > 2 else x

    def _prepare_y(self, y, n: int, name="y"):
        """Labels in the form the loss kernel takes: int64 class indices, or float targets."""
        y = _targets(y, name)
        if y.ndim == 0:
            raise ValueError(f"{name}: expected an array of labels, got a scalar")
        if len(y) != n:
            raise ValueError(f"{name}: expected {n} labels (one per sample), got {len(y)}")
        if self.loss == "sparse_categorical_crossentropy":
            y = y.reshape(n, -1)
            if y.shape[1] != 1 or (y.size and (np.any(y < 0) or np.any(y != np.round(y)))):
                raise ValueError(f"{name}: sparse_categorical_crossentropy takes one integer class per sample")
            labels = y[:, 0].astype(np.int64)
            if labels.size and labels.max() >= self._output_dim:
                raise ValueError(f"{name}: label {labels.max()} out of range for {self._output_dim} outputs")
            return labels
        if self.loss == "categorical_crossentropy":
            y = y.reshape(n, -1).astype(np.float32)
            if y.shape[1] != self._output_dim:
                raise ValueError(f"{name}: expected one-hot rows of width {self._output_dim}, got {y.shape[1]} "
                                 "(use to_categorical, or sparse_categorical_crossentropy for integer labels)")
            hard = np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)
            return y.argmax(axis=1).astype(np.int64) if hard else y
        y = y.reshape(n, -1).astype(np.float32)
        if y.shape[1] != self._output_dim:
            raise ValueError(f"{name}: expected targets of width {self._output_dim}, got {y.shape[1]}")
        return y

    def _loss_and_grad(self, out, y, need_grad=True):
        """(mean loss as float, d loss / d out) for a batch of network outputs."""
        device_loss = self._device_loss(y.dtype, need_grad)
        if device_loss is not None:
            value, grad = device_loss(out, y)
            return value.item(), grad
        loss = self.loss
        if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy") and self._head == "softmax":
            # soft targets: -sum(y * log_softmax(z)) / N, gradient (softmax(z) - y) / N for rows summing to 1
            y = self._host(y)
            logp = self._host(F.log_softmax(out))
            n = len(y)
            value = float(-(y * logp).sum() / n)
            grad = (np.exp(logp) * y.sum(axis=1, keepdims=True) - y) / n
            return value, self._dev(grad.astype(out.dtype))
        # probabilities out of a layer the loss cannot fuse with: Keras's clipped formulas
        p = np.clip(self._host(out).astype(np.float64), _EPS, 1 - _EPS)
        y = self._host(y)
        n = len(p)
        if loss == "binary_crossentropy":
            value = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
            grad = (-(y / p) + (1 - y) / (1 - p)) / y.size
        else:
            if y.dtype == np.int64:
                y = np.eye(self._output_dim, dtype=np.float32)[y]
            value = float(-(y * np.log(p)).sum() / n)
            grad = -(y / p) / n
        return value, self._dev(np.ascontiguousarray(grad, dtype=self.dtype))

    def _device_loss(self, y_dtype, need_grad=True):
        """``fn(out, y) -> (loss tensor, d loss / d out or None)`` computed on the device alone, or
        None when this loss needs the host (soft targets, probabilities out of an unfused head):
        such steps cannot be captured in a CUDA graph. The fused cross-entropy always gives the
        gradient; the others only with ``need_grad``."""
        loss = self.loss
        if loss in ("categorical_crossentropy", "sparse_categorical_crossentropy") and self._head == "softmax":
            return _C.cross_entropy if np.dtype(y_dtype) == np.int64 else None
        if loss == "binary_crossentropy" and self._head == "sigmoid":
            forward, backward = _C.bce_with_logits_forward, _C.bce_with_logits_backward
        elif loss == "mse":
            forward, backward = _C.mse_forward, _C.mse_backward
        else:
            return None
        return lambda out, y: (forward(out, y), backward(out, y, 1.0) if need_grad else None)

    def _train_batch(self, xb, yb):
        """One training step on a batch; returns (network output, mean loss as a float).

        On a CUDA device, full-size batches replay a captured graph of the whole step: a model's
        first step runs eagerly (the optimizer creates its state), the next one is captured. A batch
        of another shape (the last one of an epoch) runs eagerly.
        """
        step = getattr(self, "_graphed_step", None)
        key = (id(self._net), id(self.optimizer), xb.shape, yb.shape, yb.dtype)
        if step is not None and step.key == key:
            out, loss = step(xb, yb)
            return out, loss.item()
        device_loss = self._device_loss(yb.dtype)
        if (self.device != "cpu" and getattr(self, "jit_compile", "auto") is not False and device_loss
                and getattr(self, "_steps_done", 0) > 0 and (step is None or step.key[:2] != key[:2]
                                                              or step.uses < 2)):
            # a second shape replaces the graph only if the first one was barely used (an epoch
            # whose last batch differs keeps the graph of its full batches)
            if step is not None:
                step.graph.reset()

            def device_step(x, y):
                out = self._net(x)
                loss, grad = device_loss(out, y)
                self._net.backward(grad)
                self.optimizer.step()
                self.optimizer.zero_grad()
                return out, loss

            self._graphed_step = _cuda._GraphedStep(device_step, (xb, yb), self.device)
            self._graphed_step.key = key
            out, loss = self._graphed_step(xb, yb)
            return out, loss.item()
        out = self._net(self._dev(xb))
        value, grad = self._loss_and_grad(out, self._dev(yb))
        self._net.backward(grad, optimizer=self.optimizer)
        self.optimizer.zero_grad()
        self._steps_done = getattr(self, "_steps_done", 0) + 1
        return out, value

    def _correct(self, out, y) -> int:
        o = self._host(out)
        if o.shape[1] == 1 or self.loss == "binary_crossentropy":
            threshold = 0.0 if self._head == "sigmoid" else 0.5
            return int(((o > threshold) == (y > 0.5)).sum()) // max(o.shape[1], 1)
        truth = y if y.ndim == 1 else y.argmax(axis=1)
        return int((o.argmax(axis=1) == truth).sum())

    def _batches(self, n, batch_size, order):
        """Batch index arrays; a trailing batch of one joins the previous one (BatchNorm needs two)."""
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        return [order[s:(starts[i + 1] if i + 1 < len(starts) else n)] for i, s in enumerate(starts)]

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Trains for ``epochs``; returns a History whose ``.history`` has one value per epoch and metric."""
        if batch_size is None:
            batch_size = 32
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split: expected a float in [0, 1), got {validation_split!r}")
        x = _nonempty(self._prepare_x(x), "x")
        self._ensure_ready(x)
        y = self._prepare_y(y, len(x))
        if validation_data is not None:
            vx, vy = validation_data[0], validation_data[1]
            vx = _nonempty(self._prepare_x(vx, "validation_data[0]"), "validation_data[0]")
            vy = self._prepare_y(vy, len(vx), "validation_data[1]")
        elif validation_split > 0:
            split_at = int(len(x) * (1.0 - validation_split))  # Keras takes the *last* samples
            x, vx, y, vy = x[:split_at], x[split_at:], y[:split_at], y[split_at:]
        else:
            vx = vy = None
        if len(x) == 0:
            raise ValueError("x: no training samples (after validation_split)")

        history = callbacks_module.History()
        cbs = [history] + list(callbacks or [])
        for cb in cbs:
            cb.set_model(self)
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin()
        g = init_generator()
        metric = self.metrics[0] if self.metrics else None
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            order = g.permutation(len(x)) if shuffle else np.arange(len(x))
            batches = self._batches(len(x), int(batch_size), order)
            bar = ProgressBar(len(batches), epoch, epochs, verbose)
            self._net.train()
            total_loss, seen, correct = 0.0, 0, 0
            logs = {}
            for step, idx in enumerate(batches, 1):
                xb, yb = x[idx], y[idx]
                out, value = self._train_batch(xb, yb)
                total_loss += value * len(idx)
                seen += len(idx)
                logs = {"loss": total_loss / seen}
                if metric:
                    correct += self._correct(out, yb)
                    logs[metric] = correct / seen
                bar.update(step, value, logs)
                for cb in cbs:
                    cb.on_train_batch_end(step - 1, {"loss": value})
            if not math.isfinite(logs.get("loss", 0.0)):
                logs["loss"] = float("nan")
            if vx is not None and len(vx):
                val = self._evaluate_arrays(vx, vy, batch_size)
                logs["val_loss"] = val[0]
                if metric:
                    logs[f"val_{metric}"] = val[1]
            bar.finish(logs)
            for cb in cbs:
                cb.on_epoch_end(epoch, dict(logs))
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        self.history = history
        return history

    # -- inference ----------------------------------------------------------------------------
    def _forward_eval(self, x, batch_size):
        self._net.eval()
        outs = []
        for s in range(0, len(x), max(int(batch_size), 1)):
            outs.append(np.array(self._host(self._net(self._dev(x[s:s + batch_size]))), copy=True))
        self._net.train()
        if not outs:
            return np.zeros((0, self._output_dim), self.dtype)
        return np.concatenate(outs)

    def _evaluate_arrays(self, x, y, batch_size):
        out = self._forward_eval(x, max(batch_size, 256))
        value, _ = self._loss_and_grad(self._dev(out), self._dev(y), need_grad=False)
        result = [value]
        if self.metrics:
            result.append(self._correct(out, y) / len(x))
        return result

    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, return_dict=False):
        """The loss (and metrics) on ``x, y`` in inference mode: ``loss`` or ``[loss, accuracy]``."""
        x = _nonempty(self._prepare_x(x), "x")
        self._ensure_ready(x)
        y = self._prepare_y(y, len(x))
        result = self._evaluate_arrays(x, y, batch_size)
        names = ["loss"] + self.metrics
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in zip(names, result)))
        if return_dict:
            return dict(zip(names, result))
        return result if len(result) > 1 else result[0]

    def predict(self, x, batch_size=32, verbose=0) -> np.ndarray:
        """Outputs in inference mode, with the final activation applied (probabilities for softmax)."""
        x = self._prepare_x(x)
        if not self.built:
            self.build(x.shape[1:])
        if self._net is None:
            self._assemble()
        out = self._forward_eval(x, max(batch_size, 256))
        if self._head == "softmax":
            out = F.softmax(out).numpy()
        elif self._head == "sigmoid":
            out = _C.activation_forward(out, "sigmoid").numpy()
        return out

    # -- weights and saving -------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Keras's layout: Dense kernels as (in, out), then bias; BatchNorm gamma, beta, moving mean,
        var. Host copies, whatever the model's device."""
        self.build()

        def copy(t):
            return np.array(self._host(getattr(t, "data", t)), copy=True)

        weights = []
        for module in self._modules:
            if isinstance(module, nn.Linear):
                weights.append(np.ascontiguousarray(copy(module.weight).T))
                if module.bias is not None:
                    weights.append(copy(module.bias))
            elif isinstance(module, nn.BatchNorm1d):
                if module.affine:
                    weights += [copy(module.weight), copy(module.bias)]
                weights += [copy(module.running_mean), copy(module.running_var)]
        return weights

    def set_weights(self, weights):
        self.build()
        weights = list(weights)
        expected = len(self.get_weights())
        if len(weights) != expected:
            raise ValueError(f"weights: expected {expected} arrays, got {len(weights)}")
        it = iter(weights)

        def put(dst, value, transpose=False):
            arr = np.asarray(value, dtype=self.dtype)
            arr = arr.T if transpose else arr
            if arr.shape != tuple(dst.shape):
                raise ValueError(f"weights: expected shape {tuple(dst.shape)}, got {arr.shape}")
            dst.copy_(np.ascontiguousarray(arr))

        for module in self._modules:
            if isinstance(module, nn.Linear):
                put(module.weight.data, next(it), transpose=True)
                if module.bias is not None:
                    put(module.bias.data, next(it))
            elif isinstance(module, nn.BatchNorm1d):
                if module.affine:
                    put(module.weight.data, next(it))
                    put(module.bias.data, next(it))
                put(module.running_mean, next(it))
                put(module.running_var, next(it))

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "device": self.device,
                "input_shape": list(self._input_shape) if self.built else None,
                "layers": [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]}

    def save(self, filepath, include_optimizer: bool = True):
        """Architecture, weights and (by default) optimizer state in one .npz, written atomically."""
        self.build()
        arrays = {f"model/{k}": v for k, v in self._net.state_dict().items()}
        config = {"class": "Sequential", "model": self.get_config(), "compile": None}
        if self.loss is not None:
            config["compile"] = {"optimizer": self._optimizer_spec.get_config(), "loss": self.loss,
                                 "metrics": self.metrics}
        if include_optimizer and self.optimizer is not None:
            opt_state = self.optimizer.state_dict()
            for idx, entries in opt_state["state"].items():
                for name, value in entries.items():
                    arrays[f"optimizer/{idx}/{name}"] = np.asarray(value)
            config["optimizer_param_groups"] = _jsonable(opt_state["param_groups"])
        return checkpoint.save(filepath, arrays, config)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_model(filepath) -> Sequential:
    """A model saved with :meth:`Sequential.save`, compiled again when it was compiled."""
    arrays, config = checkpoint.load(filepath)
    if config.get("class") != "Sequential":
        raise checkpoint.CheckpointError(f"{filepath}: not a fastnn.keras model checkpoint")
    mc = config["model"]
    model = Sequential([layer_from_config(entry["type"], entry["config"]) for entry in mc["layers"]],
                       name=mc["name"], dtype=mc["dtype"], device=mc.get("device", "cpu"))
    compiled = config.get("compile")
    if compiled:
        model.loss = compiled["loss"]
    if mc.get("input_shape") is not None:
        model.build(mc["input_shape"])
    model._net.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
    if compiled:
        model.compile(optimizers.get(compiled["optimizer"]), compiled["loss"], compiled["metrics"])
        model._ensure_ready(np.zeros((0,) + tuple(model._input_shape), np.float32))
        if "optimizer_param_groups" in config:
            state: dict = {}
            for key, value in arrays.items():
                if key.startswith("optimizer/"):
                    _, idx, name = key.split("/", 2)
                    state.setdefault(int(idx), {})[name] = value
            model.optimizer.load_state_dict({"state": state, "param_groups": config["optimizer_param_groups"]})
    return model
