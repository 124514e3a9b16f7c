// The CUDA forward's warp split (scan_warp_split_cuda.cuh), for paths cut into spans of a given length: a
// warp walks one span of one (batch, path)'s 32 channels alone, 8 steps a tile, each lane holding its
// channel's state entries in registers (16 at a time). No barriers and no map composition: a state
// update is an exp, two multiplies and two FMAs, as in a sequential scan.
//
// A block's 8 warps take consecutive spans of the same (batch, path, 32 channels). That is what the
// split is for: on a path whose step s + span_length visits a position next to step s's (PoseMamba's
// joint-major paths with span_length = T frames), the warps read the same sectors at the same time,
// where a whole-path walk would want each sector's other values 243 steps later, long after L2 has
// dropped it. The caller gives the span lengths per path (posemamba.ops finds them in the paths), and
// the paths without one take the chunked split (path_splits); the backward takes the same splits
// (scan_warp_spans_backward_cuda.cuh).
//
// The passes are those of the chunked split's spans (scan_forward_cuda.cuh): each span but the last
// from a zero state (its map out), carry_across_spans, then each span from its start state, writing
// the path's outputs in path order and the state before every kScanChunk-th step (chunk_states, which
// the backward restarts from, whichever split wrote them). Each pass walks a span once per group of
// kWarpStates state entries; beyond the first group, outputs add to the first's.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <type_traits>

#include "scan_cuda.h"
#include "scan_cuda_common.cuh"
#include "scan_warp_split_cuda.cuh"

namespace posemamba {
namespace cuda {

// State entries a lane holds in registers: a group, walked in one pass over its span.
constexpr int kWarpStates = 16;

// One warp's share of shared memory: B and C of its tile's steps for a group of state entries, and the
// tile for its loads and stores.
template <typename weight_t>
struct WarpSpanTile {
  WarpProjections<weight_t, kWarpStates, /*kEntryMajor=*/false> projections;
  alignas(kStepTileAlignment) weight_t steps[kStepsPerThread][kWarp + 1];  // StepTile
};

// With span_maps, pass 1 over spans [0, pass_spans): each span's map from a zero state out, (batch, P,
// spans, N, D); else pass 3 over all spans: from span_start (zero for the first span, or everywhere
// where span_start is null), y_paths (path order) and chunk_states out.
template <typename input_t, bool kLowRank>
__global__ void __launch_bounds__(kWarp * kSegmentWarps, kSpanBlocksPerMultiprocessor)
    scan_warp_spans_kernel(MultiPathScanParams p, int64_t span_length, int64_t n_spans, int64_t pass_spans,
                           const at::opmath_type<input_t>* span_start, StateMap<at::opmath_type<input_t>>* span_maps,
                           at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  const WarpSpanTask task = warp_span_task(p, kSegmentWarps, /*first_span=*/0, pass_spans, span_length);
  if (!task.valid) return;  // a whole warp; the kernel has no block-wide barrier
  const int lane = static_cast<int>(threadIdx.x), warp = static_cast<int>(threadIdx.y);
  const int begin = task.begin, end = task.end;
  const PathChannel<input_t> c(p, task.b, task.path, task.d, task.first_channel, kLowRank);
  const int64_t N = p.d_state, L = p.seqlen;
  const int64_t span_entry = span_entries(p, n_spans, task.b, task.path, task.span) + task.d;  // this lane's
  // This lane's saved states; null where the forward keeps none.
  weight_t* const chunk_states =
      p.chunk_states ? static_cast<weight_t*>(p.chunk_states) + chunk_states_offset(p, task.b, task.path, task.d)
                     : nullptr;
  weight_t* y_steps = y_paths ? y_paths + ((task.b * p.n_paths + task.path) * p.dim + task.first_channel) * L : nullptr;
  __shared__ WarpSpanTile<weight_t> tiles[kSegmentWarps];
  WarpSpanTile<weight_t>& tile = tiles[warp];

  // One walk per pass, the pass a compile-time constant: pass 1 computes no outputs.
  const auto walk = [&](auto pass_1) {
    constexpr bool summary = decltype(pass_1)::value;
    for (int group = 0; group < N; group += kWarpStates) {
      weight_t h[kWarpStates], rate[kWarpStates];
#pragma unroll
      for (int n = 0; n < kWarpStates; ++n) {
        const bool entry = group + n < N;
        rate[n] = entry ? decay_rate(c.A_row[group + n]) : weight_t(0);
        h[n] = entry && span_start ? span_start[span_entry + (group + n) * p.dim] : weight_t(0);
      }
      weight_t span_dt = 0;  // pass 1: the span's decay for entry n is exp(a_n sum dt)
      // Tiles start at multiples of kStepsPerThread, so that a chunk starts only at a tile's first step;
      // the span's first and last tiles mask the steps outside it (the identity map, nothing stored).
      const auto in_span = [&](int s) { return s >= begin && s < end; };
      // Positions loaded ahead, so that a tile's loads (B, C, u, delta) go out together.
      const int first_tile = begin - begin % kStepsPerThread;
      TilePositions<input_t, /*kWithMixed=*/true> positions(c, begin, end, first_tile, kStepsPerThread);
      for (int first = first_tile; first < end; first += kStepsPerThread) {
        const TilePosition at = positions.advance(first);
        tile.projections.template stage</*kWithB=*/true, /*kWithC=*/!summary>(c, at.l, in_span(first + tile_step(lane)),
                                                                             group);
        weight_t v[kStepsPerThread], dt[kStepsPerThread], y[kStepsPerThread];
        c.load_steps_at(at.l, at.mixed, tile.steps, v, dt);
#pragma unroll
        for (int k = 0; k < kStepsPerThread; ++k) {
          const bool valid = in_span(first + k);
          dt[k] = valid ? dt[k] : weight_t(0);
          v[k] = valid ? v[k] : weight_t(0);
          if constexpr (!summary) y[k] = group == 0 ? c.skip * v[k] : weight_t(0);
          span_dt += dt[k];
        }
        // The state before every kScanChunk-th step, for the backward (warp-uniform: one tile in 8).
        if (!summary && chunk_states && first % kScanChunk == 0 && first >= begin && task.active) {
          weight_t* states_at = simt::opaque_pointer(chunk_states + (first / kScanChunk * N + group) * p.dim);
#pragma unroll
          for (int n = 0; n < kWarpStates; ++n, states_at += p.dim) {
            if (group + n < N) simt::store_streaming(states_at, h[n]);
          }
        }
#pragma unroll
        for (int k = 0; k < kStepsPerThread; ++k) {
          const weight_t dt_v = dt[k] * v[k];
#pragma unroll
          for (int n = 0; n < kWarpStates; ++n) {
            h[n] = StateMap<weight_t>{step_decay_from_rate(dt[k], rate[n]), dt_v * tile.projections.b(k, n)}.apply(h[n]);
            if constexpr (!summary) y[k] += tile.projections.c(k, n) * h[n];
          }
        }
        if constexpr (!summary) {
          const int from = begin > first ? begin - first : 0, to = end - first;
          c.store_steps(from, to, tile.steps, y, y_steps + first, /*accumulate=*/group > 0);
        }
        __syncwarp();  // the tile is free for the next steps
      }
      if (summary && task.active) {
#pragma unroll
        for (int n = 0; n < kWarpStates; ++n) {
          if (group + n < N) {
            span_maps[span_entry + (group + n) * p.dim] = {step_decay_from_rate(span_dt, rate[n]), h[n]};
          }
        }
      }
    }
  };
  if (span_maps) {
    walk(std::true_type{});
  } else {
    walk(std::false_type{});
  }
}

// The warp split's launches for input dtype scalar_t (and full or low-rank step sizes), over p's
// split_paths: their rows of y_paths and of the forward's chunk_states filled. weights: the options of
// the float workspaces.
template <typename scalar_t, bool kLowRank>
void run_warp_spans_forward(const MultiPathScanParams& p, int64_t span_length, const at::TensorOptions& weights,
                            at::opmath_type<scalar_t>* y_paths) {
  using weight_t = at::opmath_type<scalar_t>;
  const int64_t n_spans = num_warp_spans(p, span_length);
  const auto blocks = [&](int64_t pass_spans) { return warp_span_blocks(p, pass_spans, kSegmentWarps); };
  const dim3 block(kWarp, kSegmentWarps);
  at::Tensor span_maps, span_start;
  if (n_spans > 1) {
    span_maps = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim, 2}, weights);
    span_start = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim}, weights);
    auto* maps = reinterpret_cast<StateMap<weight_t>*>(span_maps.mutable_data_ptr<weight_t>());
    simt::launch(scan_warp_spans_kernel<scalar_t, kLowRank>, blocks(n_spans - 1), block, 0, p, span_length, n_spans,
                 n_spans - 1, nullptr, maps, nullptr);
    carry_across_spans<weight_t>(p, n_spans, maps, span_start.mutable_data_ptr<weight_t>(), /*forward=*/true);
  }
  simt::launch(scan_warp_spans_kernel<scalar_t, kLowRank>, blocks(n_spans), block, 0, p, span_length, n_spans, n_spans,
               n_spans > 1 ? span_start.const_data_ptr<weight_t>() : nullptr, nullptr, y_paths);
}

}  // namespace cuda
}  // namespace posemamba
