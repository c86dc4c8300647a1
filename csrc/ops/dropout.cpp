#include "ops/dropout.h"

namespace fastnn {

void dropout_forward(const Tensor& x, Tensor& y, const DropoutParams& params, Activation act) {
  FASTNN_ON_DEVICE(x.device(), dropout_forward, x, y, params, act);
}
void dropout_backward(const Tensor& dy, const Tensor& y, Tensor& dx, const DropoutParams& params,
                      Activation act) {
  FASTNN_ON_DEVICE(dy.device(), dropout_backward, dy, y, dx, params, act);
}
void dropout_mask(Tensor& mask, const DropoutParams& params) {
  FASTNN_ON_DEVICE(mask.device(), dropout_mask, mask, params);
}

}  // namespace fastnn
