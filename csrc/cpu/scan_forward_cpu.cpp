// CPU forward of posemamba::multi_path_scan_fwd.
//
// One task per (batch, block of kCpuChannelBlock channels). It runs every path for its channels and
// sums them into its own rows of the output, so tasks never share a written element: no races, no
// reductions, and the result does not depend on the thread count. The per-step math comes from
// multi_path_scan.h; the hot loop is compiled once per ISA (cpu_dispatch.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../multi_path_scan_host.h"
#include "cpu_dispatch.h"
#include "scan_block_cpu.h"

namespace posemamba {

at::Tensor transpose_to_positions_major(const at::Tensor& BC, at::ScalarType weight_dtype) {
  // (batch, P, L, N): one copy from any strides and dtype, none where BC already is so. (Tensor::to
  // returns its tensor as it is, whatever the memory format asked, unless it must copy.)
  const at::Tensor by_position = BC.transpose(-1, -2);
  return by_position.scalar_type() == weight_dtype
             ? by_position.contiguous()
             : by_position.to(weight_dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

POSEMAMBA_CPU_MULTIVERSION void gather_channel_block(const float* rows, int64_t d_begin, int64_t width, int64_t seqlen,
                                                     float* out) {
  gather_channel_block_impl(rows, d_begin, width, seqlen, out);
}

POSEMAMBA_CPU_MULTIVERSION void scatter_channel_block(const float* block, int64_t d_begin, int64_t width,
                                                      int64_t seqlen, float* rows) {
  scatter_channel_block_impl(block, d_begin, width, seqlen, rows);
}

POSEMAMBA_CPU_MULTIVERSION void project_step_sizes(const float* low, const ChannelLanes<float>* weights, int64_t rank,
                                                   int64_t seqlen, float* dt) {
  project_step_sizes_impl(low, weights, rank, seqlen, dt);
}

namespace {

// One path's whole scan for a block of W channels.
template <typename weight_t>
struct PathBlockScan {
  const weight_t* dt;       // (L, W) step sizes by natural position
  const weight_t* v;        // (L, W) inputs by natural position
  const weight_t* B;        // (L, N) this (batch, path)'s B by natural position
  const weight_t* C;        // (L, N)
  const weight_t* A;        // (N, W)
  const weight_t* D;        // (W)
  const int64_t* order;     // (L) the path: positions in scan order
  int64_t seqlen;
  int64_t d_state;
  weight_t* y;              // (L, W) this path's output is added here
  weight_t* saved_states;   // (n_chunks, N, W) the state before each chunk's first step; null: not kept
};

// The pointers arrive as restrict parameters and the state lives in a local array: then the compiler
// knows nothing aliases and needs no run-time overlap checks (restrict on struct members would be
// ignored). The state stays in L1 (an entry's row loaded and stored once a step), the step's output
// in a register (ChannelLanes). kInRange: every |dt * a| of the path is known to be within
// kScanExpFastLimit, so the decays skip scan_exp's clamps.
template <bool kInRange, typename weight_t>
POSEMAMBA_ALWAYS_INLINE void scan_path_block(
    const weight_t* POSEMAMBA_RESTRICT dt_all, const weight_t* POSEMAMBA_RESTRICT v_all,
    const weight_t* POSEMAMBA_RESTRICT B, const weight_t* POSEMAMBA_RESTRICT C,
    const weight_t* POSEMAMBA_RESTRICT A, const weight_t* POSEMAMBA_RESTRICT D,
    const int64_t* POSEMAMBA_RESTRICT order, int64_t seqlen, int64_t d_state, weight_t* POSEMAMBA_RESTRICT y,
    weight_t* POSEMAMBA_RESTRICT saved_states) {
  constexpr int64_t W = kCpuChannelBlock;
  const int64_t N = d_state;
  weight_t h[kMaxStateDim * W];
  for (int64_t i = 0; i < N * W; ++i) h[i] = weight_t(0);
  for (int64_t s = 0; s < seqlen; ++s) {
    if (saved_states != nullptr && s % kScanChunk == 0) {
      weight_t* saved = saved_states + (s / kScanChunk) * N * W;
      for (int64_t i = 0; i < N * W; ++i) saved[i] = h[i];
    }
    const int64_t l = order[s];
    const weight_t* dt = dt_all + l * W;
    const weight_t* v = v_all + l * W;
    weight_t dt_v[W], skip[W];
    for (int64_t w = 0; w < W; ++w) {
      dt_v[w] = dt[w] * v[w];
      skip[w] = D[w] * v[w];
    }
    ChannelLanes<weight_t> y_step;  // the step's output, summed over the state entries in registers
    load_lanes(y_step, skip);
    for (int64_t n = 0; n < N; ++n) {
      const weight_t b = B[l * N + n];
      weight_t* h_n = h + n * W;
      for (int64_t w = 0; w < W; ++w) {
        const weight_t decay = kInRange ? step_decay_in_range(dt[w], A[n * W + w]) : step_decay(dt[w], A[n * W + w]);
        h_n[w] = state_update<weight_t>(h_n[w], decay, dt_v[w], b);
      }
      add_scaled(y_step, C[l * N + n], h_n);
    }
    add_lanes_to(y + l * W, y_step);
  }
}

// The unclamped decays wherever max |dt| max |a| over the path allows (a NaN fails the test).
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void scan_path_block(const PathBlockScan<weight_t>& a) {
  constexpr int64_t W = kCpuChannelBlock;
  if (abs_max(a.dt, a.seqlen * W) * abs_max(a.A, a.d_state * W) <= weight_t(kScanExpFastLimit)) {
    scan_path_block<true>(a.dt, a.v, a.B, a.C, a.A, a.D, a.order, a.seqlen, a.d_state, a.y, a.saved_states);
  } else {
    scan_path_block<false>(a.dt, a.v, a.B, a.C, a.A, a.D, a.order, a.seqlen, a.d_state, a.y, a.saved_states);
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_path_block_scan(const PathBlockScan<float>& a) {
  scan_path_block(a);
}

void run_path_block_scan(const PathBlockScan<double>& a) {
  scan_path_block(a);
}

// dt (L, W) holds raw deltas; turns them into step sizes in place, bias (W) per channel.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void step_sizes_in_place(weight_t* POSEMAMBA_RESTRICT dt, const weight_t* POSEMAMBA_RESTRICT bias,
                                                 int64_t seqlen, bool use_softplus) {
  constexpr int64_t W = kCpuChannelBlock;
  for (int64_t l = 0; l < seqlen; ++l) {
    for (int64_t w = 0; w < W; ++w) dt[l * W + w] = step_size<weight_t>(dt[l * W + w], bias[w], use_softplus);
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_step_sizes(float* dt, const float* bias, int64_t seqlen, bool use_softplus) {
  step_sizes_in_place(dt, bias, seqlen, use_softplus);
}

void run_step_sizes(double* dt, const double* bias, int64_t seqlen, bool use_softplus) {
  step_sizes_in_place(dt, bias, seqlen, use_softplus);
}

// z (L) becomes the gated output y * silu(z) in place.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void gate_in_place(const weight_t* POSEMAMBA_RESTRICT y, weight_t* POSEMAMBA_RESTRICT z,
                                           int64_t seqlen) {
  for (int64_t l = 0; l < seqlen; ++l) z[l] = gate_output<weight_t>(y[l], z[l]);
}

POSEMAMBA_CPU_MULTIVERSION void run_gate(const float* y, float* z, int64_t seqlen) {
  gate_in_place(y, z, seqlen);
}

void run_gate(const double* y, double* z, int64_t seqlen) {
  gate_in_place(y, z, seqlen);
}

template <typename input_t>
void multi_path_scan_fwd_kernel(const MultiPathScanParams& p, const at::Tensor& B_by_position,
                                const at::Tensor& C_by_position) {
  using weight_t = at::opmath_type<input_t>;
  constexpr int64_t W = kCpuChannelBlock;
  const int64_t L = p.seqlen, N = p.d_state;
  const int64_t n_blocks = num_channel_blocks(p.dim);
  const weight_t* B_pos = B_by_position.const_data_ptr<weight_t>();
  const weight_t* C_pos = C_by_position.const_data_ptr<weight_t>();

  at::parallel_for(0, p.batch * n_blocks, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<weight_t> scratch(5 * L * W + p.n_chunks * N * W + N * W + 2 * W);
    weight_t* u_block = scratch.data();
    weight_t* v_mixed = u_block + L * W;
    weight_t* dt = v_mixed + L * W;
    weight_t* y = dt + L * W;
    weight_t* y_gated = y + L * W;
    weight_t* saved = y_gated + L * W;
    weight_t* A_block = saved + p.n_chunks * N * W;
    weight_t* D_block = A_block + N * W;
    weight_t* bias_block = D_block + W;
    LowRankStepSizes<weight_t> low_rank;

    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = task / n_blocks, d_begin = (task % n_blocks) * W;
      const int64_t width = std::min(W, p.dim - d_begin);
      const int64_t element = b * p.dim * L;  // the batch element's start in every (batch, D, L) tensor
      gather_activation_block(static_cast<const input_t*>(p.u) + element, p.u_channels_last, p.dim, d_begin, width,
                              L, u_block);
      std::fill(y, y + L * W, weight_t(0));
      for (int64_t path = 0; path < p.n_paths; ++path) {
        const int64_t batch_path = b * p.n_paths + path;
        path_weights(static_cast<const weight_t*>(p.A) + path * p.dim * N,
                     p.D ? static_cast<const weight_t*>(p.D) + path * p.dim : nullptr,
                     p.delta_bias ? static_cast<const weight_t*>(p.delta_bias) + path * p.dim : nullptr,
                     d_begin, width, N, A_block, D_block, bias_block);
        raw_step_sizes<input_t>(p, b, path, d_begin, width, low_rank, dt);
        run_step_sizes(dt, bias_block, L, p.delta_softplus);
        const PathBlockScan<weight_t> scan{
            dt, path_inputs(u_block, p.mix ? p.mix + path * L : nullptr, L, v_mixed),
            B_pos + batch_path * L * N, C_pos + batch_path * L * N, A_block, D_block,
            p.paths + path * L, L, N, y, p.chunk_states ? saved : nullptr};
        run_path_block_scan(scan);

        // (chunk, state entry) rows of channels, as saved: the block's channels of each row.
        if (p.chunk_states) {
          weight_t* path_states = static_cast<weight_t*>(p.chunk_states) + batch_path * p.n_chunks * N * p.dim;
          for (int64_t i = 0; i < p.n_chunks * N; ++i) {
            copy_channels(saved + i * W, width, path_states + i * p.dim + d_begin);
          }
        }
      }

      // The gate over the block (vectorised across it), then out in its layout: (batch, D, L) rows or
      // channels-last; the ungated output, kept for the backward, as rows.
      weight_t* gated = y_gated;
      if (p.z) {
        gather_activation_block(static_cast<const input_t*>(p.z) + element, p.z_channels_last, p.dim, d_begin, width,
                                L, gated);
        run_gate(y, gated, L * W);
        if (p.out_ungated) scatter_channel_block(y, d_begin, width, L, static_cast<input_t*>(p.out_ungated) + element);
      }
      scatter_activation_block(p.z ? gated : y, p.out_channels_last, p.dim, d_begin, width, L,
                               static_cast<input_t*>(p.out) + element);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_path_scan_fwd_cpu(
    const at::Tensor& u,
    const at::Tensor& delta,
    const at::Tensor& A,
    const at::Tensor& B,
    const at::Tensor& C,
    const at::Tensor& paths,
    const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix,
    bool delta_softplus,
    at::IntArrayRef span_lengths,  // hints for GPUs' work split only
    bool save_for_backward,
    const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_out) {
  ScanForward f = prepare_scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths,
                                       save_for_backward, delta_proj_weight, channels_last_out, kCpuKernels);
  check_scan_indices_on_host(f.inputs, f.params.seqlen);
  const at::Tensor B_by_position = transpose_to_positions_major(f.inputs.B, A.scalar_type());
  const at::Tensor C_by_position = transpose_to_positions_major(f.inputs.C, A.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_fwd_cpu", [&] {
    multi_path_scan_fwd_kernel<scalar_t>(f.params, B_by_position, C_by_position);
  });
  return {f.out, f.out_ungated, f.chunk_states};
}

}  // namespace

TORCH_LIBRARY_IMPL(posemamba, CPU, m) {
  m.impl("multi_path_scan_fwd", &multi_path_scan_fwd_cpu);
}

}  // namespace posemamba
