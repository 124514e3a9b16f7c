"""`posemamba train | evaluate | demo`: the command line over posemamba.training."""
import argparse
import os
import sys
import time
from typing import List, Optional

__all__ = ["main"]


def _config(args):
    from .training import load_config

    return load_config(args.config, args.set or [])


def _train(args) -> int:
    from .training import train

    result = train(_config(args), resume=args.resume)
    print(f"best P1 {result['best_p1']:.1f} mm")
    return 0


def _evaluate(args) -> int:
    from .training import evaluate_checkpoint, format_table

    print(format_table(evaluate_checkpoint(_config(args), args.checkpoint)))
    return 0


def _demo(args) -> int:
    """Synthetic data, the untrained model's score, a few minutes of training, the trained model's score."""
    import torch

    from .training import build_datasets, build_model, evaluate, format_table, load_config, train

    overrides = [f"output={args.output}", f"data.path={os.path.join(args.output, 'synthetic_h36m.pkl')}",
                 f"train.max_minutes={args.minutes}", *(args.set or [])]
    config = load_config("demo", overrides)
    torch.manual_seed(config["train"]["seed"])
    _, test_set = build_datasets(config)
    untrained = evaluate(config, build_model(config), test_set)
    print(f"untrained model: P1 {untrained.p1:.1f} mm, P2 {untrained.p2:.1f} mm")
    started = time.perf_counter()
    result = train(config)
    trained = evaluate(config, result["model"], test_set)
    print(f"\nafter {(time.perf_counter() - started) / 60:.1f} minutes of training "
          f"({len(result['history'])} epochs), synthetic Human3.6M test set:")
    print(format_table(trained))
    print(f"P1 {untrained.p1:.1f} -> {trained.p1:.1f} mm, P2 {untrained.p2:.1f} -> {trained.p2:.1f} mm")
    if not trained.p1 < 0.5 * untrained.p1:
        print("the trained model did not halve the untrained model's error", file=sys.stderr)
        return 1
    return 0


def _output_paths(prefix: str):
    """PREFIX.npz and PREFIX.json, whether or not the prefix already ends in one of them."""
    base, extension = os.path.splitext(prefix)
    base = base if extension.lower() in (".npz", ".json") else prefix
    return base + ".npz", base + ".json"


def _lift(args) -> int:
    """Keypoint file -> checked, filled, normalised -> lifted -> npz and JSON (written only at the end)."""
    import json

    import numpy as np
    import torch

    from .keypoints import H36M_JOINTS, fill_missing, load_keypoints, normalise_by_image
    from .lifting import lift_sequence, model_from_checkpoint, scale_to_height

    sequence = load_keypoints(args.keypoints, args.format, tuple(args.image_size) if args.image_size else None)
    if sequence.image_size is None:
        raise ValueError(f"{args.keypoints}: the file gives no image size; pass --image-size WIDTH HEIGHT")
    sequence = fill_missing(sequence, args.min_confidence)
    model = model_from_checkpoint(args.checkpoint)
    inputs = normalise_by_image(sequence.pixels, sequence.image_size)
    if model.in_chans == 3:
        inputs = np.concatenate([inputs, sequence.confidence[..., None]], axis=-1)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    joints = lift_sequence(model, inputs, flip=args.flip, batch_size=args.batch_size, device=device)
    npz_path, json_path = _output_paths(args.output)
    units = "root-relative, in the model's normalised units: half the image width is 1"
    if args.height_mm is not None:
        joints = scale_to_height(joints, args.height_mm)
        units = f"root-relative millimetres, scaled so that the ankle-to-head-top bones sum to {args.height_mm:g}"
    np.savez(npz_path, keypoints_3d=joints, keypoints_2d=sequence.pixels.astype(np.float32),
             confidence=sequence.confidence.astype(np.float32), image_size=np.array(sequence.image_size),
             joint_names=np.array(H36M_JOINTS), units=np.array(units))
    with open(json_path, "w") as file:
        json.dump({"joint_names": list(H36M_JOINTS), "units": units, "image_size": list(sequence.image_size),
                   "keypoints_3d": np.round(joints, 5).tolist()}, file)
    print(f"lifted {len(joints)} frames ({sequence.source_format}) -> {npz_path}, {json_path}")
    return 0


def _render(args) -> int:
    import numpy as np

    from .render import render_animation, render_png

    try:
        with np.load(args.lifted) as archive:
            pixels, joints = archive["keypoints_2d"], archive["keypoints_3d"]
            image_size = tuple(int(v) for v in archive["image_size"])
    except FileNotFoundError:
        raise FileNotFoundError(f"lifted file not found: {args.lifted}") from None
    except KeyError as error:
        raise ValueError(f"{args.lifted}: not a 'posemamba lift' output (no {error})") from None
    if args.output:
        render_animation(args.output, pixels, joints, image_size, fps=args.fps)
        print(f"wrote {args.output}")
    if args.png:
        render_png(args.png, pixels, joints, image_size, args.frames or [0, len(pixels) // 2, len(pixels) - 1])
        print(f"wrote {args.png}")
    if not (args.output or args.png):
        raise ValueError("nothing to write: give -o ANIMATION.gif|.mp4 and/or --png FILE.png")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posemamba", description="PoseMamba: 2D keypoint sequences to 3D poses.")
    commands = parser.add_subparsers(dest="command", required=True)
    overrides = dict(action="append", metavar="SECTION.KEY=VALUE",
                     help="override a config value, e.g. --set train.epochs=10 (repeatable)")

    train = commands.add_parser("train", help="train per a config")
    train.add_argument("--config", required=True, help="a YAML file, or a bundled config: h36m_{s,b,l}, mpi_3dhp_{s,b,l}, demo")
    train.add_argument("--set", **overrides)
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/latest.pth when it exists")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="P1/P2 per action of a checkpoint on the config's test split")
    evaluate.add_argument("--config", required=True)
    evaluate.add_argument("--checkpoint", required=True, help="official (model_pos) or posemamba weights")
    evaluate.add_argument("--set", **overrides)
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="synthetic data, a few minutes of CPU training, the P1/P2 table")
    demo.add_argument("--output", default="runs/demo", help="folder for the data, checkpoints and log")
    demo.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    demo.add_argument("--set", **overrides)
    demo.set_defaults(run=_demo)

    from .keypoints import FORMATS

    lift = commands.add_parser("lift", help="lift a detector's 2D keypoints file to 3D (npz and JSON)")
    lift.add_argument("keypoints", help="MMPose/RTMPose or COCO JSON, ultralytics, MediaPipe, H36M/COCO npz, or CSV")
    lift.add_argument("--checkpoint", required=True, help="trained PoseMamba weights (official or posemamba's)")
    lift.add_argument("-o", "--output", required=True, help="output path prefix: writes PREFIX.npz and PREFIX.json")
    lift.add_argument("--format", choices=FORMATS, default="auto")
    lift.add_argument("--image-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                      help="the video's size in pixels (when the file does not say)")
    lift.add_argument("--min-confidence", type=float, default=0.3,
                      help="keypoints below this confidence are treated as missing and interpolated")
    lift.add_argument("--flip", action="store_true", help="average with the mirrored input's prediction")
    lift.add_argument("--height-mm", type=float,
                      help="scale the output to millimetres: the person's ankle-to-head-top length along the "
                           "bones (about their height less 6 cm)")
    lift.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    lift.add_argument("--batch-size", type=int, default=8)
    lift.set_defaults(run=_lift)

    render = commands.add_parser("render", help="draw a lifted sequence: 2D input beside the turning 3D skeleton")
    render.add_argument("lifted", help="the .npz that 'posemamba lift' wrote")
    render.add_argument("-o", "--output", help="animation to write: .gif, or .mp4 (needs ffmpeg)")
    render.add_argument("--png", help="a PNG of chosen frames, one row each")
    render.add_argument("--frames", type=int, nargs="+", help="frames for the PNG (default: first, middle, last)")
    render.add_argument("--fps", type=int, default=25)
    render.set_defaults(run=_render)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"posemamba {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
