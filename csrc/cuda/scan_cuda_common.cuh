// What the CUDA forward and backward share: the state-size buckets, warp sums in a fixed order, the
// fixed-order reduction of per-block partials, one (batch, path, channel)'s rows (PathChannel), the
// grids of blocks per (batch, path, 32 channels) and the backward's chunk work split (chunk_task). The scan math itself comes from ../multi_path_scan.h, as on the CPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "../multi_path_scan.h"
#include "scan_cuda.h"
#include "simt.cuh"

namespace posemamba {
namespace cuda {

// Each thread keeps its channel's N-entry state in registers, sized by the bucket N falls in: three
// instantiations per dtype instead of one per N.
template <typename Fn>
void dispatch_state_bucket(int64_t d_state, Fn&& fn) {
  if (d_state <= 16) {
    fn(std::integral_constant<int, 16>{});
  } else if (d_state <= 32) {
    fn(std::integral_constant<int, 32>{});
  } else {
    static_assert(kMaxStateDim == 64, "buckets cover N up to kMaxStateDim");
    fn(std::integral_constant<int, 64>{});
  }
}

// Sums over a warp's lanes of 32 values per lane, through shared memory: each lane stages its values
// in its column of a 32 x 33 tile (the pad keeps both the row writes and the column reads free of bank
// conflicts), then lane i adds row i in lane order. Bitwise the same every run, and one staged write,
// one read and one add per value instead of a shuffle tree's five shuffles and five adds.
template <typename T>
struct WarpColumnSums {
  T (*tile)[kWarp + 1];

  __device__ void stage(int row, T value) const { tile[row][threadIdx.x] = value; }

  // Lane i's result: the sum over lanes of what they staged in row i. Every lane of the warp calls it.
  __device__ T sum_row() const {
    __syncwarp();
    T total = 0;
    for (int lane = 0; lane < kWarp; ++lane) total += tile[threadIdx.x][lane];
    __syncwarp();  // the tile is free for the next values
    return total;
  }
};

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

// One (batch, path, channel): the rows and constants a thread scanning that channel along that path
// reads.
template <typename input_t>
struct PathChannel {
  using weight_t = at::opmath_type<input_t>;

  __device__ PathChannel(const MultiPathScanParams& p, int64_t b, int64_t path, int64_t d)
      : L(p.seqlen), N(p.d_state), delta_softplus(p.delta_softplus) {
    const int64_t batch_path = b * p.n_paths + path;
    const int64_t path_channel = path * p.dim + d;
    u_row = static_cast<const input_t*>(p.u) + (b * p.dim + d) * L;
    delta_row = static_cast<const input_t*>(p.delta) + (batch_path * p.dim + d) * L;
    B_path = static_cast<const input_t*>(p.B) + batch_path * N * L;
    C_path = static_cast<const input_t*>(p.C) + batch_path * N * L;
    order = p.paths + path * L;
    mix_row = p.mix ? p.mix + path * L : nullptr;
    bias = p.delta_bias ? static_cast<const weight_t*>(p.delta_bias)[path_channel] : weight_t(0);
    skip = p.D ? static_cast<const weight_t*>(p.D)[path_channel] : weight_t(0);
    A_row = static_cast<const weight_t*>(p.A) + path_channel * N;
  }

  // A[path, d, :] into registers, zero past N.
  template <int kNMax>
  __device__ void load_state_rates(weight_t (&a)[kNMax]) const {
#pragma unroll
    for (int n = 0; n < kNMax; ++n) a[n] = n < N ? A_row[n] : weight_t(0);
  }

  // The position the path visits at step s.
  __device__ int64_t position(int64_t s) const {
    const int64_t l = order[s];
    POSEMAMBA_DEVICE_ASSERT(l >= 0 && l < L);
    return l;
  }

  // The scan input at position l: u, plus u at the mixed-in position where mix names one.
  __device__ weight_t input_at(int64_t l) const {
    weight_t v = static_cast<weight_t>(u_row[l]);
    if (mix_row && mix_row[l] >= 0) {
      POSEMAMBA_DEVICE_ASSERT(mix_row[l] < L);
      v += static_cast<weight_t>(u_row[mix_row[l]]);
    }
    return v;
  }

  __device__ weight_t step_at(int64_t l) const {
    return step_size<weight_t>(static_cast<weight_t>(delta_row[l]), bias, delta_softplus);
  }

  int64_t L, N;
  bool delta_softplus;
  const input_t *u_row, *delta_row, *B_path, *C_path;
  const int64_t *order, *mix_row;
  const weight_t* A_row;
  weight_t bias, skip;
};

// The backward's split: a thread per (batch, path, channel, chunk of kScanChunk steps), a block's
// lanes 32 channels and its warps kChunksPerBlock consecutive chunks (chunk_grid, chunk_task).
constexpr int kChunksPerBlock = 4;
constexpr int64_t kMaxGridZ = 65535;

C10_HOST_DEVICE inline int64_t num_channel_blocks(const MultiPathScanParams& p) {
  return (p.dim + kWarp - 1) / kWarp;
}

// The grid of the kernels with a block per (batch, path, 32 channels, x_per_channel_block): x holds
// channel blocks and x_per_channel_block, y the path, z the batch.
inline dim3 path_channel_grid(const MultiPathScanParams& p, int64_t x_per_channel_block) {
  TORCH_CHECK(p.batch <= kMaxGridZ, "u: the CUDA kernels take a batch of at most ", kMaxGridZ, ", got ", p.batch);
  return dim3(static_cast<unsigned>(x_per_channel_block * num_channel_blocks(p)), static_cast<unsigned>(p.n_paths),
              static_cast<unsigned>(p.batch));
}

inline dim3 chunk_grid(const MultiPathScanParams& p) {
  return path_channel_grid(p, (p.n_chunks + kChunksPerBlock - 1) / kChunksPerBlock);
}

// This thread's (batch, path, channel, chunk); `valid` is false for lanes and warps past the ends.
struct ChunkTask {
  int64_t b, path, d, chunk;
  bool valid;
};

__device__ __forceinline__ ChunkTask chunk_task(const MultiPathScanParams& p) {
  const int64_t channel_blocks = num_channel_blocks(p);
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) / channel_blocks * kChunksPerBlock + threadIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) % channel_blocks * kWarp + threadIdx.x;
  return {static_cast<int64_t>(blockIdx.z), static_cast<int64_t>(blockIdx.y), d, chunk,
          d < p.dim && chunk < p.n_chunks};
}

// The chunk's first and one-past-last step.
__device__ __forceinline__ int64_t chunk_begin(int64_t chunk) {
  return chunk * kScanChunk;
}

__device__ __forceinline__ int64_t chunk_end(int64_t chunk, int64_t seqlen) {
  return chunk * kScanChunk + kScanChunk < seqlen ? chunk * kScanChunk + kScanChunk : seqlen;
}

}  // namespace cuda
}  // namespace posemamba
