// BatchNorm1d on the CPU. (N, C) is row-major, so a column's values are C apart: each kernel walks
// a strip of up to kStrip columns row by row, with the strip's accumulators on the stack and a
// contiguous, vectorisable inner loop across the strip. Threads own disjoint column ranges, and
// each column is reduced by one thread in row order: results do not depend on the thread count
// and need no atomics. Training forward: one read pass for the statistics, one to normalise.
// Each kernel is compiled for AVX-512, AVX2 and the baseline and picked at run time.
#include <algorithm>
#include <cmath>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "ops/batchnorm.h"


namespace fastnn::cpu {
namespace {

// Columns per strip: up to 64 KiB of accumulators and coefficients on the stack, and 2-4 KiB read
// contiguously per row. Narrower strips (64-256) measured slower once the input outgrows the
// caches: each row's short segment defeats the prefetchers.
constexpr int64_t kStrip = 512;

template <class T>
struct ForwardArgs {
  const T* x;
  T* y;
  int64_t rows, cols;
  const T* weight;  // nullptr: 1
  const T* bias;    // nullptr: 0
  T* running_mean;  // nullptr: not tracked
  T* running_var;
  double momentum, eps;
  double* save_mean;  // float64 for both dtypes: the statistics as accumulated
  double* save_invstd;
};

template <class T>
struct BackwardArgs {
  const T* x;
  const T* dy;
  T* dx;
  int64_t rows, cols;
  const T* weight;  // nullptr: 1
  const double* save_mean;
  const double* save_invstd;
  T* dweight;  // nullptr: not wanted
  T* dbias;
  bool accumulate;
};

// Training forward over columns [c0, c0 + w): Welford statistics, running-stat update, normalise.
template <class T>
struct ForwardTrainStrip {
  using Args = ForwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    double mean[kStrip], m2[kStrip];
    for (int64_t c = 0; c < w; ++c) mean[c] = m2[c] = 0.0;
    for (int64_t n = 0; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      const double r = 1.0 / static_cast<double>(n + 1);
      for (int64_t c = 0; c < w; ++c) welford_update(mean[c], m2[c], static_cast<double>(row[c]), r);
    }
    T hi[kStrip], lo[kStrip], scale[kStrip], shift[kStrip];
    const double n = static_cast<double>(a.rows);
    for (int64_t c = 0; c < w; ++c) {
      const int64_t col = c0 + c;
      finish_batch_stats(n, mean[c], m2[c], a.eps, a.momentum, a.save_mean[col], a.save_invstd[col],
                         a.running_mean ? a.running_mean + col : nullptr,
                         a.running_var ? a.running_var + col : nullptr);
      split_hi_lo(mean[c], hi[c], lo[c]);
      scale[c] = static_cast<T>(batchnorm_gain(a.save_invstd[col], a.weight, col));
      shift[c] = batchnorm_shift(a.bias, col);
    }
    for (int64_t n = 0; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      T* out = a.y + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) out[c] = ((row[c] - hi[c]) - lo[c]) * scale[c] + shift[c];
    }
  }
};

// Eval forward over rows [r0, r0 + count): elementwise with the running statistics, which the
// caller has already written to save_mean / save_invstd.
template <class T>
struct ForwardEvalRows {
  using Args = ForwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t r0, int64_t count) {
    const T* mean = a.running_mean;  // x - mean in T: exact near the mean, as mean is a T
    const double* invstd = a.save_invstd;
    for (int64_t n = r0; n < r0 + count; ++n) {
      const T* row = a.x + n * a.cols;
      T* out = a.y + n * a.cols;
      if (a.weight && a.bias) {
        for (int64_t c = 0; c < a.cols; ++c) out[c] = (row[c] - mean[c]) * static_cast<T>(invstd[c] * a.weight[c]) + a.bias[c];
      } else if (a.weight) {
        for (int64_t c = 0; c < a.cols; ++c) out[c] = (row[c] - mean[c]) * static_cast<T>(invstd[c] * a.weight[c]);
      } else if (a.bias) {
        for (int64_t c = 0; c < a.cols; ++c) out[c] = (row[c] - mean[c]) * static_cast<T>(invstd[c]) + a.bias[c];
      } else {
        for (int64_t c = 0; c < a.cols; ++c) out[c] = (row[c] - mean[c]) * static_cast<T>(invstd[c]);
      }
    }
  }
};

// Training backward over columns [c0, c0 + w). With xhat = (x - mean) * invstd, k = weight * invstd:
//   dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)),  dweight = sum(dy * xhat),  dbias = sum(dy).
// Pass 1 sums u = x - save_mean, dy and dy * u; the batch mean is save_mean + mean(u) (save_mean
// may have been rounded), and sum(dy * (x - mean)) = sum(dy * u) - mean(u) * sum(dy).
//
// dx = k * dy + k_x * (x - mean) + k_0 cancels when dx is small next to k * dy: projecting dy off
// 1 and xhat removes most of it when N is tiny (at N = 2, all but a fraction eps / var). Such
// strips form dx in double; for float32 the others use float arithmetic, several times faster,
// with an error of a few float ulps of k * |dy|, which the residual test keeps within 4x of |dx|.
template <class T>
struct BackwardTrainStrip {
  using Args = BackwardArgs<T>;
  static constexpr bool kFloat = sizeof(T) < sizeof(double);

  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    double shift[kStrip], sum_u[kStrip], sum_dy[kStrip], sum_dy_u[kStrip], sum_u2[kStrip], sum_dy2[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      shift[c] = a.save_mean[c0 + c];
      sum_u[c] = sum_dy[c] = sum_dy_u[c] = sum_u2[c] = sum_dy2[c] = 0.0;
    }
    int64_t n = 0;
    if constexpr (kFloat) {
      // Blocks of 8 rows summed in float (u = x - save_mean, formed exactly near the mean with
      // the hi/lo split), then added to the double accumulators: a quarter of the double work,
      // and 8-term float sums lose nothing a float32 gradient can show.
      T hi[kStrip], lo[kStrip];
      for (int64_t c = 0; c < w; ++c) split_hi_lo(shift[c], hi[c], lo[c]);
      for (; n + 8 <= a.rows; n += 8) {
        const T* row = a.x + n * a.cols + c0;
        const T* g = a.dy + n * a.cols + c0;
        for (int64_t c = 0; c < w; ++c) {
          T su = 0, sd = 0, sdu = 0, su2 = 0, sd2 = 0;
#pragma GCC unroll 8
          for (int r = 0; r < 8; ++r) {
            const T u = (row[r * a.cols + c] - hi[c]) - lo[c], gc = g[r * a.cols + c];
            su += u;
            sd += gc;
            sdu += gc * u;
            su2 += u * u;
            sd2 += gc * gc;
          }
          sum_u[c] += su;
          sum_dy[c] += sd;
          sum_dy_u[c] += sdu;
          sum_u2[c] += su2;
          sum_dy2[c] += sd2;
        }
      }
    }
    for (; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      const T* g = a.dy + n * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) {
        const double u = static_cast<double>(row[c]) - shift[c], gc = static_cast<double>(g[c]);
        sum_u[c] += u;
        sum_dy[c] += gc;
        sum_dy_u[c] += gc * u;
        if constexpr (kFloat) {
          sum_u2[c] += u * u;
          sum_dy2[c] += gc * gc;
        }
      }
    }
    double mean[kStrip], k_dy[kStrip], k_x[kStrip], k_0[kStrip];
    bool exact = false;
    for (int64_t c = 0; c < w; ++c) {
      const int64_t col = c0 + c;
      const double invstd = a.save_invstd[col];
      const BatchnormBackwardCoefs k =
          batchnorm_backward_coefs(a.rows, shift[c], invstd, batchnorm_gain(invstd, a.weight, col), sum_u[c],
                                   sum_dy[c], sum_dy_u[c], sum_u2[c], sum_dy2[c], kFloat);
      if (a.dweight) store_grad(a.dweight, col, k.dweight, a.accumulate);
      if (a.dbias) store_grad(a.dbias, col, k.dbias, a.accumulate);
      mean[c] = k.mean;
      k_dy[c] = k.k_dy;
      k_x[c] = k.k_x;
      k_0[c] = k.k_0;
      exact = exact || k.exact;
    }
    if (exact) {
      for (int64_t r = 0; r < a.rows; ++r) {
        const T* row = a.x + r * a.cols + c0;
        const T* g = a.dy + r * a.cols + c0;
        T* out = a.dx + r * a.cols + c0;
        for (int64_t c = 0; c < w; ++c) {
          const double u = static_cast<double>(row[c]) - mean[c];
          out[c] = static_cast<T>(k_dy[c] * static_cast<double>(g[c]) + k_x[c] * u + k_0[c]);
        }
      }
      return;
    }
    T hi[kStrip], lo[kStrip], f_dy[kStrip], f_x[kStrip], f_0[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      split_hi_lo(mean[c], hi[c], lo[c]);
      f_dy[c] = static_cast<T>(k_dy[c]);
      f_x[c] = static_cast<T>(k_x[c]);
      f_0[c] = static_cast<T>(k_0[c]);
    }
    for (int64_t r = 0; r < a.rows; ++r) {
      const T* row = a.x + r * a.cols + c0;
      const T* g = a.dy + r * a.cols + c0;
      T* out = a.dx + r * a.cols + c0;
      for (int64_t c = 0; c < w; ++c) out[c] = f_dy[c] * g[c] + f_x[c] * ((row[c] - hi[c]) - lo[c]) + f_0[c];
    }
  }
};

// Eval backward over columns [c0, c0 + w): dx = dy * weight * invstd in the same pass that sums
// dy and dy * (x - mean) for the parameter gradients.
template <class T>
struct BackwardEvalStrip {
  using Args = BackwardArgs<T>;
  static FASTNN_FORCE_INLINE void run(const Args& a, int64_t c0, int64_t w) {
    T k[kStrip];
    double mean[kStrip], sum_dy[kStrip], sum_dy_u[kStrip];
    for (int64_t c = 0; c < w; ++c) {
      const double invstd = a.save_invstd[c0 + c];
      k[c] = static_cast<T>(batchnorm_gain(invstd, a.weight, c0 + c));
      mean[c] = a.save_mean[c0 + c];
      sum_dy[c] = sum_dy_u[c] = 0.0;
    }
    const bool sums = a.dweight || a.dbias;
    for (int64_t n = 0; n < a.rows; ++n) {
      const T* row = a.x + n * a.cols + c0;
      const T* g = a.dy + n * a.cols + c0;
      T* out = a.dx + n * a.cols + c0;
      if (sums) {
        for (int64_t c = 0; c < w; ++c) {
          const double gc = static_cast<double>(g[c]);
          sum_dy[c] += gc;
          sum_dy_u[c] += gc * (static_cast<double>(row[c]) - mean[c]);
          out[c] = g[c] * k[c];
        }
      } else {
        for (int64_t c = 0; c < w; ++c) out[c] = g[c] * k[c];
      }
    }
    for (int64_t c = 0; c < w; ++c) {
      if (a.dweight)
        store_grad(a.dweight, c0 + c, a.save_invstd[c0 + c] * sum_dy_u[c], a.accumulate);
      if (a.dbias) store_grad(a.dbias, c0 + c, sum_dy[c], a.accumulate);
    }
  }
};

// Kernel::run compiled for each ISA; the caller picks one at run time.
template <class Kernel>
FASTNN_TARGET_AVX512 void run_avx512(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}
template <class Kernel>
FASTNN_TARGET_AVX2 void run_avx2(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}
template <class Kernel>
void run_baseline(const typename Kernel::Args& a, int64_t begin, int64_t count) {
  Kernel::run(a, begin, count);
}

template <class Kernel>
auto isa_variant() {
  switch (cpu_isa()) {
    case CpuIsa::avx512: return &run_avx512<Kernel>;
    case CpuIsa::avx2: return &run_avx2<Kernel>;
    default: return &run_baseline<Kernel>;
  }
}

// Runs a strip kernel over all columns: threads take contiguous column ranges, each walked in
// strips of at most kStrip columns.
template <class Kernel>
void over_column_strips(const typename Kernel::Args& a, int64_t rows, int64_t cols) {
  auto* strip = isa_variant<Kernel>();
  const int64_t grain = std::max<int64_t>(16, kParallelGrain / std::max<int64_t>(rows, 1));
  parallel_for(cols, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c0 = begin; c0 < end; c0 += kStrip) strip(a, c0, std::min(kStrip, end - c0));
  }, 16);
}

template <class T>
const T* data_or_null(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

}  // namespace

void batchnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                       const Tensor& running_mean, const Tensor& running_var, bool training,
                       double momentum, double eps, Tensor& y, Tensor& save_mean, Tensor& save_invstd) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    ForwardArgs<T> a{x.data<T>(), y.data<T>(), rows, cols, data_or_null<T>(weight), data_or_null<T>(bias),
                     running_mean.defined() ? running_mean.data<T>() : nullptr,
                     running_var.defined() ? running_var.data<T>() : nullptr,
                     momentum, eps, save_mean.data<double>(), save_invstd.data<double>()};
    if (training) {
      over_column_strips<ForwardTrainStrip<T>>(a, rows, cols);
      return;
    }
    for (int64_t c = 0; c < cols; ++c) {
      a.save_mean[c] = static_cast<double>(a.running_mean[c]);
      a.save_invstd[c] = batchnorm_invstd(static_cast<double>(a.running_var[c]), eps);
    }
    auto* rows_kernel = isa_variant<ForwardEvalRows<T>>();
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)),
                 [&](int64_t begin, int64_t end) { rows_kernel(a, begin, end - begin); }, 1);
  });
}

void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& weight,
                        const Tensor& save_mean, const Tensor& save_invstd, bool training,
                        Tensor& dx, Tensor& dweight, Tensor& dbias, bool accumulate) {
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows = x.size(0), cols = x.size(1);
    BackwardArgs<T> a{x.data<T>(), dy.data<T>(), dx.data<T>(), rows, cols, data_or_null<T>(weight),
                      save_mean.data<double>(), save_invstd.data<double>(),
                      dweight.defined() ? dweight.data<T>() : nullptr,
                      dbias.defined() ? dbias.data<T>() : nullptr, accumulate};
    if (training) over_column_strips<BackwardTrainStrip<T>>(a, rows, cols);
    else over_column_strips<BackwardEvalStrip<T>>(a, rows, cols);
  });
}

}  // namespace fastnn::cpu
