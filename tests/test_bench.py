"""`fastnn bench --device cuda` as a smoke test: on the emulated CUDA device (CI's .ci/cuda) the
suite runs end to end on tiny shapes; where torch sees no GPU the PyTorch columns stay empty. Each
test takes seconds; the CPU bench's own smoke run is in .ci/run."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import fastnn

INFO = fastnn.build_info()
needs_cuda = pytest.mark.skipif(not INFO["cuda_available"], reason="no CUDA device (real or emulated)")


def run_bench(out, *args, env=None):
    cmd = [sys.executable, "-m", "fastnn", "bench", "--device", "cuda", "--output", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads((out / "results.json").read_text())


@needs_cuda
def test_cuda_bench_quick_smoke(tmp_path):
    stdout, res = run_bench(tmp_path, "--quick")
    rows, machine = res["rows"], res["machine"]
    assert machine["device"] == "cuda" and machine["peak_gflops"] > 0 and machine["copy_gbps"] > 0
    assert machine["extra"]["gpu"] and machine["extra"]["peak_source"] and machine["extra"]["copy_source"]
    groups = {r["group"] for r in rows}
    assert {"gemm", "memory", "optimizer", "step"} <= groups
    assert all(r["fastnn_ms"] > 0 for r in rows)
    assert all(r["rate"] > 0 for r in rows if r["group"] in ("gemm", "memory", "optimizer"))
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") >= len(rows) and "GPU:" in md
    if INFO["cuda_emulated"]:  # torch never sees the emulated device: fastnn alone, no ratios
        assert all(r["torch_ms"] != r["torch_ms"] and r["speedup"] != r["speedup"] for r in rows)
        assert all("no torch CUDA here" in r["note"] for r in rows)
        assert "CPU emulation of CUDA" in machine["extra"]["gpu"]


@needs_cuda
def test_cuda_bench_pytorch_paths_with_torch_on_the_cpu(tmp_path):
    """FASTNN_BENCH_TORCH_DEVICE=cpu runs PyTorch's side of every row on the CPU, so that code
    (written for a GPU no CI has) runs somewhere; the ratios mean nothing."""
    pytest.importorskip("torch")
    stdout, res = run_bench(tmp_path, "--quick", env={"FASTNN_BENCH_TORCH_DEVICE": "cpu"})
    rows = res["rows"]
    names = [r["name"] for r in rows]
    assert all(r["torch_ms"] > 0 and r["speedup"] > 0 for r in rows), names
    assert any("vs torch fused=True" in n for n in names) and any("fused Adam" in n for n in names)
    assert (tmp_path / "ratios.png").stat().st_size > 0
    assert "a code-path test" in (tmp_path / "results.md").read_text()


class _StubGraph:
    """Stands in for fastnn.cuda.CUDAGraph until the real one lands: nothing is captured, and a
    replay does nothing; what is tested is the row's plumbing."""

    replays = 0

    def replay(self):
        _StubGraph.replays += 1


class _StubCapture:
    def __init__(self, g, fail=False):
        self.fail = fail

    def __enter__(self):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return self

    def __exit__(self, *exc):
        return False


@needs_cuda
@pytest.mark.parametrize("fail", [False, True])
def test_cuda_graph_rows_appear_when_fastnn_has_cuda_graphs(monkeypatch, fail):
    from fastnn.bench import gpu

    stub = types.SimpleNamespace(CUDAGraph=_StubGraph, graph=lambda g: _StubCapture(g, fail))
    monkeypatch.setattr(fastnn, "cuda", stub, raising=False)
    assert gpu.fastnn_has_cuda_graphs()
    b = gpu.GpuBench(None, quick=True, log=lambda *a: None)
    gpu.fastnn_cuda_graph_rows(b, None, gpu.TINY)
    assert [r.name for r in b.rows] == [f"{gpu.step_name(m, n, gpu.TINY.hidden)}, fastnn CUDA graph"
                                       for m, n in gpu.step_configs(gpu.TINY)]
    if fail:
        assert all("capture failed: RuntimeError" in r.note for r in b.rows)
    else:
        assert all(r.fastnn_ms > 0 for r in b.rows) and _StubGraph.replays > 0


@needs_cuda
def test_cuda_bench_time_limit_skips_rows_but_writes_results(tmp_path):
    _, res = run_bench(tmp_path, "--quick", "--time-limit", "0")
    assert res["rows"] and all(r["note"].startswith("skipped: --time-limit") for r in res["rows"])


def test_cuda_bench_without_a_cuda_device_says_so(tmp_path, monkeypatch):
    from fastnn.bench.suite import run

    # a CPU-only build's answer, on any build
    monkeypatch.setattr(fastnn, "build_info", lambda: {**INFO, "cuda_available": False, "cuda_device_count": 0})
    with pytest.raises(SystemExit, match="no usable CUDA device"):
        run(["--device", "cuda", "--output", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


@needs_cuda
def test_cuda_kernel_times_sum_the_device_activity_per_call(monkeypatch):
    """kernel_us adds up what CUPTI recorded on the device (through torch.profiler) and divides by
    the calls; no GPU here, so the profiler is replaced by its recorded events."""
    torch = pytest.importorskip("torch")
    from torch.autograd import DeviceType

    from fastnn.bench import gpu

    def event(device_type, us, name="void fastnn::cuda::k<float>(fastnn::cuda::P<float>)"):
        return types.SimpleNamespace(device_type=device_type, name=name,
                                     time_range=types.SimpleNamespace(elapsed_us=lambda: us))

    class RecordedProfile:
        def __init__(self, activities):
            assert activities == [torch.profiler.ProfilerActivity.CUDA]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):  # two kernels and a memset on the device, and CPU-side events that must not count
            return [event(DeviceType.CUDA, 30.0), event(DeviceType.CPU, 1000.0),
                    event(DeviceType.CUDA, 8.0, "void ns::finish_kernel(double const*, long)"),
                    event(DeviceType.CUDA, 2.0, "Memset (Device)")]

    monkeypatch.setattr(torch.profiler, "profile", RecordedProfile)
    calls = []
    b = gpu.GpuBench(None, quick=True, log=lambda *a: None)
    b.kernel_timing = True
    total, per_name = b.kernel_us(lambda: calls.append(1), calls=4)
    assert total == pytest.approx(10.0) and len(calls) == 4
    # per kernel name, longest first, namespaces and parameter lists dropped
    assert list(per_name) == ["k<float>", "finish_kernel", "Memset"]
    assert list(per_name.values()) == pytest.approx([7.5, 2.0, 0.5])
    row = b.compare("gemm", "x", lambda: None, kernel=True)
    assert row.fastnn_kernel_us == pytest.approx(4.0)  # 40 us over kernel_us's default 10 calls
    assert row.fastnn_kernels["k<float>"] == pytest.approx(3.0)

    def broken(activities):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(torch.profiler, "profile", broken)
    assert b.kernel_us(lambda: None) == (None, None) and not b.kernel_timing  # not tried again


def test_gpu_markdown_has_the_kernel_column():
    from fastnn.bench.harness import Machine, Row, to_markdown

    m = Machine(cpu="x", threads=1, peak_gflops=50000.0, copy_gbps=3000.0, device="cuda",
                extra={"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "peak_source": "p", "copy_source": "c"})
    rows = [Row("gemm", "fwd", 0.02, 0.018, 0.019, 0.017, 0.9, 40000.0, "GFLOP/s", 44000.0, 0.8,
                fastnn_kernel_us=10.0, torch_kernel_us=8.0),
            Row("step", "skipped one", *[float("nan")] * 5, note="skipped: --time-limit reached")]
    md = to_markdown(m, rows)
    assert "GPU: NVIDIA H100 80GB HBM3 (driver 580.159.04)" in md
    assert "| 10.0 / 8.0 (0.80x) |" in md and "| kernel us fastnn / torch (ratio) |" in md
    header, rule = [ln for ln in md.splitlines() if ln.startswith("|")][:2]
    assert header.count("|") == rule.count("|") == md.splitlines()[-4].count("|")
    assert "nan" not in md.split("| group |")[1]  # skipped rows have empty cells


def test_cpu_memory_rows_take_their_copy_rate_from_their_own_rounds():
    # A memory-bound row's "% of peak" divides by the copy rate measured in the same rounds as the
    # row (the session's probe can be an hour and a tenant away); GEMM-style rows keep the FMA peak.
    from fastnn.bench.harness import Bench, Machine, to_markdown

    b = Bench(threads=1, quick=True, log=lambda *a: None)
    a = np.ones(1 << 20, np.float32)
    mem = b.compare("memory", "copy 4 MB", lambda: a.copy(), lambda: a.copy(), 2 * a.nbytes, "GB/s", b.copy)
    assert mem.copy_gbps and mem.copy_gbps > 0
    assert mem.peak_fraction == pytest.approx(mem.rate / mem.copy_gbps)
    # An opening probe far below what the row's own probes read (the host had taken a core): the row's
    # "% of peak" divides by the peak those probes raised, not by the value passed in (CI once failed
    # on the 0.05% between the two).
    b.peak = 1.0
    flops = b.compare("gemm", "dot", lambda: a @ a, lambda: a @ a, 2.0 * a.size, "GFLOP/s", b.peak)
    assert b.peak > 1.0 and flops.fma_peak_based
    assert flops.copy_gbps is None and flops.peak_fraction == pytest.approx(flops.rate / b.peak)
    md = to_markdown(Machine(cpu="x", threads=1, peak_gflops=b.peak, copy_gbps=b.copy), [mem, flops])
    assert f"of {mem.copy_gbps:.0f} GB/s" in md and "measured in the same rounds" in md


def test_rows_are_judged_against_the_runs_highest_fma_rate():
    # The opening peak probe can itself be disturbed: every probe beside a row raises the peak, and
    # finish() re-judges every row (disturbed, GEMM "% of peak") against the final one.
    from fastnn.bench.harness import Bench

    b = Bench(threads=1, quick=True, log=lambda *a: None)
    b.peak = 1.0  # as if the opening probe had been starved
    a = np.ones(1 << 16, np.float32)
    gemm = b.compare("gemm", "dot", lambda: a @ a, lambda: a @ a, 2.0 * a.size, "GFLOP/s", b.peak)
    mem = b.compare("memory", "copy", lambda: a.copy(), lambda: a.copy(), 2 * a.nbytes, "GB/s", b.copy)
    assert gemm.fma_peak_based and not mem.fma_peak_based
    assert gemm.probe_gflops > 1.0 and b.peak >= gemm.probe_gflops  # the probes raised the peak
    mem_fraction = mem.peak_fraction
    b.peak = 10 * max(gemm.probe_gflops, mem.probe_gflops)  # a later probe saw 10x more: these were starved
    b.finish()
    assert gemm.disturbed and mem.disturbed
    assert gemm.peak_fraction == pytest.approx(gemm.rate / b.peak)
    assert mem.peak_fraction == mem_fraction  # memory rows keep their copy rate base


def test_copy_rate_is_the_faster_of_memcpy_and_streaming_stores(monkeypatch):
    # memcpy's ordinary stores read every destination line first (3 bytes moved per 2 copied), so
    # a kernel with streaming stores would read as 150% of it: the base is the faster copy.
    from fastnn import _C
    from fastnn.bench import harness

    for streaming in (False, True):  # odd sizes and thread counts: parts are rounded to whole lines
        rate = _C._probe_copy_gbps(1_000_003, 3, 1, streaming=streaming)
        assert 0 < rate < float("inf")
    calls = []

    def probe(nbytes, threads, repeats, streaming=False):
        calls.append((nbytes, threads, repeats, streaming))
        return 45.0 if streaming else 30.0

    monkeypatch.setattr(harness._C, "_probe_copy_gbps", probe)
    assert harness.copy_rate(64 << 20, 2, 3) == 45.0
    assert sorted(calls) == [(64 << 20, 2, 3, False), (64 << 20, 2, 3, True)]


def test_commit_is_fastnns_own_or_given(tmp_path, monkeypatch):
    """A git repository that holds an installed fastnn (pyenv's checkout holds site-packages) is not
    fastnn's: its commit never heads a results table; $FASTNN_COMMIT, else "unknown", does."""
    from fastnn.bench.harness import git_commit

    foreign = tmp_path / "pyenv"
    (foreign / "site-packages" / "fastnn" / "bench").mkdir(parents=True)
    harness = foreign / "site-packages" / "fastnn" / "bench" / "harness.py"
    harness.write_text("# installed copy\n")
    git = ["git", "-C", str(foreign), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "other project"], check=True)
    monkeypatch.setenv("FASTNN_COMMIT", "abc1234")
    assert git_commit(harness) == "abc1234"
    monkeypatch.delenv("FASTNN_COMMIT")
    assert git_commit(harness) == "unknown"
    # a fastnn checkout whose own harness.py this is: its commit
    (foreign / "fastnn" / "bench").mkdir(parents=True)
    own = foreign / "fastnn" / "bench" / "harness.py"
    own.write_text("# checkout\n")
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "fastnn"], check=True)
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(own) == head


def test_profile_step_times_every_kernel_of_the_step():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "profile_step.py")
    done = subprocess.run([sys.executable, script, "--steps", "2", "--batch", "8"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| ") and "|---" not in line]
    kernels = [r for r in rows if r and r not in ("kernel", "kernels")]
    # BatchNorm -> ReLU -> Dropout runs as one op each way (Sequential's fused plan); the two large
    # weights take their Adam step inside their layers' backward, the rest in adam_step calls over
    # the runs of parameters between them
    assert kernels == ["linear_forward", "batchnorm_forward"] * 2 + [
        "linear_forward", "cross_entropy", "linear_backward", "batchnorm_backward",
        "linear_backward + adam", "batchnorm_backward", "linear_backward + adam", "adam_step", "adam_step"], done.stdout
    assert "Outside the kernels" in done.stdout


def test_sklearn_comparison_fits_every_solver_with_both_libraries():
    pytest.importorskip("sklearn")
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_sklearn.py")
    done = subprocess.run([sys.executable, script, "--samples", "400", "--rounds", "1", "--hidden", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()
            if line.startswith("| ") and "|---" not in line and "solver" not in line]
    assert [r[0].strip() for r in rows] == ["adam", "sgd", "lbfgs"], done.stdout
    for r in rows:
        fast_s, sk_s, ratio = float(r[1]), float(r[2]), float(r[3].strip(" *x"))
        assert fast_s > 0 and sk_s > 0 and ratio > 0
        assert all(0 < float(acc) <= 1 for acc in r[4:6])


@needs_cuda
def test_step_launches_lists_the_kernels_of_a_step():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu", "step_launches.py")
    done = subprocess.run([sys.executable, script, "--batch", "16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[2:4] for line in done.stdout.splitlines() if line.startswith("| ") and "|---" not in line]
    parts = [part.strip() for part, _ in rows[1:]]
    kernels = [name.strip() for _, name in rows[1:]]
    assert parts[0] == "forward + loss" and parts[-1] == "optimizer" and "backward" in parts, done.stdout
    # BatchNorm -> ReLU -> Dropout: its BatchNorm launches do the relu and dropout both ways
    assert kernels.count("batchnorm_forward_train") == 2 and kernels.count("batchnorm_backward_train") == 2
    assert "dropout_forward" not in kernels and "dropout_backward" not in kernels
    assert kernels[-1] == "adam_step"
    launches, nodes = (int(w) for w in done.stdout.split("### batch 16: ")[1].split(" graph nodes")[0]
                       .replace(" launches,", "").split())
    assert launches == len(kernels) and nodes >= launches
