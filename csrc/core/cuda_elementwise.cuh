// Elementwise kernels over contiguous buffers: out[i] = op(a[i]) or op(a[i], b[i]). 16-byte vector
// loads and stores (float4 / double2) when every pointer is 16-byte aligned, which cudaMalloc'd
// tensors are unless they are views at an odd offset; scalar otherwise. Outputs may alias inputs.
#pragma once
#include "core/cuda_launch.h"

namespace fastnn::cuda_rt {

template <class T> struct Vec16;
template <> struct Vec16<float> {
  using type = float4;
  static constexpr int width = 4;
  template <class F>
  __device__ __forceinline__ static float4 map(float4 a, F f) { return make_float4(f(a.x), f(a.y), f(a.z), f(a.w)); }
  template <class F>
  __device__ __forceinline__ static float4 map(float4 a, float4 b, F f) {
    return make_float4(f(a.x, b.x), f(a.y, b.y), f(a.z, b.z), f(a.w, b.w));
  }
};
template <> struct Vec16<double> {
  using type = double2;
  static constexpr int width = 2;
  template <class F>
  __device__ __forceinline__ static double2 map(double2 a, F f) { return make_double2(f(a.x), f(a.y)); }
  template <class F>
  __device__ __forceinline__ static double2 map(double2 a, double2 b, F f) {
    return make_double2(f(a.x, b.x), f(a.y, b.y));
  }
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, class Op, bool kVector>
__global__ void unary_kernel(int64_t n, Op op, const T* a, T* out) {
  using V = Vec16<T>;
  int64_t i = global_thread_index();
  if (kVector) {
    const int64_t nv = n / V::width;
    for (int64_t j = i; j < nv; j += grid_stride())
      reinterpret_cast<typename V::type*>(out)[j] = V::map(reinterpret_cast<const typename V::type*>(a)[j], op);
    i += nv * V::width;  // the tail: fewer than `width` elements, one per thread
  }
  for (; i < n; i += grid_stride()) out[i] = op(a[i]);
}

template <class T, class Op, bool kVector>
__global__ void binary_kernel(int64_t n, Op op, const T* a, const T* b, T* out) {
  using V = Vec16<T>;
  int64_t i = global_thread_index();
  if (kVector) {
    const int64_t nv = n / V::width;
    for (int64_t j = i; j < nv; j += grid_stride())
      reinterpret_cast<typename V::type*>(out)[j] = V::map(reinterpret_cast<const typename V::type*>(a)[j],
                                                           reinterpret_cast<const typename V::type*>(b)[j], op);
    i += nv * V::width;
  }
  for (; i < n; i += grid_stride()) out[i] = op(a[i], b[i]);
}

constexpr unsigned kElementwiseThreads = 256;

// out[i] = op(a[i]) for i < n; op is a trivially copyable functor with a __device__ operator().
template <class T, class Op>
void unary(const char* name, int64_t n, Op op, const T* a, T* out) {
  const dim3 grid(grid_for(n, kElementwiseThreads, Vec16<T>::width));
  if (aligned16(a) && aligned16(out))
    launch(name, unary_kernel<T, Op, true>, grid, dim3(kElementwiseThreads), 0, n, op, a, out);
  else
    launch(name, unary_kernel<T, Op, false>, grid, dim3(kElementwiseThreads), 0, n, op, a, out);
}

// out[i] = op(a[i], b[i]) for i < n.
template <class T, class Op>
void binary(const char* name, int64_t n, Op op, const T* a, const T* b, T* out) {
  const dim3 grid(grid_for(n, kElementwiseThreads, Vec16<T>::width));
  if (aligned16(a) && aligned16(b) && aligned16(out))
    launch(name, binary_kernel<T, Op, true>, grid, dim3(kElementwiseThreads), 0, n, op, a, b, out);
  else
    launch(name, binary_kernel<T, Op, false>, grid, dim3(kElementwiseThreads), 0, n, op, a, b, out);
}

}  // namespace fastnn::cuda_rt
