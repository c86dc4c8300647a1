// Dropout's Python arguments, parsed once for every op that takes them (dropout itself, and
// BatchNorm's fused epilogue): each error names the argument.
#pragma once
#include <string>

#include "bindings/convert.h"
#include "ops/dropout.h"

namespace fastnn::bind {

// A Python int (or anything with __index__, e.g. numpy integers) in [0, 2^bits).
uint64_t to_unsigned(py::handle obj, int bits, const char* arg);
// A float in [0, 1].
double to_probability(py::handle obj);
// 'none' or 'relu', the activations dropout fuses.
Activation to_dropout_activation(const std::string& name);
// p, seed and offset as one call's DropoutParams (no graph slot).
DropoutParams dropout_params(py::handle p, py::handle seed, py::handle offset);

}  // namespace fastnn::bind
