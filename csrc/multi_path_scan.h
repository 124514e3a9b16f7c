// The one definition of the fused multi-path selective scan's arithmetic.
//
// Both the C++ CPU kernels and the CUDA kernels include this header: the per-step math lives here as
// C10_HOST_DEVICE inline functions (host+device under nvcc, plain functions under g++), so the CPU tests
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
#include <cstring>

// Every step function is forced inline: the CPU kernels' ISA-specific clones (cpu/cpu_dispatch.h)
// only vectorise what is inlined into them.
#define POSEMAMBA_MATH C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace posemamba {

// Limits shared by every kernel (the CUDA kernels size shared memory and registers by them).
constexpr int64_t kMaxPaths = 8;
constexpr int64_t kMaxStateDim = 64;
// Steps between saved states: the backward recomputes each chunk from its saved start state, so
// memory is (batch, P, L / kScanChunk, N, D) instead of every step's (batch, P, L, N, D).
constexpr int64_t kScanChunk = 64;
// The low-rank step sizes' ranks a CUDA warp reads at once (a tile's 32 lanes' worth).
constexpr int64_t kLowRankTile = 32;

inline int64_t num_scan_chunks(int64_t seqlen) {
  return (seqlen + kScanChunk - 1) / kScanChunk;
}

// Everything a kernel needs, for CPU and CUDA alike. All tensors are contiguous in the layouts
// below, B and C in the strides given; element pointers are typed by the kernel (input_t for
// u/delta/B/C/z/out, weight_t = float, or double for float64 inputs, for A/D/delta_bias and the saved
// states).
struct MultiPathScanParams {
  int64_t batch = 0;
  int64_t dim = 0;      // D: channels
  int64_t n_paths = 0;  // P
  int64_t d_state = 0;  // N
  int64_t seqlen = 0;   // L
  int64_t n_chunks = 0;
  bool delta_softplus = true;
  // Layouts of the (batch, D, L) tensors below: each of u, z, out and the backward's grad_out is
  // (batch, D, L) in memory, or channels-last, (batch, L, D) in memory (the transpose of a contiguous
  // (batch, L, D) tensor): every device's kernels read u, z and grad_out as they come (where a batch
  // element's offsets fit 32 bits; else the host makes them (batch, D, L)) and write out channels-last
  // where the caller asks. out_ungated, du and dz: (batch, D, L).
  bool u_channels_last = false;
  bool z_channels_last = false;
  bool out_channels_last = false;
  bool grad_out_channels_last = false;
  // Hints for the CUDA kernels' work split, never for the result: path p cut into spans of
  // span_lengths[p] steps (0: no hint). See the warp splits in csrc/cuda/scan_warp_split_cuda.cuh.
  int64_t span_lengths[kMaxPaths] = {};
  // The paths a CUDA launch takes, split_paths[0 .. n_split_paths) in increasing order: all P, or
  // those of one work split where the hints give the paths different splits (path_splits in
  // cuda/scan_warp_split_cuda.cuh).
  int64_t n_split_paths = 0;
  int8_t split_paths[kMaxPaths] = {};

  // Mamba's low-rank step sizes: where delta_rank R > 0, delta holds (batch, P, R, L) and the raw step
  // size of channel d is sum_r delta_proj_weight[p, d, r] * delta[b, p, r, l] (low_rank_step_size).
  int64_t delta_rank = 0;

  const void* u = nullptr;           // (batch, D, L)
  const void* delta = nullptr;       // (batch, P, D, L), or (batch, P, R, L) where delta_rank > 0
  const void* delta_proj_weight = nullptr;  // (P, D, R) input_t where delta_rank > 0, else null
  const void* A = nullptr;           // (P, D, N)
  const void* B = nullptr;           // (batch, P, N, L), in the strides below
  const void* C = nullptr;           // (batch, P, N, L), in the strides below
  const void* D = nullptr;           // (P, D) or null
  const void* z = nullptr;           // (batch, D, L) or null
  const void* delta_bias = nullptr;  // (P, D) or null
  const int64_t* paths = nullptr;    // (P, L), each row a permutation of range(L)
  const int64_t* mix = nullptr;      // (P, L), -1 or a position; or null
  // Where B and C are in memory (elements), for kernels that read them in strides (the CUDA kernels;
  // the CPU ones lay them out themselves): B[b, p, n, l] at B + b B_batch_stride + p B_path_stride +
  // n projection_entry_stride + l projection_position_stride, C's likewise with its own batch and path
  // strides, and the low-rank delta's (delta_rank > 0) with its own, its ranks strided as the entries:
  // a caller's layout (a model's projection rows, positions-major) is read as it is. Within a (batch,
  // path), (N - 1) entry stride + (L - 1) position stride < 2^32, and so for kLowRankTile ranks:
  // 32-bit offsets.
  int64_t B_batch_stride = 0, B_path_stride = 0, C_batch_stride = 0, C_path_stride = 0;
  int64_t delta_batch_stride = 0, delta_path_stride = 0;
  int64_t projection_entry_stride = 0, projection_position_stride = 0;

  // Written by the forward, read by the backward.
  void* out = nullptr;           // (batch, D, L)
  // Both null where the forward keeps nothing for a backward (save_for_backward false).
  void* out_ungated = nullptr;   // (batch, D, L) y before the z gate; null when z is null
  void* chunk_states = nullptr;  // (batch, P, n_chunks, N, D) state before each chunk's first step
};

// The backward's extra pointers: the incoming gradient, the gradients it writes (same layouts and
// dtypes as their inputs; null where the input is absent), and the per-task partial sums that a second,
// fixed-order pass reduces, so that results never depend on thread counts or scheduling.
struct MultiPathScanBwdParams : MultiPathScanParams {
  // dB and dC sum over channels: each block of channel_block channels writes its own partial and a
  // fixed-order pass adds the blocks. The block size is the device's (fixed by the shapes, never by
  // the thread count).
  int64_t channel_block = 0;
  int64_t n_channel_blocks = 0;
  // dA, dD and ddelta_bias sum over the batch and L: each batch element writes n_length_blocks
  // partials (one per stretch of the path a task covers) and the fixed-order pass adds them all.
  int64_t n_length_blocks = 0;

  // (batch, D, L), in either layout (grad_out_channels_last); z then in the same one (copied where it
  // came in the other): the gate's gradient reads them side by side.
  const void* grad_out = nullptr;
  // (batch, D, L), channels-last where du_channels_last, dz_channels_last (else contiguous): where the
  // caller asks for them so and the kernels write them so (KernelTraits::writes_input_grads_channels_last).
  void* du = nullptr;
  void* ddelta = nullptr;
  void* dz = nullptr;
  bool du_channels_last = false;
  bool dz_channels_last = false;
  // (batch, n_channel_blocks, P, L, N) weight_t on CPUs; (batch, n_channel_blocks, P, N, L) on GPUs,
  // each path's steps in path order
  void* dB_partial = nullptr;
  void* dC_partial = nullptr;
  void* dA_partial = nullptr;      // (batch, n_length_blocks, P, N, D) weight_t
  void* dD_partial = nullptr;      // (batch, n_length_blocks, P, D) weight_t
  void* ddelta_bias_partial = nullptr;  // (batch, n_length_blocks, P, D) weight_t
  // Where delta_rank > 0, ddelta is null: the low-rank delta's gradient sums over channels, in
  // partials per channel block as dB's, and delta_proj_weight's over the batch and L, as dD's.
  void* d_delta_low_partial = nullptr;  // (batch, n_channel_blocks, P, R, L) weight_t
  void* d_delta_proj_weight_partial = nullptr;  // (batch, n_length_blocks, P, D, R) weight_t
};

POSEMAMBA_MATH float bits_to_float(int32_t bits) {
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

POSEMAMBA_MATH int32_t float_to_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_int(value);
#else
  int32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

// exp for the scan's float math on the CPU (device_exp below on a GPU): the exps decide the scan's
// speed (one per state update), and a range-reduced polynomial without branches vectorises where a
// library call does not.
// x = k ln2 + r with |r| <= ln2/2 (ln2 split in two so k ln2 is exact), exp(r) by a degree-5
// polynomial 1 + r + r^2 q(r) with q fitted for least maximum relative error (two fewer FMAs than
// Cephes' degree 7, 11% off the forward here), times 2^k built in the exponent bits. Max relative
// error 1.5 ulp for x in [-86.6, 88.7] (tests/test_scan_math.py checks it against float64). The limits cost no selects: below about -87
// (results under 2^-125) the exponent saturates at zero and the result is 0 (denormals are flushed);
// above 88.72 the product overflows to +inf, like expf.
//
// kClamped = false leaves out the clamp and the saturation, which cost a quarter of a state update's
// instructions. For |x| <= kScanExpFastLimit that is scan_exp bit for bit (the clamp does not act and
// k >= -126 keeps the exponent field >= 0): the kernels take it for a scan step when |dt| max|a|
// bounds every |dt * a| of the step within the limit, which in practice is every step.
constexpr float kScanExpFastLimit = 87.0f;

template <bool kClamped>
POSEMAMBA_MATH float scan_exp_impl(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  // Clamped so that k stays in [-127, 130]: wide enough for the saturation and the overflow to act.
  const float clamped = kClamped ? (x > 89.5f ? 89.5f : (x < -88.0f ? -88.0f : x)) : x;
  // Round to nearest by the 1.5 * 2^23 trick: branch-free and exact for |k| < 2^22.
  const float kRound = 12582912.0f;
  const float k = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - k * kLn2Hi) - k * kLn2Lo;
  // 2 exp(r): the coefficients carry a factor 2 so that the scale 2^(k-1) stays a normal float for
  // every k whose result is a normal float.
  float p = 2 * 8.31252709031105e-3f;
  p = p * r + 2 * 4.189011827111244e-2f;
  p = p * r + 2 * 1.6667114198207855e-1f;
  p = p * r + 2 * 4.99992311000824e-1f;
  p = p * (r * r) + (r + r) + 2.0f;
  // 2^(k-1) in the exponent field: k - 1 + 127 saturated below at 0 (the float 0); 255 is +inf.
  const int32_t biased = static_cast<int32_t>(k) + 126;
  // Shifted as unsigned: a NaN x makes biased anything, and the result is NaN through p anyway.
  const uint32_t field = static_cast<uint32_t>(kClamped ? (biased > 0 ? biased : 0) : biased);
  return p * bits_to_float(static_cast<int32_t>(field << 23));
}

#ifdef __CUDA_ARCH__
// On a GPU the exp runs on the special-function unit instead: ex2.approx (about 2 ulp; -inf gives 0,
// results below 2^-126 flush to 0 as above, overflow gives +inf) of x log2(e), which rounds x log2(e)
// to float: relative error about 3 ulp for |x| < 10, growing to about 45 ulp near the limits. That is
// one instruction on a unit of its own in place of a dozen on the FMA pipes, which the scan's other
// arithmetic keeps busy (mamba's kernels take the same exp2 route).
constexpr float kDeviceLog2e = 1.44269504088896341f;

POSEMAMBA_MATH float device_exp2(float x) {
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
  return result;
}

POSEMAMBA_MATH float device_exp(float x) {
  return device_exp2(x * kDeviceLog2e);
}
#endif

POSEMAMBA_MATH float scan_exp(float x) {
#ifdef __CUDA_ARCH__
  return device_exp(x);
#else
  return scan_exp_impl<true>(x);
#endif
}

// scan_exp for |x| <= kScanExpFastLimit only (see scan_exp_impl).
POSEMAMBA_MATH float scan_exp_in_range(float x) {
#ifdef __CUDA_ARCH__
  return device_exp(x);
#else
  return scan_exp_impl<false>(x);
#endif
}

POSEMAMBA_MATH double scan_exp_in_range(double x) {
  return std::exp(x);
}

POSEMAMBA_MATH double scan_exp(double x) {
  return std::exp(x);
}

// log for the scan's float math, x > 0 and finite: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m)
// by Cephes' degree-9 polynomial in m - 1, plus e ln2 (split in two). Relative error <= 2 ulp.
POSEMAMBA_MATH float scan_log(float x) {
  const float kSqrtHalf = 0.707106781186547524f;
  const int32_t bits = float_to_bits(x);
  int32_t exponent = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // in [1/2, 1)
  const bool low = m < kSqrtHalf;
  exponent -= low ? 1 : 0;
  m = low ? m + m : m;
  const float f = m - 1.0f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float f2 = f * f;
  const float e = static_cast<float>(exponent);
  float y = f * f2 * p + e * -2.12194440e-4f - 0.5f * f2;
  return f + y + e * 0.693359375f;
}

// log1p for t > -1 from scan_log: log(u) * t / (u - 1) with u = 1 + t recovers the bits of t that
// rounding 1 + t loses (so tiny t gives t, not 0).
POSEMAMBA_MATH float scan_log1p(float t) {
  const float u = 1.0f + t;
  const float log_u = scan_log(u);
  return u == 1.0f ? t : log_u * (t / (u - 1.0f));
}

POSEMAMBA_MATH double scan_log1p(double t) {
  return std::log1p(t);
}

// 1 / x for the sigmoid's denominator, x in [1, +inf]. On a GPU the special-function unit's
// rcp.approx (at most 1 ulp; 1 / inf is 0, results below 2^-126 flush to 0 as the device exp's do):
// one instruction where IEEE division is about ten and a branch to its slow path, in each step of the
// backward kernels (the gate's silu, the softplus's derivative).
POSEMAMBA_MATH float sigmoid_reciprocal(float x) {
#ifdef __CUDA_ARCH__
  float result;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
  return result;
#else
  return 1.0f / x;
#endif
}

POSEMAMBA_MATH double sigmoid_reciprocal(double x) {
  return 1.0 / x;
}

template <typename T>
POSEMAMBA_MATH T sigmoid(T x) {
  return sigmoid_reciprocal(T(1) + scan_exp(-x));
}

// torch.nn.functional.softplus with its default threshold: above 20 it returns x itself. In float,
// as max(x, 0) + log1p(t) with t = exp(-|x|) in (0, 1], and log1p(t) = t q(t) with q a degree-9
// polynomial fitted to log1p(t) / t on [0, 1] (2.8 ulp): one exp and nine FMAs, a third cheaper
// than log1p(exp(x)) with its log and division. Measured max relative error: see test_scan_math.
POSEMAMBA_MATH float softplus(float x) {
  const float t = scan_exp(x < 0.0f ? x : -x);
  float q = -3.2140363473445177e-3f;
  q = q * t + 1.9649166613817215e-2f;
  q = q * t - 5.6435029953718185e-2f;
  q = q * t + 1.0533228516578674e-1f;
  q = q * t - 1.5251451730728150e-1f;
  q = q * t + 1.9651491940021515e-1f;
  q = q * t - 2.4947808682918549e-1f;
  q = q * t + 3.3329099416732790e-1f;
  q = q * t - 4.9999850988388060e-1f;
  q = q * t + 1.0f;
  const float positive_part = x > 0.0f ? x : 0.0f;
  return x > 20.0f ? x : positive_part + t * q;
}

POSEMAMBA_MATH double softplus(double x) {
  return x > 20.0 ? x : std::log1p(std::exp(x));
}

template <typename T>
POSEMAMBA_MATH T silu(T x) {
  return x * sigmoid(x);
}

// d silu(x) / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x))).
template <typename T>
POSEMAMBA_MATH T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// The discretised step size dt from the raw delta and its bias.
template <typename T>
POSEMAMBA_MATH T step_size(T raw_delta, T bias, bool use_softplus) {
  const T x = raw_delta + bias;
  return use_softplus ? softplus(x) : x;
}

// step_size for a run of steps of one channel (one bias), in place: the softplus choice made once for
// the run, where a kernel's loop over the steps would otherwise branch on it at every step.
template <typename T, int kSteps>
POSEMAMBA_MATH void step_sizes(T (&raw_delta)[kSteps], T bias, bool use_softplus) {
  if (use_softplus) {
    for (int k = 0; k < kSteps; ++k) raw_delta[k] = step_size(raw_delta[k], bias, true);
  } else {
    for (int k = 0; k < kSteps; ++k) raw_delta[k] = step_size(raw_delta[k], bias, false);
  }
}

// One term of low_rank_step_size's sum added: kernels that read each low-rank value once for several
// channels or steps add the terms themselves, rank by rank in the same order.
template <typename T, typename S>
POSEMAMBA_MATH T add_low_rank_term(const T& raw, S low, const T& weight) {
  return raw + low * weight;
}

// The raw step size from mamba's low-rank form: the sum over r = 0, 1, ... of low[r * low_stride] *
// weight[r], rank >= 1, in that order (weight may hold lanes of channels, low one value for them all).
template <typename T, typename S>
POSEMAMBA_MATH T low_rank_step_size(const T* weight, const S* low, int64_t low_stride, int64_t rank) {
  T raw = low[0] * weight[0];
  for (int64_t r = 1; r < rank; ++r) raw = add_low_rank_term(raw, low[r * low_stride], weight[r]);
  return raw;
}

// d dt / d (raw_delta + bias): sigmoid under softplus (1 above its threshold), else 1.
template <typename T>
POSEMAMBA_MATH T step_size_grad(T raw_delta, T bias, bool use_softplus) {
  const T x = raw_delta + bias;
  return use_softplus && x <= T(20) ? sigmoid(x) : T(1);
}

// The discretised state decay exp(dt * a) of one state entry (a = A[p, d, n]).
template <typename T>
POSEMAMBA_MATH T step_decay(T dt, T a) {
  return scan_exp(dt * a);
}

// step_decay in two parts, for kernels that take many steps at one state entry: the entry's rate,
// once, then each step's decay from it. On a GPU the rate carries the log2(e) of the exp2 the device
// computes (a multiply per step saved); elsewhere it is a itself and this is step_decay exactly.
POSEMAMBA_MATH float decay_rate(float a) {
#ifdef __CUDA_ARCH__
  return a * kDeviceLog2e;
#else
  return a;
#endif
}

POSEMAMBA_MATH double decay_rate(double a) {
  return a;
}

POSEMAMBA_MATH float step_decay_from_rate(float dt, float rate) {
#ifdef __CUDA_ARCH__
  return device_exp2(dt * rate);
#else
  return scan_exp(dt * rate);
#endif
}

POSEMAMBA_MATH double step_decay_from_rate(double dt, double rate) {
  return scan_exp(dt * rate);
}

// step_decay where |dt * a| <= kScanExpFastLimit is known (see scan_exp_impl).
template <typename T>
POSEMAMBA_MATH T step_decay_in_range(T dt, T a) {
  return scan_exp_in_range(dt * a);
}

// One state entry's update: h <- exp(dt * a) * h + dt * v * b, with decay = step_decay(dt, a).
template <typename T>
POSEMAMBA_MATH T state_update(T h, T decay, T dt_v, T b) {
  return decay * h + dt_v * b;
}

// A run of scan steps as one map of the state, h -> decay * h + drive: a step is
// {step_decay(dt, a), dt * v * b}, and runs compose into runs. Composition is associative, which is
// what lets the CUDA kernels scan a path's steps in parallel (each thread composes its own steps, and
// a block composes its threads' maps, as mamba's kernel scans its pairs) with one exp per state
// update. The backward's adjoint runs the same way in reverse: {decay, decay * dy * c} per step.
template <typename T>
struct StateMap {
  T decay, drive;

  POSEMAMBA_MATH static StateMap identity() { return {T(1), T(0)}; }

  // This run of steps, then `next`.
  POSEMAMBA_MATH StateMap then(const StateMap& next) const {
    return {decay * next.decay, next.decay * drive + next.drive};
  }

  POSEMAMBA_MATH T apply(T h) const { return decay * h + drive; }
};

// The gradients of one step of one state entry, h = exp(dt * a) * h_prev + dt_v * b, given dh (the
// gradient reaching h). Adds into the gradients of dt, a, v's drive and b; returns the gradient that
// flows on to h_prev.
template <typename T>
POSEMAMBA_MATH T state_update_backward(
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
POSEMAMBA_MATH T gate_output(T y, T z) {
  return y * silu(z);
}

}  // namespace posemamba
