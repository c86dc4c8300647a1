// A pybind11 module around two emulated kernels, built by tests/test_emu.py: an emulator error
// must reach Python as a RuntimeError carrying the report, and a good kernel must still run after it.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "core/cuda_launch.h"
#include "emu_check.h"

using namespace fastnn;

__global__ void divergent(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void warp_sum(const float* x, float* out) {
  float v = x[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x == 0) *out = v;
}

PYBIND11_MODULE(cuemu_pyext, m) {
  m.def("divergent", [] {
    DeviceBuffer<float> out(32);
    cuda_rt::launch("divergent", divergent, dim3(1), dim3(32), 0, out.ptr);
  });
  m.def("warp_sum", [] {
    std::vector<float> x(32);
    for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i);
    DeviceBuffer<float> dx(x), out(1);
    cuda_rt::launch("warp_sum", warp_sum, dim3(1), dim3(32), 0, dx.ptr, out.ptr);
    return out.download()[0];
  });
}
