#include <cmath>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "bindings/dropout_args.h"
#include "bindings/graph_slot.h"
#include "ops/batchnorm.h"

namespace fastnn::bind {

namespace {

// An optional per-channel tensor: None, or shape (C,) with the dtype and device of x.
Tensor channel_tensor(py::handle obj, const Tensor& x, const char* arg, bool writable = false) {
  if (obj.is_none()) return Tensor();
  Tensor t = to_tensor(obj, arg);
  check_like(t, x, arg, "x");
  check_shape(t, {x.size(1)}, arg);
  if (writable) check_writable(t, arg);
  return t;
}

// A gradient buffer for (C,): the given one (checked), else a new one, zeroed when it is to be
// accumulated into.
Tensor grad_buffer(py::handle obj, const Tensor& x, const char* arg, bool accumulate) {
  if (!obj.is_none()) return output(obj, {x.size(1)}, x.dtype(), x.device(), arg);
  return accumulate ? Tensor::zeros({x.size(1)}, x.dtype(), x.device())
                    : Tensor::empty({x.size(1)}, x.dtype(), x.device());
}

Tensor input_2d(py::handle obj, const char* arg) {
  Tensor t = to_tensor(obj, arg);
  check_floating(t, arg);
  FASTNN_CHECK(t.dim() == 2, ValueError, arg, ": expected a 2-d tensor (N, C), got shape ",
               shape_str(t.shape()));
  return t;
}

// save_mean / save_invstd: float64 (what batchnorm_forward returns) or x's dtype, widened here.
Tensor saved_stat(py::handle obj, const Tensor& x, const char* arg) {
  FASTNN_CHECK(!obj.is_none(), TypeError, arg, ": expected a tensor, got None");
  Tensor t = to_tensor(obj, arg);
  FASTNN_CHECK(t.dtype() == DType::float64 || t.dtype() == x.dtype(), TypeError, arg,
               ": expected float64 or ", dtype_name(x.dtype()), " (the dtype of x), got ", dtype_name(t.dtype()));
  check_same_device(t, x, arg, "x");
  check_shape(t, {x.size(1)}, arg);
  if (t.dtype() == DType::float64) return t;
  FASTNN_CHECK(t.device().is_cpu(), ValueError, arg, ": pass the float64 statistics batchnorm_forward returned");
  Tensor wide = Tensor::empty(t.shape(), DType::float64, t.device());
  const float* src = t.data<float>();
  double* dst = wide.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = src[i];
  return wide;
}

py::object none_if_undefined(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

// The forward's epilogue from activation= and dropout= (None or (p, seed, offset)), its key read
// from `slot` while a graph captures.
BatchnormEpilogue epilogue_args(const std::string& activation, py::handle dropout, py::handle slot, const Tensor& x) {
  BatchnormEpilogue e;
  e.act = to_dropout_activation(activation);
  if (!dropout.is_none()) {
    FASTNN_CHECK(py::isinstance<py::tuple>(dropout) && py::len(dropout) == 3, TypeError,
                 "dropout: expected None or a tuple (p, seed, offset), got ", py::str(dropout).cast<std::string>());
    const py::tuple t = py::reinterpret_borrow<py::tuple>(dropout);
    e.dropout = dropout_params(t[0], t[1], t[2]);
  }
  e.dropout.slot = to_graph_slot(slot, x, "x");
  FASTNN_CHECK(!e.dropout.slot || e.dropout.slot.recording, ValueError,
               "slot: batchnorm_forward takes a slot only while its graph captures (a replay's key is stored "
               "with dropout_forward)");
  FASTNN_CHECK(!e.dropout.slot || !dropout.is_none(), ValueError, "slot: given without dropout");
  return e;
}

}  // namespace

void bind_batchnorm(py::module_& m) {
  m.def("batchnorm_forward", [](py::handle x_, py::handle weight_, py::handle bias_,
                                py::handle running_mean_, py::handle running_var_, bool training,
                                double momentum, double eps, py::handle out_, const std::string& activation,
                                py::handle dropout_, py::handle slot_) {
          Tensor x = input_2d(x_, "x");
          const BatchnormEpilogue epilogue = epilogue_args(activation, dropout_, slot_, x);
          const int64_t rows = x.size(0), cols = x.size(1);
          Tensor weight = channel_tensor(weight_, x, "weight");
          Tensor bias = channel_tensor(bias_, x, "bias");
          Tensor running_mean = channel_tensor(running_mean_, x, "running_mean", training);
          Tensor running_var = channel_tensor(running_var_, x, "running_var", training);
          FASTNN_CHECK(running_mean.defined() == running_var.defined(), ValueError,
                       running_mean.defined() ? "running_var" : "running_mean",
                       ": expected a tensor, since ", running_mean.defined() ? "running_mean" : "running_var",
                       " is given (give both or neither)");
          FASTNN_CHECK(training || running_mean.defined(), ValueError,
                       "running_mean: required when training=False (eval mode normalises with the "
                       "running statistics)");
          FASTNN_CHECK(!training || rows > 1, ValueError,
                       "x: expected more than 1 value per channel when training, got input of shape ",
                       shape_str(x.shape()));
          FASTNN_CHECK(eps >= 0.0, ValueError, "eps: expected a non-negative number, got ", eps);
          FASTNN_CHECK(std::isfinite(momentum), ValueError, "momentum: expected a finite number, got ",
                       momentum);
          Tensor y = output(out_, x.shape(), x.dtype(), x.device());
          Tensor save_mean = Tensor::empty({cols}, DType::float64, x.device());
          Tensor save_invstd = Tensor::empty({cols}, DType::float64, x.device());
          batchnorm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, y,
                            save_mean, save_invstd, epilogue);
          return py::make_tuple(y, save_mean, save_invstd);
        }, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("training"), py::arg("momentum") = 0.1, py::arg("eps") = 1e-5,
        py::arg("out") = py::none(), py::kw_only(), py::arg("activation") = "none", py::arg("dropout") = py::none(),
        py::arg("slot") = py::none(),
        "BatchNorm1d on x of shape (N, C), like torch.nn.functional.batch_norm. Returns "
        "(y, save_mean, save_invstd), the last two float64 (C,) for either dtype. training=True normalises with the batch mean and biased "
        "variance and, when running_mean/running_var are given, updates them in place "
        "(running_var with the unbiased variance). training=False uses the running statistics, and "
        "save_mean/save_invstd are running_mean and 1/sqrt(running_var + eps). weight/bias None: "
        "no affine transform. activation='relu' and dropout=(p, seed, offset) apply relu, then "
        "dropout_forward's mask and scale, to y in the same op (BatchNorm -> ReLU -> Dropout); slot: "
        "the dropout key's graph slot while capturing (fastnn.cuda).");

  m.def("batchnorm_backward", [](py::handle x_, py::handle dy_, py::handle weight_, py::handle save_mean_,
                                 py::handle save_invstd_, bool training, py::handle dx_,
                                 py::handle dweight_, py::handle dbias_, bool accumulate, py::handle y_,
                                 const std::string& activation, py::handle p_) {
          Tensor x = input_2d(x_, "x");
          Tensor dy = to_tensor(dy_, "dy");
          check_like(dy, x, "dy", "x");
          check_shape(dy, x.shape(), "dy");
          const Activation act = to_dropout_activation(activation);
          const double p = to_probability(p_);
          FASTNN_CHECK(act == Activation::relu || p == 0.0, ValueError,
                       "p: the backward of a fused dropout regenerates nothing; it reads relu's output, so "
                       "it needs activation='relu' (else run dropout_backward first), got p=", p);
          Tensor y;
          if (act == Activation::relu) {
            FASTNN_CHECK(!y_.is_none(), ValueError, "y: the fused forward's output is required for activation='relu'");
            y = to_tensor(y_, "y");
            check_like(y, x, "y", "x");
            check_shape(y, x.shape(), "y");
          }
          Tensor weight = channel_tensor(weight_, x, "weight");
          Tensor save_mean = saved_stat(save_mean_, x, "save_mean");
          Tensor save_invstd = saved_stat(save_invstd_, x, "save_invstd");
          Tensor dx = output(dx_, x.shape(), x.dtype(), x.device(), "dx");
          // the parameter gradients are computed for a given weight, or into a given buffer
          Tensor dweight = weight.defined() || !dweight_.is_none() ? grad_buffer(dweight_, x, "dweight", accumulate) : Tensor();
          Tensor dbias = weight.defined() || !dbias_.is_none() ? grad_buffer(dbias_, x, "dbias", accumulate) : Tensor();
          batchnorm_backward(x, dy, weight, save_mean, save_invstd, training, dx, dweight, dbias, accumulate, y,
                             dropout_scale(p));
          return py::make_tuple(dx, none_if_undefined(dweight), none_if_undefined(dbias));
        }, py::arg("x"), py::arg("dy"), py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"),
        py::arg("training"), py::kw_only(), py::arg("dx") = py::none(), py::arg("dweight") = py::none(),
        py::arg("dbias") = py::none(), py::arg("accumulate") = false, py::arg("y") = py::none(),
        py::arg("activation") = "none", py::arg("p") = 0.0,
        "Gradients of batchnorm_forward: (dx, dweight, dbias). training=True: the full backward "
        "through the batch statistics; training=False: dx = dy * weight * save_invstd. dweight = "
        "sum(dy * xhat) and dbias = sum(dy) over the rows, computed when weight is given (or a "
        "buffer for them is), else None; written, or added to the given buffers with "
        "accumulate=True. save_mean/save_invstd: float64 as returned by batchnorm_forward (x's dtype "
        "is accepted and widened). After a forward with activation='relu' (and dropout p), pass its "
        "output as y with the same activation and p: dy is then the gradient of that output.");
}

}  // namespace fastnn::bind
