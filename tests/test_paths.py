"""The scan-order helpers: shapes, permutations, and PoseMamba's orders by their definition."""
import pytest
import torch

from posemamba.ops import bidirectional_paths, pose_mix, pose_paths
from posemamba.paths import span_lengths_hint


def assert_rows_are_permutations(paths):
    for row in paths:
        assert torch.equal(row.sort().values, torch.arange(paths.shape[1]))


@pytest.mark.parametrize("T,J", [(1, 1), (1, 17), (5, 1), (4, 3), (27, 17)])
def test_pose_paths_visit_frame_major_joint_major_and_reverses(T, J):
    paths = pose_paths(T, J)
    assert paths.shape == (4, T * J) and paths.dtype == torch.int64
    assert_rows_are_permutations(paths)
    frame_major = [t * J + j for t in range(T) for j in range(J)]
    joint_major = [t * J + j for j in range(J) for t in range(T)]
    assert paths[0].tolist() == frame_major
    assert paths[1].tolist() == joint_major
    assert paths[2].tolist() == frame_major[::-1]
    assert paths[3].tolist() == joint_major[::-1]


def test_pose_paths_of_an_image_are_vmambas_cross_scan():
    # VMamba's CrossScan of x (B, C, H, W): x flattened, x transposed then flattened, both flipped. The
    # path rows hold which position each step reads, so they are that data flow applied to positions.
    H, W = 3, 5
    positions = torch.arange(H * W).view(1, 1, H, W)
    rows = positions.flatten(2)
    columns = positions.transpose(2, 3).flatten(2)
    cross_scan = torch.cat([rows, columns, rows.flip(-1), columns.flip(-1)], dim=1)[0]
    assert torch.equal(pose_paths(H, W), cross_scan)


def test_pose_mix_matches_definition():
    T, J = 3, 5
    joint_order = [0, 0, 1, 3, 1]  # repeats allowed, as in the limb traversal
    mix = pose_mix(T, J, joint_order)
    assert mix.shape == (4, T * J) and mix.dtype == torch.int64
    for t in range(T):
        for j in range(J):
            l = t * J + j
            assert mix[0, l] == mix[2, l] == t * J + joint_order[j]
            assert mix[1, l] == mix[3, l] == -1


def test_bidirectional_paths():
    order = torch.randperm(11)
    paths = bidirectional_paths(order)
    assert paths.shape == (2, 11)
    assert_rows_are_permutations(paths)
    assert torch.equal(paths[0], order) and torch.equal(paths[1], order.flip(0))


def test_helpers_reject_bad_orders():
    with pytest.raises(ValueError, match=r"order\[0\] must be a permutation of range\(L=3\)"):
        bidirectional_paths([0, 0, 2])
    with pytest.raises(ValueError, match="order must be a 1-D permutation"):
        bidirectional_paths([[0, 1]])
    with pytest.raises(ValueError, match="joint_order must hold J=3 joint indices"):
        pose_mix(2, 3, [0, 1])
    with pytest.raises(ValueError, match=r"joint_order must hold joint indices in \[0, J=3\)"):
        pose_mix(2, 3, [0, 1, 3])
    with pytest.raises(ValueError, match="T and J must be >= 1"):
        pose_paths(0, 17)


@pytest.mark.parametrize("T,J", [(243, 17), (27, 17), (4, 3)])
def test_span_lengths_hint_of_pose_paths(T, J):
    # Joint-major paths (rows 1 and 3): step s + T visits the next joint of step s's frame. The
    # frame-major rows visit consecutive positions: no spans.
    assert span_lengths_hint(pose_paths(T, J)) == [0, T, 0, T]


def test_span_lengths_hint_without_a_period():
    assert span_lengths_hint(bidirectional_paths(torch.arange(50))) == [0, 0]  # consecutive positions: no spans
    assert span_lengths_hint(pose_paths(1, 17)) == [0] * 4  # one frame: every path along consecutive positions
    assert span_lengths_hint(torch.tensor([[0, 2, 1, 3, 4, 5]])) == [0]  # span 2 fits 0 -> 1, not 2 -> 4 ... 1 -> 4
    assert span_lengths_hint(torch.tensor([[0, 2, 4, 1, 3]])) == [3]  # |paths[s + 3] - paths[s]| = 1 for all s
    assert span_lengths_hint(torch.tensor([[0]])) == [0]


def test_span_lengths_hint_is_per_row():
    rows = [torch.arange(6), torch.tensor([0, 2, 4, 1, 3, 5]), torch.tensor([0, 3, 1, 4, 2, 5])]
    assert span_lengths_hint(torch.stack(rows)) == [0, 3, 2]
