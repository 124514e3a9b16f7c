// Runs the CUDA kernels on the host, so that their indexing, work split, barriers, shuffles and
// partial sums are tested on machines without a GPU (tests/test_cuda_emulation.py).
//
// A launch runs the grid's blocks one after another (in index order, or reversed: schedule_reversed).
// Each CUDA thread of a block is a fiber (POSIX ucontext) with its own stack, and the block's fibers
// take turns on the calling thread: a fiber runs until it reaches a barrier (__syncthreads, or the two
// halves of a warp shuffle) and the next one runs; a barrier releases its fibers once every thread it
// counts has arrived. A thread that returns from the kernel drops out of the barriers, as exited
// threads do on a GPU. Runs are deterministic, a failed device assert ends the launch at once with an
// exception naming it, threads that wait at different barriers are reported as a deadlock the moment
// no fiber can go on (never a hang), and threads that meet at one barrier from different calls in the
// kernel as an error (Barrier).
// __shared__ variables are function statics, exact because blocks never overlap in time.
//
// Built with AddressSanitizer and UBSan (POSEMAMBA_TEST_SANITIZERS=1, tests/test_cuda_emulation.py), it
// checks the kernels' reads and writes of tensors and workspaces (global memory) as compute-sanitizer's
// memcheck does on a GPU, and each index into a __shared__ or local array against that dimension's
// bound (UBSan's bounds check). Not a shared-memory access past its object through a pointer or
// reference: ASan leaves statics of template functions without redzones.
//
// Built with ThreadSanitizer (the race check), it checks the ordering that a GPU's memory model
// leaves to the kernels, as compute-sanitizer's racecheck and synccheck do on a GPU: each emulated
// thread is a TSan fiber, and only what orders memory between a block's threads on a GPU is a
// happens-before edge here: __syncthreads among the block, __syncwarp among the warp. Switching
// between fibers, the shuffles and the emulation's own bookkeeping are not (race_check below). So a
// read of shared or global memory that another thread of the block wrote with no barrier between them
// is reported whichever thread ran first, and so is a write that another thread's read or write is
// not ordered with; the thread orders (schedule_reversed) show such a race only where it changes a
// result. Blocks run one after another, each after the last, so a race between two blocks of a
// launch is not reported (one that changes a result shows between the two schedules instead).
//
// What this does not show: speed, and register or shared-memory limits. Only what
// csrc/cuda/simt.cuh promises is emulated.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace posemamba {
namespace simt {

// The race check's hooks: ThreadSanitizer's fiber and synchronisation annotations in a build with
// -fsanitize=thread, nothing otherwise.
namespace race_check {
#if defined(__SANITIZE_THREAD__)
#define POSEMAMBA_EMULATION_RACE_CHECK 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define POSEMAMBA_EMULATION_RACE_CHECK 1
#endif
#endif
#ifdef POSEMAMBA_EMULATION_RACE_CHECK
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
constexpr unsigned kSwitchWithoutSync = 1;  // __tsan_switch_to_fiber_no_sync
#define POSEMAMBA_NOT_RACE_CHECKED __attribute__((no_sanitize("thread")))

inline void* current_fiber() { return __tsan_get_current_fiber(); }
// Emulated thread t's fiber: made once per host thread and kept, because making one takes system calls.
// A block's thread t reuses the last block's fiber, whose work happens before the block's anyway.
inline std::vector<void*>& fiber_pool() {
  static thread_local std::vector<void*> fibers;
  return fibers;
}
inline void* thread_fiber(int t) {
  std::vector<void*>& fibers = fiber_pool();
  while (static_cast<int>(fibers.size()) <= t) fibers.push_back(__tsan_create_fiber(0));
  return fibers[t];
}
// A fiber whose thread was left in the kernel (a launch stopped) is replaced: its frames would show in
// the next thread's reports.
inline void retire_fiber(int t) {
  __tsan_destroy_fiber(fiber_pool()[t]);
  fiber_pool()[t] = __tsan_create_fiber(0);
}
// Before each switch: from the scheduler to a thread, everything the scheduler did happens before what
// the thread does next (it set up the block); from a thread to the scheduler, nothing. Not
// instrumented: an instrumented function's exit would be counted in the fiber switched to.
POSEMAMBA_NOT_RACE_CHECKED inline void switch_to_thread(void* fiber) { __tsan_switch_to_fiber(fiber, 0); }
POSEMAMBA_NOT_RACE_CHECKED inline void switch_to_scheduler(void* fiber) {
  __tsan_switch_to_fiber(fiber, kSwitchWithoutSync);
}
inline void release(void* sync_object) { __tsan_release(sync_object); }
inline void acquire(void* sync_object) { __tsan_acquire(sync_object); }
// The emulation's bookkeeping between threads (barrier counts, shuffle slots, a thread's state) while
// one lives: its memory accesses unchecked, as a GPU's hardware keeps this state.
struct Unchecked {
  Unchecked() { __tsan_ignore_thread_begin(); }
  ~Unchecked() { __tsan_ignore_thread_end(); }
  Unchecked(const Unchecked&) = delete;
  Unchecked& operator=(const Unchecked&) = delete;
};
#else
#define POSEMAMBA_NOT_RACE_CHECKED
inline void* current_fiber() { return nullptr; }
inline void* thread_fiber(int) { return nullptr; }
inline void retire_fiber(int) {}
inline void switch_to_thread(void*) {}
inline void switch_to_scheduler(void*) {}
inline void release(void*) {}
inline void acquire(void*) {}
struct Unchecked {
  Unchecked() {}  // user-provided, so that a scope's unused guard draws no warning
};
#endif
}  // namespace race_check

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
// Per emulated thread: the deepest a kernel's thread went, measured, is 2.4 KB, 15 KB built with
// AddressSanitizer (float64, N = 64, P = 8; the chunk buffers are __shared__, not on the stack). No
// larger, because AddressSanitizer clears a stack's shadow at every switch to it.
constexpr size_t kFiberStackBytes = 128 * 1024;
// The lowest bytes of each stack hold a pattern that a launch must leave as it found it: a thread
// that ran past its stack would otherwise write over another's without a sign.
constexpr size_t kStackGuardBytes = 256;
constexpr unsigned char kStackGuardPattern = 0xA5;

struct Block;

struct Thread {
  Block* block = nullptr;
  dim3 thread_index;
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  ucontext_t context;
  bool waiting = false, done = false;
  void* fiber = nullptr;  // the race check's
  char ran = 0;           // the race check's sync object for what the thread did (its address)
};

// The emulated thread running now, and the scheduler's context (and race-check fiber) it yields to.
inline thread_local Thread* current_thread = nullptr;
inline thread_local ucontext_t* scheduler_context = nullptr;
inline thread_local void* scheduler_fiber = nullptr;

inline Thread& current() {
  return *current_thread;
}

// The running thread hands the host thread back to the scheduler, until the scheduler resumes it. The
// scheduler takes in what the thread did so far only when the block ends (launch), so that it
// passes nothing of it on to the block's other threads.
inline void yield_to_scheduler(Thread& self) {
  ucontext_t* const scheduler = scheduler_context;  // read before the release, as all the thread did
  void* const fiber = scheduler_fiber;
  race_check::release(&self.ran);
  race_check::switch_to_scheduler(fiber);
  swapcontext(&self.context, scheduler);
}

// Where a kernel called a barrier or a shuffle: the call as written, its file and line.
struct Site {
  const char* call;
  const char* file;
  int line;

  bool operator==(const Site& other) const {
    return line == other.line && std::strcmp(call, other.call) == 0 && std::strcmp(file, other.file) == 0;
  }
  std::string str() const { return std::string(call) + " at " + file + ":" + std::to_string(line); }
};

[[noreturn]] inline void divergent_barrier(const char* scope, const Site& here, const Site& waiting) {
  throw std::runtime_error("threads of " + std::string(scope) + " met at different barriers: thread " +
                           std::to_string(current().linear) + " reached " + here.str() + ", where others wait at " +
                           waiting.str() + " (undefined on a GPU: a hang or a wrong result)");
}

// A barrier over a number of threads that shrinks as threads leave the kernel. Every thread of a
// generation must arrive from the same call (site) in the kernel, as on a GPU, where threads that
// reach different __syncthreads, or lanes that reach different warp barriers or shuffles, are
// undefined behaviour; here they are an error that stops the launch.
class Barrier {
 public:
  void reset(int participants) {
    expected_ = participants;
    waiters_.clear();
    waiters_.reserve(participants);  // no allocation while the threads run
  }

  // orders_memory: whether what each thread did before arriving happens before what any does after
  // leaving, as with __syncthreads and __syncwarp on a GPU (for the race check; a shuffle's barriers
  // do not order memory there).
  // scope: the threads it counts, for the error message.
  void arrive_and_wait(const Site& site, const char* scope, bool orders_memory) {
    Thread& self = current();
    bool wait = false;
    int generation = 0;
    {
      race_check::Unchecked bookkeeping;
      if (waiters_.empty()) {
        site_ = site;
      } else if (!(site == site_)) {
        divergent_barrier(scope, site, site_);
      }
      generation = generation_ % 2;
      if (static_cast<int>(waiters_.size()) + 1 >= expected_) {
        release();
      } else {
        waiters_.push_back(&self);
        self.waiting = wait = true;
      }
    }
    // A generation's sync object, one of two: the next generation's arrivals can come before the last
    // thread leaves this one, but the one after comes only when every thread has left.
    if (orders_memory) race_check::release(&generations_[generation]);
    if (wait) yield_to_scheduler(self);
    if (orders_memory) race_check::acquire(&generations_[generation]);
  }

  void drop() {
    --expected_;
    if (!waiters_.empty() && static_cast<int>(waiters_.size()) >= expected_) release();
  }

 private:
  void release() {
    for (Thread* waiter : waiters_) waiter->waiting = false;
    waiters_.clear();
    ++generation_;
  }

  int expected_ = 0;
  std::vector<Thread*> waiters_;
  Site site_{"", "", 0};  // the call that this generation's first thread arrived from
  unsigned generation_ = 0;
  char generations_[2] = {};  // the race check's sync objects (their addresses)
};

// What the threads of the running block share.
struct Block {
  Block(dim3 grid, dim3 block, int n_threads)
      : grid_dim(grid), block_dim(block), n_threads(n_threads), n_warps((n_threads + kWarpSize - 1) / kWarpSize),
        warps(n_warps), shuffle_slots(n_threads) {}

  int warp_size(int warp) const { return std::min(kWarpSize, n_threads - warp * kWarpSize); }

  void reset_barriers() {
    sync.reset(n_threads);
    for (int w = 0; w < n_warps; ++w) warps[w].reset(warp_size(w));
  }

  dim3 grid_dim, block_dim, block_index;
  int n_threads, n_warps;
  Barrier sync;
  std::vector<Barrier> warps;
  std::vector<unsigned long long> shuffle_slots;  // one 8-byte slot per thread for shuffled values
};

inline int lane_id() {
  return current().linear % kWarpSize;
}

inline void sync_threads(const Site& site) {
  current().block->sync.arrive_and_wait(site, "a block", /*orders_memory=*/true);
}

inline void sync_warp(const Site& site) {
  Thread& self = current();
  self.block->warps[self.linear / kWarpSize].arrive_and_wait(site, "a warp", /*orders_memory=*/true);
}

// What shuffles and votes share: each lane of this warp puts `mine` in its slot, then, once every lane
// has, read(the warp's slots, its lane count) on each lane, whose result it returns; no lane writes its
// slot again before every lane has read. Every lane of the warp must call it, from the same call, as
// with a full mask on a GPU. It orders no memory, as a shuffle or a vote does not on a GPU.
template <typename Read>
auto exchange_in_warp(unsigned long long mine, const Site& site, Read read) {
  Thread& self = current();
  Block& block = *self.block;
  const int warp = self.linear / kWarpSize;
  {
    race_check::Unchecked slots;
    block.shuffle_slots[self.linear] = mine;
  }
  block.warps[warp].arrive_and_wait(site, "a warp", /*orders_memory=*/false);
  const auto result = [&] {
    race_check::Unchecked slots;
    return read(&block.shuffle_slots[warp * kWarpSize], block.warp_size(warp));
  }();
  block.warps[warp].arrive_and_wait(site, "a warp", /*orders_memory=*/false);
  return result;
}

// The value `source_lane` of this warp passed in; the caller's own value for a lane outside the warp.
template <typename T>
T shuffle(T value, int source_lane, const Site& site) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(unsigned long long),
                "shuffles move values of at most 8 bytes");
  unsigned long long mine = 0;
  std::memcpy(&mine, &value, sizeof(T));
  return exchange_in_warp(mine, site, [&](const unsigned long long* slots, int lanes) {
    T result = value;
    if (source_lane >= 0 && source_lane < lanes) std::memcpy(&result, &slots[source_lane], sizeof(T));
    return result;
  });
}

// Whether the predicate of any lane of this warp is true.
inline bool vote_any(bool predicate, const Site& site) {
  return exchange_in_warp(predicate ? 1ull : 0ull, site, [](const unsigned long long* slots, int lanes) {
    return std::any_of(slots, slots + lanes, [](unsigned long long slot) { return slot != 0; });
  });
}

// The eviction hint has no meaning on the host.
template <typename T>
inline void store_streaming(T* address, T value) {
  *address = value;
}

// Nothing to hide from a host compiler (see the CUDA version in ../cuda/simt.cuh).
template <typename T>
T* opaque_pointer(T* pointer) {
  return pointer;
}

// A small count, so that the tests' small shapes take the kernels' paths for filling a GPU
// (the forward's split of a path into spans) as well as the paths for large shapes.
inline int multiprocessor_count() {
  return 4;
}

[[noreturn]] inline void device_assert_failed(const char* condition, const char* file, int line) {
  throw std::runtime_error(std::string("device assert failed: ") + condition + " at " + file + ":" +
                           std::to_string(line));
}

// The order in which a launch's blocks run and a block's threads take turns. By default blocks in
// index order, and threads in thread order, round-robin: between two barriers every thread runs on to
// its next one. Reversed, blocks run from the last, and the highest thread that can run always goes
// next, so the last warps run ahead to the next block barrier before the first warps move at all. A
// read left unordered with another thread's write by a missing barrier sees the write in one schedule
// and not in the other, and so does a block's read of what another block of the launch writes (a GPU
// runs blocks in any order, and at once); two blocks' writes to one place leave the other's last. The
// tests run both schedules and compare their results to the bit.
inline bool schedule_reversed = false;

// The kernel call of the running launch and its first error, for the fibers' entry function.
struct Launch {
  std::function<void()> run_kernel;
  std::string first_error;
};
inline thread_local Launch* current_launch = nullptr;

inline void run_thread() {
  Thread& self = current();
  try {
    current_launch->run_kernel();
  } catch (const std::exception& error) {
    race_check::Unchecked first_error;
    if (current_launch->first_error.empty()) current_launch->first_error = error.what();
  }
  {
    race_check::Unchecked bookkeeping;
    self.done = true;
    self.block->sync.drop();
    self.block->warps[self.linear / kWarpSize].drop();
  }
  race_check::release(&self.ran);
}

// A thread's entry, returning to the scheduler (uc_link). Not instrumented by the race check: its
// exit would be counted in the scheduler's fiber, after the switch.
POSEMAMBA_NOT_RACE_CHECKED inline void fiber_main() {
  run_thread();
  race_check::switch_to_scheduler(scheduler_fiber);
}

// Runs kernel(args...) over the grid: blocks in order, each block's threads as fibers. Throws on an
// invalid launch configuration (as the CUDA launch check would), a failed device assert, a deadlock
// or threads meeting at different barriers.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block_dim, size_t /*shared_bytes*/, Args&&... args) {
  const long long n_threads = static_cast<long long>(block_dim.x) * block_dim.y * block_dim.z;
  const long long n_blocks = static_cast<long long>(grid.x) * grid.y * grid.z;
  if (n_threads < 1 || n_threads > kMaxThreadsPerBlock || n_blocks < 1) {
    throw std::invalid_argument("invalid launch configuration: " + std::to_string(n_blocks) + " blocks of " +
                                std::to_string(n_threads) + " threads");
  }
  Launch launch_state{[&] { kernel(args...); }, {}};
  Block block(grid, block_dim, static_cast<int>(n_threads));
  std::vector<Thread> threads(n_threads);
  std::unique_ptr<char[]> stacks(new char[n_threads * kFiberStackBytes]);
  for (long long t = 0; t < n_threads; ++t) {
    std::memset(stacks.get() + t * kFiberStackBytes, kStackGuardPattern, kStackGuardBytes);
  }
  // Zeroed: AddressSanitizer's swapcontext clears the shadow of the stack that uc_stack names in the
  // context it switches to, and swapcontext never sets it in the scheduler's.
  ucontext_t scheduler{};
  // The scheduler's own accesses, of the threads' state and of the variables below, which the threads
  // read without a barrier, are bookkeeping too.
  std::optional<race_check::Unchecked> scheduling(std::in_place);
  current_launch = &launch_state;
  scheduler_context = &scheduler;
  scheduler_fiber = race_check::current_fiber();

  for (long long i = 0; i < n_blocks && launch_state.first_error.empty(); ++i) {
    const long long k = schedule_reversed ? n_blocks - 1 - i : i;
    block.block_index = dim3(static_cast<unsigned>(k % grid.x), static_cast<unsigned>((k / grid.x) % grid.y),
                             static_cast<unsigned>(k / (static_cast<long long>(grid.x) * grid.y)));
    block.reset_barriers();
    for (int t = 0; t < n_threads; ++t) {
      Thread& thread = threads[t];
      thread.block = &block;
      thread.linear = t;
      thread.thread_index = dim3(t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y));
      thread.waiting = thread.done = false;
      getcontext(&thread.context);
      thread.context.uc_stack.ss_sp = stacks.get() + t * kFiberStackBytes;
      thread.context.uc_stack.ss_size = kFiberStackBytes;
      thread.context.uc_link = &scheduler;
      makecontext(&thread.context, fiber_main, 0);
      thread.fiber = race_check::thread_fiber(t);
    }
    // Round-robin over the threads that can run, until all are done, none can go on, or one failed a
    // device assert: that stops the launch at once, as on a GPU, where the other threads do not run on
    // (past a check that failed, they could read what its thread never wrote).
    for (bool all_done = false; !all_done && launch_state.first_error.empty();) {
      bool progressed = false;
      all_done = true;
      for (long long i = 0; i < n_threads && launch_state.first_error.empty(); ++i) {
        Thread& thread = threads[schedule_reversed ? n_threads - 1 - i : i];
        if (thread.done) continue;
        all_done = false;
        if (thread.waiting) continue;
        current_thread = &thread;
        race_check::switch_to_thread(thread.fiber);
        swapcontext(&scheduler, &thread.context);
        progressed = true;
        if (schedule_reversed) break;  // the highest thread that can run always goes next
      }
      if (!all_done && !progressed) {
        launch_state.first_error = "deadlock: in block (" + std::to_string(block.block_index.x) + ", " +
                                   std::to_string(block.block_index.y) + ", " + std::to_string(block.block_index.z) +
                                   ") threads wait at barriers or warp shuffles that the others never reach";
        break;
      }
    }
    // What the block's threads did happens before the next block and what the host does after the launch
    // (for the race check: the next block's threads reuse these stacks, the tensors are read).
    for (int t = 0; t < n_threads; ++t) {
      race_check::acquire(&threads[t].ran);
      if (!threads[t].done) race_check::retire_fiber(t);
    }
  }
  current_thread = nullptr;
  current_launch = nullptr;
  scheduler_context = nullptr;
  scheduling.reset();
  for (long long t = 0; t < n_threads; ++t) {
    const char* guard = stacks.get() + t * kFiberStackBytes;
    if (std::any_of(guard, guard + kStackGuardBytes, [](char byte) {
          return static_cast<unsigned char>(byte) != kStackGuardPattern;
        })) {
      throw std::runtime_error("emulated CUDA kernel: thread " + std::to_string(t) + " ran past its " +
                               std::to_string(kFiberStackBytes) + "-byte stack (kFiberStackBytes)");
    }
  }
  if (!launch_state.first_error.empty()) throw std::runtime_error("emulated CUDA kernel: " + launch_state.first_error);
}

}  // namespace simt
}  // namespace posemamba

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (::posemamba::simt::current().thread_index)
#define blockIdx (::posemamba::simt::current().block->block_index)
#define blockDim (::posemamba::simt::current().block->block_dim)
#define gridDim (::posemamba::simt::current().block->grid_dim)
#define POSEMAMBA_SIMT_SITE(call) (::posemamba::simt::Site{call, __FILE__, __LINE__})
#define __syncthreads() ::posemamba::simt::sync_threads(POSEMAMBA_SIMT_SITE("__syncthreads"))
// Full-warp only (no mask argument), as the kernels use it.
#define __syncwarp() ::posemamba::simt::sync_warp(POSEMAMBA_SIMT_SITE("__syncwarp"))
// Full-warp shuffles only (no width argument): the kernels never use a narrower one.
#define __shfl_sync(mask, value, source_lane) \
  ::posemamba::simt::shuffle((value), (source_lane) % 32, POSEMAMBA_SIMT_SITE("__shfl_sync"))
#define __shfl_xor_sync(mask, value, lane_mask)                                      \
  ::posemamba::simt::shuffle((value), ::posemamba::simt::lane_id() ^ (lane_mask), \
                             POSEMAMBA_SIMT_SITE("__shfl_xor_sync"))
#define __shfl_up_sync(mask, value, delta)                                                        \
  ::posemamba::simt::shuffle((value), ::posemamba::simt::lane_id() - static_cast<int>(delta), \
                             POSEMAMBA_SIMT_SITE("__shfl_up_sync"))
#define __shfl_down_sync(mask, value, delta)                                                      \
  ::posemamba::simt::shuffle((value), ::posemamba::simt::lane_id() + static_cast<int>(delta), \
                             POSEMAMBA_SIMT_SITE("__shfl_down_sync"))
// Full-warp votes only, as the kernels use them.
#define __any_sync(mask, predicate) ::posemamba::simt::vote_any((predicate), POSEMAMBA_SIMT_SITE("__any_sync"))
#define POSEMAMBA_DEVICE_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::posemamba::simt::device_assert_failed(#cond, __FILE__, __LINE__))
