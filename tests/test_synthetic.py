"""The synthetic Human3.6M generator: a real skeleton, consistent cameras, and the MotionBERT format."""
import numpy as np
import pytest

from posemamba.data import H36MClips, read_h36m_pickle
from posemamba.data.synthetic import H36M_PARENTS, MOTIONS, REST_OFFSETS_MM, skeleton_motion, synthetic_h36m, write_synthetic_h36m

SMALL = dict(train_sequences=5, test_sequences=3, frames=(60, 90), views=2)


@pytest.mark.parametrize("action", sorted(MOTIONS))
def test_motions_keep_bone_lengths_and_move(action):
    rng = np.random.default_rng(0)
    joints = skeleton_motion(action, 200, rng, bone_scale=1.1)
    bones = np.linalg.norm(joints[:, 1:] - joints[:, list(H36M_PARENTS[1:])], axis=-1)
    np.testing.assert_allclose(bones, np.broadcast_to(1.1 * np.linalg.norm(REST_OFFSETS_MM[1:], axis=-1), bones.shape),
                               rtol=1e-9)
    relative = joints - joints[:, :1]
    assert relative.std(axis=0).max() > 20.0, "the pose should change over the motion"
    assert 1400 < joints[:, 10, 2].max() - joints[:, 3, 2].min() < 2100, "head to ankle: a standing adult's height"
    # A real body, not its mirror image: the right hip lies on the right of the way the face points
    # (right = forward x up); a mirrored skeleton would make 2D-to-depth ambiguous between subjects.
    facing = np.cross(joints[:, 9] - joints[:, 8], [0.0, 0.0, 1.0])
    assert np.all(np.einsum("ti,ti->t", facing, joints[:, 1] - joints[:, 4]) > 0)
    # Arms abduct outwards: sideways lifts move each hand away from the body's midline.
    hands_apart = np.linalg.norm(joints[:, 13] - joints[:, 16], axis=-1)
    assert hands_apart.min() > 0.5 * np.linalg.norm(joints[0, 11] - joints[0, 14])


def test_written_file_goes_through_the_real_reader(tmp_path):
    path = write_synthetic_h36m(str(tmp_path / "synthetic.pkl"), seed=3, **SMALL)
    splits = read_h36m_pickle(path)
    for split in ("train", "test"):
        arrays = splits[split]
        factor = arrays["2.5d_factor"]
        np.testing.assert_allclose(arrays["joints_2.5d_image"], arrays["joint3d_image"] * factor[:, None, None], rtol=1e-5)
        assert np.all(arrays["joint3d_image"][:, 0, 2] == 0), "depth is root-relative"
        detection_error = np.linalg.norm(arrays["joint_2d"] - arrays["joint3d_image"][..., :2], axis=-1)
        assert 1.0 < np.median(detection_error) < 10.0, "a detector's few pixels of error"
        assert set(arrays["action"]) <= set(MOTIONS)
        assert 0.0 < arrays["confidence"].min() and arrays["confidence"].max() <= 1.0
    assert set(splits["train"]["action"]) == set(MOTIONS), "every motion in five sequences"
    clips = H36MClips(path, "test", frames=27)
    keypoints, target = clips[0]
    assert keypoints.shape == (27, 17, 2) and target.shape == (27, 17, 3)
    assert keypoints.abs().max() < 1.5, "normalised screen coordinates"


def test_same_seed_same_data_and_splits_differ():
    first, second = synthetic_h36m(seed=7, **SMALL), synthetic_h36m(seed=7, **SMALL)
    for key in first["train"]:
        np.testing.assert_array_equal(first["train"][key], second["train"][key])
    train_subjects = {s[:4] for s in first["train"]["source"]}
    test_subjects = {s[:4] for s in first["test"]["source"]}
    assert not train_subjects & test_subjects, "no test subject is trained on"
    other = synthetic_h36m(seed=8, **SMALL)
    assert not np.array_equal(first["train"]["joint_2d"][:50], other["train"]["joint_2d"][:50])


def test_unknown_motion_is_named():
    with pytest.raises(ValueError, match="action must be one of"):
        skeleton_motion("Dancing", 10, np.random.default_rng(0))
