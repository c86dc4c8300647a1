"""Shared helpers for the parity tests: tolerances and conversions between fastnn, numpy and torch."""
import numpy as np
import torch

# Sizes that are no multiple of any tile size (GEMM micro-tiles are 6x64 / 6x32, vectors 8-16 wide).
ODD_SIZES = [1, 7, 33, 1000]

# float64 results must match torch to ~1e-10 relative; float32 to ~1e-5. Both relative to the
# largest magnitude of the expected result, which is what accumulated rounding error scales with.
RTOL = {"float32": 1e-5, "float64": 1e-10}


def to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, dtype, rtol=None, what="", scale=None):
    """|actual - expected| <= rtol * (|expected| + scale), elementwise.

    ``scale`` defaults to max|expected|. Pass the magnitude the error really scales with where that
    differs, e.g. max|dy| for a gradient dy * f'(x) whose f' is ill-conditioned (1 - tanh^2 near 1).
    """
    a = to_numpy(actual).astype(np.float64)
    e = to_numpy(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    rtol = RTOL[str(dtype)] if rtol is None else rtol
    if e.size == 0:
        return
    if scale is None:
        scale = np.max(np.abs(e)) if np.isfinite(e).all() else 1.0
    err = np.abs(a - e)
    bound = rtol * (np.abs(e) + max(scale, 1e-30))
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), a.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {a.size} elements differ beyond rtol={rtol}; worst at {i}: "
            f"actual {a[i]!r} expected {e[i]!r} (max|expected| {scale:.3g})")


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def torch_of(a, requires_grad=False):
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if requires_grad else t
