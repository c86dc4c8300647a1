#include "ops/activation_kernels.cuh"

namespace fastnn::cuda {
namespace {

template <class F>
void with_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::relu: f(std::integral_constant<Activation, Activation::relu>{}); break;
    case Activation::tanh: f(std::integral_constant<Activation, Activation::tanh>{}); break;
    case Activation::sigmoid: f(std::integral_constant<Activation, Activation::sigmoid>{}); break;
    default: f(std::integral_constant<Activation, Activation::none>{}); break;
  }
}

// rows x cols softmax (or its backward): launches `kernel<per_warp, log>` with the grid it needs.
template <class Launch>
void softmax_rows(int64_t rows, int64_t cols, bool log, Launch&& run) {
  if (rows == 0 || cols == 0) return;
  const bool per_warp = cols <= kWarpRowCols;
  const dim3 grid(per_warp ? static_cast<unsigned>((rows + kSoftmaxThreads / 32 - 1) / (kSoftmaxThreads / 32))
                           : static_cast<unsigned>(rows));
  const dim3 block(kSoftmaxThreads);
  if (per_warp) {
    if (log) run(std::true_type{}, std::true_type{}, grid, block);
    else run(std::true_type{}, std::false_type{}, grid, block);
  } else {
    if (log) run(std::false_type{}, std::true_type{}, grid, block);
    else run(std::false_type{}, std::false_type{}, grid, block);
  }
}

}  // namespace

void activation_forward(Activation a, const Tensor& x, Tensor& y) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    with_activation(a, [&](auto act) {
      cuda_rt::unary("activation_forward", x.numel(), ActivationForwardOp<decltype(act)::value>{},
                     x.data<T>(), y.data<T>());
    });
  });
}

void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx) {
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    with_activation(a, [&](auto act) {
      cuda_rt::binary("activation_backward", y.numel(), ActivationBackwardOp<decltype(act)::value>{},
                      y.data<T>(), dy.data<T>(), dx.data<T>());
    });
  });
}

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    softmax_rows(rows, cols, log, [&](auto per_warp, auto is_log, dim3 grid, dim3 block) {
      cuda_rt::launch("softmax_forward", softmax_forward_kernel<decltype(per_warp)::value, decltype(is_log)::value, T>,
                      grid, block, 0, x.data<T>(), y.data<T>(), rows, cols);
    });
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  const int64_t cols = y.dim() ? y.size(-1) : 1;
  const int64_t rows = cols ? y.numel() / cols : 0;
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    softmax_rows(rows, cols, log, [&](auto per_warp, auto is_log, dim3 grid, dim3 block) {
      cuda_rt::launch("softmax_backward", softmax_backward_kernel<decltype(per_warp)::value, decltype(is_log)::value, T>,
                      grid, block, 0, y.data<T>(), dy.data<T>(), dx.data<T>(), rows, cols);
    });
  });
}

}  // namespace fastnn::cuda
