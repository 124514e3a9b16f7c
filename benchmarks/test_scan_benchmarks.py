"""The fused multi-path scan against the pure-PyTorch reference and the unfused pipeline.

PoseMamba block shapes: T=243 frames x J=17 joints (L=4131), N=16, P=4 paths (pose_paths) with the
global-local mix; D=128 (PoseMamba-S) and 256 (-L), batch 1 and 4. Run:
    pytest benchmarks/ --benchmark-only
The terminal summary prints each group's medians as ratios to the fused kernel.

The low-rank groups give the step sizes as PoseMamba's blocks do, (batch, P, R, L) with their (P, D, R)
projection (R = 4 for S, 8 for L): "fused" projects them in the kernels (delta_proj_weight),
"projected" makes the full (batch, P, D, L) ones by a matmul first and runs the op on them, as the
op did before its CPU kernels projected (and as its CUDA implementation still does).
"""
import pytest
import torch

from posemamba.ops import multi_path_selective_scan, pose_mix, pose_paths
from posemamba.reference import multi_path_selective_scan_ref

from baselines import unfused_multi_path_scan
from posemamba.testing import random_scan_inputs

T, J, N, P = 243, 17, 16, 4
SHAPES = {"S-b1": (1, 128), "S-b4": (4, 128), "L-b1": (1, 256), "L-b4": (4, 256)}
IMPLEMENTATIONS = {
    "fused": multi_path_selective_scan,
    "unfused": unfused_multi_path_scan,
    "reference": multi_path_selective_scan_ref,
}
DIFFERENTIABLE = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def block_inputs(batch, dim, requires_grad):
    inputs = random_scan_inputs(batch, dim, T * J, P, N, torch.float32)
    inputs["paths"] = pose_paths(T, J)
    inputs["mix"] = pose_mix(T, J, torch.randperm(J, generator=torch.Generator().manual_seed(0)))
    for name in DIFFERENTIABLE:
        inputs[name].requires_grad_(requires_grad)
    return inputs


def run(benchmark, fn, implementation):
    # The reference takes seconds a call: fewer rounds keep the suite within minutes.
    if implementation == "reference":
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward(benchmark, shape, implementation):
    if implementation == "reference" and shape.endswith("b4"):
        pytest.skip("the reference at batch 4 takes minutes; its batch-1 ratio stands for it")
    benchmark.group = f"forward {shape}"
    inputs = block_inputs(*SHAPES[shape], requires_grad=False)
    scan = IMPLEMENTATIONS[implementation]

    def forward():
        with torch.no_grad():
            return scan(**inputs)

    run(benchmark, forward, implementation)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", ["S-b1", "L-b1", "S-b4", "L-b4"])
def test_forward_backward(benchmark, shape, implementation):
    if implementation == "reference" and shape.endswith("b4"):
        pytest.skip("the reference at batch 4 takes minutes; its batch-1 ratio stands for it")
    benchmark.group = f"forward+backward {shape}"
    inputs = block_inputs(*SHAPES[shape], requires_grad=True)
    leaves = [inputs[name] for name in DIFFERENTIABLE]
    scan = IMPLEMENTATIONS[implementation]
    grad_out = torch.randn(SHAPES[shape][0], SHAPES[shape][1], T * J)

    def forward_backward():
        return torch.autograd.grad(scan(**inputs), leaves, grad_out)

    run(benchmark, forward_backward, implementation)


LOW_RANK = {"S-b1": 4, "L-b1": 8}


def low_rank_block_inputs(shape, requires_grad):
    batch, dim = SHAPES[shape]
    inputs = block_inputs(batch, dim, requires_grad=False)
    generator = torch.Generator().manual_seed(1)
    rank = LOW_RANK[shape]
    inputs["delta"] = torch.randn(batch, P, rank, T * J, generator=generator)
    weight = torch.randn(P, dim, rank, generator=generator) * rank ** -0.5
    for t in (*[inputs[name] for name in DIFFERENTIABLE], weight):
        t.requires_grad_(requires_grad)
    return inputs, weight


def projected_scan(delta_proj_weight, delta, **inputs):
    return multi_path_selective_scan(delta=torch.matmul(delta_proj_weight, delta), **inputs)


LOW_RANK_IMPLEMENTATIONS = {"fused": multi_path_selective_scan, "projected": projected_scan}


@pytest.mark.parametrize("implementation", list(LOW_RANK_IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", list(LOW_RANK))
def test_low_rank_forward(benchmark, shape, implementation):
    benchmark.group = f"low-rank step sizes forward {shape}"
    inputs, weight = low_rank_block_inputs(shape, requires_grad=False)
    scan = LOW_RANK_IMPLEMENTATIONS[implementation]

    def forward():
        with torch.no_grad():
            return scan(**inputs, delta_proj_weight=weight)

    run(benchmark, forward, implementation)


@pytest.mark.parametrize("implementation", list(LOW_RANK_IMPLEMENTATIONS))
@pytest.mark.parametrize("shape", list(LOW_RANK))
def test_low_rank_forward_backward(benchmark, shape, implementation):
    benchmark.group = f"low-rank step sizes forward+backward {shape}"
    inputs, weight = low_rank_block_inputs(shape, requires_grad=True)
    leaves = [inputs[name] for name in DIFFERENTIABLE] + [weight]
    scan = LOW_RANK_IMPLEMENTATIONS[implementation]
    grad_out = torch.randn(SHAPES[shape][0], SHAPES[shape][1], T * J)

    def forward_backward():
        return torch.autograd.grad(scan(**inputs, delta_proj_weight=weight), leaves, grad_out)

    run(benchmark, forward_backward, implementation)
