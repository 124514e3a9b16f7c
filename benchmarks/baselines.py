"""What users run without the fused op: the unfused multi-path pipeline of cross-scan Mambas.

Per path: materialise the mixed input (x + x[order]), copy every per-path tensor into scan order
(CrossScan), run a single-path scan on the copy, scatter its output back to natural order and add it
to the others (CrossMerge), then gate. The single-path scan is posemamba's own compiled kernel with
P = 1, so the comparison measures exactly what fusing the copies and merges saves.
"""
import torch
import torch.nn.functional as F

from posemamba.ops import multi_path_selective_scan


def unfused_multi_path_scan(u, delta, A, B, C, paths, D=None, z=None, delta_bias=None, mix=None,
                            delta_softplus=True):
    n_paths, seqlen = paths.shape
    in_order = torch.arange(seqlen, device=u.device).unsqueeze(0)
    y = torch.zeros_like(u)
    for p in range(n_paths):
        order = paths[p]
        v = u
        if mix is not None:
            partner = u[..., mix[p].clamp(min=0)]
            v = u + torch.where(mix[p] >= 0, partner, torch.zeros_like(partner))
        y_scan_order = multi_path_selective_scan(
            v[..., order].contiguous(),
            delta[:, p:p + 1][..., order].contiguous(),
            A[p:p + 1],
            B[:, p:p + 1][..., order].contiguous(),
            C[:, p:p + 1][..., order].contiguous(),
            in_order,
            D=None if D is None else D[p:p + 1],
            delta_bias=None if delta_bias is None else delta_bias[p:p + 1],
            delta_softplus=delta_softplus,
        )
        y = y + torch.zeros_like(y_scan_order).index_copy(-1, order, y_scan_order)
    return y * F.silu(z) if z is not None else y
