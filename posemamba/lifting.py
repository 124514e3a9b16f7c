"""Lifting a whole 2D keypoint sequence of any length to 3D with a trained PoseMamba.

Sequences longer than the model's T frames are lifted in windows of T that overlap by half, blended
with weights that fall off towards each window's ends (a frame near a window's edge sees little
context); shorter ones are padded by repeating their last frame. The last window is aligned to the end.
"""
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import extract_state_dict, load_checkpoint, read_checkpoint_file
from .flip import predict_with_flip
from .model import PoseMamba

__all__ = ["window_starts", "lift_sequence", "model_from_checkpoint", "body_height", "scale_to_height"]

# Bones from the ankles to the head top: either leg (ankle-knee-hip), then hip-pelvis is skipped (it
# runs sideways) and the spine, neck and head chain up from the pelvis.
_LEG_CHAINS = ((3, 2, 1), (6, 5, 4))
_TRUNK_CHAIN = (0, 7, 8, 9, 10)


def window_starts(frames: int, window: int) -> list:
    """Start frames of windows of `window` frames covering `frames`, half a window apart, the last
    aligned to the end."""
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, max(1, window // 2)))
    if starts[-1] != frames - window:
        starts.append(frames - window)
    return starts


def _blend_weights(window: int) -> np.ndarray:
    # A tent, never zero: the sequence's own first and last frames are covered by one window only.
    position = (np.arange(window) + 0.5) / window
    return np.minimum(position, 1 - position) + 1e-3


@torch.no_grad()
def lift_sequence(model: PoseMamba, keypoints: np.ndarray, flip: bool = False, batch_size: int = 8,
                  device="cpu", progress: Optional[bool] = None) -> np.ndarray:
    """(frames, 17, C) normalised keypoints -> (frames, 17, 3) root-relative 3D joints in the model's
    normalised units (half the image width is 1). `flip` averages with the mirrored input's
    prediction; `progress` draws a bar (None: on a terminal, for more than a few windows)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (model.num_joints, model.in_chans):
        raise ValueError(f"keypoints must be (frames, {model.num_joints}, {model.in_chans}), got {keypoints.shape}")
    if not np.isfinite(keypoints).all():
        raise ValueError("keypoints contain NaN or infinite values: fill missing detections first")
    frames, window = len(keypoints), model.num_frame
    if frames == 0:
        raise ValueError("keypoints has no frames")
    padded = keypoints if frames >= window else np.concatenate(
        [keypoints, np.repeat(keypoints[-1:], window - frames, axis=0)])
    starts = window_starts(len(padded), window)
    weights = _blend_weights(window)
    total = np.zeros((len(padded), model.num_joints, 3))
    weight_sum = np.zeros(len(padded))
    model = model.eval().to(device)
    parameter = next(model.parameters(), None)  # a half-precision model takes its clips in its dtype
    dtype = parameter.dtype if parameter is not None else torch.float32
    batches = range(0, len(starts), batch_size)
    # tqdm's disable=None: a bar on a terminal only; short inputs get none unless asked for.
    if progress is None:
        disable = None if len(starts) > 4 * batch_size else True
    else:
        disable = not progress
    for begin in tqdm(batches, desc="lifting", unit="batch", disable=disable):
        chunk = starts[begin:begin + batch_size]
        clips = torch.from_numpy(np.stack([padded[s:s + window] for s in chunk])).to(device, dtype)
        pred = (predict_with_flip(model, clips) if flip else model(clips)).float().cpu().numpy()
        for start, clip in zip(chunk, pred):
            total[start:start + window] += weights[:, None, None] * clip
            weight_sum[start:start + window] += weights
    joints = (total / weight_sum[:, None, None])[:frames]
    return (joints - joints[:, :1]).astype(np.float32)


def _chain_length(joints: np.ndarray, chain) -> np.ndarray:
    return sum(np.linalg.norm(joints[:, a] - joints[:, b], axis=-1) for a, b in zip(chain[:-1], chain[1:]))


def body_height(joints: np.ndarray) -> float:
    """The skeleton's standing height from its bones, whatever its pose: the mean over frames of the
    mean leg (ankle-knee-hip) plus the trunk and head (pelvis-spine-thorax-neck-head top). It leaves out
    the ankle's height above the floor (about 5 to 8 cm of a person's height)."""
    joints = np.asarray(joints, dtype=np.float64)
    legs = 0.5 * (_chain_length(joints, _LEG_CHAINS[0]) + _chain_length(joints, _LEG_CHAINS[1]))
    return float(np.mean(legs + _chain_length(joints, _TRUNK_CHAIN)))


def scale_to_height(joints: np.ndarray, height: float) -> np.ndarray:
    """The joints scaled so that body_height is `height` (e.g. the person's height in millimetres less
    the ankle's height above the floor): a single view gives 3D shape, not size."""
    measured = body_height(joints)
    if not measured > 0:
        raise ValueError("the skeleton has no extent to scale")
    return (np.asarray(joints) * (height / measured)).astype(np.float32)


def model_from_checkpoint(path: str, backend: str = "auto") -> PoseMamba:
    """A PoseMamba shaped by the checkpoint itself (official or posemamba's): its width, depth, input
    channels, clip length and MLP ratio are read from the weights' shapes, then the weights loaded."""
    state = extract_state_dict(read_checkpoint_file(path), path)
    try:
        dim, in_chans = state["Spatial_patch_to_embedding.weight"].shape
        num_frame = state["Temporal_pos_embed"].shape[1]
        num_joints = state["Spatial_pos_embed"].shape[1]
        depth = 1 + max(int(name.split(".")[1]) for name in state if name.startswith("STEblocks."))
        mlp_ratio = state["STEblocks.0.mlp.fc1.weight"].shape[0] / dim
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: not PoseMamba weights (no {error})") from error
    model = PoseMamba(num_frame=num_frame, num_joints=num_joints, in_chans=in_chans, dim=dim, depth=depth,
                      mlp_ratio=mlp_ratio, drop_path_rate=0.0, backend=backend)
    load_checkpoint(model, state)
    return model
