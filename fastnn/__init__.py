"""fastnn: hand-written C++/CUDA kernels that train multilayer perceptrons, checked against torch autograd."""

__version__ = "0.1.0"

try:
    from fastnn import _C
except ImportError as e:  # the source tree shadows the installed package, or the build is missing
    import os as _os

    raise ImportError(
        f"fastnn's compiled extension (_C) could not be imported from {_os.path.dirname(__file__)}: {e}. "
        "If this is the source checkout, install it (pip install .) and run from another directory, "
        "or build in place with: pip install --no-build-isolation -e .") from e
from fastnn._C import Tensor, empty, zeros, from_dlpack, get_num_threads, set_num_threads
from fastnn._tensor import tensor, as_tensor
from fastnn._random import manual_seed
from fastnn import cuda, functional, nn  # noqa: E402  (after _C: they build on it)


def build_info() -> dict:
    """Version, compiler, run-time CPU ISA, worker threads, and whether CUDA is built and usable."""
    return _C.build_info()


__all__ = [
    "Tensor", "tensor", "as_tensor", "empty", "zeros", "from_dlpack", "manual_seed", "build_info",
    "get_num_threads", "set_num_threads", "__version__",
]
