#include "core/parallel.h"

#include "core/env.h"

#include <pthread.h>
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <atomic>
#include <chrono>
#include <cctype>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fastnn {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

int default_threads() {
  for (const char* var : {"FASTNN_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const char* v = std::getenv(var)) {
      const int n = std::atoi(v);
      if (n >= 1) return n;
    }
  }
  // One thread per physical core, not per logical CPU: two threads on one core's SMT siblings
  // share its FMA units and its L1 and L2, which the GEMM's blocks are sized to have to
  // themselves, and the memory-bound kernels gain nothing from a second thread on a core.
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    const int cores = physical_cores(cpus, "/sys/devices/system/cpu");
    return std::max(1, cores > 0 ? cores : static_cast<int>(cpus.size()));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// The first line of a small text file, trailing whitespace dropped; empty if it cannot be read.
std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return {};
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  return line;
}

// How long an idle worker spins (yielding) before it sleeps: long enough to cover the Python
// between two ops of a training step, short enough not to hold a core between steps.
// FASTNN_SPIN_US overrides it, read when the pool starts, as KMP_BLOCKTIME does for OpenMP: on
// a VM whose idle vCPU halts at once (a Firecracker guest, haltpoll without polling), a sleeping
// worker joined the next job ~200 us late, so a 256x256 -> 128 GEMM called after a 1 ms gap ran
// at one thread's speed (218-234 us against 114-131 back to back); with FASTNN_SPIN_US=5000 it
// kept 119-128 us. For a process that calls fastnn in bursts (serving, Python work between steps).
constexpr int64_t kDefaultSpinUs = 100;
std::chrono::microseconds idle_spin() {
  return std::chrono::microseconds(env_int("FASTNN_SPIN_US", 0).value_or(kDefaultSpinUs));
}

thread_local bool tls_in_parallel = false;

// A ticket's low half while its job's fields change: above every chunk index, so nothing is claimed.
constexpr uint64_t kClosed = 0xffffffffu;

class ThreadPool {
 public:
  ThreadPool(int threads, std::chrono::microseconds spin) : spin_(spin) { resize(threads); }

  int size() const { return threads_; }
  std::chrono::microseconds spin() const { return spin_; }

  void resize(int threads) {
    threads = std::max(1, threads);
    std::lock_guard<std::mutex> job(run_mu_);
    stop_workers();
    threads_ = threads;
    stop_ = false;
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void run(int64_t chunks, void (*fn)(void*, int64_t), void* ctx) {
    if (chunks >= int64_t{kClosed}) {  // more chunks than a ticket counts: none in parallel
      for (int64_t c = 0; c < chunks; ++c) fn(ctx, c);
      return;
    }
    std::lock_guard<std::mutex> job(run_mu_);  // one job at a time (several Python threads)
    // Close the last job's ticket before its fields change. A worker that read that ticket with
    // every chunk claimed, then this job's larger chunks_, would otherwise claim a chunk past the
    // last job's end with a compare-exchange that still succeeds, and run this job's fn_ (or the
    // last one's, on this job's ctx_) on it; against the closed ticket that claim fails.
    ticket_.store((job_id_ << 32) | kClosed, std::memory_order_seq_cst);
    fn_ = fn;
    ctx_ = ctx;
    chunks_.store(chunks, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    // Publishing the ticket (job id in the high half, next chunk in the low half) releases the
    // fields above to any worker that claims a chunk of this job.
    const uint64_t job_id = ++job_id_;
    ticket_.store(job_id << 32, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    work(job_id);
    // Wait for chunks other threads claimed; yield so a worker sharing this core can finish.
    for (int spins = 0; done_.load(std::memory_order_acquire) < chunks; ++spins) {
      if (spins < 64) cpu_relax();
      else std::this_thread::yield();
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs chunks of job `job_id` until none are left; false if the job has moved on.
  void work(uint64_t job_id) {
    tls_in_parallel = true;
    for (;;) {
      uint64_t t = ticket_.load(std::memory_order_acquire);
      if ((t >> 32) != job_id) break;
      const int64_t c = static_cast<int64_t>(t & kClosed);
      // Acquire: a chunks_ written after the ticket was closed makes the claim below see it closed.
      if (c >= chunks_.load(std::memory_order_acquire)) break;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      // The job cannot change while this chunk is unfinished: run() waits for done_.
      try {
        fn_(ctx_, c);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
    tls_in_parallel = false;
  }

  bool has_work(uint64_t seen) const { return (ticket_.load(std::memory_order_seq_cst) >> 32) != seen || stop_; }

  void worker_loop() {
    uint64_t seen = ticket_.load() >> 32;
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + spin_;
      int spins = 0;
      while (!has_work(seen)) {
        if (++spins % 64 == 0) {
          std::this_thread::yield();  // give the core to a runnable thread (ours or another process)
          if (std::chrono::steady_clock::now() > spin_until) break;
        } else {
          cpu_relax();
        }
      }
      if (!has_work(seen)) {
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return has_work(seen); });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      if (stop_) return;
      seen = ticket_.load(std::memory_order_acquire) >> 32;
      work(seen);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  const std::chrono::microseconds spin_;
  int threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_, error_mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  uint64_t job_id_ = 0;
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  std::atomic<int64_t> chunks_{0};
  std::exception_ptr error_;
};

// Leaked on purpose: workers may still be parked when static destructors run at exit.
std::atomic<ThreadPool*> g_pool{nullptr};
std::mutex g_pool_mu;
int g_pool_size_before_fork = 0;

ThreadPool& pool() {
  ThreadPool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!(p = g_pool.load(std::memory_order_relaxed))) {
    static const bool registered = [] {
      // A forked child has none of the parent's worker threads: it builds a fresh pool on first
      // use (the parent's object leaks; creating threads inside the fork handler is not safe).
      return pthread_atfork(nullptr, nullptr, [] {
        ThreadPool* old = g_pool.load(std::memory_order_relaxed);
        g_pool_size_before_fork = old ? old->size() : 0;
        g_pool.store(nullptr, std::memory_order_relaxed);
        new (&g_pool_mu) std::mutex();  // the parent may have held it while forking
      }) == 0;
    }();
    (void)registered;
    p = new ThreadPool(g_pool_size_before_fork > 0 ? g_pool_size_before_fork : default_threads(), idle_spin());
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

int64_t idle_spin_us() { return pool().spin().count(); }

void set_num_threads(int n) {
  if (n != pool().size()) pool().resize(n);
}

bool in_parallel() { return tls_in_parallel; }

namespace {
struct SelfCheckJob {
  static constexpr int64_t kMaxChunks = 9;
  uint32_t kind;
  int64_t chunks;
  std::atomic<int> runs[kMaxChunks];
  std::atomic<int64_t>* faults;
};

// One function per kind of job, as each parallel_for call site instantiates its own.
template <uint32_t kKind>
void self_check_chunk(void* p, int64_t c) {
  auto* job = static_cast<SelfCheckJob*>(p);
  if (job->kind != kKind || c < 0 || c >= job->chunks) job->faults->fetch_add(1);
  else job->runs[c].fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

int physical_cores(const std::vector<int>& cpus, const std::string& sysfs_cpu_root) {
  // Logical CPUs on one core list the same siblings: count the distinct lists.
  std::set<std::string> cores;
  for (int cpu : cpus) {
    const std::string topology = sysfs_cpu_root + "/cpu" + std::to_string(cpu) + "/topology/";
    std::string siblings = first_line(topology + "core_cpus_list");
    if (siblings.empty()) siblings = first_line(topology + "thread_siblings_list");
    if (siblings.empty()) return 0;
    cores.insert(siblings);
  }
  return static_cast<int>(cores.size());
}

int64_t parallel_self_check(int64_t jobs) {
  std::atomic<int64_t> faults{0};
  SelfCheckJob a{}, b{};
  a.kind = 1, b.kind = 2;
  a.faults = b.faults = &faults;
  for (int64_t i = 0; i < jobs; ++i) {
    SelfCheckJob& job = i % 2 ? b : a;
    // Chunk counts that rise from job to job: a worker that has seen one job's chunks all claimed
    // then meets a larger count in the next.
    job.chunks = 1 + i % SelfCheckJob::kMaxChunks;
    for (auto& r : job.runs) r.store(0, std::memory_order_relaxed);
    detail::run_chunks(job.chunks, i % 2 ? self_check_chunk<2> : self_check_chunk<1>, &job);
    for (int64_t c = 0; c < job.chunks; ++c)
      if (job.runs[c].load(std::memory_order_relaxed) != 1) faults.fetch_add(1);
  }
  return faults.load();
}

namespace detail {
void run_chunks(int64_t chunks, void (*fn)(void*, int64_t), void* ctx) { pool().run(chunks, fn, ctx); }
}  // namespace detail

}  // namespace fastnn
