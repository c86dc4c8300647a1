"""The CPU emulation of CUDA (csrc/emu/cuda_emu.h) on its own: correct kernels give the right
results under every thread schedule, and kernels with real bugs (divergent barrier, early return
before a barrier, missing barrier, lane outside its mask, ...) are reported with the source line.

The C++ programs in tests/emu/ are compiled with g++ here. CUEMU_CXXFLAGS replaces the default
optimisation flags (-O2), e.g. CUEMU_CXXFLAGS="-O1 -g -fsanitize=address,undefined" for the
sanitizer run in CI, which also enables the out-of-bounds case."""
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMU = os.path.join(HERE, "emu")
CXX = shutil.which(os.environ.get("CXX", "g++"))
pytestmark = pytest.mark.skipif(CXX is None, reason="g++ is not installed")

EXTRA = os.environ.get("CUEMU_CXXFLAGS", "-O2").split()
SANITIZED = any(f.startswith("-fsanitize=") for f in EXTRA)
ASAN = any(f.startswith("-fsanitize=") and "address" in f for f in EXTRA)


def compile_command(source, output, *flags):
    return [CXX, "-std=c++17", "-x", "c++", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
            "-DFASTNN_CUDA_EMULATED", "-I", os.path.join(ROOT, "csrc"), "-I", EMU, *EXTRA, *flags,
            os.path.join(EMU, source), "-o", output]


def build(directory, jobs):
    """Compiles (source, output, flags) jobs in parallel; returns the output paths."""
    procs = []
    for source, name, flags in jobs:
        out = str(directory / name)
        procs.append((out, subprocess.Popen(compile_command(source, out, *flags), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)))
    for out, proc in procs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"compiling {out} failed:\n{log}"
    return [out for out, _ in procs]


@pytest.fixture(scope="session")
def binaries(tmp_path_factory):
    good, bad = build(tmp_path_factory.mktemp("emu"),
                      [("good_kernels.cu", "good_kernels", []), ("bad_kernels.cu", "bad_kernels", [])])
    return {"good": good, "bad": bad}


def run(binary, *args, **env):
    return subprocess.run([binary, *args], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=300)


def marker_line(tag):
    with open(os.path.join(EMU, "bad_kernels.cu")) as f:
        for number, line in enumerate(f, 1):
            if f"// LINE:{tag}" in line:
                return number
    raise KeyError(tag)


def at(tag):
    """The regex of a source position reported by the emulator."""
    return rf"bad_kernels\.cu:{marker_line(tag)}\b"


# ---------------------------------------------------------------------------------------------
# Correct kernels


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_good_kernels(binaries, schedule):
    r = run(binaries["good"], CUEMU_SCHEDULE=schedule)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ALL OK"), r.stdout + r.stderr


def test_good_kernels_on_two_os_threads(binaries):
    r = run(binaries["good"], CUEMU_THREADS="2", CUEMU_SCHEDULE="random", CUEMU_SEED="7")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ALL OK"), r.stdout + r.stderr


@pytest.mark.skipif(SANITIZED, reason="the sanitizer run covers the default context switch")
def test_good_kernels_with_ucontext_switch(tmp_path):
    (binary,) = build(tmp_path, [("good_kernels.cu", "good_uc", ["-DCUEMU_UCONTEXT"])])
    r = run(binary, CUEMU_SCHEDULE="reverse")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ALL OK"), r.stdout + r.stderr


@pytest.fixture(scope="session")
def gemm_candidates_check(tmp_path_factory):
    (binary,) = build(tmp_path_factory.mktemp("emu_gemm"),
                      [("gemm_candidates_check.cu", "gemm_candidates_check",
                        ["-I", os.path.join(ROOT, "benchmarks", "gpu")])])
    return binary


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_gemm_candidates_give_the_production_bits(gemm_candidates_check, schedule):
    """The GPU tile sweep's GEMM candidates: the cp.async kernel (benchmarks/gpu/gemm_async.cuh),
    its copies done at once here, and each tile with the other slab loader (TileConfig HOIST): the
    production kernel's bits, under every schedule (a missing barrier before a buffer is refilled shows as
    wrong sums under some)."""
    r = run(gemm_candidates_check, CUEMU_SCHEDULE=schedule)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ALL OK"), r.stdout + r.stderr


def test_gemm_candidates_on_two_threads(gemm_candidates_check):
    """The same checks with blocks spread over two OS threads: stream-K's finishers then wait on
    flags that blocks running beside them raise (gemm_streamk.cuh), not only on finished blocks."""
    r = run(gemm_candidates_check, CUEMU_SCHEDULE="random", CUEMU_THREADS="2")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ALL OK"), r.stdout + r.stderr


def test_bad_schedule_value_is_refused(binaries):
    r = run(binaries["good"], CUEMU_SCHEDULE="sideways")
    assert "CUEMU_SCHEDULE: expected forward, reverse or random, got 'sideways'" in r.stdout


# ---------------------------------------------------------------------------------------------
# Kernels with bugs


def report(binaries, case, schedule="forward", **env):
    r = run(binaries["bad"], case, CUEMU_SCHEDULE=schedule, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def result(binaries, case, schedule):
    m = re.search(r"RESULT: (\S+)", report(binaries, case, schedule))
    assert m, case
    return float(m.group(1))


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_divergent_barrier(binaries, schedule):
    out = report(binaries, "divergent_barrier", schedule)
    assert re.search(rf"ERROR: kernel 'divergent_barrier' block \(0,0,0\) \(schedule {schedule}.*\): divergent barrier: "
                     rf"threads 0-63 wait at __syncthreads \S*{at('divergent_a')} but threads 64-127 arrived at "
                     rf"__syncthreads \S*{at('divergent_b')}", out), out


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_early_return_before_barrier(binaries, schedule):
    out = report(binaries, "early_return", schedule)
    assert re.search(rf"ERROR: kernel 'early_return' .*100 thread\(s\) wait at __syncthreads "
                     rf"\S*{at('early_return')} but 28 of 128 exited before reaching it", out), out


def test_early_return_allowed_like_sm70(binaries):
    assert result(binaries, "early_return_allowed", "reverse") == 1.0


def test_missing_barrier_changes_with_schedule(binaries):
    racy = {s: result(binaries, "missing_barrier", s) for s in ("forward", "reverse")}
    assert racy["forward"] != racy["reverse"], racy
    fixed = {s: result(binaries, "with_barrier", s) for s in ("forward", "reverse", "random")}
    assert set(fixed.values()) == {1140.0}, fixed


def test_warp_synchronous_code_without_syncwarp_changes_with_schedule(binaries):
    forward, reverse = (result(binaries, "warp_synchronous", s) for s in ("forward", "reverse"))
    assert forward != reverse


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_lane_outside_mask(binaries, schedule):
    out = report(binaries, "lane_outside_mask", schedule)
    assert re.search(rf"thread \((\d+),0,0\) \(lane \1\) calls __shfl_sync at \S*{at('outside_mask')} "
                     r"with mask 0x0000000f, which does not include its own lane", out), out


def test_half_warp_skipping_a_shuffle_deadlocks(binaries):
    out = report(binaries, "half_warp_skips_shuffle")
    assert "deadlock: no thread of the block can proceed" in out, out
    assert re.search(rf"32 thread\(s\) \(16-31,48-63\) wait at __syncthreads \S*{at('half_warp_barrier')}", out), out
    assert re.search(rf"warp 0: lanes 0x0000ffff wait in __shfl_down_sync\(mask=0xffffffff\) at \S*{at('half_warp')}; "
                     r"lanes 0xffff0000 never arrived", out), out


def test_lanes_of_one_mask_in_different_collectives(binaries):
    out = report(binaries, "mixed_collectives")
    assert re.search(rf"lanes of mask 0xffffffff of warp 0 are in different warp collectives: "
                     rf"lane 0 in __shfl_xor_sync\(mask=0xffffffff\) at \S*{at('mixed_b')}, "
                     rf"lane 1 in __ballot_sync\(mask=0xffffffff\) at \S*{at('mixed_a')}", out), out


def test_full_mask_shuffle_with_48_threads_reads_poison(binaries):
    assert str(result(binaries, "block_dim_48", "forward")) == "nan"


def test_uninitialised_dynamic_shared_memory_is_nan(binaries):
    assert str(result(binaries, "uninitialised_smem", "reverse")) == "nan"


@pytest.mark.parametrize("case,message", [
    ("smem_over_48k", r"kernel 'uninitialised_smem': invalid launch \(invalid argument\): 49156 bytes of dynamic "
                      r"shared memory exceed the 49152-byte limit \(48 KiB unless cudaFuncSetAttribute"),
    ("block_2048", r"kernel 'store_index': invalid launch \(invalid configuration argument\): block \(2048,1,1\)"),
    ("grid_y_too_large", r"invalid launch \(invalid configuration argument\): grid \(1,65536,1\)"),
    ("nested_launch", r"kernel 'store_index' launched from inside a kernel"),
])
def test_launch_errors(binaries, case, message):
    out = report(binaries, case)
    assert re.search("ERROR: .*" + message, out), out


def test_stack_overflow_hits_the_guard_page(binaries):
    r = run(binaries["bad"], "stack_overflow")
    if ASAN:  # AddressSanitizer's own SEGV report, then the emulator's line naming block and thread
        assert r.returncode != 0 and ("stack-overflow" in r.stderr or "SEGV" in r.stderr), r.stderr[-2000:]
        assert "cuemu: the error above happened in kernel 'stack_overflow' block (0,0,0) thread" in r.stderr
    else:
        assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stdout, r.stderr)
        assert re.search(r"cuemu: stack overflow in kernel 'stack_overflow' block \(0,0,0\) thread \(\d+,0,0\): "
                         r"the thread used more than its 256 KiB of stack; raise CUEMU_STACK_KB", r.stderr), r.stderr
    assert report(binaries, "stack_overflow", CUEMU_STACK_KB="2048").strip() == "NO ERROR"


@pytest.mark.skipif(not ASAN, reason="needs the AddressSanitizer build (CUEMU_CXXFLAGS=-fsanitize=address,...)")
def test_out_of_bounds_read_reported_by_asan_with_block_and_thread(binaries):
    r = run(binaries["bad"], "off_by_one")
    assert r.returncode != 0
    assert "heap-buffer-overflow" in r.stderr, r.stderr[-3000:]
    assert re.search(at("off_by_one"), r.stderr), r.stderr[-3000:]
    assert "cuemu: the error above happened in kernel 'off_by_one' block (3,0,0) thread (4,0,0)" in r.stderr, \
        r.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Through pybind11: an emulator error is a Python RuntimeError


def sanitizer_preload_env():
    """A sanitized extension in an unsanitized python: the runtimes must be loaded first, libstdc++
    with them or ASan aborts on the first C++ throw (shared/design/dlpack.md §6)."""
    if not SANITIZED:
        return {}
    libs = [lib for lib, on in (("libasan.so", ASAN), ("libubsan.so", any("undefined" in f for f in EXTRA)),
                                ("libstdc++.so", True)) if on]
    paths = [subprocess.run([CXX, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
             for lib in libs]
    return {"LD_PRELOAD": " ".join(paths), "ASAN_OPTIONS": "detect_leaks=0"}  # python's own allocations


def test_errors_reach_python_as_runtime_error(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (module,) = build(tmp_path, [("pyext.cu", "cuemu_pyext" + suffix,
                                  ["-shared", "-fPIC", "-fvisibility=hidden", "-I", pybind11.get_include(),
                                   "-I", sysconfig.get_paths()["include"]])])
    code = (
        "import cuemu_pyext\n"
        "try:\n"
        "    cuemu_pyext.divergent()\n"
        "except RuntimeError as e:\n"
        "    assert \"kernel 'divergent' block (0,0,0)\" in str(e) and 'divergent barrier' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "assert cuemu_pyext.warp_sum() == 496.0\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120,
                   env=dict(os.environ, **sanitizer_preload_env()))
