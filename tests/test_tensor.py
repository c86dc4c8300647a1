"""fastnn.Tensor and its zero-copy DLPack exchange with numpy and torch (shared/design/dlpack.md §7)."""
import gc
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

import fastnn
from fastnn import _C

ALL_DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool"]
DL_CODES = {"float32": (2, 32), "float64": (2, 64), "int32": (0, 32), "int64": (0, 64),
            "uint8": (1, 8), "bool": (6, 8)}


def test_build_info_reports_everything():
    info = fastnn.build_info()
    assert info["version"] == fastnn.__version__
    assert info["cpu_isa"] in ("AVX-512", "AVX2", "scalar")
    assert info["threads"] >= 1
    assert isinstance(info["cuda_compiled"], bool)
    # no GPU driver on CI machines: importing works and no device is reported usable
    assert info["cuda_available"] == (info["cuda_device_count"] > 0)


def test_dlpack_struct_layout_matches_spec():
    # DLPack is an ABI: these offsets are fixed by the specification on 64-bit platforms
    layout = _C._dlpack_layout()
    assert layout["DLTensor"] == 48
    assert layout["DLTensor.dtype"] == 20
    assert layout["DLTensor.byte_offset"] == 40
    assert layout["DLManagedTensor"] == 64
    assert layout["DLManagedTensorVersioned"] == 80
    assert layout["DLManagedTensorVersioned.flags"] == 24
    assert layout["DLManagedTensorVersioned.dl_tensor"] == 32


def test_dtype_names_come_from_the_extension():
    # _C.dtypes is the one list (csrc/core/dtype.h) that fastnn.tensor and the messages read
    assert _C.dtypes == tuple(ALL_DTYPES)
    assert _C.dtype_list == "float32, float64, int32, int64, uint8 and bool"
    for name in _C.dtypes:
        assert _C.zeros([2], name).dtype == np.dtype(name)
    with pytest.raises(TypeError, match="dtype: expected one of float32, .* and bool, got 'half'"):
        _C.zeros([2], "half")


@pytest.mark.parametrize("dt", ALL_DTYPES)
def test_all_dtypes_round_trip_zero_copy(dt):
    a = (np.arange(12) % 2).astype(dt).reshape(3, 4)
    t = fastnn.from_dlpack(a)
    assert t.shape == (3, 4) and t.dtype == np.dtype(dt) and t.device == "cpu"
    assert t.data_ptr() == a.ctypes.data
    back = np.from_dlpack(t)
    assert back.ctypes.data == a.ctypes.data and back.dtype == a.dtype
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == a.ctypes.data
    np.testing.assert_array_equal(tt.numpy(), a)


def test_mutations_visible_in_every_direction():
    a = np.zeros(5, np.float32)
    t = fastnn.from_dlpack(a)
    tt = torch.from_dlpack(t)
    tt[1] = 3.0
    assert a[1] == 3.0 and t.numpy()[1] == 3.0
    t.fill_(2.0)
    assert (a == 2.0).all() and (tt == 2.0).all()
    src = torch.arange(4, dtype=torch.float64)
    t2 = fastnn.from_dlpack(src)
    t2.numpy()[0] = 7
    assert src[0] == 7


def test_producer_views_outlive_the_fastnn_tensor():
    t = fastnn.zeros([1000], "float64")
    t.fill_(1.5)
    arr, tt = t.numpy(), torch.from_dlpack(t)
    del t
    gc.collect()
    assert arr.sum() == 1500.0 and tt.sum().item() == 1500.0
    before = _C._debug_stats()["live_storages"]
    del arr, tt
    gc.collect()
    assert _C._debug_stats()["live_storages"] == before - 1


def test_consumer_keeps_source_alive_and_releases_it_once():
    a = np.ones(10)
    ref = weakref.ref(a)
    calls = _C._debug_stats()["foreign_deleter_calls"]
    t = fastnn.from_dlpack(a)
    del a
    gc.collect()
    assert ref() is not None
    del t
    gc.collect()
    assert ref() is None
    assert _C._debug_stats()["foreign_deleter_calls"] == calls + 1


def test_capsules_versioned_legacy_and_single_use():
    t = fastnn.zeros([3], "float32")
    legacy = t.__dlpack__()
    assert "dltensor" in repr(legacy) and "versioned" not in repr(legacy)
    versioned = t.__dlpack__(max_version=(1, 0))
    assert "dltensor_versioned" in repr(versioned)
    assert "dltensor_versioned" in repr(t.__dlpack__(max_version=(2, 0)))
    del legacy, versioned  # unconsumed: freed by their destructors (the leak fixture checks)
    cap = t.__dlpack__(max_version=(1, 0))
    u = fastnn.from_dlpack(cap)
    assert u.data_ptr() == t.data_ptr()
    with pytest.raises(BufferError, match="consumed only once"):
        fastnn.from_dlpack(cap)
    with pytest.raises(TypeError):
        t.__dlpack__(unknown_keyword=1)


def test_unsupported_imports_leave_the_source_intact():
    with pytest.raises(BufferError, match=r"float16 \(DLPack code 2, bits 16"):
        fastnn.from_dlpack(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(BufferError, match="detach"):
        fastnn.from_dlpack(torch.zeros(3, requires_grad=True))
    with pytest.raises(TypeError, match="__dlpack__"):
        fastnn.from_dlpack([1, 2, 3])


def test_tensor_and_as_tensor_take_what_fastnn_can_hold():
    # tensor() copies, so it widens what fastnn has no dtype for; as_tensor() shares what it can
    # and copies the same way what it cannot (a float16 or byte-swapped numpy array)
    for make in (fastnn.tensor, fastnn.as_tensor):
        half = make(np.array([1.5, -2.25], np.float16))
        assert half.dtype == np.float32 and half.numpy().tolist() == [1.5, -2.25]
        swapped = make(np.array([1.5, 3.0], ">f4"))
        assert swapped.dtype == np.float32 and swapped.numpy().tolist() == [1.5, 3.0]
        assert make(np.array([7, -8], ">i8")).numpy().tolist() == [7, -8]
        assert make(np.array([1, 2], np.int16)).dtype == np.int64
        assert make(np.array([0.5], np.longdouble)).dtype == np.float64
        with pytest.raises(TypeError, match="^data: unsupported dtype bfloat16 .*float32, float64"):
            make(torch.ones(2, dtype=torch.bfloat16))
        with pytest.raises(TypeError, match="^dtype: fastnn has no float16 tensors"):
            make([1.0, 2.0], dtype="float16")
    grad = torch.ones(3, requires_grad=True)
    assert fastnn.tensor(grad).numpy().tolist() == [1.0, 1.0, 1.0]  # a copy: the graph is not shared
    with pytest.raises(TypeError, match="^data: .*requires grad.*detach"):
        fastnn.as_tensor(grad)
    shared = np.arange(4.0, dtype=np.float32)
    assert fastnn.as_tensor(shared).data_ptr() == shared.ctypes.data


@pytest.mark.parametrize("bad, says", [
    (np.ones((4, 5), np.float16), "unsupported dtype float16"),
    (torch.ones(4, 5, dtype=torch.bfloat16), "unsupported dtype bfloat16"),
    (np.ones((4, 5), np.complex64), "unsupported dtype complex64"),
    (torch.ones(4, 5, requires_grad=True), "requires grad.*detach"),
    (np.ones((4, 5), ">f4"), "native byte order"),
])
def test_op_arguments_that_cannot_be_imported_raise_type_errors_naming_them(bad, says):
    # from_dlpack raises BufferError (the DLPack protocol's error); an op's argument that cannot be
    # read is the wrong kind of argument, a TypeError naming it like every other argument check
    import fastnn.functional as F
    from fastnn import nn

    good = np.ones((4, 5), np.float32)
    calls = [
        ("x", lambda a: F.relu(a)),
        ("weight", lambda a: F.linear(good, a)),
        ("x", lambda a: F.batch_norm(a)),
        ("logits", lambda a: F.cross_entropy(a, np.zeros(4, np.int64))),
        ("x", lambda a: nn.Linear(5, 3)(a)),
        ("x", lambda a: nn.Softmax()(a)),
    ]
    for name, call in calls:
        with pytest.raises(TypeError, match=f"^{name}: .*{says}"):
            call(bad)
    with pytest.raises(BufferError):  # from_dlpack itself keeps the protocol's error
        fastnn.from_dlpack(bad)


def test_producers_before_the_2023_array_api_and_failing_producers():
    # a __dlpack__ without keywords gets a plain call after the TypeError; any other error it
    # raises reaches the caller as it is
    class Legacy:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self):
            return self.a.__dlpack__()

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    class Broken(Legacy):
        def __dlpack__(self, **kwargs):
            raise BufferError("producer says no")

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = fastnn.from_dlpack(Legacy(a))
    assert t.shape == (2, 3) and t.numpy().tolist() == a.tolist()
    with pytest.raises(BufferError, match="producer says no"):
        fastnn.from_dlpack(Broken(a))


def test_zero_dim_empty_and_size_one_dims():
    t = fastnn.from_dlpack(np.array(3.5))
    assert t.shape == () and t.item() == 3.5
    t = fastnn.from_dlpack(torch.tensor(2.0))
    assert t.shape == () and t.item() == 2.0
    e = fastnn.from_dlpack(torch.zeros(0, 3))
    assert e.shape == (0, 3) and np.from_dlpack(e).shape == (0, 3)
    e = fastnn.from_dlpack(np.zeros((0, 3)))
    assert e.shape == (0, 3)
    # a size-1 dimension may carry any stride: still contiguous, still zero-copy
    base = np.zeros((6, 12), np.float32)
    row = base[2:3, :6]
    t = fastnn.from_dlpack(row, copy=False)
    assert t.data_ptr() == row.ctypes.data


@pytest.mark.parametrize("make", [
    lambda: np.arange(12.0).reshape(3, 4).T,
    lambda: np.arange(12.0)[::2],
    lambda: np.arange(12.0)[::-1],
    lambda: np.broadcast_to(np.arange(4.0), (3, 4)),
    lambda: torch.arange(12.0).reshape(3, 4).t(),
    lambda: torch.arange(4.0).expand(3, 4),
])
def test_non_contiguous_inputs_copy_or_raise(make):
    x = make()
    expected = np.array(x if isinstance(x, np.ndarray) else x.numpy())
    t = fastnn.from_dlpack(x)
    np.testing.assert_array_equal(t.numpy(), expected)
    with pytest.raises(BufferError, match="not C-contiguous"):
        fastnn.from_dlpack(make(), copy=False)


def test_unaligned_input_is_copied():
    raw = np.zeros(41, np.uint8)
    x = np.frombuffer(raw.data, dtype=np.float32, count=10, offset=1)
    t = fastnn.from_dlpack(x)
    assert t.data_ptr() % 4 == 0
    np.testing.assert_array_equal(t.numpy(), x)
    with pytest.raises(BufferError, match="aligned"):
        fastnn.from_dlpack(x, copy=False)


def test_read_only_is_kept():
    a = np.arange(4.0)
    a.flags.writeable = False
    t = fastnn.from_dlpack(a)
    assert t.is_readonly
    with pytest.raises(ValueError, match="read-only"):
        t.fill_(0.0)
    assert not np.from_dlpack(t).flags.writeable
    with pytest.raises(BufferError, match="read-only"):
        t.__dlpack__()
    copy = np.from_dlpack(t, copy=True)
    assert copy.flags.writeable and copy.ctypes.data != a.ctypes.data


def test_copy_true_export_does_not_alias():
    t = fastnn.zeros([4], "float32")
    c = np.from_dlpack(t, copy=True)
    c[0] = 1
    assert t.numpy()[0] == 0


def test_views_export_folded_pointer():
    t = fastnn.zeros([10], "float64")
    v = t._flat_slice(3, [2, 2])
    arr = np.from_dlpack(v)
    assert arr.ctypes.data == t.data_ptr() + 3 * 8 and arr.shape == (2, 2)
    arr[:] = 5
    assert list(t.numpy()[2:8]) == [0, 5, 5, 5, 5, 0]
    with pytest.raises(IndexError):
        t._flat_slice(8, [3])


def test_deleter_runs_without_the_gil_inside_torch_backward():
    t = fastnn.zeros([8], "float64")
    t.fill_(2.0)
    x = torch.from_dlpack(t)
    w = torch.ones(8, dtype=torch.float64, requires_grad=True)
    (x * w).sum().backward()  # autograd saves x, then frees it on its own thread
    del x, t
    gc.collect()
    assert torch.allclose(w.grad, torch.full((8,), 2.0, dtype=torch.float64))


def test_round_trip_loop_does_not_leak():
    stats = _C._debug_stats()
    for _ in range(20000):
        a = np.ones(16, np.float32)
        np.from_dlpack(fastnn.from_dlpack(a))
        torch.from_dlpack(fastnn.from_dlpack(torch.ones(4)))
        fastnn.zeros([2], "float32").__dlpack__(max_version=(1, 0))
    gc.collect()
    after = _C._debug_stats()
    assert after["live_storages"] == stats["live_storages"]
    assert after["live_export_contexts"] == stats["live_export_contexts"]
    assert after["owned_bytes"] == stats["owned_bytes"]


def test_negative_strides_never_reach_torch():
    # torch aborts the process on negative-stride DLPack input; fastnn always exports compact
    # row-major strides, so even a reversed numpy array is safe to hand on. Checked in a
    # subprocess in case it is not.
    code = ("import numpy as np, torch, fastnn\n"
            "t = fastnn.from_dlpack(np.arange(6.0)[::-1])\n"
            "print(torch.from_dlpack(t).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]"


def test_tensor_factory_and_helpers():
    t = fastnn.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert t.dtype == np.float32 and t.shape == (2, 2) and len(t) == 2
    assert fastnn.tensor([1, 2]).dtype == np.int64
    assert fastnn.tensor(np.arange(3.0)).dtype == np.float64
    src = np.arange(3.0)
    c = fastnn.tensor(src)
    assert c.data_ptr() != src.ctypes.data  # tensor() copies, as torch.tensor does
    r = t.reshape(4)
    assert r.shape == (4,) and r.data_ptr() == t.data_ptr()
    assert t.reshape(-1, 1).shape == (4, 1)
    with pytest.raises(ValueError, match="cannot view"):
        t.reshape(3)
    assert np.asarray(t).sum() == 10
    assert "tensor(" in repr(t)
    assert fastnn.zeros([2, 3], "float64").numpy().sum() == 0
    with pytest.raises(TypeError, match="dtype"):
        fastnn.zeros([2], "complex64")
    with pytest.raises(ValueError, match="device"):
        fastnn.zeros([2], "float32", "tpu")
    for bad in (np.array([object()]), ["a", "b"], [1 + 2j]):
        with pytest.raises(TypeError, match="^data: expected numbers or bools"):
            fastnn.tensor(bad)


def test_cuda_device_without_gpu_raises_cleanly():
    if fastnn.build_info()["cuda_available"]:
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError):
        fastnn.zeros([2], "float32", "cuda")


def test_thread_pool_survives_fork_and_thread_changes():
    import multiprocessing as mp

    x = np.random.default_rng(0).standard_normal((256, 300)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((200, 300)).astype(np.float32)
    expected = _C.linear_forward(x, w).numpy().copy()  # starts the pool's workers in this process
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:  # the child has no worker threads: its kernels must still run
        got = pool.apply(_forward_in_child, (x, w))
    np.testing.assert_array_equal(got, expected)
    threads = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(1)
        np.testing.assert_array_equal(_C.linear_forward(x, w).numpy(), expected)
        fastnn.set_num_threads(3)
        np.testing.assert_array_equal(_C.linear_forward(x, w).numpy(), _C.linear_forward(x, w).numpy())
    finally:
        fastnn.set_num_threads(threads)


def _forward_in_child(x, w):
    return np.array(_C.linear_forward(x, w).numpy(), copy=True)
