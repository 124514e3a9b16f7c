"""The training loop: checkpoints, logs, exact resume, evaluation of a checkpoint, the command line."""
import csv
import os

import pytest
import torch

from posemamba.cli import main
from posemamba.training import evaluate_checkpoint, load_config, train

TINY = ["data.kind=synthetic", "data.frames=9",
        "data.synthetic={train_sequences: 4, test_sequences: 2, frames: [40, 60], views: 1}",
        "model.overrides={dim: 16, depth: 1, drop_path_rate: 0.1}", "train.batch_size=8", "train.num_workers=0",
        "train.device=cpu", "train.lr=1e-3", "evaluate.batch_size=8"]


def tiny_config(tmp_path, name, *overrides):
    output = tmp_path / name
    return load_config("demo", [*TINY, f"output={output}", f"data.path={tmp_path / 'data.pkl'}",
                                "train.max_minutes=null", *overrides])


def quiet(*_):
    pass


def test_checkpoints_and_log(tmp_path):
    config = tiny_config(tmp_path, "run", "train.epochs=2")
    result = train(config, log=quiet)
    output = config["output"]
    state = torch.load(os.path.join(output, "latest.pth"), weights_only=True)
    assert {"model_pos", "optimizer", "epoch", "lr", "min_loss"} <= set(state)
    assert state["epoch"] == 2 and state["lr"] == pytest.approx(1e-3 * 0.99 ** 2)
    assert state["min_loss"] == pytest.approx(min(row["p1"] for row in result["history"]))
    with open(os.path.join(output, "log.csv")) as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["p1"]) > 0 for r in rows)
    # The best checkpoint scores what the log says it scored.
    best = evaluate_checkpoint(config, os.path.join(output, "best.pth"))
    assert best.p1 == pytest.approx(state["min_loss"], rel=1e-4)


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_config(tmp_path, "straight", "train.epochs=3"), log=quiet)["model"]
    train(tiny_config(tmp_path, "interrupted", "train.epochs=1"), log=quiet)
    messages = []
    resumed = train(tiny_config(tmp_path, "interrupted", "train.epochs=3"), resume=True, log=messages.append)["model"]
    assert any("resumed" in m and "epoch 1" in m for m in messages)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} differs after resuming")


def test_cli_train_and_evaluate(tmp_path, capsys):
    overrides = [arg for item in [*TINY, f"output={tmp_path / 'cli'}", f"data.path={tmp_path / 'data.pkl'}",
                                  "train.epochs=1"] for arg in ("--set", item)]
    assert main(["train", "--config", "demo", *overrides]) == 0
    assert main(["evaluate", "--config", "demo", "--checkpoint", str(tmp_path / "cli" / "best.pth"), *overrides]) == 0
    assert "average" in capsys.readouterr().out


def test_cli_names_bad_input(tmp_path, capsys):
    assert main(["train", "--config", "no_such_config"]) == 2
    assert "neither a file nor a bundled config" in capsys.readouterr().err
    assert main(["evaluate", "--config", "demo", "--checkpoint", str(tmp_path / "missing.pth"),
                 "--set", f"data.path={tmp_path / 'data.pkl'}", *[a for i in TINY for a in ("--set", i)]]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_bfloat16_autocast_trains(tmp_path):
    # The mixed-precision path GPUs take by default, forced on the CPU: the projections come out of
    # autocast in bfloat16 and the fused scan takes them in its half-type kernels.
    result = train(tiny_config(tmp_path, "amp", "train.epochs=1", "train.amp=true"), log=quiet)
    assert all(torch.isfinite(p).all() for p in result["model"].parameters())
    assert 0 < result["history"][0]["train_loss"] < 10 and result["best_p1"] < 1e4
    with pytest.raises(ValueError, match="train.amp must be auto, true or false"):
        train(tiny_config(tmp_path, "amp2", "train.epochs=1", "train.amp=sometimes"), log=quiet)
