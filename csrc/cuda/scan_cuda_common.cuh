// Launch plumbing shared by the CUDA forward and backward: the state-size buckets, warp sums in a
// fixed order, and the fixed-order reduction of per-block partials. The scan math itself comes from
// ../multi_path_scan.h, as on the CPU.
#pragma once

#include <ATen/OpMathType.h>

#include <type_traits>

#include "../multi_path_scan.h"
#include "simt.cuh"

namespace posemamba {
namespace cuda {

// One warp per (batch, path, block of 32 channels): lanes are channels, and every lane of a warp walks
// the same path, so at each step the warp sums its channels' dB and dC contributions with shuffles.
constexpr int kWarp = 32;

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

// The warp's sum of x in a fixed butterfly order: bitwise the same every run.
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

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

inline dim3 scan_grid(const MultiPathScanParams& p) {
  return dim3(static_cast<unsigned>((p.dim + kWarp - 1) / kWarp), static_cast<unsigned>(p.n_paths),
              static_cast<unsigned>(p.batch));
}

}  // namespace cuda
}  // namespace posemamba
