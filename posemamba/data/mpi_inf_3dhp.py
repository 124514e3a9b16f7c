"""MPI-INF-3DHP in the npz files that MotionAGFormer and PoseMamba read (made by P-STMO's scripts).

`data_train_3dhp.npz`: `data` holds {"S1 Seq1": [{camera: {"data_2d": (N, 17, 2) pixels, "data_3d":
(N, 17, 3) millimetres}}], ...}, 2048x2048 images. `data_test_3dhp.npz`: `data` holds {"TS1": {"data_2d",
"data_3d", "valid": (N,)}, ...}, TS1-TS4 2048x2048 and TS5-TS6 1920x1080. Joints are in 3DHP's order
(root = 14); the clips give them in Human3.6M's order by default, so the same model, flip pairs and
limb order apply.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .clips import ClipDataset, split_clips
from .screen import screen_coordinates

__all__ = ["MPI_INF_3DHP_TO_H36M", "MPI_INF_3DHP_ROOT", "mpi_inf_3dhp_resolution", "read_mpi_inf_3dhp",
           "MPI3DHPClips"]

# H36M joint j is 3DHP joint MPI_INF_3DHP_TO_H36M[j]: pelvis, right leg, left leg, spine, neck, head,
# head top, left arm, right arm.
MPI_INF_3DHP_TO_H36M = (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4)
MPI_INF_3DHP_ROOT = 14
TRAIN_FILE, TEST_FILE = "data_train_3dhp.npz", "data_test_3dhp.npz"


def mpi_inf_3dhp_resolution(sequence: str) -> Tuple[int, int]:
    """(width, height): the test set's outdoor sequences TS5 and TS6 are 1920x1080, all else 2048x2048."""
    return (1920, 1080) if sequence in ("TS5", "TS6") else (2048, 2048)


def _check_video(path: str, where: str, video, need_valid: bool) -> None:
    if not isinstance(video, dict):
        raise ValueError(f"{path}: {where} must be a dict with 'data_2d' and 'data_3d', got {type(video).__name__}")
    for key, trailing in (("data_2d", (17, 2)), ("data_3d", (17, 3))):
        if key not in video:
            raise ValueError(f"{path}: {where} has no '{key}'")
        shape = np.shape(video[key])
        if len(shape) != 3 or shape[1:] != trailing:
            raise ValueError(f"{path}: {where}/'{key}' must have shape (N, {trailing[0]}, {trailing[1]}), got {shape}")
    if len(video["data_2d"]) != len(video["data_3d"]):
        raise ValueError(f"{path}: {where} has {len(video['data_2d'])} 2D and {len(video['data_3d'])} 3D frames")
    if need_valid:
        if "valid" not in video:
            raise ValueError(f"{path}: {where} has no 'valid'")
        if np.shape(video["valid"]) != (len(video["data_2d"]),):
            raise ValueError(f"{path}: {where}/'valid' must have shape ({len(video['data_2d'])},), "
                             f"got {np.shape(video['valid'])}")


def read_mpi_inf_3dhp(folder: str, split: str) -> List[Dict]:
    """The split's videos, checked: a list of {"name", "sequence", "data_2d", "data_3d", "valid"}, one per
    (sequence, camera) for train and per test sequence for test. Errors name the file and the key."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = os.path.join(folder, TRAIN_FILE if split == "train" else TEST_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MPI-INF-3DHP file not found: {path}")
    try:
        with np.load(path, allow_pickle=True) as archive:
            if "data" not in archive.files:
                raise ValueError(f"{path}: no 'data' array (found {archive.files})")
            data = archive["data"].item()
    except ValueError:
        raise
    except Exception as error:  # a damaged or foreign file
        raise ValueError(f"{path}: not a readable npz ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: 'data' must be a non-empty dict of sequences")
    videos = []
    for sequence, entry in data.items():
        if split == "test":
            _check_video(path, f"'{sequence}'", entry, need_valid=True)
            videos.append({"name": sequence, "sequence": sequence, **{k: entry[k] for k in ("data_2d", "data_3d")},
                           "valid": np.asarray(entry["valid"]).astype(bool)})
            continue
        if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], dict):
            raise ValueError(f"{path}: '{sequence}' must be a list holding a dict of cameras")
        for camera, video in entry[0].items():
            _check_video(path, f"'{sequence}'/camera {camera}", video, need_valid=False)
            videos.append({"name": f"{sequence} camera {camera}", "sequence": sequence, "data_2d": video["data_2d"],
                           "data_3d": video["data_3d"], "valid": np.ones(len(video["data_2d"]), dtype=bool)})
    return videos


class MPI3DHPClips(ClipDataset):
    """Clips of `frames` frames from one split of MPI-INF-3DHP: (keypoints (T, 17, 2 or 3), target (T, 17, 3)).

    Keypoints are screen coordinates normalised by the video's resolution like Human3.6M's (a constant
    confidence of 1 as the third channel when `with_confidence`: the files have none). Targets are the
    root-relative 3D joints in millimetres divided by half the image width, as MotionAGFormer trains
    them; `millimetres_per_unit` (per frame) undoes that, `target_mm` holds the root-relative
    millimetres and `valid` the test set's valid-frame flags. With `h36m_order` (the default) joints
    come in Human3.6M's order."""

    def __init__(self, folder: str, split: str = "train", frames: int = 81, stride: Optional[int] = None,
                 with_confidence: bool = False, h36m_order: bool = True):
        videos = read_mpi_inf_3dhp(folder, split)
        stride = stride or (max(1, frames // 3) if split == "train" else frames)
        order = list(MPI_INF_3DHP_TO_H36M) if h36m_order else list(range(17))
        keypoints, targets_mm, scale, valid, source, sequence = [], [], [], [], [], []
        for video in videos:
            width, height = mpi_inf_3dhp_resolution(video["sequence"])
            count = len(video["data_2d"])
            screen = screen_coordinates(np.asarray(video["data_2d"])[:, order], width, height)
            if with_confidence:
                screen = np.concatenate([screen, np.ones((count, 17, 1), dtype=np.float32)], axis=-1)
            joints = np.asarray(video["data_3d"], dtype=np.float32)
            joints = joints - joints[:, MPI_INF_3DHP_ROOT:MPI_INF_3DHP_ROOT + 1]
            keypoints.append(screen)
            targets_mm.append(joints[:, order])
            scale.append(np.full(count, width / 2, dtype=np.float32))
            valid.append(video["valid"])
            source.extend([video["name"]] * count)
            sequence.extend([video["sequence"]] * count)
        self.keypoints = torch.from_numpy(np.concatenate(keypoints))
        self.target_mm = torch.from_numpy(np.concatenate(targets_mm))
        self.millimetres_per_unit = torch.from_numpy(np.concatenate(scale))
        self.targets = self.target_mm / self.millimetres_per_unit[:, None, None]
        self.valid = np.concatenate(valid)
        self.sequence = np.array(sequence)
        self.clips = split_clips(np.array(source), frames, stride)
