// Dropout kernels. A thread draws one Philox quad for 8 elements, 8g .. 8g+7, which one quad serves
// at any bit count (a quad serves 128 / b elements at b bits each, b <= 16): their draws from
// dropout_words(seed, offset, 8g / (128 / b)) (ops/philox.h), exactly as the CPU takes them, so
// masks are bit-identical to the CPU's whatever the launch shape; and the value math is the same
// single multiply, so outputs are bit-identical too. At b < 16 neighbouring threads draw the same
// quad: the Philox work per element is what it is at 16 bits.
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

// v[0 .. count) from p, count <= 4, as one vector where count is 4 and `vector` holds. The partial
// run's loop unrolled with a predicate: v indexed by a run-time count went to local memory (a
// 32-byte stack frame in the float64 kernels).
template <class T>
__device__ __forceinline__ void load_run(const T* p, T v[4], int count, bool vector) {
  if (count == 4) {
    load4(p, v, vector);
    return;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k)
    if (k < count) v[k] = p[k];
}

template <class T>
__device__ __forceinline__ void store_run(T* p, const T v[4], int count, bool vector) {
  if (count == 4) {
    store4(p, v, vector);
    return;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k)
    if (k < count) p[k] = v[k];
}

// A warp serves 256 consecutive elements an iteration, 32 groups of 8: lane L draws the one quad
// that serves group L at any bit count, then the warp moves the 256 as two passes of 128, lane t
// taking elements 4t .. 4t+3 of a pass (one float4: a warp's accesses are 512 contiguous bytes) and
// their group's words from lane 16 pass + t / 2 by shuffle. A thread that took its own group's 8
// elements as two float4s strided the warp's accesses by 32 bytes, every store a half sector: the
// H200's float32 relu + dropout forward ran at 118 us, 54% of copy (2a7e4a8), against 73 us when a
// thread took 4 contiguous elements and drew a quad for them; this layout runs it in 84-85 us (75%)
// and float64 in 163-166 us (77%; 315 before), at every bit count (benchmarks/gpu/dropout_rows.cu).
// kVector: `in` and `out` are 16-byte aligned, so full runs of 4 move as vectors.
template <DropoutKind kKind, bool kVector, class T>
__global__ void dropout_kernel(const T* in, T* out, bool* mask, int64_t n, StepScalars<DropoutKey> key_arg,
                               uint32_t threshold, T scale) {
  constexpr int kWarp = 32, kPass = 4 * kWarp;  // elements a pass moves
  static_assert(kDropoutPerThread * kWarp == 2 * kPass, "a warp's groups fill two passes");
  const DropoutKey key = key_arg.get();
  const int log2_bits = dropout_log2_bits(threshold);
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t warp_stride = cuda_rt::grid_stride() / kWarp * (kDropoutPerThread * kWarp);
  // whole warps loop together (blocks are whole warps), so every shuffle has its 32 lanes
  for (int64_t base = cuda_rt::global_thread_index() / kWarp * (kDropoutPerThread * kWarp); base < n;
       base += warp_stride) {
    uint32_t w[4];  // past n in the last warp: drawn and not used
    dropout_words(key.seed, key.offset,
                  dropout_quad(static_cast<uint64_t>(base + kDropoutPerThread * lane), log2_bits), w);
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
      const int source = kWarp / 2 * pass + lane / 2;
      uint32_t words[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) words[r] = __shfl_sync(0xFFFFFFFFu, w[r], source);
      const int64_t first = base + kPass * pass + 4 * lane;
      if (first >= n) continue;
      const int count = n - first < 4 ? static_cast<int>(n - first) : 4;
      const int e0 = dropout_field(static_cast<uint64_t>(first), log2_bits);
      if constexpr (kKind == DropoutKind::mask) {
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k < count) mask[first + k] = dropout_keep(dropout_draw(words, e0 + k, log2_bits), threshold);
        continue;
      }
      T v[4] = {};
      load_run(in + first, v, count, kVector);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const T a = kKind == DropoutKind::forward_relu ? activation_apply(Activation::relu, v[k]) : v[k];
        v[k] = dropout_apply(a, dropout_draw(words, e0 + k, log2_bits), threshold, scale);
      }
      store_run(out + first, v, count, kVector);
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
