"""MPI-INF-3DHP from small files written in the real npz layout."""
import numpy as np
import pytest
import torch

from posemamba.data.mpi_inf_3dhp import MPI_INF_3DHP_TO_H36M, MPI3DHPClips, read_mpi_inf_3dhp
from posemamba.data.synthetic import skeleton_motion
from posemamba.training.evaluation import evaluate_3dhp, format_table


def camera_view(frames, seed, width, height):
    """(data_2d pixels, data_3d millimetres) in 3DHP's joint order: a synthetic motion 5 m in front of
    a camera with a 1500 px focal length."""
    joints = skeleton_motion("Walking", frames, np.random.default_rng(seed))          # H36M order, world
    cam = np.stack([joints[..., 0], 900.0 - joints[..., 2], joints[..., 1] + 5000.0], axis=-1)
    pixels = 1500.0 * cam[..., :2] / cam[..., 2:] + np.array([width / 2, height / 2])
    order = np.argsort(MPI_INF_3DHP_TO_H36M)                                            # H36M -> 3DHP
    return pixels[:, order].astype(np.float32), cam[:, order].astype(np.float32)


def write_3dhp(folder, valid_every=3):
    train = {}
    for index, sequence in enumerate(["S1 Seq1", "S2 Seq1"]):
        cameras = {}
        for camera in (0, 4):
            data_2d, data_3d = camera_view(50, 10 * index + camera, 2048, 2048)
            cameras[camera] = {"data_2d": data_2d, "data_3d": data_3d}
        train[sequence] = [cameras]
    test = {}
    for index, sequence in enumerate(["TS1", "TS5"]):
        width, height = (2048, 2048) if sequence == "TS1" else (1920, 1080)
        data_2d, data_3d = camera_view(40 + 7 * index, 100 + index, width, height)
        valid = np.arange(len(data_2d)) % valid_every != 0
        test[sequence] = {"data_2d": data_2d, "data_3d": data_3d, "valid": valid}
    np.savez(folder / "data_train_3dhp.npz", data=np.array(train, dtype=object))
    np.savez(folder / "data_test_3dhp.npz", data=np.array(test, dtype=object))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_3dhp(tmp_path_factory.mktemp("3dhp"))


def test_reads_every_video_in_h36m_order(folder):
    videos = read_mpi_inf_3dhp(str(folder), "train")
    assert [v["name"] for v in videos] == ["S1 Seq1 camera 0", "S1 Seq1 camera 4", "S2 Seq1 camera 0", "S2 Seq1 camera 4"]
    clips = MPI3DHPClips(str(folder), "train", frames=9)
    keypoints, target = clips[0]
    assert keypoints.shape == (9, 17, 2) and target.shape == (9, 17, 3)
    assert torch.all(target[:, 0] == 0), "root-relative, root first (Human3.6M order)"
    # Targets are millimetres over half the width; the right hip (H36M joint 1) is 3DHP joint 8.
    raw = read_mpi_inf_3dhp(str(folder), "train")[0]["data_3d"]
    torch.testing.assert_close(target[0, 1] * 1024, torch.from_numpy(raw[0, 8] - raw[0, 14]))


def test_test_split_keeps_resolutions_and_valid_flags(folder):
    clips = MPI3DHPClips(str(folder), "test", frames=9, with_confidence=True)
    assert clips.keypoints.shape[-1] == 3 and torch.all(clips.keypoints[..., 2] == 1)
    ts5 = clips.sequence == "TS5"
    assert torch.all(clips.millimetres_per_unit[torch.from_numpy(ts5)] == 960)
    assert clips.valid.sum() == sum(int((np.arange(n) % 3 != 0).sum()) for n in (40, 47))


class Exact(torch.nn.Module):
    """The normalised targets of the clips, in order, scaled by `scale`."""

    def __init__(self, clips, scale=1.0):
        super().__init__()
        self.clips, self.scale, self.next_clip = clips, scale, 0

    def forward(self, keypoints):
        frames = np.stack(self.clips.clips[self.next_clip:self.next_clip + len(keypoints)])
        self.next_clip += len(keypoints)
        return self.scale * self.clips.targets[torch.from_numpy(frames)]


def test_pck_auc_mpjpe_on_valid_frames(folder):
    clips = MPI3DHPClips(str(folder), "test", frames=9)
    exact = evaluate_3dhp(Exact(clips), clips, batch_size=4, flip=False)
    assert exact.pck == pytest.approx(100) and exact.p1 < 1e-3
    assert set(exact.per_sequence) == {"TS1", "TS5"}
    assert exact.auc == pytest.approx(100 * 30 / 31, abs=1e-3), "every threshold but 0 mm is met"
    # 1.5x the true pose: every joint is off by half its distance to the root.
    scaled = evaluate_3dhp(Exact(clips, 1.5), clips, batch_size=4, flip=False)
    valid = torch.from_numpy(clips.valid)
    distances = 0.5 * clips.target_mm[valid].norm(dim=-1)                             # (frames, 17)
    assert scaled.p1 == pytest.approx(distances.mean().item(), rel=1e-4)
    assert scaled.pck == pytest.approx(100 * (distances < 150).float().mean().item(), rel=1e-4)
    assert "TS5" in format_table(scaled)


@pytest.mark.parametrize("breakage, message", [
    (lambda train, test: test["TS1"].pop("valid"), "'TS1' has no 'valid'"),
    (lambda train, test: train["S1 Seq1"][0][0].update(data_3d=np.zeros((50, 16, 3))), r"'data_3d' must have shape \(N, 17, 3\)"),
    (lambda train, test: train.update({"S1 Seq1": {}}), "must be a list holding a dict of cameras"),
])
def test_malformed_files_are_named(tmp_path, breakage, message):
    write_3dhp(tmp_path)
    train = np.load(tmp_path / "data_train_3dhp.npz", allow_pickle=True)["data"].item()
    test = np.load(tmp_path / "data_test_3dhp.npz", allow_pickle=True)["data"].item()
    breakage(train, test)
    np.savez(tmp_path / "data_train_3dhp.npz", data=np.array(train, dtype=object))
    np.savez(tmp_path / "data_test_3dhp.npz", data=np.array(test, dtype=object))
    split = "test" if "TS1" in message else "train"
    with pytest.raises(ValueError, match=message):
        read_mpi_inf_3dhp(str(tmp_path), split)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_test_3dhp.npz"):
        read_mpi_inf_3dhp(str(tmp_path), "test")


def test_trains_and_logs_3dhp_scores(folder, tmp_path):
    from posemamba.training import evaluate_checkpoint, load_config, train

    config = load_config("mpi_3dhp_s", [f"data.path={folder}", "data.frames=9", f"output={tmp_path}",
                                        "model.overrides={dim: 16, depth: 1}", "train.epochs=1", "train.batch_size=8",
                                        "train.num_workers=0", "train.device=cpu"])
    train(config, log=lambda *_: None)
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", "lr", "train_loss", "p1", "pck", "auc", "seconds"]
    result = evaluate_checkpoint(config, str(tmp_path / "best.pth"))
    assert 0 <= result.pck <= 100 and result.p1 > 0
