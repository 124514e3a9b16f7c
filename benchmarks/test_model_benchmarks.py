"""PoseMamba forward (clips per second) and one training step on CPU: fused kernels vs reference scan.

The kernels run the released T=243 clips; the reference backend takes seconds a block there, so the
kernel-vs-reference comparison uses T=27 clips (both backends, same run, same group).
"""
import pytest
import torch

from posemamba.model import posemamba


def clip(batch, frames):
    return torch.randn(batch, frames, 17, 2), torch.randn(batch, frames, 17, 3)


def training_step(model, optimizer, keypoints, target):
    loss = (model(keypoints) - target).norm(dim=-1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("preset", ["S", "L"])
def test_model_forward_243_frames(benchmark, preset):
    benchmark.group = f"model forward {preset} T=243"
    model = posemamba(preset).eval()
    keypoints, _ = clip(1, 243)

    def forward():
        with torch.no_grad():
            return model(keypoints)

    benchmark.pedantic(forward, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("preset", ["S", "L"])
def test_model_training_step_243_frames(benchmark, preset):
    benchmark.group = f"model training step {preset} T=243"
    model = posemamba(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    keypoints, target = clip(1, 243)
    benchmark.pedantic(training_step, args=(model, optimizer, keypoints, target), rounds=3, iterations=1,
                       warmup_rounds=1)


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
