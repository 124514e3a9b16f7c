"""Human3.6M in VideoPose3D's files: `data_3d_h36m.npz` (`positions_3d`: {subject: {action: (N, 32, 3)
world metres}}) and a 2D file such as `data_2d_h36m_cpn_ft_h36m_dbb.npz` (`positions_2d`: {subject:
{action: [four (N', 17, 2) pixel arrays, one per camera]}}, and `metadata`).

The 3D joints are brought to each camera with Human3.6M's published calibration (h36m_cameras.json),
reduced to the 17 joints the 2D files use, and made root-relative; the 2D keypoints are normalised by
the camera's resolution like MotionBERT's. S1, S5, S6, S7, S8 train; S9, S11 test.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch

from .clips import ClipDataset, split_clips
from .screen import screen_coordinates

__all__ = ["H36M_32_TO_17", "TRAIN_SUBJECTS", "TEST_SUBJECTS", "h36m_cameras", "world_to_camera",
           "read_videopose3d", "VideoPose3DClips"]

# The 17 of the 32 motion-capture joints that the 2D files and Human3.6M's 17-joint layout keep.
H36M_32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
POSES_3D_FILE = "data_3d_h36m.npz"


def h36m_cameras() -> Dict:
    """Human3.6M's calibration: {"cameras": [4 x {id, res_w, res_h, center, focal_length}],
    "extrinsics": {subject: [4 x {orientation (w, x, y, z), translation (mm)}]}}."""
    with open(os.path.join(os.path.dirname(__file__), "h36m_cameras.json")) as file:
        return json.load(file)


def _rotate(quaternion: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rotates (..., 3) points by the unit quaternion (w, x, y, z)."""
    w, axis = quaternion[0], quaternion[1:]
    twice_cross = 2 * np.cross(axis, points)
    return points + w * twice_cross + np.cross(axis, twice_cross)


def world_to_camera(points: np.ndarray, orientation, translation) -> np.ndarray:
    """World points into the camera frame: the inverse of the camera-to-world rotation `orientation`
    applied to the offset from the camera position `translation` (same unit as the points)."""
    q = np.asarray(orientation, dtype=np.float64)
    return _rotate(q * np.array([1.0, -1.0, -1.0, -1.0]), np.asarray(points, np.float64) - np.asarray(translation))


def _load(path: str, key: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VideoPose3D file not found: {path}")
    try:
        with np.load(path, allow_pickle=True) as archive:
            if key not in archive.files:
                raise ValueError(f"{path}: no '{key}' array (found {archive.files})")
            data = archive[key].item()
            metadata = archive["metadata"].item() if "metadata" in archive.files else None
    except ValueError:
        raise
    except Exception as error:  # a damaged or foreign file
        raise ValueError(f"{path}: not a readable npz ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: '{key}' must be a dict of subjects, got {type(data).__name__}")
    return data, metadata


def read_videopose3d(folder: str, keypoints: str = "cpn_ft_h36m_dbb", subjects=TRAIN_SUBJECTS) -> List[Dict]:
    """The videos of `subjects`: a list of {"name", "action", "camera", "keypoints_px" (N, 17, 2),
    "joints_m" (N, 17, 3) camera-frame metres}, one per (subject, action, camera). The 2D file's extra
    trailing frames (its videos run a few frames past the motion capture) are cut, as VideoPose3D does."""
    path_3d = os.path.join(folder, POSES_3D_FILE)
    path_2d = os.path.join(folder, f"data_2d_h36m_{keypoints}.npz")
    poses_3d, _ = _load(path_3d, "positions_3d")
    poses_2d, metadata = _load(path_2d, "positions_2d")
    if metadata is not None and metadata.get("num_joints", 17) != 17:
        raise ValueError(f"{path_2d}: metadata says {metadata['num_joints']} joints; the 17-joint layout is needed")
    calibration = h36m_cameras()
    videos = []
    for subject in subjects:
        for path, data in ((path_3d, poses_3d), (path_2d, poses_2d)):
            if subject not in data:
                raise ValueError(f"{path}: no subject '{subject}'")
        for action, positions in poses_3d[subject].items():
            positions = np.asarray(positions)
            if positions.ndim != 3 or positions.shape[1:] != (32, 3):
                raise ValueError(f"{path_3d}: '{subject}'/'{action}' must have shape (N, 32, 3), got {positions.shape}")
            views = poses_2d[subject].get(action)
            if views is None or len(views) != 4:
                raise ValueError(f"{path_2d}: '{subject}'/'{action}' must hold four camera views")
            joints_world = positions[:, list(H36M_32_TO_17)]
            for index, view in enumerate(views):
                view = np.asarray(view)
                if view.ndim != 3 or view.shape[1:] != (17, 2) or len(view) < len(positions):
                    raise ValueError(f"{path_2d}: '{subject}'/'{action}' camera {index} must have shape "
                                     f"(N >= {len(positions)}, 17, 2), got {view.shape}")
                extrinsic = calibration["extrinsics"][subject][index]
                camera = calibration["cameras"][index]
                joints = world_to_camera(joints_world, extrinsic["orientation"],
                                         np.asarray(extrinsic["translation"]) / 1000.0)
                videos.append({"name": f"{subject} {action} {camera['id']}", "action": action.split(" ")[0],
                               "camera": camera, "keypoints_px": view[:len(positions)].astype(np.float32),
                               "joints_m": joints.astype(np.float32)})
    return videos


class VideoPose3DClips(ClipDataset):
    """Clips of `frames` frames of Human3.6M from VideoPose3D's files: (keypoints (T, 17, 2 or 3),
    target (T, 17, 3)), targets the root-relative camera-frame joints in metres (VideoPose3D's unit),
    so `millimetres_per_unit` is 1000; `action` per frame for the per-action table."""

    def __init__(self, folder: str, split: str = "train", frames: int = 243, stride: Optional[int] = None,
                 with_confidence: bool = False, keypoints: str = "cpn_ft_h36m_dbb"):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        videos = read_videopose3d(folder, keypoints, TRAIN_SUBJECTS if split == "train" else TEST_SUBJECTS)
        stride = stride or (max(1, frames // 3) if split == "train" else frames)
        keypoints_all, targets, names, actions = [], [], [], []
        for video in videos:
            width, height = video["camera"]["res_w"], video["camera"]["res_h"]
            screen = screen_coordinates(video["keypoints_px"], width, height)
            if with_confidence:  # the 2D files carry no confidences
                screen = np.concatenate([screen, np.ones((*screen.shape[:2], 1), dtype=np.float32)], axis=-1)
            keypoints_all.append(screen)
            targets.append(video["joints_m"] - video["joints_m"][:, :1])
            names.extend([video["name"]] * len(screen))
            actions.extend([video["action"]] * len(screen))
        self.keypoints = torch.from_numpy(np.concatenate(keypoints_all))
        self.targets = torch.from_numpy(np.concatenate(targets))
        self.target_mm = self.targets * 1000
        self.millimetres_per_unit = torch.full((len(self.targets),), 1000.0)
        self.action = np.array(actions)
        self.clips = split_clips(np.array(names), frames, stride)
