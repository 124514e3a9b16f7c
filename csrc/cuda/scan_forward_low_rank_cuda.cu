// The CUDA forward's scan kernels for mamba's low-rank step sizes, for every input dtype: a .cu of their
// own, so that ninja compiles them alongside scan_forward_cuda.cu.
#include "scan_forward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_LOW_RANK_FORWARD(T)                                                         \
  template void run_split_forward<T, true>(const MultiPathScanParams&, int64_t, const at::TensorOptions&, \
                                           at::opmath_type<T>*);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_LOW_RANK_FORWARD)

}  // namespace cuda
}  // namespace posemamba
