"""Every family of fastnn's CUDA kernels once, at shapes that cross its internal boundaries (GEMM
tile configurations and split K, BatchNorm's one-launch, chunked and 16-byte paths, cross-entropy's
register widths and streamed rows, the optimizers' vector and scalar tails, a captured graph), each
result checked against the CPU kernels. Small on purpose: a GPU visit runs it under NVIDIA's
compute-sanitizer (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory races),
which slows kernels 10-100x (benchmarks/gpu/visit.sh). It needs no torch, so the sanitizer sees only
fastnn's kernels.

    python benchmarks/gpu/sanitize_kernels.py          # any CUDA device, real or emulated
    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu/sanitize_kernels.py
"""
import os
import sys

import numpy as np

# BatchNorm's 16-byte statistics pass at these small shapes too (as in the tests; same bits)
os.environ.setdefault("FASTNN_BN_VEC_STATS_ALWAYS", "1")

import fastnn  # noqa: E402
from fastnn import nn, optim

C = fastnn._C
rng = np.random.default_rng(0)
checked = []


def cu(a):
    return fastnn.as_tensor(np.ascontiguousarray(a)).to("cuda")


def host(t):
    return np.array(t.to("cpu").numpy(), copy=True)


def check(name, got, ref, rtol=1e-4):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    err = np.abs(got - ref).max(initial=0.0) / scale
    if not err <= rtol:  # NaN fails too
        sys.exit(f"{name}: relative error {err:.3g} against the CPU kernels")
    checked.append(name)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def gemms():
    # 32x32, 64x64 + split K, 128x64, 128x128 tiles (csrc/ops/gemm_cuda.cu), float64; odd sizes
    for m, n, k, dtype in [(7, 33, 70, np.float32), (128, 256, 1024, np.float32), (1030, 800, 16, np.float32),
                           (1030, 2050, 16, np.float32), (65, 70, 300, np.float64)]:
        for ta, tb in [(False, False), (False, True), (True, False), (True, True)]:
            a = randn(*((k, m) if ta else (m, k)), dtype=dtype)
            b = randn(*((n, k) if tb else (k, n)), dtype=dtype)
            check(f"gemm {m}x{n}x{k} {np.dtype(dtype).name} ta={ta} tb={tb}",
                  host(C.gemm(cu(a), cu(b), trans_a=ta, trans_b=tb)), C.gemm(a, b, trans_a=ta, trans_b=tb).numpy())


def batchnorms():
    # one launch; chunked scalar; chunked 16-byte vectors (C a multiple of 4: statistics and apply
    # passes; 132 columns leave one lane of a second column block); then the one-read pipeline,
    # which training inputs above L2 take (the hooks send these there, apply items two slabs behind)
    for shape, pipeline in [((33, 7), False), ((1100, 5), False), ((600, 40), False), ((1030, 132), False),
                            ((1030, 132), True), ((300, 2560), True)]:
        os.environ["FASTNN_BN_PIPELINE_ABOVE"] = "0" if pipeline else ""
        os.environ["FASTNN_BN_PIPELINE_LOOKAHEAD"] = "2"
        for dtype in (np.float32, np.float64):
            x, dy = randn(*shape, dtype=dtype) + 0.5, randn(*shape, dtype=dtype)
            w, b = randn(shape[1], dtype=dtype), randn(shape[1], dtype=dtype)
            for training in (True, False):
                rm, rv = randn(shape[1], dtype=dtype), np.abs(randn(shape[1], dtype=dtype)) + 0.5
                y, sm, si = C.batchnorm_forward(cu(x), cu(w), cu(b), cu(rm), cu(rv), training)
                y_ref, sm_ref, si_ref = C.batchnorm_forward(x, w, b, rm.copy(), rv.copy(), training)
                check(f"batchnorm fwd {shape} training={training}", host(y), y_ref.numpy())
                dx, dw, db = C.batchnorm_backward(cu(x), cu(dy), cu(w), sm, si, training)
                rdx, rdw, rdb = C.batchnorm_backward(x, dy, w, sm_ref, si_ref, training)
                check(f"batchnorm bwd {shape} training={training}", host(dx), rdx.numpy())
                check(f"batchnorm dweight {shape} training={training}", host(dw), rdw.numpy(), 1e-3)
    for hook in ("FASTNN_BN_PIPELINE_ABOVE", "FASTNN_BN_PIPELINE_LOOKAHEAD"):
        os.environ.pop(hook)


def losses():
    # cross-entropy rows held in 1, 8, 32 registers per lane, and streamed (> 1024 classes)
    for n, classes in [(1100, 10), (33, 70), (5, 1000), (3, 1025)]:
        x, y = randn(n, classes), rng.integers(0, classes, n)
        loss, dx = C.cross_entropy(cu(x), cu(y))
        rloss, rdx = C.cross_entropy(x, y)
        check(f"cross_entropy {n}x{classes}", host(dx), rdx.numpy())
        check(f"cross_entropy loss {n}x{classes}", host(loss), rloss.numpy())
    x, t = randn(1001, 3), rng.random((1001, 3)).astype(np.float32)
    check("mse", host(C.mse_backward(cu(x), cu(t), 1.0)), C.mse_backward(x, t, 1.0).numpy())
    check("bce_with_logits", host(C.bce_with_logits_backward(cu(x), cu(t), 1.0)),
          C.bce_with_logits_backward(x, t, 1.0).numpy())


def activations():
    x = randn(33, 70)
    for kind in ("relu", "tanh", "sigmoid"):
        y = C.activation_forward(cu(x), kind)
        check(f"{kind} fwd", host(y), C.activation_forward(x, kind).numpy())
        check(f"{kind} bwd", host(C.activation_backward(y, cu(x), kind)),
              C.activation_backward(C.activation_forward(x, kind), x, kind).numpy())
    for log in (False, True):
        y = C.softmax_forward(cu(x), log)
        check(f"softmax log={log}", host(C.softmax_backward(y, cu(x), log)),
              C.softmax_backward(C.softmax_forward(x, log), x, log).numpy())


def training_steps():
    # linear (bias-gradient chunks at 1100 rows), dropout, BatchNorm, every optimizer; the same
    # model on the CPU gives the reference (same dropout masks: counter-based Philox). No bias
    # before the BatchNorm: its gradient is zero up to rounding, and Adam would turn the sign of
    # that rounding into a full step of +-lr.
    makers = [lambda p: optim.Adam(p, lr=1e-2), lambda p: optim.AdamW(p, lr=1e-2, amsgrad=True),
              lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
              lambda p: optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
              lambda p: optim.Adagrad(p, lr=0.05)]
    x, y = randn(1100, 37), rng.integers(0, 10, 1100)
    for i, make in enumerate(makers):
        results = []
        for device in ("cpu", "cuda"):
            fastnn.manual_seed(i)
            model = nn.Sequential(nn.Linear(37, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(64, 10)).to(device)
            crit, opt = nn.CrossEntropyLoss(), make(model.parameters())
            xs, ys = (cu(x), cu(y)) if device == "cuda" else (x, y)
            for _ in range(2):
                crit(model(xs), ys)
                model.backward(crit.backward())
                opt.step()
                opt.zero_grad()
            results.append(np.concatenate([host(p.data).ravel() for p in model.parameters()]))
        check(f"training step, optimizer {i}", results[1], results[0], 1e-3)


def graph_replay():
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)).to("cuda")
    crit, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-2)
    x, y = cu(randn(8, 20)), cu(rng.integers(0, 5, 8))

    def step():
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        opt.zero_grad()
        return loss

    step()  # optimizer state exists before capture
    graph = fastnn.cuda.CUDAGraph()
    with fastnn.cuda.graph(graph):
        loss = step()
    for _ in range(3):
        graph.replay()
    value = float(host(loss))
    if not np.isfinite(value):
        sys.exit(f"graph replay: loss {value}")
    checked.append("graph replay")


def main():
    if not fastnn.build_info()["cuda_available"]:
        sys.exit("no CUDA device (real or emulated)")
    for part in (gemms, batchnorms, losses, activations, training_steps, graph_replay):
        part()
    fastnn.cuda.synchronize()
    print(f"sanitize_kernels: {len(checked)} checks passed on {fastnn.build_info()['cuda_device_count']} device(s)")


if __name__ == "__main__":
    main()
