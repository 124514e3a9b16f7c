"""The pose metrics against values computed by hand."""
import math

import pytest
import torch

from posemamba.metrics import auc, mpjpe, mpjve, n_mpjpe, p_mpjpe, pck


def rotation_z(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_mpjpe_by_hand():
    target = torch.zeros(2, 3, dtype=torch.float64)
    pred = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    assert mpjpe(pred, target).item() == pytest.approx(2.5)  # (0 + 5) / 2


def test_p_mpjpe_removes_similarity_transforms():
    torch.manual_seed(0)
    target = torch.randn(4, 17, 3, dtype=torch.float64)
    pred = 1.7 * target @ rotation_z(0.6) + torch.tensor([10.0, -3.0, 2.0], dtype=torch.float64)
    assert mpjpe(pred, target).min() > 1.0
    torch.testing.assert_close(p_mpjpe(pred, target), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)


def test_p_mpjpe_by_hand_for_a_saddle():
    # Target: a unit square's corners in z=0; pred: the same corners lifted to a saddle, z = +h on the
    # x axis and -h on the y axis. No rotation or translation helps; the best scale is
    # s = 4 / (4 + 4h^2) = 1 / (1 + h^2), leaving each corner sqrt((1-s)^2 + (s h)^2) = h / sqrt(1 + h^2) off.
    h = 0.3
    target = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0]], dtype=torch.float64)
    pred = target.clone()
    pred[:, 2] = torch.tensor([h, -h, h, -h], dtype=torch.float64)
    assert p_mpjpe(pred, target).item() == pytest.approx(h / math.sqrt(1 + h * h), abs=1e-9)
    assert p_mpjpe(pred, target).item() <= mpjpe(pred, target).item() + 1e-12


def test_n_mpjpe_removes_scale():
    target = torch.randn(3, 17, 3)
    assert n_mpjpe(0.5 * target, target).abs().max().item() < 1e-5


def test_mpjve_by_hand():
    target = torch.zeros(3, 2, 3)
    pred = torch.zeros(3, 2, 3)
    pred[1] += torch.tensor([3.0, 4.0, 0.0])  # the middle frame jumps by 5 and back
    assert mpjve(pred, target).tolist() == pytest.approx([5.0, 5.0])
    assert mpjve(pred + 7.0, target + 7.0).tolist() == pytest.approx([5.0, 5.0])


def test_pck_and_auc_by_hand():
    target = torch.zeros(3, 3)
    pred = torch.tensor([[0.0, 0, 0], [100.0, 0, 0], [200.0, 0, 0]])
    assert pck(pred, target).item() == pytest.approx(2 / 3)
    # AUC over thresholds 0, 5, ..., 150: joint 0 (error 0) counts from 5 on (30 of 31 thresholds),
    # joint 1 (error 100) from 105 on (10 of 31), joint 2 never.
    assert auc(pred, target).item() == pytest.approx((30 + 10) / 31 / 3)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match=r"pred and target must both be \(..., J, 3\)"):
        mpjpe(torch.zeros(17, 3), torch.zeros(16, 3))
    with pytest.raises(ValueError, match="mpjve needs sequences"):
        mpjve(torch.zeros(1, 17, 3), torch.zeros(1, 17, 3))


def test_p_mpjpe_does_not_reflect():
    torch.manual_seed(1)
    pred = torch.randn(17, 3, dtype=torch.float64)
    mirrored = pred * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert p_mpjpe(pred, mirrored).item() > 0.1
