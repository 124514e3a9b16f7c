"""Human3.6M in the MotionBERT-preprocessed pickle that PoseMamba's code reads
(`h36m_sh_conf_cam_source_final.pkl`, and the CPN-detection variant).

The file holds `train` and `test` dicts of per-frame arrays: `joint_2d` (N, 17, 2) pixels,
`confidence` (N, 17) or (N, 17, 1), `joint3d_image` (N, 17, 3) pixels and depth, `2.5d_factor` (N,)
millimetres per pixel, `joints_2.5d_image` (N, 17, 3) = joint3d_image x 2.5d_factor, `camera_name` (N,),
`source` (N,) the video of each frame, `action` (N,).
"""
import os
import pickle
from typing import Dict, Optional

import numpy as np
import torch

from .clips import ClipDataset, split_clips
from .screen import screen_coordinates

__all__ = ["H36M_CAMERA_RESOLUTIONS", "read_h36m_pickle", "normalise_screen", "H36MClips"]

# (width, height) in pixels of each Human3.6M camera.
H36M_CAMERA_RESOLUTIONS = {
    "54138969": (1000, 1002),
    "55011271": (1000, 1000),
    "58860488": (1000, 1000),
    "60457274": (1000, 1002),
}

_REQUIRED = {"joint_2d": (17, 2), "joint3d_image": (17, 3), "camera_name": (), "source": ()}
_OPTIONAL = {"confidence": None, "2.5d_factor": (), "joints_2.5d_image": (17, 3), "action": ()}


def read_h36m_pickle(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """The `train` and `test` splits, checked: every missing key or wrong shape names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Human3.6M pickle not found: {path}")
    try:
        with open(path, "rb") as file:
            data = pickle.load(file)
    except Exception as error:  # a damaged or foreign file
        raise ValueError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict with 'train' and 'test', got {type(data).__name__}")
    splits = {}
    for split in ("train", "test"):
        if not isinstance(data.get(split), dict):
            raise ValueError(f"{path}: missing the '{split}' dict")
        arrays = {}
        for key, trailing in {**_REQUIRED, **_OPTIONAL}.items():
            if key not in data[split]:
                if key in _REQUIRED:
                    raise ValueError(f"{path}: '{split}' has no '{key}'")
                continue
            value = np.asarray(data[split][key])
            if trailing is not None and value.shape[1:] != trailing:
                expected = "(N" + "".join(f", {size}" for size in trailing) + ")"
                raise ValueError(f"{path}: '{split}'/'{key}' must have shape {expected}, got {value.shape}")
            arrays[key] = value
        frames = len(arrays["joint_2d"])
        for key, value in arrays.items():
            if len(value) != frames:
                raise ValueError(f"{path}: '{split}'/'{key}' has {len(value)} frames, 'joint_2d' has {frames}")
        if "confidence" in arrays:
            confidence = arrays["confidence"].reshape(frames, -1)
            if confidence.shape[1] != 17:
                raise ValueError(f"{path}: '{split}'/'confidence' must be (N, 17) or (N, 17, 1), "
                                 f"got {arrays['confidence'].shape}")
            arrays["confidence"] = confidence
        splits[split] = arrays
    return splits


def normalise_screen(values: np.ndarray, camera_names: np.ndarray) -> np.ndarray:
    """Pixels (and depth) to screen coordinates by each frame's camera resolution (screen_coordinates)."""
    out = values.astype(np.float32).copy()
    for name in np.unique(camera_names):
        key = str(name)
        if key not in H36M_CAMERA_RESOLUTIONS:
            raise ValueError(f"unknown Human3.6M camera {key!r}; expected one of {sorted(H36M_CAMERA_RESOLUTIONS)}")
        rows = camera_names == name
        out[rows] = screen_coordinates(out[rows], *H36M_CAMERA_RESOLUTIONS[key])
    return out


class H36MClips(ClipDataset):
    """Clips of `frames` frames from one split: (keypoints (T, 17, 2 or 3), target (T, 17, 3)).

    Keypoints are normalised screen coordinates, with the detector confidence as a third channel when
    `with_confidence`; targets are the normalised 3D joints, root-relative (joint 0 at the origin)
    unless `root_relative` is False. Training clips start every `stride` frames (default frames // 3),
    test clips do not overlap (stride = frames); see split_clips.

    For evaluation in millimetres, per frame: `camera_width` (pixels; normalised units x width / 2 are
    pixels), `factor` (the 2.5d_factor, millimetres per pixel), their product `millimetres_per_unit`
    (width / 2 x factor, as MotionBERT denormalises) and `target_mm` (root-relative joints in
    millimetres, from joints_2.5d_image or joint3d_image x factor); None where the file has no factor.
    """

    def __init__(self, path: str, split: str = "train", frames: int = 243, stride: Optional[int] = None,
                 with_confidence: bool = False, root_relative: bool = True):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        arrays = read_h36m_pickle(path)[split]
        if with_confidence and "confidence" not in arrays:
            raise ValueError(f"{path}: '{split}' has no 'confidence', needed for with_confidence=True")
        stride = stride or (max(1, frames // 3) if split == "train" else frames)
        cameras = arrays["camera_name"].astype(str)
        keypoints = normalise_screen(arrays["joint_2d"], cameras)
        if with_confidence:
            keypoints = np.concatenate([keypoints, arrays["confidence"][..., None].astype(np.float32)], axis=-1)
        targets = normalise_screen(arrays["joint3d_image"], cameras)
        if root_relative:
            targets = targets - targets[:, :1]
        self.keypoints = torch.from_numpy(keypoints)
        self.targets = torch.from_numpy(targets)
        self.clips = split_clips(arrays["source"], frames, stride)
        self.action = arrays["action"].astype(str) if "action" in arrays else None
        self.camera_width = torch.tensor([H36M_CAMERA_RESOLUTIONS[c][0] for c in cameras], dtype=torch.float32)
        self.factor = self.target_mm = self.millimetres_per_unit = None
        if "2.5d_factor" in arrays:
            self.factor = torch.from_numpy(arrays["2.5d_factor"].astype(np.float32))
            joints_mm = arrays.get("joints_2.5d_image")
            if joints_mm is None:
                joints_mm = arrays["joint3d_image"] * arrays["2.5d_factor"][:, None, None]
            joints_mm = torch.from_numpy(joints_mm.astype(np.float32))
            self.target_mm = joints_mm - joints_mm[:, :1]
            self.millimetres_per_unit = self.camera_width / 2 * self.factor
