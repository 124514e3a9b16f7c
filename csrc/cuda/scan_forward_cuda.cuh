// CUDA forward of posemamba::multi_path_scan_fwd: the kernels and their launches.
//
// Work split. A thread block scans 32 channels (its lanes) of one (batch, path) along the path's
// 64-step chunks, one chunk after another; its kSegmentWarps warps share each chunk, kStepsPerThread
// consecutive steps each, and the block holds each channel's state at the chunk's start. Per state
// entry, each thread composes its steps into one state map (StateMap: h -> decay h + drive), the
// warps' maps meet in shared memory, and each thread carries the chunk's start state through the maps
// of the warps before its own: the state before its first step. Each step's exp is taken once and
// kept for re-applying the steps, so a path costs one exp per state update, as a sequential scan does.
// The lanes' channels share B and C, which the block stages per chunk in shared memory with the
// chunk's positions and the lanes' A (ChunkProjections): in the loop over state entries a thread reads
// its steps' values as broadcast rows, with no per-step address arithmetic. A warp loads its steps'
// inputs and stores their outputs through a tile in shared memory (StepTile), so that its global
// accesses run along positions rather than across the lanes' channels.
//
// A block per (batch, path, 32 channels) fills a GPU at training shapes. Where those blocks are fewer
// than the device's multiprocessors, the path is also cut into spans of whole chunks that blocks walk
// in parallel, in three passes:
//   1. each span but the last from a zero state: its state from zero per entry, and its steps' dt sum
//      per channel (the span's decay for entry n is exp(a_n sum dt));
//   2. carry_across_spans: one thread per (batch, path, channel, state entry) composes those maps in
//      path order into each span's start state;
//   3. each span from its start state, writing the path's outputs.
// Pass 1 costs a second exp per state update, for up to n_chunks times the parallelism. Pass 3 saves
// every chunk's start state (unless the forward keeps nothing for a backward): the chunk_states the
// backward restarts from. Each path's outputs go to
// its own row of a (batch, P, D, L) float workspace in path order (whole sectors, where a joint-major
// path's positions would take a sector a value), and a last kernel gathers them back to natural
// order (through the paths' inverse), sums the paths in index order and applies the gate: no
// atomics, results bitwise reproducible. Per-step math: ../multi_path_scan.h.
//
// Included by the .cu of the same name and its _low_rank one (nvcc: the instantiations for every input
// dtype, the kernels for full and for low-rank step sizes apart) and by the host emulation build that
// tests these kernels without a GPU (../emulation/).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <type_traits>

#include "scan_cuda.h"
#include "scan_chunked_split_cuda.cuh"
#include "scan_cuda_common.cuh"
#include "scan_merge_tiles_cuda.cuh"
#include "scan_warp_spans_cuda.cuh"

namespace posemamba {
namespace cuda {

// Passes 1 and 3 (see above), by pointers: with span_maps, pass 1 (from a zero state; the span's
// composed maps out, (batch, P, spans, N, D)); else pass 3 (from span_start's states, or zero where it
// is null; outputs into y_paths and chunk_states).
template <typename input_t, bool kLowRank>
__global__ void __launch_bounds__(kWarp * kSegmentWarps, kSpanBlocksPerMultiprocessor)
    scan_span_kernel(MultiPathScanParams p, int64_t chunks_per_span, const at::opmath_type<input_t>* span_start,
                     StateMap<at::opmath_type<input_t>>* span_maps, at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  using Map = StateMap<weight_t>;
  const SpanTask task = span_task(p, 0);
  if (!task.in_split) return;  // the whole block
  const int64_t span = task.span, L = p.seqlen, N = p.d_state, n_spans = num_spans(p, chunks_per_span);
  const int n_states = static_cast<int>(N);  // at most kMaxStateDim (checked on the host)
  const int lane = task.lane, warp = task.warp;
  const bool active = task.active, pass_1 = span_maps != nullptr;
  const PathChannel<input_t> c(p, task.b, task.path, task.d, task.first_channel, kLowRank);
  // The block's first channel's row of the (batch, P, D, L) workspace.
  const int64_t first_row = (task.b * p.n_paths + task.path) * p.dim + task.first_channel;
  const int64_t span_entry = span_entries(p, n_spans, task.b, task.path, span) + task.d;  // this lane's
  // This lane's saved states; null where the forward keeps none.
  weight_t* const chunk_states =
      p.chunk_states ? static_cast<weight_t*>(p.chunk_states) + chunk_states_offset(p, task.b, task.path, task.d)
                     : nullptr;
  using Projections = ChunkProjections<weight_t>;
  __shared__ Map warp_maps[2][kSegmentWarps][kWarp];  // two buffers, used in turn (see below)
  __shared__ Projections projections;
  int buffer = 0;
  // Per state entry and lane: the state before the chunk, which the last warp (whose steps end the
  // chunk) keeps; in shared memory rather than registers, which the steps need.
  __shared__ weight_t chunk_start_state[kMaxStateDim][kWarp];
  // Each warp's tile for its steps' loads and stores (StepTile), and in pass 1 each thread's sum of its
  // steps' dt: the span's decay for entry n is the product of its steps' exp(dt a_n) = exp(a_n sum dt),
  // one number per lane instead of one per entry.
  alignas(kStepTileAlignment) __shared__ weight_t step_tiles[kSegmentWarps][kStepsPerThread][kWarp + 1];
  __shared__ weight_t warp_dt_sums[kSegmentWarps][kWarp];
  weight_t span_dt = 0;  // the last warp's, in pass 1
  const bool last_warp = warp == kSegmentWarps - 1;
  if (last_warp) {
    for (int n = 0; n < N; ++n) {
      chunk_start_state[n][lane] = span_start ? span_start[span_entry + n * p.dim] : weight_t(0);
    }
  }
  __syncthreads();
  // One walk per pass, the pass a compile-time constant: each pass's loop holds only its own work.
  const auto walk = [&](auto pass) {
    constexpr bool summary = decltype(pass)::value;
    const int64_t last_chunk = (span + 1) * chunks_per_span < p.n_chunks ? (span + 1) * chunks_per_span : p.n_chunks;
    for (int64_t chunk = span * chunks_per_span; chunk < last_chunk; ++chunk) {
      // The chunk's positions and the first group's B and C, staged by the whole block.
      projections.template stage</*kWithB=*/true, /*kWithC=*/!summary>(c, chunk, 0);
      __syncthreads();
      // This thread's steps. Past the path's end a step has dt = 0 and v = 0 (loaded at position 0, then
      // set): the identity map, computed like the others (no branches in the loops below); its output
      // is not stored.
      const int64_t first = chunk_begin(chunk) + warp * kStepsPerThread, end = chunk_end(chunk, L);
      const uint32_t* position = projections.position + warp * kStepsPerThread;
      weight_t v[kStepsPerThread], dt[kStepsPerThread], dt_v[kStepsPerThread], y[kStepsPerThread];
      c.load_steps(position, projections.mixed_position + warp * kStepsPerThread, step_tiles[warp], v, dt);
      weight_t dt_sum = 0;
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) {
        const bool valid = first + k < end;
        dt_v[k] = valid ? dt[k] * v[k] : weight_t(0);
        dt[k] = valid ? dt[k] : weight_t(0);
        y[k] = c.skip * v[k];
        dt_sum += dt[k];
      }
      // Read by the last warp after the first barrier below; written again after the chunk's last.
      if constexpr (summary) warp_dt_sums[warp][lane] = dt_sum;
      // Where the last warp saves the chunk's start state per entry (pass 3): the chunk's part taken
      // once, so that an entry's address is one multiply-add on the path that holds up the barrier.
      weight_t* const chunk_states_at = chunk_states ? chunk_states + chunk * N * p.dim : nullptr;
      for (int group = 0; group < n_states; group += Projections::kStates) {
        const int group_end = projections.template enter_group</*kWithB=*/true, /*kWithC=*/!summary>(c, chunk, group, n_states);
#pragma unroll 1
        for (int n = group; n < group_end; ++n) {
          const weight_t rate = decay_rate(projections.A[n - group][lane]);
          const weight_t* B_steps = projections.B[n - group] + warp * kStepsPerThread;
          const weight_t* C_steps = projections.C[n - group] + warp * kStepsPerThread;
          Map steps[kStepsPerThread];
          Map own = Map::identity();
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) {
            steps[k] = Map{step_decay_from_rate(dt[k], rate), dt_v[k] * B_steps[k]};
            own = own.then(steps[k]);
          }
          // Read before the barrier, after which the last warp writes the next chunk's.
          const weight_t h_start = chunk_start_state[n][lane];
          // A buffer is written again two barriers later, when every thread has read it.
          warp_maps[buffer][warp][lane] = own;
          __syncthreads();
          const auto& maps = warp_maps[buffer];
          buffer ^= 1;
          if constexpr (summary) {
            if (last_warp) {  // pass 1: the span's state from zero so far, and its steps' dt sum
              chunk_start_state[n][lane] = own.apply(carry_before_warp(maps, warp, lane, h_start));
              if (n == 0) {
#pragma unroll
                for (int w = 0; w < kSegmentWarps; ++w) span_dt += warp_dt_sums[w][lane];
              }
            }
            continue;
          }
          // The state before this thread's first step, then through its steps.
          weight_t h = carry_before_warp(maps, warp, lane, h_start);
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) {
            h = steps[k].apply(h);
            y[k] += C_steps[k] * h;
          }
          if (last_warp) {  // the state after the chunk, and the one before it saved for the backward
            chunk_start_state[n][lane] = h;
            if (active && chunk_states_at) {
              simt::store_streaming(chunk_states_at + n * p.dim, h_start);  // the backward's
            }
          }
        }
      }
      if constexpr (!summary) {  // in path order: contiguous stores, whatever the path's positions
        c.store_steps(0, end - first, step_tiles[warp], y, y_paths + first_row * L + first);
      }
      __syncthreads();  // every thread is done with the chunk's staged values before the next chunk's
    }
    if (summary && last_warp && active) {
      for (int n = 0; n < N; ++n) {
        const weight_t span_decay = step_decay_from_rate(span_dt, decay_rate(c.A_row[n]));
        span_maps[span_entry + n * p.dim] = Map{span_decay, chunk_start_state[n][lane]};
      }
    }
  };
  if (pass_1) {
    walk(std::true_type{});
  } else {
    walk(std::false_type{});
  }
}

// out[b, d, l] = (sum over paths of y_paths[b, p, d, inverse[p, l]]) * silu(z[b, d, l]), paths in index
// order (y_paths in path order). A block per tile of 32 channels by 32 positions (MergeTile): the sums
// by channel rows, along y_paths' rows, and out_ungated with them; the gate and out held the way z and
// out lie, so that a channels-last z or out is read or written where it lies.
template <typename input_t>
__global__ void __launch_bounds__(kMergeTile * kMergeWarps)
    merge_paths_kernel(MultiPathScanParams p, const at::opmath_type<input_t>* y_paths, const int32_t* inverse) {
  using weight_t = at::opmath_type<input_t>;
  __shared__ MergeExchange<weight_t> exchange;
  const MergeTile tile(p);
  const int64_t per_batch = p.dim * p.seqlen;
  weight_t y[kMergeValues];
#pragma unroll
  for (int j = 0; j < kMergeValues; ++j) {
    y[j] = 0;
    if (!tile.in_row(j)) continue;
    const int64_t row = tile.row_channel(j) * p.seqlen;
    for (int64_t path = 0; path < p.n_paths; ++path) {
      const int64_t step = path_step(inverse, path, p.seqlen, tile.row_l);
      y[j] += y_paths[(tile.row_b * p.n_paths + path) * per_batch + row + step];
    }
    if (p.out_ungated) static_cast<input_t*>(p.out_ungated)[tile.row_offset(j)] = static_cast<input_t>(y[j]);
  }
  bool by_positions = false;
  if (p.z) {
    if (p.z_channels_last) by_positions = tile.turn(exchange, by_positions, y);
    const auto* z = static_cast<const input_t*>(p.z);
#pragma unroll
    for (int j = 0; j < kMergeValues; ++j) {
      if (tile.in_tensors(by_positions, j)) {
        y[j] = gate_output<weight_t>(y[j], static_cast<weight_t>(z[tile.offset(by_positions, j)]));
      }
    }
  }
  if (p.out_channels_last != by_positions) by_positions = tile.turn(exchange, by_positions, y);
  auto* const out = static_cast<input_t*>(p.out);
#pragma unroll
  for (int j = 0; j < kMergeValues; ++j) {
    if (tile.in_tensors(by_positions, j)) out[tile.offset(by_positions, j)] = static_cast<input_t>(y[j]);
  }
}

// The chunked split's launches for input dtype scalar_t (and full or low-rank step sizes), over p's
// split_paths: their rows of y_paths and of the forward's chunk_states filled. weights: the options of
// the float workspaces.
template <typename scalar_t, bool kLowRank>
void run_chunked_forward(const MultiPathScanParams& p, const at::TensorOptions& weights,
                         at::opmath_type<scalar_t>* y_paths) {
  using weight_t = at::opmath_type<scalar_t>;
  const int64_t span_chunks = chunks_per_span(p), n_spans = num_spans(p, span_chunks);
  // Passes 1 and 2 only where the path is cut into spans: (span maps, as decay and drive; span starts).
  at::Tensor span_maps, span_start;
  if (n_spans > 1) {
    span_maps = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim, 2}, weights);
    span_start = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim}, weights);
  }
  auto* maps = n_spans > 1 ? reinterpret_cast<StateMap<weight_t>*>(span_maps.mutable_data_ptr<weight_t>()) : nullptr;
  auto* starts = n_spans > 1 ? span_start.mutable_data_ptr<weight_t>() : nullptr;
  const dim3 block(kWarp, kSegmentWarps);
  if (n_spans > 1) {
    simt::launch(scan_span_kernel<scalar_t, kLowRank>, path_channel_grid(p, n_spans - 1), block, 0, p, span_chunks,
                 nullptr, maps, nullptr);
    carry_across_spans<weight_t>(p, n_spans, maps, starts, /*forward=*/true);
  }
  simt::launch(scan_span_kernel<scalar_t, kLowRank>, path_channel_grid(p, n_spans), block, 0, p, span_chunks,
               static_cast<const weight_t*>(starts), nullptr, y_paths);
}

// run_split_forward (scan_cuda.h): one work split's launches.
template <typename scalar_t, bool kLowRank>
void run_split_forward(const MultiPathScanParams& p, int64_t span_length, const at::TensorOptions& weights,
                       at::opmath_type<scalar_t>* y_paths) {
  if (span_length) {
    run_warp_spans_forward<scalar_t, kLowRank>(p, span_length, weights, y_paths);
  } else {
    run_chunked_forward<scalar_t, kLowRank>(p, weights, y_paths);
  }
}

// run_scan_forward_as (scan_cuda.h): the forward's launches for input dtype scalar_t, each work split's
// (path_splits) into its paths' rows of y_paths, then the merge.
template <typename scalar_t>
void run_scan_forward_as(ScanForward& f) {
  using weight_t = at::opmath_type<scalar_t>;
  const MultiPathScanParams& p = f.params;
  if (p.batch == 0 || p.dim == 0 || p.seqlen == 0) return;
  const auto weights = f.inputs.A.options();
  const at::Tensor y_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, weights);
  const auto run_split = p.delta_rank > 0 ? run_split_forward<scalar_t, true> : run_split_forward<scalar_t, false>;
  for (const PathSplit& split : path_splits(p, /*backward=*/false)) {
    run_split(split.params_of(p), split.span_length, weights, y_paths.mutable_data_ptr<weight_t>());
  }
  const at::Tensor inverse = invert_paths(p, f.inputs.paths);
  simt::launch(merge_paths_kernel<scalar_t>, merge_grid(p), merge_block(), 0, p, y_paths.const_data_ptr<weight_t>(),
               inverse.const_data_ptr<int32_t>());
}

}  // namespace cuda
}  // namespace posemamba
