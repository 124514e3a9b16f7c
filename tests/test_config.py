"""Run configurations: bundled YAML, overrides, and errors that name the bad key."""
import pytest

from posemamba.training.config import DEFAULTS, load_config


@pytest.mark.parametrize("name, preset", [("h36m_s", "S"), ("h36m_b", "B"), ("h36m_l", "L")])
def test_bundled_official_recipes(name, preset):
    config = load_config(name)
    assert config["model"]["preset"] == preset
    assert config["data"]["frames"] == 243
    train = config["train"]
    assert (train["lr"], train["weight_decay"], train["lr_decay"], train["epochs"]) == (2e-4, 0.01, 0.99, 120)
    assert (train["lambda_3d"], train["lambda_scale"], train["lambda_velocity"], train["lambda_diff"]) == (1, 0.5, 20, 0.5)


def test_overrides_parse_values_and_merge_free_form_keys():
    config = load_config("demo", ["train.epochs=7", "train.lr=1e-3", "train.max_minutes=1.5", "model.overrides.depth=1",
                                  "data.with_confidence=true"])
    assert config["train"]["epochs"] == 7
    assert load_config("demo", ["train.max_minutes=null"])["train"]["max_minutes"] is None
    assert config["train"]["lr"] == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert config["train"]["max_minutes"] == 1.5  # typed by the default (None: any), not by demo.yaml's 3
    assert config["model"]["overrides"] == {"dim": 32, "depth": 1, "drop_path_rate": 0.0}
    assert config["data"]["with_confidence"] is True
    assert load_config()["train"] == DEFAULTS["train"]


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=3"], "unknown key 'train.epoch'"),
    (["train.epochs"], "section.key=value"),
    (["train=3"], "'train' must be a mapping"),
    (["train.lr=fast"], "'train.lr' must be a number"),
    (["train.epochs=2.5"], "must be a whole number"),
    (["train.flip=1"], "must be true or false"),
    (["train.batch_size=0"], r"demo: 'train.batch_size' must be >= 1, got 0"),
    (["train.lr=0"], r"demo: 'train.lr' must be > 0, got 0"),
    (["train.max_minutes=-1"], r"'train.max_minutes' must be >= 0, got -1"),
    (["evaluate.every=0"], r"'evaluate.every' must be >= 1, got 0"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo", overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a bundled config"):
        load_config("h36m_xl")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(broken))
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  presett: B\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown key 'model.presett'"):
        load_config(str(typo))
