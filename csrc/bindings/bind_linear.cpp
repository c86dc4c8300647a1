#include <string>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "ops/gemm.h"
#include "ops/linear.h"
#include "ops/optim.h"

namespace fastnn::bind {
namespace {

// Kernels write outputs while they still read inputs, so an output must not share memory with
// any input (an in-place GEMM would read values it has already overwritten).
void check_no_overlap(const Tensor& out, const char* out_arg, const Tensor& in, const char* in_arg) {
  if (!out.defined() || !in.defined() || out.nbytes() == 0 || in.nbytes() == 0) return;
  const char* o = static_cast<const char*>(out.raw_data());
  const char* i = static_cast<const char*>(in.raw_data());
  FASTNN_CHECK(o + out.nbytes() <= i || i + in.nbytes() <= o, ValueError, out_arg,
               ": must not share memory with ", in_arg);
}

Tensor matrix(py::handle obj, const char* arg) {
  Tensor t = to_tensor(obj, arg);
  check_floating(t, arg);
  check_dim(t, 2, arg);
  return t;
}

// A second input: the dtype and device of `ref`, 2-D.
Tensor matrix_like(py::handle obj, const char* arg, const Tensor& ref, const char* ref_arg) {
  Tensor t = to_tensor(obj, arg);
  check_like(t, ref, arg, ref_arg);
  check_dim(t, 2, arg);
  return t;
}

// weight (out, in) must match x (N, in).
Tensor weight_for(py::handle obj, const Tensor& x) {
  Tensor w = matrix_like(obj, "weight", x, "x");
  FASTNN_CHECK(w.size(1) == x.size(1), ValueError, "weight: expected shape ",
               shape_str({w.size(0), x.size(1)}), " (out_features, in_features of x ", shape_str(x.shape()),
               "), got ", shape_str(w.shape()));
  return w;
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("gemm", [](py::handle a_, py::handle b_, py::handle c_, double alpha, double beta,
                   bool trans_a, bool trans_b) {
          Tensor a = matrix(a_, "a");
          Tensor b = matrix_like(b_, "b", a, "a");
          const int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
          const int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
          FASTNN_CHECK(kb == k, ValueError, "b: op(b) must have ", k, " rows (the columns of op(a), a is ",
                       shape_str(a.shape()), trans_a ? " transposed" : "", "), got shape ", shape_str(b.shape()),
                       trans_b ? " transposed" : "");
          Tensor c;
          if (c_.is_none()) {
            c = Tensor::empty({m, n}, a.dtype(), a.device());
            beta = 0.0;
          } else {
            c = output(c_, {m, n}, a.dtype(), a.device(), "c");
            check_no_overlap(c, "c", a, "a");
            check_no_overlap(c, "c", b, "b");
          }
          gemm(a, b, c, alpha, beta, trans_a, trans_b);
          return c;
        }, py::arg("a"), py::arg("b"), py::arg("c") = py::none(), py::kw_only(), py::arg("alpha") = 1.0,
        py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("trans_b") = false,
        "c = alpha * op(a) @ op(b) + beta * c, op = transpose when trans_a / trans_b. c=None returns a "
        "new tensor (beta ignored); a given c is updated in place and returned. beta == 0 never reads c.");

  m.def("linear_forward", [](py::handle x_, py::handle w_, py::handle b_, const std::string& kind,
                             py::handle out_) {
          Activation act = parse_activation(kind);
          Tensor x = matrix(x_, "x");
          Tensor w = weight_for(w_, x);
          std::optional<Tensor> bias = to_optional_tensor(b_, "bias");
          if (bias) {
            check_like(*bias, x, "bias", "x");
            check_shape(*bias, {w.size(0)}, "bias");
          }
          Tensor y = output(out_, {x.size(0), w.size(0)}, x.dtype(), x.device(), "out");
          check_no_overlap(y, "out", x, "x");
          check_no_overlap(y, "out", w, "weight");
          if (bias) check_no_overlap(y, "out", *bias, "bias");
          linear_forward(x, w, bias ? &*bias : nullptr, act, y);
          return y;
        }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("activation") = "none",
        py::arg("out") = py::none(),
        "y = act(x @ weight^T + bias): x (N, in), weight (out, in), bias (out,) or None; one GEMM with "
        "the bias and activation fused into its epilogue.");

  m.def("linear_backward", [](py::handle x_, py::handle w_, py::handle dy_, py::handle y_,
                              const std::string& kind, py::handle dx_, py::handle dw_, py::handle db_,
                              bool need_dx, bool need_dbias, bool accumulate, py::handle update_) {
          Activation act = parse_activation(kind);
          Tensor x = matrix(x_, "x");
          Tensor w = weight_for(w_, x);
          const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
          Tensor dy = matrix_like(dy_, "dy", x, "x");
          check_shape(dy, {n, out}, "dy");
          std::optional<Tensor> y;
          if (act != Activation::none) {
            FASTNN_CHECK(!y_.is_none(), ValueError, "y: the forward output is required for activation '",
                         activation_name(act), "'");
            y = matrix_like(y_, "y", x, "x");
            check_shape(*y, {n, out}, "y");
          }

          // An output given with accumulate=False, or allocated here, is overwritten.
          Tensor dw = output(dw_, {out, in}, x.dtype(), x.device(), "dweight");
          std::optional<Tensor> db;
          if (need_dbias) db = output(db_, {out}, x.dtype(), x.device(), "dbias");
          const bool add_w = accumulate && !dw_.is_none();
          const bool add_b = accumulate && db && !db_.is_none();
          std::optional<Tensor> dx;
          if (need_dx) dx = output(dx_, {n, in}, x.dtype(), x.device(), "dx");

          const std::pair<const Tensor*, const char*> inputs[] = {{&x, "x"}, {&w, "weight"}, {&dy, "dy"},
                                                                  {y ? &*y : nullptr, "y"}};
          for (const auto& [t, name] : inputs) {
            if (!t) continue;
            check_no_overlap(dw, "dweight", *t, name);
            if (db) check_no_overlap(*db, "dbias", *t, name);
            if (dx) check_no_overlap(*dx, "dx", *t, name);
          }
          if (db) check_no_overlap(*db, "dbias", dw, "dweight");
          if (dx) check_no_overlap(*dx, "dx", dw, "dweight");
          if (dx && db) check_no_overlap(*dx, "dx", *db, "dbias");

          // The update writes the weight and its state while the GEMMs read the inputs and write
          // the gradients: all of them disjoint, and the weight the very tensor it updates.
          const ParamUpdate* update = nullptr;
          if (!update_.is_none()) {
            FASTNN_CHECK(py::isinstance<ParamUpdate>(update_), TypeError,
                         "update: expected a ParamUpdate or None, got ", py::str(py::type::of(update_)).cast<std::string>());
            update = &update_.cast<const ParamUpdate&>();
            FASTNN_CHECK(update->param.raw_data() == w.raw_data() && update->param.shape() == w.shape() &&
                             update->param.dtype() == w.dtype() && update->param.device() == w.device(),
                         ValueError, "update: its param must be `weight` itself (", shape_str(w.shape()),
                         "), got a parameter of shape ", shape_str(update->param.shape()));
            const std::pair<const Tensor*, const char*> others[] = {
                {&x, "x"}, {&dy, "dy"}, {y ? &*y : nullptr, "y"}, {&dw, "dweight"},
                {db ? &*db : nullptr, "dbias"}, {dx ? &*dx : nullptr, "dx"}};
            for (const auto& [t, name] : others) {
              if (!t) continue;
              check_no_overlap(*t, name, update->param, "weight");
              for (const Tensor& state : update->state)
                if (state.defined()) check_no_overlap(*t, name, state, "update's optimizer state");
            }
          }

          // The kernel adds to both gradients or to neither: a freshly allocated one joining an
          // accumulation starts from zero.
          const bool add = add_w || add_b;
          if (add && !add_w) fill_(dw, 0.0);
          if (add && db && !add_b) fill_(*db, 0.0);
          linear_backward(x, w, dy, y ? &*y : nullptr, act, dx ? &*dx : nullptr, dw, db ? &*db : nullptr, add,
                          update);
          return py::make_tuple(dx ? py::cast(*dx) : py::none(), py::cast(dw), db ? py::cast(*db) : py::none());
        }, py::arg("x"), py::arg("weight"), py::arg("dy"), py::arg("y") = py::none(),
        py::arg("activation") = "none", py::kw_only(), py::arg("dx") = py::none(),
        py::arg("dweight") = py::none(), py::arg("dbias") = py::none(), py::arg("need_dx") = true,
        py::arg("need_dbias") = true, py::arg("accumulate") = false, py::arg("update") = py::none(),
        "Gradients of linear_forward -> (dx or None, dweight, dbias or None). dz = act'(y) * dy; "
        "dweight = dz^T @ x; dbias = column sums of dz; dx = dz @ weight. A given dweight / dbias is "
        "written into, or added to when accumulate=True (dx is always overwritten); None allocates. "
        "need_dbias=False (a layer without bias) returns None for dbias. update (a ParamUpdate of "
        "`weight`): then that optimizer step of the weight follows with dweight as its gradient, fused "
        "into the dweight GEMM on the CPU; dx is computed from the weight before the step.");
}

}  // namespace fastnn::bind
