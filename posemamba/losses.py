"""Training losses of the official recipe.

Each takes (batch, T, J, 3) predictions and targets and returns a scalar. `PoseLoss` combines them
with the official weights: lambda_3d 1, lambda_scale 0.5, lambda_3d_velocity 20, lambda_diff 0.5
(the recipe's other terms have weight 0 and are left out).
"""
import torch

from .metrics import mpjpe, mpjve, n_mpjpe

__all__ = ["mpjpe_loss", "n_mpjpe_loss", "velocity_loss", "temporal_difference_loss", "PoseLoss"]


def mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return mpjpe(pred, target).mean()


def n_mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the per-pose least-squares scale of pred: penalises shape, not size."""
    return n_mpjpe(pred, target).mean()


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean error of the frame-to-frame motion of every joint."""
    return mpjve(pred, target).mean()


def temporal_difference_loss(pred: torch.Tensor) -> torch.Tensor:
    """The temporal-consistency term (MixSTE's): the mean squared frame-to-frame change of the
    prediction itself, over frame pairs, joints and coordinates. It damps jitter that the target
    does not show."""
    return pred.diff(dim=-3).square().mean()


class PoseLoss(torch.nn.Module):
    def __init__(self, lambda_3d: float = 1.0, lambda_scale: float = 0.5, lambda_velocity: float = 20.0,
                 lambda_diff: float = 0.5):
        super().__init__()
        self.lambda_3d, self.lambda_scale = lambda_3d, lambda_scale
        self.lambda_velocity, self.lambda_diff = lambda_velocity, lambda_diff

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.lambda_3d * mpjpe_loss(pred, target) + self.lambda_scale * n_mpjpe_loss(pred, target)
        if pred.shape[-3] > 1:  # the temporal terms need two frames
            if self.lambda_velocity:
                loss = loss + self.lambda_velocity * velocity_loss(pred, target)
            if self.lambda_diff:
                loss = loss + self.lambda_diff * temporal_difference_loss(pred)
        return loss
