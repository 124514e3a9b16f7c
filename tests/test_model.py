"""The PoseMamba model: shapes, presets, official parameter names, backends, training signal."""
import math
import warnings

import pytest
import torch

import posemamba
from posemamba.model import H36M_LIMB_ORDER, PRESETS, PoseMamba, posemamba as build
from posemamba.ops import pose_mix, pose_paths
from posemamba.testing import official_cross_scan_ssm


def tiny(**overrides):
    return PoseMamba(**{**dict(num_frame=9, dim=16, depth=2, drop_path_rate=0.0), **overrides})


@pytest.mark.parametrize("in_chans", [2, 3])
def test_output_shape(in_chans):
    model = tiny(in_chans=in_chans)
    assert model(torch.randn(2, 9, 17, in_chans)).shape == (2, 9, 17, 3)
    assert model(torch.randn(1, 5, 17, in_chans)).shape == (1, 5, 17, 3)  # fewer frames than num_frame


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"keypoints must have shape \(batch, T <= 9, 17, 2\), got \(2, 9, 16, 2\)"):
        tiny()(torch.randn(2, 9, 16, 2))
    with pytest.raises(ValueError, match="keypoints must have shape"):
        tiny()(torch.randn(9, 17, 2))


# Counted over every parameter of our implementation; the issue quotes the official models at about
# 1.45M, 4.71M and 9.45M.
@pytest.mark.parametrize("preset,count,quoted", [("S", 1_470_211, 1.45e6), ("B", 4_742_659, 4.71e6),
                                                 ("L", 9_450_499, 9.45e6)])
def test_preset_parameter_counts(preset, count, quoted):
    model = build(preset)
    total = sum(p.numel() for p in model.parameters())
    assert total == count
    assert abs(total - quoted) / quoted < 0.015


def test_official_parameter_names_and_shapes():
    dim, depth = PRESETS["S"]["dim"], PRESETS["S"]["depth"]
    d_inner, dt_rank, n_state = 2 * dim, math.ceil(dim / 16), 16
    state = build("S").state_dict()
    expected = {
        "Spatial_patch_to_embedding.weight": (dim, 2),
        "Spatial_pos_embed": (1, 17, dim),
        "Temporal_pos_embed": (1, 243, dim),
        "STEblocks.0.norm.weight": (dim,),
        "STEblocks.0.op.in_proj.weight": (2 * d_inner, dim),
        "STEblocks.0.op.conv2d.weight": (d_inner, 1, 3, 3),
        "STEblocks.0.op.conv2d.bias": (d_inner,),
        "STEblocks.0.op.x_proj_weight": (4, dt_rank + 2 * n_state, d_inner),
        "STEblocks.0.op.dt_projs_weight": (4, d_inner, dt_rank),
        "STEblocks.0.op.dt_projs_bias": (4, d_inner),
        "STEblocks.0.op.A_logs": (4 * d_inner, n_state),
        "STEblocks.0.op.Ds": (4 * d_inner,),
        "STEblocks.0.op.out_norm.weight": (d_inner,),
        "STEblocks.0.op.out_proj.weight": (dim, d_inner),
        "STEblocks.0.norm2.weight": (dim,),
        "STEblocks.0.mlp.fc1.weight": (2 * dim, dim),
        "STEblocks.0.mlp.fc2.weight": (dim, 2 * dim),
        f"TTEblocks.{depth - 1}.op.A_logs": (4 * d_inner, n_state),
        "Spatial_norm.weight": (dim,),
        "Temporal_norm.weight": (dim,),
        "head.0.weight": (dim,),
        "head.1.weight": (3, dim),
    }
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    assert not any("limb_order" in name for name in state)  # a buffer, not part of the checkpoints


def test_initialisation_follows_mamba():
    op = tiny().STEblocks[0].op
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    assert torch.allclose(-torch.exp(op.A_logs[0]), -torch.arange(1.0, 17.0))
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))


@pytest.mark.skipif(not posemamba.HAS_EXTENSION, reason="compiled kernels missing")
def test_kernel_and_reference_backends_agree():
    torch.manual_seed(0)
    kernel = tiny().eval()
    reference = tiny(backend="reference").eval()
    reference.load_state_dict(kernel.state_dict())
    keypoints = torch.randn(2, 9, 17, 2)
    out_kernel, out_reference = kernel(keypoints), reference(keypoints)
    torch.testing.assert_close(out_kernel, out_reference, rtol=1e-4, atol=1e-4)
    grads_kernel = torch.autograd.grad(out_kernel.square().sum(), list(kernel.parameters()))
    grads_reference = torch.autograd.grad(out_reference.square().sum(), list(reference.parameters()))
    for (name, _), a, b in zip(kernel.named_parameters(), grads_kernel, grads_reference):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_gradients_reach_every_parameter():
    model = tiny()
    model(torch.randn(2, 9, 17, 2)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_tiny_model_overfits_one_clip():
    torch.manual_seed(0)
    model = tiny()
    keypoints, target = torch.randn(1, 9, 17, 2), torch.randn(1, 9, 17, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = (model(keypoints) - target).norm(dim=-1).mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_limb_order_is_h36m():
    assert len(H36M_LIMB_ORDER) == 17 and max(H36M_LIMB_ORDER) == 16
    assert torch.equal(tiny().STEblocks[0].op.limb_order, torch.tensor(H36M_LIMB_ORDER))


def test_model_runs_on_the_meta_device():
    # Shapes only, no data: every tensor the model builds must follow its input's device, which no CPU
    # run shows (a CUDA forward once mixed a host tensor with a device one).
    model = tiny().to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference runs on meta tensors (no kernels)
        out = model(torch.randn(2, 5, 17, 2, device="meta"))
    assert out.shape == (2, 5, 17, 3) and out.device.type == "meta"
    out.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters() if p.requires_grad)


def test_path_indices_are_built_once_per_clip_shape():
    op = tiny().STEblocks[0].op
    paths, mix, span_lengths = op._path_indices(5, 17, torch.device("cpu"))
    assert op._path_indices(5, 17, torch.device("cpu"))[0] is paths
    assert torch.equal(mix, pose_mix(5, 17, H36M_LIMB_ORDER)) and torch.equal(paths, pose_paths(5, 17))
    assert span_lengths == [0, 5, 0, 5]  # the joint-major paths' frames
    assert op._path_indices(6, 17, torch.device("cpu"))[0].shape == (4, 6 * 17)


def test_model_runs_under_inference_mode():
    # Its index tensors are built as normal tensors there (checked once, not every call) and the
    # outputs are no_grad's, bitwise.
    model = tiny().eval()
    clip = torch.randn(2, 5, 17, 2)
    with torch.inference_mode():
        out = model(clip)
        assert not model.STEblocks[0].op._path_indices(5, 17, torch.device("cpu"))[0].is_inference()
    with torch.no_grad():
        torch.testing.assert_close(model(clip), out, rtol=0, atol=0)


@pytest.mark.skipif(not posemamba.HAS_EXTENSION, reason="compiled kernels missing")
def test_compiled_model_matches_eager_under_inference_mode():
    # The first compiled call builds the clip's index tensors on the host (not traced).
    model = tiny().eval()
    clip = torch.randn(2, 5, 17, 2)
    with torch.inference_mode():
        compiled = torch.compile(model)(clip)
        torch.testing.assert_close(compiled, model(clip), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not posemamba.HAS_EXTENSION, reason="compiled kernels missing")
def test_training_keeps_no_full_step_sizes():
    # The op gets the step sizes low-rank and makes the (batch, 4, d_inner, L) ones again for the
    # backward: autograd keeps nothing of that shape (per block, 4 times the size of u).
    model = tiny().train()
    op = model.STEblocks[0].op
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(tuple(t.shape)), t)[1], lambda t: t):
        model(torch.randn(2, 5, 17, 2)).sum().backward()
    assert saved and (2, 4, op.d_inner, 5 * 17) not in saved


def test_model_gives_the_op_its_span_lengths(monkeypatch):
    # The GPU's work-split hints come from the model, which knows its paths: under torch.compile the op
    # cannot read them from the paths.
    import posemamba.model as model_module

    given = []
    scan = model_module.multi_path_selective_scan
    monkeypatch.setattr(model_module, "multi_path_selective_scan",
                        lambda *args, **kwargs: (given.append(kwargs["span_lengths"]), scan(*args, **kwargs))[1])
    tiny()(torch.randn(2, 5, 17, 2))
    assert given and all(span_lengths == [0, 5, 0, 5] for span_lengths in given)


def test_ssm_matches_the_official_cross_scan_pipeline():
    torch.manual_seed(0)
    op = tiny().STEblocks[0].op.double()
    with torch.no_grad():  # away from the initial values, so every term matters
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 9, 17, 16, dtype=torch.float64)
    torch.testing.assert_close(op(x), official_cross_scan_ssm(op, x), rtol=1e-9, atol=1e-9)


def official_posemamba_forward(model, keypoints):
    """The official PoseMamba.forward written out as it is there (STE_forward, TTE_foward, ST_foward):
    batch-of-frames embedding, per-joint temporal embedding, every block through the official SS2D
    data flow above, the shared norms after every block, the head."""
    from einops import rearrange

    def block(blk, x):
        x = x + official_cross_scan_ssm(blk.op, blk.norm(x))
        return x + blk.mlp(blk.norm2(x))

    b, f, n, _ = keypoints.shape
    x = rearrange(keypoints, "b f n c -> (b f) n c")
    x = model.Spatial_patch_to_embedding(x) + model.Spatial_pos_embed
    x = model.Spatial_norm(block(model.STEblocks[0], rearrange(x, "(b f) n c -> b f n c", f=f)))
    x = rearrange(x, "b f n c -> (b n) f c") + model.Temporal_pos_embed[:, :f, :]
    x = model.Temporal_norm(block(model.TTEblocks[0], rearrange(x, "(b n) f c -> b f n c", n=n)))
    for i in range(1, len(model.STEblocks)):
        x = model.Spatial_norm(block(model.STEblocks[i], x))
        x = model.Temporal_norm(block(model.TTEblocks[i], x))
    return model.head(x).view(b, f, n, -1)


def test_model_matches_the_official_forward():
    torch.manual_seed(0)
    model = tiny(depth=3).double().eval()
    with torch.no_grad():  # position embeddings start at zero; move every parameter off its init
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        keypoints = torch.randn(2, 7, 17, 2, dtype=torch.float64)
        expected = official_posemamba_forward(model, keypoints)
        torch.testing.assert_close(model(keypoints), expected, rtol=1e-9, atol=1e-9)
