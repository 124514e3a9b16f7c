// The one definition of the fused multi-path selective scan's arithmetic.
//
// Both the C++ CPU kernels and the CUDA kernels include this header: the per-step math lives here as
// C10_HOST_DEVICE inline functions (host+device under nvcc, plain inline under g++), so the CPU tests
// exercise the exact formulas the GPU runs. Kernels only index, split the work and launch.
//
// Semantics, per batch b, channel d, path p, with the state h (N entries) starting at zero and
// s = 0..L-1 walking the path's positions l = paths[p, s]:
//   dt = softplus(delta[b,p,d,l] + delta_bias[p,d])            (softplus only if delta_softplus)
//   v  = u[b,d,l] + (mix[p,l] >= 0 ? u[b,d,mix[p,l]] : 0)
//   h  = exp(dt * A[p,d,:]) * h + dt * v * B[b,p,:,l]
//   y[b,d,l] += sum_n C[b,p,n,l] * h[n] + D[p,d] * v
// and finally out = y * silu(z) when z is given.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace posemamba {

// Limits shared by every kernel (the CUDA kernels size shared memory and registers by them).
constexpr int64_t kMaxPaths = 8;
constexpr int64_t kMaxStateDim = 64;
// Steps between saved states: the backward recomputes each chunk from its saved start state, so
// memory is (batch, P, D, L / kScanChunk, N) instead of every step's (batch, P, D, L, N).
constexpr int64_t kScanChunk = 64;
// Channels per backward task: dB and dC sum over channels, so each block of channels writes its own
// partial and a fixed-order pass adds the blocks. Fixed by the shapes, never by the thread count.
constexpr int64_t kChannelBlock = 16;

inline int64_t num_scan_chunks(int64_t seqlen) {
  return (seqlen + kScanChunk - 1) / kScanChunk;
}

// Everything a kernel needs, for CPU and CUDA alike. All tensors are contiguous in the layouts
// below; element pointers are typed by the kernel (input_t for u/delta/B/C/z/out, weight_t =
// float, or double for float64 inputs, for A/D/delta_bias and the saved states).
struct MultiPathScanParams {
  int64_t batch = 0;
  int64_t dim = 0;      // D: channels
  int64_t n_paths = 0;  // P
  int64_t d_state = 0;  // N
  int64_t seqlen = 0;   // L
  int64_t n_chunks = 0;
  bool delta_softplus = true;

  const void* u = nullptr;           // (batch, D, L)
  const void* delta = nullptr;       // (batch, P, D, L)
  const void* A = nullptr;           // (P, D, N)
  const void* B = nullptr;           // (batch, P, N, L)
  const void* C = nullptr;           // (batch, P, N, L)
  const void* D = nullptr;           // (P, D) or null
  const void* z = nullptr;           // (batch, D, L) or null
  const void* delta_bias = nullptr;  // (P, D) or null
  const int64_t* paths = nullptr;    // (P, L), each row a permutation of range(L)
  const int64_t* mix = nullptr;      // (P, L), -1 or a position; or null

  // Written by the forward, read by the backward.
  void* out = nullptr;           // (batch, D, L)
  void* out_ungated = nullptr;   // (batch, D, L) y before the z gate; null when z is null
  void* chunk_states = nullptr;  // (batch, P, D, n_chunks, N) state before each chunk's first step
};

// The backward's extra pointers: the incoming gradient, the gradients it writes (same layouts and
// dtypes as their inputs; null where the input is absent), and the per-task partial sums that a second,
// fixed-order pass reduces, so that results never depend on thread counts or scheduling.
struct MultiPathScanBwdParams : MultiPathScanParams {
  int64_t n_channel_blocks = 0;

  const void* grad_out = nullptr;  // (batch, D, L)
  void* du = nullptr;
  void* ddelta = nullptr;
  void* dz = nullptr;
  void* dB_partial = nullptr;      // (batch, n_channel_blocks, P, N, L) weight_t
  void* dC_partial = nullptr;      // (batch, n_channel_blocks, P, N, L) weight_t
  void* dA_partial = nullptr;      // (batch, P, D, N) weight_t
  void* dD_partial = nullptr;      // (batch, P, D) weight_t
  void* ddelta_bias_partial = nullptr;  // (batch, P, D) weight_t
};

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// torch.nn.functional.softplus with its default threshold: above 20 it returns x itself.
template <typename T>
C10_HOST_DEVICE inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
C10_HOST_DEVICE inline T silu(T x) {
  return x * sigmoid(x);
}

// d silu(x) / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x))).
template <typename T>
C10_HOST_DEVICE inline T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// The discretised step size dt from the raw delta and its bias.
template <typename T>
C10_HOST_DEVICE inline T step_size(T raw_delta, T bias, bool use_softplus) {
  const T x = raw_delta + bias;
  return use_softplus ? softplus(x) : x;
}

// d dt / d (raw_delta + bias): sigmoid under softplus (1 above its threshold), else 1.
template <typename T>
C10_HOST_DEVICE inline T step_size_grad(T raw_delta, T bias, bool use_softplus) {
  const T x = raw_delta + bias;
  return use_softplus && x <= T(20) ? sigmoid(x) : T(1);
}

// The discretised state decay exp(dt * a) of one state entry (a = A[p, d, n]).
template <typename T>
C10_HOST_DEVICE inline T step_decay(T dt, T a) {
  return std::exp(dt * a);
}

// One state entry's update: h <- exp(dt * a) * h + dt * v * b, with decay = step_decay(dt, a).
template <typename T>
C10_HOST_DEVICE inline T state_update(T h, T decay, T dt_v, T b) {
  return decay * h + dt_v * b;
}

// The gradients of one step of one state entry, h = exp(dt * a) * h_prev + dt_v * b, given dh (the
// gradient reaching h). Adds into the gradients of dt, a, v's drive and b; returns the gradient that
// flows on to h_prev.
template <typename T>
C10_HOST_DEVICE inline T state_update_backward(
    T dh, T h_prev, T decay, T dt, T a, T dt_v, T b, T& d_dt, T& d_a, T& d_dt_v, T& d_b) {
  const T dh_decay_h_prev = dh * decay * h_prev;
  d_dt += dh_decay_h_prev * a;
  d_a += dh_decay_h_prev * dt;
  d_dt_v += dh * b;
  d_b += dh * dt_v;
  return dh * decay;
}

// The gate applied to the summed paths' output.
template <typename T>
C10_HOST_DEVICE inline T gate_output(T y, T z) {
  return y * silu(z);
}

}  // namespace posemamba
