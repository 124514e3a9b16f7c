// CUDA backward of posemamba::multi_path_scan_bwd: the kernels and their launches.
//
// The same split as the forward (scan_forward_cuda.cuh, scan_chunked_split_cuda.cuh): a block takes 32
// channels of one (batch, path) and walks a span of the path's chunks, here last to first, its warps
// sharing each chunk, kStepsPerThread consecutive steps a thread, B and C staged per chunk in shared
// memory. Per chunk and state entry, with each step's exp taken once:
// - the states: each thread composes its steps' state maps, and the maps of the warps before its own
//   carry the chunk's start state, which the forward saved (chunk_states), to its first step;
// - the adjoint q (the gradient reaching the state before a step from everything after it) runs
//   backwards, q_s = decay_s (dy_s C_s + q_{s+1}): that too is a state map, composed per thread and
//   carried from the warps after this one and from the chunk after this one;
// - then each thread walks its steps backwards computing every gradient (state_update_backward).
// Where the path is cut into spans (as in the forward, where blocks of whole paths would not fill the
// GPU), a first pass composes each span's adjoint map from a zero inflow and carry_across_spans turns
// those into the adjoint entering each span: a second exp per state update there.
// Inputs and per-element gradients move through each warp's tile (StepTile), so that global accesses
// run along positions. ddelta goes straight to its place in natural order, where the tile read delta
// (the same sectors). The gradient of each step's scan input (v = u[l] + u[mix[l]]) goes to rows per
// path that the block owns, in path order (whole-sector stores, where a joint-major path's positions
// would take a sector a value): a last kernel gathers du from them in a fixed order (paths, then the
// steps that mixed each position in, through an inverse index of mix), through the paths' inverse.
// dB and dC sum over a warp's channels in a fixed order through shared memory into per-(32 channels)
// partials, (.., N, L) with each path's steps in path order (whole-sector stores on any path), which
// the pass that adds them reads back through the paths' inverse; dA, dD and ddelta_bias into
// per-(span, warp) partials. Fixed-order passes then add the partials: no float atomics, bitwise
// reproducible.
//
// Included by the .cu of the same name and its _low_rank one (nvcc: the instantiations for every input
// dtype, the kernels for full and for low-rank step sizes apart) and by the host emulation build that
// tests these kernels without a GPU (../emulation/).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "scan_cuda.h"
#include "scan_chunked_split_cuda.cuh"
#include "scan_cuda_common.cuh"
#include "scan_merge_tiles_cuda.cuh"
#include "scan_warp_split_cuda.cuh"

namespace posemamba {
namespace cuda {

// Passes 1 and 3 (see above), by pointers: with span_maps, pass 1 (spans from first_span on: the
// span's adjoint map from a zero inflow, (batch, P, spans, N, D)); else pass 3 (gradients). adjoint
// (batch, P, spans, N, D) holds the adjoint entering each span from its right (zeros for the last),
// which pass 3 updates in place chunk by chunk. The walk over chunks takes its pass as a compile-time
// constant, so that each pass's loop holds only its own work (pass 1 neither recomputes states nor
// reads the per-entry values).
template <typename input_t, bool kLowRank>
__global__ void __launch_bounds__(kWarp * kSegmentWarps, kSpanBlocksPerMultiprocessor)
    scan_span_backward_kernel(MultiPathScanBwdParams p, int64_t chunks_per_span, int64_t first_span,
                              at::opmath_type<input_t>* adjoint, StateMap<at::opmath_type<input_t>>* span_maps,
                              at::opmath_type<input_t>* dv_paths) {
  using weight_t = at::opmath_type<input_t>;
  using Map = StateMap<weight_t>;
  const SpanTask task = span_task(p, first_span);
  if (!task.in_split) return;  // the whole block
  const int64_t span = task.span, b = task.b, path = task.path, d = task.d;
  const int64_t L = p.seqlen, N = p.d_state, n_spans = num_spans(p, chunks_per_span);
  const int n_states = static_cast<int>(N);  // at most kMaxStateDim (checked on the host)
  const int lane = task.lane, warp = task.warp;
  const bool active = task.active, pass_1 = span_maps != nullptr;
  const PathChannel<input_t> c(p, b, path, d, task.first_channel, kLowRank);
  const int64_t row = (b * p.n_paths + path) * p.dim + d;
  const int64_t first_row = row - d + task.first_channel;  // the block's first channel's
  const OutputGrads<input_t> output_grads(p, b, task.first_channel);
  input_t* const ddelta_block = static_cast<input_t*>(p.ddelta) + first_row * L;  // its row of ddelta
  // Per state entry: the adjoint entering the chunk from its right, which warp 0 (whose steps begin the
  // chunk) updates in pass 3; in pass 1 the span's map so far (its drive is that adjoint).
  // Entry n of this lane's at [n * D] (span_entries).
  weight_t* adjoint_row = adjoint + span_entries(p, n_spans, b, path, span) + d;
  Map* span_map_row = pass_1 ? span_maps + span_entries(p, n_spans, b, path, span) + d : nullptr;
  __shared__ Map state_maps[2][kSegmentWarps][kWarp], adjoint_maps[2][kSegmentWarps][kWarp];  // used in turn
  // Each warp's tile: its steps' loads and stores (StepTile), and its dB and dC sums over channels.
  alignas(kStepTileAlignment) __shared__ weight_t tiles[kSegmentWarps][kStepsPerThread][kWarp + 1];
  using Projections = ChunkProjections<weight_t>;
  __shared__ Projections projections;
  const WarpStepSums<weight_t> channel_sums{tiles[warp]};
  int buffer = 0;
  if (pass_1 && warp == 0 && active) {  // only warp 0 reads them
    for (int64_t n = 0; n < N; ++n) span_map_row[n * p.dim] = Map::identity();
  }
  // This thread's dA partial, (batch, span and warp, P, D, N), and its dD and ddelta_bias sums.
  const int64_t length_block = span * kSegmentWarps + warp;
  const int64_t partial_row = ((b * p.n_length_blocks + length_block) * p.n_paths + path) * p.dim + d;
  // Entry n at [n * D]: (batch, span and warp, P, N, D), a warp's lanes contiguous.
  weight_t* dA_row = static_cast<weight_t*>(p.dA_partial) + (partial_row - d) * N + d;
  if (!pass_1 && active) {
    for (int64_t n = 0; n < N; ++n) dA_row[n * p.dim] = 0;
  }
  weight_t dD = 0, ddelta_bias = 0;
  const int64_t partial = ((b * p.n_channel_blocks + d / kWarp) * p.n_paths + path) * L * N;
  auto* dB_partial = static_cast<weight_t*>(p.dB_partial) + partial;
  auto* dC_partial = static_cast<weight_t*>(p.dC_partial) + partial;

  // One walk per pass, the pass a compile-time constant: each pass's loop holds only its own work.
  const auto walk = [&](auto pass) {
    constexpr bool summary = decltype(pass)::value;
    const int64_t first_chunk = span * chunks_per_span;
    const int64_t end_chunk = first_chunk + chunks_per_span < p.n_chunks ? first_chunk + chunks_per_span : p.n_chunks;
    for (int64_t chunk = end_chunk - 1; chunk >= first_chunk; --chunk) {
      // The chunk's positions and the first group's B and C, staged by the whole block.
      projections.template stage</*kWithB=*/!summary, /*kWithC=*/true>(c, chunk, 0);
      __syncthreads();
      // This thread's steps. Past the path's end a step has dt = v = dy = 0 (loaded at position 0, then
      // set): the identity map, forwards and backwards, computed like the others (no branches in the
      // loops below), with no gradient and nothing stored.
      const int64_t first = chunk_begin(chunk) + warp * kStepsPerThread, end = chunk_end(chunk, L);
      const uint32_t* position = projections.position + warp * kStepsPerThread;
      // Per state entry, three values from global memory (pass 3; pass 1 leaves them unused, and the
      // compiler drops their loads): the chunk's start state (saved by the forward), this thread's dA
      // so far and the adjoint entering the chunk (written by warp 0 in the chunk after this one). Each
      // is loaded one entry ahead, so that its latency (L2, as other warps and chunks wrote them) hides
      // behind a whole entry's work; entry 0's before this chunk's loads. Read by lanes past D too
      // (valid rows, the values unused there): no predicates in the loop. Lanes past D keep a zero
      // adjoint, so that they add nothing to the warp's dB and dC sums.
      const weight_t* chunk_start_states =
          static_cast<const weight_t*>(p.chunk_states) + chunk_states_offset(p, b, path, d) + chunk * N * p.dim;
      weight_t next_h_chunk_start = chunk_start_states[0], next_dA_so_far = dA_row[0];
      weight_t next_q_end = active ? adjoint_row[0] : weight_t(0);
      int64_t ahead = 0;  // where the next entry's values are: its index times D
      weight_t v[kStepsPerThread], dt[kStepsPerThread], dy[kStepsPerThread];
      weight_t d_dt[kStepsPerThread], d_dt_v[kStepsPerThread], dt_v[kStepsPerThread];
      c.load_steps(position, projections.mixed_position + warp * kStepsPerThread, tiles[warp], v, dt);
      output_grads.load(p, c, tiles[warp], lane_step_position(position), dy);
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) {
        const bool valid = first + k < end;
        v[k] = valid ? v[k] : weight_t(0);
        dt[k] = valid ? dt[k] : weight_t(0);
        dy[k] = valid && active ? dy[k] : weight_t(0);
        dt_v[k] = dt[k] * v[k];
        d_dt[k] = d_dt_v[k] = 0;
      }
      // Lane i < kStepsPerThread writes the dB and dC partials of its warp's step i.
      const bool writes_sums = lane < kStepsPerThread && first + lane < end;
      for (int group = 0; group < n_states; group += Projections::kStates) {
        const int group_end = projections.template enter_group</*kWithB=*/!summary, /*kWithC=*/true>(c, chunk, group, n_states);
#pragma unroll 1
        for (int n = group; n < group_end; ++n) {
          const weight_t a = projections.A[n - group][lane], rate = decay_rate(a);
          const weight_t h_chunk_start = next_h_chunk_start, dA_so_far = next_dA_so_far, q_end = next_q_end;
          // The next entry's (this one's again at the last, unused), read before the barrier of that
          // entry, after which warp 0 writes its adjoint for the next chunk.
          if (n + 1 < n_states) ahead += p.dim;
          next_h_chunk_start = chunk_start_states[ahead];
          next_dA_so_far = dA_row[ahead];
          next_q_end = active ? adjoint_row[ahead] : weight_t(0);
          const weight_t* B_steps = projections.B[n - group] + warp * kStepsPerThread;
          const weight_t* C_steps = projections.C[n - group] + warp * kStepsPerThread;
          // The steps' state maps, and their adjoint maps composed last step first: q -> decay (dy C + q)
          // a step, whose product of decays is the state maps' (the same steps).
          Map steps[kStepsPerThread];
          Map own = Map::identity();
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) {
            steps[k] = Map{step_decay_from_rate(dt[k], rate), dt_v[k] * B_steps[k]};
            own = own.then(steps[k]);
          }
          weight_t adjoint_drive = 0;
#pragma unroll
          for (int k = kStepsPerThread - 1; k >= 0; --k) {
            adjoint_drive = steps[k].decay * (dy[k] * C_steps[k] + adjoint_drive);
          }
          const Map own_adjoint{own.decay, adjoint_drive};
          // Buffers are written again two barriers later, when every thread has read them.
          if constexpr (!summary) state_maps[buffer][warp][lane] = own;  // pass 1 needs no states
          adjoint_maps[buffer][warp][lane] = own_adjoint;
          __syncthreads();
          const auto& warps_state_maps = state_maps[buffer];
          const auto& warps_adjoint_maps = adjoint_maps[buffer];
          buffer ^= 1;
          if constexpr (summary) {
            if (warp == 0 && active) {  // pass 1: the span's adjoint map so far
              const Map chunk_adjoint = maps_after_warp(warps_adjoint_maps, warp, lane).then(own_adjoint);
              const Map span_so_far = span_map_row[n * p.dim];
              span_map_row[n * p.dim] =
                  Map{span_so_far.decay * chunk_adjoint.decay, chunk_adjoint.apply(span_so_far.drive)};
            }
            continue;
          }
          // The adjoint after this thread's last step, and the state before its first.
          weight_t q = carry_after_warp(warps_adjoint_maps, warp, lane, q_end), dA = 0;
          if (warp == 0 && active) adjoint_row[n * p.dim] = own_adjoint.apply(q);  // entering the chunk before
          // The states: h[k] before step k, h[k + 1] after it.
          weight_t h[kStepsPerThread + 1];
          h[0] = carry_before_warp(warps_state_maps, warp, lane, h_chunk_start);
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) h[k + 1] = steps[k].apply(h[k]);
#pragma unroll
          for (int k = kStepsPerThread - 1; k >= 0; --k) {
            weight_t dB = 0;
            const weight_t dh = dy[k] * C_steps[k] + q;
            q = state_update_backward<weight_t>(dh, h[k], steps[k].decay, dt[k], a, dt_v[k],
                                                B_steps[k], d_dt[k], dA, d_dt_v[k], dB);
            channel_sums.stage(k, dB);
          }
          const weight_t dB_sum = channel_sums.sum();
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) channel_sums.stage(k, dy[k] * h[k + 1]);
          const weight_t dC_sum = channel_sums.sum();
          if (writes_sums) {  // (N, steps in path order): a warp's 8 steps are one sector, whatever the path
            simt::store_streaming(dB_partial + n * L + first + lane, dB_sum);
            simt::store_streaming(dC_partial + n * L + first + lane, dC_sum);
          }
          if (active) dA_row[n * p.dim] = dA_so_far + dA;
        }
      }
      if constexpr (!summary) {
        // delta again (its registers were the loop's), for the step size's derivative.
        weight_t delta[kStepsPerThread], d_step[kStepsPerThread], dv[kStepsPerThread];
        c.gather_raw_step_sizes(tiles[warp], delta, lane_step_position(position));
#pragma unroll
        for (int k = 0; k < kStepsPerThread; ++k) {
          d_step[k] = (d_dt[k] + d_dt_v[k] * v[k]) * step_size_grad<weight_t>(delta[k], c.bias, p.delta_softplus);
          dv[k] = d_dt_v[k] * dt[k] + dy[k] * c.skip;
          if (first + k < end && active) {
            dD += dy[k] * v[k];
            ddelta_bias += d_step[k];
          }
        }
        // ddelta in natural order, where the tile read delta; dv in path order, for merge_input_grads.
        c.scatter_steps(0, end - first, tiles[warp], d_step, ddelta_block, lane_step_position(position));
        c.store_steps(0, end - first, tiles[warp], dv, dv_paths + first_row * L + first);
      }
      __syncthreads();  // every thread is done with the chunk's staged values before the next chunk's
    }
    if (!summary && active) {
      static_cast<weight_t*>(p.dD_partial)[partial_row] = dD;
      static_cast<weight_t*>(p.ddelta_bias_partial)[partial_row] = ddelta_bias;
    }
  };
  if (pass_1) {
    walk(std::true_type{});
  } else {
    walk(std::false_type{});
  }
}

// du[b, d, l] = the paths' dv at l, then the dv of every step that mixed position l into its input
// (in mix_sources order); dz = dout * silu'(z) * y. dv_paths rows are in path order: position l of
// path p is at step inverse[p, l]. A block per tile of 32 channels by 32 positions (MergeTile): du by
// channel rows, along dv_paths' rows; dout and z held the way they lie, y by channel rows; du and dz
// written the way they are asked for.
template <typename input_t>
__global__ void __launch_bounds__(kMergeTile * kMergeWarps)
    merge_input_grads_kernel(MultiPathScanBwdParams p, const at::opmath_type<input_t>* dv_paths,
                             const int32_t* inverse, const int64_t* mix_sources, const int64_t* mix_offsets) {
  using weight_t = at::opmath_type<input_t>;
  __shared__ MergeExchange<weight_t> exchange;
  const MergeTile tile(p);
  const int64_t L = p.seqlen, l = tile.row_l;
  // Stores values held by channel rows into a (batch, D, L) tensor, or channels-last (turned first).
  const auto store = [&](weight_t(&values)[kMergeValues], void* out, bool channels_last) {
    const bool by_positions = channels_last && tile.turn(exchange, /*by_positions=*/false, values);
#pragma unroll
    for (int j = 0; j < kMergeValues; ++j) {
      if (tile.in_tensors(by_positions, j)) {
        static_cast<input_t*>(out)[tile.offset(by_positions, j)] = static_cast<input_t>(values[j]);
      }
    }
  };
  weight_t du[kMergeValues];
#pragma unroll
  for (int j = 0; j < kMergeValues; ++j) {
    du[j] = 0;
    if (!tile.in_row(j)) continue;
    const int64_t d = tile.row_channel(j);
    for (int64_t path = 0; path < p.n_paths; ++path) {
      const int64_t row = ((tile.row_b * p.n_paths + path) * p.dim + d) * L;  // of (batch, P, D, L)
      du[j] += dv_paths[row + path_step(inverse, path, L, l)];
    }
    if (mix_sources) {
      for (int64_t k = mix_offsets[l]; k < mix_offsets[l + 1]; ++k) {
        const int64_t path = mix_sources[k] / L, mixing = mix_sources[k] % L;  // a position mixing l in
        du[j] += dv_paths[((tile.row_b * p.n_paths + path) * p.dim + d) * L + path_step(inverse, path, L, mixing)];
      }
    }
  }
  store(du, p.du, p.du_channels_last);
  if (!p.z) return;  // the whole block
  // dz's factors from dout and z where they lie (both in one layout), then y's by channel rows.
  const bool by_positions = p.grad_out_channels_last;
  weight_t dz[kMergeValues];
#pragma unroll
  for (int j = 0; j < kMergeValues; ++j) {
    const int64_t i = tile.offset(by_positions, j);
    dz[j] = tile.in_tensors(by_positions, j) ? static_cast<weight_t>(static_cast<const input_t*>(p.grad_out)[i]) *
                                                   silu_grad(static_cast<weight_t>(static_cast<const input_t*>(p.z)[i]))
                                             : weight_t(0);
  }
  if (by_positions) tile.turn(exchange, by_positions, dz);
#pragma unroll
  for (int j = 0; j < kMergeValues; ++j) {
    if (tile.in_row(j)) dz[j] *= static_cast<weight_t>(static_cast<const input_t*>(p.out_ungated)[tile.row_offset(j)]);
  }
  store(dz, p.dz, p.dz_channels_last);
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

// dB or dC: out[b, path, n, l] = the sum over channel blocks k of partial[b, k, path, n, inverse[path, l]],
// k in index order (the partials, (batch, channel blocks, P, N, L), hold each path's steps in path
// order). A block's threads take consecutive positions, whose steps on a joint-major path form runs
// of consecutive steps, one per joint: their reads share sectors within the block.
template <typename T>
__global__ void sum_path_order_partials_kernel(MultiPathScanParams p, const T* partial, int64_t n_channel_blocks,
                                               const int32_t* inverse, T* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_path = p.d_state * p.seqlen, per_batch = p.n_paths * per_path;
  if (i >= p.batch * per_batch) return;
  const int64_t b = i / per_batch, rest = i % per_batch, l = rest % p.seqlen;
  const T* column = partial + b * n_channel_blocks * per_batch + rest - l +
                    path_step(inverse, rest / per_path, p.seqlen, l);
  T total = 0;
  for (int64_t k = 0; k < n_channel_blocks; ++k) total += column[k * per_batch];
  out[i] = total;
}

template <typename T>
void sum_path_order_partials(const MultiPathScanParams& p, const T* partial, int64_t n_channel_blocks,
                             const at::Tensor& inverse, T* out) {
  const int64_t total = p.batch * p.n_paths * p.d_state * p.seqlen;
  if (total == 0) return;
  simt::launch(sum_path_order_partials_kernel<T>, elementwise_blocks(total), kElementwiseThreads, 0, p, partial,
               n_channel_blocks, inverse.const_data_ptr<int32_t>(), out);
}

// run_chunked_backward (scan_cuda.h): the chunked split's launches.
template <typename scalar_t, bool kLowRank>
void run_chunked_backward(const MultiPathScanBwdParams& p, const at::TensorOptions& weights,
                          at::opmath_type<scalar_t>* dv_paths) {
  using weight_t = at::opmath_type<scalar_t>;
  const int64_t span_chunks = chunks_per_span(p), n_spans = num_spans(p, span_chunks);
  // The adjoint entering each span from its right: zero for the last, from the carry pass for the others
  // (which writes every span's, the last's zero too); zeros where there is one span and no carry pass.
  const std::array<int64_t, 5> adjoint_shape{p.batch, p.n_paths, n_spans, p.d_state, p.dim};
  const at::Tensor adjoint = n_spans > 1 ? at::empty(adjoint_shape, weights) : at::zeros(adjoint_shape, weights);
  auto* adjoint_data = adjoint.mutable_data_ptr<weight_t>();
  const dim3 block(kWarp, kSegmentWarps);
  if (n_spans > 1) {
    const at::Tensor span_maps = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim, 2}, weights);
    auto* maps = reinterpret_cast<StateMap<weight_t>*>(span_maps.mutable_data_ptr<weight_t>());
    simt::launch(scan_span_backward_kernel<scalar_t, kLowRank>, path_channel_grid(p, n_spans - 1), block, 0, p,
                 span_chunks, /*first_span=*/int64_t{1}, adjoint_data, maps, nullptr);
    carry_across_spans<weight_t>(p, n_spans, maps, adjoint_data, /*forward=*/false);
  }
  simt::launch(scan_span_backward_kernel<scalar_t, kLowRank>, path_channel_grid(p, n_spans), block, 0, p, span_chunks,
               /*first_span=*/int64_t{0}, adjoint_data, nullptr, dv_paths);
}

// One work split's launches, as run_split_forward's: the warp split's (span_length > 0) or the chunked
// one's, each instantiated in .cu files of its own (scan_cuda.h).
template <typename scalar_t, bool kLowRank>
void run_split_backward(const MultiPathScanBwdParams& p, int64_t span_length, const at::TensorOptions& weights,
                        at::opmath_type<scalar_t>* dv_paths) {
  if (span_length) {
    run_warp_spans_backward<scalar_t, kLowRank>(p, span_length, weights, dv_paths);
  } else {
    run_chunked_backward<scalar_t, kLowRank>(p, weights, dv_paths);
  }
}

// run_scan_backward_as (scan_cuda.h): the backward's launches for input dtype scalar_t, each work
// split's (path_splits) into its paths' rows of the workspaces and partials, then the merges and sums.
template <typename scalar_t>
void run_scan_backward_as(ScanBackward& g) {
  using weight_t = at::opmath_type<scalar_t>;
  const MultiPathScanBwdParams& p = g.params;
  TORCH_CHECK(p.channel_block == kWarp, "the CUDA backward sums dB and dC per warp of channels");
  // Nothing to scan: no partials, and the reduction below writes dA, dD, ddelta_bias = 0.
  const bool empty = p.batch == 0 || p.dim == 0 || p.seqlen == 0;
  const std::vector<PathSplit> splits = empty ? std::vector<PathSplit>{} : path_splits(p, /*backward=*/true);
  // dA, dD and ddelta_bias partials: one per span in the warp split, per span and warp in the chunked
  // one; as many as the most a split writes, zeros past a split's own where there are several.
  int64_t n_length_blocks = 0;
  for (const PathSplit& split : splits) {
    const int64_t split_blocks = split.span_length ? num_warp_spans(p, split.span_length)
                                                   : num_spans(p, chunks_per_span(split.params_of(p))) * kSegmentWarps;
    n_length_blocks = std::max(n_length_blocks, split_blocks);
  }
  allocate_length_partials(g, n_length_blocks, /*zeroed=*/splits.size() > 1);
  // For the workspaces and partials kept in path order (dv, dB, dC); dB and dC are summed even with
  // no channels (into zeros).
  const at::Tensor inverse = p.seqlen > 0 ? invert_paths(p, g.inputs.paths) : at::Tensor();
  if (!empty) {
    const auto weights = g.inputs.A.options();
    const at::Tensor dv_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, weights);
    const MixSources mix = g.inputs.mix.defined() ? invert_mix(g.inputs.mix, p.seqlen) : MixSources{};
    const auto run_split =
        p.delta_rank > 0 ? run_split_backward<scalar_t, true> : run_split_backward<scalar_t, false>;
    for (const PathSplit& split : splits) {
      run_split(split.params_of(p), split.span_length, weights, dv_paths.mutable_data_ptr<weight_t>());
    }
    simt::launch(merge_input_grads_kernel<scalar_t>, merge_grid(p), merge_block(), 0, p,
                 dv_paths.const_data_ptr<weight_t>(), inverse.const_data_ptr<int32_t>(),
                 mix.sources.defined() ? mix.sources.const_data_ptr<int64_t>() : nullptr,
                 mix.offsets.defined() ? mix.offsets.const_data_ptr<int64_t>() : nullptr);
  }
  const auto sum_channel_blocks = [&](const weight_t* partial, int64_t, int64_t n_channel_blocks, int64_t,
                                      weight_t* out) {
    sum_path_order_partials<weight_t>(p, partial, n_channel_blocks, inverse, out);
  };
  reduce_backward_partials<weight_t>(g, sum_channel_blocks, sum_partials<weight_t>);
}

}  // namespace cuda
}  // namespace posemamba
