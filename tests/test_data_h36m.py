"""Human3.6M's MotionBERT pickle: reading, normalisation, clips, and errors naming file and key."""
import pickle

import numpy as np
import pytest

from posemamba.data import H36MClips, read_h36m_pickle, split_clips


def fake_split(frames_per_video, cameras=("54138969", "55011271")):
    rng = np.random.default_rng(0)
    n = sum(frames_per_video)
    source = np.concatenate([[f"s_{i}"] * f for i, f in enumerate(frames_per_video)])
    camera = np.array([cameras[i % len(cameras)] for i, f in enumerate(frames_per_video) for _ in range(f)])
    return {
        "joint_2d": rng.uniform(0, 1000, (n, 17, 2)),
        "confidence": rng.uniform(0, 1, (n, 17, 1)),
        "joint3d_image": rng.uniform(0, 1000, (n, 17, 3)),
        "2.5d_factor": rng.uniform(3, 5, n),
        "camera_name": camera,
        "source": source,
        "action": np.array(["Walking"] * n),
    }


def write(tmp_path, data, name="h36m.pkl"):
    path = tmp_path / name
    with open(path, "wb") as file:
        pickle.dump(data, file)
    return str(path)


def test_split_clips_by_hand():
    clips = split_clips([0] * 10 + [1] * 3, frames=4, stride=3)
    assert [c.tolist() for c in clips] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9],  # last one ends at 9
                                           [10, 10, 11, 12]]                           # short video resampled
    assert [c.tolist() for c in split_clips([5] * 8, frames=4, stride=4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_normalisation_and_clips(tmp_path):
    train = fake_split([20, 9])
    train["joint_2d"][0, 0] = [500.0, 501.0]        # the centre of a 1000 x 1002 camera
    train["joint3d_image"][0, 0] = [1000.0, 1002.0, 250.0]
    path = write(tmp_path, {"train": train, "test": fake_split([12])})
    dataset = H36MClips(path, "train", frames=9, with_confidence=True, root_relative=False)
    # Video 0 (20 frames): starts 0, 3, 6, 9 and 11 (aligned to its end); video 1 (9 frames): one clip.
    assert len(dataset) == 5 + 1
    keypoints, target = dataset[0]
    assert keypoints.shape == (9, 17, 3) and target.shape == (9, 17, 3)
    np.testing.assert_allclose(keypoints[0, 0, :2].numpy(), [0.0, 0.0], atol=1e-6)
    # 1002 / 1000 * 2 - 1002 / 1000 = 1.002; depth 250 / 1000 * 2 = 0.5
    np.testing.assert_allclose(target[0, 0].numpy(), [1.0, 1.002, 0.5], atol=1e-6)
    np.testing.assert_allclose(keypoints[..., 2].numpy(), train["confidence"][:9, :, 0], rtol=1e-6)
    relative = H36MClips(path, "train", frames=9)
    assert relative[0][0].shape == (9, 17, 2)
    assert float(relative[0][1][:, 0].abs().max()) == 0.0
    assert len(H36MClips(path, "test", frames=6)) == 2  # non-overlapping


@pytest.mark.parametrize("break_it,message", [
    (lambda d: d.pop("test"), "missing the 'test' dict"),
    (lambda d: d["train"].pop("source"), "'train' has no 'source'"),
    (lambda d: d["train"].__setitem__("joint_2d", np.zeros((29, 16, 2))), r"'train'/'joint_2d' must have shape \(N, 17, 2\)"),
    (lambda d: d["train"].__setitem__("2.5d_factor", np.zeros(5)), "'2.5d_factor' has 5 frames, 'joint_2d' has 29"),
    (lambda d: d["train"].__setitem__("camera_name", np.array(["123"] * 29)), "unknown Human3.6M camera '123'"),
])
def test_malformed_files_name_the_problem(tmp_path, break_it, message):
    data = {"train": fake_split([20, 9]), "test": fake_split([12])}
    break_it(data)
    with pytest.raises(ValueError, match=message):
        H36MClips(write(tmp_path, data), "train", frames=9)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Human3.6M pickle not found: .*absent.pkl"):
        read_h36m_pickle(str(tmp_path / "absent.pkl"))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(ValueError, match="garbage.pkl: not a readable pickle"):
        read_h36m_pickle(str(garbage))
