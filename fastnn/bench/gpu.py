"""`fastnn bench --device cuda`: fastnn's CUDA backend against PyTorch on the same card, in one process.

Rows: GEMMs at the MLP's shapes against cuBLAS (torch.matmul, TF32 off), memory-bound kernels and
optimizer steps against the card's device-to-device copy rate and torch eager, whole training
steps against torch eager, eager + fused Adam and torch.compile(mode="reduce-overhead"), and, once
fastnn has CUDA graphs (fastnn.cuda.graph), a whole fastnn step captured in one graph.

Timing on an asynchronous device: every timed block is bracketed by a device synchronize, so a
time is what the caller waits for (launch overhead included, which is what decides small steps);
blocks repeat a call enough times that the two synchronizes are noise. The two libraries
alternate in random order round by round, as on the CPU.

Without a PyTorch that sees the GPU (the CPU emulation of CUDA in CI, or a torch CPU wheel) the
rows run fastnn alone, with the PyTorch columns empty; on the emulated device they use tiny
shapes: a smoke test of the code paths (`--quick` takes seconds there).
"""
from __future__ import annotations

import importlib
import os
import random
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastnn
from fastnn import _C, nn, optim
from fastnn.bench.harness import Machine, Row, cpu_name, git_commit, save, to_markdown

NO_TORCH_CUDA = "no torch CUDA here"
# Where PyTorch's side runs: the GPU. FASTNN_BENCH_TORCH_DEVICE=cpu (a test hook, see
# tests/test_bench.py) runs it on the CPU so that every PyTorch code path of this file can be
# exercised on a machine without a GPU; the times then compare nothing.
TORCH_DEVICE = "cuda"


# -- shapes ---------------------------------------------------------------------------------------

@dataclass
class Shapes:
    gemm_batches: list
    gemm_widths: list  # (in, out) of the MLP's layers
    gemm_square: int  # one large square GEMM, 0 for none
    mem_rows: int
    mem_cols: int
    optim_numel: int
    step_batches: list
    hidden: int  # the lecture model's width (1024; smaller only in the emulated smoke run)
    peak_square: int
    copy_bytes: int


FULL = Shapes([128, 1024], [(784, 1024), (1024, 1024), (1024, 10)], 4096, 8192, 4096, 1 << 24, [128, 1024], 1024,
              8192, 1 << 30)
QUICK = Shapes([128], [(784, 1024), (1024, 10)], 4096, 8192, 4096, 1 << 24, [128], 1024, 8192, 1 << 30)
# The CPU emulation runs every CUDA thread on the host's cores: shapes small enough for a smoke run of seconds.
TINY = Shapes([16], [(784, 64), (64, 10)], 0, 64, 256, 1 << 16, [16], 64, 128, 1 << 24)


# -- the device clock -----------------------------------------------------------------------------

def fastnn_cuda_module():
    """fastnn.cuda (streams, synchronize, CUDA graphs) where this fastnn has it, else None."""
    mod = getattr(fastnn, "cuda", None)
    if mod is None:
        try:
            mod = importlib.import_module("fastnn.cuda")
        except ImportError:
            return None
    return mod


def device_sync_fn(torch_cuda):
    """A function that returns once all queued work of both libraries on the device has finished.

    torch.cuda.synchronize() is cudaDeviceSynchronize: it waits for every stream of the process's
    context, fastnn's included (both use the runtime API's primary context). fastnn's own
    synchronize, where it exists, is called as well; without either, a one-element device-to-host
    copy on fastnn's stream waits for the fastnn work queued before it.
    """
    fsync = getattr(fastnn_cuda_module(), "synchronize", None)
    if torch_cuda is not None and fsync is not None:
        def both():
            fsync()
            torch_cuda.synchronize()
        return both
    if torch_cuda is not None:
        return torch_cuda.synchronize
    if fsync is not None:
        return fsync
    probe = _C.zeros([1], "float32", "cuda")
    return lambda: probe.item()


def short_kernel_name(name: str) -> str:
    """A profiler's kernel name without its return type, namespaces and parameter list:
    'void fastnn::cuda::loss_detail::cross_entropy_rows_kernel<float, long, 32>(...)' ->
    'cross_entropy_rows_kernel<float, long, 32>'."""
    name = name.removeprefix("void ")
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list is the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name, depth, start = name[:cut], 0, 0
    for i, ch in enumerate(name):  # the last '::' outside template brackets ends the namespaces
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == ":" and depth == 0 and name[i + 1:i + 2] == ":":
            start = i + 2
    return name[start:][:80].strip() or name[:80].strip()


class GpuBench:
    """Runs rows on the device and keeps the results; mirrors harness.Bench for the CPU."""

    def __init__(self, torch, quick: bool, time_limit: float | None = None, log=print, on_row=None):
        self.torch = torch  # None: fastnn alone (no PyTorch that sees the GPU)
        self.quick, self.log, self.on_row = quick, log, on_row
        self.sync = device_sync_fn(torch.cuda if torch is not None and TORCH_DEVICE == "cuda" else None)
        self.rows: list[Row] = []
        self.rounds = 7 if quick else 21
        self.min_measure_s = 0.003 if quick else 0.01
        self.started = time.perf_counter()
        self.time_limit = time_limit
        self.peak = self.copy = float("nan")
        self.peak_source = self.copy_source = ""
        self.fastnn_copy = float("nan")
        # CUPTI kernel times need torch.profiler with CUDA: only where PyTorch runs on the GPU
        self.kernel_timing = torch is not None and TORCH_DEVICE == "cuda"

    # --- budget
    def time_left(self) -> float:
        if self.time_limit is None:
            return float("inf")
        return self.time_limit - (time.perf_counter() - self.started)

    def skip(self, group: str, name: str, why: str) -> Row:
        return self.add(Row(group, name, *([float("nan")] * 5), note=f"skipped: {why}"))

    # --- timing
    def _time(self, fn, inner: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / inner

    def compare(self, group: str, name: str, fast, ref=None, work: float | None = None, unit: str = "",
                peak: float | None = None, note: str = "", warmup: int = 3, kernel: bool = False) -> Row:
        """Times `fast` (fastnn) against `ref` (PyTorch, None for fastnn alone). `work`: FLOP or bytes per call;
        `kernel`: also measure both sides' GPU kernel time per call (kernel_us).

        An exception in either is a row saying so: one visit to a GPU must report every row it can.
        """
        if self.time_left() <= 0:
            return self.skip(group, name, "--time-limit reached")
        try:
            row = self._compare(group, name, fast, ref, work, unit, peak, note, warmup)
            if kernel:
                row.fastnn_kernel_us, row.fastnn_kernels = self.kernel_us(fast)
                row.torch_kernel_us = self.kernel_us(ref)[0] if ref is not None else None
                if row.fastnn_kernel_us:
                    self.log(f"{'':10s} {'':48s} kernels: fastnn {row.fastnn_kernel_us:.1f} us, torch "
                             f"{row.torch_kernel_us or float('nan'):.1f} us")
                    if len(row.fastnn_kernels) > 1:
                        parts = ", ".join(f"{name} {us:.1f}" for name, us in list(row.fastnn_kernels.items())[:8])
                        self.log(f"{'':10s} {'':48s} fastnn's launches: {parts}")
            if self.on_row:
                self.on_row()
            return row
        except Exception as e:  # noqa: BLE001
            return self.skip(group, name, f"error: {type(e).__name__}: {e}"[:300])

    def kernel_us(self, fn, calls: int = 10) -> tuple[float | None, dict[str, float] | None]:
        """GPU time per call of the kernels and copies `fn` runs, in us, in all and per kernel name
        (longest first): the device activity CUPTI records (torch.profiler; it sees fastnn's launches
        as well as torch's). (None, None) where that is unavailable; after one failure it is not
        tried again."""
        if not self.kernel_timing:
            return None, None
        try:
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile

            self.sync()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    fn()
                self.sync()
            per_name: dict[str, float] = {}
            for e in prof.events():
                if e.device_type == DeviceType.CUDA:
                    name = short_kernel_name(e.name)
                    per_name[name] = per_name.get(name, 0.0) + e.time_range.elapsed_us() / calls
            total = sum(per_name.values())
            if total <= 0:
                return None, None
            return total, dict(sorted(per_name.items(), key=lambda kv: -kv[1]))
        except Exception as e:  # noqa: BLE001
            self.kernel_timing = False
            self.log(f"kernel timing through torch.profiler unavailable ({type(e).__name__}: {e}); rows go without it")
            return None, None

    def guarded(self, section: str, fn, *args):
        """Runs one section of rows; an exception in its setup becomes a row instead of ending the run."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            self.skip(section, f"{section} rows", f"error: {type(e).__name__}: {e}"[:300])

    def _compare(self, group, name, fast, ref, work, unit, peak, note, warmup) -> Row:
        fast()
        if ref is not None:
            ref()
        once = max(self._time(fast, 1), self._time(ref, 1) if ref is not None else 0.0, 1e-7)
        rounds = self.rounds
        if once > 0.05:  # a pathologically slow kernel must not eat the visit: fewer rounds, no more warm-up
            rounds = max(3, min(rounds, int(2.0 / once)))
        else:
            for _ in range(warmup - 1):
                fast()
                if ref is not None:
                    ref()
        inner = max(1, int(self.min_measure_s / once))
        tf, tr, ratios = [], [], []
        for _ in range(rounds):
            pair = [("f", fast)] + ([("r", ref)] if ref is not None else [])
            random.shuffle(pair)  # neither library always runs on the other's warm L2 / clocks
            got = {k: self._time(fn, inner) for k, fn in pair}
            tf.append(got["f"])
            if ref is not None:
                tr.append(got["r"])
                ratios.append(got["r"] / got["f"])
        nan = float("nan")
        med_f = statistics.median(tf)
        med_r = statistics.median(tr) if tr else nan
        rate = torch_rate = frac = None
        if work:
            rate = work * 1e-9 / med_f
            torch_rate = work * 1e-9 / med_r if tr else None
            if peak and peak == peak:
                frac = rate / peak
        notes = [note] if note else []
        if ref is None:
            notes.append(NO_TORCH_CUDA if self.torch is None else "fastnn only")
        spread = statistics.median(tf) / min(tf)
        if spread > 1.3:  # the card was shared or throttling: the median is worth less
            notes.append(f"noisy: fastnn median {spread:.1f}x its min")
        row = Row(group, name, med_f * 1e3, med_r * 1e3, min(tf) * 1e3, min(tr) * 1e3 if tr else nan,
                  statistics.median(ratios) if ratios else nan, rate, unit, torch_rate, frac, False,
                  "; ".join(notes))
        rate_txt = f"  {rate:8.1f} {unit}" if rate else ""
        torch_txt = f"torch {row.torch_ms:9.3f} ms  x{row.speedup:5.2f}" if tr else "torch        -"
        self.rows.append(row)
        self.log(f"{group:10s} {name:48s} fastnn {row.fastnn_ms:9.3f} ms  {torch_txt}{rate_txt}")
        return row

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.log(f"{row.group:10s} {row.name:48s} {row.note}")
        if self.on_row:
            self.on_row()
        return row

    # --- the card's own ceilings
    def measure_peaks(self, shapes: Shapes):
        """FP32 peak: torch.matmul's best on a large square, TF32 off. Copy: a device-to-device copy,
        read + write bytes. Without torch CUDA, fastnn's own GEMM and copy stand in (and say so)."""
        torch = self.torch
        n = shapes.peak_square
        if torch is not None:
            a = torch.randn(n, n, device=TORCH_DEVICE)
            bm = torch.randn(n, n, device=TORCH_DEVICE)
            c = torch.empty(n, n, device=TORCH_DEVICE)
            self.peak = 2.0 * n ** 3 * 1e-9 / self._best(lambda: torch.matmul(a, bm, out=c), 7)
            self.peak_source = f"torch.matmul {n}x{n}x{n} float32, TF32 off, best of 7"
            del a, bm, c
            numel = shapes.copy_bytes // 4
            src = torch.randn(numel, device=TORCH_DEVICE)
            dst = torch.empty_like(src)
            self.copy = 2.0 * shapes.copy_bytes * 1e-9 / self._best(lambda: dst.copy_(src), 7)
            self.copy_source = f"torch copy_ of {shapes.copy_bytes / 2 ** 30:.2f} GiB, read + write bytes, best of 7"
            del src, dst
            if TORCH_DEVICE == "cuda":
                torch.cuda.empty_cache()
        else:
            a, bm, c = (_C.zeros([n, n], "float32", "cuda") for _ in range(3))
            self.peak = 2.0 * n ** 3 * 1e-9 / self._best(lambda: _C.gemm(a, bm, c), 3)
            self.peak_source = f"fastnn's own GEMM {n}x{n}x{n} ({NO_TORCH_CUDA})"
        numel = shapes.copy_bytes // 4
        src, dst = _C.zeros([numel], "float32", "cuda"), _C.empty([numel], "float32", "cuda")
        self.fastnn_copy = 2.0 * shapes.copy_bytes * 1e-9 / self._best(lambda: dst.copy_(src), 3 if torch is None else 7)
        del src, dst
        _C._cuda_empty_cache()  # 2 GiB back to the driver, not held by fastnn's cache through the rows
        if torch is None:
            self.copy = self.fastnn_copy
            self.copy_source = f"fastnn Tensor.copy_ of {shapes.copy_bytes >> 20} MiB ({NO_TORCH_CUDA})"

    def _best(self, fn, repeats: int) -> float:
        fn()
        return min(self._time(fn, 1) for _ in range(repeats))


# -- inputs on both sides -------------------------------------------------------------------------

def to_cuda_pair(torch, a: np.ndarray):
    """The same host array as a fastnn CUDA tensor and (when torch sees the GPU) a torch CUDA tensor."""
    f = fastnn.as_tensor(np.ascontiguousarray(a)).to("cuda")
    return f, (torch.from_numpy(a).to(TORCH_DEVICE) if torch is not None else None)


def _maybe(torch, fn):
    """fn, or None when there is no PyTorch on the GPU to run it."""
    return fn if torch is not None else None


# -- (a) GEMM -------------------------------------------------------------------------------------

def gemm_rows(b: GpuBench, torch, shapes: Shapes):
    problems = [(n, k_in, k_out) for n in shapes.gemm_batches for k_in, k_out in shapes.gemm_widths]
    if shapes.gemm_square:
        s = shapes.gemm_square
        problems.append((s, s, s))
    for n, k_in, k_out in problems:
        g = np.random.default_rng(0)
        x, xt = to_cuda_pair(torch, g.standard_normal((n, k_in), dtype=np.float32))
        w, wt = to_cuda_pair(torch, g.standard_normal((k_out, k_in), dtype=np.float32))
        dy, dyt = to_cuda_pair(torch, g.standard_normal((n, k_out), dtype=np.float32))
        flops = 2.0 * n * k_in * k_out
        shape = f"{n}x{k_in}->{k_out}"
        y = _C.zeros([n, k_out], "float32", "cuda")
        dx = _C.zeros([n, k_in], "float32", "cuda")
        dw = _C.zeros([k_out, k_in], "float32", "cuda")
        yt = dxt = dwt = None
        if torch is not None:
            yt = torch.empty(n, k_out, device=TORCH_DEVICE)
            dxt = torch.empty(n, k_in, device=TORCH_DEVICE)
            dwt = torch.empty(k_out, k_in, device=TORCH_DEVICE)
        b.compare("gemm", f"fwd X W^T {shape}", lambda: _C.gemm(x, w, y, trans_b=True),
                  _maybe(torch, lambda: torch.matmul(xt, wt.t(), out=yt)), flops, "GFLOP/s", b.peak, kernel=True)
        b.compare("gemm", f"dX = dY W {shape}", lambda: _C.gemm(dy, w, dx),
                  _maybe(torch, lambda: torch.matmul(dyt, wt, out=dxt)), flops, "GFLOP/s", b.peak, kernel=True)
        b.compare("gemm", f"dW = dY^T X {shape}", lambda: _C.gemm(dy, x, dw, trans_a=True),
                  _maybe(torch, lambda: torch.matmul(dyt.t(), xt, out=dwt)), flops, "GFLOP/s", b.peak, kernel=True)


# -- (b) memory-bound kernels ---------------------------------------------------------------------

def memory_rows(b: GpuBench, torch, shapes: Shapes):
    n_rows, n_cols = shapes.mem_rows, shapes.mem_cols
    F = torch.nn.functional if torch is not None else None
    g = np.random.default_rng(1)
    xh = g.standard_normal((n_rows, n_cols), dtype=np.float32)
    x, xt = to_cuda_pair(torch, xh)
    nbytes = xh.nbytes
    y = _C.zeros([n_rows, n_cols], "float32", "cuda")
    b.compare("memory", f"relu+dropout fwd ({n_rows}x{n_cols})",
              lambda: _C.dropout_forward(x, 0.5, 1, 2, "relu", y),
              _maybe(torch, lambda: F.dropout(torch.relu(xt), 0.5, True)), 2 * nbytes, "GB/s", b.copy, kernel=True,
              note="fused, one pass; torch: relu then dropout")
    dy, dyt = to_cuda_pair(torch, g.standard_normal((n_rows, n_cols), dtype=np.float32))
    yr = _C.dropout_forward(x, 0.5, 1, 2, "relu")
    dx = _C.zeros([n_rows, n_cols], "float32", "cuda")
    mask = torch.rand(n_rows, n_cols, device=TORCH_DEVICE) > 0.5 if torch is not None else None
    b.compare("memory", f"relu+dropout bwd ({n_rows}x{n_cols})",
              lambda: _C.dropout_backward(dy, 0.5, 1, 2, yr, "relu", dx),
              _maybe(torch, lambda: torch.ops.aten.threshold_backward(dyt * mask * 2.0, xt, 0.0)), 3 * nbytes, "GB/s",
              b.copy, kernel=True, note="mask regenerated, not stored")

    c = n_cols
    w, wt = to_cuda_pair(torch, np.ones(c, np.float32))
    bias, bt = to_cuda_pair(torch, np.zeros(c, np.float32))
    rm, rmt = to_cuda_pair(torch, np.zeros(c, np.float32))
    rv, rvt = to_cuda_pair(torch, np.ones(c, np.float32))
    b.compare("memory", f"batchnorm fwd train ({n_rows}x{c})",
              lambda: _C.batchnorm_forward(x, w, bias, rm, rv, True, 0.1, 1e-5, y),
              _maybe(torch, lambda: F.batch_norm(xt, rmt, rvt, wt, bt, True, 0.1, 1e-5)), 2 * nbytes, "GB/s", b.copy, kernel=True)
    _, mean, invstd = _C.batchnorm_forward(x, w, bias, rm, rv, True, 0.1, 1e-5)
    dwb, dbb = _C.zeros([c], "float32", "cuda"), _C.zeros([c], "float32", "cuda")
    torch_bwd = None
    if torch is not None:
        xg = xt.clone().requires_grad_(True)
        wg, bg = wt.clone().requires_grad_(True), bt.clone().requires_grad_(True)
        out = F.batch_norm(xg, None, None, wg, bg, True, 0.1, 1e-5)
        torch_bwd = lambda: torch.autograd.grad(out, (xg, wg, bg), dyt, retain_graph=True)  # noqa: E731
    b.compare("memory", f"batchnorm bwd ({n_rows}x{c})",
              lambda: _C.batchnorm_backward(x, dy, w, mean, invstd, True, dx=dx, dweight=dwb, dbias=dbb),
              torch_bwd, 3 * nbytes, "GB/s", b.copy, kernel=True)

    classes = 1000
    rows = max(1, n_rows * n_cols // classes)
    logits, lt = to_cuda_pair(torch, g.standard_normal((rows, classes), dtype=np.float32))
    labels, labt = to_cuda_pair(torch, g.integers(0, classes, rows))
    dlog = _C.zeros([rows, classes], "float32", "cuda")

    def torch_ce():
        lg = lt.detach().requires_grad_(True)
        F.cross_entropy(lg, labt).backward()

    b.compare("memory", f"softmax cross-entropy fwd+bwd ({rows}x{classes})",
              lambda: _C.cross_entropy(logits, labels, dlogits=dlog), _maybe(torch, torch_ce),
              2 * rows * classes * 4, "GB/s", b.copy, kernel=True, note="fused: one pass gives loss and dlogits")


def optimizer_rows(b: GpuBench, torch, shapes: Shapes):
    numel = shapes.optim_numel
    g = np.random.default_rng(2)
    # traffic: float32 words read + written per parameter per step
    for name, make_fast, make_torch, traffic, fused in [
        ("Adam", lambda p: optim.Adam(p, lr=1e-3), lambda p, **kw: torch.optim.Adam(p, lr=1e-3, **kw), 7, True),
        ("SGD momentum", lambda p: optim.SGD(p, lr=1e-2, momentum=0.9),
         lambda p, **kw: torch.optim.SGD(p, lr=1e-2, momentum=0.9, **kw), 5, True),
        ("RMSprop", lambda p: optim.RMSprop(p), lambda p, **kw: torch.optim.RMSprop(p, **kw), 5, False),
        ("Adagrad", lambda p: optim.Adagrad(p), lambda p, **kw: torch.optim.Adagrad(p, **kw), 5, False),
    ]:
        data = g.standard_normal(numel, dtype=np.float32)
        grad = g.standard_normal(numel, dtype=np.float32)
        p = nn.Parameter(fastnn.as_tensor(data).to("cuda"))
        p.grad.copy_(fastnn.as_tensor(grad).to("cuda"))
        fo = make_fast([p])
        to = tf = None
        if torch is not None:
            tp = torch.nn.Parameter(torch.from_numpy(data).to(TORCH_DEVICE))
            tp.grad = torch.from_numpy(grad).to(TORCH_DEVICE)
            to = make_torch([tp])
            tf = make_torch([tp], fused=True) if fused else None
        b.compare("optimizer", f"{name} step ({numel / 1e6:.1f}M params)", fo.step, to.step if to else None,
                  traffic * 4.0 * numel, "GB/s", b.copy, kernel=True, note="torch default (foreach) implementation")
        if tf is not None:
            b.compare("optimizer", f"{name} step vs torch fused=True", fo.step, tf.step if tf else None,
                      traffic * 4.0 * numel, "GB/s", b.copy, kernel=True)


# -- (c) whole training steps ---------------------------------------------------------------------

def lecture_layers(lib, hidden=1024):
    n = lib.nn if hasattr(lib, "nn") else lib
    return [n.Linear(784, hidden), n.BatchNorm1d(hidden), n.ReLU(), n.Dropout(0.5),
            n.Linear(hidden, hidden), n.BatchNorm1d(hidden), n.ReLU(), n.Dropout(0.5), n.Linear(hidden, 10)]


def small_layers(lib):
    n = lib.nn if hasattr(lib, "nn") else lib
    return [n.Linear(784, 32), n.ReLU(), n.Linear(32, 10)]


def model_note(model: str, hidden: int) -> str:
    if model == "small":
        return "784-32-10, CE, Adam"
    return f"784-{hidden}-BN-ReLU-Drop-{hidden}-BN-ReLU-Drop-10, CE, Adam"


def batch_data(batch: int):
    g = np.random.default_rng(3)
    return g.random((batch, 784), dtype=np.float32), g.integers(0, 10, batch)


def fastnn_step(batch: int, model: str, hidden: int, **adam_kw):
    """One fastnn training step on the GPU, set up as the CPU 'step' rows do: (step, model, optimizer)."""
    xh, yh = batch_data(batch)
    fm = nn.Sequential(*(lecture_layers(nn, hidden) if model == "lecture" else small_layers(nn)))
    fm.to("cuda")
    fm.needs_input_grad = False
    x, y = fastnn.as_tensor(xh).to("cuda"), fastnn.as_tensor(yh).to("cuda")
    crit, fopt = nn.CrossEntropyLoss(), optim.Adam(fm.parameters(), lr=1e-3, **adam_kw)

    def step():
        crit(fm(x), y)
        fm.backward(crit.backward())
        fopt.step()
        fopt.zero_grad()

    return step


def torch_model(torch, model: str, hidden: int):
    layers = lecture_layers(torch, hidden) if model == "lecture" else small_layers(torch)
    return torch.nn.Sequential(*layers).to(TORCH_DEVICE)


def torch_step(torch, batch: int, module, opt):
    xh, yh = batch_data(batch)
    xt, yt = torch.from_numpy(xh).to(TORCH_DEVICE), torch.from_numpy(yh).to(TORCH_DEVICE)
    crit = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        crit(module(xt), yt).backward()
        opt.step()

    return step


def step_configs(shapes: Shapes):
    return [("lecture", batch) for batch in shapes.step_batches] + [("small", 128 if shapes.hidden >= 1024 else 16)]


def step_name(model: str, batch: int, hidden: int) -> str:
    return f"{'lecture' if model == 'lecture' else 'small 784-32-10'} model{'' if hidden >= 1024 or model == 'small' else f' (hidden {hidden})'}, batch {batch}"


def eager_step_rows(b: GpuBench, torch, shapes: Shapes):
    for model, batch in step_configs(shapes):
        name = step_name(model, batch, shapes.hidden)
        fast = fastnn_step(batch, model, shapes.hidden)
        if torch is None:
            b.compare("step", f"{name}, fastnn eager", fast, note=model_note(model, shapes.hidden))
            continue
        tm = torch_model(torch, model, shapes.hidden)
        t_default = torch_step(torch, batch, tm, torch.optim.Adam(tm.parameters(), lr=1e-3))
        # kernel=True: the step's GPU busy time on both sides, and which of fastnn's kernels fill it
        b.compare("step", f"{name}, vs torch eager", fast, t_default,
                  note=model_note(model, shapes.hidden) + "; torch Adam default (foreach)", kernel=True)
        t_fused = torch_step(torch, batch, tm, torch.optim.Adam(tm.parameters(), lr=1e-3, fused=True))
        b.compare("step", f"{name}, vs torch eager + fused Adam", fast, t_fused)


def fastnn_has_cuda_graphs() -> bool:
    cuda = fastnn_cuda_module()
    return cuda is not None and hasattr(cuda, "graph") and hasattr(cuda, "CUDAGraph")


def capture_fastnn_step(batch: int, model: str, hidden: int, warmup: int = 3):
    """A whole fastnn training step (forward, loss, backward, optimizer.step, zero_grad) captured in
    one CUDA graph the way torch users do with torch.cuda.graph; returns the graph's replay.

    The inputs are the step's own static tensors, as with torch. fastnn refills each replay's
    per-step scalars (Adam's step count, the dropout keys) itself; capturable=True is accepted for
    torch's sake. Warm-up steps run eagerly first: the optimizer creates its state there.
    """
    step = fastnn_step(batch, model, hidden, capturable=True)
    for _ in range(warmup):
        step()
    cuda = fastnn_cuda_module()
    if hasattr(cuda, "synchronize"):
        cuda.synchronize()
    g = cuda.CUDAGraph()
    with cuda.graph(g):
        step()
    g.replay()  # one replay before timing, as the eager side had its warm-up
    return g.replay


def fastnn_cuda_graph_rows(b: GpuBench, torch, shapes: Shapes, compiled: dict | None = None):
    """'fastnn CUDA-graph step' rows: fastnn's whole step replayed from one graph, against torch eager
    and (where `compiled` holds one for the config) torch.compile(mode="reduce-overhead").

    Runs only when fastnn has CUDA graphs (fastnn.cuda.graph / fastnn.cuda.CUDAGraph, torch's API);
    until then it adds nothing. A failed capture is a row with the error, not a crash.
    """
    if not fastnn_has_cuda_graphs():
        return
    for model, batch in step_configs(shapes):
        name = step_name(model, batch, shapes.hidden)
        try:
            replay = capture_fastnn_step(batch, model, shapes.hidden)
        except Exception as e:  # noqa: BLE001  (a capture bug is a result to report)
            b.skip("step", f"{name}, fastnn CUDA graph", f"capture failed: {type(e).__name__}: {e}"[:200])
            continue
        if compiled is None:
            if torch is None:
                b.compare("step", f"{name}, fastnn CUDA graph", replay, note=model_note(model, shapes.hidden))
                continue
            tm = torch_model(torch, model, shapes.hidden)
            t_default = torch_step(torch, batch, tm, torch.optim.Adam(tm.parameters(), lr=1e-3))
            b.compare("step", f"{name}, fastnn CUDA graph vs torch eager", replay, t_default,
                      note="fastnn: one graph replay per step", kernel=True)
        elif (model, batch) in compiled:
            b.compare("step", f"{name}, fastnn CUDA graph vs torch reduce-overhead", replay, compiled[(model, batch)])


def model_loss(torch, module):
    """loss(x, y) = CE(module(x), y): the model and its loss, for torch.compile to take as one graph."""
    crit = torch.nn.CrossEntropyLoss()

    def loss(x, y):
        return crit(module(x), y)

    return loss


def compile_step_rows(b: GpuBench, torch, shapes: Shapes, est_compile_s: float = 30.0):
    """fastnn eager (and CUDA graph, when it exists) against torch.compile(mode="reduce-overhead").

    torch compiles the model and the loss (CUDA graphs for forward and backward); Adam is fused.
    A failed compile is recorded as a row with the error; configs are skipped once the time left
    cannot cover another compile and its row. The first compile of a process pays Inductor's start
    (measured 7 s on an H200, 2-5 s for the ones after), so the estimate starts at est_compile_s and
    then follows twice the last compile's time: a fixed 90 s skipped all three rows of an H100 visit
    that had 72 s left.
    """
    compiled = {}
    for model, batch in step_configs(shapes):
        name = step_name(model, batch, shapes.hidden)
        if b.time_left() < est_compile_s:
            b.skip("step", f"{name}, vs torch reduce-overhead", "not enough --time-limit left for a compile")
            continue
        try:
            tm = torch_model(torch, model, shapes.hidden)
            loss_fn = torch.compile(model_loss(torch, tm), mode="reduce-overhead", dynamic=False)
            xh, yh = batch_data(batch)
            xt, yt = torch.from_numpy(xh).to(TORCH_DEVICE), torch.from_numpy(yh).to(TORCH_DEVICE)
            opt = torch.optim.Adam(tm.parameters(), lr=1e-3, fused=True)
            mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

            def t_comp(opt=opt, loss_fn=loss_fn, xt=xt, yt=yt, mark=mark):
                if mark is not None:  # a new iteration: CUDA-graph trees may reuse the last replay's memory
                    mark()
                opt.zero_grad()
                loss_fn(xt, yt).backward()
                opt.step()

            t0 = time.perf_counter()
            for _ in range(5):  # compiles, records the graphs, then replays
                t_comp()
            b.sync()
            compile_s = time.perf_counter() - t0
            est_compile_s = max(2.0 * compile_s, 10.0)  # the 10 s also cover the row's own timing
        except Exception as e:  # noqa: BLE001  (torch.compile needs triton and a compiler; report, don't die)
            b.skip("step", f"{name}, vs torch reduce-overhead", f"torch.compile failed: {type(e).__name__}: {e}"[:200])
            continue
        compiled[(model, batch)] = t_comp
        fast = fastnn_step(batch, model, shapes.hidden)
        b.compare("step", f"{name}, vs torch reduce-overhead", fast, t_comp,
                  note=f"torch.compile(model + loss, mode='reduce-overhead') + fused Adam; compiled in {compile_s:.0f} s")
    if compiled:
        fastnn_cuda_graph_rows(b, torch, shapes, compiled)


# -- the machine block ----------------------------------------------------------------------------

def _nvidia_smi(query: str) -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_info(torch) -> dict:
    info = fastnn.build_info()
    d = {"cuda_emulated": bool(info.get("cuda_emulated")), "fastnn_cuda_devices": info.get("cuda_device_count")}
    if info.get("cuda_emulated"):
        d["gpu"] = f"CPU emulation of CUDA (csrc/emu) on {cpu_name()}"
    if torch is not None and TORCH_DEVICE == "cuda":
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=torch.cuda.get_device_name(0), compute_capability=f"{p.major}.{p.minor}",
                 sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1),
                 torch_cuda=torch.version.cuda)
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout.splitlines()
            d["nvcc"] = next((ln.strip() for ln in lines if "release" in ln), "")
        except (OSError, subprocess.SubprocessError):
            pass
    driver = _nvidia_smi("driver_version")
    if driver:
        d["driver"] = driver
    d.setdefault("gpu", _nvidia_smi("name") or "CUDA device (no name available)")
    return d


def machine_lines(machine: Machine) -> list[str]:
    e = machine.extra
    card = e.get("gpu", "?")
    bits = [f"compute capability {e['compute_capability']}" if "compute_capability" in e else "",
            f"{e['sms']} SMs" if "sms" in e else "", f"{e['memory_gib']} GiB" if "memory_gib" in e else "",
            f"driver {e['driver']}" if "driver" in e else "", f"CUDA (torch) {e['torch_cuda']}" if "torch_cuda" in e else ""]
    lines = [f"GPU: {card}" + (f" ({', '.join(b for b in bits if b)})" if any(bits) else "") +
             f"; host CPU {machine.cpu}.",
             f"Measured on the card: FP32 peak {machine.peak_gflops:.0f} GFLOP/s ({e.get('peak_source', '')}); "
             f"device-to-device copy {machine.copy_gbps:.1f} GB/s ({e.get('copy_source', '')})" +
             (f"; fastnn's own D2D copy {e['fastnn_copy_gbps']:.1f} GB/s." if e.get("fastnn_copy_gbps", 0) > 0 else ".")]
    if e.get("nvcc"):
        lines.append(f"nvcc: {e['nvcc']}")
    if e.get("note"):
        lines.append(e["note"])
    return lines


def gpu_machine(b: GpuBench, torch_version: str, info: dict, note: str) -> Machine:
    extra = dict(info, peak_source=b.peak_source, copy_source=b.copy_source, fastnn_copy_gbps=b.fastnn_copy)
    if note:
        extra["note"] = note
    return Machine(cpu=cpu_name(), threads=fastnn.get_num_threads(), peak_gflops=b.peak, copy_gbps=b.copy,
                   torch_version=torch_version, fastnn_version=fastnn.__version__, commit=git_commit(),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), extra=extra, device="cuda")


# -- entry point ----------------------------------------------------------------------------------

def run_cuda(args, out: Path) -> int:
    global TORCH_DEVICE
    TORCH_DEVICE = os.environ.get("FASTNN_BENCH_TORCH_DEVICE", "cuda")
    info = fastnn.build_info()
    if not info.get("cuda_available"):
        raise SystemExit("--device cuda: this fastnn build has no usable CUDA device "
                         f"(cuda_compiled={info.get('cuda_compiled')}, devices={info.get('cuda_device_count')}); "
                         "build with FASTNN_CUDA=ON on a machine with a GPU, or FASTNN_CUDA=EMULATE for the smoke run")
    try:
        import torch
        torch_version = torch.__version__
        if TORCH_DEVICE == "cuda" and not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch, torch_version = None, "(not installed)"
    notes = []
    if torch is not None:
        # cuBLAS in true FP32: the comparison fastnn's FP32 kernels are held to
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    else:
        notes.append(f"{NO_TORCH_CUDA}: fastnn timed alone, PyTorch columns empty, no ratios.")
    if torch is not None and TORCH_DEVICE != "cuda":
        notes.append(f"FASTNN_BENCH_TORCH_DEVICE={TORCH_DEVICE}: PyTorch ran on {TORCH_DEVICE}, a code-path test; "
                     "the ratios compare nothing.")
    shapes = FULL
    if info.get("cuda_emulated") or TORCH_DEVICE != "cuda":
        shapes = TINY
        notes.append("Tiny shapes: a smoke run of the code paths (emulated CUDA, or PyTorch off the GPU); "
                     "times say nothing about a GPU.")
    elif args.quick:
        shapes = QUICK
    note = " ".join(notes)
    b = GpuBench(torch, quick=args.quick or shapes is TINY, time_limit=args.time_limit)
    gpu = gpu_info(torch)

    def checkpoint(chart=False):
        save(gpu_machine(b, torch_version, gpu, note), b.rows, out, chart=chart)

    b.on_row = checkpoint  # results.md/json rewritten after every row: a run cut short still leaves its rows
    try:
        b.measure_peaks(shapes)
    except Exception as e:  # noqa: BLE001  (rows without a % of peak beat no rows)
        b.peak_source = b.copy_source = f"measurement failed: {type(e).__name__}: {e}"[:200]
    print(f"GPU: {gpu.get('gpu')}; FP32 peak {b.peak:.0f} GFLOP/s ({b.peak_source}); "
          f"D2D copy {b.copy:.1f} GB/s ({b.copy_source}); torch {torch_version}" + (f"; {note}" if note else ""))
    checkpoint()
    b.guarded("gemm", gemm_rows, b, torch, shapes)
    b.guarded("memory", memory_rows, b, torch, shapes)
    b.guarded("optimizer", optimizer_rows, b, torch, shapes)
    b.guarded("step", eager_step_rows, b, torch, shapes)
    b.guarded("step", fastnn_cuda_graph_rows, b, torch, shapes)
    if torch is not None and not args.quick and not args.no_compile:
        b.guarded("step", compile_step_rows, b, torch, shapes)
    machine = gpu_machine(b, torch_version, gpu, note)
    save(machine, b.rows, out)
    print(to_markdown(machine, b.rows))
    print(f"\nwrote {out}/results.md, results.json" + (", ratios.png" if (out / "ratios.png").exists() else ""))
    return 0
