// posemamba::_scan_math: the scan's own exp (clamped, and for in-range arguments), log1p and softplus (multi_path_scan.h) applied
// elementwise, so the tests can hold their errors against float64. Not part of the public API.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>

#include "../multi_path_scan.h"

namespace posemamba {
namespace {

template <typename scalar_t>
scalar_t apply_scan_math(const std::string& function, scalar_t x) {
  if (function == "exp") return scan_exp(x);
  if (function == "exp_in_range") return scan_exp_in_range(x);
  if (function == "log1p") return scan_log1p(x);
  return softplus(x);
}

at::Tensor scan_math_cpu(const at::Tensor& x, c10::string_view function) {
  const std::string name(function);
  TORCH_CHECK(name == "exp" || name == "exp_in_range" || name == "log1p" || name == "softplus",
              "function must be 'exp', 'exp_in_range', 'log1p' or 'softplus', got '", name, "'");
  const at::Tensor input = x.contiguous();
  at::Tensor result = at::empty_like(input);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "scan_math_cpu", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = result.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < input.numel(); ++i) out[i] = apply_scan_math(name, in[i]);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(posemamba, CPU, m) {
  m.impl("_scan_math", &scan_math_cpu);
}

}  // namespace posemamba
