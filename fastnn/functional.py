"""fastnn's ops as forward/backward pairs over Tensors (numpy arrays and torch CPU tensors work too).

Every backward takes what its forward returned plus the incoming gradient, and returns the
gradients of the forward's inputs. The layers in :mod:`fastnn.nn` are built from these.
"""
from __future__ import annotations

from fastnn import _C
from fastnn._random import next_dropout_key

# ---------------------------------------------------------------------------------------------
# Linear: y = act(x W^T + b), with the bias and activation fused into the GEMM epilogue


def linear(x, weight, bias=None, activation: str | None = None, out=None):
    """``act(x @ weight.T + bias)``; ``weight`` is (out_features, in_features) as in torch."""
    return _C.linear_forward(x, weight, bias, activation or "none", out)


def linear_backward(x, weight, dy, y=None, activation: str | None = None, *, need_dx=True,
                    need_dbias=True, dx=None, dweight=None, dbias=None, accumulate=False):
    """(dx, dweight, dbias) of :func:`linear`; ``y`` (its output) is needed when ``activation`` is set."""
    return _C.linear_backward(x, weight, dy, y, activation or "none", dx=dx, dweight=dweight,
                              dbias=dbias, need_dx=need_dx, need_dbias=need_dbias, accumulate=accumulate)


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, alpha=1.0, beta=0.0):
    """``alpha * op(a) @ op(b) + beta * out`` with op = transpose where asked."""
    return _C.gemm(a, b, out, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)


# ---------------------------------------------------------------------------------------------
# Activations: backward is computed from the forward's output y


def relu(x, out=None):
    return _C.activation_forward(x, "relu", out)


def relu_backward(y, dy, out=None):
    return _C.activation_backward(y, dy, "relu", out)


def tanh(x, out=None):
    return _C.activation_forward(x, "tanh", out)


def tanh_backward(y, dy, out=None):
    return _C.activation_backward(y, dy, "tanh", out)


def sigmoid(x, out=None):
    return _C.activation_forward(x, "sigmoid", out)


def sigmoid_backward(y, dy, out=None):
    return _C.activation_backward(y, dy, "sigmoid", out)


def softmax(x, out=None):
    """Softmax over the last dimension."""
    return _C.softmax_forward(x, False, out)


def softmax_backward(y, dy, out=None):
    return _C.softmax_backward(y, dy, False, out)


def log_softmax(x, out=None):
    """Log-softmax over the last dimension."""
    return _C.softmax_forward(x, True, out)


def log_softmax_backward(y, dy, out=None):
    return _C.softmax_backward(y, dy, True, out)


# ---------------------------------------------------------------------------------------------
# Dropout: the mask is a pure function of (seed, offset, element index), so backward regenerates it


def dropout(x, p: float = 0.5, training: bool = True, key: tuple | None = None,
            activation: str | None = None):
    """Inverted dropout of ``act(x)``. Returns ``(y, key)``; pass ``key`` to :func:`dropout_backward`.

    ``key`` is ``(seed, offset)``; by default the next one from :func:`fastnn.manual_seed`'s state.
    ``training=False`` or ``p=0`` returns ``act(x)`` exactly.
    """
    if not training:
        return (x if not activation or activation == "none" else _C.activation_forward(x, activation)), None
    seed, offset = key if key is not None else next_dropout_key()
    return _C.dropout_forward(x, p, seed, offset, activation or "none"), (seed, offset)


def dropout_backward(dy, p: float, key: tuple | None, y=None, activation: str | None = None):
    """Gradient of :func:`dropout`; ``y`` (its output) is needed for a fused activation."""
    if key is None:  # eval mode
        return dy if not activation or activation == "none" else _C.activation_backward(y, dy, activation)
    seed, offset = key
    return _C.dropout_backward(dy, p, seed, offset, y, activation or "none")


def dropout_mask(shape, p: float, key: tuple):
    """The boolean keep-mask that :func:`dropout` with this ``key`` applies."""
    seed, offset = key
    return _C.dropout_mask(list(shape), p, seed, offset)


# ---------------------------------------------------------------------------------------------
# Batch normalisation over (N, C)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum: float = 0.1, eps: float = 1e-5):
    """Returns ``(y, saved)``; ``saved`` = (mean, invstd) for :func:`batch_norm_backward`.

    In training mode the running statistics (when given) are updated in place, as torch does.
    """
    y, mean, invstd = _C.batchnorm_forward(x, weight, bias, running_mean, running_var, training,
                                           momentum, eps)
    return y, (mean, invstd)


def batch_norm_backward(x, dy, weight, saved, training=True, *, dweight=None, dbias=None,
                        accumulate=False):
    """(dx, dweight, dbias) of :func:`batch_norm`."""
    mean, invstd = saved
    return _C.batchnorm_backward(x, dy, weight, mean, invstd, training, dweight=dweight,
                                 dbias=dbias, accumulate=accumulate)


# ---------------------------------------------------------------------------------------------
# Losses


def cross_entropy(logits, target, weight=None, reduction="mean", ignore_index=-100):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,)."""
    return _C.cross_entropy_forward(logits, target, weight, reduction, ignore_index)


def cross_entropy_backward(logits, target, dloss=1.0, weight=None, reduction="mean", ignore_index=-100):
    return _C.cross_entropy_backward(logits, target, dloss, weight, reduction, ignore_index)


def cross_entropy_with_grad(logits, target, weight=None, reduction="mean", ignore_index=-100):
    """Fused forward and backward in one pass: ``(loss, dlogits)``."""
    return _C.cross_entropy(logits, target, weight, reduction, ignore_index)


def mse_loss(input, target, reduction="mean"):
    return _C.mse_forward(input, target, reduction)


def mse_loss_backward(input, target, dloss=1.0, reduction="mean"):
    return _C.mse_backward(input, target, dloss, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    return _C.bce_with_logits_forward(input, target, weight, pos_weight, reduction)


def binary_cross_entropy_with_logits_backward(input, target, dloss=1.0, weight=None, pos_weight=None,
                                              reduction="mean"):
    return _C.bce_with_logits_backward(input, target, dloss, weight, pos_weight, reduction)
