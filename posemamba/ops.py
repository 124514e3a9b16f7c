"""The fused multi-path selective scan, as a PyTorch op with CPU (and CUDA) kernels.

    from posemamba.ops import multi_path_selective_scan, pose_paths, bidirectional_paths
"""
import functools
import numbers
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ._checks import PerTensorCache, check_multi_path_scan_args, weight_dtype_for
from ._extension import HAS_EXTENSION
from .paths import bidirectional_paths, pose_mix, pose_paths, span_lengths_hint
from .reference import multi_path_selective_scan_ref

__all__ = [
    "multi_path_selective_scan",
    "selective_scan",
    "bidirectional_paths",
    "pose_paths",
    "pose_mix",
]

# Mirrors kScanChunk in csrc/multi_path_scan.h: steps between the states the forward saves.
SCAN_CHUNK = 64

_HAS_CUDA_KERNELS = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
    "posemamba::multi_path_scan_fwd", "CUDA")


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
    span_lengths: Optional[Union[int, Sequence[int]]] = None,
    *,
    delta_proj_weight: Optional[torch.Tensor] = None,
    channels_last_out: bool = False,
) -> torch.Tensor:
    """P selective scans over one sequence in different orders, summed back in natural order.

    One fused op for what bidirectional and cross-scan Mambas do with copies: reorder the input per
    path, scan each copy, reorder each output back and add them. Every per-path tensor is indexed by
    natural position l; the op reads it in path order.

    Args (batch, D channels, L positions, P paths, N state size):
        u: (batch, D, L) float16, bfloat16, float32 or float64; the input. Contiguous, or channels-last:
            the transpose of a contiguous (batch, L, D) tensor, as mamba layers hold activations (read
            as it is by the CPU and CUDA kernels). z and the incoming gradient likewise (in the backward
            z is taken in the gradient's layout, copied where the two differ).
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
        span_lengths: hints for the CUDA kernels' work split, never changing the result beyond
            rounding: path p cut into spans of span_lengths[p] steps (see paths.span_lengths_hint;
            0: no hint), or one number for every path. None finds them in paths, once per tensor,
            except under torch.compile, which cannot read the values: give them there ([0, T, 0, T]
            for pose_paths(T, J)).
        delta_proj_weight: optional (P, D, R), u's dtype; mamba's low-rank step sizes: delta is then
            (batch, P, R, L) and the raw step sizes are delta_proj_weight[p] @ delta[b, p]. The CPU
            kernels project them as they read them, forward and backward: the full (batch, P, D, L)
            step sizes and their gradient never exist. The CUDA kernels project them as they read
            them too, and their backward writes the full step sizes' gradient, from which the op takes
            the projection's gradients by two matmuls. Either way a training step keeps R / D of their
            memory (mamba's delta_proj recomputation). delta, B and C may be views of one
            projection's rows (the CPU kernels lay them out in one copy each, the CUDA kernels read
            them there).
        channels_last_out: return out as the transpose of a contiguous (batch, L, D) tensor, so that
            out.transpose(1, 2), the (batch, L, D) a mamba layer goes on with, is free: the CPU and
            CUDA kernels write it so.

    For each batch b, channel d and path p, with h = 0 and l = paths[p, s] for s = 0..L-1:
        dt = softplus(delta[b,p,d,l] + delta_bias[p,d]);  v = u[b,d,l] (+ u[b,d,mix[p,l]])
        h = exp(dt * A[p,d]) * h + dt * v * B[b,p,:,l]
        y[b,d,l] += C[b,p,:,l] . h + D[p,d] * v

    Returns:
        out: (batch, D, L) in u's dtype; y, times silu(z) when z is given.

    Under torch.autocast (for u's device) the other inputs follow u: delta, B, C and z are cast to
    u's dtype, A, D and delta_bias to float32 (float64 with float64 u), as the kernels take them.

    Where no gradient is wanted (torch.no_grad, torch.inference_mode, or no input requiring one), the
    kernels keep nothing for a backward: the op's save_for_backward=False, the same out. Derivatives
    are first-order: a backward through the gradients raises an error.

    The values of paths and mix are checked the first time each tensor is passed and after an
    in-place change (a sort and host synchronisations for CUDA tensors; skipped under torch.compile
    and for meta tensors, where the kernels still bound-check every index): build them once. For
    CUDA tensors the paths' span lengths (paths.span_lengths_hint), hints for the GPU's work split,
    are found then too.
    """
    if _under_autocast(u):
        delta, B, C, z, delta_proj_weight = (_as_dtype(t, u.dtype) for t in (delta, B, C, z, delta_proj_weight))
        A, D, delta_bias = (_as_dtype(t, weight_dtype_for(u.dtype)) for t in (A, D, delta_bias))
    check_multi_path_scan_args(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_proj_weight)
    return _scan(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths,
                 delta_proj_weight, channels_last_out)[0]


def _wants_backward(*inputs) -> bool:
    """Whether autograd will want gradients of the op's inputs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


# The device types autocast knows (torch.is_autocast_enabled raises for others, such as meta), found
# once here: torch 2.11's dynamo cannot trace torch.amp.is_autocast_available, and a graph break in the
# op's wrapper would stop torch.compile(fullgraph=True).
_AUTOCAST_DEVICE_TYPES = frozenset(
    device_type for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "ipu", "mtia", "privateuseone")
    if torch.amp.is_autocast_available(device_type))


def _under_autocast(u) -> bool:
    device_type = u.device.type if isinstance(u, torch.Tensor) else None
    return device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type)


def _as_dtype(t, dtype: torch.dtype):
    """t in dtype where it is a floating tensor (autocast's casts); anything else as it is, for the checks."""
    return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def _scan(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths,
          delta_proj_weight=None, channels_last_out: bool = False, keep_states: bool = False):
    """multi_path_selective_scan on checked arguments: out, and (keep_states, where the kernels run)
    the state before every SCAN_CHUNK-th step of each path, (batch, P, chunks, N, D) in A's dtype,
    not differentiable; else None."""
    hints = _checked_span_lengths(span_lengths, n_paths=A.shape[0])
    if not _kernel_available(u.device):
        _warn_reference_once(u.device)
        return multi_path_selective_scan_ref(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus,
                                             delta_proj_weight=delta_proj_weight,
                                             channels_last_out=channels_last_out), None
    if hints is None:
        hints = _span_lengths_of(paths)
    wants_backward = _wants_backward(u, delta, A, B, C, D, z, delta_bias, delta_proj_weight)
    # Without a backward to come, the kernels skip the states and the ungated output it would read.
    out, _, chunk_states = torch.ops.posemamba.multi_path_scan_fwd(
        u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, hints, keep_states or wants_backward,
        delta_proj_weight, channels_last_out)
    return out, chunk_states if keep_states else None


def _is_step_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _checked_span_lengths(span_lengths, n_paths: int) -> Optional[List[int]]:
    """The op's per-path hints from multi_path_selective_scan's span_lengths (None: find them)."""
    if span_lengths is None:
        return None
    if _is_step_count(span_lengths):
        return [int(span_lengths)] * n_paths
    if (isinstance(span_lengths, (list, tuple)) and len(span_lengths) == n_paths
            and all(_is_step_count(s) for s in span_lengths)):
        return [int(s) for s in span_lengths]
    raise ValueError(f"span_lengths must be None, a number of steps or P={n_paths} of them, one per path "
                     f"(0: no hint), got {span_lengths!r}")


_span_lengths_cache = PerTensorCache()


def _span_lengths_of(paths: torch.Tensor) -> List[int]:
    """The CUDA kernels' work-split hints (paths.span_lengths_hint), found once per paths tensor; none
    on other devices (whose kernels take no hints) and under torch.compile (no values to read)."""
    if paths.device.type != "cuda" or torch.compiler.is_compiling():
        return []
    return _span_lengths_cache.get(paths, lambda: span_lengths_hint(paths))


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """mamba_ssm's `selective_scan_fn` (single path, natural order) on posemamba's kernels, CPU included.

    Args (batch, D channels, L positions, N state size, G groups of channels sharing B and C):
        u, delta: (batch, D, L).
        A: (D, N).
        B, C: (batch, N, L), or (batch, G, N, L) where channel d uses group d // (D // G).
        D, delta_bias: optional (D,).  z: optional (batch, D, L), the gate.
        delta_softplus: as in mamba, off by default.
    delta, B, C and z are used in u's dtype, A, D and delta_bias in float32 (float64 with float64 u),
    as mamba's kernels compute. Returns out (batch, D, L) in u's dtype; with return_last_state, also
    the state after the last position, (batch, D, N) in A's compute dtype and not differentiable, as
    mamba's: the kernels' saved state before the last 64-step chunk, carried through that chunk's
    steps here (at most 64 small steps of elementwise ops).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a tensor of shape (batch, D, L), got {getattr(u, 'shape', type(u).__name__)}")
    batch, dim, seqlen = u.shape
    if not isinstance(delta, torch.Tensor) or delta.shape != u.shape:
        raise ValueError(f"delta must have shape (batch, D, L) = {tuple(u.shape)}, "
                         f"got {getattr(delta, 'shape', type(delta).__name__)}")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (D={dim}, N), got {getattr(A, 'shape', type(A).__name__)}")
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (3, 4):
            raise ValueError(f"{name} must have shape (batch, N, L) or (batch, G, N, L), "
                             f"got {getattr(t, 'shape', type(t).__name__)}")
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))
    groups = B.shape[1]
    if C.shape[1] != groups or dim % groups:
        raise ValueError(f"B and C must have the same number of groups G dividing D={dim}, "
                         f"got G={groups} for B and {C.shape[1]} for C")
    weight_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    as_input = lambda t: None if t is None else t.to(u.dtype)  # noqa: E731
    as_weight = lambda t: None if t is None else t.to(weight_dtype)  # noqa: E731
    delta, B, C, z = as_input(delta), as_input(B), as_input(C), as_input(z)
    A, D, delta_bias = as_weight(A), as_weight(D), as_weight(delta_bias)

    in_order = _in_order(seqlen, u.device)
    group_dim = dim // groups
    outputs, last_states = [], []
    for g in range(groups):
        channels = slice(g * group_dim, (g + 1) * group_dim)
        args = (u[:, channels], delta[:, channels].unsqueeze(1), A[channels].unsqueeze(0),
                B[:, g:g + 1], C[:, g:g + 1], in_order,
                None if D is None else D[channels].unsqueeze(0),
                None if z is None else z[:, channels],
                None if delta_bias is None else delta_bias[channels].unsqueeze(0))
        check_multi_path_scan_args(*args, None)
        out, chunk_states = _scan(*args, None, delta_softplus, None, keep_states=return_last_state)
        outputs.append(out)
        if return_last_state:
            last_states.append(_state_after_last_step(
                u[:, channels], delta[:, channels], A[channels], B[:, g],
                None if delta_bias is None else delta_bias[channels], delta_softplus, chunk_states))
    out = outputs[0] if groups == 1 else torch.cat(outputs, dim=1)
    return (out, torch.cat(last_states, dim=1)) if return_last_state else out


@torch.no_grad()
def _state_after_last_step(u, delta, A, B, delta_bias, delta_softplus, chunk_states):
    """The state after a single natural-order path's last step, (batch, D, N) in A's dtype: from the
    kernels' saved state before the last chunk (chunk_states, (batch, 1, chunks, N, D)), or from zero
    where none was saved (the reference ran), through the remaining steps by the kernels' recurrence."""
    batch, dim, seqlen = u.shape
    if chunk_states is None:
        first_step, state = 0, A.new_zeros(batch, dim, A.shape[1])
    else:
        first_step, state = (chunk_states.shape[2] - 1) * SCAN_CHUNK, chunk_states[:, 0, -1].transpose(1, 2)
    dt = delta[..., first_step:].to(A.dtype)
    if delta_bias is not None:
        dt = dt + delta_bias[:, None]
    if delta_softplus:
        dt = torch.nn.functional.softplus(dt)
    dt_u = dt * u[..., first_step:].to(A.dtype)
    B = B[..., first_step:].to(A.dtype)
    for k in range(seqlen - first_step):  # h = exp(dt A) h + dt u B, as in every kernel
        state = torch.exp(dt[..., k, None] * A) * state + dt_u[..., k, None] * B[:, None, :, k]
    return state


@functools.lru_cache(maxsize=16)
def _in_order(seqlen: int, device: torch.device) -> torch.Tensor:
    """The one path of selective_scan, (1, L): one tensor per length and device, so that its values are
    checked once (_checks.check_values_once), not at every call. A normal tensor even when first made
    under torch.inference_mode: an inference tensor could not be saved for a later call's backward."""
    with torch.inference_mode(False):
        return torch.arange(seqlen, device=device).unsqueeze(0)


_WARNED_DEVICE_TYPES = set()


def _warn_reference_once(device: torch.device) -> None:
    if device.type not in _WARNED_DEVICE_TYPES and HAS_EXTENSION:  # (a missing extension warned at import)
        _WARNED_DEVICE_TYPES.add(device.type)
        warnings.warn(f"posemamba: no compiled {device.type} kernels in this build; the scan runs the "
                      "pure-PyTorch reference on this device", RuntimeWarning, stacklevel=3)


def _kernel_available(device: torch.device) -> bool:
    """Whether posemamba._C has a kernel for this device (its CUDA kernels are built only where a
    CUDA toolkit was found)."""
    if not HAS_EXTENSION:
        return False
    return device.type == "cpu" or (device.type == "cuda" and _HAS_CUDA_KERNELS)


if HAS_EXTENSION:
    def _activation(shape, like, channels_last):
        """A new (batch, D, L) tensor like `like`: the transpose of a contiguous (batch, L, D) tensor
        where channels_last, else contiguous."""
        batch, dim, seqlen = shape
        return like.new_empty((batch, seqlen, dim)).transpose(1, 2) if channels_last else like.new_empty(shape)

    @torch.library.register_fake("posemamba::multi_path_scan_fwd")
    def _multi_path_scan_fwd_fake(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths=(),
                                  save_for_backward=True, delta_proj_weight=None, channels_last_out=False):
        batch, dim, seqlen = u.shape
        n_paths, _, d_state = A.shape
        if delta_proj_weight is None:
            torch._check(delta.shape == (batch, n_paths, dim, seqlen), lambda: "delta must be (batch, P, D, L)")
        else:
            rank = delta_proj_weight.shape[-1]
            torch._check(delta_proj_weight.shape == (n_paths, dim, rank),
                         lambda: "delta_proj_weight must be (P, D, R)")
            torch._check(delta.shape == (batch, n_paths, rank, seqlen),
                         lambda: "delta must be (batch, P, R, L) with delta_proj_weight")
        torch._check(B.shape == (batch, n_paths, d_state, seqlen), lambda: "B must be (batch, P, N, L)")
        torch._check(C.shape == (batch, n_paths, d_state, seqlen), lambda: "C must be (batch, P, N, L)")
        n_chunks = (seqlen + SCAN_CHUNK - 1) // SCAN_CHUNK
        out = _activation(u.shape, u, channels_last_out)
        out_ungated = u.new_empty(u.shape if z is not None and save_for_backward else (0,))
        chunk_states = u.new_empty((batch, n_paths, n_chunks, d_state, dim) if save_for_backward else (0,),
                                   dtype=A.dtype)
        return out, out_ungated, chunk_states

    @torch.library.register_fake("posemamba::multi_path_scan_bwd")
    def _multi_path_scan_bwd_fake(grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated,
                                  chunk_states, delta_softplus, span_lengths=(), delta_proj_weight=None,
                                  channels_last_du=False, channels_last_dz=False):
        def like_or_absent(t, reference):
            return reference.new_empty(t.shape) if t is not None else reference.new_empty((0,))

        dz = _activation(z.shape, u, channels_last_dz) if z is not None else u.new_empty((0,))
        return (_activation(u.shape, u, channels_last_du), delta.new_empty(delta.shape), A.new_empty(A.shape),
                B.new_empty(B.shape), C.new_empty(C.shape), like_or_absent(D, A), dz,
                like_or_absent(delta_bias, A), like_or_absent(delta_proj_weight, u))

    def _is_channels_last(t):
        """Whether t, (batch, D, L), is the transpose of a contiguous (batch, L, D) tensor. Its gradient
        is then asked laid out so: autograd hands du to u's producer, whose backward runs several times
        slower on mixed layouts than a copy takes (PoseMamba's SiLU after its channels-last convolution
        took 6.5 ms against 0.85 ms at -L, batch 1, and the convolution's backward copied its inputs)."""
        return t is not None and t.dim() == 3 and not t.is_contiguous() and t.transpose(1, 2).is_contiguous()

    def _multi_path_scan_setup_context(ctx, inputs, output):
        (u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus, span_lengths, save_for_backward,
         delta_proj_weight, _channels_last_out) = inputs
        _, out_ungated, chunk_states = output
        ctx.save_for_backward(u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states,
                              delta_proj_weight)
        ctx.delta_softplus = delta_softplus
        ctx.span_lengths = span_lengths
        ctx.saved_for_backward = save_for_backward
        ctx.mark_non_differentiable(out_ungated, chunk_states)

    def _multi_path_scan_backward(ctx, grad_out, _grad_out_ungated, _grad_chunk_states):
        if not ctx.saved_for_backward:
            raise RuntimeError("multi_path_scan_fwd: no gradient with save_for_backward=False, which keeps nothing "
                               "for a backward (posemamba.ops.multi_path_selective_scan sets it from requires_grad)")
        u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states, delta_proj_weight = (
            ctx.saved_tensors)
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, ddelta_proj_weight = torch.ops.posemamba.multi_path_scan_bwd(
            grad_out, u, delta, A, B, C, paths, D, z, delta_bias, mix, out_ungated, chunk_states,
            ctx.delta_softplus, ctx.span_lengths, delta_proj_weight, _is_channels_last(u), _is_channels_last(z))
        return (du, ddelta, dA, dB, dC, None,
                dD if D is not None else None,
                dz if z is not None else None,
                ddelta_bias if delta_bias is not None else None,
                None, None, None, None,
                ddelta_proj_weight if delta_proj_weight is not None else None, None)

    torch.library.register_autograd(
        "posemamba::multi_path_scan_fwd", _multi_path_scan_backward,
        setup_context=_multi_path_scan_setup_context)

    def _multi_path_scan_double_backward(ctx, *grads):
        raise RuntimeError("posemamba: the multi-path scan has first derivatives only: its backward "
                           "(multi_path_scan_bwd) is not differentiable, so a second derivative through it "
                           "(create_graph=True, then a backward through those gradients) is not available")

    # Without it a backward through the gradients would run on, with a warning, as if they were
    # constants: second derivatives silently wrong. With it, such a backward stops, naming the op;
    # one without create_graph records nothing.
    torch.library.register_autograd(
        "posemamba::multi_path_scan_bwd", _multi_path_scan_double_backward,
        setup_context=lambda ctx, inputs, output: None)
