#include "core/cuda_elementwise.cuh"
#include "ops/dropout_kernels.cuh"

namespace fastnn::cuda {
namespace {

constexpr unsigned kThreads = 256;

template <DropoutKind kKind, class T>
void run(const char* name, const T* in, T* out, bool* mask, int64_t n, const DropoutParams& p,
         const StepScalars<DropoutKey>& key) {
  const dim3 grid(cuda_rt::grid_for((n + kDropoutPerThread - 1) / kDropoutPerThread, kThreads));
  const T scale = static_cast<T>(p.scale);
  const uint32_t threshold = p.threshold;  // in (0, 2^16) here
  if (kKind != DropoutKind::mask && cuda_rt::aligned16(in) && cuda_rt::aligned16(out))
    cuda_rt::launch(name, dropout_kernel<kKind, true, T>, grid, dim3(kThreads), 0, in, out, mask, n, key,
                    threshold, scale);
  else
    cuda_rt::launch(name, dropout_kernel<kKind, false, T>, grid, dim3(kThreads), 0, in, out, mask, n, key,
                    threshold, scale);
}

// out = act(in) * factor for one factor (p = 0: 1, p = 1: 0); a plain copy when that is all it is.
template <class T>
void scale_uniform(const char* name, const T* in, T* out, int64_t n, bool relu, T factor) {
  if (!relu && factor == T(1)) {
    if (in != out && n)
      FASTNN_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice,
                                        cuda_rt::current_stream()));
    return;
  }
  cuda_rt::unary(name, n, UniformDropoutOp<T>{factor, relu}, in, out);
}

}  // namespace

void dropout_forward(const Tensor& x, Tensor& y, const DropoutParams& params, Activation act) {
  StepScalars<DropoutKey> key;
  if (!step_scalars(DropoutKey{params.seed, params.offset}, params.slot, key)) return;
  const bool relu = act == Activation::relu;
  dispatch_floating(x.dtype(), "x", [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    if (params.keeps_all() || params.keeps_none())
      scale_uniform("dropout_forward", in, out, x.numel(), relu, params.keeps_all() ? T(1) : T(0));
    else if (relu)
      run<DropoutKind::forward_relu, T>("dropout_forward", in, out, nullptr, x.numel(), params, key);
    else
      run<DropoutKind::forward, T>("dropout_forward", in, out, nullptr, x.numel(), params, key);
  });
}

void dropout_backward(const Tensor& dy, const Tensor& y, Tensor& dx, const DropoutParams& params,
                      Activation act) {
  StepScalars<DropoutKey> key;
  if (!step_scalars(DropoutKey{params.seed, params.offset}, params.slot, key)) return;
  dispatch_floating(dy.dtype(), "dy", [&](auto tag) {
    using T = decltype(tag);
    const T* g = dy.data<T>();
    T* gx = dx.data<T>();
    if (act == Activation::relu)
      cuda_rt::binary("dropout_backward", dy.numel(), DropoutReluGradOp<T>{static_cast<T>(params.scale)},
                      y.data<T>(), g, gx);
    else if (params.keeps_all() || params.keeps_none())
      scale_uniform("dropout_backward", g, gx, dy.numel(), false, params.keeps_all() ? T(1) : T(0));
    else
      run<DropoutKind::backward, T>("dropout_backward", g, gx, nullptr, dy.numel(), params, key);
  });
}

void dropout_mask(Tensor& mask, const DropoutParams& params) {
  StepScalars<DropoutKey> key;
  if (!step_scalars(DropoutKey{params.seed, params.offset}, params.slot, key)) return;
  bool* m = mask.data<bool>();
  const int64_t n = mask.numel();
  if (params.keeps_all() || params.keeps_none()) {
    if (n) FASTNN_CUDA_CHECK(cudaMemsetAsync(m, params.keeps_all() ? 1 : 0, static_cast<size_t>(n),
                                             cuda_rt::current_stream()));
    return;
  }
  run<DropoutKind::mask, float>("dropout_mask", nullptr, nullptr, m, n, params, key);
}

}  // namespace fastnn::cuda
