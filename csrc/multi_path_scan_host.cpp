#include "multi_path_scan_host.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace posemamba {
namespace {

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ", t.sizes());
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& u, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == u.device(), name, " must be on ", u.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

}  // namespace

ScanForwardTensors prepare_scan_forward(
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
  TORCH_CHECK(u.dim() == 3, "u must be (batch, D, L), got shape ", u.sizes());
  TORCH_CHECK(A.dim() == 3, "A must be (P, D, N), got shape ", A.sizes());
  const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
  const int64_t n_paths = A.size(0), d_state = A.size(2);
  TORCH_CHECK(n_paths >= 1 && n_paths <= kMaxPaths, "A: P must be in [1, ", kMaxPaths, "], got ", n_paths);
  TORCH_CHECK(d_state >= 1 && d_state <= kMaxStateDim, "A: N must be in [1, ", kMaxStateDim, "], got ", d_state);

  const at::ScalarType input_dtype = u.scalar_type();
  const at::ScalarType weight_dtype = at::toOpMathType(input_dtype);
  check_shape(delta, "delta", {batch, n_paths, dim, seqlen});
  check_shape(A, "A", {n_paths, dim, d_state});
  check_shape(B, "B", {batch, n_paths, d_state, seqlen});
  check_shape(C, "C", {batch, n_paths, d_state, seqlen});
  check_shape(paths, "paths", {n_paths, seqlen});
  check_like(delta, "delta", u, input_dtype);
  check_like(B, "B", u, input_dtype);
  check_like(C, "C", u, input_dtype);
  check_like(A, "A", u, weight_dtype);
  check_like(paths, "paths", u, at::kLong);
  if (D.has_value()) {
    check_shape(*D, "D", {n_paths, dim});
    check_like(*D, "D", u, weight_dtype);
  }
  if (delta_bias.has_value()) {
    check_shape(*delta_bias, "delta_bias", {n_paths, dim});
    check_like(*delta_bias, "delta_bias", u, weight_dtype);
  }
  if (z.has_value()) {
    check_shape(*z, "z", {batch, dim, seqlen});
    check_like(*z, "z", u, input_dtype);
  }
  if (mix.has_value()) {
    check_shape(*mix, "mix", {n_paths, seqlen});
    check_like(*mix, "mix", u, at::kLong);
  }

  ScanForwardTensors t;
  t.u = u.contiguous();
  t.delta = delta.contiguous();
  t.A = A.contiguous();
  t.B = B.contiguous();
  t.C = C.contiguous();
  t.paths = paths.contiguous();
  t.D = optional_contiguous(D);
  t.z = optional_contiguous(z);
  t.delta_bias = optional_contiguous(delta_bias);
  t.mix = optional_contiguous(mix);

  const int64_t n_chunks = num_scan_chunks(seqlen);
  t.out = at::empty({batch, dim, seqlen}, u.options());
  t.out_ungated = z.has_value() ? at::empty({batch, dim, seqlen}, u.options()) : at::empty({0}, u.options());
  t.chunk_states = at::empty({batch, n_paths, dim, n_chunks, d_state}, u.options().dtype(weight_dtype));

  MultiPathScanParams& p = t.params;
  p.batch = batch;
  p.dim = dim;
  p.n_paths = n_paths;
  p.d_state = d_state;
  p.seqlen = seqlen;
  p.n_chunks = n_chunks;
  p.delta_softplus = delta_softplus;
  p.u = t.u.const_data_ptr();
  p.delta = t.delta.const_data_ptr();
  p.A = t.A.const_data_ptr();
  p.B = t.B.const_data_ptr();
  p.C = t.C.const_data_ptr();
  p.D = t.D.defined() ? t.D.const_data_ptr() : nullptr;
  p.z = t.z.defined() ? t.z.const_data_ptr() : nullptr;
  p.delta_bias = t.delta_bias.defined() ? t.delta_bias.const_data_ptr() : nullptr;
  p.paths = t.paths.const_data_ptr<int64_t>();
  p.mix = t.mix.defined() ? t.mix.const_data_ptr<int64_t>() : nullptr;
  p.out = t.out.mutable_data_ptr();
  p.out_ungated = z.has_value() ? t.out_ungated.mutable_data_ptr() : nullptr;
  p.chunk_states = t.chunk_states.mutable_data_ptr();
  return t;
}

void check_scan_indices_on_host(const at::Tensor& paths, const at::Tensor& mix, int64_t seqlen) {
  const int64_t* path_index = paths.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < paths.numel(); ++i) {
    TORCH_CHECK(path_index[i] >= 0 && path_index[i] < seqlen,
                "paths must hold positions in [0, L=", seqlen, "), got ", path_index[i], " at flat index ", i);
  }
  if (!mix.defined()) return;
  const int64_t* mix_index = mix.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < mix.numel(); ++i) {
    TORCH_CHECK(mix_index[i] >= -1 && mix_index[i] < seqlen,
                "mix must hold -1 or positions in [0, L=", seqlen, "), got ", mix_index[i], " at flat index ", i);
  }
}

}  // namespace posemamba
