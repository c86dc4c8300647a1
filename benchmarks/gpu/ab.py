"""A/B runs of the GPU candidates that sit behind environment switches, in one process.

Each candidate is production code that a variable turns on or off at every call (read per call):
    FASTNN_BN_PIPELINE_ABOVE   BatchNorm's one-read pipeline for inputs above this many bytes
                               (unset: off, the chunked path; run here at 64 MB, about L2)
    FASTNN_GEMM_STREAMK=1      stream-K instead of the K split at the one-wave GEMM shapes
For each row the two settings and PyTorch (cuBLAS with TF32 off, or F.batch_norm) run interleaved
in random order, round after round, each block of calls bracketed by device synchronizes; the
table gives medians per call, B against A, and both against PyTorch. A row's verdict feeds
benchmarks/gpu/NOTES.md (prediction against outcome) and the default of its switch.

    python benchmarks/gpu/ab.py [--rounds 15] [--out ab.md]

On the emulated CUDA build (no GPU) the shapes are tiny and PyTorch is absent: a smoke test.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import numpy as np

import fastnn
from fastnn import _C

EMULATED = fastnn.build_info().get("cuda_emulated", False)


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    if EMULATED or not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def sync(torch):
    fastnn.cuda.synchronize()
    if torch is not None:
        torch.cuda.synchronize()


def per_call(fn, inner, torch):
    sync(torch)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(torch)
    return (time.perf_counter() - t0) / inner


def with_env(var, value, fn):
    """fn with `var` set to `value` (None: unset) for the call, the previous value restored."""
    def call():
        old = os.environ.get(var)
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
        try:
            fn()
        finally:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
    return call


def rows(torch, tiny):
    g = np.random.default_rng(0)
    n, c = (130, 260) if tiny else (8192, 4096)
    x = fastnn.tensor(g.standard_normal((n, c), dtype=np.float32) + 0.5).to("cuda")
    dy = fastnn.tensor(g.standard_normal((n, c), dtype=np.float32)).to("cuda")
    w = fastnn.tensor(np.ones(c, np.float32)).to("cuda")
    b = fastnn.tensor(np.zeros(c, np.float32)).to("cuda")
    y = fastnn.zeros([n, c], "float32", "cuda")
    dx = fastnn.zeros([n, c], "float32", "cuda")
    _, mean, invstd = _C.batchnorm_forward(x, w, b, None, None, True)
    dw, db = fastnn.zeros([c], "float32", "cuda"), fastnn.zeros([c], "float32", "cuda")
    above = "0" if tiny else str(64 << 20)  # the intended threshold; tiny shapes need 0
    off = None
    bn_ref = bn_bwd_ref = None
    if torch is not None:
        import torch.nn.functional as F
        xt = torch.from_dlpack(x)
        wt, bt = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
        bn_ref = lambda: F.batch_norm(xt, None, None, wt, bt, True, 0.1, 1e-5)  # noqa: E731
        xg = xt.clone().requires_grad_(True)
        out = F.batch_norm(xg, None, None, wt, bt, True, 0.1, 1e-5)
        dyt = torch.from_dlpack(dy)
        bn_bwd_ref = lambda: torch.autograd.grad(out, (xg,), dyt, retain_graph=True)  # noqa: E731
    nbytes = n * c * 4
    fwd = lambda: _C.batchnorm_forward(x, w, b, None, None, True, 0.1, 1e-5, y)  # noqa: E731
    bwd = lambda: _C.batchnorm_backward(x, dy, w, mean, invstd, True, dx=dx, dweight=dw, dbias=db)  # noqa: E731
    yield (f"BN fwd {n}x{c}", "chunked", "pipeline", with_env("FASTNN_BN_PIPELINE_ABOVE", off, fwd),
           with_env("FASTNN_BN_PIPELINE_ABOVE", above, fwd), bn_ref, 2 * nbytes, "GB/s")
    yield (f"BN bwd {n}x{c}", "chunked", "pipeline", with_env("FASTNN_BN_PIPELINE_ABOVE", off, bwd),
           with_env("FASTNN_BN_PIPELINE_ABOVE", above, bwd), bn_bwd_ref, 3 * nbytes, "GB/s")
    # The pipeline lost on an H200 (2026-11-30: fwd 0.80x, bwd 0.40x the chunked path). Its 264
    # blocks hold 17 MB of forward items (33 MB backward: x and dy) beside the lookahead's 24 MB,
    # so the backward's working set may overflow the 60 MB L2 before a slab's second read: with
    # one slab of lookahead (4 / 8 MB) the bwd row gains a lot if that is the reason.
    for what, fn, ref, work in (("fwd", fwd, bn_ref, 2 * nbytes), ("bwd", bwd, bn_bwd_ref, 3 * nbytes)):
        yield (f"BN {what} {n}x{c}", "chunked", "pipeline, lookahead 1", with_env("FASTNN_BN_PIPELINE_ABOVE", off, fn),
               with_env("FASTNN_BN_PIPELINE_ABOVE", above, with_env("FASTNN_BN_PIPELINE_LOOKAHEAD", "1", fn)),
               ref, work, "GB/s")

    on = "always" if tiny else "1"
    batch, fin, fout = (130, 70, 260) if tiny else (1024, 784, 1024)
    X = g.standard_normal((batch, fin), dtype=np.float32)
    W = g.standard_normal((fout, fin), dtype=np.float32)
    DY = g.standard_normal((batch, fout), dtype=np.float32)
    fx, fw, fdy = (fastnn.tensor(a).to("cuda") for a in (X, W, DY))
    out_dx = fastnn.zeros([batch, fin], "float32", "cuda")
    out_dw = fastnn.zeros([fout, fin], "float32", "cuda")
    flops = 2.0 * batch * fin * fout
    ref_dx = ref_dw = None
    if torch is not None:
        tx, tw, tdy = (torch.from_dlpack(t) for t in (fx, fw, fdy))
        tdx, tdw = torch.empty(batch, fin, device="cuda"), torch.empty(fout, fin, device="cuda")
        ref_dx = lambda: torch.matmul(tdy, tw, out=tdx)  # noqa: E731
        ref_dw = lambda: torch.matmul(tdy.t(), tx, out=tdw)  # noqa: E731
    dx_call = lambda: _C.gemm(fdy, fw, out_dx)  # noqa: E731
    dw_call = lambda: _C.gemm(fdy, fx, out_dw, trans_a=True)  # noqa: E731
    yield (f"GEMM dX = dY W {batch}x{fin}<-{fout}", "split", "stream-K", with_env("FASTNN_GEMM_STREAMK", None, dx_call),
           with_env("FASTNN_GEMM_STREAMK", on, dx_call), ref_dx, flops, "TFLOP/s")
    yield (f"GEMM dW = dY^T X {fout}x{fin}, K {batch}", "split", "stream-K",
           with_env("FASTNN_GEMM_STREAMK", None, dw_call), with_env("FASTNN_GEMM_STREAMK", on, dw_call), ref_dw,
           flops, "TFLOP/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    torch = torch_cuda()
    tiny = EMULATED
    lines = ["| row | A | B | A us | B us | B / A speed | A rate | B rate | PyTorch us | B vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    for name, a_name, b_name, fa, fb, ref, work, unit in rows(torch, tiny):
        for fn in (fa, fb) + ((ref,) if ref else ()):
            fn()
        once = max(per_call(fa, 1, torch), per_call(fb, 1, torch), 1e-6)
        inner = 1 if tiny else max(1, int(0.02 / once))
        times = {"a": [], "b": [], "r": []}
        for _ in range(2 if tiny else args.rounds):
            order = [("a", fa), ("b", fb)] + ([("r", ref)] if ref else [])
            random.shuffle(order)
            for key, fn in order:
                times[key].append(per_call(fn, inner, torch))
        ta, tb = statistics.median(times["a"]), statistics.median(times["b"])
        tr = statistics.median(times["r"]) if times["r"] else None
        scale = 1e-12 if unit == "TFLOP/s" else 1e-9
        line = (f"| {name} | {a_name} | {b_name} | {ta * 1e6:.1f} | {tb * 1e6:.1f} | {ta / tb:.3f}x | "
                f"{work * scale / ta:.2f} {unit} | {work * scale / tb:.2f} {unit} | "
                f"{'' if tr is None else f'{tr * 1e6:.1f}'} | {'' if tr is None else f'{tr / tb:.3f}x'} |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
