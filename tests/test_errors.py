"""Each bad input raises an error that names the argument and what was expected."""
import pytest
import torch

from posemamba.ops import multi_path_selective_scan

from conftest import random_scan_inputs, requires_extension


def good_inputs(dtype=torch.float32):
    return random_scan_inputs(2, 3, 10, 2, 4, dtype)


def call_with(**changes):
    inputs = good_inputs()
    inputs.update(changes)
    return multi_path_selective_scan(**inputs)


@pytest.mark.parametrize("name,bad,message", [
    ("u", torch.zeros(2, 3), r"u must be a tensor of shape \(batch, D, L\), got \(2, 3\)"),
    ("u", torch.zeros(2, 3, 10, dtype=torch.int32), "u must have dtype float16, bfloat16, float32 or float64"),
    ("u", torch.zeros(2, 3, 0), "L >= 1"),
    ("A", torch.zeros(2, 4, 4), r"A must have shape \(P, D=3, N\), got \(2, 4, 4\)"),
    ("A", -torch.ones(9, 3, 4), r"P must be in \[1, 8\], got 9"),
    ("A", -torch.ones(2, 3, 65), r"N must be in \[1, 64\], got 65"),
    ("A", -torch.ones(2, 3, 4, dtype=torch.float64), "A must have dtype torch.float32, got torch.float64"),
    ("delta", torch.zeros(2, 3, 10), r"delta must have shape \(batch, P, D, L\) = \(2, 2, 3, 10\), got \(2, 3, 10\)"),
    ("delta", torch.zeros(2, 2, 3, 10, dtype=torch.float64), "delta must have dtype torch.float32"),
    ("B", torch.zeros(2, 2, 5, 10), r"B must have shape \(batch, P, N, L\) = \(2, 2, 4, 10\)"),
    ("C", torch.zeros(2, 2, 4, 9), r"C must have shape \(batch, P, N, L\) = \(2, 2, 4, 10\)"),
    ("C", [1.0], "C must be a torch.Tensor of shape"),
    ("D", torch.zeros(3), r"D must have shape \(P, D\) = \(2, 3\)"),
    ("z", torch.zeros(2, 3, 10, dtype=torch.float16), "z must have dtype torch.float32"),
    ("delta_bias", torch.zeros(2, 3, dtype=torch.float16), "delta_bias must have dtype torch.float32"),
    ("paths", torch.zeros(2, 10, dtype=torch.int32), "paths must have dtype torch.int64"),
    ("paths", torch.arange(10).expand(3, 10), r"paths must have shape \(P, L\) = \(2, 10\)"),
    ("paths", torch.stack([torch.arange(10), torch.arange(10) % 9]), r"paths\[1\] must be a permutation of range\(L=10\)"),
    ("paths", torch.stack([torch.arange(10), torch.arange(10) + 1]), r"paths\[1\] must be a permutation"),
    ("mix", torch.full((2, 10), 10), r"mix must hold -1 or positions in \[0, L=10\)"),
    ("mix", torch.full((2, 10), -2), "mix must hold -1 or positions"),
    ("mix", torch.zeros(2, 10, dtype=torch.float32), "mix must have dtype torch.int64"),
])
def test_bad_argument_is_named(name, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call_with(**{name: bad})


def test_low_rank_step_size_shapes_are_named():
    low = torch.zeros(2, 2, 5, 10)
    with pytest.raises(ValueError, match=r"delta_proj_weight must have shape \(P, D, R\) = \(2, 3, 5\), got \(2, 4, 5\)"):
        call_with(delta=low, delta_proj_weight=torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"delta_proj_weight must have shape \(P, D, R\), got \(3, 5\)"):
        call_with(delta=low, delta_proj_weight=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"delta must have shape \(batch, P, R, L\) with delta_proj_weight = "
                                         r"\(2, 2, 4, 10\), got \(2, 2, 5, 10\)"):
        call_with(delta=low, delta_proj_weight=torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="delta_proj_weight must have dtype torch.float32, got torch.float64"):
        call_with(delta=low, delta_proj_weight=torch.zeros(2, 3, 5, dtype=torch.float64))


def test_device_mismatch_is_named():
    meta_D = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match=r"D must be on cpu \(u's device\), got meta"):
        call_with(D=meta_D)


@requires_extension
def test_compiled_op_bounds_checks_indices_when_called_directly():
    inputs = good_inputs()
    bad_mix = torch.full((2, 10), 12)
    with pytest.raises(RuntimeError, match=r"mix must hold -1 or positions in \[0, L=10\)"):
        torch.ops.posemamba.multi_path_scan_fwd(
            inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
            None, None, None, bad_mix, True)
    with pytest.raises(RuntimeError, match="B must have shape"):
        torch.ops.posemamba.multi_path_scan_fwd(
            inputs["u"], inputs["delta"], inputs["A"], inputs["C"][:, :, :3], inputs["C"], inputs["paths"],
            None, None, None, None, True)
    for bad_hints in ([9, -3], [9]):
        with pytest.raises(RuntimeError, match=r"span_lengths must be empty \(no hints\) or hold P=2 numbers of "
                                               r"steps, one per path \(0: no hint\), got \[9"):
            torch.ops.posemamba.multi_path_scan_fwd(
                inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["paths"],
                None, None, None, None, True, bad_hints)


def test_index_values_are_checked_once_per_tensor_and_again_after_a_change(monkeypatch):
    import posemamba._checks as checks

    calls = []
    check = checks.check_paths_values
    monkeypatch.setattr(checks, "check_paths_values", lambda paths: (calls.append(1), check(paths)))
    inputs = good_inputs()
    multi_path_selective_scan(**inputs)
    multi_path_selective_scan(**inputs)
    assert len(calls) == 1  # a GPU would sync on every call's sort otherwise
    inputs["paths"][1, :2] = 0  # no longer a permutation: checked again, and named
    with pytest.raises(ValueError, match=r"paths\[1\] must be a permutation"):
        multi_path_selective_scan(**inputs)
    assert len(calls) == 2


def test_index_tensors_made_under_inference_mode_are_checked_every_call(monkeypatch):
    # Inference tensors have no version counter to tell an in-place change by: no cache for them.
    import posemamba._checks as checks

    calls = []
    check = checks.check_paths_values
    monkeypatch.setattr(checks, "check_paths_values", lambda paths: (calls.append(1), check(paths)))
    inputs = good_inputs()
    expected = multi_path_selective_scan(**inputs)
    with torch.inference_mode():
        inference_inputs = {name: t.clone() if isinstance(t, torch.Tensor) else t for name, t in inputs.items()}
        assert inference_inputs["paths"].is_inference()
        torch.testing.assert_close(multi_path_selective_scan(**inference_inputs), expected, rtol=0, atol=0)
        inference_inputs["paths"][1, :2] = 0
        with pytest.raises(ValueError, match=r"paths\[1\] must be a permutation"):
            multi_path_selective_scan(**inference_inputs)
    assert len(calls) == 3


@pytest.mark.parametrize("span_lengths", [-1, 2.5, "243", True, [9], [9, -1], [9, 2.5], (9, 9, 9)])
def test_span_length_hints_must_be_step_counts_one_per_path(span_lengths):
    with pytest.raises(ValueError, match=r"span_lengths must be None, a number of steps or P=2 of them, one per "
                                         r"path \(0: no hint\), got"):
        multi_path_selective_scan(**good_inputs(), span_lengths=span_lengths)
