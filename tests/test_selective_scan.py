"""selective_scan against a straightforward loop written from mamba's selective_scan_ref semantics."""
import pytest
import torch
import torch.nn.functional as F

from posemamba.ops import selective_scan


def mamba_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Step by step, in float64: x = exp(dt A) x + dt B u;  y = C x (+ D u), gated by silu(z); and x
    after the last step with return_last_state."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, seqlen = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    group_of_channel = torch.arange(dim) // (dim // B.shape[1])
    B, C = B[:, group_of_channel], C[:, group_of_channel]  # (batch, D, N, L)
    x = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    ys = []
    for i in range(seqlen):
        x = torch.exp(delta[:, :, i, None] * A) * x + (delta[:, :, i] * u[:, :, i])[..., None] * B[..., i]
        ys.append((x * C[..., i]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return (y, x) if return_last_state else y


def mamba_inputs(batch, dim, seqlen, d_state, groups, dtype, g):
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    bc_shape = (batch, d_state, seqlen) if groups == 0 else (batch, groups, d_state, seqlen)
    weight = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(u=randn(batch, dim, seqlen), delta=torch.rand(batch, dim, seqlen, generator=g, dtype=torch.float64).to(dtype),
                A=-torch.rand(dim, d_state, generator=g, dtype=torch.float64).add(0.1).to(weight),
                B=randn(*bc_shape), C=randn(*bc_shape), D=randn(dim).to(weight), z=randn(batch, dim, seqlen),
                delta_bias=torch.rand(dim, generator=g, dtype=torch.float64).to(weight))


@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("delta_softplus", [False, True])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_selective_scan_matches_mamba_semantics(groups, delta_softplus, dtype, tolerance):
    g = torch.Generator().manual_seed(groups * 10 + delta_softplus)
    inputs = mamba_inputs(2, 4, 37, 5, groups, dtype, g)
    expected = mamba_loop(**inputs, delta_softplus=delta_softplus)
    actual = selective_scan(**inputs, delta_softplus=delta_softplus)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


def test_selective_scan_without_optionals_and_gradients():
    g = torch.Generator().manual_seed(7)
    inputs = mamba_inputs(1, 3, 9, 2, 1, torch.float64, g)
    for name in ("D", "z", "delta_bias"):
        inputs.pop(name)
    for t in inputs.values():
        t.requires_grad_(True)
    torch.testing.assert_close(selective_scan(**inputs), mamba_loop(**inputs), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t), tuple(inputs.values()))


def test_selective_scan_errors_name_arguments():
    g = torch.Generator().manual_seed(0)
    inputs = mamba_inputs(1, 4, 5, 2, 0, torch.float32, g)
    with pytest.raises(ValueError, match="delta must have shape"):
        selective_scan(**{**inputs, "delta": inputs["delta"][:, :2]})
    with pytest.raises(ValueError, match=r"A must have shape \(D=4, N\)"):
        selective_scan(**{**inputs, "A": inputs["A"][:2]})
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**{**inputs, "B": inputs["B"][0]})
    with pytest.raises(ValueError, match="groups G dividing D=4"):
        selective_scan(**{**inputs, "B": torch.randn(1, 3, 2, 5), "C": torch.randn(1, 3, 2, 5)})


def test_selective_scan_trains_after_a_call_under_inference_mode():
    # Its one path is made once per length and device: the first call, under inference_mode here,
    # must not leave an inference tensor that a later call's backward would have to save.
    g = torch.Generator().manual_seed(3)
    inputs = mamba_inputs(1, 3, 11, 2, 0, torch.float64, g)
    with torch.inference_mode():
        selective_scan(**inputs)
    inputs["u"].requires_grad_(True)
    selective_scan(**inputs).sum().backward()
    assert inputs["u"].grad is not None


@pytest.mark.parametrize("seqlen", [37, 64, 130, 200])  # a partial chunk, one whole, three, and four
@pytest.mark.parametrize("groups, delta_softplus", [(0, False), (2, True)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_selective_scan_returns_the_last_state_as_mamba(seqlen, groups, delta_softplus, dtype, tolerance):
    g = torch.Generator().manual_seed(seqlen + groups)
    inputs = mamba_inputs(2, 4, seqlen, 5, groups, dtype, g)
    out, last_state = selective_scan(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    expected_out, expected_state = mamba_loop(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    assert torch.equal(out, selective_scan(**inputs, delta_softplus=delta_softplus))
    assert last_state.shape == (2, 4, 5) and last_state.dtype == inputs["A"].dtype
    torch.testing.assert_close(last_state.double(), expected_state, rtol=tolerance,
                               atol=tolerance * expected_state.abs().max().item())


def test_last_state_is_not_differentiable_and_out_still_is():
    g = torch.Generator().manual_seed(11)
    inputs = mamba_inputs(1, 3, 70, 2, 0, torch.float64, g)
    inputs["u"].requires_grad_(True)
    out, last_state = selective_scan(**inputs, return_last_state=True)
    assert not last_state.requires_grad
    out.sum().backward()
    expected = inputs["u"].grad.clone()
    inputs["u"].grad = None
    selective_scan(**inputs).sum().backward()
    assert torch.equal(inputs["u"].grad, expected)


def test_last_state_where_the_reference_runs(monkeypatch):
    # No kernel for the device: the state comes from zero through every step.
    import posemamba.ops as ops

    monkeypatch.setattr(ops, "_kernel_available", lambda device: False)
    monkeypatch.setattr(ops, "_warn_reference_once", lambda device: None)
    g = torch.Generator().manual_seed(5)
    inputs = mamba_inputs(2, 4, 90, 3, 0, torch.float64, g)
    _, last_state = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    _, expected = mamba_loop(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(last_state, expected, rtol=1e-10, atol=1e-10)
