"""The CPU allocator keeps freed large blocks for the next tensor of the same size (tensor.cpp), and
asks for huge pages for blocks of 2 MiB and more (core/host_memory.h)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _C

pytestmark = pytest.mark.skipif(not _C._cpu_cache_stats()["available"], reason="cache off in sanitizer builds")

BIG = [512, 1024]  # 2 MiB of float32: above the 256 KiB the cache starts at


@pytest.fixture(autouse=True)
def empty_cache():
    _C._cpu_empty_cache()
    yield
    _C._cpu_empty_cache()


def test_a_freed_block_serves_the_next_tensor_of_its_size():
    t = _C.zeros(BIG, "float32")
    del t
    stats = _C._cpu_cache_stats()
    assert stats["cached_bytes"] == 512 * 1024 * 4
    hits = stats["hits"]
    u = _C.zeros(BIG, "float32")  # zeros() still zeroes a reused block
    assert not np.asarray(u).any()
    after = _C._cpu_cache_stats()
    assert after["hits"] == hits + 1 and after["cached_bytes"] == 0
    v = _C.zeros([512, 1025], "float32")  # another size: a fresh block
    assert _C._cpu_cache_stats()["hits"] == hits + 1
    del u, v


def test_reused_memory_is_not_shared_with_a_live_tensor():
    a = fastnn.tensor(np.full(BIG, 1.0, np.float32))
    b = fastnn.tensor(np.full(BIG, 2.0, np.float32))
    del a
    c = fastnn.tensor(np.full(BIG, 3.0, np.float32))  # takes a's block
    assert np.all(np.asarray(b) == 2.0) and np.all(np.asarray(c) == 3.0)


def test_small_blocks_are_left_to_malloc():
    t = _C.zeros([256, 255], "float32")  # just under 256 KiB
    del t
    assert _C._cpu_cache_stats()["cached_bytes"] == 0


def test_the_cap_bounds_what_is_kept(monkeypatch):
    monkeypatch.setenv("FASTNN_CPU_CACHE_MB", "3")  # room for one 2 MiB block, not two
    ts = [_C.zeros(BIG, "float32") for _ in range(3)]
    del ts
    assert _C._cpu_cache_stats()["cached_bytes"] == 2 << 20
    big = _C.zeros([1024, 1024], "float32")  # 4 MiB: more than the cap on its own
    del big
    assert _C._cpu_cache_stats()["cached_bytes"] == 2 << 20
    monkeypatch.setenv("FASTNN_CPU_CACHE_MB", "4")
    other = _C.zeros([1024, 1024], "float32")
    del other  # the 4 MiB block evicts the 2 MiB one
    assert _C._cpu_cache_stats()["cached_bytes"] == 4 << 20


def test_zero_turns_the_cache_off(monkeypatch):
    monkeypatch.setenv("FASTNN_CPU_CACHE_MB", "0")
    t = _C.zeros(BIG, "float32")
    del t
    assert _C._cpu_cache_stats()["cached_bytes"] == 0


def test_a_malformed_cap_raises_a_value_error_naming_it(monkeypatch):
    monkeypatch.setenv("FASTNN_CPU_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FASTNN_CPU_CACHE_MB"):
        _C.zeros(BIG, "float32")
    _C.zeros([4, 4], "float32")  # small tensors never consult it


def data_address(t):
    return np.asarray(t).__array_interface__["data"][0]


def test_blocks_of_2_mib_and_more_start_on_a_huge_page_boundary(monkeypatch):
    # the madvise(MADV_HUGEPAGE) hint covers the whole 2 MiB pages inside the block, so the block
    # must start on one; whether the kernel then backs them with huge pages is its choice (THP mode)
    for shape in ([1024, 1024], [1024, 784], [512, 1025]):
        t = _C.zeros(shape, "float32")
        assert data_address(t) % (2 << 20) == 0, shape
        assert not np.asarray(t).any()
        np.asarray(t)[-1, -1] = 1.0  # the whole block is writable, past its last whole huge page
    monkeypatch.setenv("FASTNN_HUGE_PAGES", "0")
    off = _C.zeros([1024, 1023], "float32")  # a size not in the cache: a fresh block, no hint
    np.asarray(off)[:] = 2.0
    assert float(np.asarray(off).sum()) == 2.0 * 1024 * 1023


def test_a_malformed_huge_pages_switch_raises_a_value_error_naming_it(monkeypatch):
    monkeypatch.setenv("FASTNN_HUGE_PAGES", "yes")
    with pytest.raises(ValueError, match="FASTNN_HUGE_PAGES: expected 0 or 1"):
        _C.zeros([1024, 1021], "float32")
    _C.zeros([512, 512], "float32")  # under 2 MiB: never consulted


def test_a_forked_child_allocates_from_the_cache_it_inherited():
    code = (
        "import os, fastnn\n"
        "from fastnn import _C\n"
        "t = _C.zeros([512, 1024], 'float32'); del t\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    u = _C.zeros([512, 1024], 'float32'); del u\n"
        "    os._exit(0 if _C._cpu_cache_stats()['hits'] == 1 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
