"""fastnn's benchmark suite: every kernel and whole training steps, fastnn and PyTorch side by side.

Run with ``fastnn bench`` (``--quick`` for a one-minute subset) or ``python benchmarks/run.py``.
"""
