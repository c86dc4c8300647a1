#include "core/dispatch.h"
#include "core/fill_kernels.cuh"
#include "core/tensor.h"

namespace fastnn::cuda {

void fill(Tensor& dst, double value) {
  dispatch_floating(dst.dtype(), "fill_", [&](auto tag) {
    using T = decltype(tag);
    constexpr unsigned kThreads = 256;
    cuda_rt::launch("fill", fill_kernel<T>, dim3(cuda_rt::grid_for(dst.numel(), kThreads, 4)),
                    dim3(kThreads), 0, dst.data<T>(), dst.numel(), static_cast<T>(value));
  });
}

}  // namespace fastnn::cuda
