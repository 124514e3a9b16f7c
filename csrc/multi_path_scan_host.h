// Host-side preparation shared by the CPU and CUDA implementations: checks that keep the kernels
// memory-safe, contiguous copies where needed, output allocation, and the params structs.
// (The errors a user sees first, with the expected shapes spelled out, are raised in
// posemamba/_checks.py; these checks guard direct calls of the ops.)
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "multi_path_scan.h"

namespace posemamba {

// The inputs, contiguous (u, z, B, C and the low-rank delta where the kernels take other layouts: as given),
// kept alive while a kernel reads them through params' pointers.
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias, paths, mix;
  at::Tensor delta_proj_weight;  // with low-rank step sizes (delta then the low-rank delta)
};

// What a device's kernels take, where the devices differ.
struct KernelTraits {
  // Every device's kernels project mamba's low-rank step sizes (delta_proj_weight) as they read them.
  // Whether their backward also takes the gradients through the projection (sums over channels and
  // positions, in partials); else it writes the full (batch, P, D, L) ddelta, from which the host takes
  // them by two matmuls.
  bool sums_delta_projection_gradients;
  // Whether they lay B and C out positions-major themselves, one copy from whatever strides they come in
  // (ScanInputs::B and C then as given, params' B and C null); else they read them, and the low-rank
  // delta, through params' projection strides: as given where those can describe them (views of one
  // projection's rows, say), else made contiguous by the host.
  bool lays_out_B_C;
  // Whether they write du and dz channels-last where the caller asks for them so; else they write
  // (batch, D, L) and the host copies.
  bool writes_input_grads_channels_last;
};

struct ScanForward {
  ScanInputs inputs;
  at::Tensor out, out_ungated, chunk_states;
  MultiPathScanParams params;
};

struct ScanBackward {
  ScanInputs inputs;
  at::Tensor grad_out, out_ungated, chunk_states;
  at::Tensor du, ddelta, dz, dB_partial, dC_partial, dA_partial, dD_partial, ddelta_bias_partial;
  // The sums of the partials: dB and dC in the partials' layout (PartialsLayout), dA by state entry,
  // (P, N, D), then dD and ddelta_bias.
  at::Tensor dB_sum, dC_sum, dA_by_state, dD, ddelta_bias;
  // Where the kernels take the projection's gradients, their partials and sums (d_delta_low_sum
  // (batch, P, R, L), d_delta_proj_weight (P, D, R)).
  at::Tensor d_delta_low_partial, d_delta_proj_weight_partial, d_delta_low_sum, d_delta_proj_weight;
  bool positions_minor = false;  // dB_sum and dC_sum are (batch, P, N, L), else (batch, P, L, N)
  bool channels_last_du = false, channels_last_dz = false;  // as the caller asks for them
  MultiPathScanBwdParams params;
};

// Adds each partial over its channel blocks or its batch and length blocks, in index order, into the
// ScanBackward's sums.
// sum(partial, n_outer, n_partials, count, out) is the device's fixed-order reduction:
// out[o, i] = sum over k of partial[o, k, i]. The dB and dC partials go through sum_channel_blocks,
// called the same way, which may also reorder their positions (a GPU's are in path order).
template <typename weight_t, typename SumChannelBlocks, typename SumPartials>
void reduce_backward_partials(ScanBackward& g, SumChannelBlocks&& sum_channel_blocks, SumPartials&& sum) {
  const MultiPathScanBwdParams& p = g.params;
  const int64_t path_block = p.n_paths * p.seqlen * p.d_state;
  sum_channel_blocks(g.dB_partial.const_data_ptr<weight_t>(), p.batch, p.n_channel_blocks, path_block,
                     g.dB_sum.mutable_data_ptr<weight_t>());
  sum_channel_blocks(g.dC_partial.const_data_ptr<weight_t>(), p.batch, p.n_channel_blocks, path_block,
                     g.dC_sum.mutable_data_ptr<weight_t>());
  const int64_t n_partials = p.batch * p.n_length_blocks;
  sum(g.dA_partial.const_data_ptr<weight_t>(), 1, n_partials, g.dA_by_state.numel(),
      g.dA_by_state.mutable_data_ptr<weight_t>());
  sum(g.dD_partial.const_data_ptr<weight_t>(), 1, n_partials, g.dD.numel(), g.dD.mutable_data_ptr<weight_t>());
  sum(g.ddelta_bias_partial.const_data_ptr<weight_t>(), 1, n_partials, g.ddelta_bias.numel(),
      g.ddelta_bias.mutable_data_ptr<weight_t>());
  if (g.d_delta_low_partial.defined()) {
    sum_channel_blocks(g.d_delta_low_partial.const_data_ptr<weight_t>(), p.batch, p.n_channel_blocks,
                       p.n_paths * p.seqlen * p.delta_rank, g.d_delta_low_sum.mutable_data_ptr<weight_t>());
    sum(g.d_delta_proj_weight_partial.const_data_ptr<weight_t>(), 1, n_partials, g.d_delta_proj_weight.numel(),
        g.d_delta_proj_weight.mutable_data_ptr<weight_t>());
  }
}

using ScanGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor>;

// The op's outputs (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, ddelta_proj_weight) once the partials
// are reduced; ddelta is the low-rank delta's gradient where delta_proj_weight was given.
ScanGradients finish_scan_backward(const ScanBackward& g);

// The forward's params and outputs; without save_for_backward, out_ungated and chunk_states empty and
// their params pointers null (nothing kept for a backward).
ScanForward prepare_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, bool delta_softplus, at::IntArrayRef span_lengths,
    bool save_for_backward, const std::optional<at::Tensor>& delta_proj_weight, bool channels_last_out,
    const KernelTraits& kernels);

// channel_block: the channels summed into one dB/dC partial; the partials are laid out (batch,
// channel blocks, P, N, L) where positions_minor (a GPU's, whose threads write a path's consecutive
// steps, in path order), else (batch, channel blocks, P, L, N) (a CPU task writes a position's N
// entries). The dA, dD and
// ddelta_bias partials come from allocate_length_partials, once the device has chosen n_length_blocks.
ScanBackward prepare_scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus, at::IntArrayRef span_lengths, const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_du, bool channels_last_dz, const KernelTraits& kernels, int64_t channel_block,
    bool positions_minor);

// The dA, dD, ddelta_bias (and delta_proj_weight's) partials: n_length_blocks per batch element (MultiPathScanBwdParams),
// zero-filled where the kernels leave some unwritten (zeroed).
void allocate_length_partials(ScanBackward& g, int64_t n_length_blocks, bool zeroed);

// Checks on the values of paths and mix (every index in range) that need them on the host.
void check_scan_indices_on_host(const ScanInputs& inputs, int64_t seqlen);

}  // namespace posemamba
