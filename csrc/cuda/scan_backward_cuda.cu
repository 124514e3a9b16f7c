// The CUDA backward for every input dtype (explicit instantiations of run_scan_backward_as, which
// scan_cuda.h declares for the plain C++ that dispatches to them), with the chunked split's kernels for
// full step sizes; the low-rank ones are scan_backward_low_rank_cuda.cu's, the warp split's
// scan_warp_spans_backward*_cuda.cu's.
#include "scan_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_BACKWARD(T)                                                                     \
  extern template void run_chunked_backward<T, true>(const MultiPathScanBwdParams&, const at::TensorOptions&, \
                                                     at::opmath_type<T>*);                                    \
  template void run_scan_backward_as<T>(ScanBackward&);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_BACKWARD)

}  // namespace cuda
}  // namespace posemamba
