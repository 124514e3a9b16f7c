// The CUDA implementation of posemamba::multi_path_scan_fwd (kernels: scan_forward_cuda.cuh).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "scan_forward_cuda.cuh"

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
    bool delta_softplus) {
  const c10::cuda::CUDAGuard device_guard(u.device());
  ScanForward f = prepare_scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus);
  run_scan_forward(f);
  return {f.out, f.out_ungated, f.chunk_states};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(posemamba, CUDA, m) {
  m.impl("multi_path_scan_fwd", &cuda::multi_path_scan_fwd_cuda);
}

}  // namespace posemamba
