"""Scan orders for the multi-path selective scan.

A path is a row of `paths` (P, L): path p visits natural positions paths[p, 0], paths[p, 1], ... .
PoseMamba's sequences are T x J grids flattened frame-major, l = t * J + j.
"""
from typing import List, Sequence, Union

import torch

from ._checks import check_paths_values

__all__ = ["bidirectional_paths", "pose_paths", "pose_mix", "span_lengths_hint"]


def bidirectional_paths(order: Union[torch.Tensor, Sequence[int]]) -> torch.Tensor:
    """(2, L) int64: `order` and its reverse, as a bidirectional Mamba (Vision Mamba, say) scans."""
    order = torch.as_tensor(order, dtype=torch.int64)
    if order.dim() != 1:
        raise ValueError(f"order must be a 1-D permutation of range(L), got shape {tuple(order.shape)}")
    check_paths_values(order.unsqueeze(0), name="order")
    return torch.stack([order, order.flip(0)])


def _check_grid(T: int, J: int) -> None:
    if T < 1 or J < 1:
        raise ValueError(f"T and J must be >= 1, got T={T}, J={J}")


def pose_paths(T: int, J: int) -> torch.Tensor:
    """(4, T*J) int64: PoseMamba's four scans of a T x J grid flattened frame-major (l = t*J + j).

    Row 0, spatial-first: joints within a frame, frame after frame (frame-major, the natural order).
    Row 1, temporal-first: frames within a joint, joint after joint (joint-major).
    Rows 2 and 3: rows 0 and 1 reversed.
    """
    _check_grid(T, J)
    frame_major = torch.arange(T * J, dtype=torch.int64)
    joint_major = frame_major.view(T, J).t().reshape(-1)
    return torch.stack([frame_major, joint_major, frame_major.flip(0), joint_major.flip(0)])


def pose_mix(T: int, J: int, joint_order: Union[torch.Tensor, Sequence[int]]) -> torch.Tensor:
    """(4, T*J) int64 `mix` for pose_paths: the global-local input of the spatial-first scans.

    The spatial-first paths (rows 0 and 2) read u[t*J + j] + u[t*J + joint_order[j]] at position
    t*J + j: PoseMamba's local joint reorder (the joints along the limbs) added to the global input,
    folded into the load. joint_order holds J joint indices in [0, J); repeats are allowed (the
    limb traversal passes the pelvis and thorax more than once). The temporal-first paths (rows 1
    and 3) read u alone (-1).
    """
    _check_grid(T, J)
    joint_order = torch.as_tensor(joint_order, dtype=torch.int64).cpu()  # built on the host, like pose_paths
    if joint_order.shape != (J,):
        raise ValueError(f"joint_order must hold J={J} joint indices, got shape {tuple(joint_order.shape)}")
    if joint_order.numel() and (int(joint_order.min()) < 0 or int(joint_order.max()) >= J):
        raise ValueError(f"joint_order must hold joint indices in [0, J={J}), got {joint_order.tolist()}")
    frame_start = torch.arange(T, dtype=torch.int64).unsqueeze(1) * J
    local = (frame_start + joint_order.unsqueeze(0)).reshape(-1)
    unmixed = torch.full_like(local, -1)
    return torch.stack([local, unmixed, local, unmixed])


def span_lengths_hint(paths: torch.Tensor) -> List[int]:
    """The span lengths for the CUDA kernels' warp splits (forward and backward; see
    csrc/cuda/scan_warp_split_cuda.cuh), one per row of paths: S, or 0 for none.

    A row has span length S when its step s + S visits a position next to step s's, for every s
    (|paths[p, s + S] - paths[p, s]| = 1): warps walking consecutive spans of S steps then read
    neighbouring positions at the same time. PoseMamba's joint-major paths have S = T; a row along
    consecutive positions has S = 1, which needs no spans (0), like a row with no S. Each row's
    smallest S >= 2. Reads the values on the host.
    """
    hints = []
    for row in paths.detach().to("cpu"):
        hint = 0
        # Only the steps visiting a neighbour of the first step's position can be S: at most two.
        for span in (row - row[0]).abs().eq(1).nonzero().flatten().tolist():
            if (row[span:] - row[:-span]).abs().eq(1).all():
                hint = span if span >= 2 else 0
                break
        hints.append(hint)
    return hints
