#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "ops/activation.h"

namespace fastnn::cpu {

void activation_forward(Activation a, const Tensor& x, Tensor& y) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    parallel_for(x.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = activation_apply(a, in[i]);
    });
  });
}

void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx) {
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    const T* out = y.data<T>();
    const T* g = dy.data<T>();
    T* gx = dx.data<T>();
    parallel_for(y.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) gx[i] = activation_grad(a, out[i], g[i]);
    });
  });
}

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = in + r * cols;
        T* yr = out + r * cols;
        T m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, xr[c]);
        if (std::isinf(m)) m = 0;  // all -inf row: keep NaN-free arithmetic below
        T s = 0;
        for (int64_t c = 0; c < cols; ++c) s += std::exp(xr[c] - m);
        if (log) {
          const T lse = m + std::log(s);
          for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - lse;
        } else {
          const T inv = T(1) / s;
          for (int64_t c = 0; c < cols; ++c) yr[c] = std::exp(xr[c] - m) * inv;
        }
      }
    }, 1);
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  const int64_t cols = y.dim() ? y.size(-1) : 1;
  const int64_t rows = cols ? y.numel() / cols : 0;
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    const T* out = y.data<T>();
    const T* g = dy.data<T>();
    T* gx = dx.data<T>();
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* yr = out + r * cols;
        const T* gr = g + r * cols;
        T* xr = gx + r * cols;
        T s = 0;
        if (log) {
          // d log_softmax: dx = dy - softmax * sum(dy)
          for (int64_t c = 0; c < cols; ++c) s += gr[c];
          for (int64_t c = 0; c < cols; ++c) xr[c] = gr[c] - std::exp(yr[c]) * s;
        } else {
          // d softmax: dx = y * (dy - sum(dy * y))
          for (int64_t c = 0; c < cols; ++c) s += gr[c] * yr[c];
          for (int64_t c = 0; c < cols; ++c) xr[c] = yr[c] * (gr[c] - s);
        }
      }
    }, 1);
  });
}

}  // namespace fastnn::cpu
