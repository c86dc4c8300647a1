#include "ops/linear.h"

namespace fastnn {

void linear_forward(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation act,
                    Tensor& y) {
  FASTNN_ON_DEVICE(x.device(), linear_forward, x, weight, bias, act, y);
}

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, const Tensor* y,
                     Activation act, Tensor* dx, Tensor& dweight, Tensor* dbias, bool accumulate,
                     const ParamUpdate* update) {
  FASTNN_ON_DEVICE(x.device(), linear_backward, x, weight, dy, y, act, dx, dweight, dbias, accumulate, update);
}

}  // namespace fastnn
