"""The scan's own exp, log1p and softplus (csrc/multi_path_scan.h) against float64."""
import pytest
import torch

from conftest import requires_extension

pytestmark = requires_extension

FLOAT32_ULP_AT_1 = 2.0 ** -23


def scan_math(x, function):
    return torch.ops.posemamba._scan_math(x, function)


def max_relative_error(actual, expected):
    return ((actual.double() - expected) / expected.abs().clamp_min(1e-300)).abs().max().item()


def test_exp_within_2_ulp_over_its_range():
    x = torch.cat([torch.linspace(-86.6, 88.72, 2_000_001), torch.randn(100_000) * 5])
    error = max_relative_error(scan_math(x, "exp"), torch.exp(x.double()))
    assert error <= 2 * FLOAT32_ULP_AT_1, error


def test_exp_is_monotone_across_its_limits():
    x = torch.linspace(-88.5, 89.5, 400_001)
    y = scan_math(x, "exp")
    assert (y[1:] >= y[:-1]).all()


def test_exp_limits():
    # Below about -87 (results under 2^-125) the scan's exp flushes to 0; above 88.72 it overflows.
    x = torch.tensor([-1e30, -200.0, -87.1, 0.0, 88.73, 1e30, float("inf"), float("-inf")])
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, float("inf"), float("inf"), float("inf"), 0.0])
    assert torch.equal(scan_math(x, "exp"), expected)


def test_log1p_within_3_ulp():
    t = torch.cat([torch.logspace(-30, 9, 1_000_001), -torch.logspace(-30, -0.01, 100_000)])
    error = max_relative_error(scan_math(t, "log1p"), torch.log1p(t.double()))
    assert error <= 3 * FLOAT32_ULP_AT_1, error


def test_softplus_matches_torch():
    x = torch.linspace(-80, 40, 1_000_001)
    actual = scan_math(x, "softplus")
    expected = torch.nn.functional.softplus(x.double())
    assert max_relative_error(actual, expected) <= 3 * FLOAT32_ULP_AT_1  # measured 2.1
    assert torch.equal(actual[x > 20], x[x > 20])


@pytest.mark.parametrize("function", ["exp", "log1p", "softplus"])
def test_float64_uses_libm(function):
    x = torch.rand(1000, dtype=torch.float64) * 10
    expected = {"exp": torch.exp, "log1p": torch.log1p, "softplus": torch.nn.functional.softplus}[function](x)
    torch.testing.assert_close(scan_math(x, function), expected, rtol=1e-15, atol=0)


def test_exp_in_range_is_exp_bit_for_bit():
    # The kernels skip the clamps when every |dt * a| of a path is within 87; that must change nothing.
    x = torch.cat([torch.linspace(-87.0, 87.0, 2_000_001), torch.randn(100_000) * 10,
                   torch.tensor([-87.0, 87.0, 0.0, -0.0, 1e-30, -1e-30])]).clamp(-87.0, 87.0)
    assert torch.equal(scan_math(x, "exp_in_range"), scan_math(x, "exp"))
