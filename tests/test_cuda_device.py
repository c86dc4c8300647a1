"""The CUDA device: copies, fills, the caching allocator, and the first CUDA kernels (activations,
softmax, dropout) against torch autograd and against the CPU kernels. Runs on a real GPU, or on the
CPU emulation of CUDA in a FASTNN_CUDA=EMULATE build; skipped when neither is there."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastnn
from utils import ODD_SIZES, assert_close, randn, torch_of

INFO = fastnn.build_info()
pytestmark = pytest.mark.skipif(not INFO["cuda_available"], reason="no CUDA device (real or emulated)")
EMULATED = INFO.get("cuda_emulated", False)
C = fastnn._C

ALL_DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool"]


def cuda(a):
    return fastnn.as_tensor(np.ascontiguousarray(a)).to("cuda")


def host(t):
    return t.to("cpu").numpy()


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def random_array(rng, shape, dtype):
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype in ("float32", "float64"):
        return np.asarray(rng.standard_normal(shape), dtype)
    return np.asarray(rng.integers(0, 100, shape), dtype)


# ---------------------------------------------------------------------------------------------
# Tensors on the device


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (33, 5), (2, 0, 3), (1000,)])
def test_round_trip_is_exact(rng, dtype, shape):
    a = random_array(rng, shape, dtype)
    t = fastnn.as_tensor(a).to("cuda")
    assert t.device == "cuda:0" and t.shape == shape and t.dtype == np.dtype(dtype)
    back = t.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.numpy(), a)
    assert bits(back.numpy()).tobytes() == bits(a).tobytes()


def test_device_spellings_and_identity():
    t = fastnn.zeros([3], "float32", "cuda:0")
    assert t.device == "cuda:0"
    assert t.to("cuda") is not None and t.to("cuda").data_ptr() == t.data_ptr()  # no copy
    assert t.__dlpack_device__() == (2, 0)
    with pytest.raises(ValueError, match="cuda:1 is not available"):
        fastnn.zeros([3], "float32", "cuda:1")


def test_clone_copy_and_views_on_device(rng):
    a = rng.standard_normal(50).astype(np.float32)
    t = cuda(a)
    c = t.clone()
    assert c.device == "cuda:0" and c.data_ptr() != t.data_ptr()
    np.testing.assert_array_equal(host(c), a)
    # device -> device, host -> device and device -> host copy_, through views at odd offsets
    d = fastnn.zeros([50], "float32", "cuda")
    d._flat_slice(3, [40]).copy_(t._flat_slice(7, [40]))
    expected = np.zeros(50, np.float32)
    expected[3:43] = a[7:47]
    np.testing.assert_array_equal(host(d), expected)
    d.copy_(a[::-1].copy())
    np.testing.assert_array_equal(host(d), a[::-1])
    h = fastnn.zeros([50], "float32")
    h.copy_(t)
    np.testing.assert_array_equal(h.numpy(), a)
    assert t.reshape(5, 10).device == "cuda:0"
    np.testing.assert_array_equal(host(t.reshape(5, 10)), a.reshape(5, 10))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zeros_and_zero_(dtype):
    for shape in [(0,), (1,), (33, 7)]:
        z = fastnn.zeros(shape, dtype, "cuda")
        np.testing.assert_array_equal(host(z), np.zeros(shape, dtype))
    t = cuda(np.ones(33, dtype))
    t.zero_()
    np.testing.assert_array_equal(host(t), np.zeros(33, dtype))


@pytest.mark.parametrize("n", [0] + ODD_SIZES + [4096 + 3])
def test_fill(dtype, n):
    t = fastnn.empty([n], dtype, "cuda")
    t.fill_(-2.5)
    np.testing.assert_array_equal(host(t), np.full(n, -2.5, dtype))
    # an unaligned view: only its elements change
    if n > 2:
        t._flat_slice(1, [n - 2]).fill_(7.0)
        expected = np.full(n, 7.0, dtype)
        expected[[0, -1]] = -2.5
        np.testing.assert_array_equal(host(t), expected)
    t.fill_(float("nan"))
    assert np.isnan(host(t)).all()


def test_fill_rejects_integer_tensor():
    with pytest.raises(TypeError, match="fill_: expected float32 or float64, got int32"):
        fastnn.zeros([3], "int32", "cuda").fill_(1.0)


def test_host_only_operations_say_so():
    t = fastnn.zeros([3], "float32", "cuda")
    with pytest.raises(TypeError, match="cuda:0.*to\\('cpu'\\)"):
        t.numpy()
    assert fastnn.zeros([1], "float64", "cuda").item() == 0.0
    assert "device=cuda:0" in repr(t)


@pytest.mark.skipif(not EMULATED, reason="poisoned memory is an emulator feature")
def test_emulated_device_memory_starts_as_nan():
    C._cuda_empty_cache()
    t = fastnn.empty([12345], "float32", "cuda")  # a fresh cudaMalloc
    assert np.isnan(host(t)).all()
    t.fill_(1.0)
    del t
    reused = fastnn.empty([12345], "float32", "cuda")  # the same block, from the cache
    assert np.isnan(host(reused)).all()


def test_caching_allocator_steady_state_makes_no_cuda_malloc(rng):
    x = rng.standard_normal((64, 100)).astype(np.float32)

    def step():
        a = cuda(x)
        b = C.activation_forward(a, "relu")
        y = C.dropout_forward(b, 0.5, 1, 2, "none")
        return host(C.softmax_forward(y))

    step()
    before = C._cuda_memory_stats()
    for _ in range(5):
        step()
    after = C._cuda_memory_stats()
    assert after["malloc_calls"] == before["malloc_calls"], (before, after)
    assert after["cache_hits"] >= before["cache_hits"] + 5 * 4
    assert after["in_use_bytes"] == before["in_use_bytes"]
    held = fastnn.zeros([1000], "float64", "cuda")
    assert C._cuda_memory_stats()["in_use_bytes"] >= 8000
    C._cuda_empty_cache()
    stats = C._cuda_memory_stats()
    assert stats["cached_bytes"] == 0 and stats["free_calls"] >= 1
    del held


def test_emptying_the_cache_while_a_graph_holds_free_blocks():
    # a block freed after a capture stays with its graph (every replay writes it): emptying the
    # cache then must leave it counted, and free it once the graph is reset and it has joined the
    # shared lists
    C._cuda_empty_cache()
    x = fastnn.zeros([4096], "float32", "cuda")
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        y = C.activation_forward(x, "relu")
    block = C._cuda_memory_stats()["in_use_bytes"]
    del y
    block -= C._cuda_memory_stats()["in_use_bytes"]
    assert block >= 4096 * 4
    C._cuda_empty_cache()
    assert C._cuda_memory_stats()["cached_bytes"] == block
    graph.reset()
    frees = C._cuda_memory_stats()["free_calls"]
    C._cuda_empty_cache()
    stats = C._cuda_memory_stats()
    assert stats["cached_bytes"] == 0 and stats["free_calls"] == frees + 1, stats


def test_launch_log_names_each_kernel_in_order():
    code = (
        "import numpy as np, fastnn\n"
        "from fastnn import _C\n"
        "x = fastnn.tensor(np.ones((8, 5), np.float32)).to('cuda')\n"
        "_C.dropout_forward(_C.activation_forward(x, 'relu'), 0.5, 1, 2)\n"
        "fastnn.cuda.synchronize()\n")
    env = dict(os.environ, FASTNN_LAUNCH_LOG="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    launches = [line.split()[2] for line in out.stderr.splitlines() if line.startswith("fastnn launch ")]
    assert launches[-2:] == ["activation_forward", "dropout_forward"], out.stderr
    assert "block (" in out.stderr


@pytest.mark.skipif(not EMULATED, reason="CUEMU_DEVICE_COUNT is an emulator switch")
def test_import_without_a_device_reports_zero_devices():
    code = (
        "import fastnn\n"
        "info = fastnn.build_info()\n"
        "assert info['cuda_compiled'] and info['cuda_device_count'] == 0 and not info['cuda_available'], info\n"
        "try:\n"
        "    fastnn.zeros([2], 'float32', 'cuda')\n"
        "except ValueError as e:\n"
        "    assert 'cuda:0 is not available (0 CUDA device(s) usable)' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n")
    env = dict(os.environ, CUEMU_DEVICE_COUNT="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# Activations and softmax: vs torch autograd, and vs the CPU kernels

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "none": lambda t: t}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("n", ODD_SIZES + [4099])
def test_activation_vs_torch_and_cpu(rng, dtype, activation, n):
    x = randn(rng, n, dtype, 3.0)
    x[::17] = 0.0  # relu's kink
    dy = randn(rng, n, dtype)
    y = host(C.activation_forward(cuda(x), activation))
    dx = host(C.activation_backward(cuda(y), cuda(dy), activation))

    xt = torch_of(x, requires_grad=True)
    yt = ACTIVATIONS[activation](xt)
    yt.backward(torch_of(dy))
    assert_close(y, yt, dtype, what="y")
    assert_close(dx, xt.grad, dtype, what="dx", scale=np.abs(dy).max())

    y_cpu = C.activation_forward(x, activation).numpy()
    dx_cpu = C.activation_backward(y, dy, activation).numpy()
    if activation in ("relu", "none"):
        # no rounding at all. (tanh and sigmoid round: the CPU's AVX2/AVX-512 loops fuse
        # multiply-adds, and a GPU has its own tanhf and expf, so they agree to float rounding)
        assert bits(y).tobytes() == bits(y_cpu).tobytes()
        assert bits(dx).tobytes() == bits(dx_cpu).tobytes()
    else:
        assert_close(y, y_cpu, dtype, what="y vs cpu")
        assert_close(dx, dx_cpu, dtype, what="dx vs cpu", scale=np.abs(dy).max())


def test_activation_in_place_and_unaligned_views(rng, dtype):
    x = randn(rng, 103, dtype)
    t = cuda(x)
    C.activation_forward(t, "tanh", out=t)  # x and y alias
    assert_close(host(t), np.tanh(x), dtype)
    # views at an element offset take the scalar (unvectorised) path
    t = cuda(x)
    v = t._flat_slice(1, [101])
    out = fastnn.zeros([101], dtype, "cuda")
    C.activation_forward(v, "relu", out=out)
    np.testing.assert_array_equal(host(out), np.maximum(x[1:102], 0))


def test_activation_nan_and_empty(dtype):
    x = np.array([np.nan, -1.0, 2.0, np.inf, -np.inf], dtype)
    y = host(C.activation_forward(cuda(x), "relu"))
    np.testing.assert_array_equal(y, np.array([np.nan, 0, 2, np.inf, 0], dtype))
    assert np.isnan(host(C.activation_forward(cuda(x), "sigmoid"))[0])
    e = C.activation_forward(fastnn.zeros([0, 4], dtype, "cuda"), "tanh")
    assert e.shape == (0, 4) and e.device == "cuda:0"


# (rows, cols): one warp per row up to 1024 columns, one block per row beyond
SOFTMAX_SHAPES = [(1, 1), (7, 10), (33, 33), (4, 1000), (3, 1025), (2, 3000), (2, 3, 5), (0, 5), (5, 0)]


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_vs_torch_and_cpu(rng, dtype, log, shape):
    x = randn(rng, shape, dtype, 4.0)
    dy = randn(rng, shape, dtype)
    y = host(C.softmax_forward(cuda(x), log))
    dx = host(C.softmax_backward(cuda(y), cuda(dy), log))
    assert y.shape == shape and dx.shape == shape

    xt = torch_of(x, requires_grad=True)
    yt = torch.log_softmax(xt, -1) if log else torch.softmax(xt, -1)
    yt.backward(torch_of(dy))
    # float32 log-softmax: y = x - lse carries the rounding of |x| and lse (up to ~10 here), so
    # its error scales with max|y|, which assert_close's default scale is.
    assert_close(y, yt, dtype, what="y")
    assert_close(dx, xt.grad, dtype, what="dx", scale=np.abs(dy).max() if dy.size else None)
    assert_close(y, C.softmax_forward(x, log).numpy(), dtype, what="y vs cpu")
    assert_close(dx, C.softmax_backward(y, dy, log).numpy(), dtype, what="dx vs cpu",
                 scale=np.abs(dy).max() if dy.size else None)


def test_softmax_special_values(dtype):
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.nan, 0.0, 1.0], [1e30, 0.0, -1e30]],
                 dtype)
    for log in (False, True):
        got = host(C.softmax_forward(cuda(x), log))
        want = C.softmax_forward(x, log).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        assert np.array_equal(np.isnan(got), np.isnan(want))


# ---------------------------------------------------------------------------------------------
# Dropout: masks bit for bit with the CPU, whatever the size, offset and alignment


# 2 * 65536 + 389: past two grid-stride passes of the emulated device (4 SMs x 8 blocks x 256
# threads x 8 elements), the last warp's 256 elements cut short
@pytest.mark.parametrize("n", ODD_SIZES + [1003, 4096 + 5, 2 * 65536 + 389])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.25, 0.375, 3 / 256, 1.0])  # 16, 1, 2, 4 and 8 bits an element
def test_dropout_masks_and_outputs_equal_cpu_bit_for_bit(rng, dtype, n, p):
    x = randn(rng, n, dtype)
    x[::11] = -np.abs(x[::11])
    seed, offset = 0x1234_5678_9ABC, 2**40 + 3
    for activation in ("none", "relu"):
        y = host(C.dropout_forward(cuda(x), p, seed, offset, activation))
        y_cpu = C.dropout_forward(x, p, seed, offset, activation).numpy()
        assert bits(y).tobytes() == bits(y_cpu).tobytes(), activation
        dy = randn(rng, n, dtype)
        dx = host(C.dropout_backward(cuda(dy), p, seed, offset, cuda(y), activation))
        dx_cpu = C.dropout_backward(dy, p, seed, offset, y_cpu, activation).numpy()
        assert bits(dx).tobytes() == bits(dx_cpu).tobytes(), activation
    mask = host(C.dropout_mask([n], p, seed, offset, device="cuda"))
    np.testing.assert_array_equal(mask, C.dropout_mask([n], p, seed, offset).numpy())


def test_dropout_mask_on_device_any_shape_and_offset():
    for shape, offset in [((3, 5, 7), 0), ((1,), 2**64 - 1), ((0,), 5), ((2**12 + 1,), 2**32 - 1)]:
        got = host(C.dropout_mask(list(shape), 0.3, 7, offset, device="cuda"))
        want = C.dropout_mask(list(shape), 0.3, 7, offset).numpy()
        assert got.dtype == np.bool_ and got.shape == shape
        np.testing.assert_array_equal(got, want)


def test_dropout_unaligned_and_in_place(rng, dtype):
    x = randn(rng, 1001, dtype)
    t = cuda(x)
    view = t._flat_slice(1, [999])  # misaligned for vector loads
    y = host(C.dropout_forward(view, 0.4, 5, 9, "relu"))
    y_cpu = C.dropout_forward(x[1:1000].copy(), 0.4, 5, 9, "relu").numpy()
    assert bits(y).tobytes() == bits(y_cpu).tobytes()
    C.dropout_forward(t, 0.4, 5, 9, "none", out=t)  # x and y alias
    assert bits(host(t)).tobytes() == bits(C.dropout_forward(x, 0.4, 5, 9).numpy()).tobytes()


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_dropout_vs_torch_autograd(rng, dtype, activation):
    n, p, seed, offset = 1000, 0.3, 42, 7
    x = randn(rng, (40, 25), dtype)
    dy = randn(rng, (40, 25), dtype)
    y = host(C.dropout_forward(cuda(x), p, seed, offset, activation))
    dx = host(C.dropout_backward(cuda(dy), p, seed, offset, cuda(y), activation))
    keep = torch.from_numpy(C.dropout_mask([40, 25], p, seed, offset).numpy())
    assert 0.6 * n < int(keep.sum()) < 0.8 * n
    xt = torch_of(x, requires_grad=True)
    a = torch.relu(xt) if activation == "relu" else xt
    yt = a * keep.to(a.dtype) / (1 - p)
    yt.backward(torch_of(dy))
    assert_close(y, yt, dtype, what="y")
    assert_close(dx, xt.grad, dtype, what="dx")


def test_dropout_nan_and_empty(dtype):
    x = np.full(9, np.nan, dtype)
    assert np.isnan(host(C.dropout_forward(cuda(x), 0.5, 1, 2))).all()  # dropped NaN * 0 stays NaN
    e = C.dropout_forward(fastnn.zeros([0], dtype, "cuda"), 0.5, 1, 2)
    assert e.shape == (0,) and e.device == "cuda:0"


# ---------------------------------------------------------------------------------------------
# Mixed devices: a ValueError naming the argument, before any kernel runs


def test_mixed_devices_name_the_argument(rng):
    y = cuda(randn(rng, 8, "float32"))
    dy_host = randn(rng, 8, "float32")
    with pytest.raises(ValueError, match=r"dy: expected device cuda:0 \(the device of y\), got cpu"):
        C.activation_backward(y, dy_host, "relu")
    with pytest.raises(ValueError, match=r"out: expected device cuda:0, got cpu"):
        C.activation_forward(y, "relu", out=fastnn.zeros([8], "float32"))
    with pytest.raises(ValueError, match=r"out: expected device cpu, got cuda:0"):
        C.softmax_forward(dy_host, out=fastnn.zeros([8], "float32", "cuda"))
    with pytest.raises(ValueError, match=r"y: expected device cpu \(the device of dy\), got cuda:0"):
        C.dropout_backward(dy_host, 0.5, 1, 2, y=y, activation="relu")
    with pytest.raises(ValueError, match=r"dy: expected device cuda:0 \(the device of y\), got cpu"):
        C.softmax_backward(y, dy_host)


# ---------------------------------------------------------------------------------------------
# DLPack streams (shared/design/dlpack.md §5): the consumer names the stream it will read on.


def test_dlpack_stream_argument_of_a_cuda_tensor(rng):
    a = rng.standard_normal(33).astype(np.float32)
    t = cuda(a)
    for stream in (None, -1, 1, 2):  # legacy default, no sync, legacy default, per-thread default
        cap = t.__dlpack__(stream=stream, max_version=(1, 0))
        del cap
    with pytest.raises(ValueError, match="stream=0 is not a CUDA stream"):
        t.__dlpack__(stream=0)
    with pytest.raises(ValueError, match="stream=-7"):
        t.__dlpack__(stream=-7)
    with pytest.raises(TypeError, match="stream must be an int"):
        t.__dlpack__(stream=1.5)
    with pytest.raises(ValueError, match="CPU tensor takes stream=None"):
        fastnn.zeros([2], "float32").__dlpack__(stream=1)
    # the export still shares memory and the deleter balanced its context (the leak check fixture)
    np.testing.assert_array_equal(host(t), a)


@pytest.mark.skipif(EMULATED or not torch.cuda.is_available(), reason="needs torch with a real GPU")
def test_torch_reads_on_a_side_stream_after_fastnn_work(rng):
    # A fill of 256 MiB then an export to torch on a side stream: without the event the side stream
    # could read before the fill lands.
    n = 64 << 20
    t = fastnn.zeros([n], "float32", "cuda")
    side = torch.cuda.Stream()
    for value in (1.0, 2.0, 3.0):
        t.fill_(value)
        with torch.cuda.stream(side):
            view = torch.from_dlpack(t)
            total = view.sum()
        side.synchronize()
        assert total.item() == value * n
        del view


def test_fastnn_asks_a_cuda_producer_for_the_legacy_stream():
    seen = {}

    class Producer:  # a CUDA producer that records what the consumer asked for
        def __init__(self, t):
            self.t = t

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

        def __dlpack__(self, **kwargs):
            seen.update(kwargs)
            return self.t.__dlpack__(**kwargs)

    t = cuda(np.arange(5, dtype=np.float32))
    back = fastnn.from_dlpack(Producer(t))
    assert seen["stream"] == 1
    assert back.data_ptr() == t.data_ptr()
