// How the merges (the forward's sum of the paths and gate, the backward's du and dz) meet activations in
// both layouts. A block takes a tile of 32 channels by 32 positions, positions counted over the whole
// batch (b L + l), and its threads hold the tile two ways: by channel rows (a warp = one channel's 32
// positions), along the rows of (batch, D, L) tensors and of the path-order workspaces; and by position
// rows (a warp = one position's 32 channels), along channels-last ones. Values change hands through a
// padded tile of shared memory, so that every global access of a warp is one run of 32 elements
// whatever the layout, and a channels-last z, out or grad_out is read or written where it lies.
#pragma once

#include <c10/util/Exception.h>

#include "../multi_path_scan.h"
#include "scan_cuda.h"
#include "simt.cuh"

namespace posemamba {
namespace cuda {

constexpr int kMergeTile = 32;                          // channels and positions of a block's tile
constexpr int kMergeWarps = 8;                          // a block's warps (threadIdx.y)
constexpr int kMergeValues = kMergeTile / kMergeWarps;  // the rows of the tile each thread holds
static_assert(kMergeTile == kWarp, "a warp takes one row of the tile");

// Shared memory for one exchange: exchange[channel][position] of the tile, padded so that both ways of
// holding the tile are free of bank conflicts.
template <typename T>
using MergeExchange = T[kMergeTile][kMergeTile + 1];

// The merges' grid: position tiles in x (up to 2^31 - 1), channel tiles in y.
inline dim3 merge_grid(const MultiPathScanParams& p) {
  const int64_t channel_tiles = (p.dim + kMergeTile - 1) / kMergeTile;
  TORCH_CHECK(channel_tiles <= 65535, "the CUDA kernels take D <= ", 65535 * kMergeTile, " channels, got ", p.dim);
  return dim3(static_cast<unsigned>((p.batch * p.seqlen + kMergeTile - 1) / kMergeTile),
              static_cast<unsigned>(channel_tiles));
}

inline dim3 merge_block() {
  return dim3(kMergeTile, kMergeWarps);
}

// This thread's elements of the block's tile. Value j: by channel rows, channel first_channel + y + 8 j
// at position first_position + x; by position rows, position first_position + y + 8 j at channel
// first_channel + x (x, y: threadIdx).
struct MergeTile {
  __device__ explicit MergeTile(const MultiPathScanParams& p)
      : D(p.dim), L(p.seqlen), positions(p.batch * p.seqlen) {
    first_position = static_cast<int64_t>(blockIdx.x) * kMergeTile;
    first_channel = static_cast<int64_t>(blockIdx.y) * kMergeTile;
    const int64_t position = first_position + threadIdx.x;
    row_b = position / L;
    row_l = position % L;
    row_valid = position < positions;
  }

  // By channel rows: value j's channel, whether it is in the tensors, and its offset in a (batch, D, L)
  // tensor (this thread's position: batch row_b, position row_l).
  __device__ int64_t row_channel(int j) const { return first_channel + threadIdx.y + kMergeWarps * j; }
  __device__ bool in_row(int j) const { return row_valid && row_channel(j) < D; }
  __device__ int64_t row_offset(int j) const { return (row_b * D + row_channel(j)) * L + row_l; }

  // By position rows: whether value j is in the tensors, and its offset in a channels-last one.
  __device__ int64_t column_position(int j) const { return first_position + threadIdx.y + kMergeWarps * j; }
  __device__ bool in_column(int j) const {
    return column_position(j) < positions && first_channel + threadIdx.x < D;
  }
  __device__ int64_t column_offset(int j) const { return column_position(j) * D + first_channel + threadIdx.x; }

  // Whether value j is in the tensors, and its offset in a tensor laid out to match how the tile is held
  // (by_positions: channels-last, by position rows; else (batch, D, L), by channel rows).
  __device__ bool in_tensors(bool by_positions, int j) const { return by_positions ? in_column(j) : in_row(j); }
  __device__ int64_t offset(bool by_positions, int j) const { return by_positions ? column_offset(j) : row_offset(j); }

  // The values held one way, held the other way after (by_positions: from position rows to channel
  // rows; else from channel rows to position rows); returns how they are held now (!by_positions).
  // Every thread of the block calls it.
  template <typename T>
  __device__ bool turn(MergeExchange<T>& exchange, bool by_positions, T (&values)[kMergeValues]) const {
    const int x = static_cast<int>(threadIdx.x), y = static_cast<int>(threadIdx.y);
    __syncthreads();  // the exchange is free (a block may turn more than once)
#pragma unroll
    for (int j = 0; j < kMergeValues; ++j) {
      const int row = y + kMergeWarps * j;
      if (by_positions) {
        exchange[x][row] = values[j];  // channel x, position row
      } else {
        exchange[row][x] = values[j];  // channel row, position x
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMergeValues; ++j) {
      const int row = y + kMergeWarps * j;
      values[j] = by_positions ? exchange[row][x] : exchange[x][row];
    }
    return !by_positions;
  }

  int64_t D, L, positions;
  int64_t first_position, first_channel;
  int64_t row_b, row_l;
  bool row_valid;
};

}  // namespace cuda
}  // namespace posemamba
