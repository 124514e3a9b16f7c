// The CUDA kernels compiled for the host and run by simt_emulation.h, as a small Python module for
// tests/test_cuda_emulation.py (built there with torch.utils.cpp_extension.load, never installed).
// Its functions take CPU tensors and behave as the CUDA implementations of the posemamba:: ops (which
// leave the index checks to device asserts, as these do); simt_selftest runs the emulation's own
// test kernels (simt_selftest.h).
#include <torch/extension.h>

#include "../cuda/scan_backward_cuda.cuh"
#include "../cuda/scan_forward_cuda.cuh"
#include "simt_selftest.h"

namespace posemamba {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulated_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const at::Tensor& paths, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& mix, bool delta_softplus) {
  ScanForward f = prepare_scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus);
  cuda::run_scan_forward(f);
  return {f.out, f.out_ungated, f.chunk_states};
}

ScanGradients emulated_scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus) {
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                         chunk_states, delta_softplus, cuda::kWarp,
                                         /*partials_per_chunk=*/true);
  cuda::run_scan_backward(g);
  return finish_scan_backward(g);
}

}  // namespace
}  // namespace posemamba

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("multi_path_scan_fwd", &posemamba::emulated_scan_forward,
        "posemamba::multi_path_scan_fwd by the CUDA kernels, emulated on the host");
  m.def("multi_path_scan_bwd", &posemamba::emulated_scan_backward,
        "posemamba::multi_path_scan_bwd by the CUDA kernels, emulated on the host");
  m.def("simt_selftest", &posemamba::simt_selftest::run, "runs one of the emulation's own test kernels");
}
