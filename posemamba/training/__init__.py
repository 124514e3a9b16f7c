"""Training and evaluation: configs, the loop, checkpoints, metrics tables."""
from .config import load_config
from .evaluation import H36MResult, MPI3DHPResult, evaluate_3dhp, evaluate_h36m, format_table
from .trainer import build_datasets, build_model, evaluate, evaluate_checkpoint, train

__all__ = ["load_config", "H36MResult", "MPI3DHPResult", "evaluate_3dhp", "evaluate_h36m", "format_table",
           "build_datasets", "build_model", "evaluate", "evaluate_checkpoint", "train"]
