"""Human3.6M in VideoPose3D's files, from small files written in that layout, and the calibration."""
import numpy as np
import pytest
import torch

from posemamba.data.synthetic import skeleton_motion
from posemamba.data.videopose3d import H36M_32_TO_17, VideoPose3DClips, h36m_cameras, read_videopose3d, world_to_camera

SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")


def rotation_matrix(q):
    """Camera-to-world rotation of the unit quaternion (w, x, y, z), the textbook formula."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def project(world_m, subject, index):
    calibration = h36m_cameras()
    extrinsic, camera = calibration["extrinsics"][subject][index], calibration["cameras"][index]
    R = rotation_matrix(extrinsic["orientation"])
    cam = (world_m - np.asarray(extrinsic["translation"]) / 1000) @ R                 # R^T (X - t), row vectors
    return np.asarray(camera["focal_length"]) * cam[..., :2] / cam[..., 2:] + np.asarray(camera["center"]), cam


@pytest.mark.parametrize("subject", SUBJECTS)
def test_calibration_sees_a_person_at_the_centre(subject):
    # A person standing at the capture area's centre is in front of every camera and inside its image.
    person = np.array([[0.0, 0.0, height] for height in np.linspace(0.0, 1.8, 10)])
    for index, camera in enumerate(h36m_cameras()["cameras"]):
        pixels, cam = project(person, subject, index)
        assert np.all(cam[:, 2] > 2.5), "3 to 6 m in front of the camera"
        assert np.all((pixels > 0) & (pixels < [camera["res_w"], camera["res_h"]])), (subject, camera["id"])
        extrinsic = h36m_cameras()["extrinsics"][subject][index]
        ours = world_to_camera(person, extrinsic["orientation"], np.asarray(extrinsic["translation"]) / 1000)
        np.testing.assert_allclose(ours, cam, atol=1e-9)


def write_videopose3d(folder, subjects, frames=60, extra_2d_frames=3):
    poses_3d, poses_2d = {}, {}
    rng = np.random.default_rng(0)
    for subject in subjects:
        poses_3d[subject], poses_2d[subject] = {}, {}
        for action in ("Walking 1", "SittingDown"):
            joints17 = skeleton_motion("Walking" if action.startswith("Walking") else "SittingDown", frames, rng) / 1000
            joints17 = joints17 - joints17[:1, :1] * np.array([1, 1, 0])       # centred on the capture area
            positions = np.zeros((frames, 32, 3))
            positions[:, list(H36M_32_TO_17)] = joints17
            poses_3d[subject][action] = positions.astype(np.float32)
            views = []
            for index in range(4):
                pixels, _ = project(joints17, subject, index)
                views.append(np.concatenate([pixels, pixels[-1:].repeat(extra_2d_frames, 0)]).astype(np.float32))
            poses_2d[subject][action] = views
    np.savez(folder / "data_3d_h36m.npz", positions_3d=np.array(poses_3d, dtype=object))
    metadata = {"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    np.savez(folder / "data_2d_h36m_cpn_ft_h36m_dbb.npz", positions_2d=np.array(poses_2d, dtype=object),
             metadata=np.array(metadata, dtype=object))
    return folder


def test_reads_camera_frame_joints_that_match_the_2d(tmp_path):
    write_videopose3d(tmp_path, subjects=("S1", "S9", "S11"))
    videos = read_videopose3d(str(tmp_path), subjects=("S1",))
    assert len(videos) == 2 * 4 and {v["action"] for v in videos} == {"Walking", "SittingDown"}
    for video in videos:
        assert len(video["keypoints_px"]) == len(video["joints_m"]) == 60, "the 2D file's extra frames are cut"
        camera = video["camera"]
        reprojected = np.asarray(camera["focal_length"]) * video["joints_m"][..., :2] / video["joints_m"][..., 2:] \
            + np.asarray(camera["center"])
        np.testing.assert_allclose(reprojected, video["keypoints_px"], atol=1e-2)
    clips = VideoPose3DClips(str(tmp_path), "test", frames=27)
    keypoints, target = clips[0]
    assert keypoints.shape == (27, 17, 2) and torch.all(target[:, 0] == 0)
    assert set(clips.action) == {"Walking", "SittingDown"} and torch.all(clips.millimetres_per_unit == 1000)
    assert 1.0 < (clips.target_mm[:, 10] - clips.target_mm[:, 3]).norm(dim=-1).max() / 1000 < 2.2, "head to ankle"


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_3d_h36m.npz"):
        read_videopose3d(str(tmp_path))
    write_videopose3d(tmp_path, subjects=("S1",))
    with pytest.raises(ValueError, match="no subject 'S5'"):
        read_videopose3d(str(tmp_path), subjects=("S1", "S5"))
    with pytest.raises(FileNotFoundError, match="data_2d_h36m_detectron_pt_coco.npz"):
        read_videopose3d(str(tmp_path), keypoints="detectron_pt_coco", subjects=("S1",))
    poses = np.load(tmp_path / "data_3d_h36m.npz", allow_pickle=True)["positions_3d"].item()
    poses["S1"]["SittingDown"] = poses["S1"]["SittingDown"][:, :17]
    np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=np.array(poses, dtype=object))
    with pytest.raises(ValueError, match=r"'S1'/'SittingDown' must have shape \(N, 32, 3\)"):
        read_videopose3d(str(tmp_path), subjects=("S1",))


def test_trains_and_evaluates_through_the_config(tmp_path):
    from posemamba.training import evaluate_checkpoint, load_config, train

    write_videopose3d(tmp_path, subjects=("S1", "S5", "S6", "S7", "S8", "S9", "S11"), frames=30)
    config = load_config("h36m_s", ["data.kind=videopose3d", f"data.path={tmp_path}", "data.frames=9",
                                    f"output={tmp_path / 'run'}", "model.overrides={dim: 16, depth: 1}",
                                    "train.epochs=1", "train.batch_size=16", "train.num_workers=0", "train.device=cpu"])
    train(config, log=lambda *_: None)
    result = evaluate_checkpoint(config, str(tmp_path / "run" / "best.pth"))
    assert set(result.per_action) == {"Walking", "SittingDown"} and result.p1 > 0
