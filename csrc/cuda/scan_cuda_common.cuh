// What the CUDA forward and backward share: the fixed-order reduction of per-block partials, one
// (batch, path, channel)'s rows (PathChannel), the grid of blocks per (batch, path, 32 channels), the
// scan kernels' split of a path into chunks and spans, and the carry pass between spans. The scan
// math itself comes from ../multi_path_scan.h, as on the CPU.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "../multi_path_scan.h"
#include "scan_cuda.h"
#include "simt.cuh"

namespace posemamba {
namespace cuda {

// out[o, i] = sum over k of partial[o, k, i], k in index order.
template <typename T>
__global__ void sum_partials_kernel(const T* partial, int64_t n_outer, int64_t n_partials, int64_t count, T* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_outer * count) return;
  const int64_t outer = i / count, inner = i % count;
  const T* column = partial + outer * n_partials * count + inner;
  T total = 0;
  for (int64_t k = 0; k < n_partials; ++k) total += column[k * count];
  out[i] = total;
}

// Threads per block of the one-thread-per-element kernels, and their grid for `total` elements.
constexpr int kElementwiseThreads = 256;

inline unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>((total + kElementwiseThreads - 1) / kElementwiseThreads);
}

template <typename T>
void sum_partials(const T* partial, int64_t n_outer, int64_t n_partials, int64_t count, T* out) {
  const int64_t total = n_outer * count;
  if (total == 0) return;
  simt::launch(sum_partials_kernel<T>, elementwise_blocks(total), kElementwiseThreads, 0, partial, n_outer, n_partials,
               count, out);
}

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

// A row block's values at position l, by row offset (a channel's in a (..., D, L) block, a state
// entry's in B or C): the base taken once a tile, each load one wide multiply-add from it
// (simt::opaque_pointer).
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

  __device__ PathChannel(const MultiPathScanParams& p, int64_t b, int64_t path, int64_t d, int64_t first_channel)
      : L(p.seqlen), N(p.d_state), row_length(static_cast<uint32_t>(p.seqlen)), delta_softplus(p.delta_softplus) {
    const int64_t batch_path = b * p.n_paths + path;
    const int64_t path_channel = path * p.dim + d;
    last_block_channel = static_cast<int>(p.dim - 1 - first_channel);
    u_block = static_cast<const input_t*>(p.u) + (b * p.dim + first_channel) * L;
    delta_block = static_cast<const input_t*>(p.delta) + (batch_path * p.dim + first_channel) * L;
    B_path = static_cast<const input_t*>(p.B) + batch_path * N * L;
    C_path = static_cast<const input_t*>(p.C) + batch_path * N * L;
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

  // Where the block's channel `channel` starts in a (..., D, L) row block (below 32 L: 32 bits).
  __device__ uint32_t channel_row(int channel) const {
    return static_cast<uint32_t>(channel < last_block_channel ? channel : last_block_channel) * row_length;
  }

  // The scan inputs v (u, plus u at the mixed-in position where mix names one) and the step sizes dt
  // at the warp's kStepsPerThread steps (at `position`, mixing in `mixed_position`), for this lane's
  // channel, loaded through the warp's tile. No branch on the data separates the loads, so that they
  // are all in flight together: a step with nothing mixed in reads u at its own position again.
  __device__ void load_steps(const uint32_t* position, const uint32_t* mixed_position, StepTile<weight_t> tile,
                             weight_t (&v)[kStepsPerThread], weight_t (&dt)[kStepsPerThread]) const {
    const int step = tile_step(static_cast<int>(threadIdx.x));
    load_steps_at(position[step], mixed_position[step], tile, v, dt);
  }

  // The same, given the position l and mixed-in position of the lane's own step on the tile's global
  // side (step tile_step(lane)).
  __device__ void load_steps_at(uint32_t l, uint32_t mixed, StepTile<weight_t> tile, weight_t (&v)[kStepsPerThread],
                                weight_t (&dt)[kStepsPerThread]) const {
    const int lane = static_cast<int>(threadIdx.x);
    const bool has_mixed = mixed != kNoMixedPosition;
    const uint32_t source = has_mixed ? mixed : l;
    weight_t u_own[kStepsPerThread], u_mixed[kStepsPerThread], delta[kStepsPerThread];
    const RowsAt<input_t> u_own_at(u_block, l), u_mixed_at(u_block, source), delta_at(delta_block, l);
#pragma unroll
    for (int r = 0; r < kStepsPerThread; ++r) {
      const uint32_t row = channel_row(tile_channel(lane, r));
      u_own[r] = u_own_at(row);
      u_mixed[r] = u_mixed_at(row);
      delta[r] = delta_at(row);
    }
#pragma unroll
    for (int r = 0; r < kStepsPerThread; ++r) u_own[r] = has_mixed ? u_own[r] + u_mixed[r] : u_own[r];
    rounds_to_lanes(tile, u_own, v);
    rounds_to_lanes(tile, delta, dt);
    step_sizes(dt, bias, delta_softplus);
  }

  // value[k] = row_value(channel row) for this lane's channel and the warp's steps, read by the tile's
  // global side: row_value reads a (..., D, L) row block (from first_channel) at the position of the
  // lane's own step there (step tile_step(lane); RowsAt, OutputGradsAt). All rounds' loads in flight
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
    const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane);
#pragma unroll
    for (int k = 0; k < kStepsPerThread; ++k) tile[k][lane] = value[k];
    __syncwarp();
    if (step >= from && step < to) {
      // Each case its own loop (accumulate is the same for the whole warp): stores alone are predicated
      // rather than branched around, and an address serves both the load and the store.
      if (accumulate) {
        store_rows</*kAccumulate=*/true>(tile[step], simt::opaque_pointer(out_steps + step));
      } else {
        store_rows</*kAccumulate=*/false>(tile[step], simt::opaque_pointer(out_steps + step));
      }
    }
    __syncwarp();
  }

  // out_at[channel row] = row[channel] (plus what is there, with kAccumulate) for the block's channels
  // tile_channel(lane, r) below D: a tile row's values, one store a round.
  template <bool kAccumulate, typename out_t>
  __device__ __forceinline__ void store_rows(const weight_t* row, out_t* out_at) const {
    const int lane = static_cast<int>(threadIdx.x);
#pragma unroll
    for (int r = 0; r < kStepsPerThread; ++r) {
      const int channel = tile_channel(lane, r);
      if (channel <= last_block_channel) {
        out_t* out = out_at + static_cast<uint32_t>(channel) * row_length;
        const weight_t stored = kAccumulate ? static_cast<weight_t>(*out) + row[channel] : row[channel];
        simt::store_streaming(out, static_cast<out_t>(stored));
      }
    }
  }

  int64_t L, N;
  uint32_t row_length;  // L, for 32-bit offsets within a block's rows (check_length, scan_cuda.h)
  bool delta_softplus;
  int last_block_channel;  // D - 1 - first_channel: the last channel of the block below D
  const input_t *u_block, *delta_block, *B_path, *C_path;
  const int64_t *order, *mix_row;
  const weight_t* A_row;
  weight_t bias, skip;
};

// The position of the lane's own step on a tile's global side (step tile_step(lane)), from the
// positions of the warp's steps.
__device__ __forceinline__ uint32_t lane_step_position(const uint32_t* position) {
  return position[tile_step(static_cast<int>(threadIdx.x))];
}

// dy = dout * silu(z), the gradient of the ungated sum of the paths, at position l of the (batch, D, L)
// row block from flat index `block`, by channel row (PathChannel::gather_steps).
template <typename input_t>
struct OutputGradsAt {
  using weight_t = at::opmath_type<input_t>;
  const input_t* grad_out;
  // z's rows, or (without a gate) grad_out's, never read: a pointer that is global on every path, so
  // that its loads stay global (LDG) where a select with null would make them generic (LD).
  const input_t* z;
  bool gated;

  __device__ OutputGradsAt(const MultiPathScanBwdParams& p, int64_t block, uint32_t l)
      : grad_out(simt::opaque_pointer(static_cast<const input_t*>(p.grad_out) + block + l)),
        z(simt::opaque_pointer(static_cast<const input_t*>(p.z ? p.z : p.grad_out) + block + l)),
        gated(p.z != nullptr) {}
  __device__ weight_t operator()(uint32_t row) const {
    const weight_t g = static_cast<weight_t>(grad_out[row]);
    return gated ? g * silu(static_cast<weight_t>(z[row])) : g;
  }
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

constexpr int64_t kMaxGridZ = 65535;

C10_HOST_DEVICE inline int64_t num_channel_blocks(const MultiPathScanParams& p) {
  return (p.dim + kWarp - 1) / kWarp;
}

// The grid of the kernels with a block per (batch, path, 32 channels, x_per_channel_block): x holds
// channel blocks and x_per_channel_block, y the path (all P; those outside p's split_paths return at
// once: SpanTask), z the batch. Their threads hold positions in int32.
inline dim3 path_channel_grid(const MultiPathScanParams& p, int64_t x_per_channel_block) {
  TORCH_CHECK(p.batch <= kMaxGridZ, "u: the CUDA kernels take a batch of at most ", kMaxGridZ, ", got ", p.batch);
  return dim3(static_cast<unsigned>(x_per_channel_block * num_channel_blocks(p)), static_cast<unsigned>(p.n_paths),
              static_cast<unsigned>(p.batch));
}

// The chunk's first and one-past-last step.
__device__ __forceinline__ int64_t chunk_begin(int64_t chunk) {
  return chunk * kScanChunk;
}

__device__ __forceinline__ int64_t chunk_end(int64_t chunk, int64_t seqlen) {
  return chunk * kScanChunk + kScanChunk < seqlen ? chunk * kScanChunk + kScanChunk : seqlen;
}

// Blocks resident per multiprocessor that registers must allow: at most 128 registers a thread.
constexpr int kSpanBlocksPerMultiprocessor = 2;

// The blocks per multiprocessor that cutting paths into spans aims for: 2 (the best of 0, 1, 2 and 4
// for the batch-1 and -4 forward on an H200, and within 10% of the best forward+backward), or
// POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM (0: never cut), read once per process, for
// benchmarks/gpu_report.py's sweep over it.
inline int64_t span_blocks_per_multiprocessor() {
  static const int64_t blocks = [] {
    const char* text = std::getenv("POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM");
    if (text == nullptr || *text == '\0') return int64_t{2};
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    TORCH_CHECK(*end == '\0' && value >= 0 && value <= 64,
                "POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM must be a whole number from 0 to 64, got '", text, "'");
    return static_cast<int64_t>(value);
  }();
  return blocks;
}

// Chunks per span: all of them where the blocks of whole paths fill the device's multiprocessors
// (span_blocks_per_multiprocessor() each), else as few as fill them.
inline int64_t chunks_per_span(const MultiPathScanParams& p) {
  const int64_t path_blocks = p.batch * p.n_split_paths * num_channel_blocks(p);
  const int64_t wanted_blocks = simt::multiprocessor_count() * span_blocks_per_multiprocessor();
  const int64_t wanted_spans = (wanted_blocks + path_blocks - 1) / path_blocks;
  const int64_t spans = std::max<int64_t>(1, std::min(p.n_chunks, wanted_spans));
  return (p.n_chunks + spans - 1) / spans;
}

C10_HOST_DEVICE inline int64_t num_spans(const MultiPathScanParams& p, int64_t chunks_per_span) {
  return (p.n_chunks + chunks_per_span - 1) / chunks_per_span;
}

// A chunk's positions, and B and C of its steps (and A of the lanes' channels) for a group of state
// entries, staged in shared memory by the whole block: the steps' loads of B and C then read one
// broadcast row of shared memory each, instead of a gathered global load with its own address
// arithmetic per (step, entry), and each position is read from the path (and checked) once per
// block. B and C take 8 KB in float; 4 KB in double (the tests' and gradcheck's type), whose forward
// kernel has little more left of the 48 KB of static shared memory.
template <typename weight_t>
struct ChunkProjections {
  static constexpr int kStates = sizeof(weight_t) == sizeof(float) ? 16 : 4;  // state entries per group
  alignas(16) weight_t B[kStates][kScanChunk];
  alignas(16) weight_t C[kStates][kScanChunk];
  alignas(16) uint32_t position[kScanChunk];  // L <= 2^26 (check_length, scan_cuda.h); 0 past the path's end
  uint32_t mixed_position[kScanChunk];         // mix at the step's position, or kNoMixedPosition
  weight_t A[kStates][kWarp];                  // A of the lanes' channels, for the group's entries

  // Every thread of the block calls it (then a barrier before any reads): the block's threads take
  // the chunk's steps in order, so a path visiting consecutive positions loads them coalesced. Steps
  // past the path's end and entries past N are zeros. With the first group, the steps' mixed-in
  // positions too (checked here, once per block): the warps' loads of u then wait on no global load
  // of their own before them. B and C only where kWithB and kWithC: the passes over spans need one each.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ void stage(const PathChannel<input_t>& c, int64_t chunk, int64_t first_state) {
    constexpr int kThreads = kWarp * kSegmentWarps;
    static_assert(kThreads % kScanChunk == 0, "a block's threads cover whole chunks");
    const int thread = static_cast<int>(threadIdx.y) * kWarp + static_cast<int>(threadIdx.x);
    const int step = thread % kScanChunk;
    const int64_t s = chunk_begin(chunk) + step;
    const bool valid = s < c.L;
    const int64_t l = valid ? c.position(s) : 0;
    if (thread < kScanChunk) position[step] = static_cast<uint32_t>(l);
    for (int n = static_cast<int>(threadIdx.y); n < kStates; n += kSegmentWarps) {
      A[n][threadIdx.x] = first_state + n < c.N ? c.A_row[first_state + n] : weight_t(0);
    }
    for (int n = thread / kScanChunk; n < kStates; n += kThreads / kScanChunk) {
      const bool loaded = valid && first_state + n < c.N;
      const uint32_t offset = static_cast<uint32_t>(first_state + n) * c.row_length + static_cast<uint32_t>(l);
      if constexpr (kWithB) B[n][step] = loaded ? static_cast<weight_t>(c.B_path[offset]) : weight_t(0);
      if constexpr (kWithC) C[n][step] = loaded ? static_cast<weight_t>(c.C_path[offset]) : weight_t(0);
    }
    if (first_state == 0 && thread < kScanChunk) mixed_position[step] = c.mixed_position(l);
  }

  // The start of the group of state entries from first_state, which every thread of the block calls:
  // the first group is staged with the chunk; a later one once every thread is done with the last.
  // Returns the group's end.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ int enter_group(const PathChannel<input_t>& c, int64_t chunk, int first_state, int n_states) {
    if (first_state > 0) {
      __syncthreads();
      stage<kWithB, kWithC>(c, chunk, first_state);
      __syncthreads();
    }
    return first_state + kStates < n_states ? first_state + kStates : n_states;
  }
};

// The adjoint maps a block's warps staged for this lane (one per warp, in step order), composed over
// the warps after `warp` (the adjoint runs last step first). Unrolled and predicated: a loop of
// run-time length compiles to several unrolled copies.
template <typename weight_t>
__device__ __forceinline__ StateMap<weight_t> maps_after_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp],
                                                              int warp, int lane) {
  StateMap<weight_t> after = StateMap<weight_t>::identity();
#pragma unroll
  for (int w = kSegmentWarps - 1; w > 0; --w) {
    if (w > warp) after = after.then(maps[w][lane]);
  }
  return after;
}

// A state (or adjoint) h carried through the same maps, over the warps before `warp` (or after it):
// where only the carried value is needed, one FMA a warp instead of a map composition.
template <typename weight_t>
__device__ __forceinline__ weight_t carry_before_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp], int warp,
                                                      int lane, weight_t h) {
#pragma unroll
  for (int w = 0; w < kSegmentWarps - 1; ++w) {
    if (w < warp) h = maps[w][lane].apply(h);
  }
  return h;
}

template <typename weight_t>
__device__ __forceinline__ weight_t carry_after_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp], int warp,
                                                     int lane, weight_t h) {
#pragma unroll
  for (int w = kSegmentWarps - 1; w > 0; --w) {
    if (w > warp) h = maps[w][lane].apply(h);
  }
  return h;
}

// The warp splits (scan_warp_spans_cuda.cuh, the forward; scan_warp_spans_backward_cuda.cuh, the
// backward), for paths cut into spans of a length the caller gives per path: a warp walks one span of one
// (batch, path)'s 32 channels alone, 8 steps a tile, with no block-wide barriers, and a block's warps
// take consecutive spans of the same (batch, path, 32 channels), so that on a path whose step
// s + span_length visits a position next to step s's (PoseMamba's joint-major paths, spans of T
// frames) they read the same sectors at the same time.

// B and C of a warp's tile of steps for kStates state entries from `group`: step-major, so that a lane
// reads one step's entries as 16-byte rows (the forward, whose loop over a step's entries is unrolled),
// or entry-major, one entry's steps (kEntryMajor: the backward's, whose loop over entries is not).
template <typename weight_t, int kStates, bool kEntryMajor>
struct WarpProjections {
  static_assert(kStates % (kWarp / kStepsPerThread) == 0, "a round stages kWarp / kStepsPerThread entries");
  alignas(16) weight_t B[kStepsPerThread * kStates];
  alignas(16) weight_t C[kStepsPerThread * kStates];

  static constexpr C10_HOST_DEVICE int index(int step, int n) {
    return kEntryMajor ? n * kStepsPerThread + step : step * kStates + n;
  }
  __device__ weight_t b(int step, int n) const { return B[index(step, n)]; }
  __device__ weight_t c(int step, int n) const { return C[index(step, n)]; }

  // Every lane of the warp calls it, with the position l of its step tile_step(lane) and whether that
  // step is to be staged: B (kWithB) and C (kWithC) of entries [group, group + kStates), zeros past N or
  // for steps not staged.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ void stage(const PathChannel<input_t>& c, uint32_t l, bool step_staged, int group) {
    const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane);
    constexpr int kEntriesPerRound = kWarp / kStepsPerThread;
    const RowsAt<input_t> B_at(c.B_path, l), C_at(c.C_path, l);
#pragma unroll
    for (int r = 0; r < kStates / kEntriesPerRound; ++r) {
      const int n = lane / kStepsPerThread + r * kEntriesPerRound;
      const bool loaded = step_staged && group + n < c.N;
      const uint32_t row = static_cast<uint32_t>(group + n) * c.row_length;
      if constexpr (kWithB) B[index(step, n)] = loaded ? B_at(row) : weight_t(0);
      if constexpr (kWithC) C[index(step, n)] = loaded ? C_at(row) : weight_t(0);
    }
    __syncwarp();
  }
};

// A tile's positions for the lane's own step on the tile's global side (step tile_step(lane)): where it
// is and where its mix reads from (kNoMixedPosition: nowhere).
struct TilePosition {
  uint32_t l, mixed;
};

// The positions of a warp's walk over tiles from `first`, `stride` steps apart (either way), loaded
// ahead of their use: a tile's position two tiles ahead and its mixed-in position (kWithMixed) one
// tile ahead, each checked when its tile comes, so that neither a tile's loads nor the checks wait on
// a global load of their own. The lane's step is read where it is in [read_begin, read_end); elsewhere
// it takes position 0, whose values the walk leaves unused.
template <typename input_t, bool kWithMixed>
class TilePositions {
 public:
  __device__ TilePositions(const PathChannel<input_t>& c, int read_begin, int read_end, int first, int stride)
      : c_(c), read_begin_(read_begin), read_end_(read_end), stride_(stride),
        l_(c.checked_position(loaded_at(first))), next_(loaded_at(first + stride)),
        mixed_(kWithMixed ? c.loaded_mixed(l_) : -1) {}

  // The positions of the tile from `first` (the walk's next), checked; loads the tile after's mixed-in
  // position and the position of the one after that.
  __device__ TilePosition advance(int first) {
    const TilePosition now{l_, c_.checked_mixed(mixed_)};
    l_ = c_.checked_position(next_);
    if constexpr (kWithMixed) mixed_ = c_.loaded_mixed(l_);
    next_ = loaded_at(first + 2 * stride_);
    return now;
  }

 private:
  // The lane's step's position in the tile from `first`, as loaded.
  __device__ int64_t loaded_at(int first) const {
    const int s = first + tile_step(static_cast<int>(threadIdx.x));
    return s >= read_begin_ && s < read_end_ ? c_.loaded_position(s) : 0;
  }

  const PathChannel<input_t>& c_;
  int read_begin_, read_end_, stride_;
  uint32_t l_;      // the coming tile's position, checked
  int64_t next_;    // the tile after's, as loaded
  int64_t mixed_;   // the coming tile's mixed-in position, as loaded
};

// A warp's (batch, path, 32 channels) and span of span_length steps, from the flat warp index of a pass
// over spans [first_span, first_span + pass_spans) of p's split_paths, warps_per_block warps a block:
// spans fastest, so that a block's warps take consecutive spans. Per lane: its channel, where lanes
// past D follow channel D - 1 (`active` false) and write nothing.
struct WarpSpanTask {
  int64_t b, path, first_channel, span, d;
  int begin, end;  // the span's steps, as 32-bit numbers: L <= 2^26 (check_length)
  bool valid;      // false for the last block's warps past the pass's end: return at once (a whole warp)
  bool active;
};

__device__ __forceinline__ WarpSpanTask warp_span_task(const MultiPathScanParams& p, int warps_per_block,
                                                       int64_t first_span, int64_t pass_spans, int64_t span_length) {
  const int64_t flat = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.y;
  const int64_t channel_blocks = num_channel_blocks(p);
  const int64_t span = first_span + flat % pass_spans, rest = flat / pass_spans;
  const int64_t channel_block = rest % channel_blocks, batch_path = rest / channel_blocks;
  const int64_t first_channel = channel_block * kWarp, lane_channel = first_channel + threadIdx.x;
  const bool active = lane_channel < p.dim, valid = batch_path < p.batch * p.n_split_paths;
  const int64_t begin = span * span_length, end = begin + span_length < p.seqlen ? begin + span_length : p.seqlen;
  return {batch_path / p.n_split_paths, valid ? p.split_paths[batch_path % p.n_split_paths] : 0, first_channel, span,
          active ? lane_channel : p.dim - 1, static_cast<int>(begin), static_cast<int>(end), valid, active};
}

// The spans of span_length steps a path is cut into, and the blocks of warps_per_block warps (a warp per
// (batch, path, 32 channels) and span) that a pass over pass_spans of them takes.
inline int64_t num_warp_spans(const MultiPathScanParams& p, int64_t span_length) {
  return (p.seqlen + span_length - 1) / span_length;
}

inline unsigned warp_span_blocks(const MultiPathScanParams& p, int64_t pass_spans, int warps_per_block) {
  const int64_t warps = p.batch * p.n_split_paths * num_channel_blocks(p) * pass_spans;
  const int64_t blocks = (warps + warps_per_block - 1) / warps_per_block;
  constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
  TORCH_CHECK(blocks <= kMaxGridX, "u: the CUDA warp split takes at most ", kMaxGridX, " blocks of (batch, path, 32 ",
              "channels, span), got ", blocks);
  return static_cast<unsigned>(blocks);
}

// Whether the warp split may take the backward (else the forward) where the caller gives a span length:
// both may (the default, or POSEMAMBA_CUDA_WARP_SPANS=1), the forward's only ("forward") or neither
// ("0"). Read once per process, for benchmarks/gpu_report.py's comparison with the chunked splits.
inline bool warp_spans_allowed(bool backward) {
  static const std::string setting = [] {
    const char* text = std::getenv("POSEMAMBA_CUDA_WARP_SPANS");
    const std::string value(text == nullptr || *text == '\0' ? "1" : text);
    TORCH_CHECK(value == "0" || value == "1" || value == "forward",
                "POSEMAMBA_CUDA_WARP_SPANS must be 0, 1 or forward, got '", value, "'");
    return value;
  }();
  return setting == "1" || (setting == "forward" && !backward);
}

// The paths one work split takes, launched together: those of split_paths[0 .. n_paths), walked in
// spans of span_length steps by the warp split, or by the chunked split where span_length is 0.
struct PathSplit {
  int64_t span_length = 0;
  int64_t n_paths = 0;
  int8_t paths[kMaxPaths] = {};

  // p for this split's launches: its paths.
  template <typename Params>
  Params params_of(const Params& p) const {
    Params split = p;
    split.n_split_paths = n_paths;
    std::copy(paths, paths + n_paths, split.split_paths);
    return split;
  }
};

// The work splits of p's paths (the forward and the backward take the same): the warp split for the
// paths whose hint cuts them into more than one span of at least a tile, a launch per span length;
// the chunked split for the others (PoseMamba's frame-major paths, which gain nothing from spans: a
// path along consecutive positions reads whole sectors anyway, and spans cost a second exp per
// state update). A warp split's spans are cut into equal parts where its blocks (kSegmentWarps warps)
// would not fill the device's multiprocessors (kSpanBlocksPerMultiprocessor each): small batches,
// whose inputs fit in L2 anyway, trade the sharing of sectors for parallelism.
inline std::vector<PathSplit> path_splits(const MultiPathScanParams& p, bool backward) {
  std::vector<PathSplit> splits;
  for (int64_t path = 0; path < p.n_paths; ++path) {
    const int64_t hint = p.span_lengths[path];
    const bool usable = hint >= kStepsPerThread && hint < p.seqlen && warp_spans_allowed(backward);
    const int64_t span_length = usable ? hint : 0;
    auto split = std::find_if(splits.begin(), splits.end(),
                              [&](const PathSplit& s) { return s.span_length == span_length; });
    if (split == splits.end()) split = splits.insert(splits.end(), PathSplit{span_length});
    split->paths[split->n_paths++] = static_cast<int8_t>(path);
  }
  const int64_t wanted = simt::multiprocessor_count() * int64_t{kSpanBlocksPerMultiprocessor};
  for (PathSplit& split : splits) {
    if (split.span_length == 0) continue;
    const MultiPathScanParams split_params = split.params_of(p);
    const int64_t blocks = warp_span_blocks(split_params, num_warp_spans(p, split.span_length), kSegmentWarps);
    const int64_t parts = blocks >= wanted ? 1 : (wanted + blocks - 1) / blocks;
    split.span_length = std::max<int64_t>(kStepsPerThread, (split.span_length + parts - 1) / parts);
  }
  return splits;
}

// inverse[p, paths[p, s]] = s: the step at which path p visits each position, for the kernels that
// read per-path workspaces kept in path order back in natural order. (Static: a plain kernel in a
// header that more than one .cu includes.)
static __global__ void invert_paths_kernel(const int64_t* paths, int64_t n_paths, int64_t seqlen, int32_t* inverse) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_paths * seqlen) return;
  const int64_t l = paths[i];
  POSEMAMBA_DEVICE_ASSERT(l >= 0 && l < seqlen);
  inverse[i - i % seqlen + l] = static_cast<int32_t>(i % seqlen);
}

// -1 where no step visits a position: only where a row of paths is not a permutation (a direct call
// of the op; the Python entry point checks), which path_step then stops at.
inline at::Tensor invert_paths(const MultiPathScanParams& p, const at::Tensor& paths) {
  at::Tensor inverse = at::empty({p.n_paths, p.seqlen}, paths.options().dtype(at::kInt));
  inverse.fill_(-1);
  simt::launch(invert_paths_kernel, elementwise_blocks(p.n_paths * p.seqlen), kElementwiseThreads, 0, p.paths,
               p.n_paths, p.seqlen, inverse.mutable_data_ptr<int32_t>());
  return inverse;
}

// The step at which path `path` visits position l, from invert_paths' inverse.
__device__ __forceinline__ int64_t path_step(const int32_t* inverse, int64_t path, int64_t seqlen, int64_t l) {
  const int32_t visiting_step = inverse[path * seqlen + l];
  POSEMAMBA_DEVICE_ASSERT(visiting_step >= 0);
  return visiting_step;
}

// A span block's (batch, path, channel), span and warp; lanes past D follow channel D - 1 through
// the barriers (`active` false) and write nothing. The grid covers every path (path_channel_grid), so
// that the path is blockIdx.y, the same register for the whole block (a path looked up in p's
// split_paths costs the loops over state entries a tenth more instructions): the blocks of paths
// outside p's split_paths (`in_split` false) return at once.
struct SpanTask {
  int64_t b, path, d, first_channel, span;
  int lane, warp;
  bool active, in_split;
};

// first_span: the span of the grid's first blocks (passes that leave out the first span start at 1).
__device__ __forceinline__ SpanTask span_task(const MultiPathScanParams& p, int64_t first_span) {
  const int64_t channel_blocks = num_channel_blocks(p);
  const int64_t first_channel = static_cast<int64_t>(blockIdx.x) % channel_blocks * kWarp;
  const int64_t lane_channel = first_channel + threadIdx.x;
  const bool active = lane_channel < p.dim;
  const int64_t path = blockIdx.y;
  bool in_split = false;
  for (int64_t i = 0; i < p.n_split_paths; ++i) in_split = in_split || p.split_paths[i] == path;
  return {static_cast<int64_t>(blockIdx.z), path, active ? lane_channel : p.dim - 1, first_channel,
          first_span + static_cast<int64_t>(blockIdx.x) / channel_blocks, static_cast<int>(threadIdx.x),
          static_cast<int>(threadIdx.y), active, in_split};
}

// Where channel d's saved states of (batch b, path) start in chunk_states, (batch, P, chunks, N, D):
// chunk c's entry n at + (c * N + n) * D, channel-minor (a warp's 32 lanes, 128 contiguous bytes).
C10_HOST_DEVICE inline int64_t chunk_states_offset(const MultiPathScanParams& p, int64_t b, int64_t path, int64_t d) {
  return (b * p.n_paths + path) * p.n_chunks * p.d_state * p.dim + d;
}

// Where span `span` of (batch b, path) starts in the per-span states and maps, (batch, P, spans, N, D):
// channel-minor, so that a warp's lanes read and write 32 contiguous entries (state entry n of channel
// d at + n * D + d).
C10_HOST_DEVICE inline int64_t span_entries(const MultiPathScanParams& p, int64_t n_spans, int64_t b, int64_t path,
                                            int64_t span) {
  return ((b * p.n_paths + path) * n_spans + span) * p.d_state * p.dim;
}

// The carry pass between spans, one thread per (batch, path of p's split_paths, state entry,
// channel): into[.., s, n, d] = what flows into span s from the spans before it in the walk's order
// (forward: first to last, the state before the span; backward: last to first, the adjoint entering
// the span from its right), composing the spans' maps (each span's from-zero pass) in that order;
// zero into the first.
template <typename weight_t>
__global__ void carry_across_spans_kernel(MultiPathScanParams p, int64_t n_spans, const StateMap<weight_t>* span_maps,
                                          weight_t* into, bool forward) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.batch * p.n_split_paths * p.dim * p.d_state) return;
  const int64_t entry = i % (p.d_state * p.dim), batch_path = i / (p.d_state * p.dim);
  const int64_t b = batch_path / p.n_split_paths, path = p.split_paths[batch_path % p.n_split_paths];
  weight_t carried = 0;
  for (int64_t k = 0; k < n_spans; ++k) {
    const int64_t span = forward ? k : n_spans - 1 - k;
    const int64_t slot = span_entries(p, n_spans, b, path, span) + entry;
    into[slot] = carried;
    if (k + 1 < n_spans) carried = span_maps[slot].apply(carried);
  }
}

template <typename weight_t>
void carry_across_spans(const MultiPathScanParams& p, int64_t n_spans, const StateMap<weight_t>* span_maps,
                        weight_t* into, bool forward) {
  simt::launch(carry_across_spans_kernel<weight_t>, elementwise_blocks(p.batch * p.n_split_paths * p.dim * p.d_state),
               kElementwiseThreads, 0, p, n_spans, span_maps, into, forward);
}

}  // namespace cuda
}  // namespace posemamba
