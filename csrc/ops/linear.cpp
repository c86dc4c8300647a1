#include "ops/linear.h"

namespace fastnn {

void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y) {
  FASTNN_ON_DEVICE(x.device(), linear_forward, x, weight, bias, act, y);
}

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update) {
  if (!x.device().is_cuda()) {
    cpu::linear_backward(x, weight, dy, y, act, dx, dweight, dbias, accumulate, update);
    return;
  }
#if defined(FASTNN_WITH_CUDA)
  cuda::linear_backward(x, weight, dy, y, act, dx, dweight, dbias, accumulate);
#else
  no_cuda_kernel("linear_backward");
#endif
  // On a GPU the step is bound by launches, not by the optimizer's memory traffic: no fusion.
  if (update) param_update_step(*update, dweight);
}

}  // namespace fastnn
