"""A detector's 2D keypoints, from the files the common detectors write, as one person's Human3.6M-17
sequence ready for the model.

Formats (`format=`, or "auto" from the file's extension and contents):
- "mmpose": MMPose / RTMPose JSON results, a list of frames (or {"instance_info": [...]}) each with
  "instances" holding COCO-17 "keypoints" and "keypoint_scores".
- "coco-json": COCO-style results, a list of {"image_id", "keypoints": [x, y, score] * 17}, one frame
  per image_id (in sorted order), several people per frame allowed.
- "ultralytics": ultralytics pose results saved as JSON (per frame, a list of detections with
  "keypoints": {"x": [...], "y": [...], "visible": [...]}) or as npz (below, COCO-17 layout).
- "mediapipe": MediaPipe Pose's 33 landmarks, x and y in [0, 1] of the image, as npz ("landmarks"
  (frames, 33, 3 or 4)) or JSON (a list of frames, each a list of 33 {"x", "y", "visibility"}).
- "coco-npz" / "h36m-npz": npz with "keypoints" (frames, 17, 2 or 3) or (frames, people, 17, 2 or 3),
  the third channel a confidence; an npz saying "layout" = "coco" or "h36m" is recognised as such.
- "csv": one row per frame, columns "<joint>_x", "<joint>_y" and optionally "<joint>_score", joints
  named by COCO's or Human3.6M's names (see COCO_JOINTS, H36M_JOINTS).
npz files may carry "image_size" (width, height); JSON files may carry it as "image_size" or COCO's
"images" list.
"""
import csv
import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .data.screen import screen_coordinates

__all__ = ["COCO_JOINTS", "H36M_JOINTS", "FORMATS", "KeypointSequence", "coco_to_h36m", "mediapipe_to_h36m",
           "load_keypoints", "fill_missing", "normalise_by_image"]

COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle")
H36M_JOINTS = ("pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "spine",
               "thorax", "neck", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
               "right_elbow", "right_wrist")
FORMATS = ("auto", "mmpose", "coco-json", "ultralytics", "mediapipe", "coco-npz", "h36m-npz", "csv")


@dataclass
class KeypointSequence:
    """One person's keypoints in Human3.6M-17 order: pixels (frames, 17, 2), NaN where missing, and
    confidences (frames, 17), 0 where missing."""
    pixels: np.ndarray
    confidence: np.ndarray
    image_size: Optional[Tuple[int, int]]
    source_format: str


def _midpoint(a, b):
    return 0.5 * (a + b)


def coco_to_h36m(coco: np.ndarray) -> np.ndarray:
    """(..., 17, C) COCO-17 to Human3.6M-17, the usual way: the pelvis is the mid-hip, the thorax the
    mid-shoulder, the spine halfway between them, the head the mid-eye, the neck (H36M's joint 9) the
    nose. A channel beyond x, y (a confidence) of a derived joint is the lower of its sources'."""
    h36m = np.empty(coco.shape[:-2] + (17, coco.shape[-1]), dtype=np.float64)
    pick = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 9: 0, 11: 5, 12: 7, 13: 9, 14: 6, 15: 8, 16: 10}
    for target, source in pick.items():
        h36m[..., target, :] = coco[..., source, :]
    derived = {0: (11, 12), 8: (5, 6), 10: (1, 2)}
    for target, (a, b) in derived.items():
        h36m[..., target, :2] = _midpoint(coco[..., a, :2], coco[..., b, :2])
        h36m[..., target, 2:] = np.minimum(coco[..., a, 2:], coco[..., b, 2:])
    h36m[..., 7, :2] = _midpoint(h36m[..., 0, :2], h36m[..., 8, :2])
    h36m[..., 7, 2:] = np.minimum(h36m[..., 0, 2:], h36m[..., 8, 2:])
    return h36m


# MediaPipe Pose's landmark indices of the COCO-17 joints (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles).
_MEDIAPIPE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def mediapipe_to_h36m(landmarks: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
    """(frames, 33, 3 or 4) MediaPipe landmarks (x, y in [0, 1], z, visibility) to (frames, 17, 3)
    Human3.6M-17 pixels and confidence (the visibility, or 1)."""
    width, height = image_size
    coco = np.empty(landmarks.shape[:-2] + (17, 3))
    coco[..., 0] = landmarks[..., _MEDIAPIPE_TO_COCO, 0] * width
    coco[..., 1] = landmarks[..., _MEDIAPIPE_TO_COCO, 1] * height
    coco[..., 2] = landmarks[..., _MEDIAPIPE_TO_COCO, 3] if landmarks.shape[-1] >= 4 else 1.0
    return coco_to_h36m(coco)


def _with_confidence(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] == 2:
        points = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
    return points[..., :3]


def _pick_track(frames: List[np.ndarray]) -> np.ndarray:
    """One person per frame from each frame's (people, 17, 3) candidates: the most confident person
    first, then in each frame the candidate nearest the previous pick (a missing frame keeps the last
    position). Frames without candidates become NaN with confidence 0."""
    out = np.full((len(frames), 17, 3), np.nan)
    out[..., 2] = 0.0
    previous = None
    for index, people in enumerate(frames):
        if len(people) == 0:
            continue
        if previous is None:
            choice = int(np.argmax([np.nan_to_num(p[:, 2]).mean() for p in people]))
        else:
            centres = np.array([np.nanmean(p[:, :2], axis=0) for p in people])
            choice = int(np.argmin(np.linalg.norm(centres - previous, axis=-1)))
        out[index] = people[choice]
        previous = np.nanmean(people[choice][:, :2], axis=0)
    return out


def _fail(path: str, message: str):
    raise ValueError(f"{path}: {message}")


def _json_image_size(path, data) -> Optional[Tuple[int, int]]:
    if isinstance(data, dict):
        if "image_size" in data:
            width, height = data["image_size"]
            return int(width), int(height)
        images = data.get("images")
        if images and {"width", "height"} <= set(images[0]):
            return int(images[0]["width"]), int(images[0]["height"])
    return None


def _coco_array(path: str, keypoints, what: str) -> np.ndarray:
    array = np.asarray(keypoints, dtype=np.float64)
    if array.ndim == 1:
        if array.size % 17:
            _fail(path, f"{what} has {array.size} numbers, not 17 keypoints")
        array = array.reshape(17, -1)
    if array.shape[0] != 17 or array.shape[-1] not in (2, 3):
        _fail(path, f"{what} must hold 17 COCO keypoints of (x, y) or (x, y, score), got shape {array.shape}")
    return _with_confidence(array)


def _load_mmpose(path, data):
    frames = data.get("instance_info") if isinstance(data, dict) else data
    if not isinstance(frames, list) or not all(isinstance(f, dict) and "instances" in f for f in frames):
        _fail(path, "not MMPose results: expected a list of frames (or 'instance_info') with 'instances'")
    per_frame = []
    for f, frame in enumerate(frames):
        people = []
        for i, instance in enumerate(frame["instances"]):
            where = f"frame {f} instance {i}"
            if "keypoints" not in instance:
                _fail(path, f"{where} has no 'keypoints'")
            points = _coco_array(path, instance["keypoints"], f"{where} 'keypoints'")
            if "keypoint_scores" in instance:
                scores = np.asarray(instance["keypoint_scores"], dtype=np.float64).reshape(-1)
                if scores.shape != (17,):
                    _fail(path, f"{where} 'keypoint_scores' must hold 17 scores, got {scores.shape}")
                points[:, 2] = scores
            people.append(points)
        per_frame.append(np.array(people).reshape(-1, 17, 3))
    return per_frame


def _load_coco_json(path, data):
    detections = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(detections, list) or not all(isinstance(d, dict) and "keypoints" in d for d in detections):
        _fail(path, "not COCO keypoint results: expected a list of {'image_id', 'keypoints'}")
    by_image = {}
    for i, detection in enumerate(detections):
        by_image.setdefault(detection.get("image_id", 0), []).append(
            _coco_array(path, detection["keypoints"], f"detection {i} 'keypoints'"))
    return [np.array(by_image[key]) for key in sorted(by_image)]


def _load_ultralytics_json(path, data):
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list):
        _fail(path, "not ultralytics results: expected a list of frames, each a list of detections")
    per_frame = []
    for f, detections in enumerate(frames):
        people = []
        for i, detection in enumerate(detections if isinstance(detections, list) else []):
            keypoints = detection.get("keypoints") if isinstance(detection, dict) else None
            if not isinstance(keypoints, dict) or not {"x", "y"} <= set(keypoints):
                _fail(path, f"frame {f} detection {i} needs 'keypoints' with 'x' and 'y' lists")
            columns = [keypoints["x"], keypoints["y"], keypoints.get("visible", [1.0] * len(keypoints["x"]))]
            people.append(_coco_array(path, np.stack(columns, axis=-1), f"frame {f} detection {i}"))
        per_frame.append(np.array(people).reshape(-1, 17, 3))
    return per_frame


def _load_mediapipe_json(path, data, image_size):
    frames = data.get("frames") if isinstance(data, dict) else data
    landmarks = []
    for f, frame in enumerate(frames):
        if frame is None or len(frame) == 0:
            landmarks.append(np.full((33, 4), np.nan))
            continue
        if len(frame) != 33:
            _fail(path, f"frame {f} has {len(frame)} landmarks; MediaPipe Pose has 33")
        landmarks.append([[p["x"], p["y"], p.get("z", 0.0), p.get("visibility", 1.0)] for p in frame])
    return mediapipe_to_h36m(np.asarray(landmarks, dtype=np.float64), image_size)


def _read_csv(path):
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        _fail(path, "no rows")
    columns = set(rows[0])
    for layout, names in (("h36m", H36M_JOINTS), ("coco", COCO_JOINTS)):
        if {f"{name}_{axis}" for name in names for axis in "xy"} <= columns:
            break
    else:
        _fail(path, "needs columns <joint>_x and <joint>_y for all 17 joints, named as in COCO_JOINTS or H36M_JOINTS")
    points = np.full((len(rows), 17, 3), np.nan)
    for r, row in enumerate(rows):
        for j, name in enumerate(names):
            values = [row.get(f"{name}_x", ""), row.get(f"{name}_y", ""), row.get(f"{name}_score", "1")]
            try:
                points[r, j] = [float(v) if v not in ("", None) else np.nan for v in values]
            except ValueError:
                _fail(path, f"row {r + 1}, joint {name}: not a number in {values}")
    return points, layout


def load_keypoints(path: str, format: str = "auto", image_size: Optional[Tuple[int, int]] = None) -> KeypointSequence:
    """Reads one person's 2D keypoints from a detector's file (see the module's formats) as Human3.6M-17
    pixels and confidences. `image_size` (width, height) overrides the file's; it is needed where the
    file gives normalised coordinates (MediaPipe) or no size at all (later, for normalising)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"keypoint file not found: {path}")
    if os.path.getsize(path) == 0:
        _fail(path, "the file is empty")
    extension = os.path.splitext(path)[1].lower()
    file_size = None
    if extension == ".csv" or format == "csv":
        points, layout = _read_csv(path)
        h36m, chosen = (points if layout == "h36m" else coco_to_h36m(points)), "csv"
    elif extension == ".json" or format in ("mmpose", "coco-json"):
        try:
            with open(path) as file:
                data = json.load(file)
        except json.JSONDecodeError as error:
            _fail(path, f"not valid JSON ({error})")
        file_size = _json_image_size(path, data)
        chosen = format if format != "auto" else _detect_json(path, data)
        if chosen == "mediapipe":
            if (image_size or file_size) is None:
                _fail(path, "MediaPipe landmarks are normalised: give the image size (width, height)")
            h36m = _load_mediapipe_json(path, data, image_size or file_size)
        else:
            loader = {"mmpose": _load_mmpose, "coco-json": _load_coco_json, "ultralytics": _load_ultralytics_json}
            if chosen not in loader:
                _fail(path, f"format {chosen!r} is not a JSON format")
            h36m = coco_to_h36m(_pick_track(loader[chosen](path, data)))
    elif extension == ".npz":
        h36m, chosen, file_size = _load_npz(path, format, image_size)
    else:
        _fail(path, f"unknown keypoint file type {extension!r}: expected .json, .npz or .csv")
    if len(h36m) == 0:
        _fail(path, "no frames")
    pixels, confidence = h36m[..., :2].astype(np.float64), np.nan_to_num(h36m[..., 2], nan=0.0)
    confidence = np.where(np.isnan(pixels).any(axis=-1), 0.0, confidence)
    return KeypointSequence(pixels, confidence, tuple(image_size) if image_size else file_size, chosen)


def _detect_json(path, data) -> str:
    frames = data.get("instance_info", data.get("frames", data.get("annotations"))) if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames:
        _fail(path, "no frames: expected a non-empty list of frames or detections")
    first = next((f for f in frames if f), None)
    if isinstance(first, dict) and "instances" in first:
        return "mmpose"
    if isinstance(first, dict) and "keypoints" in first:
        return "coco-json"
    if isinstance(first, list) and first and isinstance(first[0], dict):
        if "keypoints" in first[0]:
            return "ultralytics"
        if {"x", "y"} <= set(first[0]):
            return "mediapipe"
    _fail(path, "unrecognised JSON layout; name the format (mmpose, coco-json, ultralytics, mediapipe)")


def _load_npz(path, format, image_size):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # a damaged or foreign file
        _fail(path, f"not a readable npz ({type(error).__name__}: {error})")
    file_size = tuple(int(v) for v in arrays["image_size"]) if "image_size" in arrays else None
    if "landmarks" in arrays or format == "mediapipe":
        landmarks = arrays.get("landmarks", arrays.get("keypoints"))
        if landmarks is None or landmarks.ndim != 3 or landmarks.shape[1:2] != (33,) or landmarks.shape[2] < 2:
            _fail(path, "MediaPipe npz needs 'landmarks' (frames, 33, 3 or 4)")
        if (image_size or file_size) is None:
            _fail(path, "MediaPipe landmarks are normalised: give the image size (width, height)")
        return mediapipe_to_h36m(landmarks.astype(np.float64), image_size or file_size), "mediapipe", file_size
    if "keypoints" not in arrays:
        _fail(path, f"no 'keypoints' array (found {sorted(arrays)})")
    keypoints = arrays["keypoints"].astype(np.float64)
    if keypoints.ndim not in (3, 4) or keypoints.shape[-2] != 17 or keypoints.shape[-1] not in (2, 3):
        _fail(path, f"'keypoints' must be (frames, 17, 2 or 3) or (frames, people, 17, 2 or 3), got {keypoints.shape}")
    layout = str(arrays["layout"]) if "layout" in arrays else None
    chosen = {"coco-npz": "coco", "ultralytics": "coco", "h36m-npz": "h36m"}.get(format, layout)
    if chosen not in ("coco", "h36m"):
        _fail(path, "17 joints in COCO's or Human3.6M's order? Say format coco-npz or h36m-npz, or store "
                    "layout='coco' or 'h36m' in the file")
    keypoints = _with_confidence(keypoints)
    if keypoints.ndim == 4:
        keypoints = _pick_track([people[~np.isnan(people[..., :2]).all(axis=(1, 2))] for people in keypoints])
    h36m = keypoints if chosen == "h36m" else coco_to_h36m(keypoints)
    return h36m, f"{chosen}-npz" if format == "auto" else format, file_size


def fill_missing(sequence: KeypointSequence, min_confidence: float = 0.3) -> KeypointSequence:
    """Joints missing or below `min_confidence` are filled per joint by linear interpolation over time
    from the nearest good frames (the first and last good values held at the ends). Fails if a joint
    is never seen well."""
    pixels = sequence.pixels.copy()
    good = (sequence.confidence >= min_confidence) & ~np.isnan(pixels).any(axis=-1)
    frames = np.arange(len(pixels))
    for joint in range(17):
        known = good[:, joint]
        if not known.any():
            name = H36M_JOINTS[joint]
            raise ValueError(f"joint '{name}' is never detected with confidence >= {min_confidence}: "
                             "nothing to fill it from")
        for axis in range(2):
            pixels[:, joint, axis] = np.interp(frames, frames[known], pixels[known, joint, axis])
    confidence = np.where(good, sequence.confidence, 0.0)
    return KeypointSequence(pixels, confidence, sequence.image_size, sequence.source_format)


def normalise_by_image(pixels: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Pixels to the model's screen coordinates, as in training (posemamba.data.screen)."""
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {tuple(image_size)}")
    return screen_coordinates(pixels, width, height)
