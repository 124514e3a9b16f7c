"""Pure-PyTorch reference of the fused multi-path selective scan.

Readable rather than fast, and written with the kernels' variable names (u, delta, dt, v, h, y, A, B,
C, D, z, paths, mix) so each line can be held against csrc/multi_path_scan.h. The tests check the
kernels against it, and posemamba.ops falls back to it where the compiled extension is missing.
It computes in float32 (float64 for float64 inputs) and returns u's dtype, as the kernels do.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["multi_path_selective_scan_ref"]


def _gather_scan_order(x: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """x (batch, P, ..., L) indexed by natural position -> the same values in each path's scan order."""
    index = paths.view(1, paths.shape[0], *([1] * (x.dim() - 3)), paths.shape[1]).expand_as(x)
    return torch.gather(x, -1, index)


def multi_path_selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    paths: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    mix: Optional[torch.Tensor] = None,
    delta_softplus: bool = True,
    *,
    delta_proj_weight: Optional[torch.Tensor] = None,
    channels_last_out: bool = False,
) -> torch.Tensor:
    """Same arguments and result as posemamba.ops.multi_path_selective_scan (see its docstring)."""
    if delta_proj_weight is not None:  # delta is low-rank: (batch, P, R, L) -> (batch, P, D, L)
        delta = torch.matmul(delta_proj_weight, delta)
    input_dtype = u.dtype
    compute_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
    batch, dim, seqlen = u.shape
    n_paths, _, d_state = A.shape
    u, delta, B, C = (t.to(compute_dtype) for t in (u, delta, B, C))
    A = A.to(compute_dtype)

    # v: what each path reads at each natural position, (batch, P, D, L).
    v = u.unsqueeze(1).expand(batch, n_paths, dim, seqlen)
    if mix is not None:
        partner = u[:, :, mix.clamp(min=0)].permute(0, 2, 1, 3)  # u[b, d, mix[p, l]] as (batch, P, D, L)
        v = v + torch.where((mix >= 0)[:, None, :], partner, torch.zeros_like(partner))

    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute_dtype)[None, :, :, None]
    if delta_softplus:
        dt = F.softplus(dt)

    # Everything below runs in scan order: step s of path p is natural position paths[p, s].
    dt_s = _gather_scan_order(dt, paths)                       # (batch, P, D, L)
    v_s = _gather_scan_order(v, paths)                         # (batch, P, D, L)
    B_s = _gather_scan_order(B, paths)                         # (batch, P, N, L)
    C_s = _gather_scan_order(C, paths)                         # (batch, P, N, L)
    decay = torch.exp(dt_s.unsqueeze(-1) * A[None, :, :, None, :])    # (batch, P, D, L, N)
    drive = (dt_s * v_s).unsqueeze(-1) * B_s.transpose(-1, -2).unsqueeze(2)  # (batch, P, D, L, N)

    # unbind, not indexing in the loop: autograd then stacks the steps' gradients once instead of
    # writing each into a full-size zero tensor (quadratic in L).
    h = u.new_zeros(batch, n_paths, dim, d_state)
    y_steps = []
    for decay_s, drive_s, C_at_s in zip(decay.unbind(3), drive.unbind(3), C_s.unbind(-1)):
        h = decay_s * h + drive_s
        y_steps.append(torch.einsum("bpdn,bpn->bpd", h, C_at_s))
    y_s = torch.stack(y_steps, dim=-1)                         # (batch, P, D, L)
    if D is not None:
        y_s = y_s + D.to(compute_dtype)[None, :, :, None] * v_s

    # Back to natural order (the fused cross-merge), then the sum over paths.
    scatter_index = paths[None, :, None, :].expand_as(y_s)
    y = torch.zeros_like(y_s).scatter(-1, scatter_index, y_s).sum(dim=1)
    if z is not None:
        y = y * F.silu(z.to(compute_dtype))
    if channels_last_out:  # the transpose of a contiguous (batch, L, D) tensor
        return y.transpose(1, 2).to(input_dtype).contiguous().transpose(1, 2)
    return y.to(input_dtype)
