// Host side of the CUDA GEMM: picks the tile configuration and the kernel instance (transposes,
// vector loads) and launches it on the current stream.
#include <cstdint>

#include "core/cuda_launch.h"
#include "ops/gemm.h"
#include "ops/gemm_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace gemm_detail {
namespace {

template <class T>
bool aligned16(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// 16-byte loads of A and B need their bases aligned and every row start a whole number of
// vectors from the base; otherwise the kernel loads scalars (odd K, e.g. 33 or 70 features).
template <class T>
bool operands_vectorisable(const GemmProblem<T>& p) {
  constexpr int64_t vw = 16 / sizeof(T);
  return aligned16(p.a) && aligned16(p.b) && p.lda % vw == 0 && p.ldb % vw == 0;
}

template <class Cfg, bool TA, bool TB>
void launch_instance(const GemmProblem<typename Cfg::Elem>& p, bool vec, bool c_vec, const char* name) {
  const dim3 grid(static_cast<unsigned>((p.m + Cfg::BM - 1) / Cfg::BM),
                  static_cast<unsigned>((p.n + Cfg::BN - 1) / Cfg::BN));
  cuda_rt::launch(name, gemm_kernel<Cfg, TA, TB>, grid, dim3(Cfg::kThreads), 0, p, vec, c_vec);
}

template <class Cfg>
void launch_config(const GemmProblem<typename Cfg::Elem>& p, const char* name) {
  using T = typename Cfg::Elem;
  FASTNN_CHECK((p.n + Cfg::BN - 1) / Cfg::BN <= 65535, ValueError, "gemm: ", p.n,
               " columns exceed the CUDA grid (at most ", int64_t{65535} * Cfg::BN, ")");
  FASTNN_CHECK((p.m + Cfg::BM - 1) / Cfg::BM <= int64_t{0x7fffffff}, ValueError, "gemm: ", p.m,
               " rows exceed the CUDA grid");
  const bool vec = operands_vectorisable(p);
  const bool c_vec = aligned16(p.c) && p.ldc % (16 / sizeof(T)) == 0;
  const int variant = (p.trans_a ? 2 : 0) + (p.trans_b ? 1 : 0);
  switch (variant) {
    case 0: return launch_instance<Cfg, false, false>(p, vec, c_vec, name);
    case 1: return launch_instance<Cfg, false, true>(p, vec, c_vec, name);
    case 2: return launch_instance<Cfg, true, false>(p, vec, c_vec, name);
    default: return launch_instance<Cfg, true, true>(p, vec, c_vec, name);
  }
}

// Larger tiles do more FMAs per byte moved, but only pay while there are enough of them to fill
// the GPU (~130 SMs on an H100): the largest configuration that still gives kTilesPerWave blocks
// wins. The choice depends on the shape only, and every configuration sums each element of C in
// the same order, k = 0, 1, ...: the same bits whichever runs.
constexpr int64_t kTilesPerWave = 128;

int64_t tiles(int64_t m, int64_t n, int64_t tile) { return ((m + tile - 1) / tile) * ((n + tile - 1) / tile); }

}  // namespace

template <class T>
void launch_gemm(const GemmProblem<T>& p) {
  if (p.m <= 0 || p.n <= 0) return;
  if constexpr (sizeof(T) == sizeof(float)) {
    if (tiles(p.m, p.n, 128) >= kTilesPerWave) launch_config<ConfigF32Large>(p, "gemm_f32_128x128");
    else if (tiles(p.m, p.n, 64) >= kTilesPerWave) launch_config<ConfigF32Medium>(p, "gemm_f32_64x64");
    else launch_config<ConfigF32Small>(p, "gemm_f32_32x32");
  } else {
    launch_config<ConfigF64>(p, "gemm_f64_64x64");
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
