"""Human3.6M evaluation: millimetres from the file's factors, each frame once, per action then mean."""
import numpy as np
import pytest
import torch

from posemamba.data import H36MClips
from posemamba.data.synthetic import write_synthetic_h36m
from posemamba.training.evaluation import evaluate_h36m, format_table


class ReplayModel(torch.nn.Module):
    """Returns, batch after batch, the test clips' normalised targets with joint 1 moved by `shift` in x:
    a model whose errors are known exactly."""

    def __init__(self, dataset, shift, scale=1.0):
        super().__init__()
        self.dataset, self.shift, self.scale, self.next_clip = dataset, shift, scale, 0

    def forward(self, keypoints):
        batch = keypoints.shape[0]
        frames = np.stack(self.dataset.clips[self.next_clip:self.next_clip + batch])
        self.next_clip += batch
        pred = self.dataset.targets[torch.from_numpy(frames)].clone()
        pred[..., 1, 0] += self.shift
        return self.scale * pred


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    # Clips of 40 frames over videos of 50 to 70: every video's last clip overlaps its first.
    path = write_synthetic_h36m(str(tmp_path_factory.mktemp("data") / "h36m.pkl"), seed=1, train_sequences=1,
                                test_sequences=4, frames=(50, 70), views=1)
    return H36MClips(path, "test", frames=40)


def test_exact_prediction_scores_zero(test_set):
    result = evaluate_h36m(ReplayModel(test_set, 0.0), test_set, batch_size=3, flip=False)
    assert result.p1 < 1e-3 and result.p2 < 1e-3 and result.mpjve < 1e-3


def test_known_error_per_action_then_mean(test_set):
    shift = 0.01  # normalised units: shift x width / 2 pixels, times each frame's factor in mm
    result = evaluate_h36m(ReplayModel(test_set, shift), test_set, batch_size=2, flip=False)
    per_frame_mm = (shift * test_set.camera_width / 2 * test_set.factor / 17).double().numpy()
    expected = {action: per_frame_mm[test_set.action == action].mean() for action in set(test_set.action)}
    assert set(result.per_action) == set(expected)
    for action, value in expected.items():
        assert result.per_action[action]["p1"] == pytest.approx(value, abs=2e-3)  # float32 round trips: micrometres
        assert result.per_action[action]["frames"] == int((test_set.action == action).sum())
    assert result.p1 == pytest.approx(np.mean(list(expected.values())), abs=2e-3)
    table = format_table(result)
    assert "average" in table and all(action in table for action in expected)


def test_p2_forgives_scale_p1_does_not(test_set):
    result = evaluate_h36m(ReplayModel(test_set, 0.0, scale=1.2), test_set, batch_size=4, flip=False)
    assert result.p2 < 1e-3 and result.p1 > 10.0


def test_needs_millimetre_factors(test_set):
    no_factor = H36MClips.__new__(H36MClips)
    no_factor.__dict__.update(test_set.__dict__, target_mm=None)
    with pytest.raises(ValueError, match="2.5d_factor"):
        evaluate_h36m(ReplayModel(test_set, 0.0), no_factor)
