#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "ops/loss.h"

namespace fastnn::bind {

namespace {

// An optional tensor argument that must have the dtype and device of `ref` and the given shape;
// None becomes an undefined Tensor, which the kernels read as "absent".
Tensor optional_like(py::handle obj, const Tensor& ref, const char* arg, const char* ref_arg,
                     const Shape& shape) {
  if (obj.is_none()) return Tensor();
  Tensor t = to_tensor(obj, arg);
  check_like(t, ref, arg, ref_arg);
  check_shape(t, shape, arg);
  return t;
}

// The upstream gradient of a loss: a number (reduced losses only; Python or numpy scalar) or a
// tensor with the dtype and device of `ref` and the shape of the loss.
Tensor upstream(py::handle dloss, const Tensor& ref, const char* ref_arg, const Shape& loss_shape) {
  const bool number = py::isinstance<py::float_>(dloss) || py::isinstance<py::int_>(dloss) ||
                      (!py::isinstance<Tensor>(dloss) && !has_attr(dloss, "__dlpack__") &&
                       has_attr(dloss, "__float__"));
  if (number) {
    FASTNN_CHECK(loss_shape.empty(), ValueError, "dloss: reduction 'none' needs a tensor of shape ",
                 shape_str(loss_shape), ", got a Python number");
    Tensor t = Tensor::empty({}, ref.dtype(), ref.device());
    fill_(t, dloss.cast<double>());
    return t;
  }
  Tensor t = to_tensor(dloss, "dloss");
  check_like(t, ref, "dloss", ref_arg);
  check_shape(t, loss_shape, "dloss");
  return t;
}

Shape loss_shape(Reduction r, const Shape& unreduced) { return r == Reduction::none ? unreduced : Shape{}; }

// Checked arguments of a cross-entropy call.
struct CrossEntropyArgs {
  Tensor logits, target, weight;
  Reduction reduction;
  int64_t ignore_index;
};

CrossEntropyArgs cross_entropy_args(py::handle logits_, py::handle target_, py::handle weight_,
                                    const std::string& reduction, int64_t ignore_index) {
  CrossEntropyArgs a;
  a.reduction = parse_reduction(reduction);
  a.ignore_index = ignore_index;
  a.logits = to_tensor(logits_, "logits");
  check_floating(a.logits, "logits");
  FASTNN_CHECK(a.logits.dim() == 2, ValueError, "logits: expected a 2-d tensor (N, C), got shape ",
               shape_str(a.logits.shape()));
  const int64_t rows = a.logits.size(0), classes = a.logits.size(1);
  FASTNN_CHECK(classes >= 1, ValueError, "logits: expected at least one class, got shape ",
               shape_str(a.logits.shape()));
  a.target = to_tensor(target_, "target");
  FASTNN_CHECK(a.target.dtype() == DType::int64 || a.target.dtype() == DType::int32, TypeError,
               "target: expected int64 or int32 class labels, got ", dtype_name(a.target.dtype()));
  check_same_device(a.target, a.logits, "target", "logits");
  FASTNN_CHECK(a.target.shape() == Shape{rows}, ValueError, "target: expected shape (", rows,
               ",) (one label per row of logits ", shape_str(a.logits.shape()), "), got ",
               shape_str(a.target.shape()));
  a.weight = optional_like(weight_, a.logits, "weight", "logits", {classes});
  // Labels out of range: each backend's cross-entropy raises (ops/loss.h, throw_bad_label).
  return a;
}

// Checked arguments of an elementwise loss (MSE, BCE): input and target of one shape.
std::pair<Tensor, Tensor> elementwise_args(py::handle input_, py::handle target_) {
  Tensor input = to_tensor(input_, "input");
  check_floating(input, "input");
  Tensor target = to_tensor(target_, "target");
  check_like(target, input, "target", "input");
  check_shape(target, input.shape(), "target");
  return {input, target};
}

// BCE's weight or pos_weight: the dtype and device of input and a shape that broadcasts to it as
// the kernels read it (ops/loss.h, broadcast_layout), or None.
Tensor broadcast_arg(py::handle obj, const Tensor& input, const char* arg) {
  if (obj.is_none()) return Tensor();
  Tensor t = to_tensor(obj, arg);
  check_like(t, input, arg, "input");
  broadcast_layout(t.shape(), input.shape(), arg);
  return t;
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def("cross_entropy", [](py::handle logits_, py::handle target_, py::handle weight_,
                            const std::string& reduction, int64_t ignore_index, py::handle dlogits_) {
          auto a = cross_entropy_args(logits_, target_, weight_, reduction, ignore_index);
          FASTNN_CHECK(a.reduction != Reduction::none, ValueError,
                       "reduction: the fused cross_entropy takes 'mean' or 'sum', got 'none' "
                       "(use cross_entropy_forward / cross_entropy_backward)");
          Tensor loss = Tensor::empty({}, a.logits.dtype(), a.logits.device());
          Tensor dlogits = output(dlogits_, a.logits.shape(), a.logits.dtype(), a.logits.device(), "dlogits");
          cross_entropy_fused(a.logits, a.target, a.weight, a.reduction, a.ignore_index, loss, dlogits);
          return py::make_tuple(loss, dlogits);
        }, py::arg("logits"), py::arg("target"), py::arg("weight") = py::none(),
        py::arg("reduction") = "mean", py::arg("ignore_index") = -100, py::kw_only(),
        py::arg("dlogits") = py::none(),
        R"doc(Softmax cross-entropy and its gradient in one pass: (loss, dlogits).

logits (N, C) float; target (N,) int64/int32 labels in [0, C) or ignore_index; weight (C,) or None.
loss is 0-d ("mean": sum w[y] l / sum w[y] over rows not ignored, NaN when there are none; "sum").
dlogits (N, C) is d loss / d logits for an upstream gradient of 1 (zero on ignored rows); it may be
given, and may be logits itself (the gradient then overwrites the logits).)doc");

  m.def("cross_entropy_forward", [](py::handle logits_, py::handle target_, py::handle weight_,
                                    const std::string& reduction, int64_t ignore_index) {
          auto a = cross_entropy_args(logits_, target_, weight_, reduction, ignore_index);
          Tensor loss = Tensor::empty(loss_shape(a.reduction, {a.logits.size(0)}), a.logits.dtype(),
                                      a.logits.device());
          cross_entropy_forward(a.logits, a.target, a.weight, a.reduction, a.ignore_index, loss);
          return loss;
        }, py::arg("logits"), py::arg("target"), py::arg("weight") = py::none(),
        py::arg("reduction") = "mean", py::arg("ignore_index") = -100,
        "Softmax cross-entropy like torch.nn.functional.cross_entropy: 0-d for 'mean'/'sum', (N,) "
        "for 'none' (w[y_i] * l_i, 0 on ignored rows).");

  m.def("cross_entropy_backward", [](py::handle logits_, py::handle target_, py::handle dloss_,
                                     py::handle weight_, const std::string& reduction,
                                     int64_t ignore_index, py::handle out_) {
          auto a = cross_entropy_args(logits_, target_, weight_, reduction, ignore_index);
          Tensor dloss = upstream(dloss_, a.logits, "logits", loss_shape(a.reduction, {a.logits.size(0)}));
          Tensor dlogits = output(out_, a.logits.shape(), a.logits.dtype(), a.logits.device());
          cross_entropy_backward(a.logits, a.target, dloss, a.weight, a.reduction, a.ignore_index, dlogits);
          return dlogits;
        }, py::arg("logits"), py::arg("target"), py::arg("dloss"), py::arg("weight") = py::none(),
        py::arg("reduction") = "mean", py::arg("ignore_index") = -100, py::arg("out") = py::none(),
        "dlogits (N, C) of cross_entropy_forward for the upstream gradient dloss (a number or 0-d "
        "tensor for 'mean'/'sum', an (N,) tensor for 'none').");

  m.def("mse_forward", [](py::handle input_, py::handle target_, const std::string& reduction) {
          const Reduction r = parse_reduction(reduction);
          auto [input, target] = elementwise_args(input_, target_);
          Tensor loss = Tensor::empty(loss_shape(r, input.shape()), input.dtype(), input.device());
          mse_forward(input, target, r, loss);
          return loss;
        }, py::arg("input"), py::arg("target"), py::arg("reduction") = "mean",
        "Mean squared error (input - target)^2, reduced by 'mean', 'sum' or 'none'.");

  m.def("mse_backward", [](py::handle input_, py::handle target_, py::handle dloss_,
                           const std::string& reduction, py::handle out_) {
          const Reduction r = parse_reduction(reduction);
          auto [input, target] = elementwise_args(input_, target_);
          Tensor dloss = upstream(dloss_, input, "input", loss_shape(r, input.shape()));
          Tensor dinput = output(out_, input.shape(), input.dtype(), input.device());
          mse_backward(input, target, dloss, r, dinput);
          return dinput;
        }, py::arg("input"), py::arg("target"), py::arg("dloss"), py::arg("reduction") = "mean",
        py::arg("out") = py::none(), "d mse / d input for the upstream gradient dloss.");

  m.def("bce_with_logits_forward", [](py::handle input_, py::handle target_, py::handle weight_,
                                      py::handle pos_weight_, const std::string& reduction) {
          const Reduction r = parse_reduction(reduction);
          auto [input, target] = elementwise_args(input_, target_);
          Tensor weight = broadcast_arg(weight_, input, "weight");
          Tensor pos_weight = broadcast_arg(pos_weight_, input, "pos_weight");
          Tensor loss = Tensor::empty(loss_shape(r, input.shape()), input.dtype(), input.device());
          bce_with_logits_forward(input, target, weight, pos_weight, r, loss);
          return loss;
        }, py::arg("input"), py::arg("target"), py::arg("weight") = py::none(),
        py::arg("pos_weight") = py::none(), py::arg("reduction") = "mean",
        "Binary cross-entropy with logits like torch.nn.functional.binary_cross_entropy_with_logits; "
        "weight and pos_weight broadcast to input's shape as in torch (e.g. (C,) per class or (N, 1) "
        "per row of an (N, C) input), with their dimensions other than 1 adjacent.");

  m.def("bce_with_logits_backward", [](py::handle input_, py::handle target_, py::handle dloss_,
                                       py::handle weight_, py::handle pos_weight_,
                                       const std::string& reduction, py::handle out_) {
          const Reduction r = parse_reduction(reduction);
          auto [input, target] = elementwise_args(input_, target_);
          Tensor weight = broadcast_arg(weight_, input, "weight");
          Tensor pos_weight = broadcast_arg(pos_weight_, input, "pos_weight");
          Tensor dloss = upstream(dloss_, input, "input", loss_shape(r, input.shape()));
          Tensor dinput = output(out_, input.shape(), input.dtype(), input.device());
          bce_with_logits_backward(input, target, dloss, weight, pos_weight, r, dinput);
          return dinput;
        }, py::arg("input"), py::arg("target"), py::arg("dloss"), py::arg("weight") = py::none(),
        py::arg("pos_weight") = py::none(), py::arg("reduction") = "mean", py::arg("out") = py::none(),
        "d bce_with_logits / d input for the upstream gradient dloss.");
}

}  // namespace fastnn::bind
