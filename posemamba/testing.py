"""Random inputs for the scan ops, for tests, benchmarks and users checking their own integrations."""
import torch

__all__ = ["random_scan_inputs"]


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
