"""Synthetic Human3.6M: procedural motions of the H36M-17 skeleton, seen by random cameras, written in
the MotionBERT pickle format, so that training and evaluation without the licensed dataset go through
exactly the pipeline the real files do (reader, normalisation, clips, metrics in millimetres).

World frame: z up, the subject's forward +y at rest, so its right is +x (forward x up). Each motion gives per-frame local joint
rotations; forward kinematics over the skeleton's parents turns them into 3D joints in millimetres.
"""
import pickle
from typing import Callable, Dict, List

import numpy as np

from .h36m import H36M_CAMERA_RESOLUTIONS

__all__ = ["H36M_PARENTS", "REST_OFFSETS_MM", "MOTIONS", "skeleton_motion", "synthetic_h36m",
           "write_synthetic_h36m"]

FPS = 50  # Human3.6M's frame rate

# Parent of each of the 17 joints (root, RHip, RKnee, RAnkle, LHip, LKnee, LAnkle, Spine, Thorax, Nose,
# Head, LShoulder, LElbow, LWrist, RShoulder, RElbow, RWrist).
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)

# Each joint's offset from its parent in the rest pose (standing, arms down), millimetres: the mean
# bone lengths of Human3.6M's subjects.
REST_OFFSETS_MM = np.array([
    [0, 0, 0],
    [132, 0, 0], [0, 0, -442], [0, 0, -454],           # right leg
    [-132, 0, 0], [0, 0, -442], [0, 0, -454],          # left leg
    [0, 0, 233], [0, 0, 257], [0, 50, 110], [0, -20, 115],   # spine, thorax, nose, head
    [-150, 0, -15], [0, 0, -278], [0, 0, -251],         # left arm
    [150, 0, -15], [0, 0, -278], [0, 0, -251],          # right arm
], dtype=np.float64)
_STANDING_ROOT_HEIGHT = 950.0


def _rotation(axis: str, angle: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations by `angle` (T,) radians about the x, y or z axis."""
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    rows = {
        "x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


class _Pose:
    """Per-frame joint angles (radians) of one motion, and the root's path; all zero is the rest pose.

    flexion swings a limb forward (hips, shoulders, spine lean) or bends it (knees and elbows, >= 0);
    abduction lifts an arm sideways; yaw turns the whole body about the vertical."""

    def __init__(self, frames: int):
        zero = np.zeros(frames)
        self.yaw = zero.copy()
        self.root = np.zeros((frames, 3))
        self.root[:, 2] = _STANDING_ROOT_HEIGHT
        self.flexion = {name: zero.copy() for name in
                        ("spine", "left_hip", "right_hip", "left_knee", "right_knee",
                         "left_shoulder", "right_shoulder", "left_elbow", "right_elbow")}
        self.abduction = {"left_shoulder": zero.copy(), "right_shoulder": zero.copy()}

    def joints(self, offsets: np.ndarray) -> np.ndarray:
        """(T, 17, 3) world positions by forward kinematics: a joint's rotation turns its children's bones."""
        frames = len(self.yaw)
        f, a = self.flexion, self.abduction
        local = {
            0: _rotation("z", self.yaw),
            1: _rotation("x", f["right_hip"]), 2: _rotation("x", -f["right_knee"]),
            4: _rotation("x", f["left_hip"]), 5: _rotation("x", -f["left_knee"]),
            7: _rotation("x", -f["spine"]),  # bones above point up: minus leans them forward
            11: _rotation("y", a["left_shoulder"]) @ _rotation("x", f["left_shoulder"]),
            12: _rotation("x", f["left_elbow"]),
            14: _rotation("y", -a["right_shoulder"]) @ _rotation("x", f["right_shoulder"]),
            15: _rotation("x", f["right_elbow"]),
        }
        identity = np.broadcast_to(np.eye(3), (frames, 3, 3))
        world_rotation = [None] * 17
        positions = np.zeros((frames, 17, 3))
        for joint, parent in enumerate(H36M_PARENTS):
            if parent < 0:
                positions[:, 0] = self.root
                world_rotation[0] = local[0]
                continue
            positions[:, joint] = positions[:, parent] + world_rotation[parent] @ offsets[joint]
            world_rotation[joint] = world_rotation[parent] @ local.get(joint, identity)
        return positions


def _walk(pose: _Pose, t: np.ndarray, rng: np.random.Generator, turn_rate: float = 0.0) -> None:
    step_hz, stride = rng.uniform(0.8, 1.05), rng.uniform(0.35, 0.55)
    phase = 2 * np.pi * step_hz * t
    swing = stride * np.sin(phase)
    pose.flexion["left_hip"] += swing
    pose.flexion["right_hip"] -= swing
    pose.flexion["left_knee"] += 0.6 * np.maximum(0.0, np.sin(phase + 1.2)) + 0.1
    pose.flexion["right_knee"] += 0.6 * np.maximum(0.0, np.sin(phase + np.pi + 1.2)) + 0.1
    pose.flexion["left_shoulder"] -= 0.7 * swing
    pose.flexion["right_shoulder"] += 0.7 * swing
    pose.flexion["left_elbow"] += 0.3
    pose.flexion["right_elbow"] += 0.3
    pose.yaw += turn_rate * t
    speed = 2.2 * stride * step_hz * 1000.0 / 2.0  # millimetres per second, about two strides a cycle
    heading = pose.yaw
    pose.root[:, 0] += np.cumsum(-np.sin(heading) * speed / FPS)
    pose.root[:, 1] += np.cumsum(np.cos(heading) * speed / FPS)
    pose.root[:, 2] += 15.0 * np.cos(2 * phase)


def _turn(pose: _Pose, t: np.ndarray, rng: np.random.Generator) -> None:
    _walk(pose, t, rng, turn_rate=rng.choice([-1, 1]) * rng.uniform(0.5, 1.2))


def _arms(pose: _Pose, t: np.ndarray, rng: np.random.Generator) -> None:
    for side in ("left", "right"):
        hz, phase = rng.uniform(0.2, 0.7), rng.uniform(0, 2 * np.pi)
        pose.flexion[f"{side}_shoulder"] += rng.uniform(0.3, 1.4) * (0.5 + 0.5 * np.sin(2 * np.pi * hz * t + phase))
        pose.abduction[f"{side}_shoulder"] += rng.uniform(0.1, 1.3) * (0.5 + 0.5 * np.sin(2 * np.pi * hz * 0.7 * t + phase))
        pose.flexion[f"{side}_elbow"] += rng.uniform(0.2, 1.8) * (0.5 + 0.5 * np.sin(2 * np.pi * hz * 1.3 * t))
    pose.yaw += rng.uniform(-0.3, 0.3) * np.sin(2 * np.pi * 0.1 * t)


def _legs(pose: _Pose, t: np.ndarray, rng: np.random.Generator) -> None:
    hz = rng.uniform(0.25, 0.5)
    lift = np.maximum(0.0, np.sin(2 * np.pi * hz * t))
    other = np.maximum(0.0, -np.sin(2 * np.pi * hz * t))
    height = rng.uniform(0.5, 1.3)
    pose.flexion["left_hip"] += height * lift
    pose.flexion["left_knee"] += 1.2 * height * lift
    pose.flexion["right_hip"] += height * other
    pose.flexion["right_knee"] += 1.2 * height * other
    pose.abduction["left_shoulder"] += 0.3
    pose.abduction["right_shoulder"] += 0.3


def _sit_down(pose: _Pose, t: np.ndarray, rng: np.random.Generator) -> None:
    duration = t[-1] + 1.0 / FPS
    start, length = rng.uniform(0.1, 0.3) * duration, rng.uniform(1.2, 2.0)
    s = np.clip((t - start) / length, 0.0, 1.0)
    s = s * s * (3 - 2 * s)  # smoothstep: at rest, then seated
    pose.flexion["left_hip"] += 1.5 * s
    pose.flexion["right_hip"] += 1.5 * s
    pose.flexion["left_knee"] += 1.55 * s
    pose.flexion["right_knee"] += 1.55 * s
    pose.flexion["spine"] += 0.35 * s * (1.2 - 0.2 * np.cos(2 * np.pi * 0.3 * t))
    pose.flexion["left_shoulder"] += 0.4 * s
    pose.flexion["right_shoulder"] += 0.4 * s
    pose.flexion["left_elbow"] += 0.9 * s
    pose.flexion["right_elbow"] += 0.9 * s
    pose.root[:, 2] -= 400.0 * s
    pose.root[:, 1] -= 180.0 * s
    pose.yaw += rng.uniform(-0.5, 0.5)


MOTIONS: Dict[str, Callable] = {
    "Walking": _walk, "Turning": _turn, "Arms": _arms, "Legs": _legs, "SittingDown": _sit_down,
}


def skeleton_motion(action: str, frames: int, rng: np.random.Generator, bone_scale: float = 1.0) -> np.ndarray:
    """(frames, 17, 3) world joints in millimetres of one procedural `action` (a key of MOTIONS), with a
    slow random sway on top so no two sequences are alike."""
    if action not in MOTIONS:
        raise ValueError(f"action must be one of {sorted(MOTIONS)}, got {action!r}")
    t = np.arange(frames) / FPS
    pose = _Pose(frames)
    pose.yaw += rng.uniform(-np.pi, np.pi)  # facing, before the motion: walks go the way the body faces
    MOTIONS[action](pose, t, rng)
    for angles in (*pose.flexion.values(), *pose.abduction.values()):
        angles += 0.05 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    for name in ("left_knee", "right_knee", "left_elbow", "right_elbow"):
        np.maximum(pose.flexion[name], 0.0, out=pose.flexion[name])  # they only bend one way
    return pose.joints(REST_OFFSETS_MM * bone_scale)


def _camera(center: np.ndarray, rng: np.random.Generator):
    """A camera on a circle around `center` looking at it, with Human3.6M-like intrinsics."""
    name = str(rng.choice(sorted(H36M_CAMERA_RESOLUTIONS)))
    width, height = H36M_CAMERA_RESOLUTIONS[name]
    angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(5000, 7000)
    position = center + np.array([distance * np.cos(angle), distance * np.sin(angle), rng.uniform(-200, 900)])
    forward = center + np.array([0, 0, rng.uniform(-150, 150)]) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    focal = rng.uniform(1130, 1160)
    principal = np.array([width / 2, height / 2]) + rng.uniform(-10, 10, 2)
    return name, np.stack([right, down, forward]), position, focal, principal


def _view(world: np.ndarray, camera, rng: np.random.Generator, noise_px: float) -> Dict[str, np.ndarray]:
    """One camera's per-frame arrays in the MotionBERT layout for the (T, 17, 3) world joints."""
    name, rotation, position, focal, principal = camera
    cam = (world - position) @ rotation.T                                   # (T, 17, 3) mm, z forward
    pixels = focal * cam[..., :2] / cam[..., 2:] + principal
    factor = cam[:, 0, 2] / focal                                           # mm per pixel at the root
    depth = (cam[..., 2] - cam[:, :1, 2]) / factor[:, None]
    joint3d_image = np.concatenate([pixels, depth[..., None]], axis=-1)
    # A detector's errors: jitter, a few gross misses, and confidences that follow the error.
    error = rng.normal(0.0, noise_px, pixels.shape)
    misses = rng.random(pixels.shape[:2]) < 0.02
    error[misses] += rng.normal(0.0, 8 * noise_px, (int(misses.sum()), 2))
    distance = np.linalg.norm(error, axis=-1)
    confidence = np.clip(1.0 - distance / (12 * noise_px) + rng.normal(0, 0.05, distance.shape), 0.05, 1.0)
    return {
        "joint_2d": (pixels + error).astype(np.float32),
        "confidence": confidence[..., None].astype(np.float32),
        "joint3d_image": joint3d_image.astype(np.float32),
        "joints_2.5d_image": (joint3d_image * factor[:, None, None]).astype(np.float32),
        "2.5d_factor": factor.astype(np.float32),
        "camera_name": np.array([name] * len(world)),
    }


def _split(subjects: List[int], sequences: int, frames: tuple, views: int, noise_px: float,
           rng: np.random.Generator) -> Dict[str, np.ndarray]:
    actions = sorted(MOTIONS)
    parts: Dict[str, list] = {}
    for index in range(sequences):
        subject = subjects[index % len(subjects)]
        action = actions[index % len(actions)]
        length = int(rng.integers(frames[0], frames[1] + 1))
        world = skeleton_motion(action, length, rng, bone_scale=rng.normal(1.0, 0.05))
        center = world[:, 0].mean(axis=0)
        for view in range(views):
            arrays = _view(world, _camera(center, rng), rng, noise_px)
            arrays["source"] = np.array([f"s_{subject:02d}_act_{actions.index(action) + 2:02d}_"
                                         f"subact_{index:02d}_ca_{view + 1:02d}"] * length)
            arrays["action"] = np.array([action] * length)
            for key, value in arrays.items():
                parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}


def synthetic_h36m(train_sequences: int = 40, test_sequences: int = 10, frames=(250, 450), views: int = 2,
                   noise_px: float = 3.0, seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """The `train` and `test` dicts of a MotionBERT-format Human3.6M pickle, synthetic: subjects 1, 5, 6,
    7, 8 train and 9, 11 test (new bone lengths per sequence), every action in both, each sequence of
    `frames` (min, max) frames at 50 fps seen by `views` random cameras."""
    rng = np.random.default_rng(seed)
    return {
        "train": _split([1, 5, 6, 7, 8], train_sequences, frames, views, noise_px, rng),
        "test": _split([9, 11], test_sequences, frames, views, noise_px, rng),
    }


def write_synthetic_h36m(path: str, seed: int = 0, **options) -> str:
    """Writes synthetic_h36m(seed=seed, **options) to `path` as a pickle; returns the path."""
    with open(path, "wb") as file:
        pickle.dump(synthetic_h36m(seed=seed, **options), file, protocol=4)
    return path
