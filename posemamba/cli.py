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
