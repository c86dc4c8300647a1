// CPU optimizer kernels: one vector loop per combination of options, compiled for the baseline
// ISA, AVX2 and AVX-512 and chosen at run time; one pass over memory, split across threads.
#include <type_traits>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "ops/optim.h"


namespace fastnn::cpu {
namespace {

// Calls f(std::bool_constant<b>{}...) for runtime flags b..., so that inside f each flag is a
// compile-time constant and its branch folds away.
template <class F>
void with_flags(F&& f) {
  f();
}
template <class F, class... Rest>
void with_flags(F&& f, bool first, Rest... rest) {
  if (first) with_flags([&](auto... later) { f(std::true_type{}, later...); }, rest...);
  else with_flags([&](auto... later) { f(std::false_type{}, later...); }, rest...);
}

// body(i) for i in [begin, end): the same loop compiled for three ISAs. `body` is an
// always-inline lambda, so its arithmetic is generated with the caller's instruction set.
template <class Body>
void span_baseline(int64_t begin, int64_t end, const Body& body) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) body(i);
}

#if defined(__x86_64__)
template <class Body>
__attribute__((target("avx2,fma"))) void span_avx2(int64_t begin, int64_t end, const Body& body) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) body(i);
}

template <class Body>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))) void span_avx512(
    int64_t begin, int64_t end, const Body& body) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) body(i);
}
#endif

// body(i) for i in [begin, end) on the calling thread, in the widest ISA available.
template <class Body>
void for_span(int64_t begin, int64_t end, const Body& body) {
#if defined(__x86_64__)
  const CpuIsa isa = cpu_isa();
  if (isa == CpuIsa::avx512) return span_avx512(begin, end, body);
  if (isa == CpuIsa::avx2) return span_avx2(begin, end, body);
#endif
  span_baseline(begin, end, body);
}

template <class Body>
void for_each_element(int64_t n, const Body& body) {
  parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) { for_span(begin, end, body); });
}

template <class T>
T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& momentum_buffer,
              const SgdOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const SgdScalars<T> s = SgdScalars<T>::from(o);
    T* const p = param.data<T>();
    const T* const g = grad.data<T>();
    T* const buf = optional_data<T>(momentum_buffer);
    const bool maximize = o.maximize;
    auto run = [&](auto decay, auto momentum, auto nesterov, auto first_step) {
      for_each_element(param.numel(), [=](int64_t i) FASTNN_ALWAYS_INLINE {
        T no_buffer = T(0);
        sgd_update<T>(p[i], g[i], momentum ? buf[i] : no_buffer, s, maximize, decay, momentum,
                      nesterov, first_step);
      });
    };
    with_flags([&](auto decay) {
      if (o.momentum == 0) return run(decay, std::false_type{}, std::false_type{}, std::false_type{});
      with_flags([&](auto nesterov, auto first_step) { run(decay, std::true_type{}, nesterov, first_step); },
                 o.nesterov, o.first_step);
    }, o.weight_decay != 0);
  });
}

template <class T>
void adam_range(const AdamArrays<T>& a, const AdamScalars<T>& s, const AdamOptions& o, int64_t begin,
                int64_t end) {
  const bool maximize = o.maximize;
  auto run = [&](auto decay, auto decoupled, auto amsgrad) {
    T* const p = a.param;
    const T* const g = a.grad;
    T* const m = a.exp_avg;
    T* const v = a.exp_avg_sq;
    T* const v_max = a.max_exp_avg_sq;
    for_span(begin, end, [=](int64_t i) FASTNN_ALWAYS_INLINE {
      T no_max = T(0);
      adam_update<T>(p[i], g[i], m[i], v[i], amsgrad ? v_max[i] : no_max, s, maximize, decay, decoupled,
                     amsgrad);
    });
  };
  with_flags([&](auto amsgrad) {
    if (o.weight_decay == 0) return run(std::false_type{}, std::false_type{}, amsgrad);
    with_flags([&](auto decoupled) { run(std::true_type{}, decoupled, amsgrad); }, o.decoupled_weight_decay);
  }, o.amsgrad);
}

template void adam_range<float>(const AdamArrays<float>&, const AdamScalars<float>&, const AdamOptions&,
                                int64_t, int64_t);
template void adam_range<double>(const AdamArrays<double>&, const AdamScalars<double>&,
                                 const AdamOptions&, int64_t, int64_t);

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
               const Tensor& exp_avg_sq, const Tensor& max_exp_avg_sq, const AdamOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const AdamScalars<T> s = AdamScalars<T>::from(o);
    const AdamArrays<T> a{param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                          optional_data<T>(max_exp_avg_sq)};
    parallel_for(param.numel(), kParallelGrain, [&](int64_t begin, int64_t end) { adam_range(a, s, o, begin, end); });
  });
}

void rmsprop_step(const Tensor& param, const Tensor& grad, const Tensor& square_avg,
                  const Tensor& momentum_buffer, const Tensor& grad_avg, const RmspropOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const RmspropScalars<T> s = RmspropScalars<T>::from(o);
    T* const p = param.data<T>();
    const T* const g = grad.data<T>();
    T* const sq = square_avg.data<T>();
    T* const buf = optional_data<T>(momentum_buffer);
    T* const g_avg = optional_data<T>(grad_avg);
    const bool maximize = o.maximize;
    with_flags([&](auto decay, auto centered, auto momentum) {
      for_each_element(param.numel(), [=](int64_t i) FASTNN_ALWAYS_INLINE {
        T no_buffer = T(0), no_avg = T(0);
        rmsprop_update<T>(p[i], g[i], sq[i], momentum ? buf[i] : no_buffer,
                          centered ? g_avg[i] : no_avg, s, maximize, decay, centered, momentum);
      });
    }, o.weight_decay != 0, o.centered, o.momentum > 0);
  });
}

void adagrad_step(const Tensor& param, const Tensor& grad, const Tensor& state_sum,
                  const AdagradOptions& o) {
  dispatch_floating(param.dtype(), "param", [&](auto tag) {
    using T = decltype(tag);
    const AdagradScalars<T> s = AdagradScalars<T>::from(o);
    T* const p = param.data<T>();
    const T* const g = grad.data<T>();
    T* const sum = state_sum.data<T>();
    const bool maximize = o.maximize;
    with_flags([&](auto decay) {
      for_each_element(param.numel(), [=](int64_t i) FASTNN_ALWAYS_INLINE {
        adagrad_update<T>(p[i], g[i], sum[i], s, maximize, decay);
      });
    }, o.weight_decay != 0);
  });
}

}  // namespace fastnn::cpu
