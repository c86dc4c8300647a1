// Each op family registers its Python functions from its own file, so families never collide.
#pragma once
#include <pybind11/pybind11.h>

namespace fastnn::bind {
void bind_tensor(pybind11::module_& m);
void bind_activation(pybind11::module_& m);
void bind_linear(pybind11::module_& m);
void bind_dropout(pybind11::module_& m);
void bind_batchnorm(pybind11::module_& m);
void bind_loss(pybind11::module_& m);
void bind_optim(pybind11::module_& m);
void bind_graph(pybind11::module_& m);
}  // namespace fastnn::bind
