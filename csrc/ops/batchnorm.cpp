#include "ops/batchnorm.h"

namespace fastnn {

void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                       const BatchnormEpilogue& epilogue) {
  FASTNN_ON_DEVICE(x.device(), batchnorm_forward, x, weight, bias, running_mean, running_var,
                   training, momentum, eps, y, save_mean, save_invstd, epilogue);
}

void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate,
                        const Tensor& relu_output, double relu_scale) {
  FASTNN_ON_DEVICE(x.device(), batchnorm_backward, x, dy, weight, save_mean, save_invstd, training,
                   dx, dweight, dbias, accumulate, relu_output, relu_scale);
}

}  // namespace fastnn
