// Dropout's CUDA kernel (csrc/ops/dropout_kernels.cuh) on a real GPU, at every bit count an element
// draws, against a device-to-device copy of the same bytes: the fused relu + dropout forward and
// the mask kernel, float32 and float64, 8192 x 4096. Every output element is checked against the
// scalar definition (dropout_keep_element, ops/philox.h) after the output was poisoned, so a fast
// variant cannot pass with a wrong or unwritten element.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc [-DCANDIDATE] benchmarks/gpu/dropout_rows.cu -o dropout_rows && ./dropout_rows
//
// -DCANDIDATE also times four_per_thread (below) and checks that its output equals production's.
//
// First runs (H200, 2026-11-30, benchmarks/results/2026-11-30-h200-2a7e4a8/dropout_rows.md): at
// 2a7e4a8 a thread took its 8 elements as two float4 runs, so a warp's accesses strided by 32 bytes:
// the float32 forward took 118 us (54% of copy; 73 us at 539216d, whose threads took 4 contiguous
// elements), float64 315 us (40%; v[] in local memory), masks 96 us. Shifts for the run-time
// divisions alone changed nothing in float32. The warp layout: float32 84-85 us (75%), float64
// 163-166 us (77%), masks 55 us, at every bit count. The 4-a-thread candidate: float32 79-80 us,
// float64 185-188 us. The production layout with the bit count a template constant: 84-92 us
// float32, 146-171 us float64 (not kept: the draw's arithmetic is not what bounds it).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ops/dropout_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda;

#define CHECK(call)                                                                        \
  do {                                                                                     \
    cudaError_t err_ = (call);                                                             \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

constexpr int kRows = 8192, kCols = 4096, kReps = 25;
constexpr unsigned kThreads = 256;  // as dropout_cuda.cu launches it

template <class F>
float median_us(F&& launch) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch();
  CHECK(cudaGetLastError());
  std::vector<float> t;
  for (int r = 0; r < kReps; ++r) {
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.f);
  }
  CHECK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

// Candidate: one thread per 4 contiguous elements, each thread drawing the quad that serves them
// (at 16 bits two neighbours draw the same quad: twice production's Philox work), coalesced like
// production without its shuffles.
template <class T>
__global__ void four_per_thread(const T* in, T* out, int64_t n, DropoutKey key, uint32_t threshold, T scale) {
  const int log2_bits = dropout_log2_bits(threshold);
  for (int64_t first = 4 * cuda_rt::global_thread_index(); first < n; first += 4 * cuda_rt::grid_stride()) {
    uint32_t w[4];
    dropout_words(key.seed, key.offset, dropout_quad(static_cast<uint64_t>(first), log2_bits), w);
    const int e0 = dropout_field(static_cast<uint64_t>(first), log2_bits);
    T v[4] = {};
    const int count = n - first < 4 ? static_cast<int>(n - first) : 4;
    load_run(in + first, v, count, true);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      v[k] = dropout_apply(activation_apply(Activation::relu, v[k]), dropout_draw(w, e0 + k, log2_bits), threshold, scale);
    store_run(out + first, v, count, true);
  }
}

// the production launch shape (dropout_cuda.cu): a grid-stride loop, 8 blocks an SM
unsigned grid_for(int64_t n) { return cuda_rt::grid_for((n + kDropoutPerThread - 1) / kDropoutPerThread, kThreads); }

template <class T>
void rows(const char* dtype, double copy_us_per_byte) {
  const int64_t n = int64_t{kRows} * kCols;
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  std::vector<T> host(n);
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal;
  for (auto& v : host) v = static_cast<T>(normal(rng));
  T *x, *y;
  bool* mask;
  CHECK(cudaMalloc(&x, bytes));
  CHECK(cudaMalloc(&y, bytes));
  CHECK(cudaMalloc(&mask, n));
  CHECK(cudaMemcpy(x, host.data(), bytes, cudaMemcpyHostToDevice));
  std::vector<T> out(n);
  std::vector<unsigned char> mask_host(n);
  const DropoutKey key{0x1234567890ABCDEFull, 77};
  StepScalars<DropoutKey> scalars;
  scalars.value = key;
  for (double p : {0.5, 0.25, 0.375, 3.0 / 256, 0.1}) {
    const uint32_t threshold = dropout_threshold(p);
    const T scale = static_cast<T>(dropout_scale(p));
    const unsigned grid = grid_for(n);
    CHECK(cudaMemset(y, 0xFF, bytes));  // NaN poison
    CHECK(cudaMemset(mask, 0x7F, n));
    auto forward = [&] {
      dropout_kernel<DropoutKind::forward_relu, true, T><<<grid, kThreads>>>(x, y, nullptr, n, scalars, threshold, scale);
    };
    auto masks = [&] {
      dropout_kernel<DropoutKind::mask, false, float><<<grid, kThreads>>>(nullptr, nullptr, mask, n, scalars, threshold, 1.f);
    };
#if defined(CANDIDATE)
    auto candidate = [&] {
      four_per_thread<T><<<cuda_rt::grid_for((n + 3) / 4, kThreads), kThreads>>>(x, y, n, key, threshold, scale);
    };
    candidate();
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(out.data(), y, bytes, cudaMemcpyDeviceToHost));
    std::vector<T> cand_out = out;
    const float cand_us = median_us(candidate);
    CHECK(cudaMemset(y, 0xFF, bytes));
#else
    const float cand_us = 0;
#endif
    forward();
    masks();
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(out.data(), y, bytes, cudaMemcpyDeviceToHost));
#if defined(CANDIDATE)
    if (cand_out != out) std::printf("   candidate's output differs from production's\n");
#endif
    CHECK(cudaMemcpy(mask_host.data(), mask, n, cudaMemcpyDeviceToHost));
    // every element written (no NaN poison or stray mask byte left); each of the first 2^21 (one
    // grid-stride pass on an H200) and every 997th after equal to the scalar definition
    int64_t wrong = 0, kept = 0, checked = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(out[i]) || mask_host[i] > 1) ++wrong;
      if (i >= (int64_t{1} << 21) && i % 997 != 0) continue;
      const bool keep = dropout_keep_element(key.seed, key.offset, threshold, static_cast<uint64_t>(i));
      kept += keep;
      ++checked;
      const T relu = host[i] > T(0) ? host[i] : T(0);
      const T want = keep ? relu * scale : T(0);
      if (!(out[i] == want) || mask_host[i] != static_cast<unsigned char>(keep)) ++wrong;
    }
    const float fwd = median_us(forward), msk = median_us(masks);
    const double fwd_copy = 2.0 * bytes * copy_us_per_byte, msk_copy = (n + 0.0) * copy_us_per_byte;
    std::printf("| %s | %.4f | %d | %8.1f | %5.1f%% | %8.1f | %8.1f | %5.1f%% | %.4f | %s |\n", dtype, p,
                dropout_bits(threshold), fwd, 100.0 * fwd_copy / fwd, cand_us, msk, 100.0 * msk_copy / msk,
                1.0 - static_cast<double>(kept) / checked, wrong ? "WRONG" : "exact");
    if (wrong) std::printf("   %lld elements differ from dropout_keep_element\n", static_cast<long long>(wrong));
  }
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));
  CHECK(cudaFree(mask));
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  // the copy rate, read + write bytes, over a 1 GiB buffer
  const size_t copy_bytes = size_t{1} << 30;
  void *a, *b;
  CHECK(cudaMalloc(&a, copy_bytes));
  CHECK(cudaMalloc(&b, copy_bytes));
  CHECK(cudaMemset(a, 1, copy_bytes));
  const float copy_us = median_us([&] { CHECK(cudaMemcpyAsync(b, a, copy_bytes, cudaMemcpyDeviceToDevice)); });
  const double us_per_byte = copy_us / (2.0 * copy_bytes);
  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
  std::printf("dropout_rows on %s (%d SMs): D2D copy %.1f GB/s; %d x %d, median of %d event-timed launches\n\n",
              prop.name, prop.multiProcessorCount, 1e-3 / us_per_byte, kRows, kCols, kReps);
  std::printf("| dtype | p | bits | relu+dropout fwd us | of copy | 4-a-thread candidate us | mask us | of copy | dropped | check |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  rows<float>("float32", us_per_byte);
  rows<double>("float64", us_per_byte);
  return 0;
}
