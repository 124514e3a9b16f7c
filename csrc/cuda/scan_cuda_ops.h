// The ops' CUDA implementations (scan_forward, scan_backward), for the files that call them: the op
// registration (scan_cuda_ops.cpp) and the emulation tests' module (../emulation/). Apart from
// scan_cuda.h so that the kernels' .cu files, which include that, instantiate only the templates each
// names (these functions' dispatch would instantiate every dtype's launches wherever they are defined).
#pragma once

#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "scan_cuda.h"

namespace posemamba {
namespace cuda {

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
  return {f.out, f.out_ungated, f.chunk_states};
}

inline ScanGradients scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus, at::IntArrayRef span_lengths, const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_du, bool channels_last_dz) {
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                         chunk_states, delta_softplus, span_lengths, delta_proj_weight,
                                         channels_last_du, channels_last_dz, kCudaKernels, kWarp, /*positions_minor=*/true);
  check_length(g.params.seqlen);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_bwd_cuda",
                                  [&] { run_scan_backward_as<scalar_t>(g); });
  return finish_scan_backward(g);
}

}  // namespace cuda
}  // namespace posemamba
