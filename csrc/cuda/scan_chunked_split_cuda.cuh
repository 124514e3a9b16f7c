// The chunked split's pieces (scan_forward_cuda.cuh, scan_backward_cuda.cuh): a block walks a span of a
// path's 64-step chunks, its 8 warps sharing each chunk, with B and C of the chunk staged in shared
// memory and the warps' maps composed across them; paths are cut into spans where whole paths would
// not fill the GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "scan_cuda_common.cuh"
#include "scan_step_tiles_cuda.cuh"

namespace posemamba {
namespace cuda {

// The chunk's first and one-past-last step.
__device__ __forceinline__ int64_t chunk_begin(int64_t chunk) {
  return chunk * kScanChunk;
}

__device__ __forceinline__ int64_t chunk_end(int64_t chunk, int64_t seqlen) {
  return chunk * kScanChunk + kScanChunk < seqlen ? chunk * kScanChunk + kScanChunk : seqlen;
}

// The blocks per multiprocessor that cutting paths into spans aims for: 2 (the best of 0, 1, 2 and 4
// for the batch-1 and -4 forward on an H200, and within 10% of the best forward+backward), or
// POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM (0: never cut), read once per process, for
// benchmarks/gpu_report.py's sweep over it.
inline int64_t span_blocks_per_multiprocessor() {
  static const int64_t blocks = [] {
    const char* text = std::getenv("POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM");
    if (text == nullptr || *text == '\0') return int64_t{2};
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    TORCH_CHECK(*end == '\0' && value >= 0 && value <= 64,
                "POSEMAMBA_CUDA_SPAN_BLOCKS_PER_SM must be a whole number from 0 to 64, got '", text, "'");
    return static_cast<int64_t>(value);
  }();
  return blocks;
}

// Chunks per span: all of them where the blocks of whole paths fill the device's multiprocessors
// (span_blocks_per_multiprocessor() each), else as few as fill them.
inline int64_t chunks_per_span(const MultiPathScanParams& p) {
  const int64_t path_blocks = p.batch * p.n_split_paths * num_channel_blocks(p);
  const int64_t wanted_blocks = simt::multiprocessor_count() * span_blocks_per_multiprocessor();
  const int64_t wanted_spans = (wanted_blocks + path_blocks - 1) / path_blocks;
  const int64_t spans = std::max<int64_t>(1, std::min(p.n_chunks, wanted_spans));
  return (p.n_chunks + spans - 1) / spans;
}

C10_HOST_DEVICE inline int64_t num_spans(const MultiPathScanParams& p, int64_t chunks_per_span) {
  return (p.n_chunks + chunks_per_span - 1) / chunks_per_span;
}

// A chunk's positions, and B and C of its steps (and A of the lanes' channels) for a group of state
// entries, staged in shared memory by the whole block: the steps' loads of B and C then read one
// broadcast row of shared memory each, instead of a gathered global load with its own address
// arithmetic per (step, entry), and each position is read from the path (and checked) once per
// block. B and C take 8.5 KB in float; 4 KB in double (the tests' and gradcheck's type), whose
// forward kernel has no more left of the 48 KB of static shared memory.
template <typename weight_t>
struct ChunkProjections {
  static constexpr int kStates = sizeof(weight_t) == sizeof(float) ? 16 : 4;  // state entries per group
  // float rows: 16-byte aligned, each a 4-bank shift from the last (stage); double's unpadded, its forward
  // having no room left in the 48 KB (its staging's bank conflicts cost a test type only).
  static constexpr int kRowLength = sizeof(weight_t) == sizeof(float) ? kScanChunk + 4 : kScanChunk;
  alignas(16) weight_t B[kStates][kRowLength];
  alignas(16) weight_t C[kStates][kRowLength];
  alignas(16) uint32_t position[kScanChunk];  // L <= 2^26 (check_length, scan_cuda.h); 0 past the path's end
  uint32_t mixed_position[kScanChunk];         // mix at the step's position, or kNoMixedPosition
  weight_t A[kStates][kWarp];                  // A of the lanes' channels, for the group's entries

  // Every thread of the block calls it (then a barrier before any reads). With the first group, the
  // positions and the steps' mixed-in positions (checked here, once per block: the warps' loads of u
  // then wait on no global load of their own before them) go first, the block's threads taking the
  // chunk's steps in order; B and C then come from there, staged in the order of their memory: steps
  // first where positions are consecutive in it (a path along consecutive positions loads them
  // coalesced), else entries first (B and C positions-major, as a model's projection rows give them: a
  // step's entries are one run of memory). Steps past the path's end and entries past N are zeros. B
  // and C only where kWithB and kWithC: the passes over spans need one each.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ void stage(const PathChannel<input_t>& c, int64_t chunk, int64_t first_state) {
    constexpr int kThreads = kWarp * kSegmentWarps;
    static_assert(kThreads % kScanChunk == 0, "a block's threads cover whole chunks");
    const int thread = static_cast<int>(threadIdx.y) * kWarp + static_cast<int>(threadIdx.x);
    for (int n = static_cast<int>(threadIdx.y); n < kStates; n += kSegmentWarps) {
      A[n][threadIdx.x] = first_state + n < c.N ? c.A_row[first_state + n] : weight_t(0);
    }
    if (first_state == 0) {
      if (thread < kScanChunk) {
        const int64_t s = chunk_begin(chunk) + thread;
        const uint32_t l = s < c.L ? c.position(s) : 0;
        position[thread] = l;
        mixed_position[thread] = c.mixed_position(l);
      }
      __syncthreads();  // the positions, for B's and C's loads
    }
    // Item i of the group is entry n at step s: entries first in runs of 2^run_bits (B and C
    // positions-major: a warp's access is 8 entries, a 32-byte run, at each of 4 steps, and float rows
    // kRowLength apart put entry n's step s in bank 4 n + s, 32 distinct banks), else steps first
    // (run_bits 0: n = i / kScanChunk, s = i % kScanChunk). One loop either way, few registers: the
    // backward stages later groups with a thread's steps' values live.
    constexpr int kChunkBits = 6, kRunBits = kStates < 8 ? 2 : 3;
    static_assert(kScanChunk == 1 << kChunkBits && kStates % (1 << kRunBits) == 0, "runs of entries tile a group");
    static_assert(kStates * kScanChunk % kThreads == 0, "the block's threads take a group's items in rounds");
    const int run_bits = c.entry_stride == 1 ? kRunBits : 0;
    const int steps_in_chunk = static_cast<int>(chunk_end(chunk, c.L) - chunk_begin(chunk));
    const int group_states = static_cast<int>(c.N - first_state);
#pragma unroll
    for (int round = 0; round < kStates * kScanChunk / kThreads; ++round) {
      const int i = round * kThreads + thread;
      const int n = (i >> (kChunkBits + run_bits) << run_bits) | (i & ((1 << run_bits) - 1));
      const int step = (i >> run_bits) & (kScanChunk - 1);
      const bool loaded = step < steps_in_chunk && n < group_states;
      const uint32_t offset = c.projection_offset(static_cast<int>(first_state) + n, position[step]);
      if constexpr (kWithB) B[n][step] = loaded ? static_cast<weight_t>(c.B_path[offset]) : weight_t(0);
      if constexpr (kWithC) C[n][step] = loaded ? static_cast<weight_t>(c.C_path[offset]) : weight_t(0);
    }
  }

  // The start of the group of state entries from first_state, which every thread of the block calls:
  // the first group is staged with the chunk; a later one once every thread is done with the last.
  // Returns the group's end.
  template <bool kWithB, bool kWithC, typename input_t>
  __device__ int enter_group(const PathChannel<input_t>& c, int64_t chunk, int first_state, int n_states) {
    if (first_state > 0) {
      __syncthreads();
      stage<kWithB, kWithC>(c, chunk, first_state);
      __syncthreads();
    }
    return first_state + kStates < n_states ? first_state + kStates : n_states;
  }
};

// The adjoint maps a block's warps staged for this lane (one per warp, in step order), composed over
// the warps after `warp` (the adjoint runs last step first). Unrolled and predicated: a loop of
// run-time length compiles to several unrolled copies.
template <typename weight_t>
__device__ __forceinline__ StateMap<weight_t> maps_after_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp],
                                                              int warp, int lane) {
  StateMap<weight_t> after = StateMap<weight_t>::identity();
#pragma unroll
  for (int w = kSegmentWarps - 1; w > 0; --w) {
    if (w > warp) after = after.then(maps[w][lane]);
  }
  return after;
}

// A state (or adjoint) h carried through the same maps, over the warps before `warp` (or after it):
// where only the carried value is needed, one FMA a warp instead of a map composition.
template <typename weight_t>
__device__ __forceinline__ weight_t carry_before_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp], int warp,
                                                      int lane, weight_t h) {
#pragma unroll
  for (int w = 0; w < kSegmentWarps - 1; ++w) {
    if (w < warp) h = maps[w][lane].apply(h);
  }
  return h;
}

template <typename weight_t>
__device__ __forceinline__ weight_t carry_after_warp(const StateMap<weight_t> (&maps)[kSegmentWarps][kWarp], int warp,
                                                     int lane, weight_t h) {
#pragma unroll
  for (int w = kSegmentWarps - 1; w > 0; --w) {
    if (w > warp) h = maps[w][lane].apply(h);
  }
  return h;
}

// A span block's (batch, path, channel), span and warp; lanes past D follow channel D - 1 through
// the barriers (`active` false) and write nothing. The grid covers every path (path_channel_grid), so
// that the path is blockIdx.y, the same register for the whole block (a path looked up in p's
// split_paths costs the loops over state entries a tenth more instructions): the blocks of paths
// outside p's split_paths (`in_split` false) return at once.
struct SpanTask {
  int64_t b, path, d, first_channel, span;
  int lane, warp;
  bool active, in_split;
};

// first_span: the span of the grid's first blocks (passes that leave out the first span start at 1).
__device__ __forceinline__ SpanTask span_task(const MultiPathScanParams& p, int64_t first_span) {
  const int64_t channel_blocks = num_channel_blocks(p);
  const int64_t first_channel = static_cast<int64_t>(blockIdx.x) % channel_blocks * kWarp;
  const int64_t lane_channel = first_channel + threadIdx.x;
  const bool active = lane_channel < p.dim;
  const int64_t path = blockIdx.y;
  bool in_split = false;
  for (int64_t i = 0; i < p.n_split_paths; ++i) in_split = in_split || p.split_paths[i] == path;
  return {static_cast<int64_t>(blockIdx.z), path, active ? lane_channel : p.dim - 1, first_channel,
          first_span + static_cast<int64_t>(blockIdx.x) / channel_blocks, static_cast<int>(threadIdx.x),
          static_cast<int>(threadIdx.y), active, in_split};
}

}  // namespace cuda
}  // namespace posemamba
