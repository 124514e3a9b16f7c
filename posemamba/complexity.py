"""Parameter and multiply-accumulate counts for PoseMamba, both the paper's way and in full.

The paper's numbers (PoseMamba-S/B/L: 0.9M/3.4M/6.7M parameters, 3.6G/13.9G/27.9G MACs for 243
frames) count what thop sees: parameters and MACs of leaf modules only (Linear, Conv2d, LayerNorm).
That leaves out what the SSM holds as bare parameters and computes with einsums and the scan: the
per-path projections (x_proj, dt_proj), A, D, the position embeddings, and the selective scan itself.
`count_parameters` and `count_macs` report both.
"""
from typing import Dict

import torch

from .model import BiSTSSM

__all__ = ["count_parameters", "count_macs"]


def _leaf_modules(model: torch.nn.Module):
    return [module for module in model.modules() if not list(module.children())]


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    """{"full": every parameter, "leaf_modules": those of leaf modules only (the paper's count)}."""
    leaf = sum(p.numel() for module in _leaf_modules(model) for p in module.parameters(recurse=False))
    return {"full": sum(p.numel() for p in model.parameters()), "leaf_modules": leaf}


def count_macs(model: torch.nn.Module, frames: int = 243, batch: int = 1) -> Dict[str, int]:
    """Multiply-accumulates of one forward pass on (batch, frames, J, in_chans) keypoints.

    "leaf_modules": Linear (output elements x in_features), depthwise Conv2d (output elements x 9) and
    LayerNorm (one per element), as thop counts them: the paper's method.
    "full": that plus, per SSM call, the per-path projections to (dt, B, C) and dt to d_inner, the
    scan's three multiply-adds per state update (decay * h, dt v * B, C . h), its skip D * v and the
    gate. Exps and softplus are not MACs and are not counted.
    """
    counts = {"leaf_modules": 0, "ssm_extra": 0}

    def count_leaf(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            counts["leaf_modules"] += output.numel() * module.in_features
        elif isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            counts["leaf_modules"] += output.numel() * kernel
        elif isinstance(module, torch.nn.LayerNorm):
            counts["leaf_modules"] += output.numel()

    def count_ssm(module: BiSTSSM, inputs, output):
        batch_size, T, J, _ = inputs[0].shape
        positions = batch_size * T * J
        n_paths = module.dt_projs_bias.shape[0]
        projections = n_paths * module.d_inner * (module.dt_rank + 2 * module.d_state + module.dt_rank)
        scan = n_paths * module.d_inner * (3 * module.d_state + 1) + module.d_inner
        counts["ssm_extra"] += positions * (projections + scan)

    hooks = [m.register_forward_hook(count_leaf) for m in _leaf_modules(model)]
    hooks += [m.register_forward_hook(count_ssm) for m in model.modules() if isinstance(m, BiSTSSM)]
    try:
        with torch.no_grad():
            model(torch.zeros(batch, frames, model.num_joints, model.in_chans))
    finally:
        for hook in hooks:
            hook.remove()
    return {"leaf_modules": counts["leaf_modules"], "full": counts["leaf_modules"] + counts["ssm_extra"]}
