"""Loading PoseMamba weights: the official checkpoints (weights under `model_pos`, keys possibly
prefixed `module.` by DataParallel) and posemamba's own (a plain state_dict or one under `model`),
also as saved from a torch.compile'd model (keys prefixed `_orig_mod.`)."""
import os
from typing import Mapping, Union

import torch

__all__ = ["extract_state_dict", "read_checkpoint_file", "load_checkpoint"]

_CONTAINER_KEYS = ("model_pos", "model", "state_dict")
# What wrappers put before the model's own names: DataParallel / DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def extract_state_dict(checkpoint: Mapping, source: str = "checkpoint") -> dict:
    """The model's tensors from a loaded checkpoint, without the wrappers' prefixes (`module.`,
    `_orig_mod.`, in any nesting)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
    for key in _CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor "
                             f"(expected the weights under one of {_CONTAINER_KEYS} or at the top level)")
        state[_unwrapped(name)] = value
    return state


def _unwrapped(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def read_checkpoint_file(path: str):
    """torch.load of a checkpoint file (tensors and plain containers only), with errors that name it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error


def load_checkpoint(model: torch.nn.Module, source: Union[str, os.PathLike, Mapping], strict: bool = True):
    """Loads official or posemamba weights into `model`; returns (missing_keys, unexpected_keys).

    With strict=True any missing or unexpected key, or a shape that differs from the model's, raises a
    ValueError that lists them; with strict=False they are only returned.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    checkpoint = read_checkpoint_file(name) if isinstance(source, (str, os.PathLike)) else source
    state = extract_state_dict(checkpoint, name)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        problems = [f"{len(missing)} missing: {missing[:10]}" if missing else "",
                    f"{len(unexpected)} unexpected: {unexpected[:10]}" if unexpected else "",
                    f"shapes differ: {mismatched[:10]}" if mismatched else ""]
        raise ValueError(f"{name} does not fit this model ({'; '.join(p for p in problems if p)}); "
                         "check the preset (dim, depth), num_frame and in_chans")
    model.load_state_dict(state, strict=False)
    return missing, unexpected
