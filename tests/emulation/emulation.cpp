// The CPU execution layer's runtime (test-only; docs/emulation.md): runs a CUDA grid on host threads.
//
// Blocks are spread over the host's worker threads (at::parallel_for); a worker runs one block at a time.
// Inside a block every CUDA thread is a fiber with its own stack, and the worker's scheduler runs the
// fibers one after another, each until it reaches __syncthreads() or returns. When every fiber has
// stopped, the phase is over: if all of them wait at the barrier they are released into the next phase;
// if some returned while others wait, the barrier is divergent (undefined behaviour in CUDA) and the launch
// fails. Within a phase the fibers run in thread order on even phases and in reverse order on odd ones, so
// a thread that reads shared memory another thread writes in the same phase (a missing or misplaced
// barrier) reads the value from before that write, whichever of the two threads comes first: the result is
// wrong, deterministically, instead of racy.
//
// Fibers switch by a few instructions of x86-64 assembly (callee-saved registers, stack pointer, the SSE
// and x87 control words); other architectures use ucontext. Stacks are mmap'd with a guard page below, and
// AddressSanitizer is told about every switch.
#include "cuda_emu.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define BIOPLAUS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BIOPLAUS_EMU_ASAN 1
#endif
#endif
#if defined(BIOPLAUS_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
// void cuda_emu_switch(void** save_sp, void* load_sp): saves the callee-saved state on the current stack,
// stores the stack pointer in *save_sp, and resumes the context whose stack pointer is load_sp.
asm(R"(
.text
.p2align 4
.hidden cuda_emu_switch
.globl cuda_emu_switch
.type cuda_emu_switch,@function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cuda_emu_switch,.-cuda_emu_switch
)");
extern "C" void cuda_emu_switch(void** save_sp, void* load_sp);
#endif

namespace cuda_emu {
namespace {

#if defined(BIOPLAUS_EMU_ASAN)
constexpr size_t kStackBytes = size_t{1} << 20;
#else
constexpr size_t kStackBytes = size_t{256} << 10;
#endif

std::atomic<int> g_multiprocessors{132};  // an H100 SXM by default

// The first fault a kernel body reported during the running launch (fault()), thrown by launch() after it.
std::mutex g_fault_mutex;
std::string g_fault;

enum class State { kRunnable, kAtBarrier, kDone };

struct Fiber {
  uint3 idx{};
  State state = State::kRunnable;
  char* stack = nullptr;  // lowest usable address; a guard page sits below it
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
};

// One host worker thread's scheduler: the fibers of the block it runs.
struct Worker {
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  uint3 block{};
  dim3 block_dim, grid_dim;
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
#if defined(BIOPLAUS_EMU_ASAN)
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif

  ~Worker() {
    for (Fiber& f : fibers) {
      if (f.stack != nullptr) munmap(f.stack - page(), kStackBytes + page());
    }
  }

  static size_t page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

  void reserve(size_t n) {
    while (fibers.size() < n) {
      void* mem = mmap(nullptr, kStackBytes + page(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(mem != MAP_FAILED, "CUDA emulation: cannot map a ", kStackBytes, "-byte fiber stack");
      mprotect(mem, page(), PROT_NONE);  // overflowing the stack faults instead of corrupting memory
      fibers.emplace_back();
      fibers.back().stack = static_cast<char*>(mem) + page();
    }
  }
};

thread_local Worker t_worker;

// Entered on a fresh fiber stack; runs the kernel body for the current fiber and hands control back.
void fiber_main();

#if defined(__x86_64__)
// The initial frame that cuda_emu_switch "returns" from into fiber_main: the control words, six zeroed
// callee-saved registers, then the return address; fiber_main starts with the stack aligned as after a call.
void* initial_sp(Fiber& f) {
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack) + kStackBytes;
  top &= ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                            // padding: fiber_main's entry sees rsp = 8 mod 16
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);      // return address
  for (int r = 0; r < 6; ++r) *--sp = 0;                // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  return sp;
}
#endif

void switch_to_fiber(Worker& w, Fiber& f) {
  w.current = &f;
#if defined(BIOPLAUS_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&w.sched_sp, f.sp);
#else
  swapcontext(&w.sched_ctx, &f.ctx);
#endif
#if defined(BIOPLAUS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  w.current = nullptr;
}

// From the running fiber back to the scheduler; `finished` when the fiber will never run again.
void switch_to_scheduler(Worker& w, bool finished) {
  Fiber& f = *w.current;
#if defined(BIOPLAUS_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, w.sched_stack_bottom, w.sched_stack_size);
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&f.sp, w.sched_sp);
#else
  swapcontext(&f.ctx, &w.sched_ctx);
#endif
#if defined(BIOPLAUS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
  (void)finished;
}

void fiber_main() {
  Worker& w = t_worker;
#if defined(BIOPLAUS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_stack_bottom, &w.sched_stack_size);
#endif
  (*w.body)();
  w.current->state = State::kDone;
  switch_to_scheduler(w, true);
  __builtin_unreachable();
}

void run_block(Worker& w, uint3 block) {
  const size_t n = static_cast<size_t>(w.block_dim.x) * w.block_dim.y * w.block_dim.z;
  w.reserve(n);
  w.block = block;
  for (size_t t = 0; t < n; ++t) {
    Fiber& f = w.fibers[t];
    f.idx = uint3{static_cast<unsigned>(t % w.block_dim.x), static_cast<unsigned>(t / w.block_dim.x % w.block_dim.y),
                  static_cast<unsigned>(t / (static_cast<size_t>(w.block_dim.x) * w.block_dim.y))};
    f.state = State::kRunnable;
#if defined(__x86_64__)
    f.sp = initial_sp(f);
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#endif
  }
  for (int phase = 0;; ++phase) {
    for (size_t k = 0; k < n; ++k) {
      Fiber& f = w.fibers[phase % 2 == 0 ? k : n - 1 - k];
      if (f.state == State::kRunnable) switch_to_fiber(w, f);
    }
    size_t waiting = 0;
    for (size_t t = 0; t < n; ++t) waiting += w.fibers[t].state == State::kAtBarrier;
    if (waiting == 0) return;
    TORCH_CHECK(waiting == n, "CUDA emulation: block (", block.x, ", ", block.y, ", ", block.z, "): ", waiting,
                " of ", n, " threads wait at __syncthreads() while the others have returned (divergent barrier)");
    for (size_t t = 0; t < n; ++t) w.fibers[t].state = State::kRunnable;
  }
}

}  // namespace

const uint3& thread_idx() { return t_worker.current->idx; }
const uint3& block_idx() { return t_worker.block; }
const dim3& block_dim() { return t_worker.block_dim; }
const dim3& grid_dim() { return t_worker.grid_dim; }

void syncthreads() {
  Worker& w = t_worker;
  TORCH_CHECK(w.current != nullptr, "CUDA emulation: __syncthreads() outside a kernel");
  w.current->state = State::kAtBarrier;
  switch_to_scheduler(w, false);
}

void fault(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_fault_mutex);
  if (g_fault.empty()) g_fault = message;
}

void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& body) {
  // The driver's limits (compute capability 8.0 / 9.0): cudaErrorInvalidConfiguration otherwise.
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
                  grid.z <= 65535,
              "CUDA emulation: invalid configuration argument: grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64,
              "CUDA emulation: invalid configuration argument: block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(smem_bytes <= 227 * 1024, "CUDA emulation: ", smem_bytes, " bytes of dynamic shared memory");
  const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
  TORCH_CHECK(t_worker.current == nullptr, "CUDA emulation: a kernel launched from inside a kernel");
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    Worker& w = t_worker;
    w.body = &body;
    w.block_dim = block;
    w.grid_dim = grid;
    for (int64_t b = begin; b < end; ++b) {
      const uint3 idx{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                      static_cast<unsigned>(b / (int64_t{grid.x} * grid.y))};
      run_block(w, idx);
    }
    w.body = nullptr;
  });
  std::string message;
  {
    std::lock_guard<std::mutex> lock(g_fault_mutex);
    message.swap(g_fault);
  }
  TORCH_CHECK(message.empty(), "CUDA emulation: ", message);
}

int multiprocessor_count() { return g_multiprocessors.load(); }

}  // namespace cuda_emu

namespace {

// emulated_device(multiprocessors): sets the emulated SM count (grid sizing, split-K) and returns the
// previous one.
int64_t emulated_device(int64_t multiprocessors) {
  TORCH_CHECK(multiprocessors >= 1 && multiprocessors <= 1024, "emulated_device: multiprocessors must be in [1, 1024], got ",
              multiprocessors);
  return cuda_emu::g_multiprocessors.exchange(static_cast<int>(multiprocessors));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bioplaus, m) {
  m.def("emulated_device(int multiprocessors) -> int", &emulated_device);
}
