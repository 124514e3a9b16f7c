// The CUDA implementation of posemamba::multi_path_scan_bwd (kernels: scan_backward_cuda.cuh).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "scan_backward_cuda.cuh"

namespace posemamba {
namespace cuda {
namespace {

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
    bool delta_softplus) {
  const c10::cuda::CUDAGuard device_guard(u.device());
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                         chunk_states, delta_softplus, kWarp,
                                         /*partials_per_chunk=*/true);
  run_scan_backward(g);
  return finish_scan_backward(g);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(posemamba, CUDA, m) {
  m.impl("multi_path_scan_bwd", &cuda::multi_path_scan_bwd_cuda);
}

}  // namespace posemamba
