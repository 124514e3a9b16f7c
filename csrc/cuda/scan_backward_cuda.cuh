// CUDA backward of posemamba::multi_path_scan_bwd: the kernels and their launches.
//
// One warp per (batch, path, block of 32 channels) (scan_grid). Each lane walks its channel's
// path chunk by chunk, last to first: recompute the chunk's states from the state the forward saved
// before it, then run the adjoint recurrence backwards. Per-element gradients go to rows the lane
// owns (du per path, summed over paths afterwards in index order); dB and dC sum over channels with
// fixed-order warp shuffles into per-block partials; dA, dD and ddelta_bias into per-batch partials.
// Fixed-order passes then add the partials: no float atomics, bitwise reproducible.
//
// Included by scan_backward_cuda.cu (nvcc: the op's CUDA implementation) and by the host emulation
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
__global__ void __launch_bounds__(kWarp) scan_path_backward_kernel(MultiPathScanBwdParams p, at::opmath_type<input_t>* du_paths) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t d_lane = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t path = blockIdx.y, b = blockIdx.z, block = blockIdx.x;
  // Lanes past D still take part in the warp sums: they read channel D-1 and contribute zero.
  const bool active = d_lane < p.dim;
  const int64_t d = active ? d_lane : p.dim - 1;
  const int64_t L = p.seqlen, N = p.d_state;
  const int64_t row = b * p.dim + d;
  const int64_t batch_path = b * p.n_paths + path;
  const int64_t path_channel = path * p.dim + d;
  const auto* u_row = static_cast<const input_t*>(p.u) + row * L;
  const auto* grad_row = static_cast<const input_t*>(p.grad_out) + row * L;
  const auto* z_row = p.z ? static_cast<const input_t*>(p.z) + row * L : nullptr;
  const auto* delta_row = static_cast<const input_t*>(p.delta) + (batch_path * p.dim + d) * L;
  auto* ddelta_row = static_cast<input_t*>(p.ddelta) + (batch_path * p.dim + d) * L;
  const auto* B_path = static_cast<const input_t*>(p.B) + batch_path * N * L;
  const auto* C_path = static_cast<const input_t*>(p.C) + batch_path * N * L;
  const int64_t* order = p.paths + path * L;
  const int64_t* mix_row = p.mix ? p.mix + path * L : nullptr;
  const weight_t bias = p.delta_bias ? static_cast<const weight_t*>(p.delta_bias)[path_channel] : weight_t(0);
  const weight_t skip = p.D ? static_cast<const weight_t*>(p.D)[path_channel] : weight_t(0);
  const weight_t* saved = static_cast<const weight_t*>(p.chunk_states) + (batch_path * p.dim + d) * p.n_chunks * N;
  const int64_t partial = ((b * p.n_channel_blocks + block) * p.n_paths + path) * L * N;
  auto* dB_partial = static_cast<weight_t*>(p.dB_partial) + partial;
  auto* dC_partial = static_cast<weight_t*>(p.dC_partial) + partial;
  weight_t* du = du_paths + (batch_path * p.dim + d) * L;

  auto input_at = [&](int64_t l) {
    weight_t v = static_cast<weight_t>(u_row[l]);
    if (mix_row && mix_row[l] >= 0) v += static_cast<weight_t>(u_row[mix_row[l]]);
    return v;
  };
  // dy = dout * silu(z): the gradient of the ungated sum of the paths.
  auto output_grad_at = [&](int64_t l) {
    if (!active) return weight_t(0);
    const weight_t g = static_cast<weight_t>(grad_row[l]);
    return z_row ? g * silu(static_cast<weight_t>(z_row[l])) : g;
  };

  if (active) {
    for (int64_t l = 0; l < L; ++l) du[l] = weight_t(0);
  }
  weight_t a[kNMax], dh[kNMax], dA[kNMax];
  // One chunk's recomputed states (states[k]: after k steps of the chunk) and decays, per lane.
  weight_t states[(kScanChunk + 1) * kNMax], decays[kScanChunk * kNMax];
#pragma unroll
  for (int n = 0; n < kNMax; ++n) {
    a[n] = n < N ? static_cast<const weight_t*>(p.A)[path_channel * N + n] : weight_t(0);
    dh[n] = weight_t(0);
    dA[n] = weight_t(0);
  }
  weight_t dD = 0, ddelta_bias = 0;

  for (int64_t chunk = p.n_chunks - 1; chunk >= 0; --chunk) {
    const int64_t s_begin = chunk * kScanChunk;
    const int64_t s_end = s_begin + kScanChunk < L ? s_begin + kScanChunk : L;
#pragma unroll
    for (int n = 0; n < kNMax; ++n) states[n] = n < N ? saved[chunk * N + n] : weight_t(0);
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t l = order[s];
      POSEMAMBA_DEVICE_ASSERT(l >= 0 && l < L);
      const weight_t dt = step_size<weight_t>(static_cast<weight_t>(delta_row[l]), bias, p.delta_softplus);
      const weight_t dt_v = dt * input_at(l);
      const int64_t k = s - s_begin;
#pragma unroll
      for (int n = 0; n < kNMax; ++n) {
        if (n < N) {
          decays[k * kNMax + n] = step_decay(dt, a[n]);
          states[(k + 1) * kNMax + n] = state_update<weight_t>(states[k * kNMax + n], decays[k * kNMax + n], dt_v,
                                                               static_cast<weight_t>(B_path[n * L + l]));
        }
      }
    }

    for (int64_t s = s_end - 1; s >= s_begin; --s) {
      const int64_t l = order[s];
      const int64_t k = s - s_begin;
      const weight_t v = input_at(l);
      const weight_t raw = static_cast<weight_t>(delta_row[l]);
      const weight_t dt = step_size<weight_t>(raw, bias, p.delta_softplus);
      const weight_t dt_v = dt * v;
      const weight_t dy = output_grad_at(l);
      weight_t d_dt = 0, d_dt_v = 0;
#pragma unroll
      for (int n = 0; n < kNMax; ++n) {
        if (n < N) {
          const weight_t c = static_cast<weight_t>(C_path[n * L + l]);
          const weight_t dC_lane = dy * states[(k + 1) * kNMax + n];
          weight_t dB_lane = 0;
          dh[n] = state_update_backward<weight_t>(dh[n] + dy * c, states[k * kNMax + n], decays[k * kNMax + n], dt, a[n],
                                                  dt_v, static_cast<weight_t>(B_path[n * L + l]), d_dt, dA[n], d_dt_v,
                                                  dB_lane);
          const weight_t dC_sum = warp_sum(dC_lane);
          const weight_t dB_sum = warp_sum(dB_lane);
          if (threadIdx.x == 0) {
            dC_partial[l * N + n] = dC_sum;
            dB_partial[l * N + n] = dB_sum;
          }
        }
      }
      const weight_t d_step = (d_dt + d_dt_v * v) * step_size_grad<weight_t>(raw, bias, p.delta_softplus);
      const weight_t dv = d_dt_v * dt + dy * skip;
      dD += dy * v;
      ddelta_bias += d_step;
      if (active) {
        ddelta_row[l] = static_cast<input_t>(d_step);
        du[l] += dv;
        if (mix_row && mix_row[l] >= 0) du[mix_row[l]] += dv;
      }
    }
  }
  if (active) {
    const int64_t channel = batch_path * p.dim + d;
#pragma unroll
    for (int n = 0; n < kNMax; ++n) {
      if (n < N) static_cast<weight_t*>(p.dA_partial)[channel * N + n] = dA[n];
    }
    static_cast<weight_t*>(p.dD_partial)[channel] = dD;
    static_cast<weight_t*>(p.ddelta_bias_partial)[channel] = ddelta_bias;
  }
}

// du = the sum over paths of du_paths, in index order; dz = dout * y * silu'(z).
template <typename input_t>
__global__ void merge_input_grads_kernel(MultiPathScanBwdParams p, const at::opmath_type<input_t>* du_paths) {
  using weight_t = at::opmath_type<input_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_batch = p.dim * p.seqlen;
  if (i >= p.batch * per_batch) return;
  const int64_t b = i / per_batch, rest = i % per_batch;
  weight_t du = 0;
  for (int64_t path = 0; path < p.n_paths; ++path) du += du_paths[(b * p.n_paths + path) * per_batch + rest];
  static_cast<input_t*>(p.du)[i] = static_cast<input_t>(du);
  if (p.z) {
    const weight_t g = static_cast<weight_t>(static_cast<const input_t*>(p.grad_out)[i]);
    const weight_t y = static_cast<weight_t>(static_cast<const input_t*>(p.out_ungated)[i]);
    const weight_t z = static_cast<weight_t>(static_cast<const input_t*>(p.z)[i]);
    static_cast<input_t*>(p.dz)[i] = static_cast<input_t>(g * y * silu_grad(z));
  }
}

// Runs the backward on prepared inputs (on the current device and stream), filling g's gradients and
// the sums of its partials.
inline void run_scan_backward(ScanBackward& g) {
  const MultiPathScanBwdParams& p = g.params;
  const at::Tensor du_paths = at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, g.inputs.A.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.inputs.u.scalar_type(), "multi_path_scan_bwd_cuda", [&] {
    using weight_t = at::opmath_type<scalar_t>;
    auto* du_data = du_paths.mutable_data_ptr<weight_t>();
    dispatch_state_bucket(p.d_state, [&](auto bucket) {
      simt::launch(scan_path_backward_kernel<scalar_t, decltype(bucket)::value>, scan_grid(p), kWarp, 0, p, du_data);
    });
    simt::launch(merge_input_grads_kernel<scalar_t>, elementwise_blocks(p.batch * p.dim * p.seqlen),
                 kElementwiseThreads, 0, p, static_cast<const weight_t*>(du_data));
    reduce_backward_partials<weight_t>(g, sum_partials<weight_t>);
  });
}

}  // namespace cuda
}  // namespace posemamba
