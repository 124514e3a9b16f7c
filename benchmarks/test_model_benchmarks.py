"""PoseMamba forward (clips per second) and one training step, on CPU and (when there is a GPU and
the CUDA kernels are built) on CUDA: the fused op against the official code's data flow, and against
the reference scan.

The released T=243 clips (batch 1 on CPU, 16 on CUDA, the training batch) run the model as it is
("fused") and with each block's SSM computed as the official code does ("official": CrossScan copies,
one single-path scan over the four paths' channels, CrossMerge; posemamba.testing's
official_cross_scan_ssm, on posemamba's own single-path kernel), so the ratio is what the fused op
saves the whole model. The reference backend takes seconds a block there, so the kernel-vs-reference
comparison uses T=27 clips (both backends, same run, same group), on CPU.
"""
import functools

import pytest
import torch

from posemamba.model import BiSTSSM, posemamba
from posemamba.ops import _HAS_CUDA_KERNELS
from posemamba.testing import official_cross_scan_ssm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _HAS_CUDA_KERNELS else [])
BATCH = {"cpu": 1, "cuda": 16}


def clip(batch, frames, device="cpu"):
    return torch.randn(batch, frames, 17, 2, device=device), torch.randn(batch, frames, 17, 3, device=device)


def synchronised(fn, device):
    """fn, waiting for the GPU's queued work so that the benchmark times it."""
    if device != "cuda":
        return fn

    def run(*args):
        result = fn(*args)
        torch.cuda.synchronize()
        return result

    return run


def build(preset, device, flow):
    """The preset on device, each block's SSM computed the fused way or the official way."""
    model = posemamba(preset).to(device)
    if flow == "official":
        for module in model.modules():
            if isinstance(module, BiSTSSM):
                module.forward = functools.partial(official_cross_scan_ssm, module)
    return model


def training_step(model, optimizer, keypoints, target):
    loss = (model(keypoints) - target).norm(dim=-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("flow", ["fused", "official"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["S", "L"])
def test_model_forward_243_frames(benchmark, preset, device, flow):
    benchmark.group = f"model forward {preset} T=243 {device} batch {BATCH[device]}"
    model = build(preset, device, flow).eval()
    keypoints, _ = clip(BATCH[device], 243, device)

    def forward():
        with torch.no_grad():
            return model(keypoints)

    benchmark.pedantic(synchronised(forward, device), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("flow", ["fused", "official"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["S", "L"])
def test_model_training_step_243_frames(benchmark, preset, device, flow):
    benchmark.group = f"model training step {preset} T=243 {device} batch {BATCH[device]}"
    model = build(preset, device, flow)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    keypoints, target = clip(BATCH[device], 243, device)
    benchmark.pedantic(synchronised(training_step, device), args=(model, optimizer, keypoints, target), rounds=3,
                       iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind", ["forward", "training step"])
def test_model_backends_27_frames(benchmark, kind, backend):
    benchmark.group = f"model {kind} S T=27 by backend"
    model = posemamba("S", num_frame=27, backend="reference" if backend == "reference" else "auto")
    keypoints, target = clip(1, 27)
    if kind == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return model(keypoints)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            training_step(model, optimizer, keypoints, target)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
