// Registers the CUDA implementations of posemamba::multi_path_scan_fwd and multi_path_scan_bwd
// (scan_cuda_ops.h) behind a device guard. Plain C++: the kernels are compiled in the .cu files.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "scan_cuda_ops.h"

namespace posemamba {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_path_scan_fwd_cuda(
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
    at::IntArrayRef span_lengths,
    bool save_for_backward,
    const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_out) {
  const c10::cuda::CUDAGuard device_guard(u.device());
  return scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths,
                      save_for_backward, delta_proj_weight, channels_last_out);
}

ScanGradients multi_path_scan_bwd_cuda(
    const at::Tensor& grad_out,
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
    const at::Tensor& out_ungated,
    const at::Tensor& chunk_states,
    bool delta_softplus,
    at::IntArrayRef span_lengths,
    const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_du,
    bool channels_last_dz) {
  const c10::cuda::CUDAGuard device_guard(u.device());
  return scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states,
                       delta_softplus, span_lengths, delta_proj_weight, channels_last_du, channels_last_dz);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(posemamba, CUDA, m) {
  m.impl("multi_path_scan_fwd", &cuda::multi_path_scan_fwd_cuda);
  m.impl("multi_path_scan_bwd", &cuda::multi_path_scan_bwd_cuda);
}

}  // namespace posemamba
