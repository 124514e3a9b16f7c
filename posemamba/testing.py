"""For tests, benchmarks and users checking their own integrations: random inputs for the scan ops,
and the official PoseMamba SSM's data flow to compare the model with."""
import torch
import torch.nn.functional as F

__all__ = ["random_scan_inputs", "as_projection_rows", "official_cross_scan_ssm"]


def random_scan_inputs(batch, dim, seqlen, n_paths, d_state, dtype=torch.float32, *, with_D=True,
                       with_z=True, with_bias=True, with_mix=True, delta_softplus=True, device="cpu"):
    """Fresh random inputs for multi_path_selective_scan in the model's value ranges: A < 0 and
    dt > 0 (without the softplus, delta and delta_bias are drawn positive), so states stay bounded."""
    g = torch.Generator().manual_seed(torch.seed() % (2 ** 31))
    weight_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt).to(device)

    def rand(*shape, dt=dtype):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(dt).to(device)

    paths = torch.stack([torch.randperm(seqlen, generator=g) for _ in range(n_paths)]).to(device)
    mix = None
    if with_mix:
        mix = torch.randint(-1, seqlen, (n_paths, seqlen), generator=g).to(device)
    return dict(
        u=randn(batch, dim, seqlen),
        delta=randn(batch, n_paths, dim, seqlen) if delta_softplus else rand(batch, n_paths, dim, seqlen),
        A=-torch.rand(n_paths, dim, d_state, generator=g, dtype=torch.float64).add(0.1).to(weight_dtype).to(device),
        B=randn(batch, n_paths, d_state, seqlen),
        C=randn(batch, n_paths, d_state, seqlen),
        paths=paths,
        D=randn(n_paths, dim, dt=weight_dtype) if with_D else None,
        z=randn(batch, dim, seqlen) if with_z else None,
        delta_bias=(randn if delta_softplus else rand)(n_paths, dim, dt=weight_dtype) * 0.5 if with_bias else None,
        mix=mix,
    )


def channels_last(t):
    """t, (batch, D, L), as the transpose of a contiguous (batch, L, D) tensor (as mamba layers hold
    activations): the same values."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def as_projection_rows(tensors):
    """(batch, P, k, L) tensors (delta, B and C, say) as views of one new (batch, L, P, sum of k) tensor,
    as a model's position-wise projection gives them: the same values, each position's values of every
    path one row of memory. The op reads B and C laid out so as they are."""
    # (cat keeps its inputs' permuted memory layout: made contiguous, a position's values are one row.)
    rows = torch.cat([t.detach().permute(0, 3, 1, 2) for t in tensors], dim=-1).contiguous()
    return torch.split(rows.permute(0, 2, 3, 1), [t.shape[2] for t in tensors], dim=2)


def official_cross_scan_ssm(op, x):
    """What the official code computes for a BiSTSSM `op` (posemamba.model) on x (batch, T, J, dim),
    with its SS2D data flow and copies: CrossScan (the frame-major sequence with the global-local term
    x + x[..., limb_order], the joint-major transpose, both flipped), one single-path selective scan
    over the 4 x d_inner channels with B and C in 4 groups (posemamba's `selective_scan`, the
    counterpart of the official selective_scan_cuda, which takes the groups as one call each), then
    CrossMerge. Equal to op(x) up to rounding
    (tests/test_model.py), gradients included (exact through the global-local term, as the model's);
    benchmarks/test_model_benchmarks.py times the model with either."""
    from .ops import selective_scan

    batch, T, J, _ = x.shape
    L = T * J
    x, z = op.in_proj(x).chunk(2, dim=-1)
    x = F.silu(op.conv2d(x.permute(0, 3, 1, 2)))                       # (batch, d_inner, T, J)
    frame_major = (x + x[..., op.limb_order.tolist()]).flatten(2)
    joint_major = x.transpose(2, 3).flatten(2)
    xs = torch.stack([frame_major, joint_major, frame_major.flip(-1), joint_major.flip(-1)], dim=1)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, op.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [op.dt_rank, op.d_state, op.d_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, op.dt_projs_weight)
    ys = selective_scan(xs.reshape(batch, -1, L), dts.reshape(batch, -1, L), -torch.exp(op.A_logs),
                        Bs, Cs, D=op.Ds, delta_bias=op.dt_projs_bias.reshape(-1),
                        delta_softplus=True).view(batch, 4, -1, L)
    merged = ys[:, 0] + ys[:, 2].flip(-1)
    merged = merged + (ys[:, 1] + ys[:, 3].flip(-1)).view(batch, -1, J, T).transpose(2, 3).flatten(2)
    y = op.out_norm(merged.transpose(1, 2).reshape(batch, T, J, -1))
    return op.out_proj(y * F.silu(z))
