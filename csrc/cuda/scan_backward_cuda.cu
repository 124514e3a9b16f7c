// The CUDA backward kernels, for every input dtype (explicit instantiations of run_scan_backward_as, which
// scan_cuda.h declares for the plain C++ that dispatches to them).
#include "scan_backward_cuda.cuh"

namespace posemamba {
namespace cuda {

template void run_scan_backward_as<double>(ScanBackward&);
template void run_scan_backward_as<float>(ScanBackward&);
template void run_scan_backward_as<c10::Half>(ScanBackward&);
template void run_scan_backward_as<c10::BFloat16>(ScanBackward&);

}  // namespace cuda
}  // namespace posemamba
