// The CUDA backward's warp split, for paths cut into spans (the forward's warp split and its span
// length, path_splits): a warp walks one span of one (batch, path)'s 32 channels alone, last
// step first, 8 steps a tile, each lane its own channel; a block's warps take consecutive spans, whose
// reads of a joint-major path share sectors (scan_warp_split_cuda.cuh). No block-wide barriers, and no map
// compositions in pass 3: a state update backwards is state_update_backward, as on a CPU.
//
// Passes, as the chunked backward's (scan_backward_cuda.cuh):
//   1. each span but the first from a zero inflow, last step first: its adjoint map (the adjoint
//      entering the span is decay (dy C + q) composed over its steps; a span's decay for entry n is
//      exp(a_n sum dt));
//   2. carry_across_spans: the adjoint entering each span from its right;
//   3. each span from that adjoint, last step first, computing every gradient.
// Pass 3 needs the state before each step. It recomputes them from the states the forward saved before
// every kScanChunk-th step (chunk_states): per chunk, segments of kSegmentTiles tiles, last first; per
// segment, the states from the chunk's saved one up to the segment (the state before each of its
// tiles kept in shared memory), then per tile and state entry the tile's states again from the kept one
// and the tile's steps backwards. That is 1.25 exps a state update for the segments' states (a chunk's
// first segment is walked twice, no walk goes past a segment's last tile's start), one for the tile's
// and one in pass 1 (spans but the first): the price of walking spans that do not start at a chunk,
// without a block's barrier.
//
// Outputs as the chunked backward's: ddelta in natural order, dv per path in path order (merge_input_grads
// then sums the paths' in natural order), dB and dC summed over the warp's channels into per-(32
// channels) partials in path order, dA, dD and ddelta_bias into one partial per span; all added in
// fixed orders.
//
// Included by the .cu of the same name and its _low_rank one (nvcc: the instantiations for every input
// dtype, the kernels for full and for low-rank step sizes apart) and by the host emulation build
// (../emulation/).
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

// Warps per block (each walks its own span): the shared memory below for two warps fits the 48 KB of
// static shared memory in float and double alike.
constexpr int kBackwardSpanWarps = 2;
// Tiles whose start states pass 3 keeps at a time: half a chunk.
constexpr int kSegmentTiles = 4;
static_assert(kScanChunk % (kSegmentTiles * kStepsPerThread) == 0, "a chunk holds whole segments");
// Blocks resident per multiprocessor that registers must allow (at most 168 registers a thread): six
// blocks' shared memory (35 KB each in float) fills most of an H100's 228 KB.
constexpr int kBackwardSpanBlocksPerMultiprocessor = 6;

// One warp's share of shared memory. Per state entry of the group and lane: the state before each of
// the segment's tiles, A, the adjoint entering the tile being walked from its right and the dA sum so
// far (indexed by entry in a loop that is not unrolled: shared memory rather than registers). Then B
// and C of the tile's steps, its loads' and stores' tile (StepTile) and its sums over channels.
template <typename weight_t>
struct WarpBackwardTile {
  // State entries per walk over the span: 16 in float, 8 in double (the same bytes).
  static constexpr int kStates = sizeof(weight_t) == sizeof(float) ? 16 : 8;
  weight_t checkpoints[kSegmentTiles][kStates][kWarp];
  weight_t a[kStates][kWarp];
  weight_t adjoint[kStates][kWarp];
  weight_t dA[kStates][kWarp];
  WarpProjections<weight_t, kStates, /*kEntryMajor=*/true> projections;
  // The first kStepsPerThread rows the StepTile, all of them the WarpStepPairSums tile (in turn).
  alignas(kStepTileAlignment) weight_t exchange[2 * kStepsPerThread][kWarp + 1];
};

// With span_maps, pass 1 over spans [first_span, first_span + pass_spans): each span's adjoint map from a
// zero inflow out, (batch, P, spans, N, D). Else pass 3 over all spans, from the adjoint entering each
// (adjoint, (batch, P, spans, N, D); null: zero everywhere, for a single span): every gradient.
template <typename input_t, bool kLowRank>
__global__ void __launch_bounds__(kWarp * kBackwardSpanWarps, kBackwardSpanBlocksPerMultiprocessor)
    scan_warp_spans_backward_kernel(MultiPathScanBwdParams p, int64_t span_length, int64_t n_spans,
                                    int64_t first_span, int64_t pass_spans, const at::opmath_type<input_t>* adjoint,
                                    StateMap<at::opmath_type<input_t>>* span_maps, at::opmath_type<input_t>* dv_paths) {
  using weight_t = at::opmath_type<input_t>;
  using Tile = WarpBackwardTile<weight_t>;
  constexpr int kStates = Tile::kStates;
  const WarpSpanTask task = warp_span_task(p, kBackwardSpanWarps, first_span, pass_spans, span_length);
  if (!task.valid) return;  // a whole warp; the kernel has no block-wide barrier
  const int lane = static_cast<int>(threadIdx.x), warp = static_cast<int>(threadIdx.y);
  const int64_t d = task.d;
  const bool active = task.active;
  const int begin = task.begin, end = task.end;
  const PathChannel<input_t> c(p, task.b, task.path, d, task.first_channel, kLowRank);
  const int N = static_cast<int>(p.d_state);  // at most kMaxStateDim (checked on the host)
  const int64_t L = p.seqlen;
  const int64_t span_entry = span_entries(p, n_spans, task.b, task.path, task.span) + d;  // this lane's
  __shared__ Tile tiles[kBackwardSpanWarps];
  Tile& tile = tiles[warp];
  const StepTile<weight_t> steps = tile.exchange;
  const WarpStepPairSums<weight_t> channel_sums{tile.exchange};  // dB, then dC
  const auto in_span = [&](int s) { return s >= begin && s < end; };
  // The position of this lane's step on the tile's global side (step tile_step(lane)) of the tile from
  // `first`, where `staged` says that step is read (else position 0, whose values are then unused):
  // loaded where needed in pass 3, whose tiles have work enough to cover the wait.
  const auto lane_position = [&](int first, bool staged) -> uint32_t {
    return staged ? static_cast<uint32_t>(c.position(first + tile_step(lane))) : 0u;
  };
  const OutputGrads<input_t> dout_and_z(p, task.b, task.first_channel);
  const auto output_grads = [&](uint32_t l, weight_t(&dy)[kStepsPerThread]) { dout_and_z.load(p, c, steps, l, dy); };
  const int last_tile = (end - 1) - (end - 1) % kStepsPerThread;

  if (span_maps) {  // pass 1
    for (int group = 0; group < N; group += kStates) {
      weight_t q[kStates], rate[kStates];
#pragma unroll
      for (int n = 0; n < kStates; ++n) {
        rate[n] = group + n < N ? decay_rate(c.A_row[group + n]) : weight_t(0);
        q[n] = 0;
      }
      weight_t span_dt = 0;
      // Positions loaded ahead, so that a tile's loads go out together.
      TilePositions<input_t, /*kWithMixed=*/false> positions(c, begin, end, last_tile, -kStepsPerThread);
      for (int first = last_tile; first + kStepsPerThread > begin; first -= kStepsPerThread) {
        const bool staged = in_span(first + tile_step(lane));
        const uint32_t l = positions.advance(first).l;
        tile.projections.template stage</*kWithB=*/false, /*kWithC=*/true>(c, l, staged, group);
        weight_t dt[kStepsPerThread], dy[kStepsPerThread];
        c.gather_raw_step_sizes(steps, dt, l);
        step_sizes(dt, c.bias, c.delta_softplus);
        output_grads(l, dy);
#pragma unroll
        for (int k = kStepsPerThread - 1; k >= 0; --k) {
          const bool valid = in_span(first + k);
          const weight_t step_dt = valid ? dt[k] : weight_t(0);
          const weight_t step_dy = valid ? dy[k] : weight_t(0);
          span_dt += step_dt;
#pragma unroll
          for (int n = 0; n < kStates; ++n) {
            q[n] = step_decay_from_rate(step_dt, rate[n]) * (step_dy * tile.projections.c(k, n) + q[n]);
          }
        }
        __syncwarp();  // the staged C is free for the next tile
      }
      if (active) {
#pragma unroll
        for (int n = 0; n < kStates; ++n) {
          if (group + n < N) span_maps[span_entry + (group + n) * p.dim] = {step_decay_from_rate(span_dt, rate[n]), q[n]};
        }
      }
    }
    return;
  }

  // Pass 3. Per-span partials: this lane's dA (batch, spans, P, N, D), dD and ddelta_bias (batch, spans, P, D).
  const int64_t partial_row = ((task.b * p.n_length_blocks + task.span) * p.n_paths + task.path) * p.dim + d;
  weight_t* dA_row = static_cast<weight_t*>(p.dA_partial) + (partial_row - d) * N + d;  // entry n at [n * D]
  const int64_t channel_block = task.first_channel / kWarp;
  const int64_t partial = ((task.b * p.n_channel_blocks + channel_block) * p.n_paths + task.path) * L * N;
  weight_t* dB_partial = static_cast<weight_t*>(p.dB_partial) + partial;  // (N, steps in path order)
  weight_t* dC_partial = static_cast<weight_t*>(p.dC_partial) + partial;
  const int64_t first_row = ((task.b * p.n_paths + task.path) * p.dim + task.first_channel) * L;
  input_t* const ddelta_block = static_cast<input_t*>(p.ddelta) + first_row;
  const weight_t* saved_states = static_cast<const weight_t*>(p.chunk_states) +
                                 chunk_states_offset(p, task.b, task.path, d);  // chunk k's entry n at [(k N + n) D]
  weight_t dD = 0, ddelta_bias = 0;

  // The inputs of the tile from `first` with the states' masks: steps before the span are walked for
  // the states they lead to (real inputs), steps past it are the identity (dt = v = 0).
  const auto load_tile = [&](int first, TilePosition at, weight_t(&v)[kStepsPerThread], weight_t(&dt)[kStepsPerThread]) {
    c.load_steps_at(at.l, at.mixed, steps, v, dt);
#pragma unroll
    for (int k = 0; k < kStepsPerThread; ++k) {
      const bool walked = first + k < end;
      v[k] = walked ? v[k] : weight_t(0);
      dt[k] = walked ? dt[k] : weight_t(0);
    }
  };

  for (int group = 0; group < N; group += kStates) {
    const int group_states = N - group < kStates ? N - group : kStates;
    // Each lane its own column: no warp barrier before its own reads.
    for (int n = 0; n < kStates; ++n) {
      const bool entry = group + n < N;
      tile.a[n][lane] = entry ? c.A_row[group + n] : weight_t(0);
      // Lanes past D keep a zero adjoint: they add nothing to the warp's dB and dC sums.
      tile.adjoint[n][lane] = entry && adjoint && active ? adjoint[span_entry + (group + n) * p.dim] : weight_t(0);
      tile.dA[n][lane] = 0;
    }
    for (int chunk = (end - 1) / kScanChunk; chunk >= begin / kScanChunk; --chunk) {
      const int chunk_first = chunk * static_cast<int>(kScanChunk);
      const int piece_end = chunk_first + kScanChunk < end ? chunk_first + static_cast<int>(kScanChunk) : end;
      constexpr int kSegmentSteps = kSegmentTiles * kStepsPerThread;
      for (int segment = chunk_first + (piece_end - 1 - chunk_first) / kSegmentSteps * kSegmentSteps;
           segment >= chunk_first && segment + kSegmentSteps > begin; segment -= kSegmentSteps) {
        const int segment_end = segment + kSegmentSteps < piece_end ? segment + kSegmentSteps : piece_end;
        // The states before the segment's tiles, from the chunk's saved state.
        {
          weight_t h[kStates], rate[kStates];
#pragma unroll
          for (int n = 0; n < kStates; ++n) {
            const bool entry = group + n < N;
            h[n] = entry ? saved_states[(chunk * p.d_state + group + n) * p.dim] : weight_t(0);
            rate[n] = decay_rate(tile.a[n][lane]);
          }
          // Positions loaded ahead, as in pass 1; the walk reads the chunk's steps before the span too.
          TilePositions<input_t, /*kWithMixed=*/true> positions(c, chunk_first, end, chunk_first, kStepsPerThread);
          for (int first = chunk_first; first < segment_end; first += kStepsPerThread) {
            if (first >= segment) {
              const int kept = (first - segment) / kStepsPerThread;
#pragma unroll
              for (int n = 0; n < kStates; ++n) tile.checkpoints[kept][n][lane] = h[n];
            }
            if (first + kStepsPerThread >= segment_end) break;  // the segment's last tile: no state after it needed
            const bool staged = first + tile_step(lane) < end;
            const TilePosition at = positions.advance(first);
            tile.projections.template stage</*kWithB=*/true, /*kWithC=*/false>(c, at.l, staged, group);
            weight_t v[kStepsPerThread], dt[kStepsPerThread];
            load_tile(first, at, v, dt);
#pragma unroll
            for (int k = 0; k < kStepsPerThread; ++k) {
              const weight_t dt_v = dt[k] * v[k];
#pragma unroll
              for (int n = 0; n < kStates; ++n) {
                h[n] = StateMap<weight_t>{step_decay_from_rate(dt[k], rate[n]), dt_v * tile.projections.b(k, n)}.apply(h[n]);
              }
            }
            __syncwarp();  // the staged B is free for the next tile
          }
        }
        // The segment's tiles, last first.
        for (int first = segment_end - 1 - (segment_end - 1) % kStepsPerThread;
             first >= segment && first + kStepsPerThread > begin; first -= kStepsPerThread) {
          const int kept = (first - segment) / kStepsPerThread;
          const bool staged = first + tile_step(lane) < end;
          const uint32_t l = lane_position(first, staged);
          tile.projections.template stage</*kWithB=*/true, /*kWithC=*/true>(c, l, staged, group);
          weight_t v[kStepsPerThread], dt[kStepsPerThread], dy[kStepsPerThread], dt_v[kStepsPerThread];
          weight_t d_dt[kStepsPerThread], d_dt_v[kStepsPerThread], dA_dt[kStepsPerThread];
          load_tile(first, {l, c.mixed_position(l)}, v, dt);
          output_grads(l, dy);
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) {
            dy[k] = in_span(first + k) && active ? dy[k] : weight_t(0);
            dt_v[k] = dt[k] * v[k];
            d_dt[k] = d_dt_v[k] = 0;
            // Steps before the span (in its first tile) are the span before's: they add nothing to dA,
            // the one sum over steps kept here (their other gradients are not stored).
            dA_dt[k] = first + k >= begin ? dt[k] : weight_t(0);
          }
          // Lanes i < 2 kStepsPerThread write the dB (then dC) partial of the tile's step i % kStepsPerThread.
          const int sum_step = lane % kStepsPerThread;
          const bool writes_sums = lane < 2 * kStepsPerThread && in_span(first + sum_step);
          weight_t* sums_out = (lane < kStepsPerThread ? dB_partial : dC_partial) + first + sum_step;
#pragma unroll 1
          for (int n = 0; n < group_states; ++n) {
            const weight_t a = tile.a[n][lane], rate = decay_rate(a);
            // B and C of the tile's steps, entry n's row.
            weight_t B_steps[kStepsPerThread], C_steps[kStepsPerThread];
#pragma unroll
            for (int k = 0; k < kStepsPerThread; ++k) {
              B_steps[k] = tile.projections.b(k, n);
              C_steps[k] = tile.projections.c(k, n);
            }
            // The tile's states: h[k] before step k, h[k + 1] after it.
            weight_t h[kStepsPerThread + 1], decay[kStepsPerThread];
            h[0] = tile.checkpoints[kept][n][lane];
#pragma unroll
            for (int k = 0; k < kStepsPerThread; ++k) {
              decay[k] = step_decay_from_rate(dt[k], rate);
              h[k + 1] = StateMap<weight_t>{decay[k], dt_v[k] * B_steps[k]}.apply(h[k]);
            }
            weight_t q = tile.adjoint[n][lane], dA = 0;
#pragma unroll
            for (int k = kStepsPerThread - 1; k >= 0; --k) {
              const weight_t dh = dy[k] * C_steps[k] + q;
              weight_t dB = 0;
              q = state_update_backward<weight_t>(dh, h[k], decay[k], dA_dt[k], a, dt_v[k], B_steps[k], d_dt[k],
                                                  dA, d_dt_v[k], dB);
              channel_sums.stage_first(k, dB);
              channel_sums.stage_second(k, dy[k] * h[k + 1]);  // dC
            }
            const weight_t sum = channel_sums.sum();
            // A tile's 8 steps are one sector, whatever the path. (Offsets below N L <= 2^32: 32 bits.)
            if (writes_sums) simt::store_streaming(sums_out + static_cast<uint32_t>(group + n) * c.row_length, sum);
            tile.adjoint[n][lane] = q;
            tile.dA[n][lane] += dA;
          }
          // The step size's derivative needs delta again (its registers were the loop's).
          weight_t delta[kStepsPerThread], d_step[kStepsPerThread], dv[kStepsPerThread];
          c.gather_raw_step_sizes(steps, delta, l);
#pragma unroll
          for (int k = 0; k < kStepsPerThread; ++k) {
            d_step[k] = (d_dt[k] + d_dt_v[k] * v[k]) * step_size_grad<weight_t>(delta[k], c.bias, p.delta_softplus);
            dv[k] = d_dt_v[k] * dt[k] + (group == 0 ? dy[k] * c.skip : weight_t(0));
            if (in_span(first + k) && active) {
              if (group == 0) dD += dy[k] * v[k];
              ddelta_bias += d_step[k];
            }
          }
          // ddelta in natural order, where the tile read delta; dv in path order, for merge_input_grads. A
          // later group adds its share (ddelta is in the input dtype: for N above one group, float16 and
          // bfloat16 round each group's sum once more).
          const int from = begin > first ? begin - first : 0, to = end - first;
          c.scatter_steps(from, to, steps, d_step, ddelta_block, l, /*accumulate=*/group > 0);
          c.store_steps(from, to, steps, dv, dv_paths + first_row + first, /*accumulate=*/group > 0);
        }
      }
    }
    if (active) {
      for (int n = 0; n < group_states; ++n) dA_row[(group + n) * p.dim] = tile.dA[n][lane];
    }
  }
  if (active) {
    static_cast<weight_t*>(p.dD_partial)[partial_row] = dD;
    static_cast<weight_t*>(p.ddelta_bias_partial)[partial_row] = ddelta_bias;
  }
}

// The warp split's launches for input dtype scalar_t, over p's split_paths: their rows of ddelta,
// dv_paths and every partial filled. weights: the options of the float workspaces.
template <typename scalar_t, bool kLowRank>
void run_warp_spans_backward(const MultiPathScanBwdParams& p, int64_t span_length, const at::TensorOptions& weights,
                             at::opmath_type<scalar_t>* dv_paths) {
  using weight_t = at::opmath_type<scalar_t>;
  const int64_t n_spans = num_warp_spans(p, span_length);
  const auto blocks = [&](int64_t pass_spans) { return warp_span_blocks(p, pass_spans, kBackwardSpanWarps); };
  const dim3 block(kWarp, kBackwardSpanWarps);
  // The adjoint entering each span from its right, (batch, P, spans, N, D), which the carry pass fills
  // (the last span's with zeros); none for one span, whose inflow is zero.
  at::Tensor adjoint;
  if (n_spans > 1) {
    adjoint = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim}, weights);
    const at::Tensor span_maps = at::empty({p.batch, p.n_paths, n_spans, p.d_state, p.dim, 2}, weights);
    auto* maps = reinterpret_cast<StateMap<weight_t>*>(span_maps.mutable_data_ptr<weight_t>());
    simt::launch(scan_warp_spans_backward_kernel<scalar_t, kLowRank>, blocks(n_spans - 1), block, 0, p, span_length,
                 n_spans, /*first_span=*/int64_t{1}, n_spans - 1, nullptr, maps, nullptr);
    carry_across_spans<weight_t>(p, n_spans, maps, adjoint.mutable_data_ptr<weight_t>(), /*forward=*/false);
  }
  simt::launch(scan_warp_spans_backward_kernel<scalar_t, kLowRank>, blocks(n_spans), block, 0, p, span_length, n_spans,
               /*first_span=*/int64_t{0}, n_spans, n_spans > 1 ? adjoint.mutable_data_ptr<weight_t>() : nullptr,
               nullptr, dv_paths);
}

}  // namespace cuda
}  // namespace posemamba
