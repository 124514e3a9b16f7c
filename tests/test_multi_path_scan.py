"""The compiled multi-path scan against the reference: forward values, layouts, registration."""
import itertools

import numpy as np
import pytest
import torch

from posemamba.ops import SCAN_CHUNK, multi_path_selective_scan, pose_mix, pose_paths
from posemamba.reference import multi_path_selective_scan_ref

from conftest import random_scan_inputs, requires_extension

pytestmark = requires_extension

# (rtol, atol) of the kernel against the reference computed from the same (rounded) inputs. The
# kernel and the reference both compute in float (double for float64); they differ in summation
# order, and in half types in the output's final rounding (bfloat16 keeps 8 bits: 2^-8 ~ 4e-3).
FORWARD_TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

SHAPES = [  # batch, dim, seqlen, n_paths, d_state
    (1, 3, 1, 1, 1),
    (3, 4, 17, 2, 16),
    (1, 5, 67, 4, 5),      # odd L over a chunk boundary
    (3, 2, 130, 3, 16),    # three chunks
    (2, 3, 129, 8, 2),     # the most paths
    (1, 2, 33, 2, 64),     # the largest state
]
OPTIONS = [dict(zip(("with_D", "with_z", "with_bias", "with_mix", "delta_softplus"), flags))
           for flags in itertools.product([False, True], repeat=5)]


def scan_fwd(inputs, delta_softplus=True):
    return torch.ops.posemamba.multi_path_scan_fwd(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
        inputs["D"], inputs["z"], inputs["delta_bias"], inputs["mix"], delta_softplus)


def assert_matches_reference(inputs, delta_softplus=True):
    out = multi_path_selective_scan(**inputs, delta_softplus=delta_softplus)
    expected = multi_path_selective_scan_ref(**inputs, delta_softplus=delta_softplus)
    rtol, atol = FORWARD_TOLERANCE[inputs["u"].dtype]
    scale = max(1.0, expected.double().abs().max().item())
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_reference_all_options(shape, dtype):
    for options in OPTIONS:
        assert_matches_reference(random_scan_inputs(*shape, dtype, **options), options["delta_softplus"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=lambda s: "b{}_d{}_l{}_p{}_n{}".format(*s))
def test_forward_half_types(shape, dtype):
    assert_matches_reference(random_scan_inputs(*shape, dtype))


def test_forward_pose_paths_with_mix():
    T, J = 9, 17
    inputs = random_scan_inputs(2, 4, T * J, 4, 16, torch.float64)
    inputs["paths"] = pose_paths(T, J)
    inputs["mix"] = pose_mix(T, J, torch.randperm(J))
    assert_matches_reference(inputs)


def every_other_element(x):
    """x's values in a view whose last dimension has stride 2."""
    return torch.stack([x, torch.full_like(x, float("nan"))], dim=-1)[..., 0]


def test_forward_non_contiguous_inputs():
    inputs = random_scan_inputs(2, 3, 40, 2, 8, torch.float64)
    expected = multi_path_selective_scan_ref(**inputs)
    # Same values, other layouts: transposed storage and strided slices.
    strided = dict(inputs)
    strided["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["delta"] = every_other_element(inputs["delta"])
    strided["B"] = inputs["B"].transpose(-1, -2).contiguous().transpose(-1, -2)
    strided["A"] = inputs["A"].transpose(0, 2).contiguous().transpose(0, 2)
    strided["paths"] = inputs["paths"].t().contiguous().t()
    strided["z"] = every_other_element(inputs["z"])
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "B", "A", "paths", "z"))
    torch.testing.assert_close(multi_path_selective_scan(**strided), expected, rtol=1e-10, atol=1e-10)


def test_forward_saves_chunk_states():
    # The saved state before chunk c's first step is the scan's state after c * SCAN_CHUNK steps: with
    # B = 1 at one step only, C = 0 and D = 0 the state is easy to state by hand.
    seqlen = 2 * SCAN_CHUNK + 5
    inputs = random_scan_inputs(1, 1, seqlen, 1, 2, torch.float64, with_D=False, with_z=False,
                                with_bias=False, with_mix=False)
    inputs["u"].fill_(1.0)
    inputs["delta"].fill_(0.5)
    inputs["B"].zero_()
    inputs["B"][..., inputs["paths"][0, 3]] = 1.0
    out, out_ungated, chunk_states = scan_fwd(inputs, delta_softplus=False)
    assert chunk_states.shape == (1, 1, 3, 2, 1)
    assert out_ungated.numel() == 0
    decay = torch.exp(0.5 * inputs["A"][0, 0])
    expected = torch.stack([torch.zeros(2, dtype=torch.float64),
                            0.5 * decay ** (SCAN_CHUNK - 4), 0.5 * decay ** (2 * SCAN_CHUNK - 4)])
    torch.testing.assert_close(chunk_states[0, 0, :, :, 0], expected, rtol=1e-12, atol=1e-300)


def test_span_length_hints_do_not_change_the_cpu_result():
    # Hints for GPUs' work split: the CPU kernels take them and compute the same.
    inputs = random_scan_inputs(2, 6, 100, 4, 16, torch.float32)
    unhinted = multi_path_selective_scan(**inputs)
    assert torch.equal(unhinted, multi_path_selective_scan(**inputs, span_lengths=25))
    assert torch.equal(unhinted, multi_path_selective_scan(**inputs, span_lengths=[0, 25, 0, 10]))
    assert torch.equal(unhinted, multi_path_selective_scan(**inputs, span_lengths=tuple(np.array([0, 25, 0, 10]))))


def test_forward_is_deterministic():
    inputs = random_scan_inputs(2, 6, 100, 4, 16, torch.float32)
    first = multi_path_selective_scan(**inputs)
    assert torch.equal(first, multi_path_selective_scan(**inputs))


@pytest.mark.parametrize("with_z, span_lengths", [(False, ()), (True, ()), (True, ([0, 10],)),
                                                  (True, ([0, 10], False))])  # inference: nothing saved
def test_opcheck_forward(with_z, span_lengths):
    # span_lengths: the GPU work split's hints, an optional trailing argument that CPUs take and ignore.
    inputs = random_scan_inputs(2, 3, 70, 2, 4, torch.float32, with_z=with_z)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
            inputs["D"], inputs["z"], inputs["delta_bias"], inputs["mix"], True) + span_lengths
    torch.library.opcheck(torch.ops.posemamba.multi_path_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("with_z", [False, True])
def test_forward_without_saving_gives_the_same_output_and_keeps_nothing(with_z):
    inputs = random_scan_inputs(2, 5, 150, 3, 16, torch.float32, with_z=with_z, with_mix=True)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "paths", "D", "z", "delta_bias", "mix")]
    out, out_ungated, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(*args, True, [])
    lean_out, lean_ungated, lean_states = torch.ops.posemamba.multi_path_scan_fwd(*args, True, [], False)
    assert torch.equal(lean_out, out)
    assert chunk_states.shape == (2, 3, 3, 16, 5) and lean_states.shape == (0,)
    assert out_ungated.shape == ((2, 5, 150) if with_z else (0,)) and lean_ungated.shape == (0,)
    with pytest.raises(RuntimeError, match="no gradient with save_for_backward=False"):
        leaf = inputs["u"].requires_grad_(True)
        torch.ops.posemamba.multi_path_scan_fwd(leaf, *args[1:], True, [], False)[0].sum().backward()


def test_entry_point_saves_states_only_for_a_backward(monkeypatch):
    saved = []
    forward = torch.ops.posemamba.multi_path_scan_fwd

    def spy(*args):
        saved.append(args[12])  # save_for_backward
        return forward(*args)

    monkeypatch.setattr(torch.ops.posemamba, "multi_path_scan_fwd", spy)
    inputs = random_scan_inputs(1, 3, 40, 2, 4, torch.float32)
    multi_path_selective_scan(**inputs)  # nothing requires grad
    inputs["A"].requires_grad_(True)
    with torch.no_grad():
        multi_path_selective_scan(**inputs)
    multi_path_selective_scan(**inputs).sum().backward()
    assert saved == [False, False, True] and inputs["A"].grad is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_decays_take_the_clamped_path(dtype):
    # |dt * a| far beyond exp's range in one path: the kernels' clamped exps (decays of exactly 0) must
    # still match the reference, forward and backward; the other paths stay on the fast exps.
    inputs = random_scan_inputs(2, 20, 70, 3, 4, dtype)
    inputs["A"] = inputs["A"].clone()
    inputs["A"][1] *= 500.0
    assert_matches_reference(inputs)
    leaves = {name: inputs[name].detach().requires_grad_() for name in ("u", "delta", "A", "B", "C")}
    grad_out = torch.randn_like(inputs["u"])
    grads = torch.autograd.grad(multi_path_selective_scan(**{**inputs, **leaves}), list(leaves.values()), grad_out)
    expected = torch.autograd.grad(multi_path_selective_scan_ref(**{**inputs, **leaves}), list(leaves.values()), grad_out)
    for name, got, want in zip(leaves, grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(), msg=name)


def test_nan_in_a_step_size_or_weight_propagates():
    inputs = random_scan_inputs(1, 16, 40, 2, 4, torch.float32, with_z=False)
    for name, index in (("delta", (0, 1, 3, 17)), ("A", (0, 5, 2))):
        broken = {**inputs, name: inputs[name].clone()}
        broken[name][index] = float("nan")
        out = multi_path_selective_scan(**broken)
        expected = multi_path_selective_scan_ref(**broken)
        assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any(), name


def test_autocast_inputs_follow_u():
    # Under autocast a projection comes out in bfloat16 beside a float32 u: the op casts the other
    # inputs to u's dtype (A, D, delta_bias to float32) rather than refusing them, and gradients flow
    # back through the casts.
    inputs = random_scan_inputs(2, 6, 40, 2, 4, torch.float32)
    project = torch.nn.Linear(40, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        B = project(inputs["B"])
        assert B.dtype == torch.bfloat16
        out = multi_path_selective_scan(**{**inputs, "B": B, "D": inputs["D"].double()})
    assert out.dtype == torch.float32
    expected = multi_path_selective_scan(**{**inputs, "B": B.float()})
    assert torch.equal(out, expected)
    out.sum().backward()
    assert project.weight.grad is not None and project.weight.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="B must have dtype torch.float32, got torch.bfloat16"):
        multi_path_selective_scan(**{**inputs, "B": B.detach()})  # outside autocast: named, not cast
