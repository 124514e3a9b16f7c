// CPU backward of posemamba::multi_path_scan_bwd.
//
// One task per (batch, block of kCpuChannelBlock channels), as in the forward. Per-element gradients
// (du, including the mix scatter, ddelta, dz) stay inside the task that owns the channels. The sums over
// channels (dB, dC) and over batch and length (dA, dD, ddelta_bias) go through per-task partials that a
// fixed-order pass adds afterwards, so results are bitwise the same for any thread count.
// For each path the task walks the chunks last to first: recompute the chunk's states from the state
// the forward saved before it, then run the adjoint recurrence backwards through the chunk.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "../multi_path_scan_host.h"
#include "cpu_dispatch.h"
#include "scan_block_cpu.h"

namespace posemamba {
namespace {

// One path's backward for a block of W channels.
template <typename weight_t>
struct PathBlockBackward {
  const weight_t* dt;            // (L, W) step sizes by natural position
  const weight_t* dt_grad;       // (L, W) d dt / d delta
  const weight_t* v;             // (L, W) inputs by natural position
  const weight_t* dy;            // (L, W) gradient of the ungated output
  const weight_t* B;             // (L, N) this (batch, path)'s B by natural position
  const weight_t* C;             // (L, N)
  const weight_t* A;             // (N, W)
  const weight_t* D;             // (W)
  const weight_t* saved_states;  // (n_chunks, N, W) the forward's state before each chunk
  const int64_t* order;          // (L) the path
  const int64_t* mix;            // (L) or null
  int64_t seqlen;
  int64_t d_state;
  int64_t n_chunks;
  weight_t* states;              // (kScanChunk + 1, N, W) scratch: one chunk's recomputed states
  weight_t* decays;              // (kScanChunk, N, W) scratch: their steps' decays
  weight_t* ddelta;              // (L, W) written
  weight_t* du;                  // (L, W) added to
  weight_t* dB;                  // (L, N) this task's partial: written, or added to (accumulate_sums)
  weight_t* dC;                  // (L, N)
  bool accumulate_sums;          // the block is not its partial's first: dB and dC add to it
  weight_t* dA;                  // (N, W) added to
  weight_t* dD;                  // (W) added to
  weight_t* ddelta_bias;         // (W) added to
};

// The sum of W lanes as a fixed tree: lanes i and i + 8, then i and i + 4, then (0 + 2) + (1 + 3).
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE weight_t sum_lanes(const weight_t* x) {
  static_assert(kCpuChannelBlock == 16, "sum_lanes is written for 16 lanes");
  weight_t half[8], quarter[4];
  for (int i = 0; i < 8; ++i) half[i] = x[i] + x[i + 8];
  for (int i = 0; i < 4; ++i) quarter[i] = half[i] + half[i + 4];
  return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

// State entries whose sums over the channel block (dB, dC) are taken together.
constexpr int64_t kSumGroup = 16;

// sums[k] = sum_lanes of x[k], for kSumGroup vectors: the same tree, bit for bit, taken on the 16
// vectors at once where the compiler has vector shuffles (15 vector additions and 30 shuffles, where
// one vector's lanes summed alone take 15 scalar additions and as many lane extractions: most of the
// backward's loop over state entries).
#ifdef POSEMAMBA_LANE_SHUFFLES
// a's lanes then b's, regrouped and added: level 8 adds lanes i and i + 8 of each vector, 4 lanes i and
// i + 4 of each 8, 2 lanes i and i + 2 of each 4, 1 lanes i and i + 1 of each 2.
template <int kLevel, typename V>
POSEMAMBA_ALWAYS_INLINE V pairwise(V a, V b) {
  if constexpr (kLevel == 8) {
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  } else if constexpr (kLevel == 4) {
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  } else if constexpr (kLevel == 2) {
    return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  } else {
    static_assert(kLevel == 1, "levels 8, 4, 2, 1");
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  }
}

// Halves the vectors (kLevel of them left), pairing neighbours.
template <int kLevel, typename V>
POSEMAMBA_ALWAYS_INLINE void pair_up(V* x) {
  for (int i = 0; i < kLevel; ++i) x[i] = pairwise<kLevel>(x[2 * i], x[2 * i + 1]);
}

template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void sum_lanes_of_group(ChannelLanes<weight_t>* x, weight_t* sums) {
  static_assert(kCpuChannelBlock == 16 && kSumGroup == 16, "written for 16 lanes and 16 vectors");
  pair_up<8>(x);
  pair_up<4>(x);
  pair_up<2>(x);
  pair_up<1>(x);  // the k-th sum in lane k
  store_lanes(sums, x[0]);
}
#else
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void sum_lanes_of_group(ChannelLanes<weight_t>* x, weight_t* sums) {
  for (int64_t k = 0; k < kSumGroup; ++k) {
    weight_t lanes[kCpuChannelBlock];
    store_lanes(lanes, x[k]);
    sums[k] = sum_lanes(lanes);
  }
}
#endif

// out[0, count) = sums, or += sums where accumulate.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void add_or_copy(const weight_t* sums, int64_t count, bool accumulate, weight_t* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = accumulate ? out[k] + sums[k] : sums[k];
}

// The pointers arrive as restrict parameters and the state's running gradients (dh, dA) live in local
// arrays, so the compiler knows nothing aliases and vectorises without run-time overlap checks; a
// step's gradients summed over the state entries (d_dt, d_dt_v) stay in registers (ChannelLanes).
// kInRange as in the forward: the recomputed decays skip scan_exp's clamps (and equal the forward's,
// bit for bit).
template <bool kInRange, typename weight_t>
POSEMAMBA_ALWAYS_INLINE void scan_path_block_backward(
    const weight_t* POSEMAMBA_RESTRICT dt_all, const weight_t* POSEMAMBA_RESTRICT dt_grad,
    const weight_t* POSEMAMBA_RESTRICT v_all, const weight_t* POSEMAMBA_RESTRICT dy_all,
    const weight_t* POSEMAMBA_RESTRICT B, const weight_t* POSEMAMBA_RESTRICT C,
    const weight_t* POSEMAMBA_RESTRICT A, const weight_t* POSEMAMBA_RESTRICT D,
    const weight_t* POSEMAMBA_RESTRICT saved_states, const int64_t* POSEMAMBA_RESTRICT order,
    const int64_t* POSEMAMBA_RESTRICT mix, int64_t seqlen, int64_t d_state, int64_t n_chunks,
    weight_t* POSEMAMBA_RESTRICT states, weight_t* POSEMAMBA_RESTRICT decays, weight_t* POSEMAMBA_RESTRICT ddelta,
    weight_t* POSEMAMBA_RESTRICT du,
    weight_t* POSEMAMBA_RESTRICT dB, weight_t* POSEMAMBA_RESTRICT dC, bool accumulate_sums,
    weight_t* POSEMAMBA_RESTRICT dA_out, weight_t* POSEMAMBA_RESTRICT dD, weight_t* POSEMAMBA_RESTRICT ddelta_bias) {
  constexpr int64_t W = kCpuChannelBlock;
  const int64_t N = d_state;
  weight_t dh[kMaxStateDim * W], dA[kMaxStateDim * W];
  for (int64_t i = 0; i < N * W; ++i) {
    dh[i] = weight_t(0);
    dA[i] = weight_t(0);
  }

  for (int64_t chunk = n_chunks - 1; chunk >= 0; --chunk) {
    const int64_t s_begin = chunk * kScanChunk, s_end = std::min(seqlen, s_begin + kScanChunk);
    // states[k] is the state after k steps of this chunk, states[0] the saved one; decays[k] the
    // decays of step k, kept so that the adjoint pass needs no exps of its own.
    for (int64_t i = 0; i < N * W; ++i) states[i] = saved_states[chunk * N * W + i];
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t l = order[s];
      const weight_t* dt = dt_all + l * W;
      const weight_t* v = v_all + l * W;
      const weight_t* h_prev = states + (s - s_begin) * N * W;
      weight_t* h = states + (s - s_begin + 1) * N * W;
      weight_t* decay = decays + (s - s_begin) * N * W;
      for (int64_t n = 0; n < N; ++n) {
        const weight_t b = B[l * N + n];
        for (int64_t w = 0; w < W; ++w) {
          decay[n * W + w] = kInRange ? step_decay_in_range(dt[w], A[n * W + w]) : step_decay(dt[w], A[n * W + w]);
          h[n * W + w] = state_update<weight_t>(h_prev[n * W + w], decay[n * W + w], dt[w] * v[w], b);
        }
      }
    }

    for (int64_t s = s_end - 1; s >= s_begin; --s) {
      const int64_t l = order[s];
      const weight_t* dt = dt_all + l * W;
      const weight_t* v = v_all + l * W;
      const weight_t* dy = dy_all + l * W;
      const weight_t* h_prev = states + (s - s_begin) * N * W;
      const weight_t* h = h_prev + N * W;
      const weight_t* decay = decays + (s - s_begin) * N * W;
      // Lanes of the block's channels: d_dt and d_dt_v sum over the state entries in registers.
      ChannelLanes<weight_t> dt_lanes, dy_lanes, dt_v, d_dt, d_dt_v, zero;
      load_lanes(dt_lanes, dt);
      load_lanes(dy_lanes, dy);
      load_lanes(dt_v, v);
      dt_v = dt_lanes * dt_v;
      broadcast_lanes(zero, weight_t(0));
      d_dt = d_dt_v = zero;
      for (int64_t first = 0; first < N; first += kSumGroup) {
        const int64_t group = std::min(kSumGroup, N - first);
        // Per entry of the group, the terms of its dC and dB sums over the block's channels.
        ChannelLanes<weight_t> dC_terms[kSumGroup], dB_terms[kSumGroup];
        for (int64_t k = 0; k < group; ++k) {
          const int64_t n = first + k;
          ChannelLanes<weight_t> h_n, h_prev_n, decay_n, a_n, dh_n, dA_n, b;
          load_lanes(h_n, h + n * W);
          load_lanes(h_prev_n, h_prev + n * W);
          load_lanes(decay_n, decay + n * W);
          load_lanes(a_n, A + n * W);
          load_lanes(dh_n, dh + n * W);
          load_lanes(dA_n, dA + n * W);
          broadcast_lanes(b, B[l * N + n]);
          // y = C . h: h's gradient gains dy * C, C's gains dy * h.
          dC_terms[k] = dy_lanes * h_n;
          dB_terms[k] = zero;
          dh_n = state_update_backward(dh_n + C[l * N + n] * dy_lanes, h_prev_n, decay_n, dt_lanes, a_n, dt_v, b,
                                       d_dt, dA_n, d_dt_v, dB_terms[k]);
          store_lanes(dh + n * W, dh_n);
          store_lanes(dA + n * W, dA_n);
        }
        for (int64_t k = group; k < kSumGroup; ++k) dC_terms[k] = dB_terms[k] = zero;
        weight_t sums[kSumGroup];
        sum_lanes_of_group(dC_terms, sums);
        add_or_copy(sums, group, accumulate_sums, dC + l * N + first);
        sum_lanes_of_group(dB_terms, sums);
        add_or_copy(sums, group, accumulate_sums, dB + l * N + first);
      }
      weight_t dv[W], d_dt_steps[W], d_dt_v_steps[W];
      store_lanes(d_dt_steps, d_dt);
      store_lanes(d_dt_v_steps, d_dt_v);
      for (int64_t w = 0; w < W; ++w) {
        // dt_v = dt * v; the skip term D * v.
        const weight_t d_step = (d_dt_steps[w] + d_dt_v_steps[w] * v[w]) * dt_grad[l * W + w];
        dv[w] = d_dt_v_steps[w] * dt[w] + dy[w] * D[w];
        dD[w] += dy[w] * v[w];
        ddelta[l * W + w] = d_step;
        ddelta_bias[w] += d_step;
        du[l * W + w] += dv[w];
      }
      if (mix && mix[l] >= 0) {
        for (int64_t w = 0; w < W; ++w) du[mix[l] * W + w] += dv[w];
      }
    }
  }
  for (int64_t i = 0; i < N * W; ++i) dA_out[i] += dA[i];
}

template <bool kInRange, typename weight_t>
POSEMAMBA_ALWAYS_INLINE void scan_path_block_backward(const PathBlockBackward<weight_t>& a) {
  scan_path_block_backward<kInRange>(a.dt, a.dt_grad, a.v, a.dy, a.B, a.C, a.A, a.D, a.saved_states, a.order,
                                     a.mix, a.seqlen, a.d_state, a.n_chunks, a.states, a.decays, a.ddelta, a.du,
                                     a.dB, a.dC, a.accumulate_sums, a.dA, a.dD, a.ddelta_bias);
}

template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void scan_path_block_backward(const PathBlockBackward<weight_t>& a) {
  constexpr int64_t W = kCpuChannelBlock;
  if (abs_max(a.dt, a.seqlen * W) * abs_max(a.A, a.d_state * W) <= weight_t(kScanExpFastLimit)) {
    scan_path_block_backward<true>(a);
  } else {
    scan_path_block_backward<false>(a);
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_path_block_backward(const PathBlockBackward<float>& a) {
  scan_path_block_backward(a);
}

void run_path_block_backward(const PathBlockBackward<double>& a) {
  scan_path_block_backward(a);
}

// Ranks whose weight gradients low_rank_step_sizes_backward keeps in registers at once.
constexpr int64_t kRankGroup = 8;

// The gradients through a block's low-rank step sizes (low_rank_step_size), from ddelta (L, W), its raw
// step sizes' gradient. The low-rank delta's, weights[r][w] * ddelta summed over the channels w = 0, 1,
// ... in order, into d_low (R, L) (added to where accumulate_sums), 16 positions at a time: the ddelta
// tile transposed so that its rows are channels and its lanes positions, one multiply-add a channel
// then gives 16 positions' sums (summed across lanes, a position would take a tree of shuffles). The
// weights', low[r] * ddelta summed over the positions in order, into d_weights (R, W), kRankGroup ranks'
// sums at a time in registers.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void low_rank_step_sizes_backward(
    const weight_t* POSEMAMBA_RESTRICT ddelta, const weight_t* POSEMAMBA_RESTRICT low,
    const weight_t* POSEMAMBA_RESTRICT weights, int64_t rank, int64_t seqlen, bool accumulate_sums,
    weight_t* POSEMAMBA_RESTRICT d_low, weight_t* POSEMAMBA_RESTRICT d_weights) {
  constexpr int64_t W = kCpuChannelBlock;
  for (int64_t l0 = 0; l0 < seqlen; l0 += W) {
    const int64_t count = std::min(W, seqlen - l0);
    weight_t tile[W * W];  // tile[w * W + i]: channel w's gradient at position l0 + i (0 past count)
    transpose_tile(ddelta + l0 * W, W, count, tile, W);
    for (int64_t r = 0; r < rank; ++r) {
      ChannelLanes<weight_t> sums, row;
      load_lanes(row, tile);
      sums = weights[r * W] * row;
      for (int64_t w = 1; w < W; ++w) {
        load_lanes(row, tile + w * W);
        sums += weights[r * W + w] * row;
      }
      weight_t values[W];
      store_lanes(values, sums);
      add_or_copy(values, count, accumulate_sums, d_low + r * seqlen + l0);
    }
  }
  for (int64_t first = 0; first < rank; first += kRankGroup) {
    const int64_t group = std::min(kRankGroup, rank - first);
    ChannelLanes<weight_t> sums[kRankGroup];
    for (int64_t k = 0; k < kRankGroup; ++k) broadcast_lanes(sums[k], weight_t(0));
    for (int64_t l = 0; l < seqlen; ++l) {
      ChannelLanes<weight_t> d_raw;
      load_lanes(d_raw, ddelta + l * W);
      for (int64_t k = 0; k < kRankGroup; ++k) {
        if (k < group) sums[k] += low[(first + k) * seqlen + l] * d_raw;
      }
    }
    for (int64_t k = 0; k < group; ++k) store_lanes(d_weights + (first + k) * W, sums[k]);
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_low_rank_step_sizes_backward(const float* ddelta, const float* low,
                                                                 const float* weights, int64_t rank, int64_t seqlen,
                                                                 bool accumulate_sums, float* d_low, float* d_weights) {
  low_rank_step_sizes_backward(ddelta, low, weights, rank, seqlen, accumulate_sums, d_low, d_weights);
}

void run_low_rank_step_sizes_backward(const double* ddelta, const double* low, const double* weights, int64_t rank,
                                      int64_t seqlen, bool accumulate_sums, double* d_low, double* d_weights) {
  low_rank_step_sizes_backward(ddelta, low, weights, rank, seqlen, accumulate_sums, d_low, d_weights);
}

// dt (L, W) holds raw deltas: turns them into step sizes in place and writes d dt / d delta.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void step_sizes_and_grads(weight_t* POSEMAMBA_RESTRICT dt, weight_t* POSEMAMBA_RESTRICT dt_grad,
                                                  const weight_t* POSEMAMBA_RESTRICT bias, int64_t seqlen,
                                                  bool use_softplus) {
  constexpr int64_t W = kCpuChannelBlock;
  for (int64_t l = 0; l < seqlen; ++l) {
    for (int64_t w = 0; w < W; ++w) {
      const weight_t raw = dt[l * W + w];
      dt_grad[l * W + w] = step_size_grad<weight_t>(raw, bias[w], use_softplus);
      dt[l * W + w] = step_size<weight_t>(raw, bias[w], use_softplus);
    }
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_step_sizes_and_grads(float* dt, float* dt_grad, const float* bias, int64_t seqlen,
                                                         bool use_softplus) {
  step_sizes_and_grads(dt, dt_grad, bias, seqlen, use_softplus);
}

void run_step_sizes_and_grads(double* dt, double* dt_grad, const double* bias, int64_t seqlen, bool use_softplus) {
  step_sizes_and_grads(dt, dt_grad, bias, seqlen, use_softplus);
}

// The gate's gradients over count values (a block's, in the math type), out = y * silu(z): dy = dout *
// silu(z) (the gradient of the ungated y) and dz = dout * y * silu'(z). One flat loop, which vectorises
// (the exps are scan_exp's polynomial); a loop over the block's positions and lanes ran one value at a time.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void gate_gradients(const weight_t* POSEMAMBA_RESTRICT grad_out,
                                            const weight_t* POSEMAMBA_RESTRICT z, const weight_t* POSEMAMBA_RESTRICT y,
                                            int64_t count, weight_t* POSEMAMBA_RESTRICT dy,
                                            weight_t* POSEMAMBA_RESTRICT dz) {
  for (int64_t i = 0; i < count; ++i) {
    const weight_t z_i = z[i], g = grad_out[i];
    dz[i] = g * y[i] * silu_grad(z_i);
    dy[i] = g * silu(z_i);
  }
}

POSEMAMBA_CPU_MULTIVERSION void run_gate_gradients(const float* grad_out, const float* z, const float* y, int64_t count,
                                                   float* dy, float* dz) {
  gate_gradients(grad_out, z, y, count, dy, dz);
}

void run_gate_gradients(const double* grad_out, const double* z, const double* y, int64_t count, double* dy,
                        double* dz) {
  gate_gradients(grad_out, z, y, count, dy, dz);
}

// A backward task takes channel blocks one after another, all of their dB and dC going into one partial
// (p.channel_block channels): as many blocks as leave at least kBackwardTasks tasks, or one where there
// are fewer blocks, so that the partials, (batch, partials per batch element, P, L, N), shrink as the
// batch grows instead of outgrowing the gradients (at PoseMamba-L, batch 4, a partial per block took
// 68 MB each for dB and dC, written, faulted in and read again every call). The shapes fix it, never
// the thread count: the sums' order, and so their bits, are the same on any machine.
constexpr int64_t kBackwardTasks = 16;

int64_t channel_blocks_per_task(int64_t batch, int64_t n_blocks) {
  const int64_t tasks_per_element = std::max<int64_t>(1, (kBackwardTasks + batch - 1) / std::max<int64_t>(batch, 1));
  const int64_t tasks = std::max<int64_t>(1, std::min(n_blocks, tasks_per_element));
  return std::max<int64_t>(1, (n_blocks + tasks - 1) / tasks);
}

// One channel block's gradients, its dB and dC written into the partial `partial_block` of batch
// element b (added to it where accumulate_sums).
template <typename input_t>
void channel_block_backward(const MultiPathScanBwdParams& p, const at::opmath_type<input_t>* B_pos,
                            const at::opmath_type<input_t>* C_pos, int64_t b, int64_t block, int64_t partial_block,
                            bool accumulate_sums, std::vector<at::opmath_type<input_t>>& scratch,
                            LowRankStepSizes<at::opmath_type<input_t>>& low_rank) {
  using weight_t = at::opmath_type<input_t>;
  constexpr int64_t W = kCpuChannelBlock;
  const int64_t L = p.seqlen, N = p.d_state;
  const int64_t d_begin = block * W, width = std::min(W, p.dim - d_begin);

  // With a gate, its gradients over (L, W) blocks: grad_out, z, the ungated output and dz.
  const int64_t gate_blocks = p.z ? 4 : 0;
  scratch.resize((7 + gate_blocks) * L * W + p.n_chunks * N * W + (2 * kScanChunk + 1) * N * W + 2 * N * W + 4 * W);
  weight_t* u_block = scratch.data();
  weight_t* v_mixed = u_block + L * W;
  weight_t* dt = v_mixed + L * W;
  weight_t* dt_grad = dt + L * W;
  weight_t* dy = dt_grad + L * W;
  weight_t* du = dy + L * W;
  weight_t* ddelta = du + L * W;
  weight_t* saved = ddelta + L * W;
  weight_t* states = saved + p.n_chunks * N * W;
  weight_t* decays = states + (kScanChunk + 1) * N * W;
  weight_t* A_block = decays + kScanChunk * N * W;
  weight_t* dA_block = A_block + N * W;
  weight_t* D_block = dA_block + N * W;
  weight_t* bias_block = D_block + W;
  weight_t* dD_block = bias_block + W;
  weight_t* ddelta_bias_block = dD_block + W;
  weight_t* gate_scratch = ddelta_bias_block + W;  // gate_blocks of L W

  const int64_t element = b * p.dim * L;  // the batch element's start in every (batch, D, L) tensor
  gather_activation_block(static_cast<const input_t*>(p.u) + element, p.u_channels_last, p.dim, d_begin, width, L,
                          u_block);
  if (p.z) {
    weight_t* grad_block = gate_scratch;
    weight_t* z_block = grad_block + L * W;
    weight_t* ungated_block = z_block + L * W;
    weight_t* dz_block = ungated_block + L * W;
    gather_activation_block(static_cast<const input_t*>(p.grad_out) + element, p.grad_out_channels_last, p.dim,
                            d_begin, width, L, grad_block);
    gather_activation_block(static_cast<const input_t*>(p.z) + element, p.z_channels_last, p.dim, d_begin, width, L,
                            z_block);
    gather_channel_block(static_cast<const input_t*>(p.out_ungated) + element, d_begin, width, L, ungated_block);
    run_gate_gradients(grad_block, z_block, ungated_block, L * W, dy, dz_block);
    scatter_channel_block(dz_block, d_begin, width, L, static_cast<input_t*>(p.dz) + element);
  } else {
    gather_activation_block(static_cast<const input_t*>(p.grad_out) + element, p.grad_out_channels_last, p.dim,
                            d_begin, width, L, dy);
  }
  std::fill(du, du + L * W, weight_t(0));
  const int64_t R = p.delta_rank;
  std::vector<weight_t> d_weights(R * W);  // (R, W) with low-rank step sizes

  for (int64_t path = 0; path < p.n_paths; ++path) {
    const int64_t batch_path = b * p.n_paths + path;
    path_weights(static_cast<const weight_t*>(p.A) + path * p.dim * N,
                 p.D ? static_cast<const weight_t*>(p.D) + path * p.dim : nullptr,
                 p.delta_bias ? static_cast<const weight_t*>(p.delta_bias) + path * p.dim : nullptr,
                 d_begin, width, N, A_block, D_block, bias_block);
    raw_step_sizes<input_t>(p, b, path, d_begin, width, low_rank, dt);
    run_step_sizes_and_grads(dt, dt_grad, bias_block, L, p.delta_softplus);
    std::fill(saved, saved + p.n_chunks * N * W, weight_t(0));
    const weight_t* path_states = static_cast<const weight_t*>(p.chunk_states) + batch_path * p.n_chunks * N * p.dim;
    for (int64_t i = 0; i < p.n_chunks * N; ++i) {  // (chunk, state entry) rows of channels
      copy_channels(path_states + i * p.dim + d_begin, width, saved + i * W);
    }
    std::fill(dA_block, dA_block + N * W, weight_t(0));
    std::fill(dD_block, dD_block + W, weight_t(0));
    std::fill(ddelta_bias_block, ddelta_bias_block + W, weight_t(0));
    const int64_t partial = ((b * p.n_channel_blocks + partial_block) * p.n_paths + path) * L * N;
    const PathBlockBackward<weight_t> backward{
        dt, dt_grad, path_inputs(u_block, p.mix ? p.mix + path * L : nullptr, L, v_mixed), dy,
        B_pos + batch_path * L * N, C_pos + batch_path * L * N, A_block, D_block, saved,
        p.paths + path * L, p.mix ? p.mix + path * L : nullptr, L, N, p.n_chunks, states, decays, ddelta, du,
        static_cast<weight_t*>(p.dB_partial) + partial, static_cast<weight_t*>(p.dC_partial) + partial,
        accumulate_sums, dA_block, dD_block, ddelta_bias_block};
    run_path_block_backward(backward);

    if (R == 0) {
      scatter_channel_block(ddelta, d_begin, width, L, static_cast<input_t*>(p.ddelta) + batch_path * p.dim * L);
    } else {
      const int64_t d_low_partial = ((b * p.n_channel_blocks + partial_block) * p.n_paths + path) * R * L;
      run_low_rank_step_sizes_backward(ddelta, low_rank.low, low_rank.weight_values.data(), R, L, accumulate_sums,
                                       static_cast<weight_t*>(p.d_delta_low_partial) + d_low_partial,
                                       d_weights.data());
      // (batch, 1, P, D, R): the block's channels' rows.
      weight_t* d_weight_path = static_cast<weight_t*>(p.d_delta_proj_weight_partial) + batch_path * p.dim * R;
      for (int64_t w = 0; w < width; ++w) {
        for (int64_t r = 0; r < R; ++r) d_weight_path[(d_begin + w) * R + r] = d_weights[r * W + w];
      }
    }
    weight_t* dA_path = static_cast<weight_t*>(p.dA_partial) + batch_path * N * p.dim;  // (N, D)
    for (int64_t n = 0; n < N; ++n) {
      copy_channels(dA_block + n * W, width, dA_path + n * p.dim + d_begin);
    }
    for (int64_t w = 0; w < width; ++w) {
      const int64_t channel = batch_path * p.dim + d_begin + w;
      static_cast<weight_t*>(p.dD_partial)[channel] = dD_block[w];
      static_cast<weight_t*>(p.ddelta_bias_partial)[channel] = ddelta_bias_block[w];
    }
  }
  scatter_channel_block(du, d_begin, width, L, static_cast<input_t*>(p.du) + element);
}

// out[o, i] = sum over k of partial[o, k, i], k in index order, for o < n_outer and i < count: the
// same order whatever the thread count. The loop over k runs outside the loop over i, which then
// vectorises (a column's strided sum ran one value at a time); each i still adds k = 0, 1, ... in turn.
template <typename weight_t>
void sum_partials_in_order(const weight_t* partial, int64_t n_outer, int64_t n_partials, int64_t count,
                           weight_t* out) {
  at::parallel_for(0, n_outer * count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t outer = i / count, inner = i % count, run = std::min(end - i, count - inner);
      const weight_t* columns = partial + outer * n_partials * count + inner;
      weight_t* totals = out + i;
      std::fill(totals, totals + run, weight_t(0));
      for (int64_t k = 0; k < n_partials; ++k) {
        for (int64_t j = 0; j < run; ++j) totals[j] += columns[k * count + j];
      }
      i += run;
    }
  });
}

ScanGradients multi_path_scan_bwd_cpu(
    const at::Tensor& grad_out,
    const at::Tensor& u,
    const at::Tensor& delta,
    const at::Tensor& A,
    const at::Tensor& B,
    const at::Tensor& C,
    const at::Tensor& paths,
    const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix,
    const at::Tensor& out_ungated,
    const at::Tensor& chunk_states,
    bool delta_softplus,
    at::IntArrayRef span_lengths,  // hints for GPUs' work split only
    const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_du,
    bool channels_last_dz) {
  // (A u of the wrong rank gets prepare_scan_backward's error.)
  const int64_t blocks_per_task = u.dim() == 3 ? channel_blocks_per_task(u.size(0), num_channel_blocks(u.size(1))) : 1;
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix,
                                         out_ungated, chunk_states, delta_softplus, span_lengths, delta_proj_weight,
                                         channels_last_du, channels_last_dz, kCpuKernels, blocks_per_task * kCpuChannelBlock,
                                         /*positions_minor=*/false);
  allocate_length_partials(g, /*n_length_blocks=*/1, /*zeroed=*/false);
  check_scan_indices_on_host(g.inputs, g.params.seqlen);
  const MultiPathScanBwdParams& p = g.params;
  const at::Tensor B_by_position = transpose_to_positions_major(g.inputs.B, A.scalar_type());
  const at::Tensor C_by_position = transpose_to_positions_major(g.inputs.C, A.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_bwd_cpu", [&] {
    using weight_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.n_channel_blocks, 1, [&](int64_t task_begin, int64_t task_end) {
      std::vector<weight_t> scratch;
      LowRankStepSizes<weight_t> low_rank;
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t b = task / p.n_channel_blocks, partial_block = task % p.n_channel_blocks;
        const int64_t first = partial_block * blocks_per_task;
        const int64_t last = std::min(first + blocks_per_task, num_channel_blocks(p.dim));
        for (int64_t block = first; block < last; ++block) {
          channel_block_backward<scalar_t>(p, B_by_position.const_data_ptr<weight_t>(),
                                           C_by_position.const_data_ptr<weight_t>(), b, block, partial_block,
                                           /*accumulate_sums=*/block > first, scratch, low_rank);
        }
      }
    });
    reduce_backward_partials<weight_t>(g, sum_partials_in_order<weight_t>, sum_partials_in_order<weight_t>);
  });
  return finish_scan_backward(g);
}

}  // namespace

TORCH_LIBRARY_IMPL(posemamba, CPU, m) {
  m.impl("multi_path_scan_bwd", &multi_path_scan_bwd_cpu);
}

}  // namespace posemamba
