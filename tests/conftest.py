import pytest

import posemamba
from posemamba.testing import random_scan_inputs  # noqa: F401  (the tests import it from here)

requires_extension = pytest.mark.skipif(
    not posemamba.HAS_EXTENSION, reason=f"compiled kernels missing: {posemamba.EXTENSION_ERROR}")
