"""Dropout: the Philox4x32-10 generator against Random123's known answers, the kernels' masks against
an independent numpy Philox, forward and backward against torch autograd with that mask."""
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastnn
from fastnn import _C
from utils import ODD_SIZES, assert_close, randn, torch_of

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter[4], key[2] -> output[4].
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

SIZES = ODD_SIZES + [4099]
SEEDS_OFFSETS = [(0, 0), (1234, 7), (0xFFFFFFFFFFFFFFFF, 0x8000000000000005), (0x5EED, 1 << 32)]


# ----- an independent Philox4x32-10 in numpy: uint64 lanes holding 32-bit words -----

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def philox_np(c0, c1, c2, c3, k0, k1):
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _LOW32 for c in (c0, c1, c2, c3))
    for r in range(10):
        key0 = np.uint64((k0 + r * _W0) & 0xFFFFFFFF)
        key1 = np.uint64((k1 + r * _W1) & 0xFFFFFFFF)
        p0, p1 = _M0 * c0, _M1 * c2  # < 2^64: exact
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ key0, p1 & _LOW32, (p0 >> _SHIFT) ^ c3 ^ key1, p0 & _LOW32
    return c0, c1, c2, c3


def threshold(p):
    return math.floor(p * 2.0**16 + 0.5)


def bits_of(t):
    """Random bits an element draws at threshold t: the fewest (1, 2, 4, 8 or 16) that express t."""
    return next(b for b in (1, 2, 4, 8, 16) if t % 2 ** (16 - b) == 0)


def mask_np(n, p, seed, offset):
    """keep[i] = field i % (128 / b) of Philox((i // (128 / b), offset), seed), its b bits taken from
    the four words read as one little-endian 128-bit number, times 2^(16 - b) >= round(p * 2^16),
    b = bits_of(round(p * 2^16))."""
    t = threshold(p)
    b = bits_of(t)
    per_quad = 128 // b
    q = np.arange((n + per_quad - 1) // per_quad, dtype=np.uint64)
    words = philox_np(q, q >> _SHIFT, np.full_like(q, offset & 0xFFFFFFFF), np.full_like(q, offset >> 32),
                      seed & 0xFFFFFFFF, seed >> 32)
    w = np.stack(words, axis=1).astype(np.uint32)  # (quads, 4)
    # the 128 bits of each quad, least significant first, grouped b at a time
    bits = np.unpackbits(w.view(np.uint8), axis=1, bitorder="little").reshape(len(q), per_quad, b)
    fields = (bits.astype(np.uint32) << np.arange(b, dtype=np.uint32)).sum(axis=2)
    return (fields.ravel()[:n] << (16 - b)) >= t


def scale_of(p):
    return 1.0 / (1.0 - p) if p < 1 else 0.0


def as_np(t):
    return np.asarray(t)


# ----- the generator -----

@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert _C._philox4x32_10(list(counter), list(key)) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_numpy_reference_known_answers(counter, key, expected):
    out = philox_np(*[np.array([c], dtype=np.uint64) for c in counter], *key)
    assert tuple(int(w[0]) for w in out) == expected


def test_philox_binding_errors():
    with pytest.raises(ValueError, match="counter"):
        _C._philox4x32_10([0, 0, 0], [0, 0])
    with pytest.raises(ValueError, match="key"):
        _C._philox4x32_10([0, 0, 0, 0], [0])
    with pytest.raises(ValueError, match="counter"):
        _C._philox4x32_10([1 << 32, 0, 0, 0], [0, 0])
    with pytest.raises(TypeError, match="key"):
        _C._philox4x32_10([0, 0, 0, 0], [0.5, 0])


# ----- the mask -----

@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_mask_matches_numpy_philox(seed, offset):
    for n in SIZES:
        for p in (0.1, 0.5, 0.77, 0.25, 0.375, 3 / 256):  # 16, 1, 16, 2, 4 and 8 bits an element
            m = as_np(_C.dropout_mask((n,), p, seed, offset))
            assert m.dtype == np.bool_ and m.shape == (n,)
            np.testing.assert_array_equal(m, mask_np(n, p, seed, offset), err_msg=f"n={n} p={p}")


def test_mask_is_a_function_of_the_element_index():
    # any shape and any prefix see the same bits: the mask never depends on how work is split
    full = as_np(_C.dropout_mask((5, 7, 33), 0.4, 99, 3)).ravel()
    np.testing.assert_array_equal(full[:1000], as_np(_C.dropout_mask(1000, 0.4, 99, 3)))
    np.testing.assert_array_equal(full, mask_np(full.size, 0.4, 99, 3))


def test_threshold_edges():
    n = 4099
    assert as_np(_C.dropout_mask(n, 0.0, 1, 2)).all()
    assert not as_np(_C.dropout_mask(n, 1.0, 1, 2)).any()
    # the smallest p above 0 and the largest below 1 that still move the threshold
    for p in (2.0**-16, 1 - 2.0**-16, 3 * 2.0**-17):
        np.testing.assert_array_equal(as_np(_C.dropout_mask(n, p, 5, 6)), mask_np(n, p, 5, 6))
    # p = 2^-17 - 2^-30 rounds to threshold 0: every element kept, the output x times 1 exactly
    p = 2.0**-17 - 2.0**-30
    assert as_np(_C.dropout_mask(n, p, 5, 6)).all()
    assert (as_np(_C.dropout_forward(np.full(n, 3.0), p, 5, 6)) == 3.0).all()
    # p so close to 1 that round(p * 2^16) = 2^16: nothing kept, output zero, not NaN
    p = 1 - 2.0**-18
    assert not as_np(_C.dropout_mask(n, p, 1, 2)).any()
    y = as_np(_C.dropout_forward(np.ones(n), p, 1, 2))
    assert (y == 0).all()


def test_bits_an_element():
    # the fewest bits that express round(p * 2^16) exactly
    assert [bits_of(threshold(p)) for p in (0.5, 0.25, 0.75, 0.125, 0.375, 1 / 256, 255 / 256, 0.1, 0.2, 0.3)] == \
        [1, 2, 2, 4, 4, 8, 8, 16, 16, 16]


@pytest.mark.parametrize("p", [0.5, 0.25, 0.375, 3 / 256])
def test_few_bit_masks_are_independent_bernoulli(p):
    # at b < 16 bits neighbours share a Philox word: the fraction kept, and the agreement of each
    # element with its neighbour and with the element one quad on, are those of independent draws
    n = 1_000_000
    keep = as_np(_C.dropout_mask(n, p, 77, 3))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - (1 - p)) < 5 * sigma
    same = p * p + (1 - p) ** 2
    for lag in (1, 128 // bits_of(threshold(p))):
        agree = (keep[lag:] == keep[:-lag]).mean()
        assert abs(agree - same) < 5 * math.sqrt(same * (1 - same) / n), (lag, agree)


def test_fraction_kept():
    n = 1_000_000
    for p in (0.1, 0.5, 0.9):
        kept = as_np(_C.dropout_mask(n, p, 2024, 1)).mean()
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(kept - (1 - p)) < 5 * sigma, (p, kept)


def test_streams_differ_by_seed_and_offset():
    n = 100_000
    base = as_np(_C.dropout_mask(n, 0.5, 1, 0))
    for other in (_C.dropout_mask(n, 0.5, 2, 0), _C.dropout_mask(n, 0.5, 1, 1),
                  _C.dropout_mask(n, 0.5, 1 << 32, 0), _C.dropout_mask(n, 0.5, 1, 1 << 32)):
        agree = (as_np(other) == base).mean()
        assert abs(agree - 0.5) < 0.01


@pytest.mark.parametrize("p", [0.3, 0.5, 0.25, 3 / 256])  # 16, 1, 2 and 8 bits an element
def test_same_mask_for_one_and_two_threads(p):
    n = 1_000_003  # well past the parallel grain, and no multiple of any block of quads
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    before = fastnn.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fastnn.set_num_threads(threads)
            results.append((as_np(_C.dropout_mask(n, p, 11, 12)).copy(),
                            as_np(_C.dropout_forward(x, p, 11, 12, activation="relu")).copy()))
    finally:
        fastnn.set_num_threads(before)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    keep = mask_np(n, p, 11, 12)
    np.testing.assert_array_equal(results[0][0], keep)
    np.testing.assert_array_equal(results[0][1], np.maximum(x, 0) * np.where(keep, np.float32(1 / (1 - p)), 0))


@pytest.mark.parametrize("p", [0.3, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_past_the_cache_take_the_same_mask(dtype, p):
    """Passes larger than the caches write their output with streaming stores (whole aligned lines
    from an L1 buffer, the ragged ends with ordinary stores): the same values as the plain loop.
    2^21 + 13 float32 elements move just over the 16 MiB at which that starts."""
    n = (1 << 21) + 13 if dtype == np.float32 else (1 << 20) + 13
    rng = np.random.default_rng(5)
    x = rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal(n).astype(dtype)
    keep = mask_np(n, p, 21, 22)
    scale = dtype(1 / (1 - p))
    y = as_np(_C.dropout_forward(x, p, 21, 22, activation="relu"))
    np.testing.assert_array_equal(y, np.maximum(x, 0) * np.where(keep, scale, dtype(0)))
    y = as_np(_C.dropout_forward(x, p, 21, 22))
    np.testing.assert_array_equal(y, x * np.where(keep, scale, dtype(0)))
    dx = as_np(_C.dropout_backward(dy, p, 21, 22))
    np.testing.assert_array_equal(dx, dy * np.where(keep, scale, dtype(0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_outputs_past_the_cache(dtype):
    """p = 0 and p = 1 draw no mask (act(x) times 1 or 0), in the same per-ISA loops as the mask
    kernels: past 16 MiB moved their output is streamed too, into fastnn's aligned storage or a
    numpy view 5 elements off it, and every element matches the plain relu / zeros."""
    n = (1 << 21) + 13 if dtype == np.float32 else (1 << 20) + 13
    x = np.random.default_rng(6).standard_normal(n).astype(dtype)
    x[:3] = [-0.0, np.inf, -np.inf]
    relu = as_np(_C.activation_forward(x, "relu")).tobytes()
    assert as_np(_C.dropout_forward(x, 0.0, 3, 4, activation="relu")).tobytes() == relu
    out = np.zeros(n + 16, dtype)[5:5 + n]
    _C.dropout_forward(x, 0.0, 3, 4, "relu", out)
    assert out.tobytes() == relu
    finite = x[3:]
    assert not as_np(_C.dropout_forward(finite, 1.0, 3, 4, activation="relu")).any()
    _C.dropout_forward(finite, 1.0, 3, 4, "none", out[3:])
    assert not out[3:].any()


def test_same_mask_on_every_isa_variant():
    """The hand-vectorised AVX-512 / AVX2 Philox and the portable loop give identical bits."""
    code = ("import hashlib, numpy as np, fastnn;"
            "m = np.asarray(fastnn._C.dropout_mask(300_001, 0.37, 0xDEADBEEFCAFEF00D, 0x123456789));"
            "x = np.linspace(-1, 1, 300_001);"
            "y = np.asarray(fastnn._C.dropout_forward(x, 0.37, 0xDEADBEEFCAFEF00D, 0x123456789));"
            "print(hashlib.sha256(m.tobytes() + y.tobytes()).hexdigest(), fastnn.build_info()['cpu_isa'])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    digests = {}
    for isa in ("scalar", "avx2", "avx512"):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, FASTNN_ISA=isa),
                             capture_output=True, text=True, check=True).stdout.split()
        digests[out[1]] = out[0]
    m = mask_np(300_001, 0.37, 0xDEADBEEFCAFEF00D, 0x123456789)
    y = np.linspace(-1, 1, 300_001) * np.where(m, 1 / (1 - 0.37), 0.0)
    expected = hashlib.sha256(m.tobytes() + y.tobytes()).hexdigest()
    assert set(digests.values()) == {expected}, digests


# ----- forward and backward against torch -----

def torch_dropout(x_t, mask, p, activation):
    a = torch.relu(x_t) if activation == "relu" else x_t
    return a * torch.from_numpy(mask).to(a.dtype) * scale_of(p)


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("shape", [(1,), (7,), (33, 7), (1000, 33), (3, 5, 7)])
def test_forward_backward_match_torch(dtype, rng, activation, shape):
    for p in (0.2, 0.5, 0.9):
        check_against_torch(dtype, rng, activation, shape, p, seed=77, offset=5)


def check_against_torch(dtype, rng, activation, shape, p, seed, offset):
    x = randn(rng, shape, dtype)
    dy = randn(rng, shape, dtype)
    mask = mask_np(x.size, p, seed, offset).reshape(shape)

    y = _C.dropout_forward(x, p, seed, offset, activation=activation)
    x_t = torch_of(x, requires_grad=True)
    y_t = torch_dropout(x_t, mask, p, activation)
    assert_close(y, y_t, dtype, what="y")

    y_t.backward(torch_of(dy))
    dx = _C.dropout_backward(dy, p, seed, offset, y=y, activation=activation)
    assert_close(dx, x_t.grad, dtype, what="dx")


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_p0_is_an_exact_identity(dtype, rng, activation):
    x = randn(rng, (1000, 33), dtype)
    x[0, :3] = [-0.0, np.inf, -np.inf]
    y = as_np(_C.dropout_forward(x, 0.0, 3, 4, activation=activation))
    expected = as_np(_C.activation_forward(x, activation))
    assert y.tobytes() == expected.tobytes()
    dy = randn(rng, x.shape, dtype)
    dx = as_np(_C.dropout_backward(dy, 0.0, 3, 4, y=y, activation=activation))
    expected_dx = as_np(_C.activation_backward(y, dy, activation))
    assert dx.tobytes() == expected_dx.tobytes()


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_p1_gives_zeros(dtype, rng, activation):
    x = randn(rng, (257, 9), dtype) * 1e30
    y = as_np(_C.dropout_forward(x, 1.0, 3, 4, activation=activation))
    assert not np.isnan(y).any() and (y == 0).all()
    dx = as_np(_C.dropout_backward(randn(rng, x.shape, dtype), 1.0, 3, 4, y=y, activation=activation))
    assert not np.isnan(dx).any() and (dx == 0).all()


def test_relu_backward_needs_only_y(rng):
    # dx = dy * scale where y > 0: seed and offset are not consulted
    x, dy = randn(rng, 5000, "float64"), randn(rng, 5000, "float64")
    y = _C.dropout_forward(x, 0.3, 1, 2, activation="relu")
    a = as_np(_C.dropout_backward(dy, 0.3, 1, 2, y=y, activation="relu"))
    b = as_np(_C.dropout_backward(dy, 0.3, 999, 888, y=y, activation="relu"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.where(as_np(y) > 0, dy * (1 / 0.7), 0.0))


def test_large_relu_backward_streams_the_same_values(rng):
    # Over 16 MB moved, dx is written through an L1 buffer with streaming stores: every element must
    # equal a small call's, with dx 64-byte aligned (fastnn's storage) or not (a numpy view).
    n = 3_000_001
    y = np.maximum(rng.standard_normal(n), 0).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    want = np.concatenate([_C.dropout_backward(dy[b:b + 100_000], 0.3, 1, 0, y[b:b + 100_000], "relu").numpy()
                           for b in range(0, n, 100_000)])
    assert np.array_equal(_C.dropout_backward(dy, 0.3, 1, 0, y, "relu").numpy(), want)
    out = np.zeros(n + 16, np.float32)[5:5 + n]
    _C.dropout_backward(dy, 0.3, 1, 0, y, "relu", out)
    assert np.array_equal(out, want)


def test_nan_propagates(dtype):
    x = np.full(1000, np.nan, dtype=dtype)
    y = as_np(_C.dropout_forward(x, 0.5, 1, 2))
    assert np.isnan(y).all()  # like torch: a dropped NaN is NaN * 0
    dx = as_np(_C.dropout_backward(x, 0.5, 1, 2))
    assert np.isnan(dx).all()


def test_out_and_in_place(dtype, rng):
    x = randn(rng, (33, 7), dtype)
    expected = as_np(_C.dropout_forward(x, 0.3, 8, 9)).copy()
    out = np.empty_like(x)
    r = _C.dropout_forward(x, 0.3, 8, 9, out=out)
    np.testing.assert_array_equal(out, expected)
    assert as_np(r).ctypes.data == out.ctypes.data
    _C.dropout_forward(x, 0.3, 8, 9, out=x)  # in place
    np.testing.assert_array_equal(x, expected)
    dy = randn(rng, x.shape, dtype)
    expected_dx = as_np(_C.dropout_backward(dy, 0.3, 8, 9)).copy()
    _C.dropout_backward(dy, 0.3, 8, 9, out=dy)
    np.testing.assert_array_equal(dy, expected_dx)


def test_empty(dtype):
    x = np.empty((0, 5), dtype=dtype)
    assert as_np(_C.dropout_forward(x, 0.5, 1, 2)).shape == (0, 5)
    assert as_np(_C.dropout_backward(x, 0.5, 1, 2, y=x, activation="relu")).shape == (0, 5)
    assert as_np(_C.dropout_mask((0, 5), 0.5, 1, 2)).shape == (0, 5)


def test_accepts_torch_and_numpy_scalars():
    x = torch.ones(100, dtype=torch.float32)
    y = as_np(_C.dropout_forward(x, np.float32(0.25), np.uint64(3), np.int64(4)))
    np.testing.assert_array_equal(y, np.where(mask_np(100, np.float32(0.25), 3, 4), np.float32(1 / 0.75), 0))


# ----- errors -----

@pytest.mark.parametrize("p", [-0.1, 1.0000001, float("nan"), float("inf")])
def test_bad_p(p):
    with pytest.raises(ValueError, match="p: "):
        _C.dropout_forward(np.ones(3), p, 1, 2)
    with pytest.raises(ValueError, match="p: "):
        _C.dropout_backward(np.ones(3), p, 1, 2)
    with pytest.raises(ValueError, match="p: "):
        _C.dropout_mask(3, p, 1, 2)


def test_bad_arguments(rng):
    x = np.ones(4)
    with pytest.raises(TypeError, match="p: "):
        _C.dropout_forward(x, "0.5", 1, 2)
    with pytest.raises(ValueError, match="seed: "):
        _C.dropout_forward(x, 0.5, -1, 2)
    with pytest.raises(ValueError, match="seed: "):
        _C.dropout_forward(x, 0.5, 1 << 64, 2)
    with pytest.raises(TypeError, match="offset: "):
        _C.dropout_forward(x, 0.5, 1, 2.0)
    with pytest.raises(ValueError, match="activation: "):
        _C.dropout_forward(x, 0.5, 1, 2, activation="tanh")
    with pytest.raises(ValueError, match="activation: "):
        _C.dropout_forward(x, 0.5, 1, 2, activation="gelu")
    with pytest.raises(ValueError, match="y: "):
        _C.dropout_backward(x, 0.5, 1, 2, activation="relu")
    with pytest.raises(ValueError, match="y: "):
        _C.dropout_backward(x, 0.5, 1, 2, y=np.ones(5), activation="relu")
    with pytest.raises(ValueError, match="out: "):
        _C.dropout_forward(x, 0.5, 1, 2, out=np.ones(5))
    with pytest.raises(TypeError, match="shape: "):
        _C.dropout_mask("abc", 0.5, 1, 2)
    with pytest.raises(ValueError, match="shape: "):
        _C.dropout_mask((-1, 2), 0.5, 1, 2)


def test_dtype_errors():
    with pytest.raises(TypeError, match="x: "):
        _C.dropout_forward(np.ones(4, dtype=np.int64), 0.5, 1, 2)
    with pytest.raises(TypeError, match="dy: "):
        _C.dropout_backward(np.ones(4, dtype=np.int32), 0.5, 1, 2)
    with pytest.raises(TypeError, match="y: "):
        _C.dropout_backward(np.ones(4), 0.5, 1, 2, y=np.ones(4, dtype=np.float32), activation="relu")
    with pytest.raises(TypeError, match="out: "):
        _C.dropout_forward(np.ones(4), 0.5, 1, 2, out=np.ones(4, dtype=np.float32))
    with pytest.raises(TypeError, match="x: "):
        _C.dropout_forward([1.0, 2.0], 0.5, 1, 2)
