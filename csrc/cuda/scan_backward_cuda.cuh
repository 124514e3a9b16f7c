// CUDA backward of posemamba::multi_path_scan_bwd: the kernels and their launches.
//
// The adjoint state runs backwards along each path: g_s = dy_s C_s + exp(dt_{s+1} a) g_{s+1}. Like the
// forward's state it is linear, so the chunks of a path run in parallel (a thread per batch, path,
// channel and chunk: chunk_task) in three passes:
//   1. each chunk but the first runs the adjoint backwards from zero: what flows out of its first step
//      to the chunk before it, and its steps' sum of dt;
//   2. carry_adjoint_across_chunks, last chunk to first, turns those into the adjoint flowing into each
//      chunk from its right;
//   3. each chunk recomputes its states from the state the forward saved before it, then runs the
//      adjoint backwards from that inflow, computing every gradient.
// Per-element gradients go to rows the thread owns: ddelta, and the gradient of each step's scan
// input (v = u[l] + u[mix[l]]) per path, which a last kernel gathers into du in a fixed order (paths,
// then the steps that mixed each position in, through an inverse index of mix). dB and dC sum over
// a warp's channels in lane order through shared memory (WarpColumnSums) into per-block partials;
// dA, dD and ddelta_bias into per-(batch, chunk) partials. Fixed-order passes then add the partials:
// no float atomics, bitwise reproducible.
//
// Included by the .cu of the same name (nvcc: the instantiations for every input dtype) and by the
// host emulation build that tests these kernels without a GPU (../emulation/).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>

#include "scan_cuda.h"
#include "scan_cuda_common.cuh"

namespace posemamba {
namespace cuda {

// dy = dout * silu(z) at position l: the gradient of the ungated sum of the paths.
template <typename input_t>
__device__ __forceinline__ at::opmath_type<input_t> output_grad_at(const MultiPathScanBwdParams& p, int64_t b,
                                                                    int64_t d, int64_t l) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t i = (b * p.dim + d) * p.seqlen + l;
  const weight_t g = static_cast<weight_t>(static_cast<const input_t*>(p.grad_out)[i]);
  return p.z ? g * silu(static_cast<weight_t>(static_cast<const input_t*>(p.z)[i])) : g;
}

// Pass 1: chunk k (but the first) from a zero inflow; what flows out of its first step goes to
// chunk_inflow's slot k - 1, which pass 2 then turns into chunk k - 1's inflow, and its sum of dt to
// chunk_dt[.., k].
template <typename input_t, int kNMax>
__global__ void __launch_bounds__(kWarp * kChunksPerBlock)
    adjoint_chunks_from_zero_kernel(MultiPathScanBwdParams p, at::opmath_type<input_t>* chunk_inflow,
                                    at::opmath_type<input_t>* chunk_dt) {
  using weight_t = at::opmath_type<input_t>;
  const ChunkTask task = chunk_task(p);
  if (!task.valid || task.chunk == 0) return;
  const PathChannel<input_t> c(p, task.b, task.path, task.d);
  weight_t a[kNMax];
  c.load_state_rates(a);
  weight_t carry[kNMax];
#pragma unroll
  for (int n = 0; n < kNMax; ++n) carry[n] = weight_t(0);
  weight_t sum_dt = 0;
  for (int64_t s = chunk_end(task.chunk, p.seqlen) - 1; s >= chunk_begin(task.chunk); --s) {
    const int64_t l = c.position(s);
    const weight_t dt = c.step_at(l);
    const weight_t dy = output_grad_at<input_t>(p, task.b, task.d, l);
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < c.N) carry[n] = step_decay(dt, a[n]) * (carry[n] + dy * static_cast<weight_t>(c.C_path[n * c.L + l]));
    }
    sum_dt += dt;
  }
  const int64_t row = (task.b * p.n_paths + task.path) * p.dim + task.d;
  chunk_dt[row * p.n_chunks + task.chunk] = sum_dt;
  weight_t* previous_inflow = chunk_inflow + (row * p.n_chunks + task.chunk - 1) * p.d_state;
#pragma unroll
  for (int n = 0; n < kNMax; ++n) {
    if (n < p.d_state) previous_inflow[n] = carry[n];
  }
}

// Pass 2, one thread per (batch, path, channel, state entry), last chunk to first: the adjoint
// flowing into each chunk from its right, in place. Chunk k's slot of inflow holds, on entry, what flows
// out of chunk k + 1's first step when its adjoint starts from zero (pass 1); on exit, the adjoint
// entering chunk k:  inflow[k] = exp(a sum_dt[k + 1]) inflow[k + 1] + from_zero[k + 1],  inflow[last] = 0.
template <typename weight_t>
__global__ void carry_adjoint_across_chunks_kernel(MultiPathScanParams p, weight_t* inflow, const weight_t* chunk_dt) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.batch * p.n_paths * p.dim * p.d_state) return;
  const int64_t n = i % p.d_state, row = i / p.d_state;  // row: (batch, path, channel)
  const weight_t a = static_cast<const weight_t*>(p.A)[row % (p.n_paths * p.dim) * p.d_state + n];
  weight_t* slots = inflow + row * p.n_chunks * p.d_state + n;
  const weight_t* sums = chunk_dt + row * p.n_chunks;
  weight_t into = 0;
  for (int64_t k = p.n_chunks - 1; k >= 0; --k) {
    const weight_t from_zero = k > 0 ? slots[(k - 1) * p.d_state] : weight_t(0);
    slots[k * p.d_state] = into;
    into = step_decay(sums[k], a) * into + from_zero;
  }
}

// Pass 3: chunk k's gradients. A warp's lanes are channels of the same chunk; lanes past D still take
// part in the warp sums, reading channel D - 1 and contributing zero. The warp sums dC and dB of 16
// state entries at a time: rows 0-15 of its tile hold dC, rows 16-31 dB.
//
// The adjoint runs backwards but needs the forward's states: keeping a whole chunk's (65 x N) in
// local memory would cost 16 bytes of local traffic per state update. Instead a thread recomputes
// the state before every sub-chunk of a few steps (kept in local memory: 1 KB for N <= 16 in float),
// then per sub-chunk, last to first, the sub-chunk's states into registers, and recomputes each
// step's decay on the way back: three exps per state update here instead of one, for almost no local
// memory traffic (ptxas, sm_90, N <= 16 in float: 1 KB stack frame and no spills, was 8 KB).
constexpr int kStatesPerWarpSum = kWarp / 2;

// Steps per sub-chunk: as many as keep (steps + 1) states of kNMax entries of weight_t near 80
// registers.
template <typename weight_t, int kNMax>
constexpr int sub_chunk_steps() {
  constexpr int state_registers = kNMax * static_cast<int>(sizeof(weight_t) / 4);
  return state_registers <= 16 ? 4 : state_registers <= 32 ? 2 : 1;
}

template <typename input_t, int kNMax>
__global__ void __launch_bounds__(kWarp * kChunksPerBlock)
    scan_chunks_backward_kernel(MultiPathScanBwdParams p, const at::opmath_type<input_t>* chunk_inflow,
                                at::opmath_type<input_t>* dv_paths) {
  using weight_t = at::opmath_type<input_t>;
  const ChunkTask task = chunk_task(p);
  if (task.chunk >= p.n_chunks) return;  // the whole warp
  const bool active = task.d < p.dim;
  const int64_t d = active ? task.d : p.dim - 1;
  const int64_t b = task.b, path = task.path, chunk = task.chunk, N = p.d_state;
  const PathChannel<input_t> c(p, b, path, d);
  weight_t a[kNMax];
  c.load_state_rates(a);
  const int64_t row = (b * p.n_paths + path) * p.dim + d;
  const int64_t channel_block = d / kWarp;
  const int64_t partial = ((b * p.n_channel_blocks + channel_block) * p.n_paths + path) * p.seqlen * N;
  auto* dB_partial = static_cast<weight_t*>(p.dB_partial) + partial;
  auto* dC_partial = static_cast<weight_t*>(p.dC_partial) + partial;
  auto* ddelta_row = static_cast<input_t*>(p.ddelta) + row * p.seqlen;
  weight_t* dv_row = dv_paths + row * p.seqlen;
  const int64_t s_begin = chunk_begin(chunk), s_end = chunk_end(chunk, p.seqlen);
  __shared__ weight_t tiles[kChunksPerBlock][kWarp][kWarp + 1];
  const WarpColumnSums<weight_t> channel_sums{tiles[threadIdx.y]};
  constexpr int kSubChunk = sub_chunk_steps<weight_t, kNMax>();
  constexpr int kSubChunksPerChunk = kScanChunk / kSubChunk;

  weight_t dh[kNMax], dA[kNMax], h[kNMax];
  const weight_t* start = static_cast<const weight_t*>(p.chunk_states) + (row * p.n_chunks + chunk) * N;
  const weight_t* inflow = chunk_inflow + (row * p.n_chunks + chunk) * N;
#pragma unroll
  for (int n = 0; n < kNMax; ++n) {
    h[n] = n < N ? start[n] : weight_t(0);
    dh[n] = active && n < N ? inflow[n] : weight_t(0);  // idle lanes' dB contributions must stay zero
    dA[n] = weight_t(0);
  }
  weight_t dD = 0, ddelta_bias = 0;

  // The state before each sub-chunk, recomputed from the chunk's saved start state.
  weight_t checkpoints[kSubChunksPerChunk * kNMax];
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int64_t k = s - s_begin;
    if (k % kSubChunk == 0) {
#pragma unroll
      for (int n = 0; n < kNMax; ++n) checkpoints[k / kSubChunk * kNMax + n] = h[n];
    }
    const int64_t l = c.position(s);
    const weight_t dt = c.step_at(l);
    const weight_t dt_v = dt * c.input_at(l);
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < N) h[n] = state_update<weight_t>(h[n], step_decay(dt, a[n]), dt_v, static_cast<weight_t>(c.B_path[n * c.L + l]));
    }
  }

  // Sub-chunks last to first: their states again, into registers (states[k]: after k steps), then the
  // adjoint backwards through them.
  for (int64_t sub = (s_end - s_begin - 1) / kSubChunk; sub >= 0; --sub) {
    const int64_t sub_begin = s_begin + sub * kSubChunk;
    const int64_t count = s_end - sub_begin < kSubChunk ? s_end - sub_begin : kSubChunk;
    weight_t states[kSubChunk + 1][kNMax];
#pragma unroll
    for (int n = 0; n < kNMax; ++n) states[0][n] = checkpoints[sub * kNMax + n];
#pragma unroll
    for (int k = 0; k < kSubChunk; ++k) {
      if (k < count) {
        const int64_t l = c.position(sub_begin + k);
        const weight_t dt = c.step_at(l);
        const weight_t dt_v = dt * c.input_at(l);
#pragma unroll
        for (int n = 0; n < kNMax; ++n) {
          states[k + 1][n] = n < N ? state_update<weight_t>(states[k][n], step_decay(dt, a[n]), dt_v,
                                                             static_cast<weight_t>(c.B_path[n * c.L + l]))
                                   : weight_t(0);
        }
      }
    }
#pragma unroll
    for (int k = kSubChunk - 1; k >= 0; --k) {
      if (k >= count) continue;
      const int64_t l = c.position(sub_begin + k);
      const weight_t v = c.input_at(l);
      const weight_t raw = static_cast<weight_t>(c.delta_row[l]);
      const weight_t dt = step_size<weight_t>(raw, c.bias, p.delta_softplus);
      const weight_t dt_v = dt * v;
      const weight_t dy = active ? output_grad_at<input_t>(p, b, d, l) : weight_t(0);
      weight_t d_dt = 0, d_dt_v = 0;
#pragma unroll
      for (int group = 0; group < kNMax; group += kStatesPerWarpSum) {
        if (group >= N) break;  // the same for the whole warp
#pragma unroll
        for (int n = group; n < group + kStatesPerWarpSum; ++n) {
          if (n < N) {
            weight_t dB_lane = 0;
            dh[n] = state_update_backward<weight_t>(dh[n] + dy * static_cast<weight_t>(c.C_path[n * c.L + l]),
                                                    states[k][n], step_decay(dt, a[n]), dt, a[n], dt_v,
                                                    static_cast<weight_t>(c.B_path[n * c.L + l]), d_dt, dA[n],
                                                    d_dt_v, dB_lane);
            channel_sums.stage(n - group, dy * states[k + 1][n]);
            channel_sums.stage(kStatesPerWarpSum + n - group, dB_lane);
          }
        }
        const weight_t total = channel_sums.sum_row();
        const int n = group + threadIdx.x % kStatesPerWarpSum;
        if (n < N) (threadIdx.x < kStatesPerWarpSum ? dC_partial : dB_partial)[l * N + n] = total;
      }
      const weight_t d_step = (d_dt + d_dt_v * v) * step_size_grad<weight_t>(raw, c.bias, p.delta_softplus);
      dD += dy * v;
      ddelta_bias += d_step;
      if (active) {
        ddelta_row[l] = static_cast<input_t>(d_step);
        dv_row[l] = d_dt_v * dt + dy * c.skip;
      }
    }
  }
  if (active) {
    const int64_t channel = ((b * p.n_chunks + chunk) * p.n_paths + path) * p.dim + d;
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < N) static_cast<weight_t*>(p.dA_partial)[channel * N + n] = dA[n];
    }
    static_cast<weight_t*>(p.dD_partial)[channel] = dD;
    static_cast<weight_t*>(p.ddelta_bias_partial)[channel] = ddelta_bias;
  }
}

// du[b, d, l] = the paths' dv at l (in path order), then the dv of every step that mixed position l
// into its input (in mix_sources order); dz = dout * y * silu'(z).
template <typename input_t>
__global__ void merge_input_grads_kernel(MultiPathScanBwdParams p, const at::opmath_type<input_t>* dv_paths,
                                         const int64_t* mix_sources, const int64_t* mix_offsets) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t L = p.seqlen, per_batch = p.dim * L;
  if (i >= p.batch * per_batch) return;
  const int64_t b = i / per_batch, rest = i % per_batch, d = rest / L, l = rest % L;
  const weight_t* dv_batch = dv_paths + b * p.n_paths * per_batch;
  weight_t du = 0;
  for (int64_t path = 0; path < p.n_paths; ++path) du += dv_batch[path * per_batch + rest];
  if (mix_sources) {
    for (int64_t k = mix_offsets[l]; k < mix_offsets[l + 1]; ++k) {
      const int64_t path = mix_sources[k] / L, step_position = mix_sources[k] % L;
      du += dv_batch[(path * p.dim + d) * L + step_position];
    }
  }
  static_cast<input_t*>(p.du)[i] = static_cast<input_t>(du);
  if (p.z) {
    const weight_t g = static_cast<weight_t>(static_cast<const input_t*>(p.grad_out)[i]);
    const weight_t y = static_cast<weight_t>(static_cast<const input_t*>(p.out_ungated)[i]);
    const weight_t z = static_cast<weight_t>(static_cast<const input_t*>(p.z)[i]);
    static_cast<input_t*>(p.dz)[i] = static_cast<input_t>(g * y * silu_grad(z));
  }
}

// The inverse of mix for a deterministic gather: sources holds the flat indices path * L + l of the
// entries mix[path, l] >= 0, ordered by the position they name (stable, so in index order among
// equals); sources[offsets[m] : offsets[m + 1]] are the steps that mixed in position m.
struct MixSources {
  at::Tensor sources, offsets;
};

inline MixSources invert_mix(const at::Tensor& mix, int64_t seqlen) {
  const at::Tensor flat = mix.flatten();
  const at::Tensor named = flat.masked_fill(flat.lt(0), seqlen);  // -1 sorts after every position
  const auto [sorted, sources] = at::sort(named, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  return {sources, at::searchsorted(sorted, at::arange(seqlen + 1, flat.options()))};
}

// run_scan_backward_as (scan_cuda.h): the backward's launches for input dtype scalar_t.
template <typename scalar_t>
void run_scan_backward_as(ScanBackward& g) {
  using weight_t = at::opmath_type<scalar_t>;
  const MultiPathScanBwdParams& p = g.params;
  TORCH_CHECK(p.n_length_blocks == p.n_chunks && p.channel_block == kWarp,
              "the CUDA backward takes partials per chunk and per warp of channels");
  if (p.batch > 0 && p.dim > 0 && p.seqlen > 0) {  // else the reduction below writes dA, dD, ddelta_bias = 0
    const auto weights = g.inputs.A.options();
    const at::Tensor dv_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, weights);
    const at::Tensor chunk_inflow = at::empty({p.batch, p.n_paths, p.dim, p.n_chunks, p.d_state}, weights);
    const at::Tensor chunk_dt = at::empty({p.batch, p.n_paths, p.dim, p.n_chunks}, weights);
    const MixSources mix = g.inputs.mix.defined() ? invert_mix(g.inputs.mix, p.seqlen) : MixSources{};
    auto* dv_data = dv_paths.mutable_data_ptr<weight_t>();
    auto* inflow_data = chunk_inflow.mutable_data_ptr<weight_t>();
    auto* dt_data = chunk_dt.mutable_data_ptr<weight_t>();
    const dim3 chunk_block(kWarp, kChunksPerBlock);
    dispatch_state_bucket(p.d_state, [&](auto bucket) {
      constexpr int kNMax = decltype(bucket)::value;
      simt::launch(adjoint_chunks_from_zero_kernel<scalar_t, kNMax>, chunk_grid(p), chunk_block, 0, p, inflow_data,
                   dt_data);
      simt::launch(carry_adjoint_across_chunks_kernel<weight_t>,
                   elementwise_blocks(p.batch * p.n_paths * p.dim * p.d_state), kElementwiseThreads, 0, p, inflow_data,
                   static_cast<const weight_t*>(dt_data));
      simt::launch(scan_chunks_backward_kernel<scalar_t, kNMax>, chunk_grid(p), chunk_block, 0, p,
                   static_cast<const weight_t*>(inflow_data), dv_data);
    });
    simt::launch(merge_input_grads_kernel<scalar_t>, elementwise_blocks(p.batch * p.dim * p.seqlen),
                 kElementwiseThreads, 0, p, static_cast<const weight_t*>(dv_data),
                 mix.sources.defined() ? mix.sources.const_data_ptr<int64_t>() : nullptr,
                 mix.offsets.defined() ? mix.offsets.const_data_ptr<int64_t>() : nullptr);
  }
  reduce_backward_partials<weight_t>(g, sum_partials<weight_t>);
}

}  // namespace cuda
}  // namespace posemamba
