// The CUDA backward's warp split for full step sizes, for every input dtype (explicit instantiations of
// run_warp_spans_backward, which scan_cuda.h declares for the backward's launches): a .cu of its own, so
// that ninja compiles it alongside the other kernels (the low-rank one's is
// scan_warp_spans_backward_low_rank_cuda.cu).
#include "scan_warp_spans_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_WARP_BACKWARD(T)                                                    \
  template void run_warp_spans_backward<T, false>(const MultiPathScanBwdParams&, int64_t,         \
                                                  const at::TensorOptions&, at::opmath_type<T>*);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_WARP_BACKWARD)

}  // namespace cuda
}  // namespace posemamba
