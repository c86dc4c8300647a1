// cuemu: a CPU emulation of the CUDA C++ that fastnn's kernels use, so the very same .cu files run
// under g++ in CI and on developers' machines without a GPU (design: shared/design/cuda-emulation.md).
//
// How it works, in one paragraph: CUDA keywords become no-ops, `__shared__` becomes
// `static thread_local` (one block runs per OS thread at a time, so a function-level static is one
// copy per block), and the built-in variables are per-OS-thread globals. Each block runs on one OS
// thread, every CUDA thread of it a user-space fiber with its own guard-paged stack. Fibers switch
// only at sync points (__syncthreads*, __syncwarp, warp shuffles/votes/reductions): the scheduler
// makes passes over the block's fibers in forward, reverse or random order (CUEMU_SCHEDULE) and
// resumes every runnable one up to its next sync point; between passes it completes the barriers
// and warp collectives whose participants have all arrived, and reports a deadlock, a divergent
// barrier or a misused mask, with file:line, when none can complete. A result that changes with the
// schedule is a race (a missing barrier).
//
// Environment (read at the first launch; cuemu::config() changes them programmatically):
//   CUEMU_SCHEDULE=forward|reverse|random   pass order of the fibers (default forward)
//   CUEMU_SEED=N                             seed of the random schedule (default 1)
//   CUEMU_THREADS=N                          OS threads that run blocks in parallel (default 1)
//   CUEMU_STACK_KB=N                         stack per CUDA thread (default 256; guard page below)
//   CUEMU_ALLOW_EXITED_AT_BARRIER=1          count exited threads as arrived (sm_70+ behaviour)
//   CUEMU_DEVICE_COUNT=N                     what cudaGetDeviceCount reports (default 1; 0 = no GPU)
//
// Not modelled: performance, the memory model (execution is sequential between sync points), spin
// waits between threads or blocks, inline PTX / wmma / cp.async / cooperative groups, streams as
// concurrency (every call is synchronous). Stream capture is modelled: work on a capturing stream
// is recorded and runs at each cudaGraphLaunch, and a host-synchronous call during a capture fails
// it (see "stream capture" below). Errors are C++ exceptions (cuemu::error, a
// std::runtime_error), which pybind11 turns into Python RuntimeError.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h emulates CUDA on the CPU for g++ builds; nvcc builds include <cuda_runtime.h>"
#endif

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) && !defined(CUEMU_UCONTEXT)
#define CUEMU_UCONTEXT 1
#endif
#if defined(CUEMU_UCONTEXT)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#if defined(CUEMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define CUEMU_EMULATED 1

// ---------------------------------------------------------------------------------------------
// Keywords
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

// ---------------------------------------------------------------------------------------------
// Vector types, with CUDA's sizes and alignments. may_alias: kernels load them through
// reinterpret_cast'ed float* / int* pointers, which is fine in CUDA and must stay fine under g++.
#define CUEMU_VEC1(T, N, A)                                            \
  struct __attribute__((aligned(A), may_alias)) N { T x; };           \
  inline N make_##N(T x) { return N{x}; }
#define CUEMU_VEC2(T, N, A)                                            \
  struct __attribute__((aligned(A), may_alias)) N { T x, y; };        \
  inline N make_##N(T x, T y) { return N{x, y}; }
#define CUEMU_VEC3(T, N, A)                                            \
  struct __attribute__((aligned(A), may_alias)) N { T x, y, z; };     \
  inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define CUEMU_VEC4(T, N, A)                                            \
  struct __attribute__((aligned(A), may_alias)) N { T x, y, z, w; };  \
  inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CUEMU_VEC1(signed char, char1, 1) CUEMU_VEC2(signed char, char2, 2) CUEMU_VEC4(signed char, char4, 4)
CUEMU_VEC1(unsigned char, uchar1, 1) CUEMU_VEC2(unsigned char, uchar2, 2) CUEMU_VEC4(unsigned char, uchar4, 4)
CUEMU_VEC2(short, short2, 4) CUEMU_VEC4(short, short4, 8)
CUEMU_VEC2(unsigned short, ushort2, 4) CUEMU_VEC4(unsigned short, ushort4, 8)
CUEMU_VEC1(int, int1, 4) CUEMU_VEC2(int, int2, 8) CUEMU_VEC3(int, int3, 4) CUEMU_VEC4(int, int4, 16)
CUEMU_VEC1(unsigned, uint1, 4) CUEMU_VEC2(unsigned, uint2, 8) CUEMU_VEC4(unsigned, uint4, 16)
CUEMU_VEC2(long long, longlong2, 16) CUEMU_VEC2(unsigned long long, ulonglong2, 16)
CUEMU_VEC1(float, float1, 4) CUEMU_VEC2(float, float2, 8) CUEMU_VEC3(float, float3, 4) CUEMU_VEC4(float, float4, 16)
CUEMU_VEC1(double, double1, 8) CUEMU_VEC2(double, double2, 16)
#undef CUEMU_VEC1
#undef CUEMU_VEC2
#undef CUEMU_VEC3
#undef CUEMU_VEC4

struct uint3 {
  unsigned x, y, z;
};
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Built-in variables: written by the scheduler before it resumes each fiber. Fibers never migrate
// between OS threads, so a thread_local is exactly "the current CUDA thread's".
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Runtime API types (numeric values as in CUDA's driver_types.h)
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidSymbol = 13,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorIllegalState = 401,
  cudaErrorUnknown = 999,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

// Work recorded by stream capture: each node is a closure that does, at replay, what the call
// would have done when it was made (a whole kernel grid, a copy, a fill).
struct CUgraph_st {
  std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> nodes;
};
struct CUgraphNode_st {};
struct CUstream_st {
  int id;
  CUgraph_st* capture = nullptr;  // non-null while this stream is being captured
  bool capture_invalidated = false;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point time;
  bool recorded;
};
typedef CUstream_st* cudaStream_t;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;
typedef CUgraphNode_st* cudaGraphNode_t;
enum cudaStreamCaptureMode : int {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus : int {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
typedef CUevent_st* cudaEvent_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int multiProcessorCount;
  int major;
  int minor;
};

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
#define CUEMU_NAME(x) case x: return #x;
    CUEMU_NAME(cudaSuccess) CUEMU_NAME(cudaErrorInvalidValue) CUEMU_NAME(cudaErrorMemoryAllocation)
    CUEMU_NAME(cudaErrorInitializationError) CUEMU_NAME(cudaErrorInvalidConfiguration)
    CUEMU_NAME(cudaErrorInvalidSymbol) CUEMU_NAME(cudaErrorInvalidDevicePointer)
    CUEMU_NAME(cudaErrorInvalidMemcpyDirection) CUEMU_NAME(cudaErrorInsufficientDriver)
    CUEMU_NAME(cudaErrorInvalidDeviceFunction) CUEMU_NAME(cudaErrorNoDevice) CUEMU_NAME(cudaErrorInvalidDevice)
    CUEMU_NAME(cudaErrorInvalidResourceHandle) CUEMU_NAME(cudaErrorNotReady) CUEMU_NAME(cudaErrorIllegalAddress)
    CUEMU_NAME(cudaErrorLaunchOutOfResources) CUEMU_NAME(cudaErrorLaunchFailure) CUEMU_NAME(cudaErrorNotSupported)
    CUEMU_NAME(cudaErrorStreamCaptureUnsupported) CUEMU_NAME(cudaErrorStreamCaptureInvalidated)
    CUEMU_NAME(cudaErrorStreamCaptureImplicit) CUEMU_NAME(cudaErrorIllegalState) CUEMU_NAME(cudaErrorUnknown)
#undef CUEMU_NAME
  }
  return "cudaErrorUnknown";
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidSymbol: return "invalid device symbol";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    default: return "unknown error";
  }
}

namespace cuemu {

// Every error the emulator detects. Derives from std::runtime_error, so pybind11 raises
// RuntimeError with this text.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { forward, reverse, random };

struct Config {
  Schedule schedule = Schedule::forward;
  uint64_t seed = 1;
  int os_threads = 1;
  size_t stack_bytes = 256 * 1024;
  bool allow_exited_at_barrier = false;
  int device_count = 1;
};

// Limits of the emulated device: those of an sm_80 (A100), the smaller of the two targets, so a
// kernel that launches here launches on both.
constexpr size_t kDefaultSharedMemory = 48 * 1024;
constexpr size_t kMaxSharedMemoryOptin = 166912;
constexpr int kMultiProcessors = 4;  // small: grids sized by SM count stay cheap to emulate
constexpr size_t kGlobalMemory = size_t{16} << 30;

namespace detail {

inline const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

inline Config read_config() {
  Config c;
  if (const char* s = env("CUEMU_SCHEDULE")) {
    std::string v = s;
    if (v == "forward") c.schedule = Schedule::forward;
    else if (v == "reverse") c.schedule = Schedule::reverse;
    else if (v == "random") c.schedule = Schedule::random;
    else throw error("CUEMU_SCHEDULE: expected forward, reverse or random, got '" + v + "'");
  }
  if (const char* s = env("CUEMU_SEED")) c.seed = std::strtoull(s, nullptr, 0);
  if (const char* s = env("CUEMU_THREADS")) c.os_threads = std::max(1, std::atoi(s));
  if (const char* s = env("CUEMU_STACK_KB")) c.stack_bytes = size_t(std::max(16, std::atoi(s))) * 1024;
  if (const char* s = env("CUEMU_ALLOW_EXITED_AT_BARRIER")) c.allow_exited_at_barrier = std::atoi(s) != 0;
  if (const char* s = env("CUEMU_DEVICE_COUNT")) c.device_count = std::max(0, std::atoi(s));
  return c;
}

}  // namespace detail

// The process-wide configuration; tests may change it between launches.
inline Config& config() {
  static Config c = detail::read_config();
  return c;
}

inline const char* schedule_name(Schedule s) {
  return s == Schedule::forward ? "forward" : s == Schedule::reverse ? "reverse" : "random";
}

namespace detail {

template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

inline std::string dim_str(uint3 d) { return cat("(", d.x, ",", d.y, ",", d.z, ")"); }

// ---------------------------------------------------------------------------------------------
// Fiber stacks: mmap'd MAP_NORESERVE (untouched pages cost nothing) with a PROT_NONE guard page
// below, so an overflow is a SIGSEGV instead of silent corruption. Pooled per OS thread and reused
// by every block and launch.
struct Stack {
  char* base = nullptr;  // the guard page
  size_t total = 0;
  char* bottom() const { return base + page(); }
  size_t size() const { return total - page(); }
  char* top() const { return base + total; }
  static size_t page() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
  }
};

struct StackPool {
  std::vector<Stack> stacks;
  size_t stack_bytes = 0;
  // ASan: a block that ended in an error abandoned its fibers mid-call, with their frames' redzones
  // still poisoned; the next block unpoisons whole stacks, not just the top (see prepare_fiber).
  bool dirty = false;

  // At least n stacks of the configured size.
  void reserve(size_t n, size_t bytes) {
    if (bytes != stack_bytes) release();
    stack_bytes = bytes;
    while (stacks.size() < n) {
      Stack s;
      s.total = (bytes + Stack::page() - 1) / Stack::page() * Stack::page() + Stack::page();
      void* p = mmap(nullptr, s.total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) throw error(cat("cuemu: cannot map a ", bytes / 1024, " KiB fiber stack"));
      s.base = static_cast<char*>(p);
      mprotect(s.base, Stack::page(), PROT_NONE);
      stacks.push_back(s);
    }
  }
  void release() {
    for (Stack& s : stacks) munmap(s.base, s.total);
    stacks.clear();
  }
  ~StackPool() { release(); }
};

inline StackPool& stack_pool() {
  static thread_local StackPool pool;
  return pool;
}

// ---------------------------------------------------------------------------------------------
// Context switch.
#if !defined(CUEMU_UCONTEXT)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *from and continues on stack `to`, which was left by a previous switch (or
// prepared by prepare_stack). 21 instructions, no system call.
extern "C" [[gnu::naked, gnu::noinline]] inline void cuemu_switch_x86_64(void** /*from*/, void* /*to*/) {
  asm volatile(
      "pushq %rbp\n\t"
      "pushq %rbx\n\t"
      "pushq %r12\n\t"
      "pushq %r13\n\t"
      "pushq %r14\n\t"
      "pushq %r15\n\t"
      "subq $8, %rsp\n\t"
      "stmxcsr (%rsp)\n\t"
      "fnstcw 4(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\t"
      "movq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\t"
      "fldcw 4(%rsp)\n\t"
      "addq $8, %rsp\n\t"
      "popq %r15\n\t"
      "popq %r14\n\t"
      "popq %r13\n\t"
      "popq %r12\n\t"
      "popq %rbx\n\t"
      "popq %rbp\n\t"
      "ret\n\t");
}

// Called through a volatile pointer: the compiler then knows nothing about the callee, so it can
// never keep a __shared__ static (or a built-in variable) in a register across a sync point.
inline void (*volatile switch_fn)(void**, void*) = &cuemu_switch_x86_64;
#endif

enum class State : uint8_t { runnable, at_barrier, at_warp, exited };
enum class BarrierKind : uint8_t { sync, count, and_, or_ };
enum class WarpOp : uint8_t {
  syncwarp, shfl, shfl_up, shfl_down, shfl_xor, ballot, any, all,
  reduce_add, reduce_min, reduce_max, reduce_and, reduce_or, reduce_xor, reduce_min_s, reduce_max_s,
  match_any, match_all
};

inline const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::syncwarp: return "__syncwarp";
    case WarpOp::shfl: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::reduce_add: return "__reduce_add_sync";
    case WarpOp::reduce_min: case WarpOp::reduce_min_s: return "__reduce_min_sync";
    case WarpOp::reduce_max: case WarpOp::reduce_max_s: return "__reduce_max_sync";
    case WarpOp::reduce_and: return "__reduce_and_sync";
    case WarpOp::reduce_or: return "__reduce_or_sync";
    case WarpOp::reduce_xor: return "__reduce_xor_sync";
    case WarpOp::match_any: return "__match_any_sync";
    case WarpOp::match_all: return "__match_all_sync";
  }
  return "?";
}

inline const char* barrier_name(BarrierKind k) {
  switch (k) {
    case BarrierKind::sync: return "__syncthreads";
    case BarrierKind::count: return "__syncthreads_count";
    case BarrierKind::and_: return "__syncthreads_and";
    case BarrierKind::or_: return "__syncthreads_or";
  }
  return "?";
}

constexpr uint64_t kPoison = ~uint64_t{0};  // what a read from an absent lane returns (NaN)

struct Fiber {
  void* sp = nullptr;
#if defined(CUEMU_UCONTEXT)
  ucontext_t uc;
#endif
  Stack stack;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  State state = State::runnable;
  // where it waits
  const char* file = nullptr;
  int line = 0;
  BarrierKind barrier = BarrierKind::sync;
  WarpOp op = WarpOp::syncwarp;
  unsigned mask = 0;
  int arg = 0;
  int width = 32;
  uint64_t value = 0;
  uint64_t result = 0;
  bool predicate = false;
#if defined(CUEMU_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct LaunchSpec {
  const char* name;
  dim3 grid, block;
  size_t smem;
  void (*invoke)(const void* ctx);
  const void* ctx;
};

// One block in flight on this OS thread.
struct BlockRun {
  const LaunchSpec* spec = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  unsigned exited = 0;
  void* sched_sp = nullptr;
#if defined(CUEMU_UCONTEXT)
  ucontext_t sched_uc;
#endif
#if defined(CUEMU_ASAN)
  void* sched_fake_stack = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
  std::exception_ptr failure;
  uint64_t rng = 0;
};

inline thread_local BlockRun* tl_block = nullptr;
inline thread_local unsigned char* tl_dynamic_smem = nullptr;
inline thread_local size_t tl_dynamic_smem_bytes = 0;

inline std::string where(const BlockRun& b) {
  return cat("kernel '", b.spec->name, "' block ", dim_str(blockIdx), " (schedule ",
             schedule_name(config().schedule),
             config().schedule == Schedule::random ? cat(", CUEMU_SEED=", config().seed) : std::string(),
             ")");
}

// ---- switching between the scheduler and a fiber, with AddressSanitizer told about each stack
[[noreturn]] inline void fiber_main();

#if defined(CUEMU_UCONTEXT)
inline void fiber_main_uc() { fiber_main(); }
#endif

inline void prepare_fiber(Fiber& f, bool whole_stack) {
#if defined(CUEMU_ASAN)
  // A finished fiber leaves only its two outermost frames (fiber_main, the last switch) poisoned,
  // near the top: every deeper frame returned and cleaned up after itself.
  const size_t span = whole_stack ? f.stack.size() : std::min<size_t>(f.stack.size(), 16 * 1024);
  __asan_unpoison_memory_region(f.stack.top() - span, span);
  f.fake_stack = nullptr;
#else
  (void)whole_stack;
#endif
#if defined(CUEMU_UCONTEXT)
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack.bottom();
  f.uc.uc_stack.ss_size = f.stack.size();
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, &fiber_main_uc, 0);
#else
  // The frame cuemu_switch_x86_64 pops: [csr][r15][r14][r13][r12][rbx][rbp][ret = fiber_main][0].
  // After its `ret`, rsp = top - 8, the alignment a function expects on entry.
  uint64_t* top = reinterpret_cast<uint64_t*>(f.stack.top());
  top[-1] = 0;
  top[-2] = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;
  uint32_t csr[2];
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
  std::memcpy(&top[-9], csr, 8);
  f.sp = &top[-9];
#endif
}

inline void resume(BlockRun& b, Fiber& f) {
  b.current = &f;
  threadIdx = f.tid;
#if defined(CUEMU_ASAN)
  __sanitizer_start_switch_fiber(&b.sched_fake_stack, f.stack.bottom(), f.stack.size());
#endif
  asm volatile("" ::: "memory");
#if defined(CUEMU_UCONTEXT)
  swapcontext(&b.sched_uc, &f.uc);
#else
  switch_fn(&b.sched_sp, f.sp);
#endif
  asm volatile("" ::: "memory");
#if defined(CUEMU_ASAN)
  __sanitizer_finish_switch_fiber(b.sched_fake_stack, nullptr, nullptr);
#endif
  b.current = nullptr;
}

// Back to the scheduler; returns when the scheduler resumes this fiber. `final`: never resumed.
inline void yield_to_scheduler(BlockRun& b, Fiber& f, bool final = false) {
#if defined(CUEMU_ASAN)
  __sanitizer_start_switch_fiber(final ? nullptr : &f.fake_stack, b.sched_bottom, b.sched_size);
#else
  (void)final;
#endif
  asm volatile("" ::: "memory");
#if defined(CUEMU_UCONTEXT)
  swapcontext(&f.uc, &b.sched_uc);
#else
  switch_fn(&f.sp, b.sched_sp);
#endif
  asm volatile("" ::: "memory");
#if defined(CUEMU_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

[[noreturn]] inline void fiber_main() {
  BlockRun& b = *tl_block;
  Fiber& f = *b.current;
#if defined(CUEMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_bottom, &b.sched_size);
#endif
  try {
    b.spec->invoke(b.spec->ctx);
  } catch (...) {
    if (!b.failure) b.failure = std::current_exception();
  }
  f.state = State::exited;
  ++b.exited;
  yield_to_scheduler(b, f, true);
  std::abort();  // an exited fiber is never resumed
}

inline BlockRun& current_block(const char* what) {
  BlockRun* b = tl_block;
  if (!b || !b->current) {
    std::fprintf(stderr, "cuemu: %s called outside a kernel launched with cuemu::launch\n", what);
    std::abort();
  }
  return *b;
}

// ---- sync points, called by the kernel's fibers
inline int barrier(BarrierKind kind, int predicate, const char* file, int line) {
  BlockRun& b = current_block("__syncthreads");
  Fiber& f = *b.current;
  f.state = State::at_barrier;
  f.barrier = kind;
  f.predicate = predicate != 0;
  f.file = file;
  f.line = line;
  yield_to_scheduler(b, f);
  return static_cast<int>(f.result);
}

inline unsigned lane_of(const Fiber& f) { return f.linear % 32; }

inline uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file,
                        int line) {
  BlockRun& b = current_block(warp_op_name(op));
  Fiber& f = *b.current;
  const unsigned lane = lane_of(f);
  if (!(mask >> lane & 1u))
    throw error(cat(where(b), ": thread ", dim_str(f.tid), " (lane ", lane, ") calls ", warp_op_name(op),
                    " at ", file, ":", line, " with mask ", hex32(mask),
                    ", which does not include its own lane"));
  if ((op == WarpOp::shfl || op == WarpOp::shfl_up || op == WarpOp::shfl_down || op == WarpOp::shfl_xor) &&
      (width < 1 || width > 32 || (width & (width - 1))))
    throw error(cat(where(b), ": ", warp_op_name(op), " at ", file, ":", line, ": width ", width,
                    " is not a power of two in [1, 32]"));
  f.state = State::at_warp;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.file = file;
  f.line = line;
  yield_to_scheduler(b, f);
  return f.result;
}

// ---- the scheduler
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// "0-31,64-95": the set of thread indices, compactly.
inline std::string ranges(const std::vector<unsigned>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += ids[i] == ids[j] ? cat(ids[i]) : cat(ids[i], "-", ids[j]);
    i = j + 1;
  }
  return out;
}

inline std::string site(const Fiber& f) { return cat(f.file, ":", f.line); }

// Completes the warp collective that lane `leader` waits in, if every live lane of its mask has
// arrived at one. Returns the number of fibers released.
inline unsigned complete_warp_op(BlockRun& b, unsigned warp_base, unsigned nthreads, Fiber& leader) {
  const unsigned mask = leader.mask;
  unsigned arrived = 0;  // lanes of the mask that wait in this collective
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const unsigned t = warp_base + l;
    if (t >= nthreads) continue;  // a lane that does not exist drops out, like an exited one
    Fiber& g = b.fibers[t];
    if (g.state == State::exited) continue;
    if (g.state != State::at_warp) return 0;  // it will come later, or never (deadlock report)
    if (g.mask != mask || g.op != leader.op)
      throw error(cat(where(b), ": lanes of mask ", hex32(mask), " of warp ", warp_base / 32,
                      " are in different warp collectives: lane ", lane_of(leader), " in ",
                      warp_op_name(leader.op), "(mask=", hex32(leader.mask), ") at ", site(leader),
                      ", lane ", l, " in ", warp_op_name(g.op), "(mask=", hex32(g.mask), ") at ",
                      site(g)));
    arrived |= 1u << l;
  }
  auto value_of = [&](unsigned l) -> uint64_t {
    return arrived >> l & 1u ? b.fibers[warp_base + l].value : kPoison;
  };
  uint64_t common = 0;
  switch (leader.op) {
    case WarpOp::ballot:
    case WarpOp::any:
    case WarpOp::all: {
      unsigned bits = 0;
      for (unsigned l = 0; l < 32; ++l)
        if (arrived >> l & 1u && b.fibers[warp_base + l].value) bits |= 1u << l;
      common = leader.op == WarpOp::ballot ? bits : leader.op == WarpOp::any ? bits != 0 : bits == arrived;
      break;
    }
    case WarpOp::reduce_add: case WarpOp::reduce_and: case WarpOp::reduce_or: case WarpOp::reduce_xor:
    case WarpOp::reduce_min: case WarpOp::reduce_max: case WarpOp::reduce_min_s: case WarpOp::reduce_max_s: {
      bool first = true;
      uint32_t acc = 0;
      for (unsigned l = 0; l < 32; ++l) {
        if (!(arrived >> l & 1u)) continue;
        const uint32_t v = static_cast<uint32_t>(b.fibers[warp_base + l].value);
        if (first) { acc = v; first = false; continue; }
        switch (leader.op) {
          case WarpOp::reduce_add: acc += v; break;
          case WarpOp::reduce_and: acc &= v; break;
          case WarpOp::reduce_or: acc |= v; break;
          case WarpOp::reduce_xor: acc ^= v; break;
          case WarpOp::reduce_min: acc = std::min(acc, v); break;
          case WarpOp::reduce_max: acc = std::max(acc, v); break;
          case WarpOp::reduce_min_s: acc = static_cast<uint32_t>(std::min(int32_t(acc), int32_t(v))); break;
          case WarpOp::reduce_max_s: acc = static_cast<uint32_t>(std::max(int32_t(acc), int32_t(v))); break;
          default: break;
        }
      }
      common = acc;
      break;
    }
    default: break;
  }
  unsigned released = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(arrived >> l & 1u)) continue;
    Fiber& g = b.fibers[warp_base + l];
    // PTX shfl.sync: segment of `width` lanes; a source outside the segment yields the own value,
    // an absent source lane (not in the mask, exited, nonexistent) yields poison.
    const unsigned w = static_cast<unsigned>(g.width), seg = l & ~(w - 1), seg_end = seg + w - 1;
    const int a = g.arg;
    switch (g.op) {
      case WarpOp::shfl: g.result = value_of(seg | (static_cast<unsigned>(a) & (w - 1))); break;
      case WarpOp::shfl_up: {
        const int j = static_cast<int>(l) - a;
        g.result = j >= static_cast<int>(seg) ? value_of(static_cast<unsigned>(j)) : g.value;
        break;
      }
      case WarpOp::shfl_down: {
        const unsigned j = l + static_cast<unsigned>(a);
        g.result = j <= seg_end ? value_of(j) : g.value;
        break;
      }
      case WarpOp::shfl_xor: {
        const unsigned j = l ^ (static_cast<unsigned>(a) & 31u);
        g.result = j <= seg_end ? value_of(j) : g.value;
        break;
      }
      case WarpOp::match_any: {
        unsigned bits = 0;
        for (unsigned m = 0; m < 32; ++m)
          if (arrived >> m & 1u && b.fibers[warp_base + m].value == g.value) bits |= 1u << m;
        g.result = bits;
        break;
      }
      case WarpOp::match_all: {
        bool same = true;
        for (unsigned m = 0; m < 32; ++m)
          if (arrived >> m & 1u && b.fibers[warp_base + m].value != g.value) same = false;
        g.result = same ? arrived : 0;
        break;
      }
      default: g.result = common; break;
    }
    g.state = State::runnable;
    ++released;
  }
  return released;
}

[[noreturn]] inline void report_deadlock(BlockRun& b) {
  const unsigned n = static_cast<unsigned>(b.fibers.size());
  std::map<std::string, std::vector<unsigned>> at_barrier;
  std::ostringstream os;
  os << where(b) << ": deadlock: no thread of the block can proceed.";
  for (const Fiber& f : b.fibers)
    if (f.state == State::at_barrier) at_barrier[site(f)].push_back(f.linear);
  for (auto& [s, ids] : at_barrier)
    os << " " << ids.size() << " thread(s) (" << ranges(ids) << ") wait at " << barrier_name(b.fibers[ids[0]].barrier)
       << " " << s << ";";
  for (unsigned base = 0; base < n; base += 32) {
    std::map<std::string, unsigned> waiting;  // collective and site -> lanes
    unsigned missing = 0, exited = 0;
    for (unsigned l = 0; l < 32 && base + l < n; ++l) {
      const Fiber& f = b.fibers[base + l];
      if (f.state == State::exited) exited |= 1u << l;
      if (f.state != State::at_warp) continue;
      waiting[cat(warp_op_name(f.op), "(mask=", hex32(f.mask), ") at ", site(f))] |= 1u << l;
      missing |= f.mask;
    }
    if (waiting.empty()) continue;
    unsigned present = 0;
    for (auto& [what, lanes] : waiting) present |= lanes;
    for (auto& [what, lanes] : waiting) os << " warp " << base / 32 << ": lanes " << hex32(lanes) << " wait in " << what << ";";
    const unsigned absent = missing & ~present;
    if (absent) {
      os << " lanes " << hex32(absent) << " never arrived";
      if (absent & exited) os << " (" << hex32(absent & exited) << " exited)";
      os << ";";
    }
  }
  os << " " << b.exited << " of " << n << " exited.";
  throw error(os.str());
}

// Between passes: every live fiber now waits at a sync point. Completes what can complete;
// reports a deadlock, a divergent barrier or threads that exited before a barrier otherwise.
inline void complete_sync_points(BlockRun& b) {
  const unsigned n = static_cast<unsigned>(b.fibers.size());
  unsigned released = 0, at_barrier = 0;
  for (unsigned base = 0; base < n; base += 32) {
    for (unsigned l = 0; l < 32 && base + l < n; ++l) {
      Fiber& f = b.fibers[base + l];
      if (f.state == State::at_warp) released += complete_warp_op(b, base, n, f);
    }
  }
  if (released) return;
  for (const Fiber& f : b.fibers) at_barrier += f.state == State::at_barrier;
  if (at_barrier == 0 || at_barrier != n - b.exited) report_deadlock(b);

  const Fiber* first = nullptr;
  for (const Fiber& f : b.fibers)
    if (f.state == State::at_barrier) {
      first = &f;
      break;
    }
  std::vector<unsigned> same, other;
  const Fiber* divergent = nullptr;
  for (const Fiber& f : b.fibers) {
    if (f.state != State::at_barrier) continue;
    if (f.line == first->line && std::strcmp(f.file, first->file) == 0 && f.barrier == first->barrier) {
      same.push_back(f.linear);
    } else {
      other.push_back(f.linear);
      if (!divergent) divergent = &f;
    }
  }
  if (divergent)
    throw error(cat(where(b), ": divergent barrier: threads ", ranges(same), " wait at ",
                    barrier_name(first->barrier), " ", site(*first), " but threads ", ranges(other),
                    " arrived at ", barrier_name(divergent->barrier), " ", site(*divergent),
                    " (every thread of a block must reach the same __syncthreads)"));
  if (b.exited && !config().allow_exited_at_barrier)
    throw error(cat(where(b), ": ", at_barrier, " thread(s) wait at ", barrier_name(first->barrier), " ",
                    site(*first), " but ", b.exited, " of ", n,
                    " exited before reaching it (an early return before a barrier is undefined in CUDA;"
                    " guard the work instead; CUEMU_ALLOW_EXITED_AT_BARRIER=1 counts them as arrived)"));
  unsigned count = 0;
  for (const Fiber& f : b.fibers) count += f.state == State::at_barrier && f.predicate;
  uint64_t result = 0;
  switch (first->barrier) {
    case BarrierKind::sync: break;
    case BarrierKind::count: result = count; break;
    case BarrierKind::and_: result = count == at_barrier; break;
    case BarrierKind::or_: result = count != 0; break;
  }
  for (Fiber& f : b.fibers)
    if (f.state == State::at_barrier) {
      f.result = result;
      f.state = State::runnable;
    }
}

inline void run_block(BlockRun& b, unsigned nthreads) {
  StackPool& pool = stack_pool();
  pool.reserve(nthreads, config().stack_bytes);
  b.fibers.resize(nthreads);
  const dim3 bd = blockDim;
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = b.fibers[t];
    f = Fiber{};
    f.stack = pool.stacks[t];
    f.linear = t;
    f.tid = uint3{t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
    prepare_fiber(f, pool.dirty);
  }
  pool.dirty = true;  // until the block completes
  b.exited = 0;
  b.failure = nullptr;
  std::vector<unsigned> order(nthreads);
  const Schedule schedule = config().schedule;
  for (unsigned t = 0; t < nthreads; ++t) order[t] = schedule == Schedule::reverse ? nthreads - 1 - t : t;
  for (;;) {
    if (schedule == Schedule::random)
      for (unsigned i = nthreads; i > 1; --i) std::swap(order[i - 1], order[splitmix64(b.rng) % i]);
    for (unsigned t : order) {
      Fiber& f = b.fibers[t];
      if (f.state != State::runnable) continue;
      resume(b, f);
      if (b.failure) {
        threadIdx = uint3{0, 0, 0};
        std::rethrow_exception(b.failure);  // the other fibers are abandoned with their stacks
      }
    }
    if (b.exited == nthreads) break;
    complete_sync_points(b);
  }
  pool.dirty = false;
  threadIdx = uint3{0, 0, 0};
}

// Per-kernel attributes set with cudaFuncSetAttribute.
struct FuncAttributes {
  std::mutex mutex;
  std::map<const void*, size_t> max_dynamic_smem;
};
inline FuncAttributes& func_attributes() {
  static FuncAttributes a;
  return a;
}

inline thread_local cudaError_t tl_last_error = cudaSuccess;
inline cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) tl_last_error = e;
  return e;
}

// ---- stream capture ------------------------------------------------------------------------------
// The stream this thread is capturing, if any. Work on a capturing stream is recorded into its
// graph instead of run. CUDA forbids host-synchronous calls while a capture is under way, and in
// relaxed mode lets some through that then do the wrong thing on a GPU (a copy made at capture
// time, not at replay); the emulator fails every one and invalidates the capture, so a graph that
// would be wrong on a GPU fails here.
inline thread_local cudaStream_t tl_capturing = nullptr;

inline bool is_created_stream(cudaStream_t s) { return s && s != cudaStreamLegacy && s != cudaStreamPerThread; }
inline bool is_capturing(cudaStream_t s) { return is_created_stream(s) && s->capture; }

inline cudaError_t capture_violation(cudaError_t e = cudaErrorStreamCaptureUnsupported) {
  if (tl_capturing) tl_capturing->capture_invalidated = true;
  return set_error(e);
}

// Records `work` when `stream` is capturing, else runs it now (unless another stream of this
// thread is capturing: ordering against it is undefined, an error).
inline cudaError_t enqueue(cudaStream_t stream, std::function<void()> work) {
  if (is_capturing(stream)) {
    stream->capture->nodes.push_back(std::move(work));
    return cudaSuccess;
  }
  if (tl_capturing) return capture_violation(cudaErrorStreamCaptureImplicit);
  work();
  return cudaSuccess;
}

// A host-synchronous call (cudaMemcpy, cudaMemset, cudaDeviceSynchronize, cudaFree...): an error
// while this thread captures.
inline cudaError_t check_not_capturing() { return tl_capturing ? capture_violation() : cudaSuccess; }

inline std::atomic<uint64_t>& launch_counter() {
  static std::atomic<uint64_t> n{0};
  return n;
}

// Runs the blocks [first, last) of the grid on this OS thread.
inline void run_blocks(const LaunchSpec& spec, uint64_t launch_id, uint64_t first, uint64_t last,
                       std::atomic<uint64_t>* next, std::atomic<bool>* stop) {
  const unsigned nthreads = spec.block.x * spec.block.y * spec.block.z;
  blockDim = spec.block;
  gridDim = spec.grid;
  std::vector<unsigned char> smem;
  if (spec.smem) smem.resize(spec.smem);  // exactly the requested size: ASan sees overruns
  tl_dynamic_smem = spec.smem ? smem.data() : nullptr;
  tl_dynamic_smem_bytes = spec.smem;
  BlockRun b;
  b.spec = &spec;
  tl_block = &b;
  struct Reset {
    ~Reset() {
      tl_block = nullptr;
      tl_dynamic_smem = nullptr;
      tl_dynamic_smem_bytes = 0;
    }
  } reset;
  const uint64_t gx = spec.grid.x, gy = spec.grid.y;
  for (uint64_t i = next ? next->fetch_add(1) : first; i < last; i = next ? next->fetch_add(1) : i + 1) {
    if (stop && stop->load()) return;
    blockIdx = uint3{static_cast<unsigned>(i % gx), static_cast<unsigned>(i / gx % gy),
                     static_cast<unsigned>(i / (gx * gy))};
    // Dynamic shared memory starts as NaN (all bits set) in every block: a read before a write
    // shows up in the results.
    if (spec.smem) std::memset(smem.data(), 0xFF, spec.smem);
    uint64_t s = config().seed ^ (launch_id * 0x9E3779B97F4A7C15ull) ^ (i * 0xD1B54A32D192ED03ull);
    b.rng = splitmix64(s);
    run_block(b, nthreads);
  }
}

// ---- crash diagnostics: which kernel, block and thread was running
// Writes "cuemu: <what> in kernel 'k' block (x,y,z) thread (x,y,z)<tail>" to stderr, if a kernel
// is running on this OS thread. Only async-signal-safe calls (snprintf into a stack buffer, write).
inline void describe_crash(const char* what, const char* tail) {
  const BlockRun* b = tl_block;
  if (!b || !b->current) return;
  const uint3 t = b->current->tid, bi = blockIdx;
  char buf[512];
  const int len = std::snprintf(buf, sizeof buf, "cuemu: %s in kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)%s\n",
                                what, b->spec->name, bi.x, bi.y, bi.z, t.x, t.y, t.z, tail);
  if (len > 0) (void)!write(2, buf, static_cast<size_t>(std::min<int>(len, sizeof buf - 1)));
}

#if defined(CUEMU_ASAN)
extern "C" inline void cuemu_asan_death_callback() { describe_crash("the error above happened", ""); }
inline void install_crash_reporting() {
  static std::once_flag once;
  std::call_once(once, [] { __sanitizer_set_death_callback(&cuemu_asan_death_callback); });
}
inline void prepare_signal_stack() {}
#else
// A SIGSEGV inside a kernel names the kernel, block and thread, and says so when it is a fiber
// stack overflow (a hit on the guard page); then the previous handler (the default crash, or
// Python's faulthandler) takes over, so the process dies as it would have.
inline struct sigaction& previous_segv_action() {
  static struct sigaction previous;
  return previous;
}

extern "C" inline void cuemu_segv_handler(int, siginfo_t* info, void*) {
  const BlockRun* b = tl_block;
  if (b && b->current) {
    const char* addr = static_cast<const char*>(info->si_addr);
    const Stack& s = b->current->stack;
    if (addr >= s.base && addr < s.bottom() + 256) {
      char tail[160];
      std::snprintf(tail, sizeof tail, ": the thread used more than its %zu KiB of stack; raise CUEMU_STACK_KB",
                    s.size() / 1024);
      describe_crash("stack overflow", tail);
    } else {
      describe_crash("segmentation fault", "");
    }
  }
  sigaction(SIGSEGV, &previous_segv_action(), nullptr);  // the faulting access repeats and gets it
}

inline void install_crash_reporting() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = &cuemu_segv_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous_segv_action());
  });
}

// The handler must run on another stack than the overflowed one. Each OS thread that runs blocks
// gets an alternate signal stack, unless it has one already (Python's faulthandler sets one).
inline void prepare_signal_stack() {
  static thread_local bool done = false;
  if (done) return;
  done = true;
  stack_t current{};
  if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
  constexpr size_t kBytes = 64 * 1024;
  static thread_local struct AltStack {
    void* p = nullptr;
    ~AltStack() {
      if (p) {
        stack_t off{};
        off.ss_flags = SS_DISABLE;
        sigaltstack(&off, nullptr);
        munmap(p, kBytes);
      }
    }
  } alt;
  alt.p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (alt.p == MAP_FAILED) {
    alt.p = nullptr;
    return;
  }
  stack_t st{};
  st.ss_sp = alt.p;
  st.ss_size = kBytes;
  sigaltstack(&st, nullptr);
}
#endif

// ---- OS threads for CUEMU_THREADS > 1: created once, kept, so their fiber stacks are reused.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool* pool = new WorkerPool;  // never destroyed: workers may outlive static destructors
    return *pool;
  }

  // Runs job(w) for w in [0, workers): w = 0 on the calling thread, the others on pool threads.
  // Returns when all are done. One run at a time.
  void run(int workers, const std::function<void(int)>& job) {
    std::lock_guard<std::mutex> one_at_a_time(run_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(threads_.size()) < workers - 1) {
      const int index = static_cast<int>(threads_.size()) + 1;
      threads_.emplace_back([this, index] { loop(index); });
      threads_.back().detach();
    }
    job_ = &job;
    active_ = workers;
    pending_ = workers - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    job(0);
    lock.lock();
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

inline void run_launch(const LaunchSpec& spec, const void* kernel_id) {
  if (tl_block) throw error(cat("cuemu: kernel '", spec.name, "' launched from inside a kernel (dynamic parallelism is not emulated)"));
  const dim3 g = spec.grid, bl = spec.block;
  const uint64_t nthreads = uint64_t{bl.x} * bl.y * bl.z;
  // Thrown, not left in cudaGetLastError: an exception already stops the caller, and a stale
  // last error would be blamed on the next, innocent launch.
  auto config_error = [&](cudaError_t code, const std::string& why) {
    throw error(cat("kernel '", spec.name, "': invalid launch (", cudaGetErrorString(code), "): ", why));
  };
  if (!bl.x || !bl.y || !bl.z || bl.x > 1024 || bl.y > 1024 || bl.z > 64 || nthreads > 1024)
    config_error(cudaErrorInvalidConfiguration,
                 cat("block ", dim_str(bl), " (at most (1024,1024,64) and 1024 threads in all)"));
  if (!g.x || !g.y || !g.z || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    config_error(cudaErrorInvalidConfiguration, cat("grid ", dim_str(g), " (each dimension >= 1; y, z <= 65535)"));
  size_t limit = kDefaultSharedMemory;
  {
    FuncAttributes& a = func_attributes();
    std::lock_guard<std::mutex> lock(a.mutex);
    auto it = a.max_dynamic_smem.find(kernel_id);
    if (it != a.max_dynamic_smem.end()) limit = std::max(limit, it->second);
  }
  if (spec.smem > limit)
    config_error(cudaErrorInvalidValue,
                 cat(spec.smem, " bytes of dynamic shared memory exceed the ", limit, "-byte limit",
                     limit == kDefaultSharedMemory
                         ? " (48 KiB unless cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) raises it)"
                         : ""));
  install_crash_reporting();
  const uint64_t blocks = uint64_t{g.x} * g.y * g.z;
  const uint64_t launch_id = launch_counter().fetch_add(1);
  const int workers = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(config().os_threads), blocks));
  if (workers <= 1) {
    prepare_signal_stack();
    run_blocks(spec, launch_id, 0, blocks, nullptr, nullptr);
    return;
  }
  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::vector<std::exception_ptr> failures(static_cast<size_t>(workers));
  WorkerPool::instance().run(workers, [&](int w) {
    try {
      prepare_signal_stack();
      run_blocks(spec, launch_id, 0, blocks, &next, &stop);
    } catch (...) {
      failures[static_cast<size_t>(w)] = std::current_exception();
      stop = true;
    }
  });
  for (auto& f : failures)
    if (f) std::rethrow_exception(f);
}

template <class Ctx>
void invoke_kernel(const void* ctx) {
  const Ctx& c = *static_cast<const Ctx*>(ctx);
  std::apply(c.kernel, c.params);  // by-value kernel parameters: every thread gets its own copy
}

// Errors inside a fiber are thrown with the block and thread attached.
template <class... Args>
[[noreturn]] void fail_in_kernel(const Args&... args) {
  BlockRun& b = current_block("a device-side error");
  throw error(cat(where(b), " thread ", dim_str(b.current->tid), ": ", args...));
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Launch: cuemu::launch(kernel, grid, block, smem_bytes, args...) runs the whole grid before it
// returns. Arguments are converted to the kernel's parameter types once, like CUDA's parameter
// buffer. Invalid configurations set cudaGetLastError and throw cuemu::error.
// On a capturing stream the launch is recorded with its arguments, as CUDA's graph kernel node
// keeps its parameter buffer, and the grid runs at each replay. A launch on another stream while
// this thread captures sets cudaErrorStreamCaptureImplicit (cudaGetLastError) and runs nothing.
template <class... Params, class... Args>
void launch_named_on(cudaStream_t stream, const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                     size_t smem_bytes, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "cuemu::launch: wrong number of kernel arguments");
  static_assert((std::is_trivially_copyable_v<std::decay_t<Params>> && ...),
                "CUDA kernel parameters must be trivially copyable");
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  const void* kernel_id = reinterpret_cast<const void*>(kernel);
  if (detail::is_capturing(stream)) {
    auto ctx = std::make_shared<const Ctx>(Ctx{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)});
    stream->capture->nodes.push_back([=] {
      const detail::LaunchSpec spec{name, grid, block, smem_bytes, &detail::invoke_kernel<Ctx>, ctx.get()};
      detail::run_launch(spec, kernel_id);
    });
    return;
  }
  if (detail::tl_capturing) {
    detail::capture_violation(cudaErrorStreamCaptureImplicit);
    return;
  }
  const Ctx ctx{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  const detail::LaunchSpec spec{name, grid, block, smem_bytes, &detail::invoke_kernel<Ctx>, &ctx};
  detail::run_launch(spec, kernel_id);
}

template <class... Params, class... Args>
void launch_named(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                  Args&&... args) {
  launch_named_on(nullptr, name, kernel, grid, block, smem_bytes, std::forward<Args>(args)...);
}

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  launch_named("kernel", kernel, grid, block, smem_bytes, std::forward<Args>(args)...);
}

template <class... Params, class... Args>
void launch_on(cudaStream_t stream, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
               Args&&... args) {
  launch_named_on(stream, "kernel", kernel, grid, block, smem_bytes, std::forward<Args>(args)...);
}

// The block's dynamic shared memory (the launch's smem_bytes), NaN-filled at the start of each block.
template <class T>
T* dynamic_shared() {
  detail::current_block("dynamic_shared");
  return reinterpret_cast<T*>(detail::tl_dynamic_smem);
}

inline size_t dynamic_shared_bytes() { return detail::tl_dynamic_smem_bytes; }

}  // namespace cuemu

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives. Macros, so that every sync point knows its file and line.
#define __syncthreads() ((void)::cuemu::detail::barrier(::cuemu::detail::BarrierKind::sync, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) ::cuemu::detail::barrier(::cuemu::detail::BarrierKind::count, (p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::cuemu::detail::barrier(::cuemu::detail::BarrierKind::and_, (p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::cuemu::detail::barrier(::cuemu::detail::BarrierKind::or_, (p), __FILE__, __LINE__)
#define __syncwarp(...) ::cuemu::detail::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::cuemu::detail::shfl<::cuemu::detail::WarpOp::shfl>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuemu::detail::shfl<::cuemu::detail::WarpOp::shfl_up>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuemu::detail::shfl<::cuemu::detail::WarpOp::shfl_down>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuemu::detail::shfl<::cuemu::detail::WarpOp::shfl_xor>(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) static_cast<unsigned>(::cuemu::detail::vote(::cuemu::detail::WarpOp::ballot, (mask), (p), __FILE__, __LINE__))
#define __any_sync(mask, p) static_cast<int>(::cuemu::detail::vote(::cuemu::detail::WarpOp::any, (mask), (p), __FILE__, __LINE__))
#define __all_sync(mask, p) static_cast<int>(::cuemu::detail::vote(::cuemu::detail::WarpOp::all, (mask), (p), __FILE__, __LINE__))
#define __reduce_add_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_add, (mask), (v), __FILE__, __LINE__)
#define __reduce_min_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_min, (mask), (v), __FILE__, __LINE__)
#define __reduce_max_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_max, (mask), (v), __FILE__, __LINE__)
#define __reduce_and_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_and, (mask), (v), __FILE__, __LINE__)
#define __reduce_or_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_or, (mask), (v), __FILE__, __LINE__)
#define __reduce_xor_sync(mask, v) ::cuemu::detail::reduce(::cuemu::detail::WarpOp::reduce_xor, (mask), (v), __FILE__, __LINE__)
#define __match_any_sync(mask, v) ::cuemu::detail::match_any((mask), (v), __FILE__, __LINE__)
#define __match_all_sync(mask, v, pred) ::cuemu::detail::match_all((mask), (v), (pred), __FILE__, __LINE__)

namespace cuemu::detail {

inline void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_op(WarpOp::syncwarp, mask, 0, 0, 32, file, line);
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp collectives move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <WarpOp kOp, class T>
T shfl(const char* file, int line, unsigned mask, T var, int lane_or_delta, int width = 32) {
  return from_bits<T>(warp_op(kOp, mask, to_bits(var), lane_or_delta, width, file, line));
}

inline uint64_t vote(WarpOp op, unsigned mask, int predicate, const char* file, int line) {
  return warp_op(op, mask, predicate != 0, 0, 32, file, line);
}

inline unsigned reduce(WarpOp op, unsigned mask, unsigned value, const char* file, int line) {
  return static_cast<unsigned>(warp_op(op, mask, value, 0, 32, file, line));
}
inline int reduce(WarpOp op, unsigned mask, int value, const char* file, int line) {
  if (op == WarpOp::reduce_min) op = WarpOp::reduce_min_s;
  if (op == WarpOp::reduce_max) op = WarpOp::reduce_max_s;
  return static_cast<int>(warp_op(op, mask, static_cast<uint32_t>(value), 0, 32, file, line));
}

template <class T>
unsigned match_any(unsigned mask, T value, const char* file, int line) {
  return static_cast<unsigned>(warp_op(WarpOp::match_any, mask, to_bits(value), 0, 32, file, line));
}
template <class T>
unsigned match_all(unsigned mask, T value, int* pred, const char* file, int line) {
  const unsigned r = static_cast<unsigned>(warp_op(WarpOp::match_all, mask, to_bits(value), 0, 32, file, line));
  *pred = r != 0;
  return r;
}

// Atomics: real atomic instructions, relaxed like CUDA's, so blocks on several OS threads stay
// correct. Float and double go through a compare-and-swap loop on their bits.
template <class T>
T atomic_rmw_float(T* addr, T (*op)(T, T), T v) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  typedef Bits __attribute__((may_alias)) AliasBits;
  AliasBits* p = reinterpret_cast<AliasBits*>(addr);
  Bits old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    const T updated = op(from_bits<T>(old), v);
    Bits desired;
    std::memcpy(&desired, &updated, sizeof desired);
    if (__atomic_compare_exchange_n(p, &old, desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return from_bits<T>(old);
  }
}

}  // namespace cuemu::detail

// ---------------------------------------------------------------------------------------------
// Device functions: atomics
#define CUEMU_ATOMIC_INT(T)                                                                              \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }                   \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }                 \
  inline T atomicCAS(T* a, T expected, T desired) {                                                      \
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);       \
    return expected;                                                                                     \
  }                                                                                                      \
  inline T atomicMin(T* a, T v) {                                                                        \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                        \
    while (v < old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) \
      ;                                                                                                  \
    return old;                                                                                          \
  }                                                                                                      \
  inline T atomicMax(T* a, T v) {                                                                        \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                        \
    while (v > old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) \
      ;                                                                                                  \
    return old;                                                                                          \
  }                                                                                                      \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }                   \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                     \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
CUEMU_ATOMIC_INT(int)
CUEMU_ATOMIC_INT(unsigned)
CUEMU_ATOMIC_INT(unsigned long long)
#undef CUEMU_ATOMIC_INT
inline long long atomicMin(long long* a, long long v) {
  long long old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline long long atomicMax(long long* a, long long v) {
  long long old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (v > old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned short atomicCAS(unsigned short* a, unsigned short expected, unsigned short desired) {
  __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1), as in CUDA
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  unsigned old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(a, &old, old >= limit ? 0u : old + 1, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  unsigned old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(a, &old, (old == 0 || old > limit) ? limit : old - 1, true,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline float atomicAdd(float* a, float v) {
  return ::cuemu::detail::atomic_rmw_float<float>(a, [](float x, float y) { return x + y; }, v);
}
inline double atomicAdd(double* a, double v) {
  return ::cuemu::detail::atomic_rmw_float<double>(a, [](double x, double y) { return x + y; }, v);
}
inline float atomicExch(float* a, float v) {
  return ::cuemu::detail::atomic_rmw_float<float>(a, [](float, float y) { return y; }, v);
}
inline float atomicMin(float* a, float v) {  // sm_90 only in CUDA; handy in reductions
  return ::cuemu::detail::atomic_rmw_float<float>(a, [](float x, float y) { return fminf(x, y); }, v);
}
inline float atomicMax(float* a, float v) {
  return ::cuemu::detail::atomic_rmw_float<float>(a, [](float x, float y) { return fmaxf(x, y); }, v);
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicExch_block atomicExch
#define atomicCAS_block atomicCAS
#define atomicMin_block atomicMin
#define atomicMax_block atomicMax

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

[[noreturn]] inline void __trap() { ::cuemu::detail::fail_in_kernel("__trap() called"); }
[[noreturn]] inline void __brkpt() { ::cuemu::detail::fail_in_kernel("__brkpt() called"); }

inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------------
// Device functions: loads, bits, conversions, math
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(static_cast<unsigned>(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll(static_cast<unsigned long long>(x)) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t{a} * b) >> 32); }
inline int __mulhi(int a, int b) { return static_cast<int>((int64_t{a} * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (uint64_t{y} << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>((((uint64_t{hi} << 32) | lo) << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  return static_cast<unsigned>(((uint64_t{hi} << 32) | lo) >> (shift & 31));
}
inline int __float_as_int(float x) { return ::cuemu::detail::from_bits<int>(::cuemu::detail::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return ::cuemu::detail::from_bits<unsigned>(::cuemu::detail::to_bits(x)); }
inline float __int_as_float(int x) { return ::cuemu::detail::from_bits<float>(::cuemu::detail::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::cuemu::detail::from_bits<float>(::cuemu::detail::to_bits(x)); }
inline long long __double_as_longlong(double x) { return ::cuemu::detail::from_bits<long long>(::cuemu::detail::to_bits(x)); }
inline double __longlong_as_double(long long x) { return ::cuemu::detail::from_bits<double>(::cuemu::detail::to_bits(x)); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

// min/max as CUDA declares them for device code (in the global namespace).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// glibc declares these fast-math names (they are its internal aliases) but does not export them.
extern "C" {
inline float __expf(float x) noexcept { return ::expf(x); }
inline float __exp10f(float x) noexcept { return ::exp10f(x); }
inline float __logf(float x) noexcept { return ::logf(x); }
inline float __log2f(float x) noexcept { return ::log2f(x); }
inline float __log10f(float x) noexcept { return ::log10f(x); }
inline float __sinf(float x) noexcept { return ::sinf(x); }
inline float __cosf(float x) noexcept { return ::cosf(x); }
inline float __tanf(float x) noexcept { return ::tanf(x); }
inline float __powf(float x, float y) noexcept { return ::powf(x, y); }
}
inline float __tanhf(float x) noexcept { return ::tanhf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = ::sinf(x); *c = ::cosf(x); }

// ---------------------------------------------------------------------------------------------
// Host runtime API: synchronous shims. cudaMalloc memory is host memory of exactly the requested
// size (so AddressSanitizer sees one-past-the-end accesses), 256-byte aligned like CUDA's, and
// filled with 0xFF bytes (NaN) so a kernel that reads what nobody wrote produces NaN.
namespace cuemu::detail {

struct Allocations {
  std::mutex mutex;
  std::map<uintptr_t, size_t> live;  // start -> size

  // Whether [p, p + n) lies inside one live allocation.
  bool contains(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mutex);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = live.upper_bound(a);
    if (it == live.begin()) return false;
    --it;
    return a + n <= it->first + it->second;
  }
};
inline Allocations& allocations() {
  static Allocations* a = new Allocations;  // never destroyed: frees may come during exit
  return *a;
}

inline thread_local int tl_device = 0;

inline cudaError_t check_device() {
  return config().device_count > 0 ? cudaSuccess : set_error(cudaErrorNoDevice);
}

inline cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return set_error(cudaErrorInvalidMemcpyDirection);
  if (!n) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !allocations().contains(dst, n)) || (src_dev && !allocations().contains(src, n)))
    return set_error(cudaErrorInvalidValue);
  return cudaSuccess;
}

}  // namespace cuemu::detail

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = ::cuemu::detail::tl_last_error;
  ::cuemu::detail::tl_last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return ::cuemu::detail::tl_last_error; }

inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 0;
  if (::cuemu::config().device_count == 0) return ::cuemu::detail::set_error(cudaErrorNoDevice);
  *count = ::cuemu::config().device_count;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= ::cuemu::config().device_count) return ::cuemu::detail::set_error(cudaErrorInvalidDevice);
  ::cuemu::detail::tl_device = device;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = ::cuemu::detail::tl_device;
  return ::cuemu::detail::check_device();
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= ::cuemu::config().device_count) return ::cuemu::detail::set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(::cuemu::kDefaultSharedMemory); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = ::cuemu::kMultiProcessors; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 8; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(::cuemu::kMaxSharedMemoryOptin); break;
    default: return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= ::cuemu::config().device_count) return ::cuemu::detail::set_error(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "cuemu (CPU emulation of CUDA)");
  prop->totalGlobalMem = ::cuemu::kGlobalMemory;
  prop->sharedMemPerBlock = ::cuemu::kDefaultSharedMemory;
  prop->sharedMemPerBlockOptin = ::cuemu::kMaxSharedMemoryOptin;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = ::cuemu::kMultiProcessors;
  prop->major = 8;
  prop->minor = 0;
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** ptr, size_t size) {
  *ptr = nullptr;
  if (cudaError_t e = ::cuemu::detail::check_device()) return e;
  if (!size) return cudaSuccess;
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0) return ::cuemu::detail::set_error(cudaErrorMemoryAllocation);
  std::memset(p, 0xFF, size);
  auto& a = ::cuemu::detail::allocations();
  {
    std::lock_guard<std::mutex> lock(a.mutex);
    a.live[reinterpret_cast<uintptr_t>(p)] = size;
  }
  *ptr = p;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** ptr, size_t size) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), size);
}
inline cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  if (cudaError_t e = ::cuemu::detail::check_not_capturing()) return e;
  auto& a = ::cuemu::detail::allocations();
  {
    std::lock_guard<std::mutex> lock(a.mutex);
    if (!a.live.erase(reinterpret_cast<uintptr_t>(ptr))) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  }
  std::free(ptr);
  return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = size ? std::malloc(size) : nullptr;
  return size && !*ptr ? ::cuemu::detail::set_error(cudaErrorMemoryAllocation) : cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *free_bytes = *total = ::cuemu::kGlobalMemory;
  return ::cuemu::detail::check_device();
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (cudaError_t e = ::cuemu::detail::check_not_capturing()) return e;
  if (cudaError_t e = ::cuemu::detail::check_copy(dst, src, n, kind)) return e;
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
// Captured copies read their source at replay, as a graph's memcpy node does.
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr) {
  if (cudaError_t e = ::cuemu::detail::check_copy(dst, src, n, kind)) return e;
  return ::cuemu::detail::enqueue(stream, [=] {
    if (n) std::memmove(dst, src, n);
  });
}
inline cudaError_t cudaMemset(void* p, int value, size_t n) {
  if (cudaError_t e = ::cuemu::detail::check_not_capturing()) return e;
  if (n && !::cuemu::detail::allocations().contains(p, n)) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  if (n) std::memset(p, value, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream = nullptr) {
  if (n && !::cuemu::detail::allocations().contains(p, n)) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  return ::cuemu::detail::enqueue(stream, [=] {
    if (n) std::memset(p, value, n);
  });
}
template <class T>
cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t n, size_t offset = 0,
                               cudaMemcpyKind = cudaMemcpyHostToDevice) {
  if (offset + n > sizeof(T)) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, src, n);
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t n, size_t offset = 0,
                                 cudaMemcpyKind = cudaMemcpyDeviceToHost) {
  if (offset + n > sizeof(T)) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  std::memcpy(dst, reinterpret_cast<const char*>(&symbol) + offset, n);
  return cudaSuccess;
}

template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > ::cuemu::kMaxSharedMemoryOptin)
    return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  auto& a = ::cuemu::detail::func_attributes();
  std::lock_guard<std::mutex> lock(a.mutex);
  a.max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}

// Everything runs to completion when called: synchronisation is a no-op.
inline cudaError_t cudaDeviceSynchronize() {
  if (cudaError_t e = ::cuemu::detail::check_not_capturing()) return e;
  return ::cuemu::detail::check_device();
}
inline cudaError_t cudaDeviceReset() { return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st{1};
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (::cuemu::detail::is_capturing(s)) return ::cuemu::detail::set_error(cudaErrorIllegalState);
  if (::cuemu::detail::is_created_stream(s)) delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return ::cuemu::detail::check_not_capturing(); }
inline cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st{{}, false};
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) {
  e->time = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (cudaError_t err = ::cuemu::detail::check_not_capturing()) return err;
  return e->recorded ? cudaSuccess : ::cuemu::detail::set_error(cudaErrorInvalidResourceHandle);
}
inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (!start->recorded || !stop->recorded) return ::cuemu::detail::set_error(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(stop->time - start->time).count();
  return cudaSuccess;
}

// ---- graphs --------------------------------------------------------------------------------------
// Capture records the stream's work (kernels, async copies and fills) in order; replay runs it in
// that order on the calling thread. Any mode behaves as cudaStreamCaptureModeGlobal for
// host-synchronous calls (they fail and invalidate the capture) and allows cudaMalloc.
inline cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  using namespace ::cuemu::detail;
  if (!is_created_stream(stream)) return set_error(cudaErrorStreamCaptureUnsupported);  // the legacy stream
  if (stream->capture || tl_capturing) return set_error(cudaErrorIllegalState);
  stream->capture = new CUgraph_st;
  stream->capture_invalidated = false;
  tl_capturing = stream;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  using namespace ::cuemu::detail;
  *graph = nullptr;
  if (!is_capturing(stream)) return set_error(cudaErrorIllegalState);
  CUgraph_st* g = stream->capture;
  const bool invalidated = stream->capture_invalidated;
  stream->capture = nullptr;
  stream->capture_invalidated = false;
  if (tl_capturing == stream) tl_capturing = nullptr;
  if (invalidated) {
    delete g;
    return set_error(cudaErrorStreamCaptureInvalidated);
  }
  *graph = g;
  return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  using namespace ::cuemu::detail;
  *status = !is_capturing(stream) ? cudaStreamCaptureStatusNone
            : stream->capture_invalidated ? cudaStreamCaptureStatusInvalidated
                                          : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long = 0) {
  if (!graph) return ::cuemu::detail::set_error(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes};
  return cudaSuccess;
}
inline cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
  if (!graph || nodes) return ::cuemu::detail::set_error(cudaErrorInvalidValue);  // counting only
  *count = graph->nodes.size();
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  using namespace ::cuemu::detail;
  if (!exec) return set_error(cudaErrorInvalidValue);
  if (is_capturing(stream)) return set_error(cudaErrorNotSupported);  // child graphs are not emulated
  if (tl_capturing) return capture_violation(cudaErrorStreamCaptureImplicit);
  for (auto& node : exec->nodes) node();
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
