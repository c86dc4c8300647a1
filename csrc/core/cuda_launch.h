// Kernel launches and the device-side helpers every fastnn kernel uses. The conventions that let one
// .cu file run on a GPU (nvcc) and on the CPU emulation (g++, FASTNN_CUDA=EMULATE), from
// shared/design/cuda-emulation.md §6:
//   - kernels live in ops/<op>_kernels.cuh, included only by ops/<op>_cuda.cu;
//   - launch through cuda_rt::launch, never <<< >>>; dynamic shared memory through
//     cuda_rt::dynamic_shared<T>(), never `extern __shared__`;
//   - plain `__shared__` declarations (no `static`, no initialiser);
//   - every __syncthreads() reached by every thread of the block, at the same line (guard the
//     work, never `return` early before a barrier);
//   - *_sync warp intrinsics with masks naming only lanes that exist and take part;
//   - no inline PTX / wmma / cp.async outside `#if !defined(FASTNN_CUDA_EMULATED)` fast paths that
//     have a portable fallback.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/cuda_runtime.h"

#if !defined(__CUDACC__) && !defined(FASTNN_CUDA_EMULATED)
#error "core/cuda_launch.h is for .cu files (nvcc, or g++ in the FASTNN_CUDA=EMULATE build)"
#endif

namespace fastnn::cuda_rt {

// The stream every fastnn kernel and copy runs on: the legacy default stream, so work is ordered
// without events and the caching allocator may reuse a block as soon as it is freed; while this
// thread captures a graph, the capture's stream (core/cuda_graph.cu).
namespace detail {
inline thread_local cudaStream_t tl_current_stream = nullptr;
}
inline cudaStream_t current_stream() { return detail::tl_current_stream; }

// CUDA_LAUNCH_BLOCKING=1 (CUDA's own switch) also makes launch() synchronise and check after each
// kernel, so an error in the kernel's execution (an illegal address) names the kernel that caused
// it rather than the next call that happens to notice.
inline bool launch_blocking() {
  static const bool blocking = [] {
    const char* v = std::getenv("CUDA_LAUNCH_BLOCKING");
    return v && *v && *v != '0';
  }();
  return blocking;
}

// FASTNN_LAUNCH_LOG=1 prints every launch (kernel name, grid, block, shared bytes) to stderr: which
// kernels a step runs, in order, on a GPU or the emulator (a captured graph's num_nodes counts them).
inline bool launch_log() {
  static const bool on = [] {
    const char* v = std::getenv("FASTNN_LAUNCH_LOG");
    return v && *v && *v != '0';
  }();
  return on;
}

[[noreturn]] inline void throw_launch_error(const char* name, cudaError_t err) {
  throw std::runtime_error(std::string("CUDA kernel '") + name + "' failed: " + cudaGetErrorString(err) +
                           " (" + cudaGetErrorName(err) + ")");
}

// Runs kernel<<<grid, block, smem_bytes, current_stream()>>>(args...) and checks the launch; any
// error is a std::runtime_error (Python RuntimeError) naming `name`. An empty grid (a dimension of
// 0, from an empty tensor) launches nothing. Under emulation the grid has run when this returns,
// and a kernel bug the emulator detects (deadlock, divergent barrier, bad warp mask) throws
// cuemu::error naming the kernel, block and source line.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (launch_log())
    std::fprintf(stderr, "fastnn launch %s grid (%u, %u, %u) block (%u, %u, %u) shared %zu\n", name, grid.x, grid.y,
                 grid.z, block.x, block.y, block.z, smem_bytes);
#if defined(FASTNN_CUDA_EMULATED)
  cuemu::launch_named_on(current_stream(), name, kernel, grid, block, smem_bytes, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, smem_bytes, current_stream()>>>(std::forward<Args>(args)...);
#endif
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && launch_blocking() && !current_stream()) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) throw_launch_error(name, err);
}

// Allows `kernel` more than 48 KiB of dynamic shared memory (needed before such a launch, as on a GPU).
template <class... Params>
void allow_dynamic_shared(void (*kernel)(Params...), size_t bytes) {
  FASTNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

// Streaming multiprocessors of the current device (cached per device; at most 64 devices).
inline int multiprocessor_count() {
  static int cached[64] = {};
  int device = 0;
  FASTNN_CUDA_CHECK(cudaGetDevice(&device));
  int& n = cached[device & 63];
  if (!n) FASTNN_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

// Blocks of `threads` threads for a grid-stride loop over n items, `per_thread` items each per
// pass: enough to fill the device (a few blocks per SM), never more than the items need; 0 when
// n == 0 (launch() then does nothing).
inline unsigned grid_for(int64_t n, unsigned threads, int64_t per_thread = 1) {
  if (n <= 0) return 0;
  const int64_t per_block = static_cast<int64_t>(threads) * per_thread;
  const int64_t needed = (n + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(multiprocessor_count()) * 8;
  return static_cast<unsigned>(needed < cap ? needed : cap);
}

// The block's dynamic shared memory (the launch's smem_bytes), 16-byte aligned. For several
// arrays, carve them out of this one pointer. Under emulation it starts as NaN in every block.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
#if defined(FASTNN_CUDA_EMULATED)
  return cuemu::dynamic_shared<T>();
#else
  extern __shared__ __align__(16) unsigned char fastnn_dynamic_smem[];
  return reinterpret_cast<T*>(fastnn_dynamic_smem);
#endif
}

// Index of this thread in a 1-D grid, and the stride of a grid-stride loop, in 64 bits.
__device__ __forceinline__ int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace fastnn::cuda_rt
