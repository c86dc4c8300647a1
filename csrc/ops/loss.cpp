#include "ops/loss.h"

#include <algorithm>

namespace fastnn {

Reduction parse_reduction(const std::string& name) {
  if (name == "mean") return Reduction::mean;
  if (name == "sum") return Reduction::sum;
  if (name == "none") return Reduction::none;
  throw ValueError("reduction: expected 'mean', 'sum' or 'none', got '" + name + "'");
}

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::mean: return "mean";
    case Reduction::sum: return "sum";
    default: return "none";
  }
}

BroadcastLayout broadcast_layout(const Shape& operand, const Shape& input, const char* arg) {
  const size_t rank = input.size(), extra = rank - std::min(rank, operand.size());
  FASTNN_CHECK(operand.size() <= rank, ValueError, arg, ": shape ", shape_str(operand), " has more dimensions than input ",
               shape_str(input));
  // dimensions of input (aligned at the right) that the operand does not repeat, first to last
  size_t first = rank, last = 0;
  for (size_t d = extra; d < rank; ++d) {
    const int64_t o = operand[d - extra];
    FASTNN_CHECK(o == input[d] || o == 1, ValueError, arg, ": shape ", shape_str(operand),
                 " does not broadcast to input's shape ", shape_str(input));
    if (o != 1) first = std::min(first, d), last = d;
  }
  BroadcastLayout layout;
  if (first == rank || shape_numel(input) == 0) return layout;
  for (size_t d = first; d <= last; ++d) {
    FASTNN_CHECK(input[d] == 1 || operand[d - extra] != 1, ValueError, arg, ": shape ", shape_str(operand),
                 " repeats along a dimension of input ", shape_str(input), " between two it spans, which ",
                 "fastnn does not take: pass it expanded to the input's shape (numpy.broadcast_to)");
    layout.period *= input[d];
  }
  for (size_t d = last + 1; d < rank; ++d) layout.inner *= input[d];
  return layout;
}

void throw_bad_label(const BadLabel& bad, int64_t classes, int64_t ignore_index) {
  throw ValueError(detail::concat("target: label ", bad.value, " at index ", bad.index, " is out of range [0, ", classes,
                                  ") and is not ignore_index (", ignore_index, ")"));
}

void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss) {
  FASTNN_ON_DEVICE(logits.device(), cross_entropy_forward, logits, target, weight, reduction,
                   ignore_index, loss);
}
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits) {
  FASTNN_ON_DEVICE(logits.device(), cross_entropy_backward, logits, target, dloss, weight,
                   reduction, ignore_index, dlogits);
}
void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits) {
  FASTNN_ON_DEVICE(logits.device(), cross_entropy_fused, logits, target, weight, reduction,
                   ignore_index, loss, dlogits);
}

void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss) {
  FASTNN_ON_DEVICE(input.device(), mse_forward, input, target, reduction, loss);
}
void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput) {
  FASTNN_ON_DEVICE(input.device(), mse_backward, input, target, dloss, reduction, dinput);
}

void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss) {
  FASTNN_ON_DEVICE(input.device(), bce_with_logits_forward, input, target, weight, pos_weight,
                   reduction, loss);
}
void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput) {
  FASTNN_ON_DEVICE(input.device(), bce_with_logits_backward, input, target, dloss, weight,
                   pos_weight, reduction, dinput);
}

}  // namespace fastnn
