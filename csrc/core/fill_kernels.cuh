// fill_ on the GPU: a grid-stride loop writing one value.
#pragma once
#include "core/cuda_launch.h"

namespace fastnn::cuda {

template <class T>
__global__ void fill_kernel(T* __restrict__ out, int64_t n, T value) {
  for (int64_t i = cuda_rt::global_thread_index(); i < n; i += cuda_rt::grid_stride()) out[i] = value;
}

}  // namespace fastnn::cuda
