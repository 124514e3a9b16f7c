"""Human3.6M evaluation as the papers report it: P1 (MPJPE) and P2 (P-MPJPE) in millimetres, each
frame counted once, averaged per action and then over actions, plus MPJVE."""
from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import torch

from ..data.h36m import H36MClips
from ..flip import predict_with_flip
from ..metrics import mpjpe, mpjve, p_mpjpe

__all__ = ["H36MResult", "evaluate_h36m", "format_table"]


@dataclass
class H36MResult:
    p1: float                      # mean over actions of the per-action mean MPJPE, mm
    p2: float                      # the same for P-MPJPE
    mpjve: float                   # mean velocity error over all clips, mm per frame
    per_action: Dict[str, Dict[str, float]] = field(default_factory=dict)   # action -> {"p1", "p2", "frames"}


def _batches(count: int, size: int):
    for begin in range(0, count, size):
        yield range(begin, min(count, begin + size))


@torch.no_grad()
def evaluate_h36m(model: torch.nn.Module, dataset: H36MClips, batch_size: int = 16, flip: bool = True,
                  device="cpu") -> H36MResult:
    """Predicts every test clip (with test-time flip averaging if `flip`), makes it root-relative, turns
    it into millimetres with each frame's camera width and 2.5d_factor, and scores it against the
    file's millimetre joints. A frame that two clips cover (the last clip of a video is aligned to its
    end) gets the mean of its errors, so every frame weighs once."""
    if dataset.target_mm is None:
        raise ValueError("the test split has no '2.5d_factor': millimetre metrics cannot be computed")
    was_training = model.training
    model.eval()
    frames_total = len(dataset.keypoints)
    sums = {"p1": np.zeros(frames_total), "p2": np.zeros(frames_total)}
    counts = np.zeros(frames_total)
    velocity_errors = []
    for batch in _batches(len(dataset), batch_size):
        frames = torch.from_numpy(np.stack([dataset.clips[i] for i in batch]))        # (B, T)
        keypoints = dataset.keypoints[frames].to(device)
        pred = predict_with_flip(model, keypoints) if flip else model(keypoints)
        pred = pred.float().cpu()
        pred = pred - pred[..., :1, :]
        millimetres_per_unit = dataset.camera_width[frames] / 2 * dataset.factor[frames]
        pred_mm = pred * millimetres_per_unit[..., None, None]
        target_mm = dataset.target_mm[frames]
        flat = frames.reshape(-1).numpy()
        np.add.at(sums["p1"], flat, mpjpe(pred_mm, target_mm).reshape(-1).double().numpy())
        np.add.at(sums["p2"], flat, p_mpjpe(pred_mm, target_mm).reshape(-1).double().numpy())
        np.add.at(counts, flat, 1.0)
        if pred_mm.shape[1] > 1:
            velocity_errors.append(mpjve(pred_mm, target_mm).reshape(-1))
    model.train(was_training)

    covered = counts > 0
    per_frame = {name: value[covered] / counts[covered] for name, value in sums.items()}
    actions = dataset.action[covered] if dataset.action is not None else np.array(["all"] * int(covered.sum()))
    per_action = {}
    for action in sorted(set(actions.tolist())):
        rows = actions == action
        per_action[action] = {"p1": float(per_frame["p1"][rows].mean()), "p2": float(per_frame["p2"][rows].mean()),
                              "frames": int(rows.sum())}
    return H36MResult(
        p1=float(np.mean([a["p1"] for a in per_action.values()])),
        p2=float(np.mean([a["p2"] for a in per_action.values()])),
        mpjve=float(torch.cat(velocity_errors).mean()) if velocity_errors else float("nan"),
        per_action=per_action,
    )


def format_table(result: H36MResult) -> str:
    """The per-action table and the averages, in millimetres."""
    width = max([len("action"), len("average")] + [len(a) for a in result.per_action])
    lines = [f"{'action':<{width}}  {'P1 (mm)':>8}  {'P2 (mm)':>8}  {'frames':>7}"]
    for action, row in result.per_action.items():
        lines.append(f"{action:<{width}}  {row['p1']:8.1f}  {row['p2']:8.1f}  {row['frames']:7d}")
    lines.append(f"{'average':<{width}}  {result.p1:8.1f}  {result.p2:8.1f}")
    lines.append(f"MPJVE {result.mpjve:.2f} mm")
    return "\n".join(lines)
