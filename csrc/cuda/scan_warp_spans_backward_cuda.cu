// The CUDA backward's warp split, for every input dtype (explicit instantiations of
// run_warp_spans_backward, which scan_cuda.h declares for the chunked backward's launches): a .cu of
// its own, so that ninja compiles it alongside the other kernels.
#include "scan_warp_spans_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

template void run_warp_spans_backward<double>(const MultiPathScanBwdParams&, int64_t,
                                              const at::TensorOptions&, double*);
template void run_warp_spans_backward<float>(const MultiPathScanBwdParams&, int64_t,
                                             const at::TensorOptions&, float*);
template void run_warp_spans_backward<c10::Half>(const MultiPathScanBwdParams&, int64_t,
                                                 const at::TensorOptions&, float*);
template void run_warp_spans_backward<c10::BFloat16>(const MultiPathScanBwdParams&, int64_t,
                                                     const at::TensorOptions&, float*);

}  // namespace cuda
}  // namespace posemamba
