"""fastnn's global random state: one seed for weight initialisation and dropout.

Dropout masks are a pure function of (seed, offset, element index) through Philox4x32-10, so
the state is just a seed and a running offset that each dropout call advances.
"""
import numpy as np

_state = {"seed": 0x5EED, "offset": 0}


def manual_seed(seed: int) -> None:
    """Make every following weight initialisation and dropout mask reproducible."""
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    _state["seed"] = int(seed) & 0xFFFFFFFFFFFFFFFF
    _state["offset"] = 0


def next_dropout_key(numel: int) -> tuple:
    """(seed, offset) for a dropout call over ``numel`` elements; advances the offset past them."""
    key = (_state["seed"], _state["offset"])
    # the Philox counter holds the element index and the offset side by side, so one step per call
    # already gives every call a stream of its own
    _state["offset"] += 1
    return key


def numpy_generator() -> np.random.Generator:
    """A numpy Generator drawn from the global seed, for weight initialisation."""
    g = np.random.default_rng([_state["seed"], _state["offset"]])
    _state["offset"] += 1 << 20
    return g
