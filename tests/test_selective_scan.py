"""selective_scan against a straightforward loop written from mamba's selective_scan_ref semantics."""
import pytest
import torch
import torch.nn.functional as F

from posemamba.ops import selective_scan


def mamba_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Step by step, in float64: x = exp(dt A) x + dt B u;  y = C x (+ D u), gated by silu(z)."""
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
    return y


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
