// CPU implementation of posemamba::multi_path_scan_fwd.
//
// One task per (batch, channel): it runs every path for its channel and sums them into its own row of
// the output, so tasks never share a written element: no races, no reductions, and the result does
// not depend on the thread count. The per-step math comes from multi_path_scan.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../multi_path_scan_host.h"

namespace posemamba {
namespace {

template <typename input_t>
void multi_path_scan_fwd_kernel(const MultiPathScanParams& p) {
  using weight_t = at::opmath_type<input_t>;
  const auto* u = static_cast<const input_t*>(p.u);
  const auto* delta = static_cast<const input_t*>(p.delta);
  const auto* A = static_cast<const weight_t*>(p.A);
  const auto* B = static_cast<const input_t*>(p.B);
  const auto* C = static_cast<const input_t*>(p.C);
  const auto* D = static_cast<const weight_t*>(p.D);
  const auto* z = static_cast<const input_t*>(p.z);
  const auto* delta_bias = static_cast<const weight_t*>(p.delta_bias);
  auto* out = static_cast<input_t*>(p.out);
  auto* out_ungated = static_cast<input_t*>(p.out_ungated);
  auto* chunk_states = static_cast<weight_t*>(p.chunk_states);
  const int64_t L = p.seqlen, N = p.d_state;

  at::parallel_for(0, p.batch * p.dim, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<weight_t> y(L);
    weight_t h[kMaxStateDim];
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t b = task / p.dim, d = task % p.dim;
      const input_t* u_row = u + task * L;
      std::fill(y.begin(), y.end(), weight_t(0));
      for (int64_t path = 0; path < p.n_paths; ++path) {
        const int64_t* order = p.paths + path * L;
        const int64_t* mix_row = p.mix ? p.mix + path * L : nullptr;
        const int64_t path_channel = path * p.dim + d;
        const int64_t batch_path = b * p.n_paths + path;
        const input_t* delta_row = delta + (batch_path * p.dim + d) * L;
        const input_t* B_path = B + batch_path * N * L;
        const input_t* C_path = C + batch_path * N * L;
        const weight_t* A_row = A + path_channel * N;
        const weight_t bias = delta_bias ? delta_bias[path_channel] : weight_t(0);
        const weight_t skip = D ? D[path_channel] : weight_t(0);
        weight_t* saved_states = chunk_states + (batch_path * p.dim + d) * p.n_chunks * N;

        std::fill(h, h + N, weight_t(0));
        for (int64_t s = 0; s < L; ++s) {
          if (s % kScanChunk == 0) {
            std::copy(h, h + N, saved_states + (s / kScanChunk) * N);
          }
          const int64_t l = order[s];
          weight_t v = u_row[l];
          if (mix_row && mix_row[l] >= 0) v += weight_t(u_row[mix_row[l]]);
          const weight_t dt = step_size<weight_t>(delta_row[l], bias, p.delta_softplus);
          const weight_t dt_v = dt * v;
          weight_t y_step = skip * v;
          for (int64_t n = 0; n < N; ++n) {
            h[n] = state_update<weight_t>(h[n], dt, A_row[n], dt_v, B_path[n * L + l]);
            y_step += weight_t(C_path[n * L + l]) * h[n];
          }
          y[l] += y_step;
        }
      }
      input_t* out_row = out + task * L;
      if (z) {
        const input_t* z_row = z + task * L;
        input_t* ungated_row = out_ungated + task * L;
        for (int64_t l = 0; l < L; ++l) {
          ungated_row[l] = y[l];
          out_row[l] = gate_output<weight_t>(y[l], z_row[l]);
        }
      } else {
        std::copy(y.begin(), y.end(), out_row);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_path_scan_fwd_cpu(
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
    bool delta_softplus) {
  ScanForwardTensors t = prepare_scan_forward(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus);
  check_scan_indices_on_host(t.paths, t.mix, t.params.seqlen);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "multi_path_scan_fwd_cpu", [&] {
    multi_path_scan_fwd_kernel<scalar_t>(t.params);
  });
  return {t.out, t.out_ungated, t.chunk_states};
}

}  // namespace

TORCH_LIBRARY_IMPL(posemamba, CPU, m) {
  m.impl("multi_path_scan_fwd", &multi_path_scan_fwd_cpu);
}

}  // namespace posemamba
