"""Datasets for training and evaluating PoseMamba."""
from .clips import split_clips
from .h36m import H36M_CAMERA_RESOLUTIONS, H36MClips, read_h36m_pickle
from .mpi_inf_3dhp import MPI3DHPClips, read_mpi_inf_3dhp
from .videopose3d import VideoPose3DClips, read_videopose3d

__all__ = ["split_clips", "H36M_CAMERA_RESOLUTIONS", "H36MClips", "read_h36m_pickle", "MPI3DHPClips",
           "read_mpi_inf_3dhp", "VideoPose3DClips", "read_videopose3d"]
