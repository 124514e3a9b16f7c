// The CUDA backward's chunked split for mamba's low-rank step sizes, for every input dtype: a .cu of its
// own, so that ninja compiles it alongside scan_backward_cuda.cu.
#include "scan_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_LOW_RANK_BACKWARD(T)                                                     \
  template void run_chunked_backward<T, true>(const MultiPathScanBwdParams&, const at::TensorOptions&, \
                                              at::opmath_type<T>*);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_LOW_RANK_BACKWARD)

}  // namespace cuda
}  // namespace posemamba
