// The CUDA forward and backward, by input dtype. The templates are defined with their kernels in
// scan_forward_cuda.cuh and scan_backward_cuda.cuh and instantiated for every dtype in
// scan_forward_cuda.cu and scan_backward_cuda.cu, the only files nvcc compiles; this header is all
// the files that call them need, so those compile as plain C++ (and nvcc's per-architecture passes
// never parse the op registration's headers).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

#include "../multi_path_scan_host.h"

namespace posemamba {
namespace cuda {

// A warp's lanes are 32 channels walking the same path in step: B and C loads are the same address
// for the whole warp, and the backward sums its channels' dB and dC contributions (the channel block
// of its partials) across the warp.
constexpr int kWarp = 32;

// The longest path the kernels take: 2^26 positions, so that a position within a block's 32 rows of
// channels (and within N <= 64 rows of B or C) is a 32-bit offset, one instruction of address
// arithmetic where a 64-bit one takes several. Checked once per op call, for all the kernels.
constexpr int64_t kMaxLength = int64_t{1} << 26;

// The gradients through the low-rank step sizes' projection taken on the host, from the full ddelta;
// the (batch, D, L) tensors contiguous (a channels-last out copied from the kernels').
constexpr KernelTraits kCudaKernels{/*sums_delta_projection_gradients=*/false, /*channels_last_activations=*/false,
                                   /*lays_out_B_C=*/false};

inline void check_length(int64_t seqlen) {
  TORCH_CHECK(seqlen <= kMaxLength, "u: the CUDA kernels take L of at most 2^26 = ", kMaxLength, ", got ", seqlen);
}

// Run on prepared inputs of input dtype scalar_t, on the current device and stream, filling the
// outputs (the backward also the sums of its partials).
template <typename scalar_t>
void run_scan_forward_as(ScanForward& f);
template <typename scalar_t>
void run_scan_backward_as(ScanBackward& g);

// The backward's warp split (scan_warp_spans_backward_cuda.cuh, compiled in a .cu of its own): its
// passes over spans of span_length steps of p's split_paths, into their rows of ddelta, of the per-path
// workspace dv_paths and of p's partials; weights: the options of the float workspaces.
template <typename scalar_t>
void run_warp_spans_backward(const MultiPathScanBwdParams& p, int64_t span_length, const at::TensorOptions& weights,
                             at::opmath_type<scalar_t>* dv_paths);

// The ops' CUDA implementations on the current device, without its guard: inputs prepared with the
// CUDA work split (dB/dC partials per warp of channels, dA/dD/ddelta_bias partials per span and warp), the
// dtype's kernels run, outputs collected. scan_cuda_ops.cpp registers them behind a device guard; the
// emulation tests (../emulation/) call them directly.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const at::Tensor& paths, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& mix, bool delta_softplus,
    at::IntArrayRef span_lengths, bool save_for_backward, const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_out) {
  ScanForward f = prepare_scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths,
                                       save_for_backward, delta_proj_weight, channels_last_out, kCudaKernels);
  check_length(f.params.seqlen);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_fwd_cuda",
                                  [&] { run_scan_forward_as<scalar_t>(f); });
  return {channels_last_out ? to_channels_last(f.out) : f.out, f.out_ungated, f.chunk_states};
}

inline ScanGradients scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus, at::IntArrayRef span_lengths, const std::optional<at::Tensor>& delta_proj_weight) {
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                         chunk_states, delta_softplus, span_lengths, delta_proj_weight,
                                         kCudaKernels, kWarp, /*positions_minor=*/true);
  check_length(g.params.seqlen);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_bwd_cuda",
                                  [&] { run_scan_backward_as<scalar_t>(g); });
  return finish_scan_backward(g);
}

}  // namespace cuda
}  // namespace posemamba
