"""How long the training loop waits for a checkpoint at paper scale: written in place (copy,
write, fsync) or in the background (the loop waits for the copy only; ``CheckpointWriter``).

    python bench/checkpoint_write.py     # median of 6 of each, interleaved

A full model buffer (1.25M rows of halfcheetah transitions, ~201 MB) and SPEC's networks.
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from micro.algos import algorithm_class
from micro.buffer import Batch, ReplayBuffer
from micro.checkpoint import CheckpointWriter, Progress, save_checkpoint
from micro.config import Config


def main() -> int:
    torch.manual_seed(0)
    agent = algorithm_class("micro")(Config(task="halfcheetah-medium-v2"), 17, 6, None)
    n = 1_250_000
    buf = ReplayBuffer(n, 17, 6, torch.device("cpu"))
    buf.add(
        Batch(
            torch.randn(n, 17),
            torch.randn(n, 6),
            torch.randn(n, 17),
            torch.randn(n, 1),
            torch.zeros(n, 1),
        )
    )
    folder = Path(tempfile.mkdtemp(dir=Path(__file__).resolve().parent))
    writer = CheckpointWriter()
    waits: dict[str, list[float]] = {"in place": [], "background": []}
    try:
        for _ in range(6):
            for mode in waits:
                start = time.perf_counter()
                save_checkpoint(
                    folder / "last.pt",
                    "halfcheetah-medium-v2",
                    agent,
                    buf,
                    Progress(),
                    writer if mode == "background" else None,
                )
                waits[mode].append(time.perf_counter() - start)
                writer.wait()
        size = (folder / "last.pt").stat().st_size / 2**20
    finally:
        shutil.rmtree(folder)
    for mode, times in waits.items():
        print(f"{mode:10s} {statistics.median(times):.3f} s the loop waits ({size:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
