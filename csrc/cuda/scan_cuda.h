// The CUDA forward and backward, by input dtype, and their launches by work split. The templates are
// defined with their kernels in the .cuh files and instantiated for every dtype in the .cu files, the
// only files nvcc compiles; this header (and scan_cuda_ops.h) is all the files that call them need, so
// those compile as plain C++ (and nvcc's per-architecture passes never parse the op registration's
// headers).
#pragma once

#include <ATen/OpMathType.h>

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
// B, C and the low-rank delta read in their strides; du and dz written channels-last where asked (the
// merge's tiles).
constexpr KernelTraits kCudaKernels{/*sums_delta_projection_gradients=*/false, /*lays_out_B_C=*/false,
                                   /*writes_input_grads_channels_last=*/true};

inline void check_length(int64_t seqlen) {
  TORCH_CHECK(seqlen <= kMaxLength, "u: the CUDA kernels take L of at most 2^26 = ", kMaxLength, ", got ", seqlen);
}

// Applies MACRO to every input dtype the kernels take: the .cu files' explicit instantiations.
#define POSEMAMBA_CUDA_INPUT_DTYPES(MACRO) MACRO(double) MACRO(float) MACRO(c10::Half) MACRO(c10::BFloat16)

// Run on prepared inputs of input dtype scalar_t, on the current device and stream, filling the
// outputs (the backward also the sums of its partials).
template <typename scalar_t>
void run_scan_forward_as(ScanForward& f);
template <typename scalar_t>
void run_scan_backward_as(ScanBackward& g);

// The launches of one work split over p's split_paths (span_length 0: the chunked split; else the warp
// split's spans), for kernels that take full step sizes or (kLowRank) mamba's low-rank ones. Each
// kLowRank's are instantiated in .cu files of their own (scan_*_cuda.cu, scan_*_low_rank_cuda.cu), which
// ninja compiles in parallel. weights: the options of the float workspaces.
// The forward's, into their rows of the per-path outputs y_paths and of the saved chunk_states.
template <typename scalar_t, bool kLowRank>
void run_split_forward(const MultiPathScanParams& p, int64_t span_length, const at::TensorOptions& weights,
                       at::opmath_type<scalar_t>* y_paths);
// The backward's, into their rows of ddelta, of the per-path input gradients dv_paths and of p's partials:
// the chunked split's (scan_backward_cuda.cuh) and the warp split's (scan_warp_spans_backward_cuda.cuh).
template <typename scalar_t, bool kLowRank>
void run_chunked_backward(const MultiPathScanBwdParams& p, const at::TensorOptions& weights,
                          at::opmath_type<scalar_t>* dv_paths);
template <typename scalar_t, bool kLowRank>
void run_warp_spans_backward(const MultiPathScanBwdParams& p, int64_t span_length, const at::TensorOptions& weights,
                             at::opmath_type<scalar_t>* dv_paths);

}  // namespace cuda
}  // namespace posemamba
