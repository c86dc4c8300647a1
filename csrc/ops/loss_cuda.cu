// Host side of the CUDA losses: the launches of loss_kernels.cuh and their scratch buffers (per-block
// partial sums, the "mean" denominator), allocated through the caching allocator.
#include <algorithm>
#include <cstdint>

#include "core/cuda_launch.h"
#include "ops/loss.h"
#include "ops/loss_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace loss_detail;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

const dim3 kThreads(reduce::kReduceThreads);

template <class F>
void dispatch_cross_entropy(const Tensor& logits, const Tensor& target, F&& f) {
  dispatch_floating(logits.dtype(), "logits", [&](auto ftag) {
    dispatch_index(target.dtype(), "target", [&](auto itag) { f(ftag, itag); });
  });
}

template <class T, class I>
CrossEntropyParams<T, I> cross_entropy_params(const Tensor& logits, const Tensor& target,
                                              const Tensor& weight, int64_t ignore_index) {
  CrossEntropyParams<T, I> p{};
  p.logits = logits.data<T>();
  p.labels = target.data<I>();
  p.weight = weight.defined() ? weight.data<T>() : nullptr;
  p.rows = logits.size(0);
  p.classes = logits.size(1);
  p.ignore_index = ignore_index;
  return p;
}

// Scratch for {sum, count} partials of `blocks` blocks (at least one element: a valid pointer).
Tensor partials_buffer(int64_t blocks, Device device) {
  return Tensor::empty({blocks > 0 ? blocks : 1, 2}, DType::float64, device);
}

template <class T>
void finish_loss(const Tensor& partials, int64_t blocks, bool mean, Tensor& loss) {
  cuda_rt::launch("loss_finish", loss_finish_kernel<T>, dim3(1), kThreads, 0,
                  static_cast<const double*>(partials.data<double>()), blocks, mean, loss.data<T>());
}

// The "mean" denominator on the device, for launches that need it before the rows are summed: one
// launch for up to kElementsPerBlock rows (a training batch), else per-block sums and a finish.
template <class T, class I>
Tensor total_weight(const CrossEntropyParams<T, I>& p, Device device) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(p.rows, kElementsPerBlock));
  Tensor denominator = Tensor::empty({}, DType::float64, device);
  if (blocks == 1) {
    cuda_rt::launch("cross_entropy_total_weight", cross_entropy_total_weight_kernel<T, I>, dim3(1), kThreads, 0, p,
                    denominator.data<double>());
    return denominator;
  }
  Tensor sums = Tensor::empty({blocks}, DType::float64, device);
  cuda_rt::launch("cross_entropy_total_weight", cross_entropy_total_weight_kernel<T, I>,
                  dim3(static_cast<unsigned>(blocks)), kThreads, 0, p, sums.data<double>());
  cuda_rt::launch("cross_entropy_total_weight_finish", total_weight_finish_kernel, dim3(1), kThreads, 0,
                  static_cast<const double*>(sums.data<double>()), blocks, denominator.data<double>());
  return denominator;
}

template <class T, class I>
void launch_rows(const CrossEntropyParams<T, I>& p) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.rows, kRowsPerBlock)));
  // registers per lane for the row: 1 (MNIST's 10 classes), 8 or 32; wider rows stream
  if (p.classes <= 32)
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 1>, grid, kThreads, 0, p);
  else if (p.classes <= 32 * 8)
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 8>, grid, kThreads, 0, p);
  else if (p.classes <= 32 * 32)
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 32>, grid, kThreads, 0, p);
  else
    cuda_rt::launch("cross_entropy_rows", cross_entropy_rows_kernel<T, I, 0>, grid, kThreads, 0, p);
}

template <class T>
ElementwiseParams<T> elementwise_params(const Tensor& input, const Tensor& target) {
  ElementwiseParams<T> p{};
  p.x = input.data<T>();
  p.t = target.data<T>();
  p.pos_weight_len = 1;
  p.n = input.numel();
  return p;
}

template <class T>
void bce_options(ElementwiseParams<T>& p, const Tensor& weight, const Tensor& pos_weight) {
  if (weight.defined()) p.weight = weight.data<T>();
  if (pos_weight.defined()) {
    p.pos_weight = pos_weight.data<T>();
    p.pos_weight_len = pos_weight.numel();
  }
}

unsigned elementwise_grid(int64_t n) { return cuda_rt::grid_for(n, reduce::kReduceThreads); }

template <class T, class Op>
void elementwise_forward(ElementwiseParams<T> p, Reduction reduction, Tensor& loss, const Device device,
                         const char* name_none, const char* name_sum) {
  if (reduction == Reduction::none) {
    p.loss = loss.data<T>();
    cuda_rt::launch(name_none, elementwise_loss_kernel<T, Op>, dim3(elementwise_grid(p.n)), kThreads, 0, p);
    return;
  }
  const int64_t blocks = ceil_div(p.n, kElementsPerBlock);
  Tensor partials = partials_buffer(blocks, device);
  p.partials = partials.data<double>();
  cuda_rt::launch(name_sum, elementwise_sum_kernel<T, Op>, dim3(static_cast<unsigned>(blocks)), kThreads, 0, p);
  finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
}

template <class T, class Op>
void elementwise_backward(ElementwiseParams<T> p, const Tensor& dloss, Reduction reduction, Tensor& dinput,
                          const char* name) {
  if (p.n == 0) return;
  p.grad = dinput.data<T>();
  if (reduction == Reduction::none) p.upstream = dloss.data<T>();
  else p.dloss = dloss.data<T>();
  p.mean = reduction == Reduction::mean;
  cuda_rt::launch(name, elementwise_grad_kernel<T, Op>, dim3(elementwise_grid(p.n)), kThreads, 0, p);
}

}  // namespace

BadLabel cross_entropy_find_bad_label(const Tensor& target, int64_t classes, int64_t ignore_index) {
  return dispatch_index(target.dtype(), "target", [&](auto tag) {
    using I = decltype(tag);
    const int64_t rows = target.numel();
    if (rows == 0) return BadLabel{};
    const int64_t blocks = ceil_div(rows, kElementsPerBlock);
    Tensor scratch = Tensor::empty({blocks + 1}, DType::int64, target.device());
    int64_t* block_first = scratch.data<int64_t>();
    cuda_rt::launch("cross_entropy_bad_label_blocks", bad_label_blocks_kernel<I>, dim3(static_cast<unsigned>(blocks)),
                    kThreads, 0, target.data<I>(), rows, classes, ignore_index, block_first);
    // one block (a training batch: up to kElementsPerBlock labels) holds the answer itself
    if (blocks > 1)
      cuda_rt::launch("cross_entropy_bad_label_finish", bad_label_finish_kernel, dim3(1), kThreads, 0,
                      static_cast<const int64_t*>(block_first), blocks, block_first + blocks);
    int64_t first = 0;
    cuda_copy(&first, cpu_device(), block_first + (blocks > 1 ? blocks : 0), target.device(), sizeof first);
    if (first == INT64_MAX) return BadLabel{};
    I value{};
    cuda_copy(&value, cpu_device(), target.data<I>() + first, target.device(), sizeof value);
    return BadLabel{first, static_cast<int64_t>(value)};
  });
}

void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& weight,
                           Reduction reduction, int64_t ignore_index, Tensor& loss) {
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    if (reduction == Reduction::none) {
      p.row_loss = loss.data<T>();
      launch_rows(p);
      return;
    }
    const int64_t blocks = ceil_div(p.rows, kRowsPerBlock);
    Tensor partials = partials_buffer(blocks, logits.device());
    p.partials = partials.data<double>();
    launch_rows(p);
    finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& dloss,
                            const Tensor& weight, Reduction reduction, int64_t ignore_index,
                            Tensor& dlogits) {
  if (logits.size(0) == 0) return;
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    p.dlogits = dlogits.data<T>();
    Tensor denominator;
    if (reduction == Reduction::none) {
      p.row_upstream = dloss.data<T>();
    } else {
      p.dloss = dloss.data<T>();
      if (reduction == Reduction::mean) {
        denominator = total_weight(p, logits.device());
        p.denominator = denominator.data<double>();
      }
    }
    launch_rows(p);
  });
}

void cross_entropy_fused(const Tensor& logits, const Tensor& target, const Tensor& weight,
                         Reduction reduction, int64_t ignore_index, Tensor& loss, Tensor& dlogits) {
  dispatch_cross_entropy(logits, target, [&](auto ftag, auto itag) {
    using T = decltype(ftag);
    auto p = cross_entropy_params<T, decltype(itag)>(logits, target, weight, ignore_index);
    p.dlogits = dlogits.data<T>();
    Tensor denominator;
    if (reduction == Reduction::mean) {
      denominator = total_weight(p, logits.device());
      p.denominator = denominator.data<double>();
    }
    const int64_t blocks = ceil_div(p.rows, kRowsPerBlock);
    Tensor partials = partials_buffer(blocks, logits.device());
    p.partials = partials.data<double>();
    launch_rows(p);
    finish_loss<T>(partials, blocks, reduction == Reduction::mean, loss);
  });
}

void mse_forward(const Tensor& input, const Tensor& target, Reduction reduction, Tensor& loss) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    elementwise_forward<T, MseOp>(elementwise_params<T>(input, target), reduction, loss, input.device(),
                                  "mse_loss", "mse_sum");
  });
}

void mse_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                  Reduction reduction, Tensor& dinput) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    elementwise_backward<T, MseOp>(elementwise_params<T>(input, target), dloss, reduction, dinput, "mse_grad");
  });
}

void bce_with_logits_forward(const Tensor& input, const Tensor& target, const Tensor& weight,
                             const Tensor& pos_weight, Reduction reduction, Tensor& loss) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    ElementwiseParams<T> p = elementwise_params<T>(input, target);
    bce_options(p, weight, pos_weight);
    elementwise_forward<T, BceOp>(p, reduction, loss, input.device(), "bce_with_logits_loss",
                                  "bce_with_logits_sum");
  });
}

void bce_with_logits_backward(const Tensor& input, const Tensor& target, const Tensor& dloss,
                              const Tensor& weight, const Tensor& pos_weight, Reduction reduction,
                              Tensor& dinput) {
  dispatch_floating(input.dtype(), "input", [&](auto tag) {
    using T = decltype(tag);
    ElementwiseParams<T> p = elementwise_params<T>(input, target);
    bce_options(p, weight, pos_weight);
    elementwise_backward<T, BceOp>(p, dloss, reduction, dinput, "bce_with_logits_grad");
  });
}

}  // namespace cuda
}  // namespace fastnn
