// The CUDA forward for every input dtype (explicit instantiations of run_scan_forward_as, which scan_cuda.h
// declares for the plain C++ that dispatches to them), with the scan kernels for full step sizes; the
// low-rank ones are scan_forward_low_rank_cuda.cu's.
#include "scan_forward_cuda.cuh"

namespace posemamba {
namespace cuda {

#define POSEMAMBA_INSTANTIATE_FORWARD(T)                                                                         \
  extern template void run_split_forward<T, true>(const MultiPathScanParams&, int64_t, const at::TensorOptions&, \
                                                  at::opmath_type<T>*);                                          \
  template void run_scan_forward_as<T>(ScanForward&);
POSEMAMBA_CUDA_INPUT_DTYPES(POSEMAMBA_INSTANTIATE_FORWARD)

}  // namespace cuda
}  // namespace posemamba
