#include <cstdint>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "bindings/graph_slot.h"
#include "ops/optim.h"

#include <iterator>
#include <string>
#include <variant>

namespace fastnn::bind {

namespace {

// The parameter being updated: floating and writable.
Tensor param_arg(py::handle obj) {
  Tensor param = to_tensor(obj, "param");
  check_floating(param, "param");
  check_writable(param, "param");
  return param;
}

// A gradient or state tensor: param's dtype, device and shape; writable unless it is the gradient.
Tensor like_param(py::handle obj, const Tensor& param, const char* arg, bool writable = true) {
  Tensor t = to_tensor(obj, arg);
  check_like(t, param, arg, "param");
  check_shape(t, param.shape(), arg);
  if (writable) check_writable(t, arg);
  return t;
}

// An optional state tensor: an undefined Tensor when None; `needed` says whether the options use it.
Tensor optional_like_param(py::handle obj, const Tensor& param, const char* arg, bool needed,
                           const char* needed_when) {
  if (obj.is_none()) {
    FASTNN_CHECK(!needed, ValueError, arg, ": required when ", needed_when, ", got None");
    return Tensor();
  }
  return like_param(obj, param, arg);
}

struct Named {
  const Tensor* tensor;
  const char* name;
};

// The kernels read and write each element of every tensor once, in one pass; a tensor that
// shares memory with another would see values already updated.
void check_disjoint(std::initializer_list<Named> tensors) {
  for (auto a = tensors.begin(); a != tensors.end(); ++a) {
    if (!a->tensor->defined() || a->tensor->nbytes() == 0) continue;
    const auto a_begin = reinterpret_cast<uintptr_t>(a->tensor->raw_data());
    const auto a_end = a_begin + a->tensor->nbytes();
    for (auto b = tensors.begin(); b != a; ++b) {
      if (!b->tensor->defined() || b->tensor->nbytes() == 0) continue;
      const auto b_begin = reinterpret_cast<uintptr_t>(b->tensor->raw_data());
      const auto b_end = b_begin + b->tensor->nbytes();
      FASTNN_CHECK(a_end <= b_begin || b_end <= a_begin, ValueError, a->name,
                   ": shares memory with ", b->name, "; every tensor needs its own memory");
    }
  }
}

// Each rule's tensors and options, checked, as a ParamUpdate: the *_step bindings add the gradient,
// ParamUpdate's constructors leave it to the kernel that computes it. The names, in the order of
// ParamUpdate::options' alternatives: the rule's, and its state tensors' as the *_step calls them.
struct RuleNames {
  const char* rule;
  const char* state[3];
};
constexpr RuleNames kRuleNames[] = {
    {"sgd", {"momentum_buffer", "", ""}},
    {"adam", {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}},
    {"rmsprop", {"square_avg", "momentum_buffer", "grad_avg"}},
    {"adagrad", {"state_sum", "", ""}},
};
static_assert(std::size(kRuleNames) == std::variant_size_v<decltype(ParamUpdate::options)>);

const RuleNames& names_of(const ParamUpdate& u) { return kRuleNames[u.options.index()]; }

void check_update_disjoint(const ParamUpdate& u, const Tensor* grad) {
  const RuleNames& names = names_of(u);
  const Tensor none;
  check_disjoint({{&u.param, "param"}, {grad ? grad : &none, "grad"}, {&u.state[0], names.state[0]},
                  {&u.state[1], names.state[1]}, {&u.state[2], names.state[2]}});
}

ParamUpdate sgd_arguments(py::handle param, py::handle momentum_buffer, double lr, double momentum,
                          double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step) {
  ParamUpdate u;
  u.param = param_arg(param);
  u.state[0] = optional_like_param(momentum_buffer, u.param, "momentum_buffer", momentum != 0, "momentum != 0");
  SgdOptions o;
  o.lr = lr, o.momentum = momentum, o.dampening = dampening, o.weight_decay = weight_decay;
  o.nesterov = nesterov, o.maximize = maximize, o.first_step = first_step;
  u.options = o;
  return u;
}

ParamUpdate adam_arguments(py::handle param, py::handle exp_avg, py::handle exp_avg_sq, py::handle max_exp_avg_sq,
                           int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
                           bool decoupled_weight_decay, bool amsgrad, bool maximize) {
  FASTNN_CHECK(step >= 1, ValueError, "step: expected the step number counting from 1, got ", step);
  ParamUpdate u;
  u.param = param_arg(param);
  u.state[0] = like_param(exp_avg, u.param, "exp_avg");
  u.state[1] = like_param(exp_avg_sq, u.param, "exp_avg_sq");
  u.state[2] = optional_like_param(max_exp_avg_sq, u.param, "max_exp_avg_sq", amsgrad, "amsgrad=True");
  AdamOptions o;
  o.step = step, o.lr = lr, o.beta1 = beta1, o.beta2 = beta2, o.eps = eps;
  o.weight_decay = weight_decay, o.decoupled_weight_decay = decoupled_weight_decay;
  o.amsgrad = amsgrad, o.maximize = maximize;
  u.options = o;
  return u;
}

ParamUpdate rmsprop_arguments(py::handle param, py::handle square_avg, py::handle momentum_buffer,
                              py::handle grad_avg, double lr, double alpha, double eps, double weight_decay,
                              double momentum, bool centered, bool maximize) {
  ParamUpdate u;
  u.param = param_arg(param);
  u.state[0] = like_param(square_avg, u.param, "square_avg");
  u.state[1] = optional_like_param(momentum_buffer, u.param, "momentum_buffer", momentum > 0, "momentum > 0");
  u.state[2] = optional_like_param(grad_avg, u.param, "grad_avg", centered, "centered=True");
  RmspropOptions o;
  o.lr = lr, o.alpha = alpha, o.eps = eps, o.weight_decay = weight_decay;
  o.momentum = momentum, o.centered = centered, o.maximize = maximize;
  u.options = o;
  return u;
}

ParamUpdate adagrad_arguments(py::handle param, py::handle state_sum, int64_t step, double lr, double lr_decay,
                              double weight_decay, double eps, bool maximize) {
  FASTNN_CHECK(step >= 1, ValueError, "step: expected the step number counting from 1, got ", step);
  ParamUpdate u;
  u.param = param_arg(param);
  u.state[0] = like_param(state_sum, u.param, "state_sum");
  AdagradOptions o;
  o.step = step, o.lr = lr, o.lr_decay = lr_decay, o.weight_decay = weight_decay;
  o.eps = eps, o.maximize = maximize;
  u.options = o;
  return u;
}

// A *_step call: the update with `grad`, its graph slot set, run without the GIL.
void step_with(ParamUpdate& u, py::handle grad_, py::handle slot_) {
  Tensor grad = like_param(grad_, u.param, "grad", false);
  check_update_disjoint(u, &grad);
  const GraphSlot slot = to_graph_slot(slot_, u.param, "param");
  std::visit([&](auto& options) { options.slot = slot; }, u.options);
  py::gil_scoped_release no_gil;
  param_update_step(u, grad);
}

// A ParamUpdate for linear_backward(update=): the same checks, no gradient.
ParamUpdate checked(ParamUpdate u) {
  check_update_disjoint(u, nullptr);
  return u;
}

}  // namespace

void bind_optim(py::module_& m) {
  py::class_<ParamUpdate>(m, "ParamUpdate", R"doc(One optimizer step of a weight, taken inside
linear_backward(..., update=) as soon as the weight gradient is computed: on the CPU the step runs
on each block of the gradient as the GEMM finishes it, while the block is still in cache. Made by
ParamUpdate.sgd / .adam / .rmsprop / .adagrad, whose arguments are those of sgd_step / adam_step /
rmsprop_step / adagrad_step without the gradient; the result equals theirs bit for bit.)doc")
      .def_static("sgd", [](py::handle param, py::handle momentum_buffer, double lr, double momentum,
                            double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step) {
             return checked(sgd_arguments(param, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov,
                                          maximize, first_step));
           },
           py::arg("param"), py::arg("momentum_buffer") = py::none(), py::kw_only(), py::arg("lr"),
           py::arg("momentum") = 0.0, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
           py::arg("nesterov") = false, py::arg("maximize") = false, py::arg("first_step") = false)
      .def_static("adam", [](py::handle param, py::handle exp_avg, py::handle exp_avg_sq, py::handle max_exp_avg_sq,
                             int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
                             bool decoupled_weight_decay, bool amsgrad, bool maximize) {
             return checked(adam_arguments(param, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                                           weight_decay, decoupled_weight_decay, amsgrad, maximize));
           },
           py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("max_exp_avg_sq") = py::none(),
           py::kw_only(), py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay") = 0.0, py::arg("decoupled_weight_decay") = false, py::arg("amsgrad") = false,
           py::arg("maximize") = false)
      .def_static("rmsprop", [](py::handle param, py::handle square_avg, py::handle momentum_buffer,
                                py::handle grad_avg, double lr, double alpha, double eps, double weight_decay,
                                double momentum, bool centered, bool maximize) {
             return checked(rmsprop_arguments(param, square_avg, momentum_buffer, grad_avg, lr, alpha, eps,
                                              weight_decay, momentum, centered, maximize));
           },
           py::arg("param"), py::arg("square_avg"), py::arg("momentum_buffer") = py::none(),
           py::arg("grad_avg") = py::none(), py::kw_only(), py::arg("lr"), py::arg("alpha"), py::arg("eps"),
           py::arg("weight_decay") = 0.0, py::arg("momentum") = 0.0, py::arg("centered") = false,
           py::arg("maximize") = false)
      .def_static("adagrad", [](py::handle param, py::handle state_sum, int64_t step, double lr, double lr_decay,
                                double weight_decay, double eps, bool maximize) {
             return checked(adagrad_arguments(param, state_sum, step, lr, lr_decay, weight_decay, eps, maximize));
           },
           py::arg("param"), py::arg("state_sum"), py::kw_only(), py::arg("step"), py::arg("lr"),
           py::arg("lr_decay") = 0.0, py::arg("weight_decay") = 0.0, py::arg("eps") = 1e-10,
           py::arg("maximize") = false)
      .def_property_readonly("rule", [](const ParamUpdate& u) { return std::string(names_of(u).rule); });

  m.def("sgd_step", [](py::handle param, py::handle grad, py::handle momentum_buffer, double lr, double momentum,
                       double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,
                       py::handle slot) {
          ParamUpdate u = sgd_arguments(param, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov,
                                        maximize, first_step);
          step_with(u, grad, slot);
        },
        py::arg("param"), py::arg("grad"), py::arg("momentum_buffer") = py::none(), py::kw_only(),
        py::arg("lr"), py::arg("momentum") = 0.0, py::arg("dampening") = 0.0,
        py::arg("weight_decay") = 0.0, py::arg("nesterov") = false, py::arg("maximize") = false,
        py::arg("first_step") = false, py::arg("slot") = py::none(),
        R"doc(One SGD step, in place, as torch.optim.SGD computes it for one tensor.

g = -grad if maximize; g += weight_decay * param; with momentum != 0: momentum_buffer = g when
first_step, else momentum * momentum_buffer + (1 - dampening) * g, and g = g + momentum *
momentum_buffer (nesterov) or momentum_buffer; param -= lr * g. momentum_buffer is required when
momentum != 0. All tensors: param's shape, dtype and device, no two sharing memory.)doc");

  m.def("adam_step", [](py::handle param, py::handle grad, py::handle exp_avg, py::handle exp_avg_sq,
                        py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2, double eps,
                        double weight_decay, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                        py::handle slot) {
          ParamUpdate u = adam_arguments(param, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                                         weight_decay, decoupled_weight_decay, amsgrad, maximize);
          step_with(u, grad, slot);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("max_exp_avg_sq") = py::none(), py::kw_only(), py::arg("step"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay") = 0.0,
        py::arg("decoupled_weight_decay") = false, py::arg("amsgrad") = false,
        py::arg("maximize") = false, py::arg("slot") = py::none(),
        R"doc(One Adam (or AdamW) step, in place, as torch.optim.Adam computes it for one tensor.

`step` is this step's number counting from 1 (the bias corrections use it). weight_decay is added
to the gradient as L2, or with decoupled_weight_decay=True (AdamW) multiplies param by
1 - lr * weight_decay first. max_exp_avg_sq is required with amsgrad=True. All tensors: param's
shape, dtype and device, no two sharing memory.)doc");

  m.def("rmsprop_step", [](py::handle param, py::handle grad, py::handle square_avg, py::handle momentum_buffer,
                           py::handle grad_avg, double lr, double alpha, double eps, double weight_decay,
                           double momentum, bool centered, bool maximize, py::handle slot) {
          ParamUpdate u = rmsprop_arguments(param, square_avg, momentum_buffer, grad_avg, lr, alpha, eps,
                                            weight_decay, momentum, centered, maximize);
          step_with(u, grad, slot);
        },
        py::arg("param"), py::arg("grad"), py::arg("square_avg"),
        py::arg("momentum_buffer") = py::none(), py::arg("grad_avg") = py::none(), py::kw_only(),
        py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay") = 0.0,
        py::arg("momentum") = 0.0, py::arg("centered") = false, py::arg("maximize") = false,
        py::arg("slot") = py::none(),
        R"doc(One RMSprop step, in place, as torch.optim.RMSprop computes it for one tensor.

momentum_buffer is required when momentum > 0, grad_avg when centered=True. All tensors: param's
shape, dtype and device, no two sharing memory.)doc");

  m.def("adagrad_step", [](py::handle param, py::handle grad, py::handle state_sum, int64_t step, double lr,
                           double lr_decay, double weight_decay, double eps, bool maximize, py::handle slot) {
          ParamUpdate u = adagrad_arguments(param, state_sum, step, lr, lr_decay, weight_decay, eps, maximize);
          step_with(u, grad, slot);
        },
        py::arg("param"), py::arg("grad"), py::arg("state_sum"), py::kw_only(), py::arg("step"),
        py::arg("lr"), py::arg("lr_decay") = 0.0, py::arg("weight_decay") = 0.0,
        py::arg("eps") = 1e-10, py::arg("maximize") = false, py::arg("slot") = py::none(),
        R"doc(One Adagrad step, in place, as torch.optim.Adagrad computes it for one dense tensor.

`step` counts from 1; the learning rate is lr / (1 + (step - 1) * lr_decay). All tensors: param's
shape, dtype and device, no two sharing memory.)doc");
}

}  // namespace fastnn::bind
