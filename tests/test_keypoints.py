"""Reading detectors' keypoint files into one person's Human3.6M-17 sequence."""
import csv
import json

import numpy as np
import pytest

from posemamba.keypoints import (COCO_JOINTS, H36M_JOINTS, coco_to_h36m, fill_missing, load_keypoints,
                                 normalise_by_image)


def coco_person(frames, offset=0.0, seed=0):
    """(frames, 17, 3) COCO keypoints in pixels with scores: a person near x = 300 + offset."""
    rng = np.random.default_rng(seed)
    base = np.stack([np.linspace(280, 320, 17), np.linspace(100, 400, 17)], axis=-1) + [offset, 0]
    pixels = base + rng.normal(0, 1, (frames, 17, 2)) + np.arange(frames)[:, None, None]
    return np.concatenate([pixels, rng.uniform(0.6, 1.0, (frames, 17, 1))], axis=-1)


def test_coco_to_h36m_by_hand():
    coco = np.zeros((17, 3))
    coco[:, 0] = np.arange(17)
    coco[:, 2] = 1.0
    coco[11, 2], coco[12, 2] = 0.4, 0.9
    h36m = coco_to_h36m(coco)
    assert h36m[0, 0] == 11.5 and h36m[0, 2] == 0.4          # pelvis: mid-hip, the lower confidence
    assert h36m[8, 0] == 5.5 and h36m[7, 0] == (11.5 + 5.5) / 2 and h36m[10, 0] == 1.5 and h36m[9, 0] == 0
    assert [h36m[j, 0] for j in (1, 2, 3, 4, 5, 6)] == [12, 14, 16, 11, 13, 15]
    assert [h36m[j, 0] for j in (11, 12, 13, 14, 15, 16)] == [5, 7, 9, 6, 8, 10]


def test_mmpose_json_follows_one_person(tmp_path):
    main, other = coco_person(6), coco_person(6, offset=400, seed=1)
    other[..., 2] = 0.2  # the bystander is less confident, so the main person is picked first
    frames = []
    for f in range(6):
        people = [other[f], main[f]] if f % 2 else [main[f], other[f]]  # order changes between frames
        if f == 3:
            people = []                                                    # a frame without detections
        frames.append({"frame_id": f, "instances": [{"keypoints": p[:, :2].tolist(),
                                                    "keypoint_scores": p[:, 2].tolist()} for p in people]})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta_info": {}, "instance_info": frames}))
    sequence = load_keypoints(str(path))
    assert sequence.source_format == "mmpose" and sequence.pixels.shape == (6, 17, 2)
    expected = coco_to_h36m(main)
    np.testing.assert_allclose(sequence.pixels[[0, 1, 2, 4, 5]], expected[[0, 1, 2, 4, 5], :, :2])
    assert np.isnan(sequence.pixels[3]).all() and (sequence.confidence[3] == 0).all()
    filled = fill_missing(sequence)
    np.testing.assert_allclose(filled.pixels[3], 0.5 * (expected[2, :, :2] + expected[4, :, :2]))


def test_coco_json_ultralytics_json_and_npz(tmp_path):
    person = coco_person(4)
    coco = {"images": [{"id": i, "width": 640, "height": 480} for i in range(4)],
            "annotations": [{"image_id": i, "category_id": 1, "keypoints": person[i].reshape(-1).tolist()}
                            for i in range(4)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    ultra = [[{"name": "person", "keypoints": {"x": p[:, 0].tolist(), "y": p[:, 1].tolist(),
                                               "visible": p[:, 2].tolist()}}] for p in person]
    (tmp_path / "ultra.json").write_text(json.dumps(ultra))
    np.savez(tmp_path / "ultra.npz", keypoints=person[:, None], image_size=np.array([640, 480]))
    expected = coco_to_h36m(person)
    for name, fmt in (("coco.json", "coco-json"), ("ultra.json", "ultralytics"), ("ultra.npz", "ultralytics")):
        sequence = load_keypoints(str(tmp_path / name), "auto" if name.endswith("json") else fmt)
        np.testing.assert_allclose(sequence.pixels, expected[..., :2], err_msg=name)
        np.testing.assert_allclose(sequence.confidence, expected[..., 2], err_msg=name)
    assert load_keypoints(str(tmp_path / "coco.json")).image_size == (640, 480)
    assert load_keypoints(str(tmp_path / "ultra.npz"), "coco-npz").image_size == (640, 480)


def test_mediapipe_h36m_npz_and_csv(tmp_path):
    landmarks = np.random.default_rng(0).uniform(0.2, 0.8, (5, 33, 4))
    np.savez(tmp_path / "mp.npz", landmarks=landmarks)
    with pytest.raises(ValueError, match="give the image size"):
        load_keypoints(str(tmp_path / "mp.npz"))
    sequence = load_keypoints(str(tmp_path / "mp.npz"), image_size=(1280, 720))
    assert sequence.source_format == "mediapipe"
    np.testing.assert_allclose(sequence.pixels[:, 1], landmarks[:, 24, :2] * [1280, 720])   # right hip
    frames = [[{"x": x, "y": y, "visibility": v} for x, y, _, v in frame] for frame in landmarks]
    (tmp_path / "mp.json").write_text(json.dumps({"image_size": [1280, 720], "frames": frames}))
    np.testing.assert_allclose(load_keypoints(str(tmp_path / "mp.json")).pixels, sequence.pixels)

    h36m = np.random.default_rng(1).uniform(0, 500, (3, 17, 2))
    np.savez(tmp_path / "h36m.npz", keypoints=h36m)
    with pytest.raises(ValueError, match="Say format coco-npz or h36m-npz"):
        load_keypoints(str(tmp_path / "h36m.npz"))
    np.testing.assert_allclose(load_keypoints(str(tmp_path / "h36m.npz"), "h36m-npz").pixels, h36m)
    np.savez(tmp_path / "tagged.npz", keypoints=h36m, layout="h36m")
    np.testing.assert_allclose(load_keypoints(str(tmp_path / "tagged.npz")).pixels, h36m)

    for names, expected in ((H36M_JOINTS, h36m), (COCO_JOINTS, coco_to_h36m(h36m)[..., :2])):
        with open(tmp_path / "points.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([f"{n}_{a}" for n in names for a in "xy"])
            writer.writerows(frame.reshape(-1).tolist() for frame in h36m)
        np.testing.assert_allclose(load_keypoints(str(tmp_path / "points.csv")).pixels, expected)


@pytest.mark.parametrize("name, content, message", [
    ("empty.json", "", "the file is empty"),
    ("broken.json", "[{", "not valid JSON"),
    ("points.txt", "1,2", "unknown keypoint file type"),
    ("few.json", json.dumps([{"instances": [{"keypoints": [[0, 0]] * 16}]}]), "must hold 17 COCO keypoints"),
    ("bad.csv", "a,b\n1,2\n", "needs columns <joint>_x"),
])
def test_bad_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_keypoints(str(path))


def test_missing_everywhere_and_normalisation():
    from posemamba.keypoints import KeypointSequence

    pixels = np.ones((4, 17, 2))
    pixels[:, 3] = np.nan
    with pytest.raises(ValueError, match="joint 'right_ankle' is never detected"):
        fill_missing(KeypointSequence(pixels, np.ones((4, 17)), (100, 100), "test"))
    np.testing.assert_allclose(normalise_by_image(np.array([[0.0, 0.0], [1000, 1002]]), (1000, 1002)),
                               [[-1.0, -1.002], [1.0, 1.002]])
