// Host-side preparation shared by the CPU and CUDA implementations: checks that keep the kernels
// memory-safe, contiguous copies where needed, output allocation, and the params struct.
// (Argument errors a user should see first, with their expected shapes, are raised in
// posemamba/_checks.py; these checks guard direct calls of the op.)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "multi_path_scan.h"

namespace posemamba {

struct ScanForwardTensors {
  // Contiguous inputs (kept alive for the kernel) and the outputs.
  at::Tensor u, delta, A, B, C, D, z, delta_bias, paths, mix;
  at::Tensor out, out_ungated, chunk_states;
  MultiPathScanParams params;
};

ScanForwardTensors prepare_scan_forward(
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
    bool delta_softplus);

// Checks on the values of paths and mix (every index in range) that need them on the host.
void check_scan_indices_on_host(const at::Tensor& paths, const at::Tensor& mix, int64_t seqlen);

}  // namespace posemamba
