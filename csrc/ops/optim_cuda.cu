// Host side of the CUDA optimizers: per-step scalars rounded to the element type once (as on the
// CPU), then one launch over the whole buffer.
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/cuda_launch.h"
#include "ops/optim.h"
#include "ops/optim_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

constexpr unsigned kThreads = optim_detail::kOptimThreads;

template <class T>
T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// 16-byte groups when every buffer the update touches allows them (flat buffers from the allocator
// do; a parameter viewed at an odd offset does not).
bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !cuda_rt::aligned16(p)) return false;
  return true;
}

template <class Body, class S>
void launch_update(const char* name, const Body& body, int64_t n, const S& value, const GraphSlot& slot,
                   std::initializer_list<const void*> buffers) {
  StepScalars<S> scalars;
  if (!step_scalars(value, slot, scalars)) return;
  using T = std::remove_pointer_t<decltype(body.param)>;
  if (all_aligned(buffers)) {
    const dim3 grid(cuda_rt::grid_for(n, kThreads, 16 / sizeof(T)));
    cuda_rt::launch(name, optim_detail::optim_kernel<Body, S, true>, grid, dim3(kThreads), 0, body, n, scalars);
  } else {
    const dim3 grid(cuda_rt::grid_for(n, kThreads));
    cuda_rt::launch(name, optim_detail::optim_kernel<Body, S, false>, grid, dim3(kThreads), 0, body, n, scalars);
  }
}

}  // namespace

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::SgdBody<T> body{param.data<T>(), optional_data<T>(momentum_buffer), grad.data<T>(), {},
                                        {o.maximize, o.weight_decay != 0, o.momentum != 0, o.nesterov, o.first_step}};
    launch_update("sgd_step", body, param.numel(), SgdScalars<T>::from(o), o.slot,
                  {body.param, body.momentum_buffer, body.grad});
  });
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::AdamBody<T> body{param.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                                         optional_data<T>(max_exp_avg_sq), grad.data<T>(), {},
                                         {o.maximize, o.weight_decay != 0, o.decoupled_weight_decay, o.amsgrad}};
    launch_update("adam_step", body, param.numel(), AdamScalars<T>::from(o), o.slot,
                  {body.param, body.exp_avg, body.exp_avg_sq, body.max_exp_avg_sq, body.grad});
  });
}

void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg, const RmspropOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::RmspropBody<T> body{param.data<T>(), square_avg.data<T>(), optional_data<T>(momentum_buffer),
                                            optional_data<T>(grad_avg), grad.data<T>(), {},
                                            {o.maximize, o.weight_decay != 0, o.centered, o.momentum > 0}};
    launch_update("rmsprop_step", body, param.numel(), RmspropScalars<T>::from(o), o.slot,
                  {body.param, body.square_avg, body.momentum_buffer, body.grad_avg, body.grad});
  });
}

void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const optim_detail::AdagradBody<T> body{param.data<T>(), state_sum.data<T>(), grad.data<T>(), {},
                                            {o.maximize, o.weight_decay != 0}};
    launch_update("adagrad_step", body, param.numel(), AdagradScalars<T>::from(o), o.slot,
                  {body.param, body.state_sum, body.grad});
  });
}

}  // namespace cuda
}  // namespace fastnn
