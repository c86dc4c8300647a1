#include "bindings/convert.h"

#include <pybind11/stl.h>

#include <string>

namespace fastnn::bind {

static std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__qualname__")).cast<std::string>();
}

Tensor to_tensor(py::handle obj, const char* arg) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  if (obj.is_none())
    throw TypeError(detail::concat(arg, ": expected a tensor (fastnn.Tensor, numpy array or torch tensor), got None"));
  if (has_attr(obj, "__dlpack__")) {
    // from_dlpack raises BufferError, as the DLPack protocol asks of an import; an op's argument
    // that cannot be read (float16, a tensor that requires grad, a big-endian numpy array) is the
    // wrong kind of argument, a TypeError naming it like every other check here.
    try {
      return from_dlpack(obj, py::none(), arg);
    } catch (const BufferError& e) {
      throw TypeError(e.what());
    } catch (py::error_already_set& e) {  // the producer's own refusal
      if (!e.matches(PyExc_BufferError)) throw;
      throw TypeError(detail::concat(arg, ": ", py::str(e.value()).cast<std::string>()));
    }
  }
  throw TypeError(detail::concat(arg, ": expected a fastnn.Tensor, numpy array or torch tensor, got ",
                                 type_name(obj), " (wrap lists with fastnn.tensor(...))"));
}

std::optional<Tensor> to_optional_tensor(py::handle obj, const char* arg) {
  if (obj.is_none()) return std::nullopt;
  return to_tensor(obj, arg);
}

void check_floating(const Tensor& t, const char* arg) {
  FASTNN_CHECK(is_floating(t.dtype()), TypeError, arg, ": expected float32 or float64, got ",
               dtype_name(t.dtype()));
}

void check_dtype(const Tensor& t, DType dtype, const char* arg, const char* like) {
  FASTNN_CHECK(t.dtype() == dtype, TypeError, arg, ": expected ", dtype_name(dtype),
               like ? detail::concat(" (the dtype of ", like, ")") : std::string(), ", got ",
               dtype_name(t.dtype()));
}

void check_dim(const Tensor& t, int64_t ndim, const char* arg) {
  FASTNN_CHECK(t.dim() == ndim, ValueError, arg, ": expected a ", ndim, "-d tensor, got shape ",
               shape_str(t.shape()));
}

void check_shape(const Tensor& t, const Shape& shape, const char* arg) {
  FASTNN_CHECK(t.shape() == shape, ValueError, arg, ": expected shape ", shape_str(shape), ", got ",
               shape_str(t.shape()));
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* arg, const char* ref_arg) {
  FASTNN_CHECK(t.device() == ref.device(), ValueError, arg, ": expected device ", ref.device().str(),
               " (the device of ", ref_arg, "), got ", t.device().str());
}

void check_writable(const Tensor& t, const char* arg) {
  FASTNN_CHECK(!t.readonly(), ValueError, arg, ": tensor is read-only");
}

void check_like(const Tensor& t, const Tensor& ref, const char* arg, const char* ref_arg) {
  check_dtype(t, ref.dtype(), arg, ref_arg);
  check_same_device(t, ref, arg, ref_arg);
}

Tensor output(py::handle out, const Shape& shape, DType dtype, Device device, const char* arg) {
  if (out.is_none()) return Tensor::empty(shape, dtype, device);
  Tensor t = to_tensor(out, arg);
  check_dtype(t, dtype, arg);
  FASTNN_CHECK(t.device() == device, ValueError, arg, ": expected device ", device.str(), ", got ",
               t.device().str());
  check_shape(t, shape, arg);
  check_writable(t, arg);
  return t;
}

Device parse_device(py::handle obj) {
  if (obj.is_none()) return cpu_device();
  std::string s = py::str(obj).cast<std::string>();
  if (s == "cpu") return cpu_device();
  if (s == "cuda") return Device{DeviceType::CUDA, 0};
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      int idx = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && idx >= 0) return Device{DeviceType::CUDA, idx};
    } catch (const std::exception&) {
    }
  }
  throw ValueError(detail::concat("device: expected 'cpu', 'cuda' or 'cuda:N', got '", s, "'"));
}

DType parse_dtype(py::handle obj) {
  std::string s;
  if (py::isinstance<py::str>(obj)) {
    s = obj.cast<std::string>();
  } else {
    // numpy dtypes, numpy scalar types and torch dtypes all print a recognisable name
    py::object np = py::module_::import("numpy");
    try {
      s = py::str(np.attr("dtype")(obj).attr("name")).cast<std::string>();
    } catch (py::error_already_set&) {
      s = py::str(obj).cast<std::string>();
      if (s.rfind("torch.", 0) == 0) s = s.substr(6);
    }
  }
  for (DType t : kAllDTypes)
    if (s == dtype_name(t)) return t;
  if (s == "float") return DType::float32;  // torch's aliases
  if (s == "double") return DType::float64;
  if (s == "long") return DType::int64;
  throw TypeError(detail::concat("dtype: expected one of ", dtype_list(), ", got '", s, "'"));
}

py::object dtype_to_numpy(DType dtype) {
  return py::module_::import("numpy").attr("dtype")(dtype_name(dtype));
}

}  // namespace fastnn::bind
