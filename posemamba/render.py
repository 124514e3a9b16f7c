"""Pictures of a lifted sequence: the 2D input beside the 3D skeleton, turning slowly about the
vertical, as a GIF or MP4, or chosen frames as one PNG. Drawn with matplotlib on its Agg canvas
(no display needed)."""
from typing import Sequence, Tuple

import numpy as np
from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data.synthetic import H36M_PARENTS
from .flip import H36M_LEFT_JOINTS

__all__ = ["SKELETON_EDGES", "SkeletonFigure", "render_animation", "render_png"]

SKELETON_EDGES = tuple((parent, child) for child, parent in enumerate(H36M_PARENTS) if parent >= 0)
_LEFT, _RIGHT, _CENTRE = "#1f77b4", "#d62728", "#444444"


def _edge_colour(child: int) -> str:
    if child in H36M_LEFT_JOINTS:
        return _LEFT
    return _CENTRE if child in (7, 8, 9, 10) else _RIGHT


def _to_plot_axes(joints: np.ndarray) -> np.ndarray:
    """Camera-style (x right, y down, z away) to the plot's (x right, y away, z up)."""
    return np.stack([joints[..., 0], joints[..., 2], -joints[..., 1]], axis=-1)


class SkeletonFigure:
    """A two-panel figure (2D input, 3D skeleton) with fixed limits for a whole sequence, so frames
    line up in an animation; `draw(frame, azimuth)` redraws both panels."""

    def __init__(self, pixels: np.ndarray, joints: np.ndarray, image_size: Tuple[int, int], rows: int = 1,
                 size: float = 4.0, dpi: int = 80):
        self.pixels, self.joints = np.asarray(pixels), _to_plot_axes(np.asarray(joints))
        self.image_size = image_size
        self.figure = Figure(figsize=(2 * size, size * rows), dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.panels = [(self.figure.add_subplot(rows, 2, 2 * r + 1),
                        self.figure.add_subplot(rows, 2, 2 * r + 2, projection="3d")) for r in range(rows)]
        self.radius = float(np.abs(self.joints).max()) * 1.05 or 1.0

    def draw(self, frame: int, azimuth: float = -60.0, row: int = 0) -> None:
        ax2d, ax3d = self.panels[row]
        ax2d.clear()
        width, height = self.image_size
        ax2d.set_xlim(0, width)
        ax2d.set_ylim(height, 0)
        ax2d.set_aspect("equal")
        ax2d.set_title(f"2D input, frame {frame}", fontsize=9)
        ax2d.tick_params(labelsize=6)
        points = self.pixels[frame]
        for parent, child in SKELETON_EDGES:
            ax2d.plot(*points[[parent, child]].T, color=_edge_colour(child), linewidth=2)
        ax2d.scatter(points[:, 0], points[:, 1], s=10, color="black", zorder=3)

        ax3d.clear()
        r = self.radius
        ax3d.set_xlim(-r, r)
        ax3d.set_ylim(-r, r)
        ax3d.set_zlim(-r, r)
        ax3d.set_box_aspect((1, 1, 1))
        ax3d.view_init(elev=15.0, azim=azimuth)
        ax3d.set_title("3D, root-relative", fontsize=9)
        ax3d.tick_params(labelsize=6)
        joints = self.joints[frame]
        for parent, child in SKELETON_EDGES:
            ax3d.plot(*joints[[parent, child]].T, color=_edge_colour(child), linewidth=2)
        ax3d.scatter(*joints.T, s=10, color="black", depthshade=False)


def render_animation(path: str, pixels: np.ndarray, joints: np.ndarray, image_size: Tuple[int, int],
                     fps: int = 25, turns: float = 1.0) -> str:
    """A GIF (any platform) or MP4 (needs ffmpeg) of every frame; the 3D view turns `turns` times."""
    if not path.lower().endswith((".gif", ".mp4")):
        raise ValueError(f"animation path must end in .gif or .mp4, got {path!r}")
    if path.lower().endswith(".mp4") and not FFMpegWriter.isAvailable():
        raise ValueError("writing MP4 needs ffmpeg on the PATH; write a .gif instead")
    figure = SkeletonFigure(pixels, joints, image_size)
    frames = len(figure.pixels)

    def update(frame):
        figure.draw(frame, azimuth=-60.0 + 360.0 * turns * frame / max(1, frames))

    animation = FuncAnimation(figure.figure, update, frames=frames, interval=1000 / fps)
    writer = PillowWriter(fps=fps) if path.lower().endswith(".gif") else FFMpegWriter(fps=fps)
    animation.save(path, writer=writer)
    return path


def render_png(path: str, pixels: np.ndarray, joints: np.ndarray, image_size: Tuple[int, int],
               frames: Sequence[int], azimuth: float = -60.0) -> SkeletonFigure:
    """One PNG, a row per chosen frame (2D input, 3D skeleton); returns the drawn figure."""
    count = len(pixels)
    bad = [f for f in frames if not 0 <= f < count]
    if not frames or bad:
        raise ValueError(f"frames must be given and lie in [0, {count}), got {list(frames)}")
    figure = SkeletonFigure(pixels, joints, image_size, rows=len(frames))
    for row, frame in enumerate(frames):
        figure.draw(frame, azimuth=azimuth, row=row)
    figure.figure.savefig(path)
    return figure
