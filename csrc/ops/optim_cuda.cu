// Host side of the CUDA optimizers: per-step scalars rounded to the element type once (as on the
// CPU), then one launch over the whole buffer.
#include <cstdint>

#include "core/cuda_launch.h"
#include "ops/optim.h"
#include "ops/optim_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

constexpr unsigned kThreads = optim_detail::kOptimThreads;

// Enough blocks to fill the GPU; beyond that each thread takes several elements (grid stride).
dim3 grid_for(int64_t n) { return dim3(cuda_rt::grid_for(n, kThreads)); }

template <class T>
T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}


}  // namespace

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::SgdFlags f{o.maximize, o.weight_decay != 0, o.momentum != 0, o.nesterov, o.first_step};
    StepScalars<SgdScalars<T>> scalars;
    if (!step_scalars(SgdScalars<T>::from(o), o.slot, scalars)) return;
    cuda_rt::launch("sgd_step", optim_detail::sgd_kernel<T>, grid_for(param.numel()), dim3(kThreads), 0,
                    param.data<T>(), grad.data<T>(), optional_data<T>(momentum_buffer), param.numel(),
                    scalars, f);
  });
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::AdamFlags f{o.maximize, o.weight_decay != 0, o.decoupled_weight_decay, o.amsgrad};
    StepScalars<AdamScalars<T>> scalars;
    if (!step_scalars(AdamScalars<T>::from(o), o.slot, scalars)) return;
    cuda_rt::launch("adam_step", optim_detail::adam_kernel<T>, grid_for(param.numel()), dim3(kThreads), 0,
                    param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                    optional_data<T>(max_exp_avg_sq), param.numel(), scalars, f);
  });
}

void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg, const RmspropOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::RmspropFlags f{o.maximize, o.weight_decay != 0, o.centered, o.momentum > 0};
    StepScalars<RmspropScalars<T>> scalars;
    if (!step_scalars(RmspropScalars<T>::from(o), o.slot, scalars)) return;
    cuda_rt::launch("rmsprop_step", optim_detail::rmsprop_kernel<T>, grid_for(param.numel()), dim3(kThreads), 0,
                    param.data<T>(), grad.data<T>(), square_avg.data<T>(), optional_data<T>(momentum_buffer),
                    optional_data<T>(grad_avg), param.numel(), scalars, f);
  });
}

void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::AdagradFlags f{o.maximize, o.weight_decay != 0};
    StepScalars<AdagradScalars<T>> scalars;
    if (!step_scalars(AdagradScalars<T>::from(o), o.slot, scalars)) return;
    cuda_rt::launch("adagrad_step", optim_detail::adagrad_kernel<T>, grid_for(param.numel()), dim3(kThreads), 0,
                    param.data<T>(), grad.data<T>(), state_sum.data<T>(), param.numel(),
                    scalars, f);
  });
}

}  // namespace cuda
}  // namespace fastnn
