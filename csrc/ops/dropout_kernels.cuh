// Dropout kernels. One thread per 8 elements, 8g .. 8g+7, which one Philox quad serves (a quad
// serves 128 / b elements at b bits each, b <= 16): their draws from dropout_words(seed, offset,
// 8g / (128 / b)) (ops/philox.h), exactly as the CPU takes them, so masks are bit-identical to the
// CPU's whatever the launch shape; and the value math is the same single multiply, so outputs are
// bit-identical too. At b < 16 neighbouring threads compute the same quad: the loads stay coalesced,
// and the Philox work per thread is what it is at 16 bits.
#pragma once
#include "core/cuda_launch.h"
#include "ops/dropout.h"

namespace fastnn::cuda {

enum class DropoutKind { forward, forward_relu, backward, mask };

constexpr int kDropoutPerThread = kDropoutMinPerQuad;  // elements: one quad serves them at any bit count

template <class T>
__device__ __forceinline__ void load4(const T* p, T v[4], bool vector) {
  if constexpr (sizeof(T) == 4) {
    if (vector) {
      const float4 q = *reinterpret_cast<const float4*>(p);
      v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
      return;
    }
  } else {
    if (vector) {
      const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
      v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
      return;
    }
  }
  for (int k = 0; k < 4; ++k) v[k] = p[k];
}

template <class T>
__device__ __forceinline__ void store4(T* p, const T v[4], bool vector) {
  if constexpr (sizeof(T) == 4) {
    if (vector) {
      *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
      return;
    }
  } else {
    if (vector) {
      reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
      reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
      return;
    }
  }
  for (int k = 0; k < 4; ++k) p[k] = v[k];
}

// kVector: `in` and `out` are 16-byte aligned, so full quads move as vectors.
template <DropoutKind kKind, bool kVector, class T>
__global__ void dropout_kernel(const T* in, T* out, bool* mask, int64_t n, StepScalars<DropoutKey> key_arg,
                               uint32_t threshold, T scale) {
  const DropoutKey key = key_arg.get();
  const int bits = dropout_bits(threshold);
  const int64_t per_quad = dropout_per_quad(bits);
  const int64_t groups = (n + kDropoutPerThread - 1) / kDropoutPerThread;
  for (int64_t g = cuda_rt::global_thread_index(); g < groups; g += cuda_rt::grid_stride()) {
    uint32_t w[4];
    dropout_words(key.seed, key.offset, static_cast<uint64_t>(kDropoutPerThread * g / per_quad), w);
    const int e0 = static_cast<int>(kDropoutPerThread * g % per_quad);  // field of element 8g
    // two runs of four elements, each moved as one vector where aligned
    for (int run = 0; run < kDropoutPerThread / 4; ++run) {
      const int64_t first = kDropoutPerThread * g + 4 * run;
      if (first >= n) break;
      const int count = n - first < 4 ? static_cast<int>(n - first) : 4;
      if constexpr (kKind == DropoutKind::mask) {
        for (int k = 0; k < count; ++k) mask[first + k] = dropout_keep(dropout_draw(w, e0 + 4 * run + k, bits), threshold);
        continue;
      }
      T v[4];
      if (count == 4) {
        load4(in + first, v, kVector);
      } else {
        for (int k = 0; k < count; ++k) v[k] = in[first + k];
      }
      for (int k = 0; k < 4; ++k) {
        const T a = kKind == DropoutKind::forward_relu ? activation_apply(Activation::relu, v[k]) : v[k];
        v[k] = dropout_apply(a, dropout_draw(w, e0 + 4 * run + k, bits), threshold, scale);
      }
      if (count == 4) {
        store4(out + first, v, kVector);
      } else {
        for (int k = 0; k < count; ++k) out[first + k] = v[k];
      }
    }
  }
}

// p = 0 or p = 1: out = act(in) * factor, the same factor for every element.
template <class T>
struct UniformDropoutOp {
  T factor;
  bool relu;
  __device__ __forceinline__ T operator()(T x) const {
    return (relu ? activation_apply(Activation::relu, x) : x) * factor;
  }
};

// Fused relu + dropout backward from the output: (y, dy) -> dx.
template <class T>
struct DropoutReluGradOp {
  T scale;
  __device__ __forceinline__ T operator()(T y, T dy) const { return dropout_relu_grad(y, dy, scale); }
};

}  // namespace fastnn::cuda
