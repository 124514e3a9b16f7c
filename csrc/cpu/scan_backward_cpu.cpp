// CPU backward of posemamba::multi_path_scan_bwd.
//
// One task per (batch, block of kChannelBlock channels); per-element gradients stay inside
// the task that owns the channel, and the sums over channels, batch and length go through per-task
// partials that a fixed-order pass adds. Results never depend on the thread count.
// The per-step math comes from multi_path_scan.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../multi_path_scan_host.h"

namespace posemamba {
namespace {

// Reverse-mode pass of one (batch, channel block) task. For each channel and path it walks the chunks
// last to first: recompute the chunk's states from the saved start state, then run the adjoint
// recurrence backwards through the chunk.
template <typename input_t>
void multi_path_scan_bwd_task(const MultiPathScanBwdParams& p, int64_t b, int64_t block,
                              std::vector<at::opmath_type<input_t>>& scratch) {
  using weight_t = at::opmath_type<input_t>;
  const auto* u = static_cast<const input_t*>(p.u);
  const auto* delta = static_cast<const input_t*>(p.delta);
  const auto* A = static_cast<const weight_t*>(p.A);
  const auto* B = static_cast<const input_t*>(p.B);
  const auto* C = static_cast<const input_t*>(p.C);
  const auto* D = static_cast<const weight_t*>(p.D);
  const auto* z = static_cast<const input_t*>(p.z);
  const auto* delta_bias = static_cast<const weight_t*>(p.delta_bias);
  const auto* grad_out = static_cast<const input_t*>(p.grad_out);
  const auto* out_ungated = static_cast<const input_t*>(p.out_ungated);
  const auto* chunk_states = static_cast<const weight_t*>(p.chunk_states);
  auto* du = static_cast<input_t*>(p.du);
  auto* ddelta = static_cast<input_t*>(p.ddelta);
  auto* dz = static_cast<input_t*>(p.dz);
  auto* dB_block = static_cast<weight_t*>(p.dB_partial) + (b * p.n_channel_blocks + block) * p.n_paths * p.d_state * p.seqlen;
  auto* dC_block = static_cast<weight_t*>(p.dC_partial) + (b * p.n_channel_blocks + block) * p.n_paths * p.d_state * p.seqlen;
  auto* dA_partial = static_cast<weight_t*>(p.dA_partial);
  auto* dD_partial = static_cast<weight_t*>(p.dD_partial);
  auto* ddelta_bias_partial = static_cast<weight_t*>(p.ddelta_bias_partial);
  const int64_t L = p.seqlen, N = p.d_state;

  // scratch: dy (L), du (L), then each chunk step's states (after the step) and decays (kScanChunk x N).
  scratch.resize(2 * L + 2 * kScanChunk * N);
  weight_t* dy = scratch.data();
  weight_t* du_acc = dy + L;
  weight_t* states = du_acc + L;
  weight_t* decays = states + kScanChunk * N;
  weight_t dh[kMaxStateDim];
  weight_t dA_acc[kMaxStateDim];

  std::fill(dB_block, dB_block + p.n_paths * N * L, weight_t(0));
  std::fill(dC_block, dC_block + p.n_paths * N * L, weight_t(0));
  const int64_t d_end = std::min(p.dim, (block + 1) * kChannelBlock);
  for (int64_t d = block * kChannelBlock; d < d_end; ++d) {
    const int64_t row = b * p.dim + d;
    const input_t* u_row = u + row * L;
    const input_t* grad_row = grad_out + row * L;
    // The gate: out = y * silu(z), so dy = dout * silu(z) and dz = dout * y * silu'(z).
    for (int64_t l = 0; l < L; ++l) {
      const weight_t g = grad_row[l];
      if (z) {
        const weight_t z_l = z[row * L + l];
        dy[l] = g * silu(z_l);
        dz[row * L + l] = g * weight_t(out_ungated[row * L + l]) * silu_grad(z_l);
      } else {
        dy[l] = g;
      }
    }
    std::fill(du_acc, du_acc + L, weight_t(0));

    for (int64_t path = 0; path < p.n_paths; ++path) {
      const int64_t* order = p.paths + path * L;
      const int64_t* mix_row = p.mix ? p.mix + path * L : nullptr;
      const int64_t path_channel = path * p.dim + d;
      const int64_t batch_path = b * p.n_paths + path;
      const input_t* delta_row = delta + (batch_path * p.dim + d) * L;
      input_t* ddelta_row = ddelta + (batch_path * p.dim + d) * L;
      const input_t* B_path = B + batch_path * N * L;
      const input_t* C_path = C + batch_path * N * L;
      weight_t* dB_path = dB_block + path * N * L;
      weight_t* dC_path = dC_block + path * N * L;
      const weight_t* A_row = A + path_channel * N;
      const weight_t bias = delta_bias ? delta_bias[path_channel] : weight_t(0);
      const weight_t skip = D ? D[path_channel] : weight_t(0);
      const weight_t* saved_states = chunk_states + (batch_path * p.dim + d) * p.n_chunks * N;
      weight_t dD_acc = 0, ddelta_bias_acc = 0;
      std::fill(dh, dh + N, weight_t(0));
      std::fill(dA_acc, dA_acc + N, weight_t(0));

      auto input_at = [&](int64_t l) {
        weight_t v = u_row[l];
        if (mix_row && mix_row[l] >= 0) v += weight_t(u_row[mix_row[l]]);
        return v;
      };
      for (int64_t chunk = p.n_chunks - 1; chunk >= 0; --chunk) {
        const int64_t s_begin = chunk * kScanChunk, s_end = std::min(L, s_begin + kScanChunk);
        // Recompute this chunk's states from the state saved before its first step.
        const weight_t* h_prev = saved_states + chunk * N;
        for (int64_t s = s_begin; s < s_end; ++s) {
          const int64_t l = order[s];
          const weight_t dt = step_size<weight_t>(delta_row[l], bias, p.delta_softplus);
          const weight_t dt_v = dt * input_at(l);
          weight_t* h = states + (s - s_begin) * N;
          weight_t* decay = decays + (s - s_begin) * N;
          for (int64_t n = 0; n < N; ++n) {
            decay[n] = step_decay(dt, A_row[n]);
            h[n] = state_update<weight_t>(h_prev[n], decay[n], dt_v, B_path[n * L + l]);
          }
          h_prev = h;
        }
        // The adjoint recurrence, last step first; dh carries the gradient of the state.
        for (int64_t s = s_end - 1; s >= s_begin; --s) {
          const int64_t l = order[s];
          const weight_t v = input_at(l);
          const weight_t dt = step_size<weight_t>(delta_row[l], bias, p.delta_softplus);
          const weight_t dt_v = dt * v;
          const weight_t dy_l = dy[l];
          const weight_t* h = states + (s - s_begin) * N;
          const weight_t* h_before = s > s_begin ? h - N : saved_states + chunk * N;
          const weight_t* decay = decays + (s - s_begin) * N;
          weight_t d_dt = 0, d_dt_v = 0;
          for (int64_t n = 0; n < N; ++n) {
            dC_path[n * L + l] += dy_l * h[n];
            dh[n] += dy_l * weight_t(C_path[n * L + l]);
            dh[n] = state_update_backward<weight_t>(dh[n], h_before[n], decay[n], dt, A_row[n], dt_v,
                                                    B_path[n * L + l], d_dt, dA_acc[n], d_dt_v, dB_path[n * L + l]);
          }
          d_dt += d_dt_v * v;
          const weight_t dv = d_dt_v * dt + dy_l * skip;
          dD_acc += dy_l * v;
          const weight_t d_raw = d_dt * step_size_grad<weight_t>(delta_row[l], bias, p.delta_softplus);
          ddelta_row[l] = d_raw;
          ddelta_bias_acc += d_raw;
          du_acc[l] += dv;
          if (mix_row && mix_row[l] >= 0) du_acc[mix_row[l]] += dv;
        }
      }
      std::copy(dA_acc, dA_acc + N, dA_partial + (batch_path * p.dim + d) * N);
      dD_partial[batch_path * p.dim + d] = dD_acc;
      ddelta_bias_partial[batch_path * p.dim + d] = ddelta_bias_acc;
    }
    std::copy(du_acc, du_acc + L, du + row * L);
  }
}

// Adds partials over their leading dimension in index order: out[i] = sum_k partial[k][i] for each
// of the `count` trailing elements, each sum taken in the same order whatever the thread count.
template <typename weight_t>
void sum_partials_in_order(const weight_t* partial, int64_t n_partials, int64_t count, int64_t batch_of,
                           weight_t* out_base) {
  at::parallel_for(0, batch_of * count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t outer = i / count, inner = i % count;
      const weight_t* column = partial + outer * n_partials * count + inner;
      weight_t total = 0;
      for (int64_t k = 0; k < n_partials; ++k) total += column[k * count];
      out_base[i] = total;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
multi_path_scan_bwd_cpu(
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
    bool delta_softplus) {
  ScanBackward g = prepare_scan_backward(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix,
                                         out_ungated, chunk_states, delta_softplus);
  check_scan_indices_on_host(g.inputs, g.params.seqlen);
  const MultiPathScanBwdParams& p = g.params;
  at::Tensor dA = at::empty_like(g.inputs.A);
  at::Tensor dB_sum = at::empty({p.batch, p.n_paths, p.d_state, p.seqlen}, A.options());
  at::Tensor dC_sum = at::empty_like(dB_sum);
  at::Tensor dD = at::empty({p.n_paths, p.dim}, A.options());
  at::Tensor ddelta_bias = at::empty_like(dD);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_bwd_cpu", [&] {
    using weight_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.n_channel_blocks, 1, [&](int64_t task_begin, int64_t task_end) {
      std::vector<weight_t> scratch;
      for (int64_t task = task_begin; task < task_end; ++task) {
        multi_path_scan_bwd_task<scalar_t>(p, task / p.n_channel_blocks, task % p.n_channel_blocks, scratch);
      }
    });
    const int64_t bnl = p.n_paths * p.d_state * p.seqlen;
    sum_partials_in_order(g.dB_partial.const_data_ptr<weight_t>(), p.n_channel_blocks, bnl, p.batch,
                          dB_sum.mutable_data_ptr<weight_t>());
    sum_partials_in_order(g.dC_partial.const_data_ptr<weight_t>(), p.n_channel_blocks, bnl, p.batch,
                          dC_sum.mutable_data_ptr<weight_t>());
    sum_partials_in_order(g.dA_partial.const_data_ptr<weight_t>(), p.batch, A.numel(), 1,
                          dA.mutable_data_ptr<weight_t>());
    sum_partials_in_order(g.dD_partial.const_data_ptr<weight_t>(), p.batch, dD.numel(), 1,
                          dD.mutable_data_ptr<weight_t>());
    sum_partials_in_order(g.ddelta_bias_partial.const_data_ptr<weight_t>(), p.batch, dD.numel(), 1,
                          ddelta_bias.mutable_data_ptr<weight_t>());
  });
  // Absent inputs get distinct empty gradients: outputs of an op must not alias each other.
  return {g.du, g.ddelta, dA, dB_sum.to(u.scalar_type()), dC_sum.to(u.scalar_type()),
          D.has_value() ? dD : at::empty({0}, A.options()), g.dz,
          delta_bias.has_value() ? ddelta_bias : at::empty({0}, A.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(posemamba, CPU, m) {
  m.impl("multi_path_scan_bwd", &multi_path_scan_bwd_cpu);
}

}  // namespace posemamba
