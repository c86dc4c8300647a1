// Tile-shape sweep of fastnn's CUDA GEMM (csrc/ops/gemm_kernels.cuh) on a real GPU: the same
// kernel template, instantiated with several TileConfigs, timed with CUDA events at the MLP's
// shapes and a large square. A device visit builds and runs it next to `fastnn bench`, whose rows
// give cuBLAS's kernel time at the same shapes (benchmarks/gpu/visit.sh):
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc benchmarks/gpu/gemm_tiles.cu -o gemm_tiles && ./gemm_tiles
//
// Every configuration sums each element of C over k = 0, 1, ... in order, so all of them must give
// the same bits as the production choice: the sweep checks that (a configuration that differs
// is a bug, not a rounding difference) and that no element of C was left unwritten.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/cuda_launch.h"
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

// The candidates. Production (gemm_cuda.cu): Large for >= 128 tiles of 128 x 128, else Medium.
using L8 = ConfigF32Large;                              // 128 x 128 x 8, 8 x 8, 2 blocks/SM
using L16 = TileConfig<float, 128, 128, 16, 8, 8, 1>;   // a deeper slab: half the barriers (2 blocks/SM spill)
using W16 = TileConfig<float, 128, 64, 16, 8, 4, 2>;    // 128 x 64: twice the tiles of Large
using T16 = TileConfig<float, 64, 128, 16, 4, 8, 2>;    // 64 x 128
using M16 = ConfigF32Medium;                            // 64 x 64 x 16, 4 x 4
using M8x8 = TileConfig<float, 64, 64, 16, 8, 8, 4>;    // 64 x 64 with 8 x 8 per thread: 64 threads

struct GemmShape {
  const char* name;
  int64_t m, n, k;
  bool ta, tb;
};

template <class Cfg>
void launch(const GemmProblem<float>& p, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>((p.m + Cfg::BM - 1) / Cfg::BM), static_cast<unsigned>((p.n + Cfg::BN - 1) / Cfg::BN));
  const int variant = (p.trans_a ? 2 : 0) + (p.trans_b ? 1 : 0);
  const bool vec = true, c_vec = true;
  switch (variant) {
    case 0: gemm_kernel<Cfg, false, false, false><<<grid, Cfg::kThreads, 0, s>>>(p, vec, c_vec, 0, nullptr); break;
    case 1: gemm_kernel<Cfg, false, true, false><<<grid, Cfg::kThreads, 0, s>>>(p, vec, c_vec, 0, nullptr); break;
    case 2: gemm_kernel<Cfg, true, false, false><<<grid, Cfg::kThreads, 0, s>>>(p, vec, c_vec, 0, nullptr); break;
    default: gemm_kernel<Cfg, true, true, false><<<grid, Cfg::kThreads, 0, s>>>(p, vec, c_vec, 0, nullptr); break;
  }
  CHECK(cudaGetLastError());
}

// Median microseconds per launch over `reps` timed groups of `inner` back-to-back launches.
template <class Cfg>
double time_us(const GemmProblem<float>& p, int reps, int inner) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) launch<Cfg>(p, nullptr);
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(start));
    for (int i = 0; i < inner; ++i) launch<Cfg>(p, nullptr);
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
  float *a, *b, *c;
  int64_t c_elems;
};

// Runs Cfg once on C poisoned with NaN and compares with `ref` bit for bit; then times it.
template <class Cfg>
void candidate(const char* name, const GemmShape& s, const GemmProblem<float>& p, const Buffers& buf,
               const std::vector<float>& ref, double reference_us) {
  CHECK(cudaMemset(buf.c, 0xff, buf.c_elems * sizeof(float)));  // NaN everywhere
  launch<Cfg>(p, nullptr);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out(buf.c_elems);
  CHECK(cudaMemcpy(out.data(), buf.c, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const bool same = std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0;
  const int inner = s.m * s.n * s.k > (int64_t{1} << 32) ? 5 : 50;
  const double us = time_us<Cfg>(p, 15, inner);
  const double tflops = 2.0 * s.m * s.n * s.k / us * 1e-6;
  std::printf("| %-26s | %-22s | %5lld | %9.1f | %7.1f | %6.2fx | %s |\n", s.name, name,
              static_cast<long long>(((s.m + Cfg::BM - 1) / Cfg::BM) * ((s.n + Cfg::BN - 1) / Cfg::BN)), us,
              tflops, reference_us / us, same ? "same bits" : "DIFFERENT BITS");
}

}  // namespace

int main() {
  const GemmShape shapes[] = {
      {"fwd X W^T 1024x784->1024", 1024, 1024, 784, false, true},
      {"dX = dY W 1024x784->1024", 1024, 784, 1024, false, false},
      {"dW = dY^T X 1024x784->1024", 1024, 784, 1024, true, false},
      {"fwd X W^T 1024x1024->1024", 1024, 1024, 1024, false, true},
      {"dX = dY W 1024x1024->1024", 1024, 1024, 1024, false, false},
      {"dW = dY^T X 1024x1024->1024", 1024, 1024, 1024, true, false},
      {"fwd X W^T 4096x4096->4096", 4096, 4096, 4096, false, true},
      {"dX = dY W 4096x4096->4096", 4096, 4096, 4096, false, false},
  };
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("gemm_tiles on %s (%d SMs); float32, FP32 FMAs (no tensor cores); median of 15 event-timed groups\n\n",
              prop.name, prop.multiProcessorCount);
  std::printf("| shape | config | tiles | us | TFLOP/s | vs production | bits |\n|---|---|---|---|---|---|---|\n");
  std::mt19937 gen(1234);
  std::normal_distribution<float> normal;
  for (const GemmShape& s : shapes) {
    const int64_t a_elems = s.m * s.k, b_elems = s.k * s.n;
    std::vector<float> ha(a_elems), hb(b_elems);
    for (float& v : ha) v = normal(gen);
    for (float& v : hb) v = normal(gen);
    Buffers buf{};
    buf.c_elems = s.m * s.n;
    CHECK(cudaMalloc(&buf.a, a_elems * sizeof(float)));
    CHECK(cudaMalloc(&buf.b, b_elems * sizeof(float)));
    CHECK(cudaMalloc(&buf.c, buf.c_elems * sizeof(float)));
    CHECK(cudaMemcpy(buf.a, ha.data(), a_elems * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(buf.b, hb.data(), b_elems * sizeof(float), cudaMemcpyHostToDevice));
    GemmProblem<float> p;
    p.trans_a = s.ta, p.trans_b = s.tb, p.m = s.m, p.n = s.n, p.k = s.k;
    p.a = buf.a, p.lda = s.ta ? s.m : s.k;
    p.b = buf.b, p.ldb = s.tb ? s.k : s.n;
    p.c = buf.c, p.ldc = s.n;
    // the production choice is the reference for bits and time
    const bool large = ((s.m + 127) / 128) * ((s.n + 127) / 128) >= 128;
    std::vector<float> ref(buf.c_elems);
    CHECK(cudaMemset(buf.c, 0xff, buf.c_elems * sizeof(float)));
    if (large) launch<L8>(p, nullptr); else launch<M16>(p, nullptr);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(ref.data(), buf.c, ref.size() * sizeof(float), cudaMemcpyDeviceToHost));
    int64_t unwritten = 0;
    for (float v : ref) unwritten += std::isnan(v);
    if (unwritten) std::printf("| %s | production | | | | | %lld elements unwritten |\n", s.name, static_cast<long long>(unwritten));
    const int inner = s.m * s.n * s.k > (int64_t{1} << 32) ? 5 : 50;
    const double ref_us = large ? time_us<L8>(p, 15, inner) : time_us<M16>(p, 15, inner);
    candidate<L8>("128x128x8 8x8 (Large)", s, p, buf, ref, ref_us);
    candidate<L16>("128x128x16 8x8", s, p, buf, ref, ref_us);
    candidate<W16>("128x64x16 8x4", s, p, buf, ref, ref_us);
    candidate<T16>("64x128x16 4x8", s, p, buf, ref, ref_us);
    candidate<M16>("64x64x16 4x4 (Medium)", s, p, buf, ref, ref_us);
    candidate<M8x8>("64x64x16 8x8, 64 thr", s, p, buf, ref, ref_us);
    CHECK(cudaFree(buf.a));
    CHECK(cudaFree(buf.b));
    CHECK(cudaFree(buf.c));
  }
  return 0;
}
