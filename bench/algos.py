"""The gradient step of each algorithm, interleaved in one process (walker2d sizes, batch 256,
real_ratio 0.05, same weights and batch), so VM drift hits them alike:

    python bench/algos.py [--pairs 15]

MICRO and MOBILE do the same work (the per-elite values V_ek) and differ only in the final
reduction; MOPO's step has no value penalty (its cost is in the rollouts: bench/speed.py's
rollout_50000x5_mopo case).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from speed import random_batch

from micro.algos import ALGORITHMS, algorithm_class
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.utils import keep_freed_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=15, help="rounds of all algorithms")
    parser.add_argument("--steps", type=int, default=5, help="updates per timing")
    args = parser.parse_args()
    keep_freed_memory()
    obs, act, b = 17, 6, 256
    agents = {}
    for algo in ALGORITHMS:
        torch.manual_seed(0)
        cfg = Config(task="walker2d-medium-v2", algo=algo)
        agents[algo] = algorithm_class(cfg.algo)(
            cfg, obs, act, EnsembleDynamics(obs, act).requires_grad_(False)
        )
    batch = random_batch(b, obs, act)
    n_real = int(b * 0.05)
    for agent in agents.values():  # warm-up
        for _ in range(20):
            agent.update(batch, n_real)
    times: dict[str, list[float]] = {a: [] for a in agents}
    for _ in range(args.pairs):
        for algo, agent in agents.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                agent.update(batch, n_real)
            times[algo].append((time.perf_counter() - start) / args.steps * 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for algo, t in times.items():
        med = statistics.median(t)
        print(
            f"{algo:7s} {med:6.1f} ms/step (range {min(t):.1f}-{max(t):.1f}), "
            f"{1000 / med:5.1f} steps/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
