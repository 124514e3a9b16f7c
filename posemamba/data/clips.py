"""Cutting per-frame sequences into fixed-length clips, never across two videos."""
from typing import List, Sequence

import numpy as np
import torch

__all__ = ["split_clips", "ClipDataset"]


class ClipDataset(torch.utils.data.Dataset):
    """Clips over per-frame arrays: a subclass sets `keypoints` and `targets` (frames first) and
    `clips` (frame indices per clip, from split_clips); item i is (keypoints, targets) of clip i."""

    keypoints: torch.Tensor
    targets: torch.Tensor
    clips: List[np.ndarray]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        frames = torch.from_numpy(self.clips[index])
        return self.keypoints[frames], self.targets[frames]


def split_clips(source: Sequence, frames: int, stride: int) -> List[np.ndarray]:
    """Frame indices of clips of `frames` frames, `stride` apart, within each run of equal `source`.

    Each video (a maximal run of equal source ids) gives clips starting at 0, stride, 2 stride, ...;
    when the last one does not reach the video's end, one more clip is aligned to the end, so every
    frame is covered. A video shorter than `frames` gives one clip of its frames resampled (evenly,
    repeating frames) to `frames` indices. Test sets use stride = frames (non-overlapping clips).
    """
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got frames={frames}, stride={stride}")
    source = np.asarray(source)
    if source.ndim != 1:
        raise ValueError(f"source must be one id per frame, got shape {source.shape}")
    boundaries = np.flatnonzero(source[1:] != source[:-1]) + 1
    clips = []
    for begin, end in zip(np.concatenate([[0], boundaries]), np.concatenate([boundaries, [len(source)]])):
        length = end - begin
        if length < frames:
            clips.append(begin + np.floor(np.arange(frames) * length / frames).astype(np.int64))
            continue
        starts = list(range(begin, end - frames + 1, stride))
        if starts[-1] + frames < end:
            starts.append(end - frames)
        clips.extend(np.arange(start, start + frames) for start in starts)
    return clips
