"""PoseMamba: 3D human pose lifting around a fused multi-path selective scan."""
from ._extension import EXTENSION_ERROR, HAS_EXTENSION
from . import ops

__all__ = ["ops", "HAS_EXTENSION", "EXTENSION_ERROR"]
__version__ = "0.1.0"
