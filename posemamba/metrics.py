"""3D pose metrics: MPJPE (P1), P-MPJPE (P2), N-MPJPE, MPJVE, and MPI-INF-3DHP's PCK and AUC.

Poses are (..., J, 3) tensors in the same unit (millimetres for the reported numbers). Each function
returns the per-frame error, shape (...), so callers can average per action, then over actions.
"""
import torch

__all__ = ["mpjpe", "p_mpjpe", "n_mpjpe", "mpjve", "pck", "auc"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() < 2 or pred.shape[-1] != 3:
        raise ValueError(f"pred and target must both be (..., J, 3), got {tuple(pred.shape)} and {tuple(target.shape)}")


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error: the mean over joints of the Euclidean distance."""
    _check_pair(pred, target)
    return (pred - target).norm(dim=-1).mean(dim=-1)


def p_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the similarity transform (rotation, scale, translation) that best aligns pred to
    target in least squares (Procrustes, reflections excluded)."""
    _check_pair(pred, target)
    pred64, target64 = pred.double(), target.double()
    pred_centred = pred64 - pred64.mean(dim=-2, keepdim=True)
    target_centred = target64 - target64.mean(dim=-2, keepdim=True)
    covariance = pred_centred.transpose(-1, -2) @ target_centred          # (..., 3, 3)
    U, S, Vh = torch.linalg.svd(covariance)
    # Flip the last axis where the best orthogonal map would be a reflection.
    sign = torch.sign(torch.linalg.det(U @ Vh))
    S = torch.cat([S[..., :2], S[..., 2:] * sign.unsqueeze(-1)], dim=-1)
    U = torch.cat([U[..., :2], U[..., 2:] * sign[..., None, None]], dim=-1)
    rotation = U @ Vh
    scale = S.sum(dim=-1) / pred_centred.square().sum(dim=(-1, -2))
    aligned = scale[..., None, None] * pred_centred @ rotation + target64.mean(dim=-2, keepdim=True)
    return mpjpe(aligned, target64).to(pred.dtype)


def n_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after scaling pred by the least-squares factor <pred, target> / <pred, pred> per pose."""
    _check_pair(pred, target)
    scale = (pred * target).sum(dim=(-1, -2), keepdim=True) / pred.square().sum(dim=(-1, -2), keepdim=True)
    return mpjpe(scale * pred, target)


def mpjve(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint velocity error over (..., T, J, 3) sequences: MPJPE of the frame-to-frame
    differences, one value per frame pair, shape (..., T - 1)."""
    _check_pair(pred, target)
    if pred.dim() < 3 or pred.shape[-3] < 2:
        raise ValueError(f"mpjve needs sequences (..., T >= 2, J, 3), got {tuple(pred.shape)}")
    return mpjpe(pred.diff(dim=-3), target.diff(dim=-3))


def pck(pred: torch.Tensor, target: torch.Tensor, threshold: float = 150.0) -> torch.Tensor:
    """Percentage of correct keypoints: the fraction of joints within `threshold` of the target."""
    _check_pair(pred, target)
    return ((pred - target).norm(dim=-1) < threshold).to(pred.dtype).mean(dim=-1)


def auc(pred: torch.Tensor, target: torch.Tensor, max_threshold: float = 150.0, steps: int = 31) -> torch.Tensor:
    """Area under the PCK curve: the mean PCK over `steps` thresholds evenly spaced in [0, max_threshold]."""
    thresholds = torch.linspace(0.0, max_threshold, steps).tolist()
    return torch.stack([pck(pred, target, t) for t in thresholds]).mean(dim=0)
