import hashlib
import os
import pathlib
import random

import pytest
import torch

import posemamba
from posemamba.paths import pose_mix, pose_paths
from posemamba.testing import as_projection_rows, channels_last, random_scan_inputs  # noqa: F401  (the tests import them from here)

# The C++ and CUDA sources, for the tests that compile them themselves (the emulation, the portable build).
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
requires_sources = pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the csrc/ sources of a checkout")


def sources_digest():
    """A hash of every source under csrc/ and of torch's version, for the names of the modules the tests
    build: torch's extension cache is shared, and a module built from other sources or against another
    torch must not be reused."""
    sources = sorted(os.path.join(root, name) for root, _, names in os.walk(CSRC) for name in names)
    contents = b"".join(pathlib.Path(path).read_bytes() for path in sources) + torch.__version__.encode()
    return hashlib.sha256(contents).hexdigest()[:12]


requires_extension = pytest.mark.skipif(
    not posemamba.HAS_EXTENSION, reason=f"compiled kernels missing: {posemamba.EXTENSION_ERROR}")


def random_pose_scan_inputs(batch, dim, T, J, d_state, dtype=torch.float32, device="cpu"):
    """random_scan_inputs on PoseMamba's four paths over a T x J clip, with a random joint order's mix."""
    inputs = random_scan_inputs(batch, dim, T * J, 4, d_state, dtype, device=device)
    inputs["paths"] = pose_paths(T, J).to(device)
    inputs["mix"] = pose_mix(T, J, torch.randint(0, J, (J,))).to(device)
    return inputs


def dtype_id(dtype):
    """A dtype's name in test ids: float32, not torch.float32."""
    return str(dtype).removeprefix("torch.")


# The ops' arguments before delta_softplus, and the inputs with gradients, in the schemas' order.
FORWARD_ARGS = ("u", "delta", "A", "B", "C", "paths", "D", "z", "delta_bias", "mix")
GRADIENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_ops_forward_and_backward(ops, inputs, grad_out, delta_softplus=True, span_lengths=()):
    """[out, out_ungated, chunk_states] and the gradients of every present input, through the raw ops of
    `ops` (torch.ops.posemamba, or a build of them under another name); span_lengths: the hints, one per
    path, or a number for every path."""
    args = [inputs[name] for name in FORWARD_ARGS]
    if isinstance(span_lengths, int):
        span_lengths = [span_lengths] * inputs["A"].shape[0]
    out, out_ungated, chunk_states = ops.multi_path_scan_fwd(*args, delta_softplus, span_lengths)
    grads = ops.multi_path_scan_bwd(grad_out, *args, out_ungated, chunk_states, delta_softplus, span_lengths)
    return [out, out_ungated, chunk_states] + [grad for name, grad in zip(GRADIENTS, grads)
                                               if inputs[name] is not None]


def random_scan_configuration(seed):
    """A configuration drawn from seed, for the CUDA kernels against the CPU kernels in every work split
    at once (the values fresh each call): (inputs, grad_out, delta_softplus, span_lengths), with a shape,
    a dtype, options and a hint per path (none, shorter than a tile, a tile, odd lengths, a chunk, a
    third of the path, the whole path or past it)."""
    draw = random.Random(seed)
    dtype = draw.choice([torch.float64, torch.float32, torch.float16, torch.bfloat16])
    batch, dim, seqlen = draw.choice([1, 2, 3]), draw.choice([1, 17, 33, 40, 64]), draw.choice([7, 65, 129, 300])
    n_paths, d_state = draw.randint(1, 8), draw.choice([1, 4, 16, 17, 33])
    softplus = draw.random() < 0.8
    flags = dict(with_D=draw.random() < 0.7, with_z=draw.random() < 0.7, with_bias=draw.random() < 0.7,
                 with_mix=draw.random() < 0.5, delta_softplus=softplus)
    span_lengths = [draw.choice([0, 1, 8, 9, 16, 31, 64, seqlen // 3, seqlen, seqlen + 5]) for _ in range(n_paths)]
    inputs = random_scan_inputs(batch, dim, seqlen, n_paths, d_state, dtype, **flags)
    inputs = with_projections_laid_out(inputs, draw.choice(PROJECTION_LAYOUTS))
    grad_out = torch.randn(batch, dim, seqlen, dtype=torch.float64).to(dtype)
    # u, z and grad_out each (batch, D, L) or channels-last.
    inputs.update({name: channels_last(inputs[name]) for name in ("u", "z")
                   if draw.random() < 0.5 and inputs[name] is not None})
    grad_out = channels_last(grad_out) if draw.random() < 0.5 else grad_out
    return inputs, grad_out, softplus, span_lengths


def assert_activation_layouts_agree(ops, inputs, grad_out, last, span_lengths):
    """Through the raw ops of `ops`, with the activations named in `last` channels-last (of u, z and
    grad_out; of out, du and dz, asked for so): the outputs so laid out, and bitwise the results of the
    same values all (batch, D, L)."""
    results = []
    for laid_out in (last, set()):
        args = [channels_last(inputs[name]) if name in laid_out else inputs[name] for name in FORWARD_ARGS]
        out, out_ungated, chunk_states = ops.multi_path_scan_fwd(*args, True, span_lengths, True, None,
                                                                 "out" in laid_out)
        dout = channels_last(grad_out) if "grad_out" in laid_out else grad_out
        grads = ops.multi_path_scan_bwd(dout, *args, out_ungated, chunk_states, True, span_lengths, None,
                                        "du" in laid_out, "dz" in laid_out)
        results.append([out, out_ungated, chunk_states, *grads])
    names = ["out", "du"] + (["dz"] if inputs["z"] is not None else [])
    for name, tensor in zip(names, (results[0][0], results[0][3], results[0][9])):
        assert tensor.transpose(1, 2).is_contiguous() if name in last else tensor.is_contiguous(), name
    for a, e in zip(*results, strict=True):
        assert torch.equal(a, e)


# How B and C (batch, P, N, L) may lie in memory (with_projections_laid_out).
PROJECTION_LAYOUTS = ("contiguous", "positions_major", "projection_rows")


def with_projections_laid_out(inputs, layout):
    """inputs with B and C the same values in `layout`: as they are ("contiguous"), views of (batch, P, L, N)
    tensors ("positions_major"), or with delta views of one (batch, L, P, R + 2N) tensor
    ("projection_rows", as PoseMamba's model passes them)."""
    assert layout in PROJECTION_LAYOUTS, layout
    if layout == "positions_major":
        return {**inputs, **{name: inputs[name].transpose(-1, -2).contiguous().transpose(-1, -2) for name in "BC"}}
    if layout == "projection_rows":
        names = ("delta", "B", "C")
        return {**inputs, **dict(zip(names, as_projection_rows([inputs[name] for name in names])))}
    return inputs
