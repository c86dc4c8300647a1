"""fastnn's CPU thread pool (csrc/core/parallel.cpp): every chunk of every job runs exactly once, with
its own job's function and context, however closely jobs follow each other."""
import os
import shutil
import subprocess
import sys

import pytest

import fastnn
from fastnn import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which(os.environ.get("CXX", "g++"))


@pytest.mark.parametrize("threads", [2, 3])
def test_back_to_back_jobs_run_each_chunk_once(threads):
    """Jobs with nothing between them (a GEMM's packing loops): a worker still leaving one job must
    not claim a chunk of the next while its fields are written. Before the pool closed the last
    job's ticket first, 10 M jobs here ran 497 chunks wrongly (out of range, twice, or with the other
    job's context) on 2 cores, and the lecture's backward pass crashed in CI once."""
    before = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(threads)
        assert _C._parallel_self_check(3_000_000) == 0
    finally:
        fastnn.set_num_threads(before)


@pytest.mark.skipif(CXX is None, reason="g++ is not installed")
def test_thread_pool_has_no_data_race_under_thread_sanitizer(tmp_path):
    """The pool's source built on its own with -fsanitize=thread: TSan reported the race above (3
    reports in 300 k jobs) where the functional check counted 15-32 faults; now neither."""
    binary = tmp_path / "thread_pool_check"
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-g", "-fsanitize=thread", "-I", os.path.join(ROOT, "csrc"),
                            os.path.join(ROOT, "tests", "core", "thread_pool_check.cpp"),
                            os.path.join(ROOT, "csrc", "core", "parallel.cpp"), "-o", str(binary), "-pthread"],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "tsan" in build.stderr.lower():
        pytest.skip("this g++ has no ThreadSanitizer runtime: " + build.stderr[-300:])
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    env.pop("LD_PRELOAD", None)
    out = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=300)
    if "unexpected memory mapping" in out.stderr:
        # Older TSan runtimes cannot map their shadow under the high-entropy address randomisation
        # of recent kernels; without randomisation they can.
        setarch = shutil.which("setarch")
        if setarch is None:
            pytest.skip("ThreadSanitizer cannot run under this kernel's address randomisation")
        out = subprocess.run([setarch, os.uname().machine, "-R", str(binary)], env=env, capture_output=True,
                             text=True, timeout=300)
        if "unexpected memory mapping" in out.stderr or "Operation not permitted" in out.stderr:
            pytest.skip("ThreadSanitizer cannot run under this kernel's address randomisation")
    assert out.returncode == 0 and "ThreadSanitizer" not in out.stderr, out.stdout + out.stderr[-4000:]


def fake_topology(root, siblings, name="core_cpus_list"):
    """A sysfs cpu directory where logical CPU i lists siblings[i] as the CPUs on its core."""
    for cpu, sib in enumerate(siblings):
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / name).write_text(sib + "\n")
    return str(root)


def test_physical_cores_counts_smt_siblings_once(tmp_path):
    """The pool's default size is one thread per physical core (as PyTorch's): a 4-core laptop with
    SMT shows 8 logical CPUs, whose siblings (0 and 4, 1 and 5, ...) share one core's FMA units and
    caches."""
    root = fake_topology(tmp_path, ["0,4", "1,5", "2,6", "3,7", "0,4", "1,5", "2,6", "3,7"])
    assert _C._physical_cores(list(range(8)), root) == 4
    assert _C._physical_cores([0, 4], root) == 1, "an affinity mask of one core's two siblings: one thread"
    assert _C._physical_cores([0, 1, 2, 3], root) == 4, "one sibling of each core: every core counts"
    assert _C._physical_cores([5], root) == 1


def test_physical_cores_older_kernels_and_unreadable_topology(tmp_path):
    """Kernels before 5.x name the file thread_siblings_list; a CPU without topology (a container
    hiding sysfs) gives 0, and the pool then takes one thread per logical CPU."""
    old = fake_topology(tmp_path / "old", ["0-1", "0-1", "2-3", "2-3"], name="thread_siblings_list")
    assert _C._physical_cores([0, 1, 2, 3], old) == 2
    assert _C._physical_cores([0, 1], str(tmp_path / "missing")) == 0
    assert _C._physical_cores([0, 9], old) == 0


def test_default_threads_one_per_physical_core():
    """Without FASTNN_NUM_THREADS / OMP_NUM_THREADS a fresh process sizes its pool from the CPUs it may
    run on, counted by core; either variable overrides that."""
    env = {k: v for k, v in os.environ.items() if k not in ("FASTNN_NUM_THREADS", "OMP_NUM_THREADS")}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    script = ("import os, fastnn; from fastnn import _C; cpus = sorted(os.sched_getaffinity(0)); "
              "print(fastnn.get_num_threads(), _C._physical_cores(cpus) or len(cpus))")
    got, expected = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                   check=True, timeout=120).stdout.split()
    assert got == expected and int(got) >= 1
    env["OMP_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "3"


def _spin_of(env_value):
    env = dict(os.environ, FASTNN_SPIN_US=env_value)
    code = "import fastnn; print(fastnn.build_info()['idle_spin_us'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_idle_spin_is_read_from_the_environment_strictly():
    """FASTNN_SPIN_US sets how long idle workers spin before they sleep (like KMP_BLOCKTIME), read
    when the pool starts; unset or empty keeps the default, and a value that is not a whole number
    >= 0 raises a ValueError naming the variable rather than being read as 0."""
    assert _spin_of("").stdout.strip() == "100"
    assert _spin_of("5000").stdout.strip() == "5000"
    assert _spin_of("0").stdout.strip() == "0"
    for bad in ("-1", "1ms", "abc"):
        r = _spin_of(bad)
        assert r.returncode != 0 and "ValueError" in r.stderr and "FASTNN_SPIN_US" in r.stderr, (bad, r.stderr[-500:])
