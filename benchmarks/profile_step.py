"""Where one CPU training step of the lecture model spends its time, kernel by kernel.

Every call the layers, the loss and the optimizer make into fastnn's compiled module is timed
inside real training steps, then replayed right away with the same arguments (once to warm, once
timed): "in step" is what the kernel costs where it runs, "hot" what it costs with its operands in
the caches and its threads awake. A large in-step / hot ratio points at the memory traffic between
ops (a cold saved activation, an output written by the other core), not at the kernel.

    python benchmarks/profile_step.py [--batch 128] [--steps 60] [--threads 2]

The replay runs each kernel a second time on the live model (an optimizer step is applied twice,
a gradient accumulated twice): the figures are timings only, the trained weights are not.
Run it on a quiet machine, or twice: on a shared one both columns move together with the load.
"""
import argparse
import statistics
import sys
import time

import numpy as np

import fastnn
import fastnn.nn.layers
import fastnn.nn.loss
import fastnn.optim.optimizer
from fastnn import _C
from fastnn.bench.suite import fastnn_step


class Recorder:
    """Stands in for ``_C`` in the modules that call kernels; logs (name, args, kwargs, seconds)."""

    def __init__(self):
        self.calls, self.on = [], False

    def __getattr__(self, name):
        fn = getattr(_C, name)
        if (not callable(fn) or isinstance(fn, type) or name.startswith("_") or "thread" in name
                or name in ("as_tensor", "from_dlpack")):
            return fn

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.on:
                self.calls.append((name, args, kwargs, time.perf_counter() - t))
            return out

        return timed


def shape_of(args) -> str:
    return "x".join(str(d) for d in getattr(args[0], "shape", ())) if args else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60, help="profiled steps (after 20 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    _C.set_num_threads(args.threads)

    rec = Recorder()
    for module in (fastnn.nn.layers, fastnn.nn.loss, fastnn.optim.optimizer):
        module._C = rec
    g = np.random.default_rng(0)
    step = fastnn_step(fastnn.tensor(g.random((args.batch, 784), dtype=np.float32)), g.integers(0, 10, args.batch))
    for _ in range(20):
        step()
    in_step, hot, walls, outside = {}, {}, [], []
    for _ in range(args.steps):
        rec.calls, rec.on = [], True
        t = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t)
        rec.on = False
        outside.append(walls[-1] - sum(seconds for *_, seconds in rec.calls))
        for i, (name, a, kw, seconds) in enumerate(rec.calls):
            fn = getattr(_C, name)
            fn(*a, **kw)
            t = time.perf_counter()
            fn(*a, **kw)
            hot.setdefault(i, []).append(time.perf_counter() - t)
            in_step.setdefault(i, []).append(seconds)

    # every step makes the same calls; a weight's Adam step taken inside its layer's backward
    # (backward(dy, optimizer=)) shows on that row
    names = [(name + (" + adam" if kw.get("update") is not None else ""), shape_of(a)) for name, a, kw, _ in rec.calls]
    wall = statistics.median(walls) * 1e3
    info = fastnn.build_info()
    print(f"fastnn {info['version']} ({info['cpu_isa']}, {args.threads} threads), "
          f"lecture model, batch {args.batch}: step {wall:.2f} ms (median of {args.steps})\n")
    print("| # | kernel | input | in step ms | hot ms | in step / hot | share of step |")
    print("|---|---|---|---|---|---|---|")
    total_in = total_hot = 0.0
    for i, (name, shape) in enumerate(names):
        a, b = statistics.median(in_step[i]) * 1e3, statistics.median(hot[i]) * 1e3
        total_in, total_hot = total_in + a, total_hot + b
        print(f"| {i} | {name} | {shape} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {100 * a / wall:.0f}% |")
    print(f"| | kernels | | {total_in:.2f} | {total_hot:.2f} | {total_in / total_hot:.2f}x | {100 * total_in / wall:.0f}% |")
    print(f"\nOutside the kernels (Python, argument checks, the timing itself): {statistics.median(outside) * 1e3:.2f} ms "
          "per step (median). Medians of single calls need not add up to the step's median.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
