"""Where a gradient step's time goes: its kernels, by torch.profiler.

    python bench/profile_step.py --device cuda [--env walker2d] [--real_ratio 0.05]

Profiles ``--steps`` eager steps (a recorded CUDA graph replays exactly these kernels) and prints
the kernels launched per step, their summed device time per step (what a graph replay cannot go
under, bar overlap), and the operators that take most of it. On the CPU the table is by CPU time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import SIZES, random_batch

from micro.algos import algorithm_class
from micro.config import MATMUL_PRECISIONS, Config
from micro.dynamics import EnsembleDynamics


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--env", default="walker2d", choices=sorted(SIZES))
    p.add_argument("--real_ratio", type=float, default=0.05)
    p.add_argument("--algo", default="micro")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--matmul_precision", choices=MATMUL_PRECISIONS, default="highest")
    p.add_argument("--rows", type=int, default=15, help="operators listed")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type != "cpu":
        torch.set_default_device(device)
    torch.set_float32_matmul_precision(args.matmul_precision)
    obs, act = SIZES[args.env]
    cfg = Config(task=f"{args.env}-medium-v2", real_ratio=args.real_ratio, algo=args.algo)
    torch.manual_seed(0)
    agent = algorithm_class(cfg.algo)(
        cfg, obs, act, EnsembleDynamics(obs, act).requires_grad_(False)
    )
    batch, n_real = random_batch(cfg.batch_size, obs, act), int(cfg.batch_size * cfg.real_ratio)
    for _ in range(5):
        agent.update(batch, n_real)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            agent.update(batch, n_real)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / args.steps / 1000  # ms
        print(
            f"{args.env} real_ratio {args.real_ratio} {args.algo}, precision "
            f"{args.matmul_precision}: {len(kernels) / args.steps:.0f} kernels per step, "
            f"{busy:.3f} ms of kernel time per step"
        )
    sort = "device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
