#include "multi_path_scan_host.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>

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

const void* optional_data(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

// The largest offset within a batch element's (D, L) values that the kernels reading them channels-last
// take (32 bits).
constexpr int64_t kMaxBatchElementOffset = (int64_t{1} << 32) - 1;

// Whether the kernels read t, a (batch, D, L) tensor, channels-last: where it is a contiguous (batch, L,
// D) one's transpose (and not also contiguous, as where D or L is 1), with a batch element's offsets in
// 32 bits.
bool reads_channels_last(const at::Tensor& t) {
  return t.dim() == 3 && !t.is_contiguous() && t.transpose(1, 2).is_contiguous() &&
         t.size(1) * t.size(2) <= kMaxBatchElementOffset;
}

// t, a (batch, D, L) tensor, channels-last or contiguous (copied where it is not so already).
at::Tensor in_layout(const at::Tensor& t, bool channels_last) {
  return channels_last ? t.transpose(1, 2).contiguous().transpose(1, 2) : t.contiguous();
}

// A new (batch, D, L) tensor, channels-last (the transpose of a contiguous (batch, L, D) one) or contiguous.
at::Tensor new_activation(const MultiPathScanParams& p, bool channels_last, const at::TensorOptions& options) {
  return channels_last ? at::empty({p.batch, p.seqlen, p.dim}, options).transpose(1, 2)
                       : at::empty({p.batch, p.dim, p.seqlen}, options);
}

// Whether kernels that read B and C in their strides (MultiPathScanParams' projection strides) can read
// these as they are, with the low-rank delta where there is one (null: none): entries (and ranks) and
// positions equally strided in all, as views of one projection's rows are, and a (batch, path)'s
// offsets in 32 bits, as contiguous ones' are (N <= 64, L <= 2^26). Else all are made contiguous.
bool projections_readable_as_given(const at::Tensor& B, const at::Tensor& C, const at::Tensor* delta_low) {
  constexpr int64_t kMaxOffset = (int64_t{1} << 32) - 1;
  const int64_t positions = B.size(3), entry_stride = B.stride(2), position_stride = B.stride(3);
  const auto strided_so = [&](const at::Tensor& t) {
    return t.stride(2) == entry_stride && t.stride(3) == position_stride;
  };
  int64_t rows = B.size(2);
  if (delta_low != nullptr) rows = std::max(rows, std::min(delta_low->size(2), kLowRankTile));
  return strided_so(C) && (delta_low == nullptr || strided_so(*delta_low)) &&
         position_stride <= kMaxOffset / std::max<int64_t>(positions, 1) &&
         (rows - 1) * entry_stride + (positions - 1) * position_stride <= kMaxOffset;
}

// delta, B and C for the kernels: B and C as given where the kernels lay them out themselves (and
// delta contiguous); else, where the kernels read them in strides, B, C and the low-rank delta as
// given where those can describe them (projections_readable_as_given), else all contiguous, and their
// strides in params.
void prepare_projections(const at::Tensor& delta, const at::Tensor& B, const at::Tensor& C, bool low_rank,
                         const KernelTraits& kernels, ScanInputs& t, MultiPathScanParams& p) {
  if (kernels.lays_out_B_C) {
    t.delta = delta.contiguous();
    t.B = B;
    t.C = C;
    return;
  }
  const bool as_given = projections_readable_as_given(B, C, low_rank ? &delta : nullptr);
  t.delta = as_given && low_rank ? delta : delta.contiguous();
  t.B = as_given ? B : B.contiguous();
  t.C = as_given ? C : C.contiguous();
  p.B = t.B.const_data_ptr();
  p.C = t.C.const_data_ptr();
  p.B_batch_stride = t.B.stride(0);
  p.B_path_stride = t.B.stride(1);
  p.C_batch_stride = t.C.stride(0);
  p.C_path_stride = t.C.stride(1);
  p.delta_batch_stride = low_rank ? t.delta.stride(0) : 0;
  p.delta_path_stride = low_rank ? t.delta.stride(1) : 0;
  p.projection_entry_stride = t.B.stride(2);
  p.projection_position_stride = t.B.stride(3);
}

// Checks every input against u and A (which fix batch, D, L, P and N), makes them contiguous (u and z
// left channels-last where the kernels read them so; delta, B and C as prepare_projections leaves
// them), and fills params' sizes, layouts and input pointers.
ScanInputs prepare_scan_inputs(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, bool delta_softplus, const std::optional<at::Tensor>& delta_proj_weight,
    const KernelTraits& kernels, MultiPathScanParams& p) {
  TORCH_CHECK(u.dim() == 3, "u must be (batch, D, L), got shape ", u.sizes());
  TORCH_CHECK(A.dim() == 3, "A must be (P, D, N), got shape ", A.sizes());
  const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
  const int64_t n_paths = A.size(0), d_state = A.size(2);
  TORCH_CHECK(n_paths >= 1 && n_paths <= kMaxPaths, "A: P must be in [1, ", kMaxPaths, "], got ", n_paths);
  TORCH_CHECK(d_state >= 1 && d_state <= kMaxStateDim, "A: N must be in [1, ", kMaxStateDim, "], got ", d_state);

  const at::ScalarType input_dtype = u.scalar_type();
  const at::ScalarType weight_dtype = at::toOpMathType(input_dtype);
  int64_t delta_rank = 0;
  if (delta_proj_weight.has_value()) {
    TORCH_CHECK(delta_proj_weight->dim() == 3 && delta_proj_weight->size(2) >= 1,
                "delta_proj_weight must be (P, D, R) with R >= 1, got shape ", delta_proj_weight->sizes());
    delta_rank = delta_proj_weight->size(2);
    check_shape(*delta_proj_weight, "delta_proj_weight", {n_paths, dim, delta_rank});
    check_like(*delta_proj_weight, "delta_proj_weight", u, input_dtype);
    check_shape(delta, "delta (low rank, with delta_proj_weight)", {batch, n_paths, delta_rank, seqlen});
  } else {
    check_shape(delta, "delta", {batch, n_paths, dim, seqlen});
  }
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

  ScanInputs t;
  p.u_channels_last = reads_channels_last(u);
  t.u = in_layout(u, p.u_channels_last);
  prepare_projections(delta, B, C, delta_proj_weight.has_value(), kernels, t, p);
  if (delta_proj_weight.has_value()) {
    t.delta_proj_weight = delta_proj_weight->contiguous();
    p.delta_rank = delta_rank;
    p.delta_proj_weight = t.delta_proj_weight.const_data_ptr();
  }
  t.A = A.contiguous();
  t.paths = paths.contiguous();
  t.D = optional_contiguous(D);
  p.z_channels_last = z.has_value() && reads_channels_last(*z);
  t.z = z.has_value() ? in_layout(*z, p.z_channels_last) : at::Tensor();
  t.delta_bias = optional_contiguous(delta_bias);
  t.mix = optional_contiguous(mix);

  p.batch = batch;
  p.dim = dim;
  p.n_paths = n_paths;
  p.d_state = d_state;
  p.seqlen = seqlen;
  p.n_chunks = num_scan_chunks(seqlen);
  p.delta_softplus = delta_softplus;
  p.n_split_paths = n_paths;
  for (int64_t path = 0; path < n_paths; ++path) p.split_paths[path] = static_cast<int8_t>(path);
  p.u = t.u.const_data_ptr();
  p.delta = t.delta.const_data_ptr();
  p.A = t.A.const_data_ptr();
  p.D = optional_data(t.D);
  p.z = optional_data(t.z);
  p.delta_bias = optional_data(t.delta_bias);
  p.paths = t.paths.const_data_ptr<int64_t>();
  p.mix = t.mix.defined() ? t.mix.const_data_ptr<int64_t>() : nullptr;
  return t;
}

// The work-split hints: none, or one per path (0: none for that path).
void set_span_lengths(at::IntArrayRef span_lengths, MultiPathScanParams& p) {
  const bool valid = (span_lengths.empty() || static_cast<int64_t>(span_lengths.size()) == p.n_paths) &&
                     std::all_of(span_lengths.begin(), span_lengths.end(), [](int64_t s) { return s >= 0; });
  TORCH_CHECK(valid, "span_lengths must be empty (no hints) or hold P=", p.n_paths,
              " numbers of steps, one per path (0: no hint), got ", span_lengths);
  std::copy(span_lengths.begin(), span_lengths.end(), p.span_lengths);
}

}  // namespace

ScanForward prepare_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, bool delta_softplus, at::IntArrayRef span_lengths,
    bool save_for_backward, const std::optional<at::Tensor>& delta_proj_weight, bool channels_last_out,
    const KernelTraits& kernels) {
  ScanForward f;
  MultiPathScanParams& p = f.params;
  f.inputs = prepare_scan_inputs(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, delta_proj_weight,
                                 kernels, p);
  set_span_lengths(span_lengths, p);
  p.out_channels_last = channels_last_out;
  f.out = new_activation(p, p.out_channels_last, u.options());
  const bool keeps_ungated = z.has_value() && save_for_backward;
  f.out_ungated = at::empty(keeps_ungated ? at::IntArrayRef{p.batch, p.dim, p.seqlen} : at::IntArrayRef{0},
                            u.options());
  f.chunk_states = at::empty(save_for_backward ? at::IntArrayRef{p.batch, p.n_paths, p.n_chunks, p.d_state, p.dim}
                                               : at::IntArrayRef{0},
                             A.options());
  p.out = f.out.mutable_data_ptr();
  p.out_ungated = keeps_ungated ? f.out_ungated.mutable_data_ptr() : nullptr;
  p.chunk_states = save_for_backward ? f.chunk_states.mutable_data_ptr() : nullptr;
  return f;
}

ScanBackward prepare_scan_backward(
    const at::Tensor& grad_out, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C, const at::Tensor& paths, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
    const std::optional<at::Tensor>& mix, const at::Tensor& out_ungated, const at::Tensor& chunk_states,
    bool delta_softplus, at::IntArrayRef span_lengths, const std::optional<at::Tensor>& delta_proj_weight,
    bool channels_last_du, bool channels_last_dz, const KernelTraits& kernels, int64_t channel_block,
    bool positions_minor) {
  ScanBackward g;
  MultiPathScanBwdParams& p = g.params;
  g.inputs = prepare_scan_inputs(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, delta_proj_weight,
                                 kernels, p);
  set_span_lengths(span_lengths, p);
  check_shape(grad_out, "grad_out", {p.batch, p.dim, p.seqlen});
  check_like(grad_out, "grad_out", u, u.scalar_type());
  check_shape(chunk_states, "chunk_states", {p.batch, p.n_paths, p.n_chunks, p.d_state, p.dim});
  check_like(chunk_states, "chunk_states", u, A.scalar_type());
  if (z.has_value()) {
    check_shape(out_ungated, "out_ungated", {p.batch, p.dim, p.seqlen});
    check_like(out_ungated, "out_ungated", u, u.scalar_type());
  }
  p.grad_out_channels_last = reads_channels_last(grad_out);
  g.grad_out = in_layout(grad_out, p.grad_out_channels_last);
  if (z.has_value() && p.z_channels_last != p.grad_out_channels_last) {  // (MultiPathScanBwdParams)
    p.z_channels_last = p.grad_out_channels_last;
    g.inputs.z = in_layout(*z, p.z_channels_last);
    p.z = g.inputs.z.const_data_ptr();
  }
  g.chunk_states = chunk_states.contiguous();
  g.out_ungated = z.has_value() ? out_ungated.contiguous() : at::Tensor();

  p.channel_block = channel_block;
  p.n_channel_blocks = (p.dim + channel_block - 1) / channel_block;
  const auto weights = A.options();
  g.channels_last_du = channels_last_du;
  g.channels_last_dz = channels_last_dz && z.has_value();
  p.du_channels_last = g.channels_last_du && kernels.writes_input_grads_channels_last;
  p.dz_channels_last = g.channels_last_dz && kernels.writes_input_grads_channels_last;
  g.du = new_activation(p, p.du_channels_last, u.options());
  // Where the kernels take the projection's gradients no full ddelta exists: its sums over channels and
  // over the batch and L are taken as the kernels go.
  const bool sums_projection_gradients = p.delta_rank > 0 && kernels.sums_delta_projection_gradients;
  g.ddelta = sums_projection_gradients ? at::Tensor() : at::empty({p.batch, p.n_paths, p.dim, p.seqlen}, u.options());
  g.dz = z.has_value() ? new_activation(p, p.dz_channels_last, u.options()) : at::empty({0}, u.options());
  g.positions_minor = positions_minor;
  const int64_t minor = positions_minor ? p.seqlen : p.d_state, major = positions_minor ? p.d_state : p.seqlen;
  g.dB_partial = at::empty({p.batch, p.n_channel_blocks, p.n_paths, major, minor}, weights);
  g.dC_partial = at::empty_like(g.dB_partial);
  g.dB_sum = at::empty({p.batch, p.n_paths, major, minor}, weights);
  g.dC_sum = at::empty_like(g.dB_sum);
  g.dA_by_state = at::empty({p.n_paths, p.d_state, p.dim}, weights);
  g.dD = at::empty({p.n_paths, p.dim}, weights);
  g.ddelta_bias = at::empty_like(g.dD);
  if (sums_projection_gradients) {
    g.d_delta_low_partial = at::empty({p.batch, p.n_channel_blocks, p.n_paths, p.delta_rank, p.seqlen}, weights);
    g.d_delta_low_sum = at::empty({p.batch, p.n_paths, p.delta_rank, p.seqlen}, weights);
    g.d_delta_proj_weight = at::empty({p.n_paths, p.dim, p.delta_rank}, weights);
    p.d_delta_low_partial = g.d_delta_low_partial.mutable_data_ptr();
  }

  p.grad_out = g.grad_out.const_data_ptr();
  p.out_ungated = z.has_value() ? const_cast<void*>(g.out_ungated.const_data_ptr()) : nullptr;
  p.chunk_states = const_cast<void*>(g.chunk_states.const_data_ptr());
  p.du = g.du.mutable_data_ptr();
  p.ddelta = g.ddelta.defined() ? g.ddelta.mutable_data_ptr() : nullptr;
  p.dz = z.has_value() ? g.dz.mutable_data_ptr() : nullptr;
  p.dB_partial = g.dB_partial.mutable_data_ptr();
  p.dC_partial = g.dC_partial.mutable_data_ptr();
  return g;
}

void allocate_length_partials(ScanBackward& g, int64_t n_length_blocks, bool zeroed) {
  MultiPathScanBwdParams& p = g.params;
  const auto weights = g.inputs.A.options();
  const auto allocate = [&](at::IntArrayRef shape) {
    return zeroed ? at::zeros(shape, weights) : at::empty(shape, weights);
  };
  p.n_length_blocks = n_length_blocks;
  g.dA_partial = allocate({p.batch, n_length_blocks, p.n_paths, p.d_state, p.dim});
  g.dD_partial = allocate({p.batch, n_length_blocks, p.n_paths, p.dim});
  g.ddelta_bias_partial = allocate({p.batch, n_length_blocks, p.n_paths, p.dim});
  p.dA_partial = g.dA_partial.mutable_data_ptr();
  p.dD_partial = g.dD_partial.mutable_data_ptr();
  p.ddelta_bias_partial = g.ddelta_bias_partial.mutable_data_ptr();
  if (g.d_delta_low_partial.defined()) {
    g.d_delta_proj_weight_partial = allocate({p.batch, n_length_blocks, p.n_paths, p.dim, p.delta_rank});
    p.d_delta_proj_weight_partial = g.d_delta_proj_weight_partial.mutable_data_ptr();
  }
}

namespace {

// The gradients of the low-rank delta and of delta_proj_weight (in the input dtype): the sums of the
// kernels' partials, or taken on the host from the full ddelta.
std::tuple<at::Tensor, at::Tensor> delta_projection_gradients(const ScanBackward& g) {
  const at::ScalarType input_dtype = g.inputs.u.scalar_type();
  if (g.d_delta_low_sum.defined()) {
    return {g.d_delta_low_sum.to(input_dtype), g.d_delta_proj_weight.to(input_dtype)};
  }
  // Inside the op the matmuls must not follow an autocast region around the call: the gradients come
  // in the inputs' dtypes.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor& weight = g.inputs.delta_proj_weight;
  return {at::matmul(weight.transpose(-1, -2), g.ddelta),  // (P, R, D) @ (batch, P, D, L)
          at::matmul(g.ddelta, g.inputs.delta.transpose(-1, -2)).sum(0)};
}

}  // namespace

ScanGradients finish_scan_backward(const ScanBackward& g) {
  const at::ScalarType input_dtype = g.inputs.u.scalar_type();
  const auto weights = g.inputs.A.options();
  at::Tensor d_delta = g.ddelta, d_delta_proj_weight = at::empty({0}, g.inputs.u.options());
  if (g.inputs.delta_proj_weight.defined()) std::tie(d_delta, d_delta_proj_weight) = delta_projection_gradients(g);
  // Absent inputs get distinct empty gradients: outputs of an op must not alias each other.
  // du and dz in the layouts asked (copies where the kernels wrote them (batch, D, L)).
  return {in_layout(g.du, g.channels_last_du),
          d_delta,
          g.dA_by_state.transpose(-1, -2).reshape(g.inputs.A.sizes()).contiguous(),
          (g.positions_minor ? g.dB_sum : g.dB_sum.transpose(-1, -2)).to(input_dtype).contiguous(),
          (g.positions_minor ? g.dC_sum : g.dC_sum.transpose(-1, -2)).to(input_dtype).contiguous(),
          g.inputs.D.defined() ? g.dD : at::empty({0}, weights),
          g.inputs.z.defined() ? in_layout(g.dz, g.channels_last_dz) : g.dz,
          g.inputs.delta_bias.defined() ? g.ddelta_bias : at::empty({0}, weights),
          d_delta_proj_weight};
}

void check_scan_indices_on_host(const ScanInputs& inputs, int64_t seqlen) {
  const at::Tensor& paths = inputs.paths;
  const at::Tensor& mix = inputs.mix;
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
