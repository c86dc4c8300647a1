#include "ops/optim.h"

namespace fastnn {

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& options) {
  FASTNN_ON_DEVICE(param.device(), sgd_step, param, grad, momentum_buffer, options);
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& options) {
  FASTNN_ON_DEVICE(param.device(), adam_step, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
                   options);
}

void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg,
                  const RmspropOptions& options) {
  FASTNN_ON_DEVICE(param.device(), rmsprop_step, param, grad, square_avg, momentum_buffer,
                   grad_avg, options);
}

void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& options) {
  FASTNN_ON_DEVICE(param.device(), adagrad_step, param, grad, state_sum, options);
}

}  // namespace fastnn
