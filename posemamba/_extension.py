"""Loads the compiled kernels (posemamba._C) once; importing posemamba never fails without them."""
import warnings

import torch  # noqa: F401  (loads libtorch and libc10, which _C links against)

try:
    from . import _C  # noqa: F401  (importing it registers the posemamba:: ops)
    EXTENSION_ERROR = None
except ImportError as error:  # not built, or built against another torch
    EXTENSION_ERROR = f"{type(error).__name__}: {error}"
    warnings.warn(
        "posemamba: the compiled kernels did not load, so the ops run the slow pure-PyTorch reference "
        f"({EXTENSION_ERROR}); build them with `pip install --no-build-isolation -e .`",
        RuntimeWarning, stacklevel=2)

HAS_EXTENSION = EXTENSION_ERROR is None
