// Elementwise activations: the activation is a template parameter, so each loop is straight-line
// arithmetic the compiler vectorises (a switch inside the loop kept relu scalar and branchy: 4 ns
// an element on random signs, 13x numpy). Each loop is compiled for the baseline, AVX2 and
// AVX-512, and cpu_isa() picks at run time.
#include <algorithm>
#include <cmath>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/streaming.h"
#include "ops/activation.h"

namespace fastnn::cpu {
namespace {

template <Activation A, class T>
FASTNN_FORCE_INLINE void forward_range(const T* in, T* out, int64_t b, int64_t e,
                                       StreamLines stream) {
  for_outputs(out, b, e, stream, [=](int64_t i) FASTNN_ALWAYS_INLINE { return activation_apply(A, in[i]); });
  end_streaming(stream);
}

template <Activation A, class T>
FASTNN_FORCE_INLINE void backward_range(const T* y, const T* dy, T* dx, int64_t b, int64_t e,
                                        StreamLines stream) {
  for_outputs(dx, b, e, stream, [=](int64_t i) FASTNN_ALWAYS_INLINE { return activation_grad(A, y[i], dy[i]); });
  end_streaming(stream);
}

template <Activation A, class T>
FASTNN_TARGET_AVX512 void forward_avx512(const T* in, T* out, int64_t b, int64_t e, bool stream) {
  forward_range<A>(in, out, b, e, stream ? stream_lines_for(CpuIsa::avx512) : nullptr);
}
template <Activation A, class T>
FASTNN_TARGET_AVX2 void forward_avx2(const T* in, T* out, int64_t b, int64_t e, bool stream) {
  forward_range<A>(in, out, b, e, stream ? stream_lines_for(CpuIsa::avx2) : nullptr);
}
template <Activation A, class T>
void forward_base(const T* in, T* out, int64_t b, int64_t e, bool stream) {
  forward_range<A>(in, out, b, e, stream ? stream_lines_for(CpuIsa::scalar) : nullptr);
}

template <Activation A, class T>
FASTNN_TARGET_AVX512 void backward_avx512(const T* y, const T* dy, T* dx, int64_t b, int64_t e, bool stream) {
  backward_range<A>(y, dy, dx, b, e, stream ? stream_lines_for(CpuIsa::avx512) : nullptr);
}
template <Activation A, class T>
FASTNN_TARGET_AVX2 void backward_avx2(const T* y, const T* dy, T* dx, int64_t b, int64_t e, bool stream) {
  backward_range<A>(y, dy, dx, b, e, stream ? stream_lines_for(CpuIsa::avx2) : nullptr);
}
template <Activation A, class T>
void backward_base(const T* y, const T* dy, T* dx, int64_t b, int64_t e, bool stream) {
  backward_range<A>(y, dy, dx, b, e, stream ? stream_lines_for(CpuIsa::scalar) : nullptr);
}

// f(tag) with tag an Activation constant (none included).
template <class F>
void dispatch_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::relu: return f(std::integral_constant<Activation, Activation::relu>{});
    case Activation::tanh: return f(std::integral_constant<Activation, Activation::tanh>{});
    case Activation::sigmoid: return f(std::integral_constant<Activation, Activation::sigmoid>{});
    default: return f(std::integral_constant<Activation, Activation::none>{});
  }
}


// Softmax rows [b, e) of `cols` values: the max, then exp(x - max) (at most 1, so fast_math's
// vectorised exp) summed as it is stored, then one scaling pass over the row, in L1 or L2 by then.
// libm's exp per element, twice (once for the sum, once for the output), kept the loops scalar:
// 4096 x 1000 float32 took 16.1 ms against torch's 1.8. A row whose max is infinite (or that is
// all NaN) keeps that scalar form, whose inf - inf = NaN and 0 / 0 the CUDA kernels reproduce.
template <bool kLog, class T>
void softmax_row_nonfinite_max(const T* xr, T* yr, int64_t cols) {
  T m = 0;  // the max taken as 0 (activation_kernels.cuh does the same)
  T s = 0;
  for (int64_t c = 0; c < cols; ++c) s += std::exp(xr[c] - m);
  if (kLog) {
    const T lse = m + std::log(s);
    for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - lse;
  } else {
    const T inv = T(1) / s;
    for (int64_t c = 0; c < cols; ++c) yr[c] = std::exp(xr[c] - m) * inv;
  }
}

// Below this many columns a row's loops are too short to vectorise (a 10-class row is all loop
// epilogue), so softmax_few_columns exponentiates a tile of rows as one flat loop instead.
constexpr int64_t kFewColumns = 64;
constexpr int64_t kTileElements = 1024;

template <bool kLog, class T>
FASTNN_FORCE_INLINE void softmax_few_columns(const T* in, T* out, int64_t cols, int64_t b, int64_t e) {
  alignas(64) T ex[kTileElements];
  T maxes[kTileElements];
  const int64_t tile_rows = kTileElements / cols;
  for (int64_t r0 = b; r0 < e; r0 += tile_rows) {
    const int64_t rows = std::min(e - r0, tile_rows), n = rows * cols;
    const T* x = in + r0 * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const T m = fastmath::max_of(x + r * cols, cols);
      maxes[r] = m;
      for (int64_t c = 0; c < cols; ++c) ex[r * cols + c] = x[r * cols + c] - m;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ex[i] = fastmath::exp_nonpositive(ex[i]);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      T* yr = out + (r0 + r) * cols;
      if (!std::isfinite(maxes[r])) {
        softmax_row_nonfinite_max<kLog>(xr, yr, cols);
        continue;
      }
      const T s = fastmath::sum_of(ex + r * cols, cols);
      if (kLog) {
        const T lse = maxes[r] + std::log(s);
        for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - lse;
      } else {
        const T inv = T(1) / s;
        for (int64_t c = 0; c < cols; ++c) yr[c] = ex[r * cols + c] * inv;
      }
    }
  }
}

template <bool kLog, class T>
FASTNN_FORCE_INLINE void softmax_rows(const T* in, T* out, int64_t cols, int64_t b, int64_t e) {
  if (cols < kFewColumns) return softmax_few_columns<kLog>(in, out, cols, b, e);
  // Row r's exponential loop also takes row r + 1's max, so that row's loads from memory overlap
  // the exponentials' arithmetic; a max pass of its own stalled on them with nothing to overlap.
  // Alternated in one process, 2 threads, Zen 3: 16777 x 1000 float32 1.35x (log-softmax 1.22x),
  // 4096 x 4096 1.30x (1.24x), float64 8192 x 1000 1.22x (1.21x), 65536 x 256 1.22x (1.24x),
  // and in cache 1024 x 1000 1.10x (1.11x), 128 x 1024 1.15x (1.04x).
  T m = b < e ? fastmath::max_of(in + b * cols, cols) : T(0);
  for (int64_t r = b; r < e; ++r) {
    const T* xr = in + r * cols;
    T* yr = out + r * cols;
    const T* next = r + 1 < e ? xr + cols : xr;  // the last row's max again, unused: no branch in the loop
    if (!std::isfinite(m)) {
      softmax_row_nonfinite_max<kLog>(xr, yr, cols);
      m = fastmath::max_of(next, cols);
      continue;
    }
    T s = 0, m_next = -INFINITY;
    if (kLog) {
#pragma omp simd reduction(+ : s) reduction(max : m_next)
      for (int64_t c = 0; c < cols; ++c) {
        s += fastmath::exp_nonpositive(xr[c] - m);
        m_next = next[c] > m_next ? next[c] : m_next;
      }
      const T lse = m + std::log(s);
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - lse;
    } else {
#pragma omp simd reduction(+ : s) reduction(max : m_next)
      for (int64_t c = 0; c < cols; ++c) {
        const T v = fastmath::exp_nonpositive(xr[c] - m);
        yr[c] = v;
        s += v;
        m_next = next[c] > m_next ? next[c] : m_next;
      }
      const T inv = T(1) / s;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
    }
    m = m_next;
  }
}

// softmax: dx = y (dy - sum(dy y)); log-softmax: dx = dy - exp(y) sum(dy), with y <= 0 as
// log-softmax makes it (a row with a positive y, which no log-softmax gives, takes libm's exp).
template <bool kLog, class T>
FASTNN_FORCE_INLINE void softmax_grad_rows(const T* y, const T* dy, T* dx, int64_t cols, int64_t b, int64_t e) {
  for (int64_t r = b; r < e; ++r) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* xr = dx + r * cols;
    T s = 0;
    if (kLog) {
      T y_max = -INFINITY;
#pragma omp simd reduction(+ : s) reduction(max : y_max)
      for (int64_t c = 0; c < cols; ++c) {
        s += gr[c];
        y_max = yr[c] > y_max ? yr[c] : y_max;
      }
      if (y_max > T(0)) {
        for (int64_t c = 0; c < cols; ++c) xr[c] = gr[c] - std::exp(yr[c]) * s;
        continue;
      }
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) xr[c] = gr[c] - fastmath::exp_nonpositive(yr[c]) * s;
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < cols; ++c) s += gr[c] * yr[c];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) xr[c] = yr[c] * (gr[c] - s);
    }
  }
}

template <bool kLog, class T>
FASTNN_TARGET_AVX512 void softmax_avx512(const T* in, T* out, int64_t cols, int64_t b, int64_t e) {
  softmax_rows<kLog>(in, out, cols, b, e);
}
template <bool kLog, class T>
FASTNN_TARGET_AVX2 void softmax_avx2(const T* in, T* out, int64_t cols, int64_t b, int64_t e) {
  softmax_rows<kLog>(in, out, cols, b, e);
}
template <bool kLog, class T>
void softmax_base(const T* in, T* out, int64_t cols, int64_t b, int64_t e) { softmax_rows<kLog>(in, out, cols, b, e); }

template <bool kLog, class T>
FASTNN_TARGET_AVX512 void softmax_grad_avx512(const T* y, const T* dy, T* dx, int64_t cols, int64_t b, int64_t e) {
  softmax_grad_rows<kLog>(y, dy, dx, cols, b, e);
}
template <bool kLog, class T>
FASTNN_TARGET_AVX2 void softmax_grad_avx2(const T* y, const T* dy, T* dx, int64_t cols, int64_t b, int64_t e) {
  softmax_grad_rows<kLog>(y, dy, dx, cols, b, e);
}
template <bool kLog, class T>
void softmax_grad_base(const T* y, const T* dy, T* dx, int64_t cols, int64_t b, int64_t e) {
  softmax_grad_rows<kLog>(y, dy, dx, cols, b, e);
}

}  // namespace

void activation_forward(Activation a, const Tensor& x, Tensor& y) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    dispatch_activation(a, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      auto* range = isa_variant(forward_avx512<A, T>, forward_avx2<A, T>, forward_base<A, T>);
      const T* in = x.data<T>();
      T* out = y.data<T>();
      const bool stream = 2 * x.numel() * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes;
      parallel_for(x.numel(), kParallelGrain, [&](int64_t b, int64_t e) { range(in, out, b, e, stream); });
    });
  });
}

void activation_backward(Activation a, const Tensor& y, const Tensor& dy, Tensor& dx) {
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    dispatch_activation(a, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      auto* range = isa_variant(backward_avx512<A, T>, backward_avx2<A, T>, backward_base<A, T>);
      const T* out = y.data<T>();
      const T* g = dy.data<T>();
      T* gx = dx.data<T>();
      const bool stream = 3 * y.numel() * static_cast<int64_t>(sizeof(T)) > kStreamPassBytes;
      parallel_for(y.numel(), kParallelGrain, [&](int64_t b, int64_t e) { range(out, g, gx, b, e, stream); });
    });
  });
}

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    auto* kernel = log ? isa_variant(softmax_avx512<true, T>, softmax_avx2<true, T>, softmax_base<true, T>)
                       : isa_variant(softmax_avx512<false, T>, softmax_avx2<false, T>, softmax_base<false, T>);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      kernel(in, out, cols, b, e);
    }, 1);
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  const int64_t cols = y.dim() ? y.size(-1) : 1;
  const int64_t rows = cols ? y.numel() / cols : 0;
  dispatch_floating(y.dtype(), "y", [&](auto tag) {
    using T = decltype(tag);
    auto* kernel = log ? isa_variant(softmax_grad_avx512<true, T>, softmax_grad_avx2<true, T>, softmax_grad_base<true, T>)
                       : isa_variant(softmax_grad_avx512<false, T>, softmax_grad_avx2<false, T>, softmax_grad_base<false, T>);
    const T* out = y.data<T>();
    const T* g = dy.data<T>();
    T* gx = dx.data<T>();
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      kernel(out, g, gx, cols, b, e);
    }, 1);
  });
}

}  // namespace fastnn::cpu
