"""Timing two implementations side by side: interleaved A/B rounds in random order, medians and
paired ratios, the machine's own peak measured beside the rows, and rows flagged when other load
disturbed them."""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastnn import _C


@dataclass
class Row:
    group: str
    name: str
    fastnn_ms: float
    torch_ms: float
    fastnn_min_ms: float
    torch_min_ms: float
    speedup: float  # median over rounds of torch_time / fastnn_time, paired round by round
    rate: float | None = None  # GFLOP/s or GB/s of fastnn
    rate_unit: str = ""
    torch_rate: float | None = None
    peak_fraction: float | None = None  # fastnn's rate / the machine's measured peak
    disturbed: bool = False
    note: str = ""
    # GPU rows: device time per call of the kernels alone (CUPTI), free of launch overhead
    fastnn_kernel_us: float | None = None
    torch_kernel_us: float | None = None
    # the same per kernel name (us per call), longest first: which launch of a row costs what
    fastnn_kernels: dict[str, float] | None = None
    # CPU memory-bound rows: the copy rate measured in the same rounds, the row's "% of peak" base
    copy_gbps: float | None = None
    # CPU rows: the lower of the FMA probes taken just before and after the row (GFLOP/s), and
    # whether "% of peak" is against the FMA peak (GEMM rows): Bench.finish judges both against
    # the highest FMA rate seen in the whole run
    probe_gflops: float | None = None
    fma_peak_based: bool = False


@dataclass
class Machine:
    cpu: str
    threads: int
    peak_gflops: float
    copy_gbps: float
    torch_version: str = ""
    fastnn_version: str = ""
    commit: str = ""
    date: str = ""
    extra: dict = field(default_factory=dict)
    device: str = "cpu"  # "cuda": a GPU run (fastnn.bench.gpu); extra then describes the card

    def title(self) -> str:
        """One line naming the hardware, for the chart's title."""
        if self.device == "cpu":
            return f"{self.cpu}, {self.threads} threads"
        return self.extra.get("gpu", "cuda")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(here: Path | None = None) -> str:
    """The commit of the fastnn checkout this module runs from, else $FASTNN_COMMIT (an installed
    package, or a tree copied without .git, e.g. to a lent GPU machine), else "unknown".

    A git repository that merely contains the installed package is not fastnn's: pyenv's own
    checkout holds site-packages, and its commit once headed a results table. The checkout counts
    only when this very file is its fastnn/bench/harness.py.
    """
    env = os.environ.get("FASTNN_COMMIT", "").strip() or "unknown"
    here = (here or Path(__file__)).resolve()

    def git(*args):
        return subprocess.run(["git", *args], cwd=here.parent, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or (Path(top.stdout.strip()) / "fastnn" / "bench" / "harness.py").resolve() != here:
            return env
        out = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else env
    except (OSError, subprocess.SubprocessError):
        return env


def copy_rate(nbytes: int, threads: int, repeats: int) -> float:
    """The machine's copy rate in GB/s (read + write bytes): the faster of memcpy and a copy with
    streaming stores. Ordinary stores read each destination line before writing it, so memcpy moves
    3 bytes per 2 copied; on a Zen 4 VM glibc's memcpy of 64-256 MB ran 26-29 GB/s where streaming
    stores reached 41-45 in the same runs, and a memory-bound kernel that streams its output would
    read as 150% of a memcpy."""
    return max(_C._probe_copy_gbps(nbytes, threads, repeats),
               _C._probe_copy_gbps(nbytes, threads, repeats, streaming=True))


class Bench:
    """Runs rows and keeps the results; `quick` trades repeats for time."""

    def __init__(self, threads: int, quick: bool = False, log=print):
        self.threads, self.quick, self.log = threads, quick, log
        self.rows: list[Row] = []
        self.rounds = 7 if quick else 21
        self.min_measure_s = 0.002 if quick else 0.005
        self.peak = max(_C._probe_peak_gflops(threads, 0.05) for _ in range(5))
        self.copy = copy_rate(256 << 20, threads, 3 if quick else 7)

    def probe(self) -> float:
        """A short FMA probe, GFLOP/s: below 85% of the machine's peak means another process is on
        our cores. Every probe also raises the peak it is judged against: the opening measurement can
        itself be disturbed (a run on a Zen 4 VM opened at 117 GFLOP/s, half the 230 its rows' probes
        then reached, and flagged nothing)."""
        self.settle()
        value = _C._probe_peak_gflops(self.threads, 0.01)
        self.peak = max(self.peak, value)
        return value

    def finish(self):
        """Judges every row against the run's final peak: disturbed where a probe beside it fell
        below 85% of it, and the GEMM rows' "% of peak" against it."""
        for r in self.rows:
            if r.probe_gflops is not None and r.probe_gflops < 0.85 * self.peak:
                r.disturbed = True
            if r.fma_peak_based and r.rate:
                r.peak_fraction = r.rate / self.peak

    @staticmethod
    def settle():
        """Lets both libraries' idle worker threads stop spinning before the next timed block.

        PyTorch's OpenMP workers spin for milliseconds after each parallel region; timed right
        after, fastnn's 128x784->1024 GEMM took 0.94 ms instead of 0.57 (its second thread found
        its core taken). A 30 ms FMA loop on every core outlasts the spinning and keeps the
        clocks up (a plain sleep let them drop: both libraries then timed slower).
        """
        _C._probe_peak_gflops(_C.get_num_threads(), 0.03)

    @staticmethod
    def _time(fn, inner: int) -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner

    def compare(self, group: str, name: str, fast, ref, work: float | None = None, unit: str = "",
                peak: float | None = None, note: str = "", warmup: int = 3) -> Row:
        """Times `fast` (fastnn) against `ref` (PyTorch). `work` is FLOP or bytes per call."""
        for _ in range(warmup):
            fast()
            ref()
        once = max(self._time(fast, 1), self._time(ref, 1), 1e-7)
        inner = max(1, int(self.min_measure_s / once))
        fma_peak_based = peak is not None and peak == self.peak
        probe_before = self.probe()
        # Memory-bound rows measure the copy rate in the same rounds, shuffled in with both libraries:
        # on this shared machine the session's copy probe has read 44 and 70 GB/s an hour apart,
        # and a share of a rate measured at another moment says little.
        copy_here = peak is not None and peak == self.copy
        tf, tr, ratios, copies = [], [], [], []
        for _ in range(self.rounds):
            pair = [("f", fast), ("r", ref)] + ([("c", None)] if copy_here else [])
            random.shuffle(pair)  # a fixed order makes whatever runs second pay for the first's cache traffic
            got = {}
            for k, fn in pair:
                self.settle()
                got[k] = copy_rate(64 << 20, self.threads, 1) if k == "c" else self._time(fn, inner)
            tf.append(got["f"])
            tr.append(got["r"])
            ratios.append(got["r"] / got["f"])
            if copy_here:
                copies.append(got["c"])
        probe = min(probe_before, self.probe())
        disturbed = probe < 0.85 * self.peak
        med_f, med_r = statistics.median(tf), statistics.median(tr)
        rate = torch_rate = frac = None
        if copies:
            peak = statistics.median(copies)
        elif fma_peak_based:
            peak = self.peak  # this row's own probes may have just raised it
        if work:
            scale = 1e-9
            rate, torch_rate = work * scale / med_f, work * scale / med_r
            if peak:
                frac = rate / peak
        row = Row(group, name, med_f * 1e3, med_r * 1e3, min(tf) * 1e3, min(tr) * 1e3,
                  statistics.median(ratios), rate, unit, torch_rate, frac, disturbed, note,
                  copy_gbps=statistics.median(copies) if copies else None, probe_gflops=probe,
                  fma_peak_based=fma_peak_based)
        self.rows.append(row)
        flag = "  [disturbed]" if disturbed else ""
        rate_txt = f"  {rate:7.1f} {unit}" if rate else ""
        self.log(f"{group:10s} {name:44s} fastnn {row.fastnn_ms:9.3f} ms  torch {row.torch_ms:9.3f} ms  "
                 f"x{row.speedup:5.2f}{rate_txt}{flag}")
        return row

    def single(self, group: str, name: str, fn, note: str = "", repeats: int | None = None) -> Row:
        """Times fastnn alone (no PyTorch counterpart), e.g. a whole MNIST epoch."""
        repeats = repeats or (1 if self.quick else 3)
        probe_before = self.probe()
        times = []
        for _ in range(repeats):
            self.settle()
            times.append(self._time(fn, 1))
        probe = min(probe_before, self.probe())
        disturbed = probe < 0.85 * self.peak
        row = Row(group, name, statistics.median(times) * 1e3, float("nan"), min(times) * 1e3, float("nan"),
                  float("nan"), disturbed=disturbed, note=note, probe_gflops=probe)
        self.rows.append(row)
        self.log(f"{group:10s} {name:44s} fastnn {row.fastnn_ms:9.1f} ms{'  [disturbed]' if disturbed else ''}  {note}")
        return row

    def add(self, row: Row):
        self.rows.append(row)
        self.log(f"{row.group:10s} {row.name:44s} {row.note}")


def machine_lines(machine: Machine) -> list[str]:
    if machine.device != "cpu":
        from fastnn.bench.gpu import machine_lines as gpu_lines

        return gpu_lines(machine)
    return [f"Machine: {machine.cpu}, {machine.threads} threads; measured peak {machine.peak_gflops:.0f} GFLOP/s "
            f"(FMA loop), copy {machine.copy_gbps:.1f} GB/s."]


def to_markdown(machine: Machine, rows: list[Row]) -> str:
    out = [f"fastnn {machine.fastnn_version} (commit {machine.commit or '?'}) vs PyTorch {machine.torch_version}, "
           f"{machine.date}", "", *machine_lines(machine), "",
           "| group | benchmark | fastnn ms (min) | PyTorch ms (min) | speedup | fastnn rate | % of peak | note |",
           "|---|---|---|---|---|---|---|---|"]
    gpu = machine.device != "cpu"
    if gpu:
        out[-2] = out[-2].replace(" note |", " kernel us fastnn / torch (ratio) | note |")
        out[-1] += "---|"
    for r in rows:
        torch_txt = "" if r.torch_ms != r.torch_ms else f"{r.torch_ms:.3f} ({r.torch_min_ms:.3f})"
        speed = "" if r.speedup != r.speedup else f"**{r.speedup:.2f}x**"
        rate = f"{r.rate:.1f} {r.rate_unit}" if r.rate else ""
        frac = f"{100 * r.peak_fraction:.0f}%" if r.peak_fraction else ""
        if frac and r.copy_gbps:
            frac += f" of {r.copy_gbps:.0f} GB/s"
        note = ("disturbed by other load; " if r.disturbed else "") + r.note
        fast_txt = "" if r.fastnn_ms != r.fastnn_ms else f"{r.fastnn_ms:.3f} ({r.fastnn_min_ms:.3f})"
        kernel = ""
        if gpu and (r.fastnn_kernel_us or r.torch_kernel_us):
            kernel = " / ".join(f"{us:.1f}" if us else "?" for us in (r.fastnn_kernel_us, r.torch_kernel_us))
            if r.fastnn_kernel_us and r.torch_kernel_us:
                kernel += f" ({r.torch_kernel_us / r.fastnn_kernel_us:.2f}x)"
        out.append(f"| {r.group} | {r.name} | {fast_txt} | {torch_txt} | {speed} | "
                   f"{rate} | {frac} | {kernel + ' | ' if gpu else ''}{note} |")
    out.append("")
    out.append("speedup = PyTorch time / fastnn time, the median of per-round ratios (rounds interleave the two "
               "in random order); ms are medians with minimums in brackets.")
    if not gpu:
        out.append("% of peak: GEMMs against the FMA-loop peak; memory-bound rows against the copy rate (the "
                   "faster of a 64 MB memcpy and a copy with streaming stores, read + write bytes) measured in "
                   "the same rounds, shuffled in with both libraries, since this machine's bandwidth moves with "
                   "its other tenants.")
    if gpu:
        out.append("On the GPU every timed block starts and ends with a device synchronize, so a row's time is what "
                   "the caller waits for, launch overhead included. For GEMMs the speedup is fastnn's throughput as "
                   "a fraction of cuBLAS's (target >= 0.8); % of peak is against the card's measured FP32 "
                   "(TF32 off) matmul rate for GEMMs and its device-to-device copy rate for memory-bound rows "
                   "(target 80%). Kernel us: GPU time per call of the kernels and copies alone (CUPTI through "
                   "torch.profiler), which tells kernels apart where launch overhead dominates the wall time; "
                   "its ratio is torch / fastnn.")
    return "\n".join(out)


def save(machine: Machine, rows: list[Row], out_dir: Path, log=print, chart: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"machine": asdict(machine), "rows": [asdict(r) for r in rows]},
                                                     indent=1, default=float))
    (out_dir / "results.md").write_text(to_markdown(machine, rows) + "\n")
    if not chart:
        return out_dir
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [r for r in rows if r.speedup == r.speedup and r.speedup > 0]
        if not shown:
            log("no fastnn-vs-PyTorch ratios to chart: no ratios.png written")
            return out_dir
        fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.5))
        labels = [f"{r.group}: {r.name}" for r in shown]
        colors = ["#999999" if r.disturbed else ("#2a9d8f" if r.speedup >= 1 else "#e76f51") for r in shown]
        ax.barh(range(len(shown)), [r.speedup for r in shown], color=colors)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_yticks(range(len(shown)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("speedup over PyTorch (log scale; grey = disturbed by other load)")
        ax.set_title(f"fastnn vs PyTorch {machine.torch_version} — {machine.title()}, {machine.date}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "ratios.png", dpi=110)
        plt.close(fig)
    except ImportError:
        log("matplotlib not installed: no chart written")
    return out_dir


def machine_info(bench: Bench, torch_version: str, fastnn_version: str) -> Machine:
    return Machine(cpu=cpu_name(), threads=bench.threads, peak_gflops=bench.peak, copy_gbps=bench.copy,
                   torch_version=torch_version, fastnn_version=fastnn_version, commit=git_commit(),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   extra={"load_average": os.getloadavg()})
