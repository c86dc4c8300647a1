#include <pybind11/stl.h>

#include <cmath>

#include "bindings/bindings.h"
#include "bindings/convert.h"
#include "bindings/dropout_args.h"
#include "bindings/graph_slot.h"
#include "ops/dropout.h"

namespace fastnn::bind {

namespace {

std::string py_repr(py::handle obj) { return py::repr(obj).cast<std::string>(); }

}  // namespace

uint64_t to_unsigned(py::handle obj, int bits, const char* arg) {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr()))
    throw TypeError(detail::concat(arg, ": expected an int, got ", py_repr(py::type::handle_of(obj).attr("__name__"))));
  py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (!value) throw py::error_already_set();
  const py::int_ limit = py::reinterpret_steal<py::int_>(
      PyNumber_Lshift(py::int_(1).ptr(), py::int_(bits).ptr()));
  if (value < py::int_(0) || value >= limit)
    throw ValueError(detail::concat(arg, ": expected an int in [0, 2**", bits, "), got ", py_repr(value)));
  return PyLong_AsUnsignedLongLong(value.ptr());
}

double to_probability(py::handle obj) {
  if (py::isinstance<py::bool_>(obj) || !(PyFloat_Check(obj.ptr()) || PyIndex_Check(obj.ptr()) ||
                                          has_attr(obj, "__float__")))
    throw TypeError(detail::concat("p: expected a float, got ", py_repr(py::type::handle_of(obj).attr("__name__"))));
  const double p = PyFloat_AsDouble(obj.ptr());
  if (p == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  FASTNN_CHECK(p >= 0.0 && p <= 1.0, ValueError, "p: expected a dropout probability in [0, 1], got ", p);
  return p;
}

Activation to_dropout_activation(const std::string& name) {
  Activation a = parse_activation(name);
  FASTNN_CHECK(dropout_fusable(a), ValueError, "activation: dropout fuses only 'relu' or 'none', got '",
               name, "' (apply ", activation_name(a), " first, then plain dropout)");
  return a;
}

DropoutParams dropout_params(py::handle p, py::handle seed, py::handle offset) {
  return DropoutParams::make(to_probability(p), to_unsigned(seed, 64, "seed"), to_unsigned(offset, 64, "offset"));
}

void bind_dropout(py::module_& m) {
  m.def("_philox4x32_10", [](const std::vector<py::handle>& counter, const std::vector<py::handle>& key) {
          FASTNN_CHECK(counter.size() == 4, ValueError, "counter: expected 4 words, got ", counter.size());
          FASTNN_CHECK(key.size() == 2, ValueError, "key: expected 2 words, got ", key.size());
          uint32_t c[4], k[2], out[4];
          for (int i = 0; i < 4; ++i) c[i] = static_cast<uint32_t>(to_unsigned(counter[i], 32, "counter"));
          for (int i = 0; i < 2; ++i) k[i] = static_cast<uint32_t>(to_unsigned(key[i], 32, "key"));
          philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1], out);
          return py::make_tuple(out[0], out[1], out[2], out[3]);
        }, py::arg("counter"), py::arg("key"),
        "The 4 output words of Philox4x32-10 for 4 counter words and 2 key words (for tests).");

  m.def("dropout_forward", [](py::handle x_, py::handle p_, py::handle seed_, py::handle offset_,
                              const std::string& activation, py::handle out_, py::handle slot_) {
          Activation act = to_dropout_activation(activation);
          Tensor x = to_tensor(x_, "x");
          check_floating(x, "x");
          DropoutParams params = dropout_params(p_, seed_, offset_);
          params.slot = to_graph_slot(slot_, x, "x");
          if (params.slot && !params.slot.recording) {  // a replay's fresh key: stored, nothing run
            dropout_forward(x, x, params, act);
            return py::none().cast<py::object>();
          }
          Tensor y = output(out_, x.shape(), x.dtype(), x.device());
          dropout_forward(x, y, params, act);
          return py::cast(y);
        }, py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset"),
        py::arg("activation") = "none", py::arg("out") = py::none(), py::kw_only(), py::arg("slot") = py::none(),
        "y = act(x) * keep / (1 - p), act in {'none', 'relu'}; keep is the Philox4x32-10 mask of "
        "(seed, offset, element index). p = 0 copies act(x) exactly; p = 1 gives zeros. With a graph "
        "slot (fastnn.cuda), a captured launch reads its key from the slot; a call with the slot of a "
        "captured graph only stores (seed, offset) for its next replay and returns None.");

  m.def("dropout_backward", [](py::handle dy_, py::handle p_, py::handle seed_, py::handle offset_,
                               py::handle y_, const std::string& activation, py::handle out_,
                               py::handle slot_) {
          Activation act = to_dropout_activation(activation);
          Tensor dy = to_tensor(dy_, "dy");
          check_floating(dy, "dy");
          DropoutParams params = dropout_params(p_, seed_, offset_);
          params.slot = to_graph_slot(slot_, dy, "dy");
          FASTNN_CHECK(!params.slot || params.slot.recording, ValueError,
                       "slot: dropout_backward reads the key its forward stored; pass the slot while capturing");
          Tensor y;
          if (!y_.is_none()) {
            y = to_tensor(y_, "y");
            check_like(y, dy, "y", "dy");
            check_shape(y, dy.shape(), "y");
          }
          FASTNN_CHECK(act != Activation::relu || y.defined(), ValueError,
                       "y: the forward output is required for activation='relu'");
          Tensor dx = output(out_, dy.shape(), dy.dtype(), dy.device());
          dropout_backward(dy, y, dx, params, act);
          return dx;
        }, py::arg("dy"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("y") = py::none(),
        py::arg("activation") = "none", py::arg("out") = py::none(), py::kw_only(), py::arg("slot") = py::none(),
        "Gradient of dropout_forward. activation='none': dx = dy * keep / (1 - p), the mask "
        "regenerated from (seed, offset); 'relu': dx = dy / (1 - p) where y > 0, else 0 (needs y).");

  m.def("dropout_mask", [](py::handle shape_, py::handle p_, py::handle seed_, py::handle offset_,
                           py::handle device_) {
          Shape shape;
          try {
            shape = py::isinstance<py::int_>(shape_) ? Shape{shape_.cast<int64_t>()} : shape_.cast<Shape>();
          } catch (const py::cast_error&) {
            throw TypeError(detail::concat("shape: expected an int or a sequence of ints, got ", py_repr(shape_)));
          }
          for (int64_t s : shape)
            FASTNN_CHECK(s >= 0, ValueError, "shape: expected non-negative sizes, got ", shape_str(shape));
          const DropoutParams params = dropout_params(p_, seed_, offset_);
          Tensor mask = Tensor::empty(shape, DType::bool_, parse_device(device_));
          dropout_mask(mask, params);
          return mask;
        }, py::arg("shape"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("device") = "cpu",
        "The dropout mask (bool, True = kept) that dropout_forward uses for (p, seed, offset), "
        "computed on `device`.");
}

}  // namespace fastnn::bind
