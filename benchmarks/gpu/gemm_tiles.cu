// Tile-shape sweep of fastnn's CUDA GEMM (csrc/ops/gemm_kernels.cuh) on a real GPU: the same
// kernel template, instantiated with several TileConfigs, timed with CUDA events at the MLP's
// shapes and a large square. A device visit builds and runs it next to `fastnn bench`, whose rows
// give cuBLAS's kernel time at the same shapes (benchmarks/gpu/visit.sh):
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc benchmarks/gpu/gemm_tiles.cu -o gemm_tiles && ./gemm_tiles
//
// Every unsplit configuration sums each element of C over k = 0, 1, ... in order, so all of them
// must give the same bits (the reference is Large or Medium): the sweep checks that (a configuration
// that differs is a bug, not a rounding difference) and that no element of C was left unwritten.
// Split-K candidates (K in 2 or 4 chunks, then gemm_split_k_reduce) and stream-K ones
// (gemm_streamk.cuh) add partial sums, so their rounding differs: they are checked by their
// largest error relative to max |C|.
//
// First run (H200, 2026-11-26, benchmarks/results/2026-11-26-h200-7de1a8a/gemm_tiles.md): at the
// batch-1024 shapes 128x64x16 beat 64x64x16 by 1-7% and became production; 128x128x16 and
// 64x64 with 8x8 per thread lost everywhere and were dropped from the sweep.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <type_traits>

#include "core/cuda_launch.h"
#include "gemm_async.cuh"
#include "ops/gemm_streamk.cuh"
#include "ops/gemm_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda::gemm_detail;

namespace {

#define CHECK(expr)                                                                  \
  do {                                                                               \
    const cudaError_t e_ = (expr);                                                   \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

// The candidates. Production (gemm_cuda.cu): Large for >= 128 tiles of 128 x 128, else Wide for
// >= 120 tiles of 128 x 64, or >= 96 with K >= 512, K in two chunks (dY^T X: Large with K in 4),
// else Medium (or Medium with split K for few tiles and a long K).
using L8 = ConfigF32Large;                              // 128 x 128 x 8, 8 x 8, 2 blocks/SM
using W16 = ConfigF32Wide;                              // 128 x 64 x 16, 8 x 4, hoisted slab loads
using T16 = TileConfig<float, 64, 128, 16, 4, 8, 2>;    // 64 x 128
using M16 = ConfigF32Medium;                            // 64 x 64 x 16, 4 x 4
// 128 x 128 with 512 threads (16 warps, 8 x 4 each): one block per SM holds as many warps as two
// of L8's, for the one-wave shapes (batch 1024: 64 tiles, 128 with K in 2), where a W16 block is
// an SM's only 8 warps.
using X16 = TileConfig<float, 128, 128, 16, 8, 4, 1>;
// gemm_async.cuh's cp.async kernel: Wide's tiles with 3 slabs in flight; 128 x 128 with 8 x 8 per
// thread and 16-deep slabs, one block per SM (its registers: 64 sums + 64 operands). (On 64 x 64
// tiles it ran 0.73-0.99x production in three visits and left the sweep, whose one nvcc process
// had grown to 5 minutes on 2 cores.)
using AW16 = AsyncConfig<W16, 3>;
using AL16 = AsyncConfig<TileConfig<float, 128, 128, 16, 8, 8, 1>, 3>;
// Production's tiles with the other slab loader: Wide with SlabLoader (production's before
// 2026-11-26: per the disassembly ~680 instructions per 512 FMAs on a whole slab, the hoisted
// path ~616), Large and Medium with HoistedSlabLoader.
using W16S = TileConfig<float, 128, 64, 16, 8, 4, 2, false>;
using L8H = TileConfig<float, 128, 128, 8, 8, 8, 2, true>;
using M16H = TileConfig<float, 64, 64, 16, 4, 4, 1, true>;

// 128 x 64 tiles of 128 threads, 8 x 8 per thread: 64 FMAs per 4 shared loads where Wide's 8 x 4
// does 32 per 3. ncu showed Wide issue-bound (FFMA ~75% of the instructions; at one block per SM,
// 8 warps, on the one-wave shapes): fewer instructions per FMA, at 4 warps a block. 16-deep slabs
// spill under 128 registers (ptxas: 90-300 bytes), so two blocks an SM. (8-deep slabs under 128
// registers still spilled and ran 0.53-0.67x production on an H200 at 9f2e291: dropped.)
using W88 = TileConfig<float, 128, 64, 16, 8, 8, 2, true>;

// Stream-K over Cfg's tiles with BLOCKS_PER_SM x (the GPU's SMs) blocks.
template <class Cfg, int BLOCKS_PER_SM>
struct StreamK : Cfg {
  using Base = Cfg;  // the kernel's instance: the tile's own, shared with the other candidates
  static constexpr int kBlocksPerSm = BLOCKS_PER_SM;
};
template <class C, class = void>
struct IsStreamK : std::false_type {};
template <class C>
struct IsStreamK<C, std::void_t<decltype(C::kBlocksPerSm)>> : std::true_type {};

int sm_count() {
  static int sms = [] {
    int device = 0, n = 0;
    CHECK(cudaGetDevice(&device));
    CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  }();
  return sms;
}

// The stream-K workspace: slots for the largest tile and block count, flags and ticket zeroed once
// (the kernel leaves them zeroed).
struct StreamKWorkspace {
  float* slots = nullptr;
  int* flags = nullptr;
  unsigned* ticket = nullptr;
  int64_t max_blocks = 0;
};
StreamKWorkspace& streamk_workspace(int64_t blocks, int64_t slot_elems) {
  static StreamKWorkspace ws;
  if (!ws.slots) {
    ws.max_blocks = 4 * static_cast<int64_t>(sm_count());
    CHECK(cudaMalloc(&ws.slots, ws.max_blocks * 128 * 128 * sizeof(float)));
    CHECK(cudaMalloc(&ws.flags, ws.max_blocks * sizeof(int)));
    CHECK(cudaMalloc(&ws.ticket, sizeof(unsigned)));
    CHECK(cudaMemset(ws.flags, 0, ws.max_blocks * sizeof(int)));
    CHECK(cudaMemset(ws.ticket, 0, sizeof(unsigned)));
  }
  if (blocks > ws.max_blocks || slot_elems > 128 * 128) {
    std::fprintf(stderr, "stream-K workspace too small\n");
    std::exit(1);
  }
  return ws;
}

template <class Cfg>
StreamKWork<float> streamk_work_for(const GemmProblem<float>& p) {
  return streamk_work<typename Cfg::Base>(p, int64_t{Cfg::kBlocksPerSm} * sm_count());
}

template <class C, class = void>
struct IsAsync : std::false_type {};
template <class C>
struct IsAsync<C, std::void_t<decltype(C::kStages)>> : std::true_type {};

struct GemmShape {
  const char* name;
  int64_t m, n, k;
  bool ta, tb;
};

// SPLITS > 1: K in SPLITS chunks into `workspace` (SPLITS x m x n), then the ordered reduction.
template <class Cfg, int SPLITS>
void launch(const GemmProblem<float>& p, float* workspace) {
  int64_t k_chunk = 0, splits = 1;
  if constexpr (SPLITS > 1) {
    k_chunk = ((p.k + SPLITS - 1) / SPLITS + Cfg::BK - 1) / Cfg::BK * Cfg::BK;
    splits = (p.k + k_chunk - 1) / k_chunk;
  }
  const dim3 grid(static_cast<unsigned>((p.m + Cfg::BM - 1) / Cfg::BM), static_cast<unsigned>((p.n + Cfg::BN - 1) / Cfg::BN),
                  static_cast<unsigned>(splits));
  constexpr bool kSplit = SPLITS > 1;
  float* part = kSplit ? workspace : nullptr;
  const int variant = (p.trans_a ? 2 : 0) + (p.trans_b ? 1 : 0);
  const bool vec = true, c_vec = true;
  if constexpr (IsStreamK<Cfg>::value) {
    StreamKWork<float> w = streamk_work_for<Cfg>(p);
    StreamKWorkspace& ws = streamk_workspace(w.blocks, Cfg::BM * Cfg::BN);
    w.slots = ws.slots, w.flags = ws.flags, w.ticket = ws.ticket;
    const dim3 sk_grid(static_cast<unsigned>(w.blocks));
    using B = typename Cfg::Base;
    switch (variant) {
      case 0: gemm_streamk_kernel<B, false, false><<<sk_grid, B::kThreads>>>(p, vec, c_vec, w); break;
      case 1: gemm_streamk_kernel<B, false, true><<<sk_grid, B::kThreads>>>(p, vec, c_vec, w); break;
      case 2: gemm_streamk_kernel<B, true, false><<<sk_grid, B::kThreads>>>(p, vec, c_vec, w); break;
      default: gemm_streamk_kernel<B, true, true><<<sk_grid, B::kThreads>>>(p, vec, c_vec, w); break;
    }
  } else if constexpr (IsAsync<Cfg>::value) {
    switch (variant) {
      case 0: gemm_async_kernel<Cfg, false, false, kSplit><<<grid, Cfg::kThreads>>>(p, c_vec, k_chunk, part); break;
      case 1: gemm_async_kernel<Cfg, false, true, kSplit><<<grid, Cfg::kThreads>>>(p, c_vec, k_chunk, part); break;
      case 2: gemm_async_kernel<Cfg, true, false, kSplit><<<grid, Cfg::kThreads>>>(p, c_vec, k_chunk, part); break;
      default: gemm_async_kernel<Cfg, true, true, kSplit><<<grid, Cfg::kThreads>>>(p, c_vec, k_chunk, part); break;
    }
  } else {
    switch (variant) {
      case 0: gemm_kernel<Cfg, false, false, kSplit><<<grid, Cfg::kThreads>>>(p, vec, c_vec, k_chunk, part); break;
      case 1: gemm_kernel<Cfg, false, true, kSplit><<<grid, Cfg::kThreads>>>(p, vec, c_vec, k_chunk, part); break;
      case 2: gemm_kernel<Cfg, true, false, kSplit><<<grid, Cfg::kThreads>>>(p, vec, c_vec, k_chunk, part); break;
      default: gemm_kernel<Cfg, true, true, kSplit><<<grid, Cfg::kThreads>>>(p, vec, c_vec, k_chunk, part); break;
    }
  }
  CHECK(cudaGetLastError());
  if constexpr (kSplit) {
    gemm_split_k_reduce<float><<<cuda_rt::grid_for(p.m * p.n, 256), 256>>>(p, workspace, splits);
    CHECK(cudaGetLastError());
  }
}

// Median microseconds per launch over `reps` timed groups of `inner` back-to-back launches.
template <class Cfg, int SPLITS>
double time_us(const GemmProblem<float>& p, float* workspace, int reps, int inner) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) launch<Cfg, SPLITS>(p, workspace);
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(start));
    for (int i = 0; i < inner; ++i) launch<Cfg, SPLITS>(p, workspace);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    t.push_back(1000.0 * ms / inner);
  }
  std::sort(t.begin(), t.end());
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return t[t.size() / 2];
}

struct Buffers {
  float *a, *b, *c, *workspace;  // workspace: 4 x m x n, for split K
  int64_t c_elems;
};

// Runs the candidate once on C poisoned with NaN and checks it against `ref` (bit for bit unless K
// is split); then times it.
template <class Cfg, int SPLITS = 1>
void candidate(const char* name, const GemmShape& s, const GemmProblem<float>& p, const Buffers& buf,
               const std::vector<float>& ref, double reference_us) {
  CHECK(cudaMemset(buf.c, 0xff, buf.c_elems * sizeof(float)));  // NaN everywhere
  launch<Cfg, SPLITS>(p, buf.workspace);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out(buf.c_elems);
  CHECK(cudaMemcpy(out.data(), buf.c, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  char verdict[64];
  if (SPLITS == 1 && !IsStreamK<Cfg>::value) {
    const bool same = std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0;
    std::snprintf(verdict, sizeof(verdict), "%s", same ? "same bits" : "DIFFERENT BITS");
  } else {
    double err = 0, scale = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double d = std::fabs(static_cast<double>(out[i]) - ref[i]);
      err = std::isnan(d) || d > err ? (std::isnan(d) ? INFINITY : d) : err;
      scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    }
    std::snprintf(verdict, sizeof(verdict), "split K: max err %.1e of max |C|%s", err / scale,
                  err / scale < 1e-5 ? "" : " TOO LARGE");
  }
  const int inner = s.m * s.n * s.k > (int64_t{1} << 32) ? 5 : 50;
  const double us = time_us<Cfg, SPLITS>(p, buf.workspace, 15, inner);
  const double tflops = 2.0 * s.m * s.n * s.k / us * 1e-6;
  int64_t blocks = ((s.m + Cfg::BM - 1) / Cfg::BM) * ((s.n + Cfg::BN - 1) / Cfg::BN) * SPLITS;
  if constexpr (IsStreamK<Cfg>::value) blocks = streamk_work_for<Cfg>(p).blocks;
  std::printf("| %-26s | %-24s | %5lld | %9.1f | %7.1f | %6.2fx | %s |\n", s.name, name,
              static_cast<long long>(blocks), us, tflops, reference_us / us, verdict);
}

}  // namespace

int main(int argc, char** argv) {
  // --profile: the production kernel and the candidates (cp.async, the other slab loader, stream-K)
  // once per shape below, untimed, for
  // a profiler to read (visit.sh runs `ncu ... gemm_tiles --profile` on the one-wave batch-1024
  // shapes and a square)
  const bool profile = argc > 1 && std::strcmp(argv[1], "--profile") == 0;
  const GemmShape shapes[] = {
      {"fwd X W^T 1024x784->1024", 1024, 1024, 784, false, true},
      {"dX = dY W 1024x784->1024", 1024, 784, 1024, false, false},
      {"dW = dY^T X 1024x784->1024", 1024, 784, 1024, true, false},
      {"fwd X W^T 1024x1024->1024", 1024, 1024, 1024, false, true},
      {"dX = dY W 1024x1024->1024", 1024, 1024, 1024, false, false},
      {"dW = dY^T X 1024x1024->1024", 1024, 1024, 1024, true, false},
      // dY^T X at batch 128 (K = 128): production's 128 x 64 tiles ran 0.73-0.83x cuBLAS's kernel
      {"dW = dY^T X 128x784->1024", 1024, 784, 128, true, false},
      {"dW = dY^T X 128x1024->1024", 1024, 1024, 128, true, false},
      {"fwd X W^T 4096x4096->4096", 4096, 4096, 4096, false, true},
      {"dX = dY W 4096x4096->4096", 4096, 4096, 4096, false, false},
  };
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  if (!profile) {
    std::printf("gemm_tiles on %s (%d SMs); float32, FP32 FMAs (no tensor cores); median of 15 event-timed groups\n\n",
                prop.name, prop.multiProcessorCount);
    std::printf("| shape | config | blocks | us | TFLOP/s | vs production | check |\n|---|---|---|---|---|---|---|\n");
  }
  std::mt19937 gen(1234);
  std::normal_distribution<float> normal;
  for (const GemmShape& s : shapes) {
    // profiled: fwd and dX at 1024 x 784 -> 1024 (one wave of 128 x 64 tiles) and the 4096 square
    if (profile && s.m * s.n * s.k != int64_t{1024} * 1024 * 784 && s.m != 4096) continue;
    if (profile && s.tb == false && s.m == 4096) continue;
    const int64_t a_elems = s.m * s.k, b_elems = s.k * s.n;
    std::vector<float> ha(a_elems), hb(b_elems);
    for (float& v : ha) v = normal(gen);
    for (float& v : hb) v = normal(gen);
    Buffers buf{};
    buf.c_elems = s.m * s.n;
    CHECK(cudaMalloc(&buf.a, a_elems * sizeof(float)));
    CHECK(cudaMalloc(&buf.b, b_elems * sizeof(float)));
    CHECK(cudaMalloc(&buf.c, buf.c_elems * sizeof(float)));
    CHECK(cudaMalloc(&buf.workspace, 4 * buf.c_elems * sizeof(float)));
    CHECK(cudaMemcpy(buf.a, ha.data(), a_elems * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(buf.b, hb.data(), b_elems * sizeof(float), cudaMemcpyHostToDevice));
    GemmProblem<float> p;
    p.trans_a = s.ta, p.trans_b = s.tb, p.m = s.m, p.n = s.n, p.k = s.k;
    p.a = buf.a, p.lda = s.ta ? s.m : s.k;
    p.b = buf.b, p.ldb = s.tb ? s.k : s.n;
    p.c = buf.c, p.ldc = s.n;
    // the production choice (gemm_cuda.cu's launch_gemm, above the small-batch split K) is the
    // reference for times; an unsplit configuration's bits are every unsplit one's
    const bool large = ((s.m + 127) / 128) * ((s.n + 127) / 128) >= 128;
    const int64_t wide_tiles = ((s.m + 127) / 128) * ((s.n + 63) / 64);
    const bool wide = !large && wide_tiles >= 96 && (wide_tiles >= 120 || s.k >= 512);
    const bool wide_split = wide && wide_tiles < 120 && s.k >= 512;
    const bool dw_split = wide_split && s.ta && !s.tb;  // dY^T X: 128 x 128, K in 4
    auto run_production = [&] {
      if (large) launch<L8, 1>(p, buf.workspace);
      else if (dw_split) launch<L8, 4>(p, buf.workspace);
      else if (wide_split) launch<W16, 2>(p, buf.workspace);
      else if (wide) launch<W16, 1>(p, buf.workspace);
      else launch<M16, 1>(p, buf.workspace);
    };
    if (profile) {
      run_production();
      // and the candidates on the same tiles: cp.async (gemm_async.cuh), the other slab loader
      if (large) launch<AL16, 1>(p, buf.workspace);
      else if (wide_split) launch<AW16, 2>(p, buf.workspace);
      else launch<AW16, 1>(p, buf.workspace);
      if (large) launch<L8H, 1>(p, buf.workspace);
      else if (dw_split) launch<L8H, 4>(p, buf.workspace);
      else if (wide_split) launch<W16S, 2>(p, buf.workspace);
      else launch<W16S, 1>(p, buf.workspace);
      launch<StreamK<W16, 2>, 1>(p, buf.workspace);  // and stream-K over the Wide tile
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaFree(buf.a));
      CHECK(cudaFree(buf.b));
      CHECK(cudaFree(buf.c));
      CHECK(cudaFree(buf.workspace));
      continue;
    }
    std::vector<float> ref(buf.c_elems);
    CHECK(cudaMemset(buf.c, 0xff, buf.c_elems * sizeof(float)));
    if (large) launch<L8, 1>(p, buf.workspace);
    else launch<M16, 1>(p, buf.workspace);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(ref.data(), buf.c, ref.size() * sizeof(float), cudaMemcpyDeviceToHost));
    int64_t unwritten = 0;
    for (float v : ref) unwritten += std::isnan(v);
    if (unwritten) std::printf("| %s | reference | | | | | %lld elements unwritten |\n", s.name, static_cast<long long>(unwritten));
    const int inner = s.m * s.n * s.k > (int64_t{1} << 32) ? 5 : 50;
    const double ref_us = large        ? time_us<L8, 1>(p, buf.workspace, 15, inner)
                          : dw_split   ? time_us<L8, 4>(p, buf.workspace, 15, inner)
                          : wide_split ? time_us<W16, 2>(p, buf.workspace, 15, inner)
                          : wide       ? time_us<W16, 1>(p, buf.workspace, 15, inner)
                                       : time_us<M16, 1>(p, buf.workspace, 15, inner);
    candidate<L8>("128x128x8 8x8 (Large)", s, p, buf, ref, ref_us);
    candidate<W16>("128x64x16 8x4 (Wide)", s, p, buf, ref, ref_us);
    candidate<T16>("64x128x16 4x8", s, p, buf, ref, ref_us);
    candidate<M16>("64x64x16 4x4 (Medium)", s, p, buf, ref, ref_us);
    candidate<X16>("128x128x16 8x4, 512 thr", s, p, buf, ref, ref_us);
    candidate<AW16>("async 128x64x16 8x4", s, p, buf, ref, ref_us);
    candidate<AL16>("async 128x128x16 8x8 1/SM", s, p, buf, ref, ref_us);
    candidate<W16S>("128x64x16 8x4, SlabLoader", s, p, buf, ref, ref_us);
    candidate<L8H>("hoisted 128x128x8 8x8", s, p, buf, ref, ref_us);
    candidate<M16H>("hoisted 64x64x16 4x4", s, p, buf, ref, ref_us);
    candidate<W88>("128x64x16 8x8 128 thr", s, p, buf, ref, ref_us);
    if (!large) {  // one wave of tiles or less: split K fills the SMs twice or four times over
      candidate<L8, 2>("128x128x8, K in 2", s, p, buf, ref, ref_us);
      candidate<L8, 4>("128x128x8, K in 4", s, p, buf, ref, ref_us);
      candidate<W16, 2>("128x64x16, K in 2", s, p, buf, ref, ref_us);
      candidate<M16, 2>("64x64x16, K in 2", s, p, buf, ref, ref_us);
      candidate<X16, 2>("128x128x16 512 thr, K in 2", s, p, buf, ref, ref_us);
      candidate<AW16, 2>("async 128x64x16, K in 2", s, p, buf, ref, ref_us);
      candidate<AL16, 2>("async 128x128x16 1/SM, K in 2", s, p, buf, ref, ref_us);
      candidate<W16S, 2>("128x64x16 SlabLoader, K in 2", s, p, buf, ref, ref_us);
      candidate<L8H, 4>("hoisted 128x128x8, K in 4", s, p, buf, ref, ref_us);
      candidate<W88, 2>("128x64x16 8x8 128 thr, K in 2", s, p, buf, ref, ref_us);
      candidate<W88, 4>("128x64x16 8x8 128 thr, K in 4", s, p, buf, ref, ref_us);
    }
    // stream-K at every shape: equal work per block whatever the tile count
    candidate<StreamK<W16, 2>>("stream-K 128x64x16 8x4, 2/SM", s, p, buf, ref, ref_us);
    candidate<StreamK<L8, 2>>("stream-K 128x128x8 8x8, 2/SM", s, p, buf, ref, ref_us);
    candidate<StreamK<W88, 2>>("stream-K 128x64x16 8x8, 2/SM", s, p, buf, ref, ref_us);
    CHECK(cudaFree(buf.a));
    CHECK(cudaFree(buf.b));
    CHECK(cudaFree(buf.c));
    CHECK(cudaFree(buf.workspace));
  }
  return 0;
}
