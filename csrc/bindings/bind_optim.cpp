#include <cstdint>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "bindings/graph_slot.h"
#include "ops/optim.h"

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

// Adam's tensors and options, checked; the gradient is the caller's.
AdamUpdate adam_arguments(py::handle param_, py::handle exp_avg_, py::handle exp_avg_sq_,
                          py::handle max_exp_avg_sq_, int64_t step, double lr, double beta1, double beta2,
                          double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad,
                          bool maximize) {
  FASTNN_CHECK(step >= 1, ValueError, "step: expected the step number counting from 1, got ", step);
  AdamUpdate u;
  u.param = param_arg(param_);
  u.exp_avg = like_param(exp_avg_, u.param, "exp_avg");
  u.exp_avg_sq = like_param(exp_avg_sq_, u.param, "exp_avg_sq");
  u.max_exp_avg_sq = optional_like_param(max_exp_avg_sq_, u.param, "max_exp_avg_sq", amsgrad, "amsgrad=True");
  AdamOptions& o = u.options;
  o.step = step, o.lr = lr, o.beta1 = beta1, o.beta2 = beta2, o.eps = eps;
  o.weight_decay = weight_decay, o.decoupled_weight_decay = decoupled_weight_decay;
  o.amsgrad = amsgrad, o.maximize = maximize;
  return u;
}

}  // namespace

void bind_optim(py::module_& m) {
  py::class_<AdamUpdate>(m, "AdamUpdate", R"doc(One Adam (or AdamW) step of a weight, taken inside
linear_backward(..., update=) as soon as the weight gradient is computed: on the CPU the update
runs on each block of the gradient as the GEMM finishes it, while the block is still in cache.
The arguments are adam_step's without the gradient; the result equals adam_step's bit for bit.)doc")
      .def(py::init([](py::handle param, py::handle exp_avg, py::handle exp_avg_sq,
                       py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
                       double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad,
                       bool maximize) {
             AdamUpdate u = adam_arguments(param, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
                                           beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
                                           maximize);
             check_disjoint({{&u.param, "param"}, {&u.exp_avg, "exp_avg"}, {&u.exp_avg_sq, "exp_avg_sq"},
                             {&u.max_exp_avg_sq, "max_exp_avg_sq"}});
             return u;
           }),
           py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
           py::arg("max_exp_avg_sq") = py::none(), py::kw_only(), py::arg("step"), py::arg("lr"),
           py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay") = 0.0,
           py::arg("decoupled_weight_decay") = false, py::arg("amsgrad") = false,
           py::arg("maximize") = false)
      .def_property_readonly("step", [](const AdamUpdate& u) { return u.options.step; });

  m.def("sgd_step", [](py::handle param_, py::handle grad_, py::handle momentum_buffer_, double lr,
                       double momentum, double dampening, double weight_decay, bool nesterov,
                       bool maximize, bool first_step, py::handle slot) {
          Tensor param = param_arg(param_);
          Tensor grad = like_param(grad_, param, "grad", false);
          Tensor buf = optional_like_param(momentum_buffer_, param, "momentum_buffer", momentum != 0,
                                           "momentum != 0");
          check_disjoint({{&param, "param"}, {&grad, "grad"}, {&buf, "momentum_buffer"}});
          SgdOptions o;
          o.lr = lr, o.momentum = momentum, o.dampening = dampening, o.weight_decay = weight_decay;
          o.nesterov = nesterov, o.maximize = maximize, o.first_step = first_step;
          o.slot = to_graph_slot(slot, param, "param");
          py::gil_scoped_release no_gil;
          sgd_step(param, grad, buf, o);
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

  m.def("adam_step", [](py::handle param_, py::handle grad_, py::handle exp_avg_,
                        py::handle exp_avg_sq_, py::handle max_exp_avg_sq_, int64_t step, double lr,
                        double beta1, double beta2, double eps, double weight_decay,
                        bool decoupled_weight_decay, bool amsgrad, bool maximize, py::handle slot) {
          AdamUpdate u = adam_arguments(param_, exp_avg_, exp_avg_sq_, max_exp_avg_sq_, step, lr, beta1,
                                        beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize);
          Tensor grad = like_param(grad_, u.param, "grad", false);
          check_disjoint({{&u.param, "param"}, {&grad, "grad"}, {&u.exp_avg, "exp_avg"},
                          {&u.exp_avg_sq, "exp_avg_sq"}, {&u.max_exp_avg_sq, "max_exp_avg_sq"}});
          u.options.slot = to_graph_slot(slot, u.param, "param");
          py::gil_scoped_release no_gil;
          adam_step(u.param, grad, u.exp_avg, u.exp_avg_sq, u.max_exp_avg_sq, u.options);
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

  m.def("rmsprop_step", [](py::handle param_, py::handle grad_, py::handle square_avg_,
                           py::handle momentum_buffer_, py::handle grad_avg_, double lr,
                           double alpha, double eps, double weight_decay, double momentum,
                           bool centered, bool maximize, py::handle slot) {
          Tensor param = param_arg(param_);
          Tensor grad = like_param(grad_, param, "grad", false);
          Tensor sq = like_param(square_avg_, param, "square_avg");
          Tensor buf = optional_like_param(momentum_buffer_, param, "momentum_buffer", momentum > 0,
                                           "momentum > 0");
          Tensor g_avg = optional_like_param(grad_avg_, param, "grad_avg", centered, "centered=True");
          check_disjoint({{&param, "param"}, {&grad, "grad"}, {&sq, "square_avg"},
                          {&buf, "momentum_buffer"}, {&g_avg, "grad_avg"}});
          RmspropOptions o;
          o.lr = lr, o.alpha = alpha, o.eps = eps, o.weight_decay = weight_decay;
          o.momentum = momentum, o.centered = centered, o.maximize = maximize;
          o.slot = to_graph_slot(slot, param, "param");
          py::gil_scoped_release no_gil;
          rmsprop_step(param, grad, sq, buf, g_avg, o);
        },
        py::arg("param"), py::arg("grad"), py::arg("square_avg"),
        py::arg("momentum_buffer") = py::none(), py::arg("grad_avg") = py::none(), py::kw_only(),
        py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay") = 0.0,
        py::arg("momentum") = 0.0, py::arg("centered") = false, py::arg("maximize") = false,
        py::arg("slot") = py::none(),
        R"doc(One RMSprop step, in place, as torch.optim.RMSprop computes it for one tensor.

momentum_buffer is required when momentum > 0, grad_avg when centered=True. All tensors: param's
shape, dtype and device, no two sharing memory.)doc");

  m.def("adagrad_step", [](py::handle param_, py::handle grad_, py::handle state_sum_,
                           int64_t step, double lr, double lr_decay, double weight_decay,
                           double eps, bool maximize, py::handle slot) {
          FASTNN_CHECK(step >= 1, ValueError, "step: expected the step number counting from 1, got ", step);
          Tensor param = param_arg(param_);
          Tensor grad = like_param(grad_, param, "grad", false);
          Tensor sum = like_param(state_sum_, param, "state_sum");
          check_disjoint({{&param, "param"}, {&grad, "grad"}, {&sum, "state_sum"}});
          AdagradOptions o;
          o.step = step, o.lr = lr, o.lr_decay = lr_decay, o.weight_decay = weight_decay;
          o.eps = eps, o.maximize = maximize;
          o.slot = to_graph_slot(slot, param, "param");
          py::gil_scoped_release no_gil;
          adagrad_step(param, grad, sum, o);
        },
        py::arg("param"), py::arg("grad"), py::arg("state_sum"), py::kw_only(), py::arg("step"),
        py::arg("lr"), py::arg("lr_decay") = 0.0, py::arg("weight_decay") = 0.0,
        py::arg("eps") = 1e-10, py::arg("maximize") = false, py::arg("slot") = py::none(),
        R"doc(One Adagrad step, in place, as torch.optim.Adagrad computes it for one dense tensor.

`step` counts from 1; the learning rate is lr / (1 + (step - 1) * lr_decay). All tensors: param's
shape, dtype and device, no two sharing memory.)doc");
}

}  // namespace fastnn::bind
