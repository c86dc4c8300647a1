"""CUDA device helpers and CUDA graphs of whole training steps.

A training step of an MLP on a GPU is a few dozen short kernels. Launched one by one from Python,
each costs microseconds of host time, often more than the kernel runs; captured once in a CUDA
graph and replayed, the whole step is one launch. The API is torch's::

    g = fastnn.cuda.CUDAGraph()
    for _ in range(2):                      # warm up eagerly: optimizer state must exist
        train_step(static_x, static_y)
    with fastnn.cuda.graph(g):
        loss = train_step(static_x, static_y)
    for x, y in batches:
        static_x.copy_(x); static_y.copy_(y)  # same shapes, same tensors
        g.replay()
        print(float(loss.to("cpu").numpy()))  # the replay's loss

Unlike a raw torch graph, a replayed fastnn step is the same step an eager call would have made:
``nn.Dropout`` draws fresh masks (the very masks an eager run would), optimizers advance their
step count and read the current learning rate (schedulers work), and ``BatchNorm1d`` counts
``num_batches_tracked``. Those per-step scalars are computed on the host by the eager code and
copied to the device before each replay, so a replayed training run matches an eager one bit for
bit. The first replay after a capture runs the captured step itself (capturing runs nothing).

What a capture records is fixed: shapes, tensors, dropout probabilities, optimizer flags. Inside
a capture, copies to or from the host and synchronisations raise ``ValueError``; optimizer state
must already exist (warm up first); ``BatchNorm1d(momentum=None)`` is refused; cross-entropy does
not check labels on the host, so a label out of range gives a NaN loss instead of an exception.
"""
from __future__ import annotations

import threading

import numpy as np

from fastnn import _C

__all__ = ["is_available", "device_count", "synchronize", "CUDAGraph", "graph", "is_current_stream_capturing"]


def is_available() -> bool:
    """Whether this build has CUDA and a device is usable (the CPU emulation counts)."""
    return bool(_C.build_info()["cuda_available"])


def device_count() -> int:
    return int(_C.build_info().get("cuda_device_count", 1 if is_available() else 0))


def synchronize(device="cuda") -> None:
    """Waits until all work queued on ``device`` has finished."""
    _C.cuda_synchronize(device)


def is_current_stream_capturing() -> bool:
    return _C.cuda_capturing()


class _GraphState(threading.local):
    # class defaults: a thread that never captured finds these without the AttributeError that
    # getattr(local, name, None) raises and swallows inside, several times a training step
    capturing: "CUDAGraph | None" = None
    preparing: "CUDAGraph | None" = None


_local = _GraphState()


def _capturing() -> "CUDAGraph | None":
    """The graph this thread is capturing, if any."""
    return _local.capturing


def _preparing() -> "CUDAGraph | None":
    """The graph whose next replay this thread is preparing (its per-step scalars), if any."""
    return _local.preparing


class CUDAGraph:
    """One captured step, replayed with :meth:`replay` (torch.cuda.CUDAGraph's interface)."""

    def __init__(self):
        self._graph = _C.CudaGraph()
        self._before_replay = []  # per-step scalar producers, in capture order
        self._slots = {}          # id(owner) -> the owner's slots, in the order it took them
        self._owners = []         # keeps each owner alive while its slots are in use
        self._first_replay = True

    # -- capture --------------------------------------------------------------------------------
    def capture_begin(self, device="cuda") -> None:
        if _capturing() is not None:
            raise ValueError("a CUDA graph is already being captured on this thread")
        self._graph.capture_begin(device)
        self._before_replay, self._slots, self._owners = [], {}, []
        _local.capturing = self

    def capture_end(self) -> None:
        _local.capturing = None
        self._graph.capture_end()
        self._first_replay = True

    def replay(self) -> None:
        """Runs the captured step once more, with this step's per-step scalars. Asynchronous."""
        if not self._graph.captured:
            raise ValueError("replay(): nothing captured yet (capture a step with fastnn.cuda.graph(g))")
        if not self._first_replay:  # the first replay runs the step whose scalars the capture stored
            _local.preparing = self
            try:
                for produce in self._before_replay:
                    produce()
            finally:
                _local.preparing = None
        self._graph.replay()
        self._first_replay = False

    def reset(self) -> None:
        """Drops the captured graph and gives its memory pool back."""
        self._graph.reset()
        self._before_replay, self._slots, self._owners = [], {}, []

    @property
    def num_nodes(self) -> int:
        """Kernels, copies and fills in the captured graph."""
        return self._graph.num_nodes

    # -- per-step scalars (used by fastnn's layers and optimizers) -------------------------------
    def _new_slot(self, owner):
        slot = self._graph.new_slot()
        if id(owner) not in self._slots:
            self._slots[id(owner)] = []
            self._owners.append(owner)
        self._slots[id(owner)].append(slot)
        return slot

    def _slot(self, owner, index: int):
        return self._slots[id(owner)][index]

    def _on_replay(self, produce) -> None:
        """``produce()`` stores the per-step scalars of every replay after the first."""
        self._before_replay.append(produce)


class graph:
    """``with fastnn.cuda.graph(g):`` captures the fastnn work of the block into ``g``.

    If the block raises, the capture is abandoned (``g`` holds nothing) and the error propagates.
    """

    def __init__(self, cuda_graph: CUDAGraph, device="cuda"):
        if not isinstance(cuda_graph, CUDAGraph):
            raise TypeError(f"cuda_graph: expected a fastnn.cuda.CUDAGraph, got {type(cuda_graph).__name__}")
        self.cuda_graph, self.device = cuda_graph, device

    def __enter__(self):
        self.cuda_graph.capture_begin(self.device)
        return self.cuda_graph

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.cuda_graph.capture_end()
            return False
        try:
            self.cuda_graph.capture_end()
        except Exception:  # noqa: BLE001  the block's own error is the one to report
            pass
        self.cuda_graph.reset()
        return False


class _GraphedStep:
    """A training step captured once and replayed per batch (what Keras ``fit`` and the
    scikit-learn estimators use on a CUDA device).

    ``step(*inputs)`` runs the whole device step and returns device tensors; it is captured with
    inputs copied from ``arrays`` into tensors of the step's own. Calling the object with new host
    arrays of the same shapes copies them in, replays, and returns the captured outputs, which now
    hold this batch's values. ``uses`` counts replays.
    """

    def __init__(self, step, arrays, device):
        self.inputs = [_C.from_dlpack(np.ascontiguousarray(a)).to(device) for a in arrays]
        self.shapes = [tuple(a.shape) for a in arrays]
        self.graph = CUDAGraph()
        self.uses = 0
        with graph(self.graph, device):
            self.outputs = step(*self.inputs)

    def __call__(self, *arrays):
        for t, a in zip(self.inputs, arrays):
            t.copy_(np.ascontiguousarray(a))
        self.graph.replay()
        self.uses += 1
        return self.outputs
