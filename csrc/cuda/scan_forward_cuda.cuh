// CUDA forward of posemamba::multi_path_scan_fwd: the kernels and their launches.
//
// One warp per (batch, path, block of 32 channels); each lane scans its channel along the path with
// the state in registers and writes the path's output into its own row of a (batch, P, D, L) float
// workspace. A second kernel sums the paths in index order and applies the gate: no atomics, results
// bitwise reproducible. Per-step math: ../multi_path_scan.h.
//
// Included by scan_forward_cuda.cu (nvcc: the op's CUDA implementation) and by the host emulation
// build that tests these kernels without a GPU (../emulation/).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "../multi_path_scan_host.h"
#include "scan_cuda_common.cuh"

namespace posemamba {
namespace cuda {

template <typename input_t, int kNMax>
__global__ void __launch_bounds__(kWarp) scan_path_forward_kernel(MultiPathScanParams p, at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t path = blockIdx.y, b = blockIdx.z;
  if (d >= p.dim) return;
  const int64_t L = p.seqlen, N = p.d_state;
  const int64_t batch_path = b * p.n_paths + path;
  const int64_t path_channel = path * p.dim + d;
  const auto* u_row = static_cast<const input_t*>(p.u) + (b * p.dim + d) * L;
  const auto* delta_row = static_cast<const input_t*>(p.delta) + (batch_path * p.dim + d) * L;
  const auto* B_path = static_cast<const input_t*>(p.B) + batch_path * N * L;
  const auto* C_path = static_cast<const input_t*>(p.C) + batch_path * N * L;
  const int64_t* order = p.paths + path * L;
  const int64_t* mix_row = p.mix ? p.mix + path * L : nullptr;
  const weight_t bias = p.delta_bias ? static_cast<const weight_t*>(p.delta_bias)[path_channel] : weight_t(0);
  const weight_t skip = p.D ? static_cast<const weight_t*>(p.D)[path_channel] : weight_t(0);
  weight_t* y = y_paths + (batch_path * p.dim + d) * L;
  weight_t* saved = static_cast<weight_t*>(p.chunk_states) + (batch_path * p.dim + d) * p.n_chunks * N;

  weight_t a[kNMax], h[kNMax];
#pragma unroll
  for (int n = 0; n < kNMax; ++n) {
    a[n] = n < N ? static_cast<const weight_t*>(p.A)[path_channel * N + n] : weight_t(0);
    h[n] = weight_t(0);
  }
  for (int64_t s = 0; s < L; ++s) {
    if (s % kScanChunk == 0) {
#pragma unroll
      for (int n = 0; n < kNMax; ++n) {
        if (n < N) saved[(s / kScanChunk) * N + n] = h[n];
      }
    }
    const int64_t l = order[s];
    POSEMAMBA_DEVICE_ASSERT(l >= 0 && l < L);
    weight_t v = static_cast<weight_t>(u_row[l]);
    if (mix_row && mix_row[l] >= 0) {
      POSEMAMBA_DEVICE_ASSERT(mix_row[l] < L);
      v += static_cast<weight_t>(u_row[mix_row[l]]);
    }
    const weight_t dt = step_size<weight_t>(static_cast<weight_t>(delta_row[l]), bias, p.delta_softplus);
    const weight_t dt_v = dt * v;
    weight_t y_step = skip * v;
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < N) {
        h[n] = state_update<weight_t>(h[n], step_decay(dt, a[n]), dt_v, static_cast<weight_t>(B_path[n * L + l]));
        y_step += static_cast<weight_t>(C_path[n * L + l]) * h[n];
      }
    }
    y[l] = y_step;
  }
}

// out[b, d, l] = (sum over paths of y_paths[b, p, d, l]) * silu(z[b, d, l]), paths in index order.
template <typename input_t>
__global__ void merge_paths_kernel(MultiPathScanParams p, const at::opmath_type<input_t>* y_paths) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_batch = p.dim * p.seqlen;
  if (i >= p.batch * per_batch) return;
  const int64_t b = i / per_batch, rest = i % per_batch;
  weight_t y = 0;
  for (int64_t path = 0; path < p.n_paths; ++path) y += y_paths[(b * p.n_paths + path) * per_batch + rest];
  if (p.z) {
    static_cast<input_t*>(p.out_ungated)[i] = static_cast<input_t>(y);
    y = gate_output<weight_t>(y, static_cast<weight_t>(static_cast<const input_t*>(p.z)[i]));
  }
  static_cast<input_t*>(p.out)[i] = static_cast<input_t>(y);
}

// Runs the forward on prepared inputs (on the current device and stream), filling f's outputs.
inline void run_scan_forward(ScanForward& f) {
  const MultiPathScanParams& p = f.params;
  const at::Tensor y_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, f.inputs.A.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.inputs.u.scalar_type(), "multi_path_scan_fwd_cuda", [&] {
    using weight_t = at::opmath_type<scalar_t>;
    auto* y_data = y_paths.mutable_data_ptr<weight_t>();
    dispatch_state_bucket(p.d_state, [&](auto bucket) {
      simt::launch(scan_path_forward_kernel<scalar_t, decltype(bucket)::value>, scan_grid(p), kWarp, 0, p, y_data);
    });
    simt::launch(merge_paths_kernel<scalar_t>, elementwise_blocks(p.batch * p.dim * p.seqlen), kElementwiseThreads, 0,
                 p, static_cast<const weight_t*>(y_data));
  });
}

}  // namespace cuda
}  // namespace posemamba
