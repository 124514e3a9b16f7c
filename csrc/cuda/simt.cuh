// The pieces of the CUDA programming model the kernels use: thread and block indices, barriers,
// warp shuffles, device asserts, streaming stores, opaque pointers, the device's multiprocessor count
// and kernel launches.
//
// Under nvcc they are CUDA's own. Compiled by a host C++ compiler they come from
// ../emulation/simt_emulation.h, which runs each thread block on host threads: that is how the CUDA
// kernels' indexing, work split, barriers and partial sums are tested on machines without a GPU
// (tests/test_cuda_emulation.py). Kernels must only use what this header provides.
#pragma once

#ifdef __CUDACC__

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <type_traits>
#include <utility>

#define POSEMAMBA_DEVICE_ASSERT(cond) CUDA_KERNEL_ASSERT(cond)

namespace posemamba {
namespace simt {

// The current device's streaming multiprocessors: how many blocks a launch needs to fill it.
inline int multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// *address = value, marked for eviction first (st.global.cs): for what a kernel writes once and a later
// kernel reads once (workspaces, partials, saved states), so that it does not push out of L2 the
// sectors the writing kernel reads again.
template <typename T>
__device__ __forceinline__ void store_streaming(T* address, T value) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    __stcs(address, value);
  } else {
    static_assert(sizeof(T) == sizeof(unsigned short), "store_streaming takes float, double and 16-bit types");
    unsigned short bits;
    std::memcpy(&bits, &value, sizeof(bits));
    __stcs(reinterpret_cast<unsigned short*>(address), bits);
  }
}

// The same pointer, hidden from the compiler's address arithmetic: for a base that a kernel takes once
// (a tile's row at its position) and indexes several times. Left alone, nvcc folds base + index back
// into the 64-bit sum of everything the base came from, redone for each load (about six instructions);
// from an opaque base each load's address is one wide multiply-add. Global memory only: the assumption
// keeps the accesses global (LDG, STG), which an opaque pointer would otherwise turn generic (LD, ST).
template <typename T>
__device__ __forceinline__ T* opaque_pointer(T* pointer) {
  asm("" : "+l"(pointer));
  __builtin_assume(__isGlobal(pointer));
  return pointer;
}

// kernel<<<grid, block, shared_bytes, current stream>>>(args...), then the launch checked.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  kernel<<<grid, block, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace simt
}  // namespace posemamba

#else

#include "../emulation/simt_emulation.h"

#endif
