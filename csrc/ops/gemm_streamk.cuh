// Stream-K, a candidate in the GPU tile sweep (benchmarks/gpu/gemm_tiles.cu) and, behind
// FASTNN_GEMM_STREAMK (gemm_cuda.cu), in production: the one-wave GEMMs of an MLP at batch 1024
// lose to wave quantisation. dY W at 784 outputs makes 104 tiles of
// 128 x 64 for 132 SMs: every tile shape and K split tried ran 68.6-71 us on an H200, where the
// 128-tile shapes of the same FLOPs per tile ran at the rate that would give ~52 us, and cuBLAS
// took 50.5 (benchmarks/results/2026-11-26-h200-539216d/gemm_tiles.md).
//
// Stream-K: the tiles' K loops laid end to end (tiles x slabs "iterations") and cut into G equal
// ranges, one per block, so every block does the same number of FMAs whatever the tile count. A
// range starts and ends anywhere in a tile: a block whose range ends inside a tile leaves its sums
// for that tile in its workspace slot and raises its flag; the block that reaches the tile's last
// slab (its finisher) waits for those flags, adds the slots to its own sums in block order, and
// writes C through production's epilogue. Each block leaves at most one slot (its
// range's last tile); G, the ranges and the order of every sum depend on the problem and G alone:
// the same bits run to run.
//
// Blocks take their range from a ticket (an atomic counter) rather than blockIdx, so a finisher
// only ever waits for blocks that started before it, and each block sums and flags its range's
// last segment before it waits for anything: no deadlock however the hardware (or the emulator)
// orders and places blocks, and no block's flag waits on another's. The last ticket resets the
// counter and each finisher resets the flags it consumed, so the workspace is ready for the next
// launch (a graph replay too).
#pragma once
#include <cstdint>

#include "ops/gemm_kernels.cuh"
#include "core/cuda_sync.cuh"

namespace fastnn::cuda::gemm_detail {

template <class T>
struct StreamKWork {
  int64_t tiles_m;     // row tiles; tile t is (t % tiles_m, t / tiles_m)
  int64_t slabs;       // slabs of K per tile
  int64_t iterations;  // tiles x slabs
  int64_t blocks;      // G <= iterations: every block has at least one slab
  T* slots;            // G x (BM x BN), in the threads' register order
  int* flags;          // G, zero between launches
  unsigned* ticket;    // zero between launches
};

// The work of Cfg's tiles over problem p in at most max_blocks ranges (fewer when there are fewer
// slabs than that: every block gets at least one); the workspace pointers are the caller's.
template <class Cfg>
StreamKWork<typename Cfg::Elem> streamk_work(const GemmProblem<typename Cfg::Elem>& p, int64_t max_blocks) {
  StreamKWork<typename Cfg::Elem> w{};
  w.tiles_m = (p.m + Cfg::BM - 1) / Cfg::BM;
  w.slabs = (p.k + Cfg::BK - 1) / Cfg::BK;
  w.iterations = w.tiles_m * ((p.n + Cfg::BN - 1) / Cfg::BN) * w.slabs;
  w.blocks = max_blocks < w.iterations ? max_blocks : w.iterations;
  return w;
}

// The first iteration of block b's range.
__host__ __device__ inline int64_t streamk_range_begin(int64_t b, int64_t iterations, int64_t blocks) {
  return b * iterations / blocks;
}

// The block whose range holds iteration i: the largest b with range_begin(b) <= i.
__device__ inline int64_t streamk_block_of(int64_t i, int64_t iterations, int64_t blocks) {
  return ((i + 1) * blocks - 1) / iterations;
}

template <class Cfg, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    gemm_streamk_kernel(GemmProblem<typename Cfg::Elem> p, bool vec, bool c_vec, StreamKWork<typename Cfg::Elem> w) {
  using T = typename Cfg::Elem;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  constexpr int kSlot = BM * BN;
  __shared__ __align__(16) T As[2][BK][BM + Cfg::kPad];
  __shared__ __align__(16) T Bs[2][BK][BN + Cfg::kPad];
  __shared__ int64_t block_ticket;

  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % Cfg::kThreadsX, ty = tid / Cfg::kThreadsX;
  if (tid == 0) {
    const unsigned t = atomicAdd(w.ticket, 1u);
    if (t + 1 == static_cast<unsigned>(w.blocks)) atomicExch(w.ticket, 0u);  // every ticket is out
    block_ticket = t;
  }
  __syncthreads();
  const int64_t b = block_ticket;
  const int64_t end = streamk_range_begin(b + 1, w.iterations, w.blocks);

  // The range's segments from its end: the last one (the start of a tile a later block finishes)
  // is summed and flagged first, the first one (the end of a tile begun by earlier blocks, whose
  // flags it waits for) last. In range order a block raised its flag only after its own wait, so
  // each flag waited on the one before it: a chain through every block, 4x slower than the K split
  // at the H200's one-wave shapes and 17x at 4096^3 (2026-11-30).
  const int64_t begin = streamk_range_begin(b, w.iterations, w.blocks);
  for (int64_t seg_end = end; seg_end > begin;) {
    const int64_t tile = (seg_end - 1) / w.slabs, tile_first = tile * w.slabs;
    const int64_t seg_begin = begin > tile_first ? begin : tile_first;
    const int64_t m0 = (tile % w.tiles_m) * BM, n0 = (tile / w.tiles_m) * BN;
    const int64_t k_end_raw = (seg_end - tile_first) * BK;
    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
    accumulate_k_range<Cfg, TRANS_A, TRANS_B>(p, m0, n0, (seg_begin - tile_first) * BK,
                                              k_end_raw < p.k ? k_end_raw : p.k, vec, tx, ty, As, Bs, acc);

    if (seg_end < tile_first + w.slabs) {  // the range ends inside this tile: its finisher adds these
      T* slot = w.slots + b * kSlot;
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) slot[(i * TN + j) * Cfg::kThreads + tid] = acc[i][j];
      __threadfence();  // each thread's sums are visible device-wide before the flag below
      __syncthreads();
      if (tid == 0) atomicExch(w.flags + b, 1);
    } else {
      // The tile's lower k is in the slots of the blocks before this one: added to this block's
      // sums in block order (a second TM x TN array to add them in k order spilled the 8 x 8 tile).
      if (seg_begin > tile_first) {
        for (int64_t from = streamk_block_of(tile_first, w.iterations, w.blocks); from < b; ++from) {
          if (tid == 0) {
            while (atomicAdd(w.flags + from, 0) == 0) {
            }
            atomicExch(w.flags + from, 0);  // consumed: zero for the next launch
          }
          __syncthreads();
          __threadfence();
          const T* slot = w.slots + from * kSlot;
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] += cuda_rt::load_bypassing_l1(slot + (i * TN + j) * Cfg::kThreads + tid);
        }
      }
      store_tile<Cfg, false>(p, acc, m0, n0, tx, ty, c_vec, nullptr);
    }
    seg_end = seg_begin;
  }
}

}  // namespace fastnn::cuda::gemm_detail
