"""Run configurations: YAML files (the bundled ones by name, or any path) over the defaults below,
then `section.key=value` overrides from the command line. Unknown keys are errors, so a typo never
silently trains with a default."""
import copy
import os
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ["DEFAULTS", "BUNDLED_CONFIGS", "load_config", "apply_overrides"]

BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "data": {
        # h36m_pickle: a MotionBERT-format pickle at path; synthetic: one generated there first;
        # videopose3d: VideoPose3D's npz files in the folder path; mpi_inf_3dhp: the 3DHP npz folder
        "kind": "h36m_pickle",
        "path": "data/motion3d/h36m_sh_conf_cam_source_final.pkl",
        "keypoints": "cpn_ft_h36m_dbb",  # videopose3d: which data_2d_h36m_<keypoints>.npz
        "frames": 243,
        "train_stride": None,       # None: frames // 3
        "with_confidence": False,   # the detector confidence as a third input channel
        "synthetic": {},            # options of posemamba.data.synthetic.synthetic_h36m
    },
    "model": {
        "preset": "S",
        "overrides": {},            # any PoseMamba argument: dim, depth, drop_path_rate, backend, ...
    },
    "train": {
        "epochs": 120,
        "batch_size": 16,
        "lr": 2.0e-4,
        "weight_decay": 0.01,
        "lr_decay": 0.99,           # lr multiplied by this after every epoch
        "flip": True,               # horizontal flip augmentation, half of the clips
        "seed": 0,
        "num_workers": 2,
        "amp": "auto",              # bfloat16 autocast: auto (on GPUs only), true (any device), false
        "max_minutes": None,        # stop at the first epoch end past this wall time
        "lambda_3d": 1.0,
        "lambda_scale": 0.5,
        "lambda_velocity": 20.0,
        "lambda_diff": 0.5,
        "device": "auto",           # auto: cuda when available
    },
    "evaluate": {
        "every": 1,                 # epochs between evaluations
        "flip": True,               # test-time flip averaging
        "batch_size": 16,
    },
    "output": "runs/posemamba",
}


# Mappings whose keys are free (passed on as keyword arguments), merged key by key without checks.
_FREE_FORM = {"data.synthetic", "model.overrides"}


def _merge(base: Dict[str, Any], update: Dict[str, Any], where: str, source: str) -> None:
    for key, value in update.items():
        dotted = f"{where}{key}"
        if key not in base:
            raise ValueError(f"{source}: unknown key '{dotted}'; known: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
            if dotted in _FREE_FORM:
                base[key].update(value)
            else:
                _merge(base[key], value, f"{dotted}.", source)
        else:
            base[key] = _coerce(_default_at(dotted), value, dotted, source)


def _default_at(dotted: str) -> Any:
    node: Any = DEFAULTS
    for part in dotted.split("."):
        node = node[part]
    return node


def _coerce(default: Any, value: Any, dotted: str, source: str) -> Any:
    """`value` checked against the type of DEFAULTS' value (None: any type). Numbers written like 1e-3 arrive from YAML 1.1 as
    strings and are read as numbers here; anything else of the wrong type is an error."""
    if default is None or value is None or isinstance(default, str):
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{source}: '{dotted}' must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{source}: '{dotted}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: '{dotted}' must be a number, got {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise ValueError(f"{source}: '{dotted}' must be a whole number, got {value!r}")
        return int(value) if isinstance(default, int) else float(value)
    return value


def apply_overrides(config: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Applies `section.key=value` strings; values are parsed as YAML (numbers, booleans, null, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        update: Dict[str, Any] = {}
        node = update
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
        _merge(config, update, "", f"override {item!r}")
    return config


# Numbers that only make sense in a range: (lowest, whether the lowest itself is allowed).
_RANGES = {
    "data.frames": (1, True), "train.epochs": (1, True), "train.batch_size": (1, True), "train.lr": (0, False),
    "train.weight_decay": (0, True), "train.lr_decay": (0, False), "train.num_workers": (0, True),
    "train.max_minutes": (0, True), "evaluate.every": (1, True), "evaluate.batch_size": (1, True),
}


def _check_ranges(config: Dict[str, Any], source: str) -> None:
    for dotted, (lowest, inclusive) in _RANGES.items():
        section, key = dotted.split(".")
        value = config[section][key]
        if value is not None and (value < lowest if inclusive else value <= lowest):
            bound = f">= {lowest}" if inclusive else f"> {lowest}"
            raise ValueError(f"{source}: '{dotted}' must be {bound}, got {value!r}")


def load_config(source: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """The defaults, updated by the YAML at `source` (a path, or the name of a bundled config such as
    'h36m_s'), then by `overrides`."""
    config = copy.deepcopy(DEFAULTS)
    if source is not None:
        path = source if os.path.isfile(source) else os.path.join(BUNDLED_CONFIGS, f"{source}.yaml")
        if not os.path.isfile(path):
            bundled = sorted(name[:-5] for name in os.listdir(BUNDLED_CONFIGS) if name.endswith(".yaml"))
            raise FileNotFoundError(f"config {source!r} is neither a file nor a bundled config ({bundled})")
        with open(path) as file:
            try:
                loaded = yaml.safe_load(file) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        _merge(config, loaded, "", path)
    config = apply_overrides(config, overrides)
    _check_ranges(config, source if source is not None else "config")
    return config
