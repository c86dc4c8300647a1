"""fastnn's GEMM against torch.matmul (MKL on x86) at the shapes an MLP trains with.

For each Linear layer (batch M, in_features K, out_features N) the three GEMMs of one training
step are timed:
    fwd  Y  = X W^T     (M, K) x (N, K)^T   -> (M, N)
    dX   dX = dY W      (M, N) x (N, K)     -> (M, K)
    dW   dW = dY^T X    (M, N)^T x (M, K)   -> (N, K)
Both libraries use 2 threads and write into preallocated outputs; calls alternate in a random
order every round (a fixed order biases whatever runs right after the other library), each after
a short FMA loop that outlasts the other library's spinning OpenMP workers (without it fastnn's
second thread found its core taken and its rate halved), and the table shows medians and the
median of the per-round time ratios. `fastnn bench` has the same rows with more context.

    python benchmarks/bench_gemm.py [--repeat 50] [--dtype float32] [--sustained]

--sustained times blocks of 20 calls back to back instead of one call after the settling loop: the
rate a GEMM keeps up inside a training step. (A 30 ms all-core FMA loop leaves the next few ms
slower: fastnn's 128x784->1024 forward ran 345 GFLOP/s on the first call after one, 460+ after
a few, here on 2026-11-26.)

The machine's cores may be shared: the load average is printed before and after, and a run
under load is only good for ratios, not absolute GFLOP/s.
"""
import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # keep numpy's pool out of the way

import torch  # noqa: E402

import fastnn  # noqa: E402
from fastnn import _C  # noqa: E402
from fastnn.bench.harness import Bench  # noqa: E402

LAYERS = [(784, 1024), (1024, 1024), (1024, 10)]
BATCHES = [128, 1024]


def cases(dtype):
    g = torch.Generator().manual_seed(0)
    for m in BATCHES:
        for k, n in LAYERS:
            x = torch.randn(m, k, generator=g, dtype=dtype)
            w = torch.randn(n, k, generator=g, dtype=dtype)
            dy = torch.randn(m, n, generator=g, dtype=dtype)
            # fastnn Tensors viewing the same memory: the timed call then does no DLPack import
            fx, fw, fdy = (_C.from_dlpack(t) for t in (x, w, dy))
            shape = f"{m}x{k}->{n}"

            def make(out_shape, fast, ref):
                out_t = torch.empty(out_shape, dtype=dtype)
                out_f = _C.from_dlpack(torch.empty(out_shape, dtype=dtype))
                return (lambda: fast(out_f)), (lambda: ref(out_t)), out_f, out_t

            flops = 2.0 * m * k * n
            yield ("fwd X W^T", shape, flops, *make(
                (m, n), lambda o: _C.gemm(fx, fw, o, trans_b=True), lambda o: torch.matmul(x, w.t(), out=o)))
            yield ("dX = dY W", shape, flops, *make(
                (m, k), lambda o: _C.gemm(fdy, fw, o), lambda o: torch.matmul(dy, w, out=o)))
            yield ("dW = dY^T X", shape, flops, *make(
                (n, k), lambda o: _C.gemm(fdy, fx, o, trans_a=True), lambda o: torch.matmul(dy.t(), x, out=o)))


def time_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50, help="timed rounds per shape (default 50)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sustained", action="store_true", help="blocks of 20 calls back to back (see above)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    fastnn.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    info = fastnn.build_info()
    print(f"fastnn {info['version']} ({info['cpu_isa']}, {args.threads} threads) vs torch {torch.__version__} "
          f"({args.threads} threads), {args.dtype}, {args.repeat} rounds"
          f"{' of 20 sustained calls (medians)' if args.sustained else ''}; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print(f"| GEMM | M x K -> N | fastnn GFLOP/s | torch GFLOP/s | fastnn / torch |")
    print(f"|---|---|---|---|---|")
    rng = random.Random(0)
    for name, shape, flops, fast, ref, out_f, out_t in cases(dtype):
        fast(), ref()
        err = (torch.from_dlpack(out_f) - out_t).abs().max().item() / max(out_t.abs().max().item(), 1e-30)
        assert err < (1e-4 if args.dtype == "float32" else 1e-10), f"{name} {shape}: results differ ({err:.2e})"
        for _ in range(args.warmup):
            fast(), ref()
        tf, tt, ratio = [], [], []
        for _ in range(args.repeat):
            pair = [("f", fast), ("t", ref)]
            rng.shuffle(pair)
            times = {}
            for key, fn in pair:
                Bench.settle()  # the other library's OpenMP workers still spin for milliseconds
                if args.sustained:
                    for _ in range(5):
                        fn()
                    times[key] = statistics.median(time_once(fn) for _ in range(20))
                else:
                    times[key] = time_once(fn)
            tf.append(times["f"])
            tt.append(times["t"])
            ratio.append(times["t"] / times["f"])
        mf, mt = statistics.median(tf), statistics.median(tt)
        print(f"| {name} | {shape} | {flops / mf / 1e9:.0f} | {flops / mt / 1e9:.0f} | "
              f"{statistics.median(ratio):.2f}x |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
