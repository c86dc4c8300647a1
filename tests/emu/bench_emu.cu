// Emulator cost, for comparison with shared/design/cuda-emulation.md §3 (not run by CI):
//   g++ -std=c++17 -O2 -x c++ -DFASTNN_CUDA_EMULATED -Icsrc -Itests/emu tests/emu/bench_emu.cu -o /tmp/bench_emu
// Prints min / median of 5 runs in ms, and per-thread costs of the sync points.
#include <algorithm>
#include <chrono>
#include <functional>

#include "core/cuda_launch.h"
#include "emu_check.h"

using namespace fastnn;

constexpr int kTile = 32;
__global__ void sgemm_tiled(int m, int n, int k, const float* a, const float* b, float* c) {
  __shared__ float as[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  const int row = blockIdx.y * kTile + threadIdx.y, col = blockIdx.x * kTile + threadIdx.x;
  float acc = 0;
  for (int k0 = 0; k0 < k; k0 += kTile) {
    as[threadIdx.y][threadIdx.x] = row < m && k0 + static_cast<int>(threadIdx.x) < k ? a[row * k + k0 + threadIdx.x] : 0.f;
    bs[threadIdx.y][threadIdx.x] = k0 + static_cast<int>(threadIdx.y) < k && col < n ? b[(k0 + threadIdx.y) * n + col] : 0.f;
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) acc += as[threadIdx.y][kk] * bs[kk][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = acc;
}

__global__ void block_sum(const float* x, int64_t n, float* out) {
  __shared__ float warp_sums[32];
  float v = 0;
  for (int64_t i = cuda_rt::global_thread_index(); i < n; i += cuda_rt::grid_stride()) v += x[i];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x == 0) atomicAdd(out, v);
  }
}

__global__ void barriers(int rounds) {
  for (int r = 0; r < rounds; ++r) __syncthreads();
}
__global__ void shuffles(int rounds, float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int r = 0; r < rounds; ++r) v += __shfl_xor_sync(0xffffffffu, v, 1);
  if (v == -1.0f) *out = v;
}
__global__ void empty_kernel() {}

static void time_it(const char* what, const std::function<void()>& f, double per = 0, const char* unit = "") {
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%-52s %8.2f / %8.2f ms", what, ms[0], ms[2]);
  if (per > 0) std::printf("   %6.1f ns per %s", ms[0] * 1e6 / per, unit);
  std::printf("\n");
}

int main() {
  std::vector<float> a(128 * 256, 1.0f), b(256 * 256, 1.0f), x(1 << 20, 1.0f);
  DeviceBuffer<float> da(a), db(b), dc(128 * 256), dx(x), out(1);
  time_it("SGEMM 128x256x256 (32 blocks x 1024 thr, 16 barriers)", [&] {
    cuda_rt::launch("sgemm", sgemm_tiled, dim3(256 / kTile, 128 / kTile), dim3(kTile, kTile), 0, 128, 256, 256,
                    da.ptr, db.ptr, dc.ptr);
  });
  time_it("block_sum 1M floats, 256 x 256, grid-stride", [&] {
    cuda_rt::launch("block_sum", block_sum, dim3(256), dim3(256), 0, dx.ptr, int64_t{1} << 20, out.ptr);
  });
  time_it("block_sum 1M floats, 4096 x 256 (1 elem/thread)", [&] {
    cuda_rt::launch("block_sum", block_sum, dim3(4096), dim3(256), 0, dx.ptr, int64_t{1} << 20, out.ptr);
  });
  const int rounds = 100, threads = 64 * 256;
  time_it("100 __syncthreads, 64 x 256 threads", [&] {
    cuda_rt::launch("barriers", barriers, dim3(64), dim3(256), 0, rounds);
  }, double(rounds) * threads, "thread and barrier");
  time_it("100 __shfl_xor_sync, 64 x 256 threads", [&] {
    cuda_rt::launch("shuffles", shuffles, dim3(64), dim3(256), 0, rounds, out.ptr);
  }, double(rounds) * threads, "lane and shuffle");
  time_it("empty kernel, 1024 x 256 threads", [&] {
    cuda_rt::launch("empty", empty_kernel, dim3(1024), dim3(256), 0);
  }, 1024.0 * 256, "thread");
}
