// CUDA backends whose kernels are not written yet, all in one place. Each entry is a weak
// definition that raises no_cuda_kernel's RuntimeError ("<op>: no CUDA kernel in this build ...").
// When ops/<op>_cuda.cu defines the function, its (strong) definition wins at link time and this
// entry is dead: delete it then. A signature that differs from the header's declaration links
// against the fallback instead, which the CUDA parity tests catch (they would raise here).
#if defined(FASTNN_WITH_CUDA)
#include "ops/batchnorm.h"
#include "ops/gemm.h"
#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/optim.h"

#define FASTNN_CUDA_PENDING(ret, fn, ...) \
  [[gnu::weak]] ret fn(__VA_ARGS__) { no_cuda_kernel(#fn); }

namespace fastnn::cuda {

FASTNN_CUDA_PENDING(void, gemm, const Tensor&, const Tensor&, Tensor&, double, double, bool, bool,
                    const Tensor*, Activation)

FASTNN_CUDA_PENDING(void, linear_forward, const Tensor&, const Tensor&, const Tensor*, Activation, Tensor&)
FASTNN_CUDA_PENDING(void, linear_backward, const Tensor&, const Tensor&, const Tensor&, const Tensor*,
                    Activation, Tensor*, Tensor&, Tensor*, bool)

FASTNN_CUDA_PENDING(void, batchnorm_forward, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, bool, double, double, Tensor&, Tensor&, Tensor&)
FASTNN_CUDA_PENDING(void, batchnorm_backward, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, bool, Tensor&, Tensor&, Tensor&, bool)

FASTNN_CUDA_PENDING(BadLabel, cross_entropy_find_bad_label, const Tensor&, int64_t, int64_t)
FASTNN_CUDA_PENDING(void, cross_entropy_forward, const Tensor&, const Tensor&, const Tensor&, Reduction,
                    int64_t, Tensor&)
FASTNN_CUDA_PENDING(void, cross_entropy_backward, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, Reduction, int64_t, Tensor&)
FASTNN_CUDA_PENDING(void, cross_entropy_fused, const Tensor&, const Tensor&, const Tensor&, Reduction,
                    int64_t, Tensor&, Tensor&)
FASTNN_CUDA_PENDING(void, mse_forward, const Tensor&, const Tensor&, Reduction, Tensor&)
FASTNN_CUDA_PENDING(void, mse_backward, const Tensor&, const Tensor&, const Tensor&, Reduction, Tensor&)
FASTNN_CUDA_PENDING(void, bce_with_logits_forward, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, Reduction, Tensor&)
FASTNN_CUDA_PENDING(void, bce_with_logits_backward, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&, Reduction, Tensor&)

FASTNN_CUDA_PENDING(void, sgd_step, const Tensor&, const Tensor&, const Tensor&, const SgdOptions&)
FASTNN_CUDA_PENDING(void, adam_step, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const AdamOptions&)
FASTNN_CUDA_PENDING(void, rmsprop_step, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const Tensor&, const RmspropOptions&)
FASTNN_CUDA_PENDING(void, adagrad_step, const Tensor&, const Tensor&, const Tensor&, const AdagradOptions&)

}  // namespace fastnn::cuda
#endif
