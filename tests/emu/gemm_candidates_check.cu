// The GEMM candidates of the GPU tile sweep under the CPU emulation: the cp.async kernel
// (benchmarks/gpu/gemm_async.cuh) and the production kernel with the other slab loader
// (TileConfig's HOIST flipped: SlabLoader or HoistedSlabLoader, csrc/ops/gemm_kernels.cuh). For the four transposes, odd sizes
// (edges of every tile, partial 16-byte chunks), and K split in chunks, each must give the
// production kernel's bits, since every element is one thread's sum over k in the same order. The
// real GPU runs them in benchmarks/gpu/gemm_tiles.cu, which checks the bits again. Built and run
// by tests/test_emu.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "core/cuda_launch.h"
#include "emu_check.h"
#include "gemm_async.cuh"
#include "ops/gemm_streamk.cuh"

using namespace fastnn;
using namespace fastnn::cuda::gemm_detail;

namespace {

// Cfg with the other slab loader
template <class Cfg>
using OtherLoader =
    TileConfig<typename Cfg::Elem, Cfg::BM, Cfg::BN, Cfg::BK, Cfg::TM, Cfg::TN, Cfg::kMinBlocks, !Cfg::kHoist>;

enum class Candidate { async, other_loader };

template <class Cfg, bool TA, bool TB, bool SPLIT, Candidate C>
void run_both(const GemmProblem<float>& p, int64_t k_chunk, float* c_prod, float* c_async, float* partials) {
  const bool c_vec = p.ldc % 4 == 0;
  const int64_t splits = SPLIT ? (p.k + k_chunk - 1) / k_chunk : 1;
  const dim3 grid(static_cast<unsigned>((p.m + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((p.n + Cfg::BN - 1) / Cfg::BN), static_cast<unsigned>(splits));
  GemmProblem<float> q = p;
  q.c = c_prod;
  cuda_rt::launch("gemm_kernel", gemm_kernel<Cfg, TA, TB, SPLIT>, grid, dim3(Cfg::kThreads), 0, q, true, c_vec,
                  k_chunk, partials);
  if (SPLIT)
    cuda_rt::launch("gemm_split_k_reduce", gemm_split_k_reduce<float>, dim3(64), dim3(256), 0, q,
                    static_cast<const float*>(partials), splits);
  q.c = c_async;
  if constexpr (C == Candidate::async)
    cuda_rt::launch("gemm_async_kernel", gemm_async_kernel<AsyncConfig<Cfg, 3>, TA, TB, SPLIT>, grid,
                    dim3(Cfg::kThreads), 0, q, c_vec, k_chunk, partials);
  else
    cuda_rt::launch("gemm_kernel (other loader)", gemm_kernel<OtherLoader<Cfg>, TA, TB, SPLIT>, grid,
                    dim3(Cfg::kThreads), 0, q, true, c_vec, k_chunk, partials);
  if (SPLIT)
    cuda_rt::launch("gemm_split_k_reduce", gemm_split_k_reduce<float>, dim3(64), dim3(256), 0, q,
                    static_cast<const float*>(partials), splits);
}

int64_t round4(int64_t v) { return (v + 3) / 4 * 4; }

// The operands of an m x n x k problem with the given transposes, on the device, and the problem
// with bias and ReLU in the epilogue (C left to the caller). Rows are padded to whole 16-byte
// vectors (the candidates' precondition, as for the production kernel's 16-byte loads), with
// random values in the padding that must not be read.
struct Operands {
  DeviceBuffer<float> a, b, bias;
  GemmProblem<float> p{};
};

Operands random_operands(int64_t m, int64_t n, int64_t k, bool ta, bool tb, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  const int64_t lda = ta ? round4(m) : round4(k), ldb = tb ? round4(k) : round4(n);
  std::vector<float> a((ta ? k : m) * lda), b((tb ? n : k) * ldb), bias(n);
  for (float& v : a) v = normal(gen);
  for (float& v : b) v = normal(gen);
  for (float& v : bias) v = normal(gen);
  Operands o{DeviceBuffer<float>(a), DeviceBuffer<float>(b), DeviceBuffer<float>(bias)};
  GemmProblem<float>& p = o.p;
  p.trans_a = ta, p.trans_b = tb, p.m = m, p.n = n, p.k = k;
  p.a = o.a.ptr, p.lda = lda;
  p.b = o.b.ptr, p.ldb = ldb;
  p.ldc = n, p.alpha = 1.0f, p.beta = 0.0f, p.bias = o.bias.ptr, p.act = Activation::relu;
  return o;
}

// k_chunk > 0 splits K.
template <class Cfg, Candidate C>
void check(int64_t m, int64_t n, int64_t k, bool ta, bool tb, int64_t k_chunk) {
  const Operands ops = random_operands(m, n, k, ta, tb, static_cast<unsigned>(m * 131 + n * 17 + k));
  const GemmProblem<float>& p = ops.p;
  const int64_t splits = k_chunk > 0 ? (k + k_chunk - 1) / k_chunk : 1;
  DeviceBuffer<float> c1(m * n), c2(m * n), part(splits * m * n);
  const bool split = k_chunk > 0;
  const int variant = (ta ? 2 : 0) + (tb ? 1 : 0) + (split ? 4 : 0);
  switch (variant) {
    case 0: run_both<Cfg, false, false, false, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 1: run_both<Cfg, false, true, false, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 2: run_both<Cfg, true, false, false, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 3: run_both<Cfg, true, true, false, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 4: run_both<Cfg, false, false, true, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 5: run_both<Cfg, false, true, true, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    case 6: run_both<Cfg, true, false, true, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
    default: run_both<Cfg, true, true, true, C>(p, k_chunk, c1.ptr, c2.ptr, part.ptr); break;
  }
  const std::vector<float> want = c1.download(), got = c2.download();
  int64_t differ = 0, first = -1;
  for (int64_t i = 0; i < m * n; ++i)
    if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0 && differ++ == 0) first = i;
  CHECK(differ == 0, "%lldx%lldx%lld ta=%d tb=%d k_chunk=%lld: %lld elements differ, first at (%lld, %lld): %g vs %g",
        static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ta, tb,
        static_cast<long long>(k_chunk), static_cast<long long>(differ), static_cast<long long>(first / n),
        static_cast<long long>(first % n), first >= 0 ? want[first] : 0.0, first >= 0 ? got[first] : 0.0);
}

template <class Cfg, Candidate C = Candidate::async>
void check_all_layouts(int64_t m, int64_t n, int64_t k, int64_t k_chunk) {
  for (int t = 0; t < 4; ++t) check<Cfg, C>(m, n, k, t & 2, t & 1, k_chunk);
}

}  // namespace

// Sizes: inside one tile, past the edges of the 128 x 64 tile in both directions, odd sizes (a
// row's last 16-byte chunk partly past the operand), K not a multiple of the 16-deep slab, and a
// long K (more slabs than stages).
EMU_TEST(async_wide_tiles_give_the_production_bits) {
  check_all_layouts<ConfigF32Wide>(7, 12, 20, 0);
  check_all_layouts<ConfigF32Wide>(130, 67, 33, 0);
  check_all_layouts<ConfigF32Wide>(200, 132, 100, 0);
}

EMU_TEST(async_medium_tiles_give_the_production_bits) {
  check_all_layouts<ConfigF32Medium>(70, 65, 53, 0);
}

EMU_TEST(async_split_k_gives_the_production_bits) {
  check_all_layouts<ConfigF32Wide>(130, 70, 201, 64);  // chunks of 4 slabs, the last short and ragged
}

// Hoisted and per-slab loads: the same sizes, for the three float configurations the sweep tries,
// with the whole-slab fast path, the ragged last slab, and blocks at the row edges.
EMU_TEST(both_slab_loaders_give_the_same_bits) {
  check_all_layouts<ConfigF32Wide, Candidate::other_loader>(7, 12, 20, 0);
  check_all_layouts<ConfigF32Wide, Candidate::other_loader>(130, 67, 33, 0);
  check_all_layouts<ConfigF32Wide, Candidate::other_loader>(200, 132, 100, 0);
  check_all_layouts<ConfigF32Large, Candidate::other_loader>(130, 132, 37, 0);
  check_all_layouts<ConfigF32Medium, Candidate::other_loader>(70, 65, 53, 0);
}

// The sweep's 128 x 64 tile of 128 threads (8 x 8 each), both loaders.
EMU_TEST(wide_8x8_tiles_both_loaders_give_the_same_bits) {
  using W88 = TileConfig<float, 128, 64, 16, 8, 8, 2, true>;
  check_all_layouts<W88, Candidate::other_loader>(130, 67, 33, 0);
  check_all_layouts<W88, Candidate::other_loader>(200, 132, 100, 48);
}

EMU_TEST(both_slab_loaders_split_k_give_the_same_bits) {
  check_all_layouts<ConfigF32Wide, Candidate::other_loader>(130, 70, 201, 64);
  check_all_layouts<ConfigF32Large, Candidate::other_loader>(130, 132, 203, 48);
}

// Stream-K (gemm_streamk.cuh) against the production kernel, unsplit: within rounding (its partial
// sums add in another order), every element written, the same bits on a second launch (which also
// finds the ticket and flags the first left zeroed). G from one block (every tile whole) past the
// tile count (ranges of a few slabs, a tile's sums from up to a dozen blocks) to one slab a block.
template <class Cfg, bool TA, bool TB>
void run_streamk(const GemmProblem<float>& p, const StreamKWork<float>& w) {
  cuda_rt::launch("gemm_streamk_kernel", gemm_streamk_kernel<Cfg, TA, TB>, dim3(static_cast<unsigned>(w.blocks)),
                  dim3(Cfg::kThreads), 0, p, true, p.ldc % 4 == 0, w);
}

template <class Cfg>
void check_streamk(int64_t m, int64_t n, int64_t k, bool ta, bool tb, int64_t blocks) {
  Operands ops = random_operands(m, n, k, ta, tb, static_cast<unsigned>(m * 7 + n * 131 + k * 3 + blocks));
  GemmProblem<float>& p = ops.p;
  StreamKWork<float> w = streamk_work<Cfg>(p, blocks);
  blocks = w.blocks;
  DeviceBuffer<float> c1(m * n), c2(m * n), slots(blocks * Cfg::BM * Cfg::BN);
  DeviceBuffer<int> flags(std::vector<int>(blocks, 0));
  DeviceBuffer<unsigned> ticket(std::vector<unsigned>(1, 0u));
  p.c = c1.ptr;
  const dim3 grid(static_cast<unsigned>(w.tiles_m), static_cast<unsigned>((n + Cfg::BN - 1) / Cfg::BN));
  const int variant = (ta ? 2 : 0) + (tb ? 1 : 0);
  auto production = [&](auto tag_a, auto tag_b) {
    cuda_rt::launch("gemm_kernel", gemm_kernel<Cfg, decltype(tag_a)::value, decltype(tag_b)::value, false>, grid,
                    dim3(Cfg::kThreads), 0, p, true, n % 4 == 0, int64_t{0}, static_cast<float*>(nullptr));
  };
  w.slots = slots.ptr, w.flags = flags.ptr, w.ticket = ticket.ptr;
  auto streamk = [&] {
    switch (variant) {
      case 0: run_streamk<Cfg, false, false>(p, w); break;
      case 1: run_streamk<Cfg, false, true>(p, w); break;
      case 2: run_streamk<Cfg, true, false>(p, w); break;
      default: run_streamk<Cfg, true, true>(p, w); break;
    }
  };
  using F = std::false_type;
  using T = std::true_type;
  switch (variant) {
    case 0: production(F{}, F{}); break;
    case 1: production(F{}, T{}); break;
    case 2: production(T{}, F{}); break;
    default: production(T{}, T{}); break;
  }
  p.c = c2.ptr;  // cudaMalloc's memory starts as NaN here: an unwritten element shows
  streamk();
  const std::vector<float> want = c1.download(), first = c2.download();
  double err = 0, scale = 0;
  int64_t bad = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    const double d = std::fabs(static_cast<double>(first[i]) - want[i]);
    if (!(d <= 1e-5 * (1.0 + std::fabs(static_cast<double>(want[i]))))) ++bad;
    err = std::max(err, d);
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  CHECK(bad == 0, "stream-K %lldx%lldx%lld ta=%d tb=%d G=%lld: %lld elements off (max err %g of max |C| %g)",
        static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ta, tb,
        static_cast<long long>(blocks), static_cast<long long>(bad), err, scale);
  streamk();
  const std::vector<float> second = c2.download();
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)) == 0,
        "stream-K %lldx%lldx%lld G=%lld: a second launch gave other bits", static_cast<long long>(m),
        static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(blocks));
  CHECK(ticket.download()[0] == 0u, "stream-K left its ticket at %u", ticket.download()[0]);
  for (int f : flags.download()) CHECK(f == 0, "stream-K left a flag raised");
}

EMU_TEST(streamk_matches_the_production_kernel) {
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 2, tb = t & 1;
    check_streamk<ConfigF32Wide>(130, 67, 100, ta, tb, 1);    // one block: every tile whole
    check_streamk<ConfigF32Wide>(130, 67, 100, ta, tb, 3);    // 28 slabs a block over 4 tiles of 7
    check_streamk<ConfigF32Wide>(200, 132, 33, ta, tb, 13);   // ragged K (3 slabs, the last short)
    check_streamk<ConfigF32Wide>(7, 12, 250, ta, tb, 12);     // one tile over 12 blocks
    check_streamk<ConfigF32Wide>(70, 65, 64, ta, tb, 1000);   // one slab a block
  }
  check_streamk<ConfigF32Large>(130, 132, 77, false, true, 5);
  check_streamk<ConfigF32Medium>(70, 65, 53, true, false, 6);
}

int main() { return emu_test::run_all(); }
