"""scikit-learn estimators on fastnn's kernels: ``MLPClassifier`` and ``MLPRegressor``.

Same parameter names, defaults and fitted attributes as ``sklearn.neural_network``, plus
``dropout``, ``batch_norm`` and ``device``. They work in ``make_pipeline`` and ``GridSearchCV``.

Differences worth knowing: the optimizers are fastnn's (torch's formulas): SGD momentum is the
torch form, equal to scikit-learn's for a constant learning rate; Adam places epsilon as torch
does. ``solver='lbfgs'`` drives SciPy's L-BFGS-B with full-batch loss and gradient from fastnn's
kernels, in float64; 'adam' and 'sgd' train in float32.
"""
from __future__ import annotations

import warnings

import numpy as np

try:
    import scipy.optimize
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency
except ImportError as e:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fastnn.sklearn needs scikit-learn and scipy: pip install scikit-learn") from e

from fastnn import _C, nn, optim
from fastnn import cuda as _cuda

_ACTIVATIONS = {"identity": None, "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


class _BaseMLP(BaseEstimator):
    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, dropout=0.0, batch_norm=False, device="cpu"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.device = device

    # -- validation ---------------------------------------------------------------------------
    def _validate_params_(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if np.isscalar(sizes) else list(sizes)
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes}.")
        checks = [
            (self.activation in _ACTIVATIONS, f"activation: expected one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"),
            (self.solver in ("adam", "sgd", "lbfgs"), f"solver: expected 'adam', 'sgd' or 'lbfgs', got {self.solver!r}"),
            (self.learning_rate in ("constant", "invscaling", "adaptive"), f"learning_rate: expected 'constant', 'invscaling' or 'adaptive', got {self.learning_rate!r}"),
            (self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}"),
            (self.max_iter > 0, f"max_iter must be > 0, got {self.max_iter}"),
            (self.learning_rate_init > 0, f"learning_rate_init must be > 0, got {self.learning_rate_init}"),
            (0 <= self.momentum <= 1, f"momentum must be >= 0 and <= 1, got {self.momentum}"),
            (0 < self.validation_fraction < 1, f"validation_fraction must be >= 0 and < 1, got {self.validation_fraction}"),
            (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1, "beta_1 and beta_2 must be in [0, 1)"),
            (self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}"),
            (self.n_iter_no_change > 0, f"n_iter_no_change must be > 0, got {self.n_iter_no_change}"),
            (self.max_fun > 0, f"max_fun must be > 0, got {self.max_fun}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.batch_size == "auto" or (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1),
             f"batch_size must be 'auto' or a positive int, got {self.batch_size!r}"),
            (str(self.device).startswith(("cpu", "cuda")), f"device: expected 'cpu' or 'cuda', got {self.device!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.solver == "lbfgs" and self.dropout > 0:
            raise ValueError("dropout makes the objective random; it cannot be used with solver='lbfgs'")
        return [int(s) for s in sizes]

    # -- the network --------------------------------------------------------------------------
    def _build(self, n_features, n_outputs, rs):
        sizes = [n_features] + self._hidden + [n_outputs]
        act = _ACTIVATIONS[self.activation]
        factor = 2.0 if self.activation == "logistic" else 6.0
        layers, self._linears = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            hidden = i < len(sizes) - 2
            fused = act if hidden and not self.batch_norm else None
            lin = nn.Linear(fan_in, fan_out, activation=fused, dtype=self._dtype)
            bound = np.sqrt(factor / (fan_in + fan_out))  # scikit-learn's Glorot initialisation
            lin.weight.data.copy_(np.ascontiguousarray(rs.uniform(-bound, bound, (fan_in, fan_out)).T.astype(self._dtype)))
            lin.bias.data.copy_(rs.uniform(-bound, bound, fan_out).astype(self._dtype))
            layers.append(lin)
            self._linears.append(lin)
            if hidden:
                if self.batch_norm:
                    layers.append(nn.BatchNorm1d(fan_out, dtype=self._dtype))
                    if act:
                        layers.append({"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[act]())
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout, seed=int(rs.randint(2**31 - 1))))
        self._net = nn.Sequential(*layers)
        self._net.needs_input_grad = False
        if str(self.device) != "cpu":
            self._net.to(str(self.device))  # ValueError naming the device when it is not usable
        self._zero_weights = [_C.zeros(list(lin.weight.shape), self._dtype, str(self.device)) for lin in self._linears]

    def _device_loss_grad(self, out, y):
        """(loss tensor, d loss / d out, scale) for scikit-learn's output loss on a batch, on the
        device alone: the batch's mean loss is scale * loss."""
        kind, n = self._out_kind, out.shape[0]
        if kind == "softmax":
            loss, grad = _C.cross_entropy(out, y)
            return loss, grad, 1.0
        if kind == "logistic":  # sum over outputs, mean over samples, as scikit-learn's log loss
            return (_C.bce_with_logits_forward(out, y, None, None, "sum"),
                    _C.bce_with_logits_backward(out, y, 1.0 / n, None, None, "sum"), 1.0 / n)
        return _C.mse_forward(out, y), _C.mse_backward(out, y, 0.5), 0.5

    def _loss_grad(self, out, y):
        """Mean loss (a float) and d loss / d out for scikit-learn's output loss on a batch."""
        loss, grad, scale = self._device_loss_grad(out, y)
        return scale * loss.item(), grad

    def _weight_squares(self):
        """||W||^2 of each layer's weights, as 0-d tensors on the parameters' device (a sum-reduced
        squared error against zeros)."""
        return [_C.mse_forward(lin.weight.data, zeros, "sum") for lin, zeros in zip(self._linears, self._zero_weights)]

    def _l2_penalty(self, n, squares=None) -> float:
        """scikit-learn's penalty alpha/2 ||W||^2 / n on the weights (not the biases)."""
        if self.alpha == 0:
            return 0.0
        return 0.5 * self.alpha * sum(t.item() for t in (squares or self._weight_squares())) / n

    def _train_batch(self, xb, yb, graphed, full=True):
        """One optimizer step on a batch; returns its loss (with the L2 penalty). On a CUDA device,
        `graphed` (a dict kept for one fit call) holds the batch shape's captured step: the call's
        first batch runs eagerly (the optimizer makes its state), the next full-size one (`full`)
        is captured, and the rest of that size replay it."""
        n = len(xb)
        if self.alpha:  # read by the optimizer at each step, a replay's included
            self._optimizer.param_groups[0]["weight_decay"] = self.alpha / n
        step = graphed.get("step")
        if step is None and full and str(self.device) != "cpu" and graphed.get("eager_steps", 0) > 0:
            def device_step(x, y):
                out = self._net(x)
                loss, grad, scale = self._device_loss_grad(out, y)
                self._net.backward(grad)
                squares = self._weight_squares() if self.alpha else []  # before the update, as eagerly
                self._optimizer.step()
                self._optimizer.zero_grad()
                return loss, squares, scale

            step = graphed["step"] = _cuda._GraphedStep(device_step, (xb, yb), str(self.device))
        if step is not None and step.shapes == [xb.shape, yb.shape]:
            loss, squares, scale = step(xb, yb)
            return scale * loss.item() + self._l2_penalty(n, squares)
        out = self._net(self._dev(xb))
        value, grad = self._loss_grad(out, self._dev(yb))
        value += self._l2_penalty(n)  # of the weights before this step's update
        self._net.backward(grad, optimizer=self._optimizer)
        self._optimizer.zero_grad()
        graphed["eager_steps"] = graphed.get("eager_steps", 0) + 1
        return value

    def _dev(self, array):
        if str(self.device) == "cpu":
            return array
        return _C.from_dlpack(np.ascontiguousarray(array)).to(str(self.device))

    def _forward_eval(self, X):
        self._net.eval()
        out = self._net(self._dev(np.ascontiguousarray(X, dtype=self._dtype)))
        out = out.to("cpu").numpy() if str(self.device) != "cpu" else out.numpy()
        self._net.train()
        return out.astype(np.float64)  # scikit-learn's estimators predict in float64

    # -- fitting ------------------------------------------------------------------------------
    def _prepare(self, X, y, incremental):
        raise NotImplementedError

    def _fit(self, X, y, incremental=False):
        self._hidden = self._validate_params_()
        first_call = not hasattr(self, "_net")
        reset = not incremental and not (self.warm_start and not first_call)
        X, y_enc = self._prepare(X, y, reset=reset and not incremental or first_call)
        if reset or first_call:
            self._dtype = "float64" if self.solver == "lbfgs" else "float32"
            self._rs = check_random_state(self.random_state)
            self._build(X.shape[1], self._n_net_outputs, self._rs)
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
            self.t_ = 0
            self._optimizer = None
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if self._out_kind != "softmax":
            y_enc = np.ascontiguousarray(y_enc, dtype=self._dtype)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y_enc)
        else:
            self._fit_stochastic(X, y_enc, incremental)
        return self

    def _fit_lbfgs(self, X, y):
        flat = self._net._flat
        n = len(X)

        X, y = self._dev(X), self._dev(y)
        weight_slices = [slice(lin.weight.offset, lin.weight.offset + lin.weight.numel()) for lin in self._linears]

        def loss_grad(theta):
            flat.data.copy_(theta.astype(self._dtype))
            flat.zero_grad()  # pending zeros: the backward's GEMMs write the gradients, not add to them
            out = self._net(X)
            value, grad = self._loss_grad(out, y)
            self._net.backward(grad)
            g = np.array(flat.settled_grad().to("cpu").numpy(), dtype=np.float64)
            if self.alpha:  # scikit-learn's L2 on the weights: alpha/2 ||W||^2 / n and alpha W / n
                for sl in weight_slices:
                    w = theta[sl]
                    value += 0.5 * self.alpha * float(w @ w) / n
                    g[sl] += (self.alpha / n) * w
            self._last_loss = value
            return value, g

        # L-BFGS-B's vector updates (and w @ w above) call numpy's BLAS, whose idle worker threads
        # then spin for a while on the cores fastnn's next GEMMs need: OpenBLAS's took a core from
        # the forward pass (20000 MNIST digits, hidden (100,), 30 iterations on 2 cores: 6.1 s with
        # its threads, 3.9 s without). One BLAS thread does these vector operations as fast.
        with threadpool_limits(limits=1, user_api="blas"):
            res = scipy.optimize.minimize(
                loss_grad, np.array(flat.data.to("cpu").numpy(), dtype=np.float64), method="L-BFGS-B", jac=True,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
                callback=(lambda xk: print(f"L-BFGS-B iteration, loss = {self._last_loss:.8f}")) if self.verbose else None)
        flat.data.copy_(res.x.astype(self._dtype))
        self.n_iter_ = int(res.nit)
        self.loss_ = float(res.fun)
        self.loss_curve_ = getattr(self, "loss_curve_", []) or []
        self.loss_curve_.append(self.loss_)
        if res.status != 0:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={res.status}): "
                          f"{res.message}. Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning)

    def _make_optimizer(self):
        # scikit-learn's L2 gradient alpha W / n on the weights is the optimizer's weight decay in a
        # group of its own (set per batch, as n varies); biases and BatchNorm are not penalised.
        weights = [lin.weight for lin in self._linears]
        ids = {id(w) for w in weights}
        others = [p for p in self._net.parameters() if id(p) not in ids]
        groups = [{"params": weights, "weight_decay": 0.0}] + ([{"params": others, "weight_decay": 0.0}] if others else [])
        if self.alpha == 0:
            groups = [{"params": self._net.parameters(), "weight_decay": 0.0}]  # one flat launch
        if self.solver == "adam":
            return optim.Adam(groups, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        return optim.SGD(groups, lr=self.learning_rate_init, momentum=self.momentum,
                         nesterov=self.nesterovs_momentum and self.momentum > 0)

    def _fit_stochastic(self, X, y, incremental):
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
            self._lr = self.learning_rate_init
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        rs = self._rs
        X_val = y_val = None
        if self.early_stopping:
            stratify = y if (is_classifier(self) and self._out_kind == "softmax") else None
            X, X_val, y, y_val = train_test_split(X, y, random_state=rs, test_size=self.validation_fraction,
                                                  stratify=stratify)
            if len(X_val) < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your dataset.")
        n = len(X)
        batch_size = min(200, n) if self.batch_size == "auto" else int(np.clip(self.batch_size, 1, n))
        if self.batch_norm and n >= 2:
            batch_size = max(batch_size, 2)
        self.n_iter_ = getattr(self, "n_iter_", 0) if incremental else 0
        graphed = {}  # this call's captured step (CUDA only); dropped with the call
        for _ in range(1 if incremental else self.max_iter):
            idx = rs.permutation(n) if self.shuffle else np.arange(n)
            total = 0.0
            starts = list(range(0, n, batch_size))
            if self.batch_norm and len(starts) > 1 and n - starts[-1] == 1:
                starts.pop()  # BatchNorm needs two samples: a trailing single joins the previous batch
            for i, s in enumerate(starts):
                b = idx[s:(starts[i + 1] if i + 1 < len(starts) else n)]
                value = self._train_batch(X[b], y[b], graphed, full=len(b) == batch_size)
                total += value * len(b)
            self.n_iter_ += 1
            self.loss_ = total / n
            self.t_ += n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if not np.isfinite(self.loss_):
                raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                                 "and need to be preprocessed.")
            self._update_no_improvement(X_val, y_val)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                self._set_lr(self.learning_rate_init / (self.t_ + 1) ** self.power_t)
            if self._no_improvement_count > self.n_iter_no_change:
                if self.solver == "sgd" and self.learning_rate == "adaptive" and self._lr > 1e-6:
                    self._set_lr(self._lr / 5.0)
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"Setting learning rate to {self._lr:f}")
                    continue
                if self.verbose:
                    print(f"{'Validation score' if self.early_stopping else 'Training loss'} did not improve more "
                          f"than tol={self.tol} for {self.n_iter_no_change} consecutive epochs. Stopping.")
                break
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning)
        if self.early_stopping and getattr(self, "_best_state", None) is not None:
            self._net.load_state_dict(self._best_state)

    def _set_lr(self, lr):
        self._lr = lr
        for group in self._optimizer.param_groups:
            group["lr"] = lr

    def _update_no_improvement(self, X_val, y_val):
        if self.early_stopping:
            score = self._val_score(X_val, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            self._no_improvement_count = self._no_improvement_count + 1 if score < self.best_validation_score_ + self.tol else 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_state = self._net.state_dict()
        else:
            last = self.loss_curve_[-1]
            self._no_improvement_count = self._no_improvement_count + 1 if last > self.best_loss_ - self.tol else 0
            self.best_loss_ = min(self.best_loss_, last)

    # -- fitted attributes --------------------------------------------------------------------
    @property
    def coefs_(self):
        check_is_fitted(self, "_net")
        return [lin.weight.numpy().T.copy() for lin in self._linears]

    @property
    def intercepts_(self):
        check_is_fitted(self, "_net")
        return [lin.bias.numpy().copy() for lin in self._linears]

    @property
    def n_layers_(self):
        return len(self._linears) + 1

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.target_tags.multi_output = True  # multilabel classification, multi-target regression
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (softmax for several classes, logistic for two or multilabel)."""

    def _prepare(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32), multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # scikit-learn's DataConversionWarning for a column y
        check_classification_targets(y)
        if reset or not hasattr(self, "_label_binarizer"):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        elif not np.isin(np.unique(y), self.classes_).all() if y.ndim == 1 else False:
            raise ValueError(f"y contains labels not in classes_ {self.classes_}")
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        multilabel = type_of_target(y).startswith("multilabel")
        if multilabel:
            self._out_kind, self._n_net_outputs = "logistic", y.shape[1]
            return X, self._label_binarizer.transform(y)
        if len(self.classes_) <= 2:
            self._out_kind, self._n_net_outputs = "logistic", 1
            enc = self._label_binarizer.transform(y)
            if enc.shape[1] != 1:  # a single class seen so far
                enc = enc[:, :1]
            return X, enc
        self._out_kind, self._n_net_outputs = "softmax", len(self.classes_)
        return X, np.searchsorted(self.classes_, y).astype(np.int64)

    def fit(self, X, y):
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer().fit(classes)
            self.classes_ = self._label_binarizer.classes_
            first = True
        else:
            first = False
        if self.solver == "lbfgs":
            raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is not stochastic.")
        self._hidden = self._validate_params_()
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32), multi_output=True)
        if not np.isin(np.unique(y), self.classes_).all():
            raise ValueError(f"y contains labels not in classes_ {self.classes_}")
        if first:
            classes_saved = self.classes_
            self._prepare_from_classes(y)
            self._dtype = "float32"
            self._rs = check_random_state(self.random_state)
            self._build(X.shape[1], self._n_net_outputs, self._rs)
            self.classes_ = classes_saved
            self.loss_curve_, self._no_improvement_count, self.best_loss_, self.t_ = [], 0, np.inf, 0
            self._optimizer = None
        y_enc = self._encode(y)
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if self._out_kind != "softmax":
            y_enc = np.ascontiguousarray(y_enc, dtype=self._dtype)
        self._fit_stochastic(X, y_enc, incremental=True)
        return self

    def _prepare_from_classes(self, y):
        self.n_outputs_ = 1
        if len(self.classes_) <= 2:
            self._out_kind, self._n_net_outputs = "logistic", 1
        else:
            self._out_kind, self._n_net_outputs = "softmax", len(self.classes_)

    def _encode(self, y):
        if self._out_kind == "softmax":
            return np.searchsorted(self.classes_, y).astype(np.int64)
        enc = self._label_binarizer.transform(y)
        return enc[:, :1] if enc.shape[1] != self._n_net_outputs else enc

    def _val_score(self, X, y_enc):
        out = self._forward_eval(X)  # host arrays: validation data stays on the host
        if self._out_kind == "softmax":
            return float((out.argmax(axis=1) == y_enc).mean())
        return float(np.all((out > 0) == (y_enc > 0.5), axis=1).mean())

    def predict_proba(self, X):
        check_is_fitted(self, "_net")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        out = self._forward_eval(X)
        if self._out_kind == "softmax":
            return _C.softmax_forward(out).numpy()
        p = _C.activation_forward(out, "sigmoid").numpy()
        if self.n_outputs_ == 1 and len(self.classes_) <= 2:
            return np.hstack([1 - p, p])
        return p

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        check_is_fitted(self, "_net")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        out = self._forward_eval(X)
        if self._out_kind == "softmax":
            return self.classes_[out.argmax(axis=1)]
        if self.n_outputs_ == 1 and len(self.classes_) <= 2:
            return self.classes_[(out[:, 0] > 0).astype(int)] if len(self.classes_) == 2 else np.full(len(X), self.classes_[0])
        return self._label_binarizer.inverse_transform((out > 0).astype(int))

    def score(self, X, y, sample_weight=None):
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: identity output, squared loss."""

    def _prepare(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.n_outputs_ = y2.shape[1]
        self._out_kind, self._n_net_outputs = "identity", y2.shape[1]
        return X, y2

    def fit(self, X, y):
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        if self.solver == "lbfgs":
            raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is not stochastic.")
        return self._fit(X, y, incremental=True)

    def _val_score(self, X, y):
        return float(r2_score(y, self._forward_eval(X)))

    def predict(self, X):
        check_is_fitted(self, "_net")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        out = self._forward_eval(X)
        return out.ravel() if self._y_1d else out
