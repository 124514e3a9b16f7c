"""Run by tests/test_distributed.py under torchrun: trains the tiny config and saves this rank's weights."""
import os
import sys

import torch

from posemamba.training import load_config, train

if __name__ == "__main__":
    output, overrides = sys.argv[1], sys.argv[2:]
    model = train(load_config("demo", overrides), log=lambda *_: None)["model"]
    torch.save(model.state_dict(), os.path.join(output, f"rank{os.environ['RANK']}.pt"))
