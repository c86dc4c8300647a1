// Device dispatch. Every op has one public entry point that routes by device to a backend
// function of the same name and signature:
//
//   ops/activation.h         declares  cpu::activation_forward(...)  and  cuda::activation_forward(...)
//   ops/activation_cpu.cpp   defines   cpu::activation_forward
//   ops/activation_cuda.cu   defines   cuda::activation_forward      (the CUDA backend)
//
//   void activation_forward(...) { FASTNN_ON_DEVICE(x.device(), activation_forward, ...); }
//
// Callers (bindings, other ops) only ever call the public entry point. Backends return void and
// write into output tensors, so a GPU result never has to come back to the host to be returned.
#pragma once
#include <cstdint>
#include <cstddef>
#include <memory>

#include "core/device.h"
#include "core/error.h"

namespace fastnn {

struct Storage;

// The CUDA memory layer (core/cuda_device.cu; core/cuda_device_stub.cpp when CUDA is not built).
bool cuda_compiled();
int cuda_device_count();  // 0 when CUDA is not built, or when no driver or GPU is present
std::shared_ptr<Storage> cuda_allocate(size_t nbytes, Device device);
void cuda_memset_zero(void* data, size_t nbytes, Device device);
void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

// The caching allocator's counters (all zero without CUDA). in_use: bytes handed to live tensors
// (rounded to size classes); cached: freed blocks kept for reuse; malloc/free_calls: cudaMalloc and
// cudaFree made so far; cache_hits: allocations served from the cache.
struct CudaMemoryStats {
  int64_t in_use_bytes = 0, cached_bytes = 0, malloc_calls = 0, free_calls = 0, cache_hits = 0;
};
CudaMemoryStats cuda_memory_stats(Device device);
// Returns every cached block to the driver (cudaFree).
void cuda_empty_cache();
// Waits until all work queued on `device` has finished (refused while capturing a graph).
void cuda_synchronize(Device device);
// DLPack's stream contract (shared/design/dlpack.md §5). `stream` is a consumer's stream as DLPack
// spells it: 2 = the per-thread default stream, anything above 2 a cudaStream_t; 1 (the legacy
// default stream, fastnn's own) needs neither call. The first makes the consumer's stream wait for
// the work fastnn has queued so far (an event: the host never blocks); the second, called when an
// exported block is released, makes fastnn's stream wait for the consumer's work queued so far, so
// the allocator cannot hand the block to a kernel that overwrites it while the consumer still reads.
void cuda_consumer_waits_for_fastnn(Device device, uintptr_t stream);
void cuda_fastnn_waits_for_consumer(Device device, uintptr_t stream) noexcept;

[[noreturn]] inline void no_cuda_kernel(const char* op) {
  throw std::runtime_error(detail::concat(
      op, ": no CUDA kernel in this build (", cuda_compiled() ? "CUDA kernels are not yet written"
                                                              : "built without CUDA",
      "); move the tensors to the CPU"));
}

}  // namespace fastnn

// The one routing point. FASTNN_DEVICE_CALL is an expression with the backend's return type;
// FASTNN_ON_DEVICE the statement form used by the void entry points. In a build with CUDA (real or
// emulated) a CUDA tensor goes to ::fastnn::cuda::fn, which every op defines in its <op>_cuda.cu:
// a missing one is an undefined symbol, found when the module is built and imported.
#if defined(FASTNN_WITH_CUDA)
#define FASTNN_DEVICE_CALL(device, fn, ...) \
  ((device).is_cuda() ? ::fastnn::cuda::fn(__VA_ARGS__) : ::fastnn::cpu::fn(__VA_ARGS__))
#else
// A CUDA tensor cannot be created without CUDA; should one arrive anyway, say so clearly.
#define FASTNN_DEVICE_CALL(device, fn, ...)                                                   \
  ((device).is_cuda() ? (::fastnn::no_cuda_kernel(#fn), ::fastnn::cpu::fn(__VA_ARGS__)) \
                      : ::fastnn::cpu::fn(__VA_ARGS__))
#endif

#define FASTNN_ON_DEVICE(device, fn, ...)          \
  do {                                            \
    FASTNN_DEVICE_CALL(device, fn, __VA_ARGS__); \
  } while (0)
