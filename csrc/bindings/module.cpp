#include <pybind11/pybind11.h>

#include "bindings/bindings.h"
#include "core/error.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastnn's compiled kernels; use the fastnn package, not this module";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fastnn::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const fastnn::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const fastnn::BufferError& e) {
      PyErr_SetString(PyExc_BufferError, e.what());
    } catch (const fastnn::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what());
    }
  });
  fastnn::bind::bind_tensor(m);
  fastnn::bind::bind_activation(m);
  fastnn::bind::bind_linear(m);
  fastnn::bind::bind_dropout(m);
  fastnn::bind::bind_batchnorm(m);
  fastnn::bind::bind_loss(m);
  fastnn::bind::bind_optim(m);
  fastnn::bind::bind_graph(m);
}
