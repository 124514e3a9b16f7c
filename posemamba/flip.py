"""Test-time flip augmentation for Human3.6M's 17 joints: mirror the input, predict, mirror back, average."""
import torch

__all__ = ["H36M_LEFT_JOINTS", "H36M_RIGHT_JOINTS", "flip_pose", "predict_with_flip"]

H36M_LEFT_JOINTS = (4, 5, 6, 11, 12, 13)
H36M_RIGHT_JOINTS = (1, 2, 3, 14, 15, 16)


def flip_pose(pose: torch.Tensor) -> torch.Tensor:
    """Mirror (..., 17, C) poses left to right: negate x and swap the left and right joints."""
    if pose.shape[-2] != 17:
        raise ValueError(f"pose must have 17 Human3.6M joints in dim -2, got shape {tuple(pose.shape)}")
    flipped = pose.clone()
    flipped[..., 0] = -flipped[..., 0]
    left, right = list(H36M_LEFT_JOINTS), list(H36M_RIGHT_JOINTS)
    flipped[..., left + right, :] = flipped[..., right + left, :]
    return flipped


def predict_with_flip(model: torch.nn.Module, keypoints: torch.Tensor) -> torch.Tensor:
    """The mean of the model's 3D prediction and the mirrored prediction of the mirrored input."""
    return 0.5 * (model(keypoints) + flip_pose(model(flip_pose(keypoints))))
