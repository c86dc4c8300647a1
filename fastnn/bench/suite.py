"""The rows: GEMMs at the MLP's shapes, memory-bound kernels, optimizer steps, whole training
steps (the lecture's model and a small one), a step under load, and a full MNIST epoch."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import fastnn
from fastnn import _C, nn, optim
from fastnn.bench.harness import Bench, Row, machine_info, save, to_markdown


def _torch():
    try:
        import torch
    except ImportError as e:
        raise SystemExit("the benchmarks compare against PyTorch: pip install 'torch==2.13.0'") from e
    return torch


# -- GEMM ---------------------------------------------------------------------------------------

def gemm_rows(b: Bench, torch, batches, widths):
    for n in batches:
        for k_in, k_out in widths:
            g = np.random.default_rng(0)
            x = g.standard_normal((n, k_in), dtype=np.float32)
            w = g.standard_normal((k_out, k_in), dtype=np.float32)
            dy = g.standard_normal((n, k_out), dtype=np.float32)
            xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))
            # fastnn's operands in its own 64-byte-aligned storage, as a model's are (numpy's large
            # arrays start 16 bytes into a page: an AVX-512 load of them spans two cache lines)
            x, w, dy = (fastnn.tensor(a) for a in (x, w, dy))
            flops = 2.0 * n * k_in * k_out
            shape = f"{n}x{k_in}->{k_out}"
            y, yt = _C.zeros([n, k_out], "float32"), torch.empty(n, k_out)
            b.compare("gemm", f"fwd X W^T {shape}", lambda: _C.gemm(x, w, y, trans_b=True),
                      lambda: torch.matmul(xt, wt.t(), out=yt), flops, "GFLOP/s", b.peak)
            dx, dxt = _C.zeros([n, k_in], "float32"), torch.empty(n, k_in)
            b.compare("gemm", f"dX = dY W {shape}", lambda: _C.gemm(dy, w, dx),
                      lambda: torch.matmul(dyt, wt, out=dxt), flops, "GFLOP/s", b.peak)
            dw, dwt = _C.zeros([k_out, k_in], "float32"), torch.empty(k_out, k_in)
            b.compare("gemm", f"dW = dY^T X {shape}", lambda: _C.gemm(dy, x, dw, trans_a=True),
                      lambda: torch.matmul(dyt.t(), xt, out=dwt), flops, "GFLOP/s", b.peak)


# -- memory-bound kernels -------------------------------------------------------------------------

def memory_rows(b: Bench, torch, n_rows, n_cols):
    F = torch.nn.functional
    g = np.random.default_rng(1)
    x = g.standard_normal((n_rows, n_cols), dtype=np.float32)
    xt = torch.from_numpy(x)
    nbytes = x.nbytes
    x = fastnn.tensor(x)  # fastnn's own aligned storage, as activations are (see gemm_rows)
    y = _C.zeros([n_rows, n_cols], "float32")
    b.compare("memory", f"relu+dropout fwd ({n_rows}x{n_cols})",
              lambda: _C.dropout_forward(x, 0.5, 1, 2, "relu", y),
              lambda: F.dropout(torch.relu(xt), 0.5, True), 2 * nbytes, "GB/s", b.copy,
              note="fused, one pass; p = 0.5: one random bit an element; torch: relu then dropout")
    b.compare("memory", f"relu+dropout fwd p=0.2 ({n_rows}x{n_cols})",
              lambda: _C.dropout_forward(x, 0.2, 1, 2, "relu", y),
              lambda: F.dropout(torch.relu(xt), 0.2, True), 2 * nbytes, "GB/s", b.copy,
              note="16 random bits an element, as every p that is no multiple of 2^-8")
    dy = g.standard_normal((n_rows, n_cols), dtype=np.float32)
    dyt = torch.from_numpy(dy)
    dy = fastnn.tensor(dy)
    yr = _C.dropout_forward(x, 0.5, 1, 2, "relu")
    dx = _C.zeros([n_rows, n_cols], "float32")
    mask = torch.rand(n_rows, n_cols) > 0.5
    b.compare("memory", f"relu+dropout bwd ({n_rows}x{n_cols})",
              lambda: _C.dropout_backward(dy, 0.5, 1, 2, yr, "relu", dx),
              lambda: torch.ops.aten.threshold_backward(dyt * mask * 2.0, xt, 0.0), 3 * nbytes, "GB/s", b.copy,
              note="mask regenerated, not stored")

    for kind, torch_fn in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
        out_t = torch.empty_like(xt)
        b.compare("memory", f"{kind} fwd ({n_rows}x{n_cols})",
                  lambda kind=kind: _C.activation_forward(x, kind, y),
                  lambda torch_fn=torch_fn, out_t=out_t: torch_fn(xt, out=out_t), 2 * nbytes, "GB/s", b.copy,
                  note="float32: a vectorised polynomial, a few ulp")
    # float64: the same bytes in half the elements; until 2026-11-29 these took libm per element
    x64 = g.standard_normal((n_rows // 2, n_cols))
    x64t, y64t = torch.from_numpy(x64), torch.empty(n_rows // 2, n_cols, dtype=torch.float64)
    x64, y64 = fastnn.tensor(x64), _C.zeros([n_rows // 2, n_cols], "float64")
    for kind, torch_fn in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
        b.compare("memory", f"{kind} fwd float64 ({n_rows // 2}x{n_cols})",
                  lambda kind=kind: _C.activation_forward(x64, kind, y64),
                  lambda torch_fn=torch_fn: torch_fn(x64t, out=y64t), 2 * nbytes, "GB/s", b.copy,
                  note="Cephes' forms on a Pade exp, vectorised; a few ulp")

    c = n_cols
    # the one-read path: AVX-512 and at most 2048 rows, unless FASTNN_BN_ONE_READ says otherwise
    # (one_read_block, kOneReadMaxRows in batchnorm_cpu.cpp)
    forced = os.environ.get("FASTNN_BN_ONE_READ")
    one_read = forced == "1" or (forced != "0" and fastnn.build_info()["cpu_isa"] == "AVX-512" and n_rows <= 2048)
    bn_fwd_note = ("x read once from memory: column blocks in L3 between statistics and y" if one_read
                   else "two passes over x (statistics, then y)")
    bn_bwd_note = ("x and dy read once from memory: column blocks in L3 between sums and dx" if one_read
                   else "two passes over x and dy (sums, then dx)")
    w, bias = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    wt, bt, rmt, rvt = (torch.from_numpy(a.copy()) for a in (w, bias, rm, rv))
    b.compare("memory", f"batchnorm fwd train ({n_rows}x{c})",
              lambda: _C.batchnorm_forward(x, w, bias, rm, rv, True, 0.1, 1e-5, y),
              lambda: F.batch_norm(xt, rmt, rvt, wt, bt, True, 0.1, 1e-5), 2 * nbytes, "GB/s", b.copy,
              note=bn_fwd_note)
    _, mean, invstd = _C.batchnorm_forward(x, w, bias, rm, rv, True, 0.1, 1e-5)
    xg = xt.clone().requires_grad_(True)
    wg, bg = wt.clone().requires_grad_(True), bt.clone().requires_grad_(True)
    out = F.batch_norm(xg, None, None, wg, bg, True, 0.1, 1e-5)
    dwb, dbb = _C.zeros([c], "float32"), _C.zeros([c], "float32")
    b.compare("memory", f"batchnorm bwd ({n_rows}x{c})",
              lambda: _C.batchnorm_backward(x, dy, w, mean, invstd, True, dx=dx, dweight=dwb, dbias=dbb),
              lambda: torch.autograd.grad(out, (xg, wg, bg), dyt, retain_graph=True), 3 * nbytes, "GB/s", b.copy,
              note=bn_bwd_note)

    classes = 1000
    rows = max(1, n_rows * n_cols // classes)
    logits = g.standard_normal((rows, classes), dtype=np.float32)
    labels = g.integers(0, classes, rows)
    lt, yt_ = torch.from_numpy(logits), torch.from_numpy(labels)
    logits_bytes, logits = logits.nbytes, fastnn.tensor(logits)
    dlog = _C.zeros([rows, classes], "float32")

    def torch_ce():
        lg = lt.detach().requires_grad_(True)
        F.cross_entropy(lg, yt_).backward()

    b.compare("memory", f"softmax cross-entropy fwd+bwd ({rows}x{classes})",
              lambda: _C.cross_entropy(logits, labels, dlogits=dlog), torch_ce, 2 * logits_bytes, "GB/s", b.copy,
              note="fused: one pass gives loss and dlogits")
    probs_t = torch.empty_like(lt)
    for log in (False, True):
        b.compare("memory", f"{'log-' if log else ''}softmax fwd ({rows}x{classes})",
                  lambda log=log: _C.softmax_forward(logits, log, out=dlog),
                  lambda log=log: (torch._log_softmax if log else torch._softmax)(lt, -1, False, out=probs_t),
                  2 * logits_bytes, "GB/s", b.copy)


def optimizer_rows(b: Bench, torch, numel):
    g = np.random.default_rng(2)
    for name, make_fast, make_torch, traffic in [
        ("Adam", lambda p: optim.Adam(p, lr=1e-3), lambda p, **kw: torch.optim.Adam(p, lr=1e-3, **kw), 7),
        # weight decay's own row: its loop once ran scalar, 6x slower than plain Adam's, unseen here
        ("AdamW", lambda p: optim.AdamW(p, lr=1e-3, weight_decay=1e-2),
         lambda p, **kw: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, **kw), 7),
        ("SGD momentum", lambda p: optim.SGD(p, lr=1e-2, momentum=0.9),
         lambda p, **kw: torch.optim.SGD(p, lr=1e-2, momentum=0.9, **kw), 5),
        ("RMSprop", lambda p: optim.RMSprop(p), lambda p, **kw: torch.optim.RMSprop(p, **kw), 5),
        ("Adagrad", lambda p: optim.Adagrad(p), lambda p, **kw: torch.optim.Adagrad(p, **kw), 5),
    ]:
        p = nn.Parameter(g.standard_normal(numel, dtype=np.float32))
        p.grad.copy_(g.standard_normal(numel, dtype=np.float32))
        tp = torch.nn.Parameter(torch.from_numpy(p.numpy().copy()))
        tp.grad = torch.from_numpy(p.grad.numpy().copy())
        fo, to = make_fast([p]), make_torch([tp])
        note = "torch default (for-loop) implementation"
        if name == "SGD momentum":  # buf.mul_, buf.add_, param.add_: 8 streams against fastnn's 5
            note += ": three passes, 1.6x fastnn's one pass's traffic"
        b.compare("optimizer", f"{name} step ({numel / 1e6:.1f}M params)", fo.step, to.step,
                  traffic * 4.0 * numel, "GB/s", b.copy, note=note)
        if name in ("Adam", "AdamW", "SGD momentum"):
            tf = make_torch([tp], fused=True)
            b.compare("optimizer", f"{name} step vs torch fused=True", fo.step, tf.step,
                      traffic * 4.0 * numel, "GB/s", b.copy)


# -- whole training steps -------------------------------------------------------------------------

def lecture_layers(lib, hidden=1024, batch_norm=True, dropout=0.5):
    n = lib.nn if hasattr(lib, "nn") else lib
    layers = [n.Linear(784, hidden)]
    if batch_norm:
        layers.append(n.BatchNorm1d(hidden))
    layers += [n.ReLU(), n.Dropout(dropout), n.Linear(hidden, hidden)]
    if batch_norm:
        layers.append(n.BatchNorm1d(hidden))
    layers += [n.ReLU(), n.Dropout(dropout), n.Linear(hidden, 10)]
    return layers


def fastnn_step(x, y, model="lecture"):
    """One fastnn training step on (x, y): forward, loss, backward, Adam, zero_grad."""
    if model == "lecture":
        fm = nn.Sequential(*lecture_layers(nn))
    else:
        fm = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    fm.needs_input_grad = False
    crit, fopt = nn.CrossEntropyLoss(), optim.Adam(fm.parameters(), lr=1e-3)

    def fast_step():  # the optimizer's step inside backward: Adam fused into the weight-gradient GEMMs
        crit(fm(x), y)
        fm.backward(crit.backward(), optimizer=fopt)
        fopt.zero_grad()

    return fast_step


def make_steps(torch, batch, model="lecture"):
    """(fastnn_step, torch_step, torch_fused_step, torch_model, torch_data) for one training step."""
    g = np.random.default_rng(3)
    x = g.random((batch, 784), dtype=np.float32)
    y = g.integers(0, 10, batch)
    if model == "lecture":
        tm = torch.nn.Sequential(*lecture_layers(torch))
    else:
        tm = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    fast_step = fastnn_step(x, y, model)

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    tcrit = torch.nn.CrossEntropyLoss()

    def torch_step_with(opt, module):
        def step():
            opt.zero_grad()
            tcrit(module(xt), yt).backward()
            opt.step()
        return step

    t_default = torch_step_with(torch.optim.Adam(tm.parameters(), lr=1e-3), tm)
    t_fused = torch_step_with(torch.optim.Adam(tm.parameters(), lr=1e-3, fused=True), tm)
    return fast_step, t_default, t_fused, tm, torch_step_with


def step_rows(b: Bench, torch, batches, with_compile):
    for batch in batches:
        fast, t_default, t_fused, tm, step_with = make_steps(torch, batch)
        b.compare("step", f"lecture model, batch {batch}, vs eager", fast, t_default,
                  note="784-1024-BN-ReLU-Drop-1024-BN-ReLU-Drop-10, CE, Adam")
        b.compare("step", f"lecture model, batch {batch}, vs eager+fused Adam", fast, t_fused)
        if with_compile:
            try:
                compiled = torch.compile(tm)
                t_comp = step_with(torch.optim.Adam(tm.parameters(), lr=1e-3, fused=True), compiled)
                for _ in range(3):
                    t_comp()
                b.compare("step", f"lecture model, batch {batch}, vs torch.compile", fast, t_comp)
            except Exception as e:  # torch.compile needs a working C++ toolchain; report, don't die
                b.add(Row("step", f"lecture model, batch {batch}, vs torch.compile", float("nan"), float("nan"),
                          float("nan"), float("nan"), float("nan"), note=f"torch.compile failed: {type(e).__name__}"))
    fast, t_default, _, _, _ = make_steps(torch, 128, model="small")
    b.compare("step", "small model 784-32-10, batch 128", fast, t_default, note="all overhead in PyTorch")
    fast1, t1, _, _, _ = make_steps(torch, 2, model="small")
    row = b.compare("step", "small model 784-32-10, batch 2 (~pure overhead)", fast1, t1)
    row.note = f"fastnn per-step overhead ~{row.fastnn_ms * 1e3:.0f} us: Python + bindings + tiny kernels"


def load_rows(b: Bench, torch):
    """A training step with another process busy on one core, against the same step on the quiet machine."""
    fast, t_default, _, _, _ = make_steps(torch, 128)
    def timed(fn):
        Bench.settle()
        return Bench._time(fn, 3)

    quiet_f = sorted(timed(fast) for _ in range(7))[3]
    quiet_t = sorted(timed(t_default) for _ in range(7))[3]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        loaded_f = sorted(timed(fast) for _ in range(7))[3]
        loaded_t = sorted(timed(t_default) for _ in range(7))[3]
    finally:
        hog.kill()
        hog.wait()
    row = Row("load", "lecture step 128 with one core busy", loaded_f * 1e3, loaded_t * 1e3, quiet_f * 1e3,
              quiet_t * 1e3, loaded_t / loaded_f,
              note=f"slowdown vs quiet: fastnn {loaded_f / quiet_f:.1f}x, PyTorch {loaded_t / quiet_t:.1f}x "
                   "(min columns = quiet medians)")
    b.add(row)


def epoch_row(b: Bench):
    from fastnn.keras.utils import to_categorical

    from fastnn.cli import build_model
    try:
        from fastnn.datasets import load_mnist

        (x, y), _ = load_mnist()
        what = "MNIST"
    except FileNotFoundError:
        g = np.random.default_rng(0)
        x, y = g.integers(0, 256, (60000, 28, 28), dtype=np.uint8), g.integers(0, 10, 60000)
        what = "random MNIST-shaped data (MNIST not installed)"
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    yc = to_categorical(y, 10)
    model = build_model(784, [1024, 1024], 0.5, True)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])

    def epoch():
        model.fit(x, yc, batch_size=128, epochs=1, verbose=0)

    b.single("epoch", "lecture model, one epoch, 60000 samples", epoch,
             note=f"{what}, batch 128, Keras-style fit incl. shuffling (target < 4 s)")


def output_dir(args, device: str = "cpu") -> Path:
    if args.output:
        return Path(args.output)
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    if not root.parent.is_dir():  # an installed fastnn: write beside the current directory
        root = Path("benchmark-results")
    return root / (time.strftime("%Y-%m-%d-%H%M") + ("" if device == "cpu" else f"-{device}") +
                   ("-quick" if args.quick else ""))


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastnn bench", description="fastnn vs PyTorch, side by side")
    p.add_argument("--quick", action="store_true", help="a one-minute subset")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu, or cuda: fastnn's CUDA backend vs PyTorch on the same GPU (fastnn.bench.gpu)")
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: one per physical core, fastnn.get_num_threads())")
    p.add_argument("--output", default=None, help="directory for results.md/json/png (default benchmarks/results/<date>)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile rows (they compile for ~1 min)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="cuda: stop starting rows after this long (skipped rows are listed), so a capped run "
                        "still ends with its chart")
    args = p.parse_args(argv)
    if args.device == "cuda":
        from fastnn.bench.gpu import run_cuda

        return run_cuda(args, output_dir(args, "cuda"))
    torch = _torch()
    threads = args.threads or fastnn.get_num_threads()
    fastnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    b = Bench(threads, quick=args.quick)
    print(f"machine: peak {b.peak:.0f} GFLOP/s, copy {b.copy:.1f} GB/s, {threads} threads, torch {torch.__version__}")
    if args.quick:
        gemm_rows(b, torch, [128], [(784, 1024), (1024, 10)])
        memory_rows(b, torch, 2048, 2048)
        optimizer_rows(b, torch, 1_863_690)
        step_rows(b, torch, [128], with_compile=False)
    else:
        gemm_rows(b, torch, [128, 1024], [(784, 1024), (1024, 1024), (1024, 10)])
        memory_rows(b, torch, 4096, 4096)
        optimizer_rows(b, torch, 16_000_000)
        step_rows(b, torch, [128, 1024], with_compile=not args.no_compile)
        load_rows(b, torch)
        epoch_row(b)
    b.finish()
    machine = machine_info(b, torch.__version__, fastnn.__version__)
    out = output_dir(args)
    save(machine, b.rows, out)
    print(to_markdown(machine, b.rows))
    print(f"\nwrote {out}/results.md, results.json, ratios.png")
    return 0


if __name__ == "__main__":
    sys.exit(run())
