// Kernels that check the emulation itself (tests/test_cuda_emulation.py): shuffles and votes, barriers with
// shared memory, block indices, and that a deadlock, threads at different barriers, a failed device
// assert, a thread past its stack or (in the race check's build) a race is reported.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <stdexcept>
#include <string>

#include "../cuda/simt.cuh"

namespace posemamba {
namespace simt_selftest {

constexpr int kThreads = 64;  // two warps

// Row k of out (6, kThreads): what each thread gets from xor 5, up 3, down 3 and lane (7 lane) % 32
// shuffles of its own index, then from votes on whether any lane is thread 40 and any lane's index is
// negative.
__global__ void shuffles_kernel(int64_t* out) {
  const int t = threadIdx.x, lane = t % 32;
  out[0 * kThreads + t] = __shfl_xor_sync(0xffffffffu, t, 5);
  out[1 * kThreads + t] = __shfl_up_sync(0xffffffffu, t, 3);
  out[2 * kThreads + t] = __shfl_down_sync(0xffffffffu, t, 3);
  out[3 * kThreads + t] = __shfl_sync(0xffffffffu, t, (7 * lane) % 32);
  out[4 * kThreads + t] = __any_sync(0xffffffffu, t == 40);
  out[5 * kThreads + t] = __any_sync(0xffffffffu, t < 0);
}

// out[block, t] = 1000 block + (kThreads - 1 - t)^2, through shared memory: each thread reads what
// another wrote before the barrier.
__global__ void shared_memory_kernel(int64_t* out) {
  __shared__ int64_t squares[kThreads];
  const int t = threadIdx.x;
  squares[t] = static_cast<int64_t>(t) * t + 1000 * blockIdx.x;
  __syncthreads();
  out[blockIdx.x * kThreads + t] = squares[kThreads - 1 - t];
}

// Races for the race check (simt_emulation.h), each a thread reading a value that another thread of
// the block wrote, with nothing ordering the two on a GPU: no barrier at all, or only a shuffle's.
__global__ void unordered_shared_memory_kernel(int64_t* out) {
  __shared__ int64_t values[kThreads];
  const int t = threadIdx.x;
  values[t] = t;
  out[t] = values[kThreads - 1 - t];
}

__global__ void shuffle_ordered_shared_memory_kernel(int64_t* out) {
  __shared__ int64_t values[kThreads];
  const int t = threadIdx.x;
  values[t] = t;
  out[t] = __shfl_xor_sync(0xffffffffu, t, 1) + values[t ^ 1];
}

// What a warp barrier orders: out[t] = t ^ 1 through shared memory within each warp.
__global__ void warp_barrier_kernel(int64_t* out) {
  __shared__ int64_t values[kThreads];
  const int t = threadIdx.x;
  values[t] = t;
  __syncwarp();
  out[t] = values[t ^ 1];
}

// The block's warps reach different __syncthreads: an error (simt_emulation.h's Barrier).
__global__ void divergent_barriers_kernel(int64_t* out) {
  const int t = threadIdx.x;
  if (t < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = t;
}

// Half the warp waits at __syncthreads, the other half at a shuffle: neither can go on.
__global__ void deadlock_kernel(int64_t* out) {
  const int t = threadIdx.x;
  if (t < 16) {
    __syncthreads();
  } else {
    out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
  }
}

__global__ void assert_kernel(int64_t* out) {
  POSEMAMBA_DEVICE_ASSERT(threadIdx.x != 7);
  out[threadIdx.x] = threadIdx.x;
}

// Frames of 4 KB, each written across, `depth` deep.
__device__ int64_t deep_frames(int depth) {
  volatile char frame[4096];
  for (int i = 0; i < 4096; i += 64) frame[i] = 0;
  return depth == 0 ? frame[0] : deep_frames(depth - 1) + frame[0];
}

// Thread 1 goes 32 KB past its stack, into the top of thread 0's, which has finished (thread order):
// the launch must report it.
__global__ void stack_overflow_kernel(int64_t* out) {
  if (threadIdx.x == 1) out[1] = deep_frames(static_cast<int>(simt::kFiberStackBytes / 4096) + 8);
}

// Runs the named kernel and returns its int64 output: (6, kThreads) for "shuffles", (3, kThreads)
// for "shared_memory" (three blocks), (1, kThreads) otherwise.
inline at::Tensor run(const std::string& name) {
  const int64_t rows = name == "shuffles" ? 6 : name == "shared_memory" ? 3 : 1;
  const at::Tensor out = at::zeros({rows, kThreads}, at::kLong);
  int64_t* data = out.mutable_data_ptr<int64_t>();
  if (name == "shuffles") {
    simt::launch(shuffles_kernel, 1, kThreads, 0, data);
  } else if (name == "shared_memory") {
    simt::launch(shared_memory_kernel, 3, kThreads, 0, data);
  } else if (name == "unordered_shared_memory") {
    simt::launch(unordered_shared_memory_kernel, 1, kThreads, 0, data);
  } else if (name == "shuffle_ordered_shared_memory") {
    simt::launch(shuffle_ordered_shared_memory_kernel, 1, kThreads, 0, data);
  } else if (name == "warp_barrier") {
    simt::launch(warp_barrier_kernel, 1, kThreads, 0, data);
  } else if (name == "divergent_barriers") {
    simt::launch(divergent_barriers_kernel, 1, kThreads, 0, data);
  } else if (name == "deadlock") {
    simt::launch(deadlock_kernel, 1, 32, 0, data);
  } else if (name == "stack_overflow") {
    simt::launch(stack_overflow_kernel, 1, 2, 0, data);
  } else if (name == "assert") {
    simt::launch(assert_kernel, 1, kThreads, 0, data);
  } else if (name == "assert_stops_the_launch") {  // what the threads wrote before the failed assert
    try {
      simt::launch(assert_kernel, 1, kThreads, 0, data);
    } catch (const std::runtime_error&) {
    }
  } else {
    TORCH_CHECK(false, "no self-test named ", name);
  }
  return out;
}

}  // namespace simt_selftest
}  // namespace posemamba
