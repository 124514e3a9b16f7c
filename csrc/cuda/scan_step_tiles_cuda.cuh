// How a warp's steps move between global memory and its lanes (lane = channel, value k = step k),
// through a tile of shared memory: one (batch, path)'s rows and constants for a block's 32 channels
// (PathChannel), the tile's rounds of loads and stores, and the fixed-order sums over a warp's lanes.
// Both work splits (scan_chunked_split_cuda.cuh, scan_warp_split_cuda.cuh) read and write through them.
#pragma once

#include <ATen/OpMathType.h>

#include "../multi_path_scan.h"
#include "scan_cuda.h"
#include "simt.cuh"

namespace posemamba {
namespace cuda {

// The scan kernels' split (forward and backward): a block takes 32 channels (its lanes) of one
// (batch, path) and walks a span of the path's 64-step chunks, its kSegmentWarps warps sharing each
// chunk, kStepsPerThread consecutive steps each.
constexpr int kSegmentWarps = 8;
constexpr int kStepsPerThread = 8;
static_assert(kSegmentWarps * kStepsPerThread == kScanChunk, "a block's warps share one chunk");
static_assert(kStepsPerThread == 8 && kWarp == 32, "the step tiles' lane split assumes 8 steps and 32 lanes");

// A warp's steps move between global memory and its lanes (lane = channel, value k = step k) through
// a padded tile of shared memory, tile[step][channel]: lane i of the global side takes step i % 8 of
// channels (i / 8) * 8 + r in round r, so that one load or store instruction covers 8 consecutive steps
// of 4 channels (a path along consecutive positions: one or two sectors per channel, where lanes as
// channels touch a sector per lane). Both sides are free of bank conflicts: a round's addresses are
// 33 step + 8 (i / 8) + r, a lane's 33 k + lane.
template <typename T>
using StepTile = T (*)[kWarp + 1];
// A step tile's storage is aligned so (alignas(kStepTileAlignment) where it is declared): its rows may
// also hold whole vectors (PathChannel::project_step_sizes).
constexpr int kStepTileAlignment = 16;

// A step's mixed-in position when mix names none.
constexpr uint32_t kNoMixedPosition = 0xffffffffu;  // never a position: L <= 2^26 (check_length, scan_cuda.h)

__device__ __forceinline__ int tile_step(int lane) {
  return lane % kStepsPerThread;
}

__device__ __forceinline__ int tile_channel(int lane, int round) {
  return lane / kStepsPerThread * kStepsPerThread + round;
}

// The global side's values (round r: channel tile_channel(lane, r) at step tile_step(lane)) to the
// lanes' (value k: this lane's channel at step k), through the warp's tile; the tile is free after.
template <typename T>
__device__ __forceinline__ void rounds_to_lanes(StepTile<T> tile, const T (&rounds)[kStepsPerThread],
                                                T (&lanes)[kStepsPerThread]) {
  const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane);
#pragma unroll
  for (int r = 0; r < kStepsPerThread; ++r) tile[step][tile_channel(lane, r)] = rounds[r];
  __syncwarp();
#pragma unroll
  for (int k = 0; k < kStepsPerThread; ++k) lanes[k] = tile[k][lane];
  __syncwarp();
}

// A row block's values at position l (at its offset there, l times B's and C's position stride for
// theirs), by row offset (a channel's in a (..., D, L) block, a state entry's in B or C): the base
// taken once a tile, each load one wide multiply-add from it (simt::opaque_pointer).
template <typename input_t>
struct RowsAt {
  const input_t* at;

  __device__ RowsAt(const input_t* block, uint32_t l) : at(simt::opaque_pointer(block + l)) {}
  __device__ at::opmath_type<input_t> operator()(uint32_t row) const {
    return static_cast<at::opmath_type<input_t>>(at[row]);
  }
};

// One (batch, path) and the block's 32 channels: the rows and constants the block's threads read.
// Per lane: its channel's constants. Per block: the rows of the channels from first_channel, which
// the tile's global side reads (channels past D read channel D - 1's row: valid memory, unused).
template <typename input_t>
struct PathChannel {
  using weight_t = at::opmath_type<input_t>;

  // low_rank: whether delta comes in mamba's low-rank form (p.delta_rank > 0), a compile-time constant of
  // the kernel (its kLowRank), so that a kernel for full step sizes holds no code or registers for the
  // projection.
  __device__ PathChannel(const MultiPathScanParams& p, int64_t b, int64_t path, int64_t d, int64_t first_channel,
                         bool low_rank)
      : L(p.seqlen), N(p.d_state), row_length(static_cast<uint32_t>(p.seqlen)), delta_softplus(p.delta_softplus) {
    const int64_t batch_path = b * p.n_paths + path;
    const int64_t path_channel = path * p.dim + d;
    last_block_channel = static_cast<int>(p.dim - 1 - first_channel);
    u_block = static_cast<const input_t*>(p.u) + (p.u_channels_last ? b * p.dim * L + first_channel
                                                                    : (b * p.dim + first_channel) * L);
    u_position_stride = p.u_channels_last ? static_cast<uint32_t>(p.dim) : 0;
    delta_rank = low_rank ? static_cast<int>(p.delta_rank) : 0;
    if (low_rank) {
      delta_block = static_cast<const input_t*>(p.delta) + b * p.delta_batch_stride + path * p.delta_path_stride;
      delta_proj_row = static_cast<const input_t*>(p.delta_proj_weight) + path_channel * p.delta_rank;
    } else {
      delta_block = static_cast<const input_t*>(p.delta) + (batch_path * p.dim + first_channel) * L;
    }
    B_path = static_cast<const input_t*>(p.B) + b * p.B_batch_stride + path * p.B_path_stride;
    C_path = static_cast<const input_t*>(p.C) + b * p.C_batch_stride + path * p.C_path_stride;
    entry_stride = static_cast<uint32_t>(p.projection_entry_stride);
    position_stride = static_cast<uint32_t>(p.projection_position_stride);
    order = p.paths + path * L;
    mix_row = p.mix ? p.mix + path * L : nullptr;
    bias = p.delta_bias ? static_cast<const weight_t*>(p.delta_bias)[path_channel] : weight_t(0);
    skip = p.D ? static_cast<const weight_t*>(p.D)[path_channel] : weight_t(0);
    A_row = static_cast<const weight_t*>(p.A) + path_channel * N;
  }

  // The position the path visits at step s.
  __device__ int64_t position(int64_t s) const {
    return checked_position(order[s]);
  }

  // The position mix names for position l (checked), or kNoMixedPosition.
  __device__ uint32_t mixed_position(int64_t l) const {
    return checked_mixed(loaded_mixed(l));
  }

  // The same in two parts, for loads ahead of their use (TilePositions): the value as loaded, then
  // checked where it is used, so that the check waits on no load.
  __device__ int64_t loaded_position(int64_t s) const { return order[s]; }
  __device__ uint32_t checked_position(int64_t l) const {
    POSEMAMBA_DEVICE_ASSERT(l >= 0 && l < L);
    return static_cast<uint32_t>(l);
  }
  __device__ int64_t loaded_mixed(int64_t l) const { return mix_row ? mix_row[l] : -1; }
  __device__ uint32_t checked_mixed(int64_t mixed) const {
    POSEMAMBA_DEVICE_ASSERT(mixed < L);
    return mixed >= 0 && mixed < L ? static_cast<uint32_t>(mixed) : kNoMixedPosition;
  }

  // Where B's and C's entry n is at position l in the path's rows (below 2^32: MultiPathScanParams).
  __device__ uint32_t projection_offset(int n, uint32_t l) const {
    return static_cast<uint32_t>(n) * entry_stride + l * position_stride;
  }

  // Where the block's channel `channel` starts in a (..., D, L) row block (below 32 L: 32 bits).
  __device__ uint32_t channel_row(int channel) const {
    return static_cast<uint32_t>(channel < last_block_channel ? channel : last_block_channel) * row_length;
  }

  // The scan inputs v (u, plus u at the mixed-in position where mix names one) and the step sizes dt
  // at the warp's kStepsPerThread steps (at `position`, mixing in `mixed_position`), for this lane's
  // channel, loaded through the warp's tile (u by position where it comes channels-last:
  // load_inputs_by_position). The loads are all in flight together (delta's after u's
  // where it comes in the low-rank form: gather_raw_step_sizes): where a step of the tile mixes, every
  // step reads a mixed-in u (at its own position again where it has none); where none does (the whole
  // tile, as on a path without a mix), none reads one.
  __device__ void load_steps(const uint32_t* position, const uint32_t* mixed_position, StepTile<weight_t> tile,
                             weight_t (&v)[kStepsPerThread], weight_t (&dt)[kStepsPerThread]) const {
    const int step = tile_step(static_cast<int>(threadIdx.x));
    load_steps_at(position[step], mixed_position[step], tile, v, dt);
  }

  // The same, given the position l and mixed-in position of the lane's own step on the tile's global
  // side (step tile_step(lane)).
  __device__ void load_steps_at(uint32_t l, uint32_t mixed, StepTile<weight_t> tile, weight_t (&v)[kStepsPerThread],
                                weight_t (&dt)[kStepsPerThread]) const {
    if (u_position_stride != 0) {
      load_inputs_by_position(l, mixed, v);
      gather_raw_step_sizes(tile, dt, l);
    } else {
      load_inputs_and_deltas_by_row(l, mixed, tile, v, dt);
    }
    step_sizes(dt, bias, delta_softplus);
  }

  // load_steps_at's v and raw dt where u's rows are (batch, D, L): each through the tile, u's and full
  // delta's loads in flight together.
  __device__ void load_inputs_and_deltas_by_row(uint32_t l, uint32_t mixed, StepTile<weight_t> tile,
                                                weight_t (&v)[kStepsPerThread], weight_t (&dt)[kStepsPerThread]) const {
    const int lane = static_cast<int>(threadIdx.x);
    const bool has_mixed = mixed != kNoMixedPosition, full_delta = delta_rank == 0;
    weight_t u_own[kStepsPerThread], delta[kStepsPerThread];
    const RowsAt<input_t> u_own_at(u_block, l), delta_at(delta_block, l);
    if (__any_sync(0xffffffffu, has_mixed)) {
      weight_t u_mixed[kStepsPerThread];
      const RowsAt<input_t> u_mixed_at(u_block, has_mixed ? mixed : l);
#pragma unroll
      for (int r = 0; r < kStepsPerThread; ++r) {
        const uint32_t row = channel_row(tile_channel(lane, r));
        u_own[r] = u_own_at(row);
        u_mixed[r] = u_mixed_at(row);
        if (full_delta) delta[r] = delta_at(row);
      }
#pragma unroll
      for (int r = 0; r < kStepsPerThread; ++r) u_own[r] = has_mixed ? u_own[r] + u_mixed[r] : u_own[r];
    } else {
#pragma unroll
      for (int r = 0; r < kStepsPerThread; ++r) {
        const uint32_t row = channel_row(tile_channel(lane, r));
        u_own[r] = u_own_at(row);
        if (full_delta) delta[r] = delta_at(row);
      }
    }
    rounds_to_lanes(tile, u_own, v);
    if (full_delta) {
      rounds_to_lanes(tile, delta, dt);
    } else {
      project_step_sizes(tile, dt, l);
    }
  }

  // load_steps_at's v where u comes channels-last: lane = channel, so that a step's load is one 128-byte
  // run for the warp whatever the path's order, with no tile; lane k holds step k's positions (l,
  // mixed), which every lane takes by shuffles. As through the tile, where a step of the tile mixes,
  // every step reads a mixed-in u (at its own position again where it has none).
  __device__ void load_inputs_by_position(uint32_t l, uint32_t mixed, weight_t (&v)[kStepsPerThread]) const {
    const int lane = static_cast<int>(threadIdx.x);
    const input_t* const u_lane = u_block + (lane < last_block_channel ? lane : last_block_channel);
    if (__any_sync(0xffffffffu, mixed != kNoMixedPosition)) {
      weight_t u_mixed[kStepsPerThread];
      bool mixes[kStepsPerThread];
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) {
        const uint32_t step_l = __shfl_sync(0xffffffffu, l, k), step_mixed = __shfl_sync(0xffffffffu, mixed, k);
        mixes[k] = step_mixed != kNoMixedPosition;
        v[k] = static_cast<weight_t>(u_lane[step_l * u_position_stride]);
        u_mixed[k] = static_cast<weight_t>(u_lane[(mixes[k] ? step_mixed : step_l) * u_position_stride]);
      }
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) v[k] = mixes[k] ? v[k] + u_mixed[k] : v[k];
    } else {
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) {
        v[k] = static_cast<weight_t>(u_lane[__shfl_sync(0xffffffffu, l, k) * u_position_stride]);
      }
    }
  }

  // The raw step sizes (delta before the bias and softplus) for this lane's channel at the warp's steps,
  // l being the position of the lane's own step on the tile's global side: delta's rows through the
  // tile, or projected from mamba's low-rank form (project_step_sizes).
  __device__ void gather_raw_step_sizes(StepTile<weight_t> tile, weight_t (&raw)[kStepsPerThread], uint32_t l) const {
    if (delta_rank == 0) {
      gather_steps(tile, raw, RowsAt<input_t>(delta_block, l));
    } else {
      project_step_sizes(tile, raw, l);
    }
  }

  // low_rank_step_size for this lane's channel at the warp's steps, from the (R, L) low-rank rows at l
  // (as gather_raw_step_sizes). The warp's tile stages up to 32 ranks at a time, a rank's values at the
  // 8 steps in a row of their own (its storage as StagedRank rows), each lane loading ranks at its own
  // step on the tile's global side; each lane then reads a rank's row as broadcast vectors against its
  // channel's weight: the low-rank values are loaded once for the warp's 32 channels, the weights once a
  // tile.
  __device__ void project_step_sizes(StepTile<weight_t> tile, weight_t (&raw)[kStepsPerThread], uint32_t l) const {
    // A round stages 4 ranks (a quarter of the lanes each) at the 8 steps, so that R <= 16 takes one set
    // of 4 rounds, their loads in flight together; lane (step s, quarter q) writes element 8 (4 round +
    // q) + s, a bank of its own.
    constexpr int kRounds = 4, kRanksPerRound = kWarp / kStepsPerThread;
    static_assert(kLowRankTile == kWarp, "the host's check of 32-bit offsets counts a tile's ranks");
    struct alignas(kStepTileAlignment) StagedRank {
      weight_t step[kStepsPerThread];
    };
    static_assert(kWarp * sizeof(StagedRank) <= kStepsPerThread * (kWarp + 1) * sizeof(weight_t),
                  "a tile holds 32 ranks' rows");
    StagedRank* const staged = reinterpret_cast<StagedRank*>(tile[0]);
    const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane), quarter = lane / kStepsPerThread;
#pragma unroll
    for (int k = 0; k < kStepsPerThread; ++k) raw[k] = 0;  // 0 + the first term is that term
    for (int first_rank = 0; first_rank < delta_rank; first_rank += kWarp) {
      const int ranks = delta_rank - first_rank < kWarp ? delta_rank - first_rank : kWarp;
      // (Offsets from the first rank in 32 bits: kLowRankTile ranks, MultiPathScanParams.)
      const RowsAt<input_t> low_at(delta_block + static_cast<int64_t>(first_rank) * entry_stride, l * position_stride);
#pragma unroll 1
      for (int first_round = 0; first_round * kRanksPerRound < ranks; first_round += kRounds) {
        weight_t low[kRounds];
#pragma unroll
        for (int r = 0; r < kRounds; ++r) {
          const int rank = (first_round + r) * kRanksPerRound + quarter;
          low[r] = rank < ranks ? low_at(static_cast<uint32_t>(rank) * entry_stride) : weight_t(0);
        }
#pragma unroll
        for (int r = 0; r < kRounds; ++r) staged[(first_round + r) * kRanksPerRound + quarter].step[step] = low[r];
      }
      __syncwarp();
#pragma unroll 4
      for (int rank = 0; rank < ranks; ++rank) {
        const weight_t weight = static_cast<weight_t>(delta_proj_row[first_rank + rank]);
        const StagedRank values = staged[rank];
#pragma unroll
        for (int k = 0; k < kStepsPerThread; ++k) raw[k] = add_low_rank_term(raw[k], values.step[k], weight);
      }
      __syncwarp();  // the tile is free again
    }
  }

  // value[k] = row_value(channel row) for this lane's channel and the warp's steps, read by the tile's
  // global side: row_value reads a (..., D, L) row block (from first_channel) at the position of the
  // lane's own step there (step tile_step(lane); RowsAt, OutputGrads). All rounds' loads in flight
  // together.
  template <typename RowValue>
  __device__ void gather_steps(StepTile<weight_t> tile, weight_t (&value)[kStepsPerThread], RowValue row_value) const {
    const int lane = static_cast<int>(threadIdx.x);
    weight_t loaded[kStepsPerThread];
#pragma unroll
    for (int r = 0; r < kStepsPerThread; ++r) loaded[r] = row_value(channel_row(tile_channel(lane, r)));
    rounds_to_lanes(tile, loaded, value);
  }

  // out_steps[channel row + k] = value[k] (added to what is there, with accumulate) of each lane with a
  // channel below D, for the warp's steps k in [from, to), through the warp's tile: out_steps is where
  // the warp's first step goes in the block's first row of a (..., D, L) workspace kept in path order,
  // so that a store instruction covers whole sectors on any path. Streaming stores: a later kernel
  // reads the workspace. (A value is stored and added to by the same thread.)
  template <typename out_t>
  __device__ void store_steps(int64_t from, int64_t to, StepTile<weight_t> tile,
                              const weight_t (&value)[kStepsPerThread], out_t* out_steps,
                              bool accumulate = false) const {
    store_lane_steps</*kStreaming=*/true>(from, to, tile, value, out_steps + tile_step(static_cast<int>(threadIdx.x)),
                                          accumulate);
  }

  // The same into a (..., D, L) row block from the block's first channel in natural order: step k at
  // its position, l being the position of the lane's own step on the tile's global side (as
  // gather_steps reads), so that the stores touch the sectors a tile's loads of the same block read.
  // Plain stores, not streaming: on a joint-major path a store instruction fills a value of each of
  // several sectors, whose other values neighbouring warps write at about the same time; L2 keeps them
  // to be completed there rather than written back in parts.
  template <typename out_t>
  __device__ void scatter_steps(int64_t from, int64_t to, StepTile<weight_t> tile,
                                const weight_t (&value)[kStepsPerThread], out_t* out_block, uint32_t l,
                                bool accumulate = false) const {
    store_lane_steps</*kStreaming=*/false>(from, to, tile, value, out_block + l, accumulate);
  }

  // store_steps and scatter_steps, by where the lane's own step goes in the block's first row.
  template <bool kStreaming, typename out_t>
  __device__ void store_lane_steps(int64_t from, int64_t to, StepTile<weight_t> tile,
                                   const weight_t (&value)[kStepsPerThread], out_t* out_lane_step,
                                   bool accumulate) const {
    const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane);
#pragma unroll
    for (int k = 0; k < kStepsPerThread; ++k) tile[k][lane] = value[k];
    __syncwarp();
    if (step >= from && step < to) {
      // Each case its own loop (accumulate is the same for the whole warp): stores alone are predicated
      // rather than branched around, and an address serves both the load and the store.
      if (accumulate) {
        store_rows</*kAccumulate=*/true, kStreaming>(tile[step], simt::opaque_pointer(out_lane_step));
      } else {
        store_rows</*kAccumulate=*/false, kStreaming>(tile[step], simt::opaque_pointer(out_lane_step));
      }
    }
    __syncwarp();
  }

  // out_at[channel row] = row[channel] (plus what is there, with kAccumulate) for the block's channels
  // tile_channel(lane, r) below D: a tile row's values, one store a round, streaming (kStreaming) or not.
  template <bool kAccumulate, bool kStreaming, typename out_t>
  __device__ __forceinline__ void store_rows(const weight_t* row, out_t* out_at) const {
    const int lane = static_cast<int>(threadIdx.x);
#pragma unroll
    for (int r = 0; r < kStepsPerThread; ++r) {
      const int channel = tile_channel(lane, r);
      if (channel <= last_block_channel) {
        out_t* out = out_at + static_cast<uint32_t>(channel) * row_length;
        const weight_t stored = kAccumulate ? static_cast<weight_t>(*out) + row[channel] : row[channel];
        if constexpr (kStreaming) {
          simt::store_streaming(out, static_cast<out_t>(stored));
        } else {
          *out = static_cast<out_t>(stored);
        }
      }
    }
  }

  int64_t L, N;
  uint32_t row_length;  // L, for 32-bit offsets within a block's rows (check_length, scan_cuda.h)
  bool delta_softplus;
  int last_block_channel;  // D - 1 - first_channel: the last channel of the block below D
  // R, where delta comes in mamba's low-rank form (MultiPathScanParams::delta_rank), else 0; then
  // delta_block is the (batch, path)'s R low-rank rows (ranks and positions in B's and C's strides) and
  // delta_proj_row this lane's channel's R weights, else delta_block is the block's (D, L) rows from
  // first_channel.
  int delta_rank;
  const input_t* delta_proj_row = nullptr;
  // u_block: the block's first channel's row of u, or where u comes channels-last its first channel at
  // position 0 of the batch element's (L, D) block, whose positions are u_position_stride = D apart
  // (else 0).
  uint32_t u_position_stride;
  const input_t *u_block, *delta_block, *B_path, *C_path;
  uint32_t entry_stride, position_stride;  // B's and C's (MultiPathScanParams' projection strides)
  const int64_t *order, *mix_row;
  const weight_t* A_row;
  weight_t bias, skip;
};

// The position of the lane's own step on a tile's global side (step tile_step(lane)), from the
// positions of the warp's steps.
__device__ __forceinline__ uint32_t lane_step_position(const uint32_t* position) {
  return position[tile_step(static_cast<int>(threadIdx.x))];
}

// dy = dout * silu(z), the gradient of the ungated sum of the paths, for this lane's channel at the
// warp's steps (l: the position of the lane's own step on the tile's global side). Where dout and z are
// (batch, D, L), by channel row through the warp's tile (PathChannel::gather_steps); where they come
// channels-last (z in dout's layout: MultiPathScanBwdParams), by position, a lane per channel, as
// PathChannel::load_inputs_by_position reads u: a step's loads are 128-byte runs.
template <typename input_t>
struct OutputGrads {
  using weight_t = at::opmath_type<input_t>;

  __device__ OutputGrads(const MultiPathScanBwdParams& p, int64_t b, int64_t first_channel)
      : rows((b * p.dim + first_channel) * p.seqlen), first_channel(static_cast<uint32_t>(first_channel)) {}

  __device__ void load(const MultiPathScanBwdParams& p, const PathChannel<input_t>& c, StepTile<weight_t> tile,
                       uint32_t l, weight_t (&dy)[kStepsPerThread]) const {
    // Without a gate z is dout, never read: a pointer that is global on every path, so that its loads
    // stay global (LDG) where a select with null would make them generic (LD).
    const auto* grad_out = static_cast<const input_t*>(p.grad_out);
    const auto* z = static_cast<const input_t*>(p.z ? p.z : p.grad_out);
    const bool gated = p.z != nullptr;
    const auto gradient = [gated](input_t grad_out_value, input_t z_value) {
      const weight_t g = static_cast<weight_t>(grad_out_value);
      return gated ? g * silu(static_cast<weight_t>(z_value)) : g;
    };
    if (p.grad_out_channels_last) {
      const int lane = static_cast<int>(threadIdx.x);
      const uint32_t D = static_cast<uint32_t>(p.dim);
      // This lane's channel at position 0 of the batch element (offsets in it in 32 bits: the host's check).
      const int64_t channel = rows - int64_t{first_channel} * p.seqlen + first_channel +
                              (lane < c.last_block_channel ? lane : c.last_block_channel);
      const input_t* const grad_out_lane = grad_out + channel;
      const input_t* const z_lane = z + channel;
#pragma unroll
      for (int k = 0; k < kStepsPerThread; ++k) {
        const uint32_t offset = __shfl_sync(0xffffffffu, l, k) * D;
        dy[k] = gradient(grad_out_lane[offset], z_lane[offset]);
      }
    } else {
      const input_t* const grad_out_at = simt::opaque_pointer(grad_out + rows + l);
      const input_t* const z_at = simt::opaque_pointer(z + rows + l);
      c.gather_steps(tile, dy, [&](uint32_t row) { return gradient(grad_out_at[row], z_at[row]); });
    }
  }

  // Where the block's first channel's row starts in a (batch, D, L) tensor, and that channel: all a
  // kernel holds of dout and z (strides and pointers held through the chunked backward spilled).
  int64_t rows;
  uint32_t first_channel;
};

// Sums over a warp's lanes (its 32 channels) of one value per step for each of the warp's
// kStepsPerThread steps, through a padded tile of shared memory: lane i's result is step i % 8's sum
// for lanes i < kStepsPerThread. A quarter of the lanes adds each step's column of 8 lanes, then two
// shuffles add the quarters: a fixed order, bitwise the same every run.
template <typename T>
struct WarpStepSums {
  static_assert(kStepsPerThread == 8 && kWarp == 32, "the sums' lane split assumes 8 steps and 32 lanes");
  T (*tile)[kWarp + 1];

  __device__ void stage(int step, T value) const { tile[step][threadIdx.x] = value; }

  // Every lane of the warp calls it, after staging all kStepsPerThread values.
  __device__ T sum() const {
    __syncwarp();
    const int step = threadIdx.x % kStepsPerThread, quarter = threadIdx.x / kStepsPerThread;
    const T* values = tile[step] + quarter * 8;
    // Two running sums, so that the adds are two chains of four rather than one of eight.
    T sums[2] = {values[0], values[1]};
#pragma unroll
    for (int i = 2; i < 8; ++i) sums[i % 2] += values[i];
    T total = sums[0] + sums[1];
    total += __shfl_down_sync(0xffffffffu, total, 8);   // quarters 0 + 1 and 2 + 3
    total += __shfl_down_sync(0xffffffffu, total, 16);  // (0 + 1) + (2 + 3)
    __syncwarp();  // the tile is free for the next values
    return total;
  }
};

// Sums over a warp's lanes of two values per step (a first and a second) for each of the warp's
// kStepsPerThread steps, through a padded tile of 2 kStepsPerThread rows: lane i's result is the first
// values' sum of step i for lanes i < kStepsPerThread, the second values' of step i - kStepsPerThread for
// the next kStepsPerThread lanes. Each half of the lanes adds a row over its 16 lanes, then a shuffle
// adds the halves: a fixed order, and one round of the tile for both sums.
template <typename T>
struct WarpStepPairSums {
  static_assert(2 * kStepsPerThread == kWarp / 2, "a half warp's lanes take one row each");
  T (*tile)[kWarp + 1];

  __device__ void stage_first(int step, T value) const { tile[step][threadIdx.x] = value; }
  __device__ void stage_second(int step, T value) const { tile[kStepsPerThread + step][threadIdx.x] = value; }

  // Every lane of the warp calls it, after staging all 2 kStepsPerThread values.
  __device__ T sum() const {
    __syncwarp();
    constexpr int kHalf = kWarp / 2;
    const int row = threadIdx.x % kHalf, half = threadIdx.x / kHalf;
    const T* values = tile[row] + half * kHalf;  // banks (row + 16 half + i) % 32: no conflicts
    // Four running sums, so that the adds are four chains of four rather than one of sixteen.
    T sums[4] = {values[0], values[1], values[2], values[3]};
#pragma unroll
    for (int i = 4; i < kHalf; ++i) sums[i % 4] += values[i];
    T total = (sums[0] + sums[1]) + (sums[2] + sums[3]);
    total += __shfl_down_sync(0xffffffffu, total, kHalf);
    __syncwarp();  // the tile is free for the next values
    return total;
  }
};

}  // namespace cuda
}  // namespace posemamba
