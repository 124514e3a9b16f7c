// The CUDA forward kernels, for every input dtype (explicit instantiations of run_scan_forward_as, which
// scan_cuda.h declares for the plain C++ that dispatches to them).
#include "scan_forward_cuda.cuh"

namespace posemamba {
namespace cuda {

template void run_scan_forward_as<double>(ScanForward&);
template void run_scan_forward_as<float>(ScanForward&);
template void run_scan_forward_as<c10::Half>(ScanForward&);
template void run_scan_forward_as<c10::BFloat16>(ScanForward&);

}  // namespace cuda
}  // namespace posemamba
