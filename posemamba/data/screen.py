"""The screen coordinates every dataset and the lifting share: pixels over half the image width,
centred, so both axes keep the image's aspect (MotionBERT's normalisation)."""
import numpy as np

__all__ = ["screen_coordinates"]


def screen_coordinates(values: np.ndarray, width: float, height: float) -> np.ndarray:
    """(..., 2 or 3) pixels (and depth in pixels) to screen units: x / w * 2 - 1, y / w * 2 - h / w,
    depth / w * 2; float32."""
    values = np.asarray(values, dtype=np.float32)
    out = values / np.float32(width) * 2
    out[..., :2] -= np.array([1.0, height / width], dtype=np.float32)
    return out
