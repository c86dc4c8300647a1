// The one include for CUDA code in fastnn: the CUDA runtime API under nvcc, or cuemu, the CPU
// emulation of CUDA (emu/cuda_emu.h), in the FASTNN_CUDA=EMULATE build, where the .cu files are
// compiled by g++ with FASTNN_CUDA_EMULATED defined. Only .cu files include it.
#pragma once
#if defined(FASTNN_CUDA_EMULATED)
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include <stdexcept>
#include <string>

namespace fastnn::cuda_rt {

[[noreturn]] inline void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line) {
  throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(err) + " (" +
                           cudaGetErrorName(err) + " at " + file + ":" + std::to_string(line) + ")");
}

}  // namespace fastnn::cuda_rt

// FASTNN_CUDA_CHECK(cudaMalloc(&p, n)): throws std::runtime_error (Python RuntimeError) naming the
// call and CUDA's description of the error.
#define FASTNN_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    const cudaError_t fastnn_cuda_err_ = (expr);                                         \
    if (fastnn_cuda_err_ != cudaSuccess)                                                 \
      ::fastnn::cuda_rt::throw_cuda_error(#expr, fastnn_cuda_err_, __FILE__, __LINE__);  \
  } while (0)
