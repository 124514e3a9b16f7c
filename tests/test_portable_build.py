"""The CPU kernels as compilers without GCC's vector extensions build them (POSEMAMBA_PORTABLE_LANES:
ChannelLanes a plain struct with lane-by-lane operators, the backward's channel sums one vector at a
time), so that code runs somewhere: built here in an op namespace of their own and checked against the
installed kernels."""
import os

import pytest
import torch

from conftest import (CSRC, random_scan_inputs, requires_extension, requires_sources, scan_ops_forward_and_backward,
                      sources_digest)

pytestmark = [requires_extension, requires_sources]

SOURCES = ("ops.cpp", "multi_path_scan_host.cpp", "cpu/scan_forward_cpu.cpp", "cpu/scan_backward_cpu.cpp",
           "cpu/scan_math_cpu.cpp")


@pytest.fixture(scope="module")
def portable_ops():
    """torch.ops.posemamba_portable: the same sources with the portable lanes, the namespace renamed by the
    preprocessor (about 15 s to build on 2 cores, once per version of the sources)."""
    from torch.utils.cpp_extension import load

    load(name=f"posemamba_portable_lanes_{sources_digest()}", sources=[os.path.join(CSRC, s) for s in SOURCES],
         extra_include_paths=[CSRC],
         extra_cflags=["-O1", "-DPOSEMAMBA_PORTABLE_LANES", "-Dposemamba=posemamba_portable", "-Wno-psabi"],
         is_python_module=False, verbose=False)
    return torch.ops.posemamba_portable


# N = 20: a group of 16 entries' channel sums and a partial one; P = 3 with the mix; lanes past D.
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)],
                         ids=["float64", "float32"])
def test_portable_lanes_match_the_vector_extensions(portable_ops, dtype, tolerance):
    inputs = random_scan_inputs(2, 40, 300, 3, 20, dtype)
    grad_out = torch.randn(2, 40, 300, dtype=dtype)
    expected_results = scan_ops_forward_and_backward(torch.ops.posemamba, inputs, grad_out)
    actual_results = scan_ops_forward_and_backward(portable_ops, inputs, grad_out)
    for actual, expected in zip(actual_results, expected_results, strict=True):
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)
