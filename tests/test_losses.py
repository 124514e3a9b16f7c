"""The training losses by hand."""
import pytest
import torch

from posemamba.losses import PoseLoss, mpjpe_loss, n_mpjpe_loss, temporal_difference_loss, velocity_loss


def test_losses_by_hand():
    target = torch.zeros(1, 2, 1, 3)
    pred = torch.zeros(1, 2, 1, 3)
    pred[0, 1, 0] = torch.tensor([3.0, 4.0, 0.0])           # frame 1 off by 5, frame 0 exact
    assert mpjpe_loss(pred, target).item() == pytest.approx(2.5)
    assert velocity_loss(pred, target).item() == pytest.approx(5.0)
    # One frame pair, one joint: the change (3, 4, 0) squared is 9, 16, 0, mean 25 / 3.
    assert temporal_difference_loss(pred).item() == pytest.approx(25.0 / 3.0)
    # N-MPJPE ignores a prediction's size: twice the target scores zero.
    scaled = torch.tensor([[[[1.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]]]])
    assert n_mpjpe_loss(2 * scaled, scaled).item() == pytest.approx(0.0, abs=1e-6)


def test_pose_loss_weights():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 17, 3), torch.randn(2, 5, 17, 3)
    expected = (mpjpe_loss(pred, target) + 0.5 * n_mpjpe_loss(pred, target) + 20 * velocity_loss(pred, target)
                + 0.5 * temporal_difference_loss(pred))
    torch.testing.assert_close(PoseLoss()(pred, target), expected)
    # One frame has no velocity term.
    torch.testing.assert_close(PoseLoss()(pred[:, :1], target[:, :1]),
                               mpjpe_loss(pred[:, :1], target[:, :1]) + 0.5 * n_mpjpe_loss(pred[:, :1], target[:, :1]))


def test_pose_loss_trains_a_model_end_to_end():
    from posemamba.model import PoseMamba

    torch.manual_seed(0)
    model = PoseMamba(num_frame=9, dim=16, depth=1)
    keypoints, target = torch.randn(2, 9, 17, 2), torch.randn(2, 9, 17, 3)
    loss = PoseLoss()(model(keypoints), target)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
