// The CUDA backward's warp split for mamba's low-rank step sizes, for every input dtype: a .cu of its
// own, so that ninja compiles it alongside the other kernels.
#include "scan_warp_spans_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_LOW_RANK_WARP_BACKWARD(T)                                          \
  template void run_warp_spans_backward<T, true>(const MultiPathScanBwdParams&, int64_t,         \
                                                 const at::TensorOptions&, at::opmath_type<T>*);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_LOW_RANK_WARP_BACKWARD)

}  // namespace cuda
}  // namespace posemamba
