// What every CUDA scan launch shares: the fixed-order reduction of per-block partials and the grid of
// the elementwise kernels, the grid of blocks per (batch, path, 32 channels), the paths' inverse (the
// step at which a path visits a position), where the saved states and the per-span values lie, and
// the carry pass between spans. A warp's tiles of steps and the rows they move: scan_step_tiles_cuda.cuh;
// the two work splits: scan_chunked_split_cuda.cuh and scan_warp_split_cuda.cuh. The scan math itself
// comes from ../multi_path_scan.h, as on the CPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

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

// Blocks resident per multiprocessor that registers must allow: at most 128 registers a thread.
constexpr int kSpanBlocksPerMultiprocessor = 2;

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
