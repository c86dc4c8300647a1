// Host side of the CUDA GEMM: picks the tile configuration and the kernel instance (transposes,
// vector loads) and launches it on the current stream.
#include <cstdint>
#include <optional>
#include <string>

#include "core/cuda_launch.h"
#include "core/env.h"
#include "ops/gemm.h"
#include "ops/gemm_kernels.cuh"
#include "ops/gemm_streamk.cuh"

namespace fastnn {
namespace cuda {
namespace gemm_detail {
namespace {

// 16-byte loads of A and B need their bases aligned and every row start a whole number of
// vectors from the base; otherwise the kernel loads scalars (odd K, e.g. 33 or 70 features).
template <class T>
bool operands_vectorisable(const GemmProblem<T>& p) {
  constexpr int64_t vw = 16 / sizeof(T);
  return cuda_rt::aligned16(p.a) && cuda_rt::aligned16(p.b) && p.lda % vw == 0 && p.ldb % vw == 0;
}

// 16-byte stores of C: its base aligned and its rows whole vectors apart.
template <class T>
bool output_vectorisable(const GemmProblem<T>& p) {
  return cuda_rt::aligned16(p.c) && p.ldc % (16 / sizeof(T)) == 0;
}

// A workspace of n elements on the current device, from the allocator.
Tensor device_workspace(int64_t n, DType dtype) {
  int device = 0;
  FASTNN_CUDA_CHECK(cudaGetDevice(&device));
  return Tensor::empty(Shape{n}, dtype, Device{DeviceType::CUDA, device});
}

template <class Cfg, bool TA, bool TB>
void launch_instance(const GemmProblem<typename Cfg::Elem>& p, bool vec, bool c_vec, const char* name,
                     int64_t splits, int64_t k_chunk, typename Cfg::Elem* partials) {
  const dim3 grid(static_cast<unsigned>((p.m + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((p.n + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(splits));
  // the instances launch_gemm may split: Medium, Wide and float64 at every layout, Large for dY^T X
  // only (its other split layouts would spill), never Small
  constexpr bool kMaySplit = Cfg::BM > 32 && (Cfg::BM * Cfg::BN < 128 * 128 || (TA && !TB));
  if constexpr (kMaySplit) {
    if (partials) {
      cuda_rt::launch(name, gemm_kernel<Cfg, TA, TB, true>, grid, dim3(Cfg::kThreads), 0, p, vec, c_vec, k_chunk,
                      partials);
      return;
    }
  }
  cuda_rt::launch(name, gemm_kernel<Cfg, TA, TB, false>, grid, dim3(Cfg::kThreads), 0, p, vec, c_vec, k_chunk,
                  partials);
}

// splits > 1: K in `splits` chunks of k_chunk (a multiple of BK), then one reduction launch.
template <class Cfg>
void launch_config(const GemmProblem<typename Cfg::Elem>& p, const char* name, int64_t splits = 1) {
  using T = typename Cfg::Elem;
  FASTNN_CHECK((p.n + Cfg::BN - 1) / Cfg::BN <= 65535, ValueError, "gemm: ", p.n,
               " columns exceed the CUDA grid (at most ", int64_t{65535} * Cfg::BN, ")");
  FASTNN_CHECK((p.m + Cfg::BM - 1) / Cfg::BM <= int64_t{0x7fffffff}, ValueError, "gemm: ", p.m,
               " rows exceed the CUDA grid");
  const bool vec = operands_vectorisable(p);
  const bool c_vec = output_vectorisable(p);
  int64_t k_chunk = 0;
  Tensor workspace;
  T* partials = nullptr;
  if (splits > 1) {
    k_chunk = ((p.k + splits - 1) / splits + Cfg::BK - 1) / Cfg::BK * Cfg::BK;
    splits = (p.k + k_chunk - 1) / k_chunk;
    workspace = device_workspace(splits * p.m * p.n, dtype_of<T>::value);
    partials = workspace.data<T>();
  }
  const int variant = (p.trans_a ? 2 : 0) + (p.trans_b ? 1 : 0);
  switch (variant) {
    case 0: launch_instance<Cfg, false, false>(p, vec, c_vec, name, splits, k_chunk, partials); break;
    case 1: launch_instance<Cfg, false, true>(p, vec, c_vec, name, splits, k_chunk, partials); break;
    case 2: launch_instance<Cfg, true, false>(p, vec, c_vec, name, splits, k_chunk, partials); break;
    default: launch_instance<Cfg, true, true>(p, vec, c_vec, name, splits, k_chunk, partials); break;
  }
  if (partials) {
    constexpr unsigned kThreads = 256;
    cuda_rt::launch("gemm_split_k_reduce", gemm_split_k_reduce<T>, dim3(cuda_rt::grid_for(p.m * p.n, kThreads)),
                    dim3(kThreads), 0, p, static_cast<const T*>(partials), splits);
  }
}

// Stream-K (gemm_streamk.cuh) over Cfg's tiles: kStreamKBlocksPerSm blocks per SM share the
// tiles' K loops equally, so a one-wave shape leaves no SM idle. Its workspace (a slot of BM x BN
// sums per block, flags and the ticket) comes from the allocator per call, the flags and ticket
// zeroed on the stream first: a memset node under graph capture, and safe beside other streams.
constexpr int64_t kStreamKBlocksPerSm = 2;

template <class Cfg>
void launch_streamk(const GemmProblem<typename Cfg::Elem>& p, const char* name) {
  using T = typename Cfg::Elem;
  StreamKWork<T> w = streamk_work<Cfg>(p, kStreamKBlocksPerSm * cuda_rt::multiprocessor_count());
  Tensor slots = device_workspace(w.blocks * Cfg::BM * Cfg::BN, dtype_of<T>::value);
  Tensor sync = device_workspace(w.blocks + 1, DType::int32);
  FASTNN_CUDA_CHECK(cudaMemsetAsync(sync.data<int32_t>(), 0, sizeof(int32_t) * (w.blocks + 1), cuda_rt::current_stream()));
  w.slots = slots.data<T>();
  w.flags = sync.data<int32_t>();
  w.ticket = reinterpret_cast<unsigned*>(w.flags + w.blocks);
  const bool vec = operands_vectorisable(p), c_vec = output_vectorisable(p);
  const dim3 grid(static_cast<unsigned>(w.blocks)), block(Cfg::kThreads);
  switch ((p.trans_a ? 2 : 0) + (p.trans_b ? 1 : 0)) {
    case 0: cuda_rt::launch(name, gemm_streamk_kernel<Cfg, false, false>, grid, block, 0, p, vec, c_vec, w); break;
    case 1: cuda_rt::launch(name, gemm_streamk_kernel<Cfg, false, true>, grid, block, 0, p, vec, c_vec, w); break;
    case 2: cuda_rt::launch(name, gemm_streamk_kernel<Cfg, true, false>, grid, block, 0, p, vec, c_vec, w); break;
    default: cuda_rt::launch(name, gemm_streamk_kernel<Cfg, true, true>, grid, block, 0, p, vec, c_vec, w); break;
  }
}

// FASTNN_GEMM_STREAMK: unset or 0, off; 1, stream-K over the Wide tile replaces the K split at the
// one-wave shapes (96-119 tiles of 128 x 64, K >= kWideSplitMinK: dY W and dY^T X at 784 features,
// batch 1024), not yet the default: predicted ~0.9x cuBLAS at dY W 784 against the split's 0.74x,
// unmeasured (benchmarks/gpu/NOTES.md); `always`, every float32 GEMM (a test hook: the emulated
// tests' shapes are far from one wave). Read at each call (one getenv) so an A/B run
// (benchmarks/gpu/ab.py) can switch it between calls.
enum class StreamKUse { off, one_wave, always };
inline StreamKUse streamk_use() {
  const std::optional<std::string> v = env_value("FASTNN_GEMM_STREAMK");
  if (!v || *v == "0") return StreamKUse::off;
  if (*v == "1") return StreamKUse::one_wave;
  FASTNN_CHECK(*v == "always", ValueError, "FASTNN_GEMM_STREAMK: expected 0, 1 or always (or unset), got '", *v, "'");
  return StreamKUse::always;
}

// Larger tiles do more FMAs per byte moved, but only pay while there are enough of them to fill
// the GPU (~130 SMs on an H100): the largest configuration that still gives kTilesPerWave blocks
// wins. The choice depends on the shape only, and every configuration sums each element of C in
// the same order, k = 0, 1, ...: the same bits whichever runs.
constexpr int64_t kTilesPerWave = 128;
// Too few tiles even of 64 x 64 (an MLP layer at batch 128) and a long K: split K across blocks up
// to about two blocks per SM of an H100, each chunk at least kMinSplitChunk deep (shorter chunks
// spend more on the workspace than they save). The medium tile keeps 256 threads per block, where
// the 32 x 32 tile's 64 leave an SM mostly idle.
constexpr int64_t kSplitTargetBlocks = 256;
constexpr int64_t kMinSplitChunk = 64;

// 128 x 64 tiles from this many on (the MLP's 1024 x 784 layers make 104 of them).
constexpr int64_t kWideTiles = 96;
// Fewer than a wave of 128 x 64 tiles (one per SM of an H100/H200, whose SMs hold two) and K at
// least kWideSplitMinK, K in two chunks: on an H200 the batch-1024 layers (104-128 tiles, K = 784 or
// 1024) ran 1.02-1.11x faster so, reduction included, except X W^T at 784 inputs (0.99x)
// (benchmarks/results/2026-11-26-h200-0b18ac6/gemm_tiles.md, "128x64x16, K in 2"; in the bench
// at c54e4ea: dX 0.68 -> 0.75x cuBLAS, dW 0.72 -> 0.76x at 784 inputs). dW at batch 128 (K = 128)
// went from 13.0 to 16.9 us split: eight slabs per block gain less than the reduction costs.
// With hoisted slab loads and a full wave of tiles (the 128 tiles of 1024 x 1024 and of X W^T at 784
// inputs) the unsplit tile caught up: on an H100 it ran 1.09x the split at X W^T 1024 x 784 -> 1024,
// 1.02x at 1024^3, 1.01x dY W, and 1.04x Large with K in 4 at dY^T X; at 104 tiles (784 outputs, a
// fifth of the SMs idle) the split stays ahead (benchmarks/results/2026-11-26-h100-cde6ae1).
// So K is split only below kWideFullWave tiles. There, with K too short to split (dY^T X at batch
// 128: K = 128, 104 tiles), the 64 x 64 tile's 208 blocks ran 1.10x the 128 x 64 (12.6 vs 14.0 us).
constexpr int64_t kWideFullWave = 120;
constexpr int64_t kWideSplitMinK = 512;
// ... except dY^T X (A transposed, B not: both operands stored into shared memory as they lie, no
// transposing stores), where 128 x 128 tiles with K in 4 ran 1.05x the 128 x 64 split in two at
// 1024 x 784 and 1024 x 1024 on an H200, in two visits alike (65.0-65.5 vs 68.1-68.7 us, 64.8-64.9
// vs 68.2-68.3; gemm_tiles.md of benchmarks/results/2026-11-26-h200-0b18ac6 and -c54e4ea).
constexpr int64_t kLargeSplitsForDw = 4;

int64_t tiles(int64_t m, int64_t n, int64_t tile_m, int64_t tile_n) {
  return ((m + tile_m - 1) / tile_m) * ((n + tile_n - 1) / tile_n);
}
int64_t tiles(int64_t m, int64_t n, int64_t tile) { return tiles(m, n, tile, tile); }

int64_t split_k_for(int64_t m, int64_t n, int64_t k) {
  const int64_t medium_tiles = tiles(m, n, 64);
  const int64_t by_blocks = (kSplitTargetBlocks + medium_tiles - 1) / medium_tiles;
  const int64_t by_depth = k / kMinSplitChunk;
  return by_blocks < by_depth ? by_blocks : by_depth;
}

}  // namespace

template <class T>
void launch_gemm(const GemmProblem<T>& p) {
  if (p.m <= 0 || p.n <= 0) return;
  if constexpr (sizeof(T) == sizeof(float)) {
    const StreamKUse streamk = streamk_use();
    if (streamk == StreamKUse::always && p.k > 0) return launch_streamk<ConfigF32Wide>(p, "gemm_f32_128x64_stream_k");
    if (tiles(p.m, p.n, 128) >= kTilesPerWave) launch_config<ConfigF32Large>(p, "gemm_f32_128x128");
    else if (const int64_t wide = tiles(p.m, p.n, 128, 64);
             wide >= kWideFullWave || (wide >= kWideTiles && p.k >= kWideSplitMinK)) {
      if (wide >= kWideFullWave) launch_config<ConfigF32Wide>(p, "gemm_f32_128x64");
      else if (streamk == StreamKUse::one_wave) launch_streamk<ConfigF32Wide>(p, "gemm_f32_128x64_stream_k");
      else if (p.trans_a && !p.trans_b)
        launch_config<ConfigF32Large>(p, "gemm_f32_128x128_split_k", kLargeSplitsForDw);
      else launch_config<ConfigF32Wide>(p, "gemm_f32_128x64_split_k", 2);
    }
    else if (tiles(p.m, p.n, 64) >= kTilesPerWave) launch_config<ConfigF32Medium>(p, "gemm_f32_64x64");
    else if (const int64_t splits = split_k_for(p.m, p.n, p.k); splits >= 2)
      launch_config<ConfigF32Medium>(p, "gemm_f32_64x64_split_k", splits);
    else launch_config<ConfigF32Small>(p, "gemm_f32_32x32");
  } else {
    const int64_t splits = tiles(p.m, p.n, 64) >= kTilesPerWave ? 1 : split_k_for(p.m, p.n, p.k);
    if (splits >= 2) launch_config<ConfigF64>(p, "gemm_f64_64x64_split_k", splits);
    else launch_config<ConfigF64>(p, "gemm_f64_64x64");
  }
}

template void launch_gemm<float>(const GemmProblem<float>&);
template void launch_gemm<double>(const GemmProblem<double>&);

}  // namespace gemm_detail

void gemm(const Tensor& a, const Tensor& b, Tensor& c, double alpha, double beta, bool trans_a,
          bool trans_b, const Tensor* bias, Activation act) {
  dispatch_floating(c.dtype(), "c", [&](auto tag) {
    using T = decltype(tag);
    gemm_detail::launch_gemm(cpu::gemm_problem<T>(a, b, c, alpha, beta, trans_a, trans_b, bias, act));
  });
}

}  // namespace cuda
}  // namespace fastnn
