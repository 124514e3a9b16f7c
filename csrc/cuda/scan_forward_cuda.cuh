// CUDA forward of posemamba::multi_path_scan_fwd: the kernels and their launches.
//
// The paths' chunks are scanned in parallel (see the work split below), each thread with its
// channel's state in registers, writing the path's output into its own row of a (batch, P, D, L)
// float workspace. A last kernel sums the paths in index order and applies the gate: no atomics,
// results bitwise reproducible. Per-step math: ../multi_path_scan.h.
//
// Included by the .cu of the same name (nvcc: the instantiations for every input dtype) and by the
// host emulation build that tests these kernels without a GPU (../emulation/).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "scan_cuda.h"
#include "scan_cuda_common.cuh"

namespace posemamba {
namespace cuda {

// Work split: a thread per (batch, path, channel, chunk of kScanChunk steps) (chunk_task). The chunks
// of a path run in parallel in three passes:
//   1. each chunk but the last scans from a zero state: its end state, and its steps' sum of dt (the
//      chunk's decay is exp(a * that sum));
//   2. carry_across_chunks: one thread per (batch, path, channel, state entry) walks the chunks in
//      order and turns those into each chunk's true start state,
//      h_start[k+1] = exp(a sum_dt[k]) h_start[k] + h_end[k];
//   3. each chunk scans again from its true start state and writes its outputs.
// This costs two exps per state update instead of one and gives L / kScanChunk times the parallelism
// of a thread per channel walking the whole path. Pass 2's start states are the chunk_states the
// backward restarts from.

// Scans steps [begin, end) of c's path from state h (updated in place) and returns the steps' sum of
// dt. With y_row, writes each step's output C.h + D v at its position.
template <typename input_t, int kNMax>
__device__ __forceinline__ at::opmath_type<input_t> scan_steps(const PathChannel<input_t, kNMax>& c, int64_t begin,
                                                                int64_t end, at::opmath_type<input_t> (&h)[kNMax],
                                                                at::opmath_type<input_t>* y_row) {
  using weight_t = at::opmath_type<input_t>;
  weight_t sum_dt = 0;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t l = c.position(s);
    const weight_t v = c.input_at(l);
    const weight_t dt = c.step_at(l);
    const weight_t dt_v = dt * v;
    weight_t y = c.skip * v;
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < c.N) {
        h[n] = state_update<weight_t>(h[n], step_decay(dt, c.a[n]), dt_v, static_cast<weight_t>(c.B_path[n * c.L + l]));
        y += static_cast<weight_t>(c.C_path[n * c.L + l]) * h[n];
      }
    }
    if (y_row) y_row[l] = y;
    sum_dt += dt;
  }
  return sum_dt;
}

// Pass 1: chunk k (but the last) from a zero state; its end state goes to chunk_states' slot k + 1,
// which pass 2 then turns into chunk k + 1's start state, and its sum of dt to chunk_dt[.., k].
template <typename input_t, int kNMax>
__global__ void __launch_bounds__(kWarp * kChunksPerBlock)
    scan_chunks_from_zero_kernel(MultiPathScanParams p, at::opmath_type<input_t>* chunk_dt) {
  using weight_t = at::opmath_type<input_t>;
  const ChunkTask task = chunk_task(p);
  if (!task.valid || task.chunk == p.n_chunks - 1) return;
  const PathChannel<input_t, kNMax> c(p, task.b, task.path, task.d);
  weight_t h[kNMax];
#pragma unroll
  for (int n = 0; n < kNMax; ++n) h[n] = weight_t(0);
  const int64_t row = (task.b * p.n_paths + task.path) * p.dim + task.d;
  chunk_dt[row * p.n_chunks + task.chunk] =
      scan_steps(c, chunk_begin(task.chunk), chunk_end(task.chunk, p.seqlen), h, nullptr);
  weight_t* next_start = static_cast<weight_t*>(p.chunk_states) + (row * p.n_chunks + task.chunk + 1) * p.d_state;
#pragma unroll
  for (int n = 0; n < kNMax; ++n) {
    if (n < p.d_state) next_start[n] = h[n];
  }
}

// Pass 3: chunk k from its true start state, writing the path's outputs into its row of y_paths.
template <typename input_t, int kNMax>
__global__ void __launch_bounds__(kWarp * kChunksPerBlock)
    scan_chunks_kernel(MultiPathScanParams p, at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  const ChunkTask task = chunk_task(p);
  if (!task.valid) return;
  const PathChannel<input_t, kNMax> c(p, task.b, task.path, task.d);
  const int64_t row = (task.b * p.n_paths + task.path) * p.dim + task.d;
  const weight_t* start = static_cast<const weight_t*>(p.chunk_states) + (row * p.n_chunks + task.chunk) * p.d_state;
  weight_t h[kNMax];
#pragma unroll
  for (int n = 0; n < kNMax; ++n) h[n] = n < p.d_state ? start[n] : weight_t(0);
  scan_steps(c, chunk_begin(task.chunk), chunk_end(task.chunk, p.seqlen), h, y_paths + row * p.seqlen);
}

// out[b, d, l] = (sum over paths of y_paths[b, p, d, l]) * silu(z[b, d, l]), paths in index order.
template <typename input_t>
__global__ void merge_paths_kernel(MultiPathScanParams p, const at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_batch = p.dim * p.seqlen;
  if (i >= p.batch * per_batch) return;
  const int64_t b = i / per_batch, rest = i % per_batch;
  weight_t y = 0;
  for (int64_t path = 0; path < p.n_paths; ++path) y += y_paths[(b * p.n_paths + path) * per_batch + rest];
  if (p.z) {
    static_cast<input_t*>(p.out_ungated)[i] = static_cast<input_t>(y);
    y = gate_output<weight_t>(y, static_cast<weight_t>(static_cast<const input_t*>(p.z)[i]));
  }
  static_cast<input_t*>(p.out)[i] = static_cast<input_t>(y);
}

// run_scan_forward_as (scan_cuda.h): the forward's launches for input dtype scalar_t.
template <typename scalar_t>
void run_scan_forward_as(ScanForward& f) {
  using weight_t = at::opmath_type<scalar_t>;
  const MultiPathScanParams& p = f.params;
  if (p.batch == 0 || p.dim == 0 || p.seqlen == 0) return;
  const at::Tensor y_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, f.inputs.A.options());
  const at::Tensor chunk_dt = at::empty({p.batch, p.n_paths, p.dim, p.n_chunks}, f.inputs.A.options());
  auto* y_data = y_paths.mutable_data_ptr<weight_t>();
  auto* dt_data = chunk_dt.mutable_data_ptr<weight_t>();
  const dim3 chunk_block(kWarp, kChunksPerBlock);
  dispatch_state_bucket(p.d_state, [&](auto bucket) {
    constexpr int kNMax = decltype(bucket)::value;
    simt::launch(scan_chunks_from_zero_kernel<scalar_t, kNMax>, chunk_grid(p), chunk_block, 0, p, dt_data);
    launch_carry_across_chunks<weight_t>(p, static_cast<weight_t*>(p.chunk_states), dt_data, /*forward=*/true);
    simt::launch(scan_chunks_kernel<scalar_t, kNMax>, chunk_grid(p), chunk_block, 0, p, y_data);
  });
  simt::launch(merge_paths_kernel<scalar_t>, elementwise_blocks(p.batch * p.dim * p.seqlen), kElementwiseThreads, 0, p,
               static_cast<const weight_t*>(y_data));
}

}  // namespace cuda
}  // namespace posemamba
