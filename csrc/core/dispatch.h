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

[[noreturn]] inline void no_cuda_kernel(const char* op) {
  throw std::runtime_error(detail::concat(
      op, ": no CUDA kernel in this build (", cuda_compiled() ? "CUDA kernels are not yet written"
                                                              : "built without CUDA",
      "); move the tensors to the CPU"));
}

}  // namespace fastnn

#define FASTNN_ON_DEVICE(device, fn, ...)               \
  do {                                                  \
    if ((device).is_cuda()) ::fastnn::no_cuda_kernel(#fn); \
    ::fastnn::cpu::fn(__VA_ARGS__);                     \
  } while (0)
