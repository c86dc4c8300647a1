// Correct kernels under the CPU emulation of CUDA: each result checked against plain C++, under the
// schedule given by CUEMU_SCHEDULE and again under all three schedules in-process. Built and run by
// tests/test_emu.py (also with -DCUEMU_UCONTEXT and under ASan+UBSan in CI); compiles with nvcc too.
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <numeric>
#include <random>

#include "core/cuda_launch.h"
#include "core/cuda_reduce.cuh"
#include "emu_check.h"
#include "ops/philox.h"

using namespace fastnn;

// The emulator's poison: every bit set (a NaN). Checked on the bits, so -ffast-math builds agree.
[[maybe_unused]] static bool is_poison(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits == 0xFFFFFFFFu;
}

// ---- 32x32 shared-memory tiled SGEMM, C = A B, any sizes
constexpr int kTile = 32;

__global__ void sgemm_tiled(int m, int n, int k, const float* a, const float* b, float* c) {
  __shared__ float as[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  const int row = blockIdx.y * kTile + threadIdx.y, col = blockIdx.x * kTile + threadIdx.x;
  float acc = 0;
  for (int k0 = 0; k0 < k; k0 += kTile) {
    as[threadIdx.y][threadIdx.x] = row < m && k0 + static_cast<int>(threadIdx.x) < k ? a[row * k + k0 + threadIdx.x] : 0.f;
    bs[threadIdx.y][threadIdx.x] = k0 + static_cast<int>(threadIdx.y) < k && col < n ? b[(k0 + threadIdx.y) * n + col] : 0.f;
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) acc += as[threadIdx.y][kk] * bs[kk][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = acc;
}

static std::vector<float> run_sgemm(int m, int n, int k, const std::vector<float>& a, const std::vector<float>& b) {
  DeviceBuffer<float> da(a), db(b), dc(static_cast<size_t>(m) * n);
  cuda_rt::launch("sgemm_tiled", sgemm_tiled, dim3((n + kTile - 1) / kTile, (m + kTile - 1) / kTile),
                  dim3(kTile, kTile), 0, m, n, k, da.ptr, db.ptr, dc.ptr);
  return dc.download();
}

EMU_TEST(sgemm_matches_reference) {
  const int m = 70, n = 45, k = 33;
  std::mt19937 gen(1);
  std::uniform_int_distribution<int> dist(-4, 4);  // small integers: every sum is exact
  std::vector<float> a(m * k), b(k * n);
  for (float& v : a) v = static_cast<float>(dist(gen));
  for (float& v : b) v = static_cast<float>(dist(gen));
  const std::vector<float> c = run_sgemm(m, n, k, a, b);
  int bad = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int kk = 0; kk < k; ++kk) ref += double(a[i * k + kk]) * b[kk * n + j];
      bad += c[i * n + j] != ref;
    }
  CHECK(bad == 0, "%d wrong elements", bad);
}

// ---- warp shuffles + dynamic shared memory + atomicAdd: a grid-stride sum
__global__ void block_sum(const float* x, int64_t n, float* out) {
  float* warp_sums = cuda_rt::dynamic_shared<float>();
  float v = 0;
  for (int64_t i = cuda_rt::global_thread_index(); i < n; i += cuda_rt::grid_stride()) v += x[i];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) atomicAdd(out, v);
  }
}

static float run_block_sum(const std::vector<float>& x, unsigned blocks, unsigned threads) {
  DeviceBuffer<float> dx(x), out(1);
  FASTNN_CUDA_CHECK(cudaMemset(out.ptr, 0, sizeof(float)));
  cuda_rt::launch("block_sum", block_sum, dim3(blocks), dim3(threads), threads / 32 * sizeof(float), dx.ptr,
                  static_cast<int64_t>(x.size()), out.ptr);
  return out.download()[0];
}

EMU_TEST(block_sum_with_shuffles_smem_atomics) {
  std::vector<float> x(100003);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
  const double ref = std::accumulate(x.begin(), x.end(), 0.0);
  for (unsigned threads : {32u, 256u, 1024u}) {
    const float got = run_block_sum(x, 7, threads);
    CHECK(got == ref, "threads %u: %f != %f", threads, got, ref);
  }
}

// ---- built-in variables in 3-D grids and blocks
__global__ void write_ids(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] = (blockIdx.x << 24) | (blockIdx.y << 20) | (blockIdx.z << 16) |
                                    (threadIdx.x << 8) | (threadIdx.y << 4) | threadIdx.z;
}

EMU_TEST(builtin_variables_3d) {
  const dim3 grid(3, 2, 2), block(4, 3, 5);
  DeviceBuffer<unsigned> out(3 * 2 * 2 * 4 * 3 * 5);
  cuda_rt::launch("write_ids", write_ids, grid, block, 0, out.ptr);
  const std::vector<unsigned> got = out.download();
  size_t i = 0;
  int bad = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 5; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx)
              bad += got[i++] != ((bx << 24) | (by << 20) | (bz << 16) | (tx << 8) | (ty << 4) | tz);
  CHECK(bad == 0, "%d wrong ids", bad);
}

// ---- shuffle semantics, every mode and width, against an independent host model
enum Mode { kIdx, kUp, kDown, kXor };

template <class T>
__global__ void shuffle_kernel(int mode, int arg, int width, T* out) {
  const T v = static_cast<T>(threadIdx.x * 10 + 1) + T(0.5) * (sizeof(T) == 8);
  T r;
  switch (mode) {
    case kIdx: r = __shfl_sync(0xffffffffu, v, arg + static_cast<int>(threadIdx.x % 32 % 3), width); break;
    case kUp: r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    case kDown: r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    default: r = __shfl_xor_sync(0xffffffffu, v, arg, width); break;
  }
  out[threadIdx.x] = r;
}

static int expected_source(int mode, int lane, int arg, int width) {
  const int seg = lane / width * width;
  switch (mode) {
    case kIdx: return seg + (arg + lane % 3) % width;
    case kUp: return lane - arg >= seg ? lane - arg : lane;
    case kDown: return lane + arg < seg + width ? lane + arg : lane;
    default: {
      const int j = lane ^ arg;
      return j < seg + width ? j : lane;
    }
  }
}

template <class T>
static void check_shuffles() {
  DeviceBuffer<T> out(64);
  int bad = 0;
  for (int mode : {kIdx, kUp, kDown, kXor})
    for (int width : {1, 2, 4, 8, 16, 32})
      for (int arg : {0, 1, 3, 5, 16, 31}) {
        cuda_rt::launch("shuffle_kernel", shuffle_kernel<T>, dim3(1), dim3(64), 0, mode, arg, width, out.ptr);
        const std::vector<T> got = out.download();
        for (int t = 0; t < 64; ++t) {
          const int src = (t / 32) * 32 + expected_source(mode, t % 32, arg, width);
          const T want = static_cast<T>(src * 10 + 1) + T(0.5) * (sizeof(T) == 8);
          if (got[t] != want && bad++ < 5)
            std::printf("  mode %d width %d arg %d thread %d: got %g want %g\n", mode, width, arg, t,
                        double(got[t]), double(want));
        }
      }
  CHECK(bad == 0, "%d wrong shuffles", bad);
}

EMU_TEST(shuffle_semantics_int) { check_shuffles<int>(); }
EMU_TEST(shuffle_semantics_double) { check_shuffles<double>(); }

// Half warps shuffle with their own masks in divergent branches; reading a lane outside the mask
// gives the poison value (all bits set).
__global__ void partial_masks(int* out) {
  const int lane = threadIdx.x % 32;
  int r;
  if (lane < 16) r = __shfl_xor_sync(0x0000ffffu, lane, 1);
  else r = __shfl_xor_sync(0xffff0000u, lane, 2);
  out[threadIdx.x] = r;
  int outside = 0;
  if (lane < 8) outside = __shfl_sync(0x000000ffu, lane, 20);  // lane 20 is not in the mask
  out[32 + threadIdx.x] = outside;
}

EMU_TEST(partial_masks_and_poison) {
  DeviceBuffer<int> out(64);
  cuda_rt::launch("partial_masks", partial_masks, dim3(1), dim3(32), 0, out.ptr);
  const std::vector<int> got = out.download();
  for (int l = 0; l < 32; ++l) {
    CHECK(got[l] == (l < 16 ? (l ^ 1) : (l ^ 2)), "lane %d: %d", l, got[l]);
    CHECK(got[32 + l] == (l < 8 ? -1 : 0), "lane %d outside: %d", l, got[32 + l]);
  }
}

// ---- votes, block-wide counts, warp reductions, match
__global__ void votes(unsigned* out) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned r[12];
  r[0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  r[1] = __any_sync(0xffffffffu, lane == 31);
  r[2] = __all_sync(0xffffffffu, lane < 31);
  r[3] = __all_sync(0xffffffffu, 1);
  r[4] = static_cast<unsigned>(__syncthreads_count(threadIdx.x % 5 == 0));
  r[5] = static_cast<unsigned>(__syncthreads_and(threadIdx.x < 1000));
  r[6] = static_cast<unsigned>(__syncthreads_or(threadIdx.x == 77));
  r[7] = __reduce_add_sync(0xffffffffu, lane);
  r[8] = __reduce_max_sync(0xffffffffu, lane * 3u);
  r[9] = static_cast<unsigned>(__reduce_min_sync(0xffffffffu, static_cast<int>(lane) - 10));
  r[10] = __reduce_or_sync(0xffffffffu, 1u << lane);
  r[11] = __match_any_sync(0xffffffffu, lane / 8);  // lanes with equal lane / 8
  __syncwarp();
  __syncwarp(0xffffffffu);
  if (lane == 9)  // lane 9's match group is lanes 8..15
    for (int i = 0; i < 12; ++i) out[warp * 16 + i] = r[i];
}

EMU_TEST(votes_counts_reductions) {
  DeviceBuffer<unsigned> out(4 * 16);
  FASTNN_CUDA_CHECK(cudaMemset(out.ptr, 0, out.n * sizeof(unsigned)));
  cuda_rt::launch("votes", votes, dim3(1), dim3(128), 0, out.ptr);
  const std::vector<unsigned> got = out.download();
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int w = 0; w < 4; ++w) {
    const unsigned* o = got.data() + w * 16;
    CHECK(o[0] == ballot, "ballot %x", o[0]);
    CHECK(o[1] == 1 && o[2] == 0 && o[3] == 1, "any/all %u %u %u", o[1], o[2], o[3]);
    CHECK(o[4] == 26 && o[5] == 1 && o[6] == 1, "syncthreads count/and/or %u %u %u", o[4], o[5], o[6]);
    CHECK(o[7] == 496 && o[8] == 93 && static_cast<int>(o[9]) == -10 && o[10] == 0xffffffffu,
          "reduce %u %u %d %x", o[7], o[8], static_cast<int>(o[9]), o[10]);
    CHECK(o[11] == 0xff00u, "match_any %x", o[11]);
  }
}

// ---- atomics under contention, from blocks that may run on several OS threads
struct Counters {
  int i_add;
  unsigned u_add;
  unsigned long long ull_add;
  float f_add;
  double d_add;
  int i_min, i_max;
  unsigned inc;
  int sub;
  unsigned bits_or, bits_and, bits_xor;
  int cas_max;
  int exch_count;
};

__global__ void atomics(Counters* c) {
  const int t = static_cast<int>(cuda_rt::global_thread_index());
  atomicAdd(&c->i_add, 1);
  atomicAdd(&c->u_add, 2u);
  atomicAdd(&c->ull_add, 1ull << 33);
  atomicAdd(&c->f_add, 0.5f);
  atomicAdd(&c->d_add, 0.25);
  atomicMin(&c->i_min, -t);
  atomicMax(&c->i_max, t);
  atomicInc(&c->inc, 99u);  // wraps to 0 after 99
  atomicSub(&c->sub, 3);
  atomicOr(&c->bits_or, 1u << (t % 32));
  atomicAnd(&c->bits_and, ~(1u << (t % 16)));
  atomicXor(&c->bits_xor, 1u);
  int old = c->cas_max, assumed;
  do {
    assumed = old;
    old = atomicCAS(&c->cas_max, assumed, max(assumed, (t * 7919) % 1000));
  } while (old != assumed);
  if (atomicExch(&c->exch_count, t) >= 0) atomicAdd(&c->i_add, 0);
}

EMU_TEST(atomics_are_exact) {
  const int threads = 8 * 128;
  Counters init{};
  init.i_max = -1;
  init.bits_and = 0xffffffffu;
  DeviceBuffer<Counters> c(std::vector<Counters>{init});
  cuda_rt::launch("atomics", atomics, dim3(8), dim3(128), 0, c.ptr);
  const Counters r = c.download()[0];
  CHECK(r.i_add == threads && r.u_add == 2u * threads && r.ull_add == (1ull << 33) * threads, "adds");
  CHECK(r.f_add == 0.5f * threads && r.d_add == 0.25 * threads, "float adds %f %f", r.f_add, r.d_add);
  CHECK(r.i_min == -(threads - 1) && r.i_max == threads - 1, "min/max %d %d", r.i_min, r.i_max);
  CHECK(r.inc == threads % 100u, "inc %u", r.inc);
  CHECK(r.sub == -3 * threads, "sub %d", r.sub);
  CHECK(r.bits_or == 0xffffffffu && r.bits_and == 0xffff0000u && r.bits_xor == 0, "bits %x %x %x", r.bits_or,
        r.bits_and, r.bits_xor);
  int cas_ref = 0;
  for (int t = 0; t < threads; ++t) cas_ref = std::max(cas_ref, (t * 7919) % 1000);
  CHECK(r.cas_max == cas_ref, "cas max %d vs %d", r.cas_max, cas_ref);
}

// ---- __constant__ memory
__constant__ float kCoefficients[4];

__global__ void polynomial(const float* x, float* y, int n) {
  const int i = static_cast<int>(cuda_rt::global_thread_index());
  if (i < n)
    y[i] = kCoefficients[0] + x[i] * (kCoefficients[1] + x[i] * (kCoefficients[2] + x[i] * kCoefficients[3]));
}

EMU_TEST(constant_memory) {
  const float coeffs[4] = {1, 2, 3, 4};
  FASTNN_CUDA_CHECK(cudaMemcpyToSymbol(kCoefficients, coeffs, sizeof coeffs));
  std::vector<float> x = {0, 1, 2, -1, 0.5f};
  DeviceBuffer<float> dx(x), dy(x.size());
  cuda_rt::launch("polynomial", polynomial, dim3(1), dim3(32), 0, dx.ptr, dy.ptr, static_cast<int>(x.size()));
  const std::vector<float> y = dy.download();
  for (size_t i = 0; i < x.size(); ++i) {
    const float v = x[i], want = 1 + v * (2 + v * (3 + v * 4));
    CHECK(y[i] == want, "x=%g: %g != %g", v, y[i], want);
  }
}

// ---- dynamic shared memory: NaN until written; more than 48 KiB after cudaFuncSetAttribute
__global__ void smem_fill_sum(float* out, int count) {
  float* s = cuda_rt::dynamic_shared<float>();
  out[1 + threadIdx.x] = s[threadIdx.x];  // read before any write: poison
  __syncthreads();
  for (int i = threadIdx.x; i < count; i += blockDim.x) s[i] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int i = 0; i < count; ++i) total += s[i];
    out[0] = total;
  }
}

EMU_TEST(dynamic_shared_memory) {
  const int count = 64 * 1024 / 4;  // 64 KiB
  cuda_rt::allow_dynamic_shared(smem_fill_sum, count * sizeof(float));
  DeviceBuffer<float> out(1 + 128);
  cuda_rt::launch("smem_fill_sum", smem_fill_sum, dim3(2), dim3(128), count * sizeof(float), out.ptr, count);
  const std::vector<float> got = out.download();
  CHECK(got[0] == count, "sum %g", got[0]);
  int finite = 0;
#if defined(CUEMU_EMULATED)
  for (int t = 0; t < 128; ++t) finite += !is_poison(got[1 + t]);
#endif
  CHECK(finite == 0, "%d threads read a non-NaN value from unwritten shared memory", finite);
}

// ---- Philox in a kernel: Random123's known answers
__global__ void philox_kat(const uint32_t* in, uint32_t* out) {
  const uint32_t* c = in + 6 * threadIdx.x;
  philox4x32_10(c[0], c[1], c[2], c[3], c[4], c[5], out + 4 * threadIdx.x);
}

EMU_TEST(philox_known_answers) {
  const std::vector<uint32_t> in = {0, 0, 0, 0, 0, 0,
                                    0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF,
                                    0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0};
  const std::vector<uint32_t> want = {0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8,
                                      0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD,
                                      0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1};
  DeviceBuffer<uint32_t> din(in), dout(12);
  cuda_rt::launch("philox_kat", philox_kat, dim3(1), dim3(3), 0, din.ptr, dout.ptr);
  CHECK(dout.download() == want, "Philox4x32-10 known answers differ");
}

// ---- the optimiser must re-read __shared__ after every sync point (a loop flag and a broadcast)
__global__ void shared_flag_loop(int* out, int rounds) {
  __shared__ int flag;
  __shared__ int counter;
  if (threadIdx.x == 0) {
    flag = 0;
    counter = 0;
  }
  __syncthreads();
  int iterations = 0;
  while (!flag) {
    __syncthreads();
    if (threadIdx.x == 0 && ++counter == rounds) flag = 1;
    __syncthreads();
    ++iterations;
  }
  out[threadIdx.x] = iterations;
}

EMU_TEST(shared_memory_reread_after_barrier) {
  DeviceBuffer<int> out(96);
  cuda_rt::launch("shared_flag_loop", shared_flag_loop, dim3(3), dim3(96), 0, out.ptr, 5);
  const std::vector<int> got = out.download();
  CHECK(std::all_of(got.begin(), got.end(), [](int v) { return v == 5; }), "iterations %d", got[0]);
}

// ---- block reductions from core/cuda_reduce.cuh, twice in a row (shared slots reused)
__global__ void reduce_twice(const float* x, float* out) {
  const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  const float s = cuda_rt::block_reduce(v, cuda_rt::SumOp{}, 0.0f);
  const float m = cuda_rt::block_reduce(v, cuda_rt::MaxOp{}, -INFINITY);
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = s;
    out[2 * blockIdx.x + 1] = m;
  }
}

EMU_TEST(block_reduce_sum_then_max) {
  const unsigned blocks = 5, threads = 160;
  std::vector<float> x(blocks * threads);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 101);
  DeviceBuffer<float> dx(x), out(2 * blocks);
  cuda_rt::launch("reduce_twice", reduce_twice, dim3(blocks), dim3(threads), 0, dx.ptr, out.ptr);
  const std::vector<float> got = out.download();
  for (unsigned b = 0; b < blocks; ++b) {
    float s = 0, m = -INFINITY;
    for (unsigned t = 0; t < threads; ++t) {
      s += x[b * threads + t];
      m = std::max(m, x[b * threads + t]);
    }
    CHECK(got[2 * b] == s && got[2 * b + 1] == m, "block %u: %g %g vs %g %g", b, got[2 * b], got[2 * b + 1], s, m);
  }
}

// ---- the runtime API shims
EMU_TEST(runtime_api) {
  CHECK(cudaGetLastError() == cudaSuccess, "no error at start");
  int count = 0;
  CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count >= 1, "device count %d", count);
  CHECK(cudaSetDevice(count) == cudaErrorInvalidDevice, "invalid device accepted");
  CHECK(cudaGetLastError() == cudaErrorInvalidDevice && cudaGetLastError() == cudaSuccess, "last error resets");
  float host[4] = {1, 2, 3, 4};
  float* dev = nullptr;
  CHECK(cudaMalloc(&dev, sizeof host) == cudaSuccess, "malloc");
  CHECK(reinterpret_cast<uintptr_t>(dev) % 256 == 0, "cudaMalloc alignment");
#if defined(CUEMU_EMULATED)
  float poisoned[4];
  cudaMemcpy(poisoned, dev, sizeof poisoned, cudaMemcpyDeviceToHost);
  CHECK(is_poison(poisoned[0]) && is_poison(poisoned[3]), "fresh cudaMalloc memory is NaN");
  // copying "to the device" into host memory is a bug the shim reports
  CHECK(cudaMemcpy(poisoned, host, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "direction");
  const float larger[8] = {};
  CHECK(cudaMemcpy(dev, larger, sizeof host + 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "overrun");
  cudaGetLastError();
#endif
  CHECK(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess, "h2d");
  float back[4] = {};
  CHECK(cudaMemcpyAsync(back, dev, sizeof back, cudaMemcpyDeviceToHost, cuda_rt::current_stream()) == cudaSuccess, "d2h");
  CHECK(cudaStreamSynchronize(cuda_rt::current_stream()) == cudaSuccess && back[3] == 4, "round trip");
  CHECK(cudaMemset(dev, 0, sizeof host) == cudaSuccess, "memset");
  cudaStream_t stream;
  cudaEvent_t start, stop;
  CHECK(cudaStreamCreate(&stream) == cudaSuccess && cudaEventCreate(&start) == cudaSuccess &&
            cudaEventCreate(&stop) == cudaSuccess, "stream/events");
  cudaEventRecord(start, stream);
  cudaEventRecord(stop, stream);
  float ms = -1;
  CHECK(cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess && ms >= 0,
        "elapsed %g", ms);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  CHECK(cudaFree(dev) == cudaSuccess, "free");
#if defined(CUEMU_EMULATED)
  CHECK(cudaFree(dev) == cudaErrorInvalidValue, "double free detected");
  cudaGetLastError();
#endif
  CHECK(cudaDeviceSynchronize() == cudaSuccess && cudaGetLastError() == cudaSuccess, "clean at end");
}

// ---- launch configuration: checked like CUDA's; an empty grid launches nothing
__global__ void store_one(int* out) { out[threadIdx.x] = 1; }

EMU_TEST(launch_configuration) {
  DeviceBuffer<int> out(1024);
  FASTNN_CUDA_CHECK(cudaMemset(out.ptr, 0, 1024 * sizeof(int)));
  cuda_rt::launch("store_one", store_one, dim3(0), dim3(32), 0, out.ptr);  // nothing to do
  CHECK(out.download()[0] == 0, "empty grid ran");
  bool threw = false;
  try {
    cuda_rt::launch("store_one", store_one, dim3(1), dim3(1025), 0, out.ptr);
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("store_one") != std::string::npos;
  }
  CHECK(threw, "a 1025-thread block was not refused with the kernel's name");
  cuda_rt::launch("store_one", store_one, dim3(1), dim3(1024), 0, out.ptr);
  CHECK(out.download()[1023] == 1, "1024 threads");
  CHECK(cuda_rt::grid_for(0, 256) == 0 && cuda_rt::grid_for(1, 256) == 1 && cuda_rt::grid_for(1 << 30, 256) >= 8,
        "grid_for");
}

// ---- every schedule, and blocks spread over OS threads, give the same results
#if defined(CUEMU_EMULATED)
EMU_TEST(schedules_and_threads_agree) {
  std::vector<float> a(40 * 50), b(50 * 30), x(50000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 13) % 17) - 8;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 7) % 11) - 5;
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 5);
  cuemu::Config saved = cuemu::config();
  std::vector<std::vector<float>> gemms;
  std::vector<float> sums;
  for (cuemu::Schedule s : {cuemu::Schedule::forward, cuemu::Schedule::reverse, cuemu::Schedule::random}) {
    for (int threads : {1, 2}) {
      cuemu::config().schedule = s;
      cuemu::config().os_threads = threads;
      gemms.push_back(run_sgemm(40, 30, 50, a, b));
      sums.push_back(run_block_sum(x, 16, 256));
    }
  }
  cuemu::config() = saved;
  for (size_t i = 1; i < gemms.size(); ++i) {
    CHECK(gemms[i] == gemms[0], "sgemm differs in run %zu", i);
    CHECK(sums[i] == sums[0] && sums[0] == 100000.0f, "sum %g in run %zu", sums[i], i);
  }
}

// Exceptions thrown by device code carry the block and thread
__global__ void trap_in_thread_5() {
  if (threadIdx.x == 5 && blockIdx.x == 1) __trap();
}

EMU_TEST(device_errors_name_block_and_thread) {
  std::string what;
  try {
    cuda_rt::launch("trap_in_thread_5", trap_in_thread_5, dim3(2), dim3(32), 0);
  } catch (const cuemu::error& e) {
    what = e.what();
  }
  CHECK(what.find("kernel 'trap_in_thread_5' block (1,0,0)") != std::string::npos &&
            what.find("thread (5,0,0): __trap() called") != std::string::npos,
        "message: %s", what.c_str());
  // the emulator is usable again afterwards
  DeviceBuffer<int> out(32);
  cuda_rt::launch("store_one", store_one, dim3(1), dim3(32), 0, out.ptr);
  CHECK(out.download()[31] == 1, "launch after an error");
}
#endif

int main() { return emu_test::run_all(); }
