"""Parameter and MAC counts against the paper's numbers (counted the paper's way) and in full."""
import pytest

from posemamba.complexity import count_macs, count_parameters
from posemamba.model import PoseMamba, posemamba


@pytest.mark.parametrize("preset,paper_params", [("S", 0.9e6), ("B", 3.4e6), ("L", 6.7e6)])
def test_leaf_module_parameters_round_to_the_papers(preset, paper_params):
    counts = count_parameters(posemamba(preset))
    assert round(counts["leaf_modules"] / 1e6, 1) == round(paper_params / 1e6, 1)
    assert counts["full"] > counts["leaf_modules"]


def test_macs_the_papers_way_and_in_full():
    # PoseMamba-S at 243 frames: the paper reports 3.6G, counted over leaf modules.
    macs = count_macs(posemamba("S"), frames=243)
    assert abs(macs["leaf_modules"] - 3.6e9) / 3.6e9 < 0.05
    assert macs["full"] > macs["leaf_modules"]


def test_macs_scale_with_frames_and_batch():
    model = PoseMamba(num_frame=20, dim=16, depth=2)
    one = count_macs(model, frames=10)
    assert count_macs(model, frames=20)["full"] == 2 * one["full"]
    assert count_macs(model, frames=10, batch=3)["leaf_modules"] == 3 * one["leaf_modules"]
