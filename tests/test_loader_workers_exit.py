"""A process whose loader workers are still running when it exits ends (``pathway.data``): the workers ignore
SIGTERM, so ``multiprocessing``'s own exit (SIGTERM, then wait) would otherwise wait for them forever."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import torch
    from torch.utils.data import TensorDataset
    from pathway.data import SplitDataModule

    class Data(SplitDataModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"batch_size": 2, "num_workers": 1, "pin_memory": False})
            self.train_set = TensorDataset(torch.arange(8.0))

    loader = Data().train_dataloader()
    batches = iter(loader)  # persistent worker, still running at exit
    next(batches)
    print("read a batch", flush=True)
""")


def test_process_with_running_loader_workers_exits() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read a batch" in done.stdout
