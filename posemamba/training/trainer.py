"""The training loop of the official recipe, on one device or many (torchrun), with checkpoints that
resume exactly: each epoch's shuffling, flips and drop-path draw from seeds fixed by (seed, epoch, rank),
so an interrupted run resumed from its last checkpoint continues as if it had never stopped."""
import csv
import gc
import math
import os
import time
from contextlib import nullcontext
from typing import Any, Dict, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.h36m import H36MClips
from ..data.mpi_inf_3dhp import MPI3DHPClips
from ..data.videopose3d import VideoPose3DClips
from ..data.synthetic import write_synthetic_h36m
from ..flip import flip_pose
from ..losses import PoseLoss
from ..model import PoseMamba, posemamba
from .distributed import DistributedContext, barrier, init_distributed
from .evaluation import H36MResult, MPI3DHPResult, evaluate_3dhp, evaluate_h36m

__all__ = ["build_datasets", "build_model", "evaluate", "train", "evaluate_checkpoint", "LATEST", "BEST"]

LATEST, BEST = "latest.pth", "best.pth"
DATA_KINDS = ("h36m_pickle", "synthetic", "videopose3d", "mpi_inf_3dhp")
# Each data kind's evaluation and its result type (whose SCORES the log records); P1 (MPJPE) picks
# the best checkpoint.
_EVALUATION = {"h36m_pickle": (evaluate_h36m, H36MResult), "synthetic": (evaluate_h36m, H36MResult),
               "videopose3d": (evaluate_h36m, H36MResult), "mpi_inf_3dhp": (evaluate_3dhp, MPI3DHPResult)}


def build_datasets(config: Dict[str, Any], context: Optional[DistributedContext] = None):
    """(train, test) clips from config['data']: H36MClips for a MotionBERT-format pickle (a synthetic
    one is generated first if missing), VideoPose3DClips for VideoPose3D's Human3.6M files,
    MPI3DHPClips for the MPI-INF-3DHP npz folder."""
    data = config["data"]
    context = context or DistributedContext()
    if data["kind"] not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {DATA_KINDS}, got {data['kind']!r}")
    if data["kind"] == "synthetic":
        if context.is_main and not os.path.isfile(data["path"]):
            os.makedirs(os.path.dirname(os.path.abspath(data["path"])), exist_ok=True)
            write_synthetic_h36m(data["path"], seed=config["train"]["seed"], **data["synthetic"])
        barrier(context)
    clips = {"mpi_inf_3dhp": MPI3DHPClips, "videopose3d": VideoPose3DClips}.get(data["kind"], H36MClips)
    common = dict(frames=data["frames"], with_confidence=data["with_confidence"])
    if data["kind"] == "videopose3d":
        common["keypoints"] = data["keypoints"]
    return (clips(data["path"], "train", stride=data["train_stride"], **common),
            clips(data["path"], "test", **common))


def evaluate(config: Dict[str, Any], model: torch.nn.Module, test_set, device="cpu"):
    """The data kind's evaluation (Human3.6M's P1/P2 or MPI-INF-3DHP's PCK/AUC/MPJPE) of `model`."""
    evaluator, _ = _EVALUATION[config["data"]["kind"]]
    return evaluator(model, test_set, config["evaluate"]["batch_size"], config["evaluate"]["flip"], device)


def build_model(config: Dict[str, Any]) -> PoseMamba:
    in_chans = 3 if config["data"]["with_confidence"] else 2
    return posemamba(config["model"]["preset"], num_frame=config["data"]["frames"], in_chans=in_chans,
                     **config["model"]["overrides"])


def _save(state: Dict[str, Any], path: str) -> None:
    # Written aside and renamed: an interruption mid-write never leaves a damaged checkpoint.
    partial = path + ".partial"
    torch.save(state, partial)
    os.replace(partial, path)


def _append_log(path: str, row: Dict[str, Any]) -> None:
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _flip_half(keypoints: torch.Tensor, target: torch.Tensor):
    """Mirrors a random half of the clips (input and target together)."""
    chosen = torch.rand(keypoints.shape[0]) < 0.5
    if chosen.any():
        keypoints, target = keypoints.clone(), target.clone()
        keypoints[chosen], target[chosen] = flip_pose(keypoints[chosen]), flip_pose(target[chosen])
    return keypoints, target


def _train_epoch(model, loader, criterion, optimizer, config, context, epoch) -> float:
    train_cfg = config["train"]
    amp = train_cfg["amp"]
    use_amp = amp is True or (amp == "auto" and context.device.type == "cuda")
    autocast = torch.autocast(context.device.type, dtype=torch.bfloat16) if use_amp else nullcontext()
    model.train()
    total, clips, started = 0.0, 0, time.perf_counter()
    # A bar on the main process only, and only on a terminal (None: tqdm leaves it out of logs).
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=None if context.is_main else True, leave=False,
               mininterval=1.0)
    for keypoints, target in bar:
        if train_cfg["flip"]:
            keypoints, target = _flip_half(keypoints, target)
        keypoints, target = keypoints.to(context.device), target.to(context.device)
        with autocast:
            pred = model(keypoints)
        loss = criterion(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(keypoints)
        clips += len(keypoints)
        bar.set_postfix(loss=f"{loss.item():.4f}", clips_per_s=f"{clips / (time.perf_counter() - started):.1f}")
    totals = torch.tensor([total, clips], dtype=torch.float64)
    if context.enabled:
        torch.distributed.all_reduce(totals)
    return float(totals[0] / totals[1])


def _budget_spent(minutes: Optional[float], started: float, context: DistributedContext) -> bool:
    """Whether the time budget is spent, decided by rank 0 for all ranks: clocks differ between
    processes, and a rank that stopped alone would leave the others waiting in a collective."""
    spent = torch.tensor([minutes is not None and time.perf_counter() - started > 60 * minutes], dtype=torch.int32)
    if context.enabled:
        torch.distributed.broadcast(spent, src=0)
    return bool(spent.item())


def train(config: Dict[str, Any], resume: bool = False, log=print) -> Dict[str, Any]:
    """Trains per `config` (see posemamba.training.config); writes latest.pth, best.pth and log.csv in
    config['output']. With `resume`, continues from output/latest.pth when it exists. Returns the
    history of logged rows and the best P1."""
    train_cfg, output = config["train"], config["output"]
    if train_cfg["amp"] not in ("auto", True, False):
        raise ValueError(f"train.amp must be auto, true or false, got {train_cfg['amp']!r}")
    context = init_distributed(train_cfg["device"])
    if context.is_main:
        os.makedirs(output, exist_ok=True)
    torch.manual_seed(train_cfg["seed"])
    train_set, test_set = build_datasets(config, context)
    model = build_model(config).to(context.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    criterion = PoseLoss(train_cfg["lambda_3d"], train_cfg["lambda_scale"], train_cfg["lambda_velocity"],
                         train_cfg["lambda_diff"])
    start_epoch, best_p1, history = 0, math.inf, []
    latest = os.path.join(output, LATEST)
    if resume and os.path.isfile(latest):
        state = torch.load(latest, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model_pos"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_p1 = state["epoch"], state["min_loss"]
        for group in optimizer.param_groups:
            group["lr"] = state["lr"]
        log(f"resumed from {latest} at epoch {start_epoch}")
    elif resume:
        log(f"no checkpoint at {latest}: starting from epoch 0")

    wrapped = DistributedDataParallel(model) if context.enabled else model
    sampler = DistributedSampler(train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                                 seed=train_cfg["seed"], drop_last=context.enabled)
    loader = DataLoader(train_set, batch_size=train_cfg["batch_size"], sampler=sampler,
                        num_workers=train_cfg["num_workers"], pin_memory=context.device.type == "cuda")
    started = time.perf_counter()
    for epoch in range(start_epoch, train_cfg["epochs"]):
        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(train_cfg["seed"] + 1000 * epoch + context.rank)   # flips and drop-path
        loss = _train_epoch(wrapped, loader, criterion, optimizer, config, context, epoch)
        lr = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] *= train_cfg["lr_decay"]
        scores = _EVALUATION[config["data"]["kind"]][1].SCORES
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, **{name: "" for name in scores},
               "seconds": round(time.perf_counter() - epoch_started, 2)}
        evaluated = (epoch + 1) % config["evaluate"]["every"] == 0 or epoch + 1 == train_cfg["epochs"]
        if context.is_main:
            if evaluated:
                result = evaluate(config, model, test_set, context.device)
                row.update({name: round(value, 3) for name, value in result.summary.items()})
            improved = evaluated and row["p1"] < best_p1
            best_p1 = row["p1"] if improved else best_p1
            state = {"model_pos": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "lr": optimizer.param_groups[0]["lr"], "min_loss": best_p1, "config": config}
            _save(state, latest)
            if improved:
                _save(state, os.path.join(output, BEST))
            _append_log(os.path.join(output, "log.csv"), row)
            log(f"epoch {epoch + 1}: loss {loss:.4f}" + "".join(f", {name} {row[name]:.1f}" for name in scores
                                                                if evaluated))
        history.append(row)
        barrier(context)
        if _budget_spent(train_cfg["max_minutes"], started, context):
            log(f"stopping after epoch {epoch + 1}: the {train_cfg['max_minutes']}-minute budget is spent")
            break
    if context.enabled:
        # DDP's reducer holds the process group and its pending work: released (cycles included) before
        # the group is destroyed, so that nothing using the group outlives it. A process exiting the
        # other way round aborted once in CI ("terminate called without an active exception").
        del wrapped
        gc.collect()
        torch.distributed.destroy_process_group()
    return {"history": history, "best_p1": best_p1, "model": model}


def evaluate_checkpoint(config: Dict[str, Any], checkpoint: Optional[str] = None):
    """Scores a checkpoint (official or posemamba's) on the config's test split."""
    from ..checkpoint import load_checkpoint

    context = init_distributed(config["train"]["device"])
    _, test_set = build_datasets(config, context)
    model = build_model(config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return evaluate(config, model.to(context.device), test_set, context.device)
