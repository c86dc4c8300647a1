"""The kernels one training step of the lecture model launches on the CUDA device, in order.

At batch 128 a captured step is bound by its node count, not by memory or FLOPs, so this list is
where fusion pays: each launch is named with its grid and block (FASTNN_LAUNCH_LOG=1), grouped by
forward + loss, backward and optimizer, and the whole step's captured graph reports its node count
(launches plus memsets and copies). Prints markdown; runs on a GPU or the emulated device.

    python benchmarks/gpu/step_launches.py [--batch 128 1024]
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys
import numpy as np
import fastnn
from fastnn import nn, optim
from fastnn.bench.suite import lecture_layers

batch = int(sys.argv[1])
model = nn.Sequential(*lecture_layers(nn)).to("cuda")
model.needs_input_grad = False
crit, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3)
g = np.random.default_rng(0)
x = fastnn.tensor(g.random((batch, 784), dtype=np.float32)).to("cuda")
y = fastnn.tensor(g.integers(0, 10, batch)).to("cuda")


def mark(text):
    fastnn.cuda.synchronize()
    sys.stderr.write(f"@@ {text}\n")
    sys.stderr.flush()


def step(marks=False):
    crit(model(x), y)
    if marks:
        mark("backward")
    model.backward(crit.backward())
    if marks:
        mark("optimizer")
    opt.step()
    opt.zero_grad()


step()
step()  # the optimizer's state exists from the first step: the second is the steady one
mark("forward + loss")
step(marks=True)
mark("end")
graph = fastnn.cuda.CUDAGraph()
with fastnn.cuda.graph(graph):
    step()
print(graph.num_nodes)
"""


def launches(batch: int):
    env = dict(os.environ, FASTNN_LAUNCH_LOG="1")
    out = subprocess.run([sys.executable, "-c", CHILD, str(batch)], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode:
        raise SystemExit(f"batch {batch}: the step failed:\n{out.stderr[-3000:]}")
    rows, group, started = [], None, False
    for line in out.stderr.splitlines():
        if line.startswith("@@ "):
            group, started = line[3:], True
            if group == "end":
                break
        elif started and line.startswith("fastnn launch "):
            name, rest = line[len("fastnn launch "):].split(" ", 1)
            rows.append((group, name, rest))
    return rows, int(out.stdout.split()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    args = ap.parse_args(argv)
    import fastnn

    info = fastnn.build_info()
    print("\n## Kernels of one lecture-model training step (benchmarks/gpu/step_launches.py)\n")
    print(f"fastnn {fastnn.__version__}, CUDA device {'emulated' if info.get('cuda_emulated') else 'real'}; "
          "the eager launches of a steady step, and the node count of the same step captured in a graph.\n")
    for batch in args.batch:
        rows, nodes = launches(batch)
        print(f"### batch {batch}: {len(rows)} launches, {nodes} graph nodes\n")
        print("| # | part | kernel | launch |")
        print("|---|---|---|---|")
        for i, (group, name, rest) in enumerate(rows):
            print(f"| {i} | {group} | {name} | {rest} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
