"""Evaluation as the papers report it, each frame counted once (where a video's last clip overlaps
the one before, a frame's scores are averaged):

- Human3.6M: P1 (MPJPE) and P2 (P-MPJPE) in millimetres, averaged per action and then over actions,
  plus MPJVE.
- MPI-INF-3DHP: PCK (150 mm), AUC (0-150 mm) and MPJPE over the valid frames of the test set, overall
  and per sequence.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict

import numpy as np
import torch

from ..flip import predict_with_flip
from ..metrics import auc, mpjpe, mpjve, p_mpjpe, pck

__all__ = ["H36MResult", "MPI3DHPResult", "frame_scores", "evaluate_h36m", "evaluate_3dhp", "format_table"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class H36MResult:
    p1: float                      # mean over actions of the per-action mean MPJPE, mm
    p2: float                      # the same for P-MPJPE
    mpjve: float                   # mean velocity error over all clips, mm per frame
    per_action: Dict[str, Dict[str, float]] = field(default_factory=dict)   # action -> {"p1", "p2", "frames"}

    SCORES = ("p1", "p2", "mpjve")  # what a training log records

    @property
    def summary(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in self.SCORES}


@dataclass
class MPI3DHPResult:
    pck: float                     # percent of joints within 150 mm, over all valid frames
    auc: float                     # percent, the PCK averaged over thresholds 0, 5, ..., 150 mm
    p1: float                      # MPJPE, mm
    per_sequence: Dict[str, Dict[str, float]] = field(default_factory=dict)

    SCORES = ("p1", "pck", "auc")  # what a training log records

    @property
    def summary(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in self.SCORES}


@torch.no_grad()
def frame_scores(model: torch.nn.Module, dataset, metrics: Dict[str, Metric], batch_size: int = 16,
                 flip: bool = True, device="cpu"):
    """Every clip predicted (with test-time flip averaging if `flip`), made root-relative, scaled to
    millimetres by the dataset's `millimetres_per_unit` and scored against its `target_mm` by each
    metric. Returns ({name: per-frame score, NaN where no clip covers the frame}, mean MPJVE)."""
    if getattr(dataset, "target_mm", None) is None:
        raise ValueError("the test split has no millimetre scale ('2.5d_factor' for Human3.6M): "
                         "millimetre metrics cannot be computed")
    was_training = model.training
    model.eval()
    frames_total = len(dataset.keypoints)
    sums = {name: np.zeros(frames_total) for name in metrics}
    counts = np.zeros(frames_total)
    velocity_errors = []
    for begin in range(0, len(dataset), batch_size):
        clips = dataset.clips[begin:begin + batch_size]
        frames = torch.from_numpy(np.stack(clips))                                   # (B, T)
        keypoints = dataset.keypoints[frames].to(device)
        pred = predict_with_flip(model, keypoints) if flip else model(keypoints)
        pred = pred.float().cpu()
        pred_mm = (pred - pred[..., :1, :]) * dataset.millimetres_per_unit[frames][..., None, None]
        target_mm = dataset.target_mm[frames]
        flat = frames.reshape(-1).numpy()
        for name, metric in metrics.items():
            np.add.at(sums[name], flat, metric(pred_mm, target_mm).reshape(-1).double().numpy())
        np.add.at(counts, flat, 1.0)
        if pred_mm.shape[1] > 1:
            velocity_errors.append(mpjve(pred_mm, target_mm).reshape(-1))
    model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_frame = {name: value / counts for name, value in sums.items()}
    velocity = float(torch.cat(velocity_errors).mean()) if velocity_errors else float("nan")
    return per_frame, velocity


def evaluate_h36m(model: torch.nn.Module, dataset, batch_size: int = 16, flip: bool = True,
                  device="cpu") -> H36MResult:
    """P1 and P2 per action (each frame once), then the mean over actions; MPJVE over all clips."""
    per_frame, velocity = frame_scores(model, dataset, {"p1": mpjpe, "p2": p_mpjpe}, batch_size, flip, device)
    covered = ~np.isnan(per_frame["p1"])
    actions = dataset.action if dataset.action is not None else np.array(["all"] * len(covered))
    per_action = {}
    for action in sorted(set(actions[covered].tolist())):
        rows = covered & (actions == action)
        per_action[action] = {"p1": float(per_frame["p1"][rows].mean()), "p2": float(per_frame["p2"][rows].mean()),
                              "frames": int(rows.sum())}
    return H36MResult(p1=float(np.mean([a["p1"] for a in per_action.values()])),
                      p2=float(np.mean([a["p2"] for a in per_action.values()])), mpjve=velocity,
                      per_action=per_action)


def evaluate_3dhp(model: torch.nn.Module, dataset, batch_size: int = 16, flip: bool = True,
                  device="cpu") -> MPI3DHPResult:
    """PCK, AUC and MPJPE over the valid frames (each once), overall and per test sequence."""
    metrics = {"pck": lambda p, t: 100 * pck(p, t), "auc": lambda p, t: 100 * auc(p, t), "p1": mpjpe}
    per_frame, _ = frame_scores(model, dataset, metrics, batch_size, flip, device)
    scored = dataset.valid & ~np.isnan(per_frame["p1"])
    per_sequence = {}
    for sequence in sorted(set(dataset.sequence[scored].tolist())):
        rows = scored & (dataset.sequence == sequence)
        per_sequence[sequence] = {name: float(per_frame[name][rows].mean()) for name in metrics}
        per_sequence[sequence]["frames"] = int(rows.sum())
    overall = {name: float(per_frame[name][scored].mean()) for name in metrics}
    return MPI3DHPResult(pck=overall["pck"], auc=overall["auc"], p1=overall["p1"], per_sequence=per_sequence)


def format_table(result) -> str:
    """The per-action (Human3.6M) or per-sequence (MPI-INF-3DHP) table and the overall row."""
    if isinstance(result, H36MResult):
        rows, columns = result.per_action, [("P1 (mm)", "p1"), ("P2 (mm)", "p2")]
        first, overall = "action", {"p1": result.p1, "p2": result.p2}
    else:
        rows, columns = result.per_sequence, [("PCK (%)", "pck"), ("AUC (%)", "auc"), ("MPJPE (mm)", "p1")]
        first, overall = "sequence", {"pck": result.pck, "auc": result.auc, "p1": result.p1}
    width = max([len(first), len("average")] + [len(name) for name in rows])
    lines = [f"{first:<{width}}" + "".join(f"  {title:>10}" for title, _ in columns) + f"  {'frames':>7}"]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"  {row[key]:10.1f}" for _, key in columns) + f"  {row['frames']:7d}")
    lines.append(f"{'average':<{width}}" + "".join(f"  {overall[key]:10.1f}" for _, key in columns))
    if isinstance(result, H36MResult):
        lines.append(f"MPJVE {result.mpjve:.2f} mm")
    return "\n".join(lines)
