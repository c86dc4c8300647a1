"""fastnn's global random state: one seed for weight initialisation and dropout.

Dropout masks are a pure function of (seed, offset, element index) through Philox4x32-10, so the
dropout state is a seed and a counter of calls. Weight initialisation draws from numpy Generators
seeded from the same seed and a separate counter, so adding a layer never shifts dropout masks.
"""
import numpy as np

_state = {"seed": 0x5EED, "dropout_calls": 0, "init_calls": 0}


def manual_seed(seed: int) -> None:
    """Make every following weight initialisation and dropout mask reproducible."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    _state["seed"] = int(seed) & 0xFFFFFFFFFFFFFFFF
    _state["dropout_calls"] = 0
    _state["init_calls"] = 0


def next_dropout_key() -> tuple:
    """(seed, offset) for the next dropout call."""
    # The Philox counter holds the element index and the offset side by side, so one offset step
    # per call already gives every call a stream of its own.
    key = (_state["seed"], _state["dropout_calls"])
    _state["dropout_calls"] += 1
    return key


def init_generator() -> np.random.Generator:
    """A fresh numpy Generator for one weight initialisation, drawn from the global seed."""
    g = np.random.default_rng([_state["seed"], _state["init_calls"]])
    _state["init_calls"] += 1
    return g
