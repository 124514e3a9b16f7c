"""Checkpoint loading (official and our layouts, clear errors) and flip augmentation."""
import pytest
import torch

from posemamba.checkpoint import load_checkpoint
from posemamba.flip import flip_pose, predict_with_flip
from posemamba.model import PoseMamba


def tiny(**overrides):
    return PoseMamba(**{**dict(num_frame=9, dim=16, depth=2), **overrides}).eval()


@pytest.mark.parametrize("layout", ["official", "plain", "ours", "compiled", "compiled_ddp"])
def test_checkpoint_layouts_load_and_reproduce_outputs(tmp_path, layout):
    source = tiny()
    state = source.state_dict()
    wrapped = {"official": {"model_pos": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               "plain": state, "ours": {"model": state},
               "compiled": torch.compile(source).state_dict(),  # keys under _orig_mod.
               "compiled_ddp": {f"_orig_mod.module.{k}": v for k, v in state.items()}}[layout]
    path = tmp_path / "weights.bin"
    torch.save(wrapped, path)
    target = tiny()
    assert load_checkpoint(target, path) == ([], [])
    keypoints = torch.randn(1, 9, 17, 2)
    torch.testing.assert_close(target(keypoints), source(keypoints))


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nothing.bin"):
        load_checkpoint(tiny(), tmp_path / "nothing.bin")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.bin: not a readable PyTorch checkpoint"):
        load_checkpoint(tiny(), garbage)
    state = tiny().state_dict()
    extra = dict(state, surprise=torch.zeros(1))
    with pytest.raises(ValueError, match=r"1 unexpected: \['surprise'\]"):
        load_checkpoint(tiny(), extra)
    assert load_checkpoint(tiny(), extra, strict=False) == ([], ["surprise"])
    missing = {k: v for k, v in state.items() if k != "head.1.bias"}
    with pytest.raises(ValueError, match=r"1 missing: \['head.1.bias'\]"):
        load_checkpoint(tiny(), missing)
    with pytest.raises(ValueError, match="shapes differ: .*Spatial_patch_to_embedding.weight"):
        load_checkpoint(tiny(in_chans=3), state)


def test_flip_is_an_involution_that_swaps_sides():
    pose = torch.randn(2, 5, 17, 3)
    assert torch.equal(flip_pose(flip_pose(pose)), pose)
    flipped = flip_pose(pose)
    torch.testing.assert_close(flipped[..., 4, 0], -pose[..., 1, 0])
    torch.testing.assert_close(flipped[..., 0, 1], pose[..., 0, 1])
    with pytest.raises(ValueError, match="17 Human3.6M joints"):
        flip_pose(torch.randn(2, 16, 3))


def test_predict_with_flip_is_mirror_symmetric():
    model = tiny()
    keypoints = torch.randn(1, 9, 17, 2)
    prediction = predict_with_flip(model, keypoints)
    assert prediction.shape == (1, 9, 17, 3)
    torch.testing.assert_close(predict_with_flip(model, flip_pose(keypoints)), flip_pose(prediction),
                               rtol=1e-4, atol=1e-5)
