// Host side of the CUDA Linear layer: the forward is one GEMM with the bias and activation in its
// epilogue; the backward is one pass for dz and db, then two GEMMs (dweight, dx), as on the CPU.
#include <cstdint>

#include "core/cuda_launch.h"
#include "ops/gemm_kernels.cuh"
#include "ops/linear.h"
#include "ops/linear_kernels.cuh"

namespace fastnn {
namespace cuda {

void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    gemm_detail::launch_gemm(cpu::linear_forward_problem<T>(x, weight, bias, act, y));
  });
}

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = x.size(0), out = weight.size(0);
    T* db = dbias ? dbias->data<T>() : nullptr;

    // dz: dy itself for a plain linear layer; otherwise the one temporary of the backward pass.
    Tensor dz_buffer, partials;
    const T* dz = dy.data<T>();
    if (n == 0) {
      if (db && !accumulate && out > 0) cuda_memset_zero(db, sizeof(T) * out, x.device());
    } else if (out > 0 && (act != Activation::none || db)) {
      const reduce::ColumnGrid g = reduce::column_grid(n, out);
      T* dz_out = nullptr;
      if (act != Activation::none) {
        dz_buffer = Tensor::empty({n, out}, x.dtype(), x.device());
        dz_out = dz_buffer.data<T>();
        dz = dz_out;
      }
      double* part = nullptr;
      if (db && g.chunks > 1) {
        partials = Tensor::empty({g.chunks, out}, DType::float64, x.device());
        part = partials.data<double>();
      }
      cuda_rt::launch("linear_grad_columns", linear_detail::grad_columns_kernel<T>, g.grid(), g.block(), 0,
                      act != Activation::none ? y->data<T>() : nullptr, dy.data<T>(), dz_out, db, part,
                      n, out, g.rows_per_chunk, act, accumulate);
      if (part) {
        const unsigned blocks = static_cast<unsigned>((out + reduce::kReduceThreads - 1) / reduce::kReduceThreads);
        cuda_rt::launch("linear_bias_grad_finish", linear_detail::bias_grad_finish_kernel<T>, dim3(blocks),
                        dim3(reduce::kReduceThreads), 0, static_cast<const double*>(part), g.chunks, out, db,
                        accumulate);
      }
    }

    gemm_detail::launch_gemm(cpu::linear_dweight_problem<T>(dz, x, dweight, accumulate));

    if (dx) {  // dx (N, in) = dz @ weight
      gemm_detail::launch_gemm(cpu::linear_dx_problem<T>(dz, weight, *dx));
    }
  });
  if (update) param_update_step(*update, dweight);
}

}  // namespace cuda
}  // namespace fastnn
