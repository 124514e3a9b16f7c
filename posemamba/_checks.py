"""Argument checks for the scan ops: each error names the argument and what was expected."""
import weakref
from typing import Any, Callable, Optional, Sequence

import torch

# Mirrors kMaxPaths / kMaxStateDim in csrc/multi_path_scan.h.
MAX_PATHS = 8
MAX_STATE_DIM = 64

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def weight_dtype_for(input_dtype: torch.dtype) -> torch.dtype:
    """A, D and delta_bias are float32, or float64 alongside float64 inputs (the kernels' math type)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def _check_tensor(t, name: str, expected_shape: Sequence[int], shape_names: str,
                  dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_names}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {shape_names} = {tuple(expected_shape)}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} (u's device), got {t.device}")


def check_paths_values(paths: torch.Tensor, name: str = "paths") -> None:
    """Every row of paths must be a permutation of range(L)."""
    seqlen = paths.shape[-1]
    expected = torch.arange(seqlen, device=paths.device).expand_as(paths)
    if not torch.equal(paths.sort(dim=-1).values, expected):
        bad_row = int((paths.sort(dim=-1).values != expected).any(dim=-1).nonzero()[0])
        raise ValueError(f"{name}[{bad_row}] must be a permutation of range(L={seqlen})")


class PerTensorCache:
    """What a function computed from a tensor's values, kept while that very tensor lives unchanged.

    Index tensors are reused call after call (a model's paths and mix), and reading their values takes
    host syncs, which on a GPU would stall every call. Entries are keyed by id(tensor) with a weak
    reference (dropped with the tensor) and its version (an in-place change bumps it: computed again).
    A tensor made under torch.inference_mode has no version to tell an in-place change by, so its
    values are read again every call: build index tensors outside it, as the model does.
    """

    def __init__(self):
        self._entries = {}

    def get(self, t: torch.Tensor, compute: Callable[[], Any]) -> Any:
        if t.is_inference():
            return compute()
        key = id(t)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2]
        value = compute()
        self._entries[key] = (weakref.ref(t, lambda _, key=key: self._entries.pop(key, None)), t._version, value)
        return value


_checked_values = PerTensorCache()


def check_values_once(t: torch.Tensor, check: Callable[[], None]) -> None:
    """Runs check() unless it passed for this very tensor, unchanged since."""
    _checked_values.get(t, check)


def check_mix_values(mix: torch.Tensor, seqlen: int) -> None:
    if mix.numel() and (int(mix.min()) < -1 or int(mix.max()) >= seqlen):
        raise ValueError(f"mix must hold -1 or positions in [0, L={seqlen}), "
                         f"got values in [{int(mix.min())}, {int(mix.max())}]")


def check_multi_path_scan_args(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    paths: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    mix: Optional[torch.Tensor],
    delta_proj_weight: Optional[torch.Tensor] = None,
) -> None:
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a tensor of shape (batch, D, L), got {got}")
    if u.dtype not in INPUT_DTYPES:
        raise TypeError(f"u must have dtype float16, bfloat16, float32 or float64, got {u.dtype}")
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        raise ValueError("u must have a length L >= 1, got L=0")
    if not isinstance(A, torch.Tensor) or A.dim() != 3 or A.shape[1] != dim:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must have shape (P, D={dim}, N), got {got}")
    n_paths, _, d_state = A.shape
    if not 1 <= n_paths <= MAX_PATHS:
        raise ValueError(f"A: the number of paths P must be in [1, {MAX_PATHS}], got {n_paths}")
    if not 1 <= d_state <= MAX_STATE_DIM:
        raise ValueError(f"A: the state size N must be in [1, {MAX_STATE_DIM}], got {d_state}")

    weight_dtype = weight_dtype_for(u.dtype)
    device = u.device
    _check_tensor(A, "A", (n_paths, dim, d_state), "(P, D, N)", weight_dtype, device)
    if delta_proj_weight is None:
        _check_tensor(delta, "delta", (batch, n_paths, dim, seqlen), "(batch, P, D, L)", u.dtype, device)
    else:  # delta is low-rank, projected to (batch, P, D, L) by the weight
        if not isinstance(delta_proj_weight, torch.Tensor) or delta_proj_weight.dim() != 3:
            got = tuple(delta_proj_weight.shape) if isinstance(delta_proj_weight, torch.Tensor) else \
                type(delta_proj_weight).__name__
            raise ValueError(f"delta_proj_weight must have shape (P, D, R), got {got}")
        rank = delta_proj_weight.shape[-1]
        _check_tensor(delta_proj_weight, "delta_proj_weight", (n_paths, dim, rank), "(P, D, R)", u.dtype, device)
        _check_tensor(delta, "delta", (batch, n_paths, rank, seqlen), "(batch, P, R, L) with delta_proj_weight",
                      u.dtype, device)
    _check_tensor(B, "B", (batch, n_paths, d_state, seqlen), "(batch, P, N, L)", u.dtype, device)
    _check_tensor(C, "C", (batch, n_paths, d_state, seqlen), "(batch, P, N, L)", u.dtype, device)
    _check_tensor(paths, "paths", (n_paths, seqlen), "(P, L)", torch.int64, device)
    if D is not None:
        _check_tensor(D, "D", (n_paths, dim), "(P, D)", weight_dtype, device)
    if z is not None:
        _check_tensor(z, "z", (batch, dim, seqlen), "(batch, D, L)", u.dtype, device)
    if delta_bias is not None:
        _check_tensor(delta_bias, "delta_bias", (n_paths, dim), "(P, D)", weight_dtype, device)
    if mix is not None:
        _check_tensor(mix, "mix", (n_paths, seqlen), "(P, L)", torch.int64, device)

    # Value checks need real data: under torch.compile the inputs are symbolic and meta tensors have
    # none; the kernels still bound-check every index they load.
    if not torch.compiler.is_compiling() and device.type != "meta":
        check_values_once(paths, lambda: check_paths_values(paths))
        if mix is not None:
            check_values_once(mix, lambda: check_mix_values(mix, seqlen))
