"""Training losses of the official recipe (MotionBERT's, which PoseMamba trains with).

Each takes (batch, T, J, 3) predictions and targets and returns a scalar. `PoseLoss` combines them
with the official weights: lambda_3d 1, lambda_scale 0.5, lambda_3d_velocity 20 (the recipe's other
terms have weight 0 and are left out).
"""
import torch

from .metrics import mpjpe, mpjve, n_mpjpe

__all__ = ["mpjpe_loss", "n_mpjpe_loss", "velocity_loss", "PoseLoss"]


def mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return mpjpe(pred, target).mean()


def n_mpjpe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the per-pose least-squares scale of pred: penalises shape, not size."""
    return n_mpjpe(pred, target).mean()


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean error of the frame-to-frame motion of every joint."""
    return mpjve(pred, target).mean()


class PoseLoss(torch.nn.Module):
    def __init__(self, lambda_3d: float = 1.0, lambda_scale: float = 0.5, lambda_velocity: float = 20.0):
        super().__init__()
        self.lambda_3d, self.lambda_scale, self.lambda_velocity = lambda_3d, lambda_scale, lambda_velocity

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.lambda_3d * mpjpe_loss(pred, target) + self.lambda_scale * n_mpjpe_loss(pred, target)
        if self.lambda_velocity and pred.shape[-3] > 1:
            loss = loss + self.lambda_velocity * velocity_loss(pred, target)
        return loss
