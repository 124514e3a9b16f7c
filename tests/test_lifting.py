"""Lifting sequences of any length, loading a model from its checkpoint, rendering, and the command line."""
import json

import numpy as np
import pytest
import torch

from posemamba.cli import main
from posemamba.lifting import lift_sequence, model_from_checkpoint, window_starts
from posemamba.model import PoseMamba


class PerFrame(torch.nn.Module):
    """A stand-in model whose output for a frame depends on that frame only: (x, y) -> (x, y, x * y).
    Any windowing and blending must then give exactly that for every frame."""
    num_frame, num_joints, in_chans = 8, 17, 2

    def forward(self, keypoints):
        x, y = keypoints[..., 0], keypoints[..., 1]
        return torch.stack([x, y, x * y], dim=-1)


@pytest.mark.parametrize("frames", [1, 5, 8, 9, 23])
def test_windows_blend_to_the_per_frame_answer(frames):
    keypoints = np.random.default_rng(frames).normal(size=(frames, 17, 2)).astype(np.float32)
    lifted = lift_sequence(PerFrame(), keypoints, flip=False, batch_size=2)
    expected = np.concatenate([keypoints, keypoints[..., :1] * keypoints[..., 1:]], axis=-1)
    np.testing.assert_allclose(lifted, expected - expected[:, :1], rtol=1e-5, atol=1e-6)


def test_a_bfloat16_model_lifts_float_keypoints():
    model = PoseMamba(num_frame=9, dim=16, depth=1).eval()
    keypoints = np.random.default_rng(0).normal(size=(12, 17, 2)).astype(np.float32)
    lifted = lift_sequence(model.to(torch.bfloat16), keypoints)
    assert lifted.shape == (12, 17, 3) and lifted.dtype == np.float32 and np.isfinite(lifted).all()


def test_window_starts_cover_everything():
    assert window_starts(5, 8) == [0]
    assert window_starts(23, 8) == [0, 4, 8, 12, 15]
    with pytest.raises(ValueError, match="NaN"):
        lift_sequence(PerFrame(), np.full((3, 17, 2), np.nan))
    with pytest.raises(ValueError, match=r"keypoints must be \(frames, 17, 2\)"):
        lift_sequence(PerFrame(), np.zeros((3, 16, 2)))


def test_model_from_checkpoint_infers_its_shape(tmp_path):
    torch.manual_seed(0)
    model = PoseMamba(num_frame=9, in_chans=3, dim=16, depth=2, drop_path_rate=0.0).eval()
    torch.save({"model_pos": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, tmp_path / "w.pth")
    loaded = model_from_checkpoint(str(tmp_path / "w.pth"))
    assert (loaded.num_frame, loaded.in_chans, len(loaded.STEblocks)) == (9, 3, 2)
    x = torch.randn(1, 9, 17, 3)
    torch.testing.assert_close(loaded(x), model(x))
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not PoseMamba weights"):
        model_from_checkpoint(str(tmp_path / "other.pth"))


def mmpose_file(path, frames=30):
    """A walking person's COCO-17 keypoints in MMPose's JSON, from the synthetic skeleton."""
    from posemamba.data.synthetic import skeleton_motion

    joints = skeleton_motion("Walking", frames, np.random.default_rng(0))
    cam = np.stack([joints[..., 0], 900.0 - joints[..., 2], joints[..., 1] + 5000.0], axis=-1)
    h36m = 1000.0 * cam[..., :2] / cam[..., 2:] + [320, 240]
    coco = np.zeros((frames, 17, 2))
    for coco_joint, h36m_joint in {0: 9, 1: 10, 2: 10, 3: 10, 4: 10, 5: 11, 6: 14, 7: 12, 8: 15, 9: 13, 10: 16,
                                   11: 4, 12: 1, 13: 5, 14: 2, 15: 6, 16: 3}.items():
        coco[:, coco_joint] = h36m[:, h36m_joint]
    frames_json = [{"frame_id": f, "instances": [{"keypoints": coco[f].tolist(), "keypoint_scores": [0.9] * 17}]}
                   for f in range(frames)]
    path.write_text(json.dumps(frames_json))
    return path


def test_coco_json_to_rendered_gif(tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(0)
    weights = tmp_path / "posemamba.pth"
    torch.save({"model_pos": PoseMamba(num_frame=9, dim=16, depth=1).state_dict()}, weights)
    keypoints = mmpose_file(tmp_path / "video_keypoints.json")
    assert main(["lift", str(keypoints), "--checkpoint", str(weights), "-o", str(tmp_path / "lifted"),
                 "--image-size", "640", "480", "--flip", "--height-mm", "1650"]) == 0
    lifted = np.load(tmp_path / "lifted.npz")
    assert lifted["keypoints_3d"].shape == (30, 17, 3) and np.all(lifted["keypoints_3d"][:, 0] == 0)
    document = json.loads((tmp_path / "lifted.json").read_text())
    assert document["joint_names"][0] == "pelvis" and np.array(document["keypoints_3d"]).shape == (30, 17, 3)
    assert "millimetres" in document["units"]
    from posemamba.lifting import body_height
    assert body_height(lifted["keypoints_3d"]) == pytest.approx(1650, rel=1e-4)

    assert main(["render", str(tmp_path / "lifted.npz"), "-o", str(tmp_path / "lifted.gif"),
                 "--png", str(tmp_path / "frames.png"), "--frames", "0", "29"]) == 0
    with Image.open(tmp_path / "lifted.gif") as gif:
        assert gif.n_frames == 30
        gif.seek(10)
        assert len(np.unique(np.asarray(gif.convert("RGB")).reshape(-1, 3), axis=0)) > 5, "more than a background"


def test_png_draws_the_skeleton_where_the_joints_are(tmp_path):
    from matplotlib.image import imread
    from mpl_toolkits.mplot3d import proj3d

    from posemamba.render import render_png

    rng = np.random.default_rng(0)
    pixels = rng.uniform([40, 40], [600, 440], (3, 17, 2))  # inside the 640 x 480 image
    joints = rng.normal(0, 0.3, (3, 17, 3))
    figure = render_png(str(tmp_path / "f.png"), pixels, joints, (640, 480), frames=[0, 2])
    image = imread(tmp_path / "f.png")[..., :3]
    height = image.shape[0]

    def ink_near(x, y):
        row, col = int(round(height - y)), int(round(x))
        patch = image[max(0, row - 2):row + 3, max(0, col - 2):col + 3]
        return patch.min() < 0.5  # a dark marker, on a white background

    ax2d, ax3d = figure.panels[1]
    for x, y in ax2d.transData.transform(pixels[2]):
        assert ink_near(x, y)
    plotted = figure.joints[2]
    xs, ys, _ = proj3d.proj_transform(*plotted.T, ax3d.get_proj())
    for x, y in ax3d.transData.transform(np.stack([xs, ys], axis=-1)):
        assert ink_near(x, y)
    assert not ink_near(*ax2d.transData.transform([[630.0, 10.0]])[0]), "the image's empty corner stays empty"


def test_bad_input_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instances": [{"keypoints": [[1, 2]] * 17, "keypoint_scores": [float("nan")] * 17}]}]))
    torch.save({"model_pos": PoseMamba(num_frame=9, dim=16, depth=1).state_dict()}, tmp_path / "w.pth")
    code = main(["lift", str(bad), "--checkpoint", str(tmp_path / "w.pth"), "-o", str(tmp_path / "out"),
                 "--image-size", "640", "480"])
    assert code == 2 and "never detected" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))
    assert main(["lift", str(tmp_path / "nope.json"), "--checkpoint", str(tmp_path / "w.pth"), "-o", "x"]) == 2
    assert "keypoint file not found" in capsys.readouterr().err


def test_scale_to_height_measures_along_the_bones():
    from posemamba.data.synthetic import REST_OFFSETS_MM, skeleton_motion
    from posemamba.lifting import body_height, scale_to_height

    joints = skeleton_motion("SittingDown", 80, np.random.default_rng(0)) / 1000.0     # metres, sitting down
    bones = np.linalg.norm(REST_OFFSETS_MM, axis=-1)
    standing = (bones[2] + bones[3]) + bones[7] + bones[8] + bones[9] + bones[10]     # mm, any pose
    assert body_height(joints) == pytest.approx(standing / 1000.0, rel=1e-6)
    scaled = scale_to_height(joints, 1700.0)
    assert body_height(scaled) == pytest.approx(1700.0, rel=1e-5)
    with pytest.raises(ValueError, match="no extent"):
        scale_to_height(np.zeros((3, 17, 3)), 1700.0)
