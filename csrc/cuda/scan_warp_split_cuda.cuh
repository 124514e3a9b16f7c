// The warp split's pieces (scan_warp_spans_cuda.cuh, the forward; scan_warp_spans_backward_cuda.cuh,
// the backward), and the choice between it and the chunked split per path (path_splits).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "scan_cuda_common.cuh"
#include "scan_step_tiles_cuda.cuh"

namespace posemamba {
namespace cuda {

// The warp splits (scan_warp_spans_cuda.cuh, the forward; scan_warp_spans_backward_cuda.cuh, the
// backward), for paths cut into spans of a length the caller gives per path: a warp walks one span of one
// (batch, path)'s 32 channels alone, 8 steps a tile, with no block-wide barriers, and a block's warps
// take consecutive spans of the same (batch, path, 32 channels), so that on a path whose step
// s + span_length visits a position next to step s's (PoseMamba's joint-major paths, spans of T
// frames) they read the same sectors at the same time.

// B and C of a warp's tile of steps for kStates state entries from `group`: step-major, so that a lane
// reads one step's entries as 16-byte rows (the forward, whose loop over a step's entries is unrolled),
// or entry-major, one entry's steps (kEntryMajor: the backward's, whose loop over entries is not).
template <typename weight_t, int kStates, bool kEntryMajor>
struct WarpProjections {
  static_assert(kStates % (kWarp / kStepsPerThread) == 0, "a round stages kWarp / kStepsPerThread entries");
  alignas(16) weight_t B[kStepsPerThread * kStates];
  alignas(16) weight_t C[kStepsPerThread * kStates];

  static constexpr C10_HOST_DEVICE int index(int step, int n) {
    return kEntryMajor ? n * kStepsPerThread + step : step * kStates + n;
  }
  __device__ weight_t b(int step, int n) const { return B[index(step, n)]; }
  __device__ weight_t c(int step, int n) const { return C[index(step, n)]; }

  // Every lane of the warp calls it, with the position l of its step tile_step(lane) and whether that
  // step is to be staged: B (kWithB) and C (kWithC) of entries [group, group + kStates), zeros past N or
  // for steps not staged.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ void stage(const PathChannel<input_t>& c, uint32_t l, bool step_staged, int group) {
    const int lane = static_cast<int>(threadIdx.x), step = tile_step(lane);
    constexpr int kEntriesPerRound = kWarp / kStepsPerThread;
    const uint32_t at = l * c.position_stride;
    const RowsAt<input_t> B_at(c.B_path, at), C_at(c.C_path, at);
#pragma unroll
    for (int r = 0; r < kStates / kEntriesPerRound; ++r) {
      const int n = lane / kStepsPerThread + r * kEntriesPerRound;
      const bool loaded = step_staged && group + n < c.N;
      const uint32_t row = static_cast<uint32_t>(group + n) * c.entry_stride;
      if constexpr (kWithB) B[index(step, n)] = loaded ? B_at(row) : weight_t(0);
      if constexpr (kWithC) C[index(step, n)] = loaded ? C_at(row) : weight_t(0);
    }
    __syncwarp();
  }
};

// A tile's positions for the lane's own step on the tile's global side (step tile_step(lane)): where it
// is and where its mix reads from (kNoMixedPosition: nowhere).
struct TilePosition {
  uint32_t l, mixed;
};

// The positions of a warp's walk over tiles from `first`, `stride` steps apart (either way), loaded
// ahead of their use: a tile's position two tiles ahead and its mixed-in position (kWithMixed) one
// tile ahead, each checked when its tile comes, so that neither a tile's loads nor the checks wait on
// a global load of their own. The lane's step is read where it is in [read_begin, read_end); elsewhere
// it takes position 0, whose values the walk leaves unused.
template <typename input_t, bool kWithMixed>
class TilePositions {
 public:
  __device__ TilePositions(const PathChannel<input_t>& c, int read_begin, int read_end, int first, int stride)
      : c_(c), read_begin_(read_begin), read_end_(read_end), stride_(stride),
        l_(c.checked_position(loaded_at(first))), next_(loaded_at(first + stride)),
        mixed_(kWithMixed ? c.loaded_mixed(l_) : -1) {}

  // The positions of the tile from `first` (the walk's next), checked; loads the tile after's mixed-in
  // position and the position of the one after that.
  __device__ TilePosition advance(int first) {
    const TilePosition now{l_, c_.checked_mixed(mixed_)};
    l_ = c_.checked_position(next_);
    if constexpr (kWithMixed) mixed_ = c_.loaded_mixed(l_);
    next_ = loaded_at(first + 2 * stride_);
    return now;
  }

 private:
  // The lane's step's position in the tile from `first`, as loaded.
  __device__ int64_t loaded_at(int first) const {
    const int s = first + tile_step(static_cast<int>(threadIdx.x));
    return s >= read_begin_ && s < read_end_ ? c_.loaded_position(s) : 0;
  }

  const PathChannel<input_t>& c_;
  int read_begin_, read_end_, stride_;
  uint32_t l_;      // the coming tile's position, checked
  int64_t next_;    // the tile after's, as loaded
  int64_t mixed_;   // the coming tile's mixed-in position, as loaded
};

// A warp's (batch, path, 32 channels) and span of span_length steps, from the flat warp index of a pass
// over spans [first_span, first_span + pass_spans) of p's split_paths, warps_per_block warps a block:
// spans fastest, so that a block's warps take consecutive spans. Per lane: its channel, where lanes
// past D follow channel D - 1 (`active` false) and write nothing.
struct WarpSpanTask {
  int64_t b, path, first_channel, span, d;
  int begin, end;  // the span's steps, as 32-bit numbers: L <= 2^26 (check_length)
  bool valid;      // false for the last block's warps past the pass's end: return at once (a whole warp)
  bool active;
};

__device__ __forceinline__ WarpSpanTask warp_span_task(const MultiPathScanParams& p, int warps_per_block,
                                                       int64_t first_span, int64_t pass_spans, int64_t span_length) {
  const int64_t flat = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.y;
  const int64_t channel_blocks = num_channel_blocks(p);
  const int64_t span = first_span + flat % pass_spans, rest = flat / pass_spans;
  const int64_t channel_block = rest % channel_blocks, batch_path = rest / channel_blocks;
  const int64_t first_channel = channel_block * kWarp, lane_channel = first_channel + threadIdx.x;
  const bool active = lane_channel < p.dim, valid = batch_path < p.batch * p.n_split_paths;
  const int64_t begin = span * span_length, end = begin + span_length < p.seqlen ? begin + span_length : p.seqlen;
  return {batch_path / p.n_split_paths, valid ? p.split_paths[batch_path % p.n_split_paths] : 0, first_channel, span,
          active ? lane_channel : p.dim - 1, static_cast<int>(begin), static_cast<int>(end), valid, active};
}

// The spans of span_length steps a path is cut into, and the blocks of warps_per_block warps (a warp per
// (batch, path, 32 channels) and span) that a pass over pass_spans of them takes.
inline int64_t num_warp_spans(const MultiPathScanParams& p, int64_t span_length) {
  return (p.seqlen + span_length - 1) / span_length;
}

inline unsigned warp_span_blocks(const MultiPathScanParams& p, int64_t pass_spans, int warps_per_block) {
  const int64_t warps = p.batch * p.n_split_paths * num_channel_blocks(p) * pass_spans;
  const int64_t blocks = (warps + warps_per_block - 1) / warps_per_block;
  constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
  TORCH_CHECK(blocks <= kMaxGridX, "u: the CUDA warp split takes at most ", kMaxGridX, " blocks of (batch, path, 32 ",
              "channels, span), got ", blocks);
  return static_cast<unsigned>(blocks);
}

// Whether the warp split may take the backward (else the forward) where the caller gives a span length:
// both may (the default, or POSEMAMBA_CUDA_WARP_SPANS=1), the forward's only ("forward") or neither
// ("0"). Read once per process, for benchmarks/gpu_report.py's comparison with the chunked splits.
inline bool warp_spans_allowed(bool backward) {
  static const std::string setting = [] {
    const char* text = std::getenv("POSEMAMBA_CUDA_WARP_SPANS");
    const std::string value(text == nullptr || *text == '\0' ? "1" : text);
    TORCH_CHECK(value == "0" || value == "1" || value == "forward",
                "POSEMAMBA_CUDA_WARP_SPANS must be 0, 1 or forward, got '", value, "'");
    return value;
  }();
  return setting == "1" || (setting == "forward" && !backward);
}

// The paths one work split takes, launched together: those of split_paths[0 .. n_paths), walked in
// spans of span_length steps by the warp split, or by the chunked split where span_length is 0.
struct PathSplit {
  int64_t span_length = 0;
  int64_t n_paths = 0;
  int8_t paths[kMaxPaths] = {};

  // p for this split's launches: its paths.
  template <typename Params>
  Params params_of(const Params& p) const {
    Params split = p;
    split.n_split_paths = n_paths;
    std::copy(paths, paths + n_paths, split.split_paths);
    return split;
  }
};

// The work splits of p's paths (the forward and the backward take the same): the warp split for the
// paths whose hint cuts them into more than one span of at least a tile, a launch per span length;
// the chunked split for the others (PoseMamba's frame-major paths, which gain nothing from spans: a
// path along consecutive positions reads whole sectors anyway, and spans cost a second exp per
// state update). A warp split's spans are cut into equal parts where its blocks (kSegmentWarps warps)
// would not fill the device's multiprocessors (kSpanBlocksPerMultiprocessor each): small batches,
// whose inputs fit in L2 anyway, trade the sharing of sectors for parallelism.
inline std::vector<PathSplit> path_splits(const MultiPathScanParams& p, bool backward) {
  std::vector<PathSplit> splits;
  for (int64_t path = 0; path < p.n_paths; ++path) {
    const int64_t hint = p.span_lengths[path];
    const bool usable = hint >= kStepsPerThread && hint < p.seqlen && warp_spans_allowed(backward);
    const int64_t span_length = usable ? hint : 0;
    auto split = std::find_if(splits.begin(), splits.end(),
                              [&](const PathSplit& s) { return s.span_length == span_length; });
    if (split == splits.end()) split = splits.insert(splits.end(), PathSplit{span_length});
    split->paths[split->n_paths++] = static_cast<int8_t>(path);
  }
  const int64_t wanted = simt::multiprocessor_count() * int64_t{kSpanBlocksPerMultiprocessor};
  for (PathSplit& split : splits) {
    if (split.span_length == 0) continue;
    const MultiPathScanParams split_params = split.params_of(p);
    const int64_t blocks = warp_span_blocks(split_params, num_warp_spans(p, split.span_length), kSegmentWarps);
    const int64_t parts = blocks >= wanted ? 1 : (wanted + blocks - 1) / blocks;
    split.span_length = std::max<int64_t>(kStepsPerThread, (split.span_length + parts - 1) / parts);
  }
  return splits;
}

}  // namespace cuda
}  // namespace posemamba
