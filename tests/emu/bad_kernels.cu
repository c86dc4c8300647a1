// Kernels with real bugs that nvcc compiles without a word, and what the emulator makes of them.
// `bad_kernels <case>` runs one case and prints "ERROR: <the emulator's report>" or
// "RESULT: <value>" (for bugs that show up as a wrong or schedule-dependent result). The expected
// reports, and the source lines they must name, are checked by tests/test_emu.py, which finds the
// lines through the `// LINE:<tag>` markers below.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/cuda_launch.h"
#include "emu_check.h"

using namespace fastnn;

// __syncthreads in both branches of an if: two different barriers.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 64) {
    __syncthreads();  // LINE:divergent_a
  } else {
    __syncthreads();  // LINE:divergent_b
  }
  out[threadIdx.x] = 1;
}

// The classic bounds check before a barrier: threads past n never arrive.
__global__ void early_return(const float* x, float* out, int n) {
  __shared__ float tile[128];
  const int i = threadIdx.x;
  if (i >= n) return;
  tile[i] = x[i];
  __syncthreads();  // LINE:early_return
  out[i] = tile[(i + 1) % n];
}

// Tree reduction in shared memory with the barrier inside the loop forgotten: a race that the
// forward and reverse schedules resolve differently.
template <bool kWithBarrier>
__global__ void tree_sum(const float* x, float* out) {
  __shared__ float s[256];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    if (kWithBarrier) __syncthreads();
  }
  if (threadIdx.x == 0) *out = s[0];
}

// Pre-Volta warp-synchronous code: no __syncwarp between the steps.
__global__ void warp_synchronous_sum(const float* x, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x];
  s[threadIdx.x + 32] = x[threadIdx.x + 32];
  __syncthreads();
  volatile float* v = s;
  for (int stride = 32; stride > 0; stride /= 2) v[threadIdx.x] += v[threadIdx.x + stride];
  if (threadIdx.x == 0) *out = s[0];
}

// A lane calls a shuffle whose mask leaves it out.
__global__ void lane_outside_mask(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000000fu, static_cast<int>(threadIdx.x), 0);  // LINE:outside_mask
}

// Half the warp skips a full-mask shuffle and goes straight to the barrier.
__global__ void half_warp_skips_shuffle(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v += __shfl_down_sync(0xffffffffu, v, 1);  // LINE:half_warp
  __syncthreads();  // LINE:half_warp_barrier
  out[threadIdx.x] = v;
}

// Lanes of one mask in different collectives.
__global__ void mixed_collectives(unsigned* out) {
  unsigned r;
  if (threadIdx.x % 2) r = __ballot_sync(0xffffffffu, 1);  // LINE:mixed_a
  else r = static_cast<unsigned>(__shfl_xor_sync(0xffffffffu, 1, 1));  // LINE:mixed_b
  out[threadIdx.x] = r;
}

// A full-mask warp sum with blockDim = 48: lanes 48..63 do not exist, and reading them gives NaN.
__global__ void block_sum_48(const float* x, float* out) {
  float v = x[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x == 32) *out = v;
}

// Reading dynamic shared memory that nobody wrote.
__global__ void uninitialised_smem(float* out) {
  float* s = cuda_rt::dynamic_shared<float>();
  if (threadIdx.x == 0) s[1] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) *out = s[0] + s[1];
}

__global__ void store_index(float* out) { out[threadIdx.x] = static_cast<float>(threadIdx.x); }

#if defined(CUEMU_EMULATED)
// A kernel that calls the host launcher (nvcc refuses this; g++ cannot tell).
__global__ void nested_launch(float* out) {
  if (threadIdx.x == 0) cuda_rt::launch("store_index", store_index, dim3(1), dim3(1), 0, out);
}
#endif

// 1 MiB of locals on a 256 KiB fiber stack: the guard page stops it.
__global__ void stack_overflow(float* out) {
  volatile char big[1 << 20];
  for (size_t i = 0; i < sizeof big; i += 4096) big[sizeof big - 1 - i] = 1;
  out[threadIdx.x] = big[7];
}

// One element past the end of a cudaMalloc'd buffer: AddressSanitizer's heap-buffer-overflow.
__global__ void off_by_one(const float* x, float* out, int n) {
  const int i = static_cast<int>(cuda_rt::global_thread_index());
  if (i <= n) out[i % n] = x[i];  // LINE:off_by_one
}

static float schedule_sum(bool barrier) {
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = static_cast<float>(i % 10);
  DeviceBuffer<float> dx(x), out(1);
  if (barrier)
    cuda_rt::launch("tree_sum", tree_sum<true>, dim3(1), dim3(256), 0, dx.ptr, out.ptr);
  else
    cuda_rt::launch("tree_sum", tree_sum<false>, dim3(1), dim3(256), 0, dx.ptr, out.ptr);
  return out.download()[0];
}

static void run(const std::string& name) {
  DeviceBuffer<float> out(1024);
  DeviceBuffer<unsigned> uout(1024);
  DeviceBuffer<int> iout(1024);
  std::vector<float> ones(1024, 1.0f);
  DeviceBuffer<float> x(ones);
  if (name == "divergent_barrier") {
    cuda_rt::launch("divergent_barrier", divergent_barrier, dim3(2), dim3(128), 0, out.ptr);
  } else if (name == "early_return") {
    cuda_rt::launch("early_return", early_return, dim3(1), dim3(128), 0, x.ptr, out.ptr, 100);
#if defined(CUEMU_EMULATED)
  } else if (name == "early_return_allowed") {
    cuemu::config().allow_exited_at_barrier = true;
    cuda_rt::launch("early_return", early_return, dim3(1), dim3(128), 0, x.ptr, out.ptr, 100);
    std::printf("RESULT: %g\n", out.download()[99]);
#endif
  } else if (name == "missing_barrier") {
    std::printf("RESULT: %g\n", schedule_sum(false));
  } else if (name == "with_barrier") {
    std::printf("RESULT: %g\n", schedule_sum(true));
  } else if (name == "warp_synchronous") {
    std::vector<float> v(64);
    for (int i = 0; i < 64; ++i) v[i] = static_cast<float>(i);
    DeviceBuffer<float> dv(v);
    cuda_rt::launch("warp_synchronous_sum", warp_synchronous_sum, dim3(1), dim3(32), 0, dv.ptr, out.ptr);
    std::printf("RESULT: %g\n", out.download()[0]);
  } else if (name == "lane_outside_mask") {
    cuda_rt::launch("lane_outside_mask", lane_outside_mask, dim3(1), dim3(32), 0, iout.ptr);
  } else if (name == "half_warp_skips_shuffle") {
    cuda_rt::launch("half_warp_skips_shuffle", half_warp_skips_shuffle, dim3(1), dim3(64), 0, out.ptr);
  } else if (name == "mixed_collectives") {
    cuda_rt::launch("mixed_collectives", mixed_collectives, dim3(1), dim3(32), 0, uout.ptr);
  } else if (name == "block_dim_48") {
    cuda_rt::launch("block_sum_48", block_sum_48, dim3(1), dim3(48), 0, x.ptr, out.ptr);
    std::printf("RESULT: %g\n", out.download()[0]);
  } else if (name == "uninitialised_smem") {
    cuda_rt::launch("uninitialised_smem", uninitialised_smem, dim3(1), dim3(32), 2 * sizeof(float), out.ptr);
    std::printf("RESULT: %g\n", out.download()[0]);
  } else if (name == "smem_over_48k") {
    cuda_rt::launch("uninitialised_smem", uninitialised_smem, dim3(1), dim3(32), 48 * 1024 + 4, out.ptr);
  } else if (name == "block_2048") {
    cuda_rt::launch("store_index", store_index, dim3(1), dim3(2048), 0, out.ptr);
  } else if (name == "grid_y_too_large") {
    cuda_rt::launch("store_index", store_index, dim3(1, 65536), dim3(32), 0, out.ptr);
#if defined(CUEMU_EMULATED)
  } else if (name == "nested_launch") {
    cuda_rt::launch("nested_launch", nested_launch, dim3(1), dim3(32), 0, out.ptr);
#endif
  } else if (name == "stack_overflow") {
    cuda_rt::launch("stack_overflow", stack_overflow, dim3(1), dim3(32), 0, out.ptr);
  } else if (name == "off_by_one") {
    DeviceBuffer<float> small(100);
    cuda_rt::launch("off_by_one", off_by_one, dim3(4), dim3(32), 0, small.ptr, out.ptr, 100);
  } else {
    std::printf("unknown case %s\n", name.c_str());
    std::exit(2);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::printf("usage: bad_kernels <case>\n");
    return 2;
  }
  try {
    run(argv[1]);
  } catch (const std::exception& e) {
    std::printf("ERROR: %s\n", e.what());
    return 0;
  }
  std::printf("NO ERROR\n");
  return 0;
}
