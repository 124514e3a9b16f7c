// Layouts shared by the CPU forward and backward: a task owns one batch entry and a block of
// kCpuChannelBlock channels, and keeps its per-position values channel-minor, (L, W), so the inner
// loops run over W adjacent channels at once (one AVX-512 register of floats).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../multi_path_scan.h"
#include "../multi_path_scan_host.h"
#include "cpu_dispatch.h"

namespace posemamba {

constexpr int64_t kCpuChannelBlock = 16;

// The CPU kernels take the gradients through the low-rank step sizes' projection themselves, and read
// u, z and grad_out (and write out) either way, a block's channels from rows or at each position
// (gather_activation_block). They write du and dz (batch, D, L): a scatter of a block's 16 channels at
// positions 1 KB apart was slower than the host's copy.
constexpr KernelTraits kCpuKernels{/*sums_delta_projection_gradients=*/true, /*lays_out_B_C=*/true,
                                  /*writes_input_grads_channels_last=*/false};

inline int64_t num_channel_blocks(int64_t dim) {
  return (dim + kCpuChannelBlock - 1) / kCpuChannelBlock;
}

// kCpuChannelBlock channels' values as one value, which the compiler keeps in vector registers across
// a loop (GCC's and Clang's vector extensions). A sum over state entries kept in an array is stored and
// reloaded at every entry instead: a store-to-load chain that took half of the CPU forward's time. The
// arithmetic is lane by lane, so the scan math's templates (multi_path_scan.h) take lanes as they take
// numbers, with the same roundings as a loop over an array. POSEMAMBA_PORTABLE_LANES picks the other
// compilers' definition anywhere (tests/test_multi_path_scan.py compiles the kernels with it).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(POSEMAMBA_PORTABLE_LANES)
template <typename T>
struct ChannelLanesOf {
  typedef T type __attribute__((vector_size(kCpuChannelBlock * sizeof(T))));
};
#else
// Elsewhere an array with the same lane-by-lane operators.
template <typename T>
struct PortableLanes {
  T lane[kCpuChannelBlock];

  PortableLanes& operator+=(const PortableLanes& other) {
    for (int64_t w = 0; w < kCpuChannelBlock; ++w) lane[w] += other.lane[w];
    return *this;
  }
  friend PortableLanes operator+(PortableLanes a, const PortableLanes& b) { return a += b; }
  friend PortableLanes operator*(PortableLanes a, const PortableLanes& b) {
    for (int64_t w = 0; w < kCpuChannelBlock; ++w) a.lane[w] *= b.lane[w];
    return a;
  }
  friend PortableLanes operator*(T scale, PortableLanes a) {
    for (int64_t w = 0; w < kCpuChannelBlock; ++w) a.lane[w] *= scale;
    return a;
  }
};
template <typename T>
struct ChannelLanesOf {
  using type = PortableLanes<T>;
};
#endif
template <typename T>
using ChannelLanes = typename ChannelLanesOf<T>::type;

// Whether lanes can be permuted across vectors (__builtin_shufflevector on the vector extensions: GCC
// 12 and later, Clang); elsewhere the kernels take the same values lane by lane.
#if !defined(POSEMAMBA_PORTABLE_LANES) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define POSEMAMBA_LANE_SHUFFLES 1
#endif

template <typename T>
POSEMAMBA_ALWAYS_INLINE void load_lanes(ChannelLanes<T>& lanes, const T* values) {
  std::memcpy(&lanes, values, sizeof(lanes));
}

template <typename T>
POSEMAMBA_ALWAYS_INLINE void store_lanes(T* values, const ChannelLanes<T>& lanes) {
  std::memcpy(values, &lanes, sizeof(lanes));
}

// value in every lane.
template <typename T>
POSEMAMBA_ALWAYS_INLINE void broadcast_lanes(ChannelLanes<T>& lanes, T value) {
  T values[kCpuChannelBlock];
  for (int64_t w = 0; w < kCpuChannelBlock; ++w) values[w] = value;
  load_lanes(lanes, values);
}

// lanes += scale * values (one FMA a lane where the ISA has it, as the loop over an array contracts).
template <typename T>
POSEMAMBA_ALWAYS_INLINE void add_scaled(ChannelLanes<T>& lanes, T scale, const T* values) {
  ChannelLanes<T> loaded;
  load_lanes(loaded, values);
  lanes += scale * loaded;
}

// values += lanes.
template <typename T>
POSEMAMBA_ALWAYS_INLINE void add_lanes_to(T* values, const ChannelLanes<T>& lanes) {
  ChannelLanes<T> sum;
  load_lanes(sum, values);
  sum += lanes;
  store_lanes(values, sum);
}

// B and C of every (batch, path) transposed to (L, N) in the math type, done once per op call from the
// strides the caller gave (KernelTraits::lays_out_B_C): the scan then reads one position's N values
// contiguously, whatever order the path visits positions in.
at::Tensor transpose_to_positions_major(const at::Tensor& BC, at::ScalarType weight_dtype);

#ifdef POSEMAMBA_LANE_SHUFFLES
// rows[i] lane j and rows[j] lane i swapped for all i, j: a W x W tile transposed in registers. Each
// round interleaves rows i and i + 8 (i < 8) into rows 2i and 2i + 1, which moves an element's row
// bits up one place taking its column's top bit, and its column bits likewise: after four rounds row
// and column have traded places (64 two-vector shuffles where the scalar copies were 256 strided loads
// and stores, and a memcpy call a row).
template <typename V>
POSEMAMBA_ALWAYS_INLINE void transpose_lanes(V* rows) {
  static_assert(kCpuChannelBlock == 16, "written for 16 lanes");
  for (int round = 0; round < 4; ++round) {
    V next[kCpuChannelBlock];
    for (int i = 0; i < 8; ++i) {
      next[2 * i] = __builtin_shufflevector(rows[i], rows[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      next[2 * i + 1] =
          __builtin_shufflevector(rows[i], rows[i + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
    for (int i = 0; i < kCpuChannelBlock; ++i) rows[i] = next[i];
  }
}
#endif

// to[j * to_stride + i] = from[i * from_stride + j] for the i < count rows and j < W columns of from,
// converted; to's rows j < W, all of them written (from's missing rows, i >= count, as zeros where
// count < W: the caller uses only the first count of each).
template <typename from_t, typename to_t>
POSEMAMBA_ALWAYS_INLINE void transpose_tile(const from_t* from, int64_t from_stride, int64_t count, to_t* to,
                                            int64_t to_stride) {
  constexpr int64_t W = kCpuChannelBlock;
#ifdef POSEMAMBA_LANE_SHUFFLES
  if constexpr (std::is_same_v<from_t, to_t>) {
    ChannelLanes<to_t> rows[W];
    for (int64_t i = 0; i < W; ++i) {
      if (i < count) {
        load_lanes(rows[i], from + i * from_stride);
      } else {
        broadcast_lanes(rows[i], to_t(0));
      }
    }
    transpose_lanes(rows);
    for (int64_t j = 0; j < W; ++j) store_lanes(to + j * to_stride, rows[j]);
    return;
  }
#endif
  for (int64_t j = 0; j < W; ++j) {
    for (int64_t i = 0; i < W; ++i) to[j * to_stride + i] = i < count ? to_t(from[i * from_stride + j]) : to_t(0);
  }
}

// to[0, width) = from[0, width), width <= W: a full block's W values as one fixed-size copy (vector
// moves), where a copy of a run-time count is a memmove call (for the saved states' 64-byte rows,
// about 2% of the forward's samples at PoseMamba-L's block shape).
template <typename T>
POSEMAMBA_ALWAYS_INLINE void copy_channels(const T* from, int64_t width, T* to) {
  if (width == kCpuChannelBlock) {
    std::memcpy(to, from, kCpuChannelBlock * sizeof(T));
  } else {
    std::copy(from, from + width, to);
  }
}

// Gathers rows [d_begin, d_begin + width) of a (rows, L) matrix into (L, W), channel-minor, in the
// math type; channels past width are zero. W positions at a time, transposed in registers.
template <typename weight_t, typename input_t>
POSEMAMBA_ALWAYS_INLINE void gather_channel_block_impl(const input_t* rows, int64_t d_begin, int64_t width,
                                                       int64_t seqlen, weight_t* out) {
  constexpr int64_t W = kCpuChannelBlock;
  const input_t* block_rows = rows + d_begin * seqlen;
  int64_t l0 = 0;
  for (; l0 + W <= seqlen; l0 += W) transpose_tile(block_rows + l0, seqlen, width, out + l0 * W, W);
  for (int64_t l = l0; l < seqlen; ++l) {
    for (int64_t w = 0; w < W; ++w) out[l * W + w] = w < width ? weight_t(block_rows[w * seqlen + l]) : weight_t(0);
  }
}

// Scatters a (L, W) block back to rows [d_begin, d_begin + width) of a (rows, L) matrix, converted, W
// positions at a time, transposed in registers (through a tile where the block or the rows end
// short of W).
template <typename weight_t, typename output_t>
POSEMAMBA_ALWAYS_INLINE void scatter_channel_block_impl(const weight_t* block, int64_t d_begin, int64_t width,
                                                        int64_t seqlen, output_t* rows) {
  constexpr int64_t W = kCpuChannelBlock;
  output_t* block_rows = rows + d_begin * seqlen;
  for (int64_t l0 = 0; l0 < seqlen; l0 += W) {
    const int64_t count = std::min(W, seqlen - l0);
    if (count == W && width == W) {
      transpose_tile(block + l0 * W, W, W, block_rows + l0, seqlen);
      continue;
    }
    weight_t tile[W][W];  // tile[w][i]: channel w at position l0 + i
    transpose_tile(block + l0 * W, W, count, &tile[0][0], W);
    for (int64_t w = 0; w < width; ++w) {
      for (int64_t i = 0; i < count; ++i) block_rows[w * seqlen + l0 + i] = static_cast<output_t>(tile[w][i]);
    }
  }
}

// The transposes above as called: float's compiled once per ISA level (cpu_dispatch.h; scan_forward_cpu.cpp),
// since the baseline ISA has no 16-lane shuffles, the other types' as they come.
void gather_channel_block(const float* rows, int64_t d_begin, int64_t width, int64_t seqlen, float* out);
void scatter_channel_block(const float* block, int64_t d_begin, int64_t width, int64_t seqlen, float* rows);

template <typename weight_t, typename input_t>
void gather_channel_block(const input_t* rows, int64_t d_begin, int64_t width, int64_t seqlen, weight_t* out) {
  gather_channel_block_impl(rows, d_begin, width, seqlen, out);
}

template <typename weight_t, typename output_t>
void scatter_channel_block(const weight_t* block, int64_t d_begin, int64_t width, int64_t seqlen, output_t* rows) {
  scatter_channel_block_impl(block, d_begin, width, seqlen, rows);
}

// Channels [d_begin, d_begin + width) of one batch element of a (batch, D, L) tensor as a (L, W) block
// in the math type (zero past width), from either layout (MultiPathScanParams::u_channels_last, ...):
// channel rows (D, L), transposed by gather_channel_block, or channels-last (L, D), each position's
// channels copied.
template <typename weight_t, typename input_t>
void gather_activation_block(const input_t* element, bool channels_last, int64_t dim, int64_t d_begin,
                             int64_t width, int64_t seqlen, weight_t* block) {
  constexpr int64_t W = kCpuChannelBlock;
  if (!channels_last) {
    gather_channel_block(element, d_begin, width, seqlen, block);
    return;
  }
  for (int64_t l = 0; l < seqlen; ++l) {
    const input_t* channels = element + l * dim + d_begin;
    for (int64_t w = 0; w < W; ++w) block[l * W + w] = w < width ? static_cast<weight_t>(channels[w]) : weight_t(0);
  }
}

// The reverse: a (L, W) block's first width channels into one batch element of a (batch, D, L) tensor.
template <typename weight_t, typename output_t>
void scatter_activation_block(const weight_t* block, bool channels_last, int64_t dim, int64_t d_begin,
                              int64_t width, int64_t seqlen, output_t* element) {
  constexpr int64_t W = kCpuChannelBlock;
  if (!channels_last) {
    scatter_channel_block(block, d_begin, width, seqlen, element);
    return;
  }
  for (int64_t l = 0; l < seqlen; ++l) {
    output_t* channels = element + l * dim + d_begin;
    for (int64_t w = 0; w < width; ++w) channels[w] = static_cast<output_t>(block[l * W + w]);
  }
}

// Mamba's low-rank step sizes (MultiPathScanParams::delta_rank > 0) for one path and channel block:
// the weights delta_proj_weight[p, d_begin + w, r], (R, W), as values and as one lane vector per r (zero
// past the block's width, so the padded channels' raw step sizes are 0), and the path's low-rank delta
// (R, L) in the math type (the input itself where that is its dtype).
template <typename weight_t>
struct LowRankStepSizes {
  int64_t rank = 0;
  std::vector<weight_t> weight_values;                // (R, W)
  std::unique_ptr<ChannelLanes<weight_t>[]> weights;  // (R) lanes; new[] aligns them for their type
  const weight_t* low = nullptr;                      // (R, L)
  std::vector<weight_t> converted;                    // low's storage where the input is another dtype

  template <typename input_t>
  void load(const input_t* weight_path, const input_t* low_path, int64_t rank_, int64_t d_begin, int64_t width,
            int64_t seqlen) {
    constexpr int64_t W = kCpuChannelBlock;
    if (rank != rank_) {
      rank = rank_;
      weights.reset(new ChannelLanes<weight_t>[rank]);
    }
    weight_values.assign(rank * W, weight_t(0));
    for (int64_t r = 0; r < rank; ++r) {
      weight_t* values = weight_values.data() + r * W;
      for (int64_t w = 0; w < width; ++w) values[w] = static_cast<weight_t>(weight_path[(d_begin + w) * rank + r]);
      load_lanes(weights[r], values);
    }
    if constexpr (std::is_same_v<input_t, weight_t>) {
      low = low_path;
    } else {
      converted.assign(low_path, low_path + rank * seqlen);
      low = converted.data();
    }
  }
};

// The block's raw step sizes, (L, W) as gather_channel_block lays delta out: low_rank_step_size at
// every position.
template <typename weight_t>
POSEMAMBA_ALWAYS_INLINE void project_step_sizes_impl(const weight_t* POSEMAMBA_RESTRICT low,
                                                     const ChannelLanes<weight_t>* POSEMAMBA_RESTRICT weights,
                                                     int64_t rank, int64_t seqlen, weight_t* POSEMAMBA_RESTRICT dt) {
  constexpr int64_t W = kCpuChannelBlock;
  for (int64_t l = 0; l < seqlen; ++l) store_lanes(dt + l * W, low_rank_step_size(weights, low + l, seqlen, rank));
}

// As called: float's compiled once per ISA level (scan_forward_cpu.cpp), double's as it comes.
void project_step_sizes(const float* low, const ChannelLanes<float>* weights, int64_t rank, int64_t seqlen, float* dt);

inline void project_step_sizes(const double* low, const ChannelLanes<double>* weights, int64_t rank, int64_t seqlen,
                               double* dt) {
  project_step_sizes_impl(low, weights, rank, seqlen, dt);
}

// The raw step sizes (L, W) of path `path` of batch element b, channels [d_begin, d_begin + width): delta's
// rows gathered, or projected from its low-rank form (loaded into low_rank, which the backward reads again).
template <typename input_t, typename weight_t>
void raw_step_sizes(const MultiPathScanParams& p, int64_t b, int64_t path, int64_t d_begin, int64_t width,
                    LowRankStepSizes<weight_t>& low_rank, weight_t* dt) {
  const int64_t L = p.seqlen, batch_path = b * p.n_paths + path;
  if (p.delta_rank == 0) {
    gather_channel_block(static_cast<const input_t*>(p.delta) + batch_path * p.dim * L, d_begin, width, L, dt);
    return;
  }
  const int64_t R = p.delta_rank;
  low_rank.load(static_cast<const input_t*>(p.delta_proj_weight) + path * p.dim * R,
                static_cast<const input_t*>(p.delta) + batch_path * R * L, R, d_begin, width, L);
  project_step_sizes(low_rank.low, low_rank.weights.get(), R, L, dt);
}

// The input each position of a path reads, (L, W): u, or u[l] + u[mix[l]] where mix[l] >= 0.
template <typename weight_t>
const weight_t* path_inputs(const weight_t* u_block, const int64_t* mix_row, int64_t seqlen, weight_t* scratch) {
  constexpr int64_t W = kCpuChannelBlock;
  if (!mix_row) return u_block;
  for (int64_t l = 0; l < seqlen; ++l) {
    const int64_t partner = mix_row[l];
    for (int64_t w = 0; w < W; ++w) {
      scratch[l * W + w] = u_block[l * W + w] + (partner >= 0 ? u_block[partner * W + w] : weight_t(0));
    }
  }
  return scratch;
}

// The largest |value| of count values; NaN if any is NaN (so a bound built from it fails every test).
// Taken on the bit patterns: with the sign bit cleared, floats order as their bits do as unsigned
// integers, and every NaN's bits lie above infinity's, so one integer max finds both. It vectorises,
// where a float max that also tests for NaN ran one value at a time (a fifth of the CPU forward's
// scan time at PoseMamba-L's block shape).
template <typename weight_t>
weight_t abs_max(const weight_t* values, int64_t count) {
  using bits_t = std::conditional_t<sizeof(weight_t) == sizeof(uint32_t), uint32_t, uint64_t>;
  static_assert(sizeof(bits_t) == sizeof(weight_t), "float or double");
  constexpr bits_t kMagnitude = ~bits_t(0) >> 1;
  bits_t bound = 0;
  for (int64_t i = 0; i < count; ++i) {
    bits_t bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    bits &= kMagnitude;
    bound = bits > bound ? bits : bound;
  }
  weight_t result;
  std::memcpy(&result, &bound, sizeof(result));
  return result;
}

// A[p, d, :] for the block as (N, W), D[p, d] and delta_bias[p, d] as (W); zero past width and where
// absent (exp(0) = 1 keeps the padded channels' states at zero).
template <typename weight_t>
void path_weights(const weight_t* A_path, const weight_t* D_path, const weight_t* bias_path, int64_t d_begin,
                  int64_t width, int64_t d_state, weight_t* A_block, weight_t* D_block, weight_t* bias_block) {
  constexpr int64_t W = kCpuChannelBlock;
  std::fill(A_block, A_block + d_state * W, weight_t(0));
  std::fill(D_block, D_block + W, weight_t(0));
  std::fill(bias_block, bias_block + W, weight_t(0));
  for (int64_t w = 0; w < width; ++w) {
    for (int64_t n = 0; n < d_state; ++n) A_block[n * W + w] = A_path[(d_begin + w) * d_state + n];
    if (D_path) D_block[w] = D_path[d_begin + w];
    if (bias_path) bias_block[w] = bias_path[d_begin + w];
  }
}

}  // namespace posemamba
