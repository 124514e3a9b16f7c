import pytest
import torch

import posemamba
from posemamba.paths import pose_mix, pose_paths
from posemamba.testing import random_scan_inputs  # noqa: F401  (the tests import it from here)

requires_extension = pytest.mark.skipif(
    not posemamba.HAS_EXTENSION, reason=f"compiled kernels missing: {posemamba.EXTENSION_ERROR}")


def random_pose_scan_inputs(batch, dim, T, J, d_state, dtype=torch.float32, device="cpu"):
    """random_scan_inputs on PoseMamba's four paths over a T x J clip, with a random joint order's mix."""
    inputs = random_scan_inputs(batch, dim, T * J, 4, d_state, dtype, device=device)
    inputs["paths"] = pose_paths(T, J).to(device)
    inputs["mix"] = pose_mix(T, J, torch.randint(0, J, (J,))).to(device)
    return inputs


def dtype_id(dtype):
    """A dtype's name in test ids: float32, not torch.float32."""
    return str(dtype).removeprefix("torch.")
