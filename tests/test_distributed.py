"""Two-process DistributedDataParallel training on CPU (gloo), launched through torchrun as users do."""
import os
import subprocess
import sys

import torch

from test_training import TINY


def test_two_processes_train_one_model(tmp_path):
    output = tmp_path / "ddp"
    output.mkdir()
    # A budget of zero minutes stops after the first epoch: rank 0 decides for both ranks, or one of
    # them would wait forever in the next epoch's collectives.
    overrides = [*TINY, f"output={output}", f"data.path={tmp_path / 'data.pkl'}", "train.epochs=3",
                 "train.max_minutes=0"]
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker,
               str(output), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0, rank1 = (torch.load(output / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=f"{name} differs between ranks")
    # Only the main process writes the checkpoints and the log, and it trained.
    state = torch.load(output / "latest.pth", weights_only=True)
    assert state["epoch"] == 1
    assert (output / "log.csv").read_text().count("\n") == 2
    torch.testing.assert_close(state["model_pos"]["head.1.weight"], rank0["head.1.weight"])
