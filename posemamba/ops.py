"""The fused multi-path selective scan, as a PyTorch op with CPU (and CUDA) kernels.

    from posemamba.ops import multi_path_selective_scan, pose_paths, bidirectional_paths
"""
from typing import Optional

import torch

from ._checks import check_multi_path_scan_args
from ._extension import HAS_EXTENSION
from .paths import bidirectional_paths, pose_mix, pose_paths
from .reference import multi_path_selective_scan_ref

__all__ = [
    "multi_path_selective_scan",
    "bidirectional_paths",
    "pose_paths",
    "pose_mix",
]

# Mirrors kScanChunk in csrc/multi_path_scan.h: steps between the states the forward saves.
SCAN_CHUNK = 64


def multi_path_selective_scan(
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
) -> torch.Tensor:
    """P selective scans over one sequence in different orders, summed back in natural order.

    One fused op for what bidirectional and cross-scan Mambas do with copies: reorder the input per
    path, scan each copy, reorder each output back and add them. Every per-path tensor is indexed by
    natural position l; the op reads it in path order.

    Args (batch, D channels, L positions, P paths, N state size):
        u: (batch, D, L) float16, bfloat16, float32 or float64; the input.
        delta: (batch, P, D, L), u's dtype; the raw step sizes.
        A: (P, D, N) float32 (float64 with float64 inputs); the state matrix (diagonal), usually < 0.
        B, C: (batch, P, N, L), u's dtype; the input-dependent input and output matrices.
        paths: (P, L) int64, each row a permutation of range(L): path p visits positions
            paths[p, 0], paths[p, 1], ... in scan order.
        D: optional (P, D), A's dtype; the skip connection, D[p, d] * v.
        z: optional (batch, D, L), u's dtype; the gate, out = y * silu(z).
        delta_bias: optional (P, D), A's dtype; added to delta before the softplus.
        mix: optional (P, L) int64; where mix[p, l] >= 0 path p reads u[l] + u[mix[p, l]] at position
            l instead of u[l] (-1: u[l] alone).
        delta_softplus: apply softplus to delta + delta_bias.

    For each batch b, channel d and path p, with h = 0 and l = paths[p, s] for s = 0..L-1:
        dt = softplus(delta[b,p,d,l] + delta_bias[p,d]);  v = u[b,d,l] (+ u[b,d,mix[p,l]])
        h = exp(dt * A[p,d]) * h + dt * v * B[b,p,:,l]
        y[b,d,l] += C[b,p,:,l] . h + D[p,d] * v

    Returns:
        out: (batch, D, L) in u's dtype; y, times silu(z) when z is given.
    """
    check_multi_path_scan_args(u, delta, A, B, C, paths, D, z, delta_bias, mix)
    if not _kernel_available(u.device):
        return multi_path_selective_scan_ref(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus)
    out, _, _ = torch.ops.posemamba.multi_path_scan_fwd(
        u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus)
    return out


def _kernel_available(device: torch.device) -> bool:
    return HAS_EXTENSION and device.type == "cpu"


if HAS_EXTENSION:
    @torch.library.register_fake("posemamba::multi_path_scan_fwd")
    def _multi_path_scan_fwd_fake(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus):
        batch, dim, seqlen = u.shape
        n_paths, _, d_state = A.shape
        torch._check(delta.shape == (batch, n_paths, dim, seqlen), lambda: "delta must be (batch, P, D, L)")
        torch._check(B.shape == (batch, n_paths, d_state, seqlen), lambda: "B must be (batch, P, N, L)")
        torch._check(C.shape == (batch, n_paths, d_state, seqlen), lambda: "C must be (batch, P, N, L)")
        n_chunks = (seqlen + SCAN_CHUNK - 1) // SCAN_CHUNK
        out = u.new_empty(u.shape)
        out_ungated = u.new_empty(u.shape if z is not None else (0,))
        chunk_states = u.new_empty((batch, n_paths, dim, n_chunks, d_state), dtype=A.dtype)
        return out, out_ungated, chunk_states

    @torch.library.register_fake("posemamba::multi_path_scan_bwd")
    def _multi_path_scan_bwd_fake(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                  chunk_states, delta_softplus):
        def like_or_absent(t, reference):
            return reference.new_empty(t.shape) if t is not None else A.new_empty((0,))

        dz = u.new_empty(u.shape) if z is not None else u.new_empty((0,))
        return (u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape),
                B.new_empty(B.shape), C.new_empty(C.shape), like_or_absent(D, A), dz,
                like_or_absent(delta_bias, A))

    def _multi_path_scan_setup_context(ctx, inputs, output):
        u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus = inputs
        _, out_ungated, chunk_states = output
        ctx.save_for_backward(u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states)
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(out_ungated, chunk_states)

    def _multi_path_scan_backward(ctx, grad_out, _grad_out_ungated, _grad_chunk_states):
        u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = torch.ops.posemamba.multi_path_scan_bwd(
            grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states,
            ctx.delta_softplus)
        return (du, ddelta, dA, dB, dC, None,
                dD if D is not None else None,
                dz if z is not None else None,
                ddelta_bias if delta_bias is not None else None,
                None, None)

    torch.library.register_autograd(
        "posemamba::multi_path_scan_fwd", _multi_path_scan_backward,
        setup_context=_multi_path_scan_setup_context)
