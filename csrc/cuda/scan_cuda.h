// The CUDA forward and backward, by input dtype. The templates are defined with their kernels in
// scan_forward_cuda.cuh and scan_backward_cuda.cuh and instantiated for every dtype in
// scan_forward_cuda.cu and scan_backward_cuda.cu, the only files nvcc compiles; this header is all
// the files that call them need, so those compile as plain C++ (and nvcc's per-architecture passes
// never parse the op registration's headers).
#pragma once

#include <ATen/Dispatch.h>

#include "../multi_path_scan_host.h"

namespace posemamba {
namespace cuda {

// A warp's lanes are 32 channels walking the same path in step: B and C loads are the same address
// for the whole warp, and the backward sums its channels' dB and dC contributions (the channel block
// of its partials) across the warp.
constexpr int kWarp = 32;

// Run on prepared inputs of input dtype scalar_t, on the current device and stream, filling the
// outputs (the backward also the sums of its partials; it needs partials per chunk).
template <typename scalar_t>
void run_scan_forward_as(ScanForward& f);
template <typename scalar_t>
void run_scan_backward_as(ScanBackward& g);

inline void run_scan_forward(ScanForward& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.inputs.u.scalar_type(), "multi_path_scan_fwd_cuda",
                                  [&] { run_scan_forward_as<scalar_t>(f); });
}

inline void run_scan_backward(ScanBackward& g) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.inputs.u.scalar_type(), "multi_path_scan_bwd_cuda",
                                  [&] { run_scan_backward_as<scalar_t>(g); });
}

}  // namespace cuda
}  // namespace posemamba
