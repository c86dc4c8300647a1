"""fastnn vs PyTorch, side by side: ``python benchmarks/run.py [--quick]`` (same as ``fastnn bench``)."""
import sys

from fastnn.bench.suite import run

sys.exit(run())
