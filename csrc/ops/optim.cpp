#include "ops/optim.h"

#include <type_traits>
#include <variant>

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

void param_update_step(const ParamUpdate& u, const Tensor& grad) {
  std::visit([&](const auto& o) {
    using O = std::decay_t<decltype(o)>;
    if constexpr (std::is_same_v<O, SgdOptions>) sgd_step(u.param, grad, u.state[0], o);
    else if constexpr (std::is_same_v<O, AdamOptions>) adam_step(u.param, grad, u.state[0], u.state[1], u.state[2], o);
    else if constexpr (std::is_same_v<O, RmspropOptions>) rmsprop_step(u.param, grad, u.state[0], u.state[1], u.state[2], o);
    else adagrad_step(u.param, grad, u.state[0], o);
  }, u.options);
}

}  // namespace fastnn
