// Host-side preparation shared by the CPU and CUDA implementations: checks that keep the kernels
// memory-safe, contiguous copies where needed, output allocation, and the params structs.
// (The errors a user sees first, with the expected shapes spelled out, are raised in
// posemamba/_checks.py; these checks guard direct calls of the ops.)
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "multi_path_scan.h"

namespace posemamba {

// Contiguous inputs, kept alive while a kernel reads them through params' pointers.
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias, paths, mix;
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
  MultiPathScanBwdParams params;
};

ScanForward prepare_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, bool delta_softplus);

ScanBackward prepare_scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus, int64_t channel_block);

// Checks on the values of paths and mix (every index in range) that need them on the host.
void check_scan_indices_on_host(const ScanInputs& inputs, int64_t seqlen);

}  // namespace posemamba
