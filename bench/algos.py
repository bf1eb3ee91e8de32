"""MICRO's computation claim, measured: every algorithm side by side in one process, interleaved
so that machine drift hits them alike, at walker2d sizes with each algorithm's published
walker2d-medium-expert settings (configs/<algo>/):

    python bench/algos.py [--rounds 5] [--json bench/results/algos-<machine>.json]

For each algorithm it times
- one policy gradient step (batch 256 from the same random batch; ``update``),
- one model rollout (50 000 start states × its rollout length, its own ``model_step``),
- one adversarial model step, for an algorithm that trains its model (RAMBO),
and composes the cost of 1000 gradient steps as everything each algorithm does per 1000 steps:
1000 steps + 1000 / rollout_freq rollouts + (1000 / dynamics_update_freq) × adv_steps model
steps. Medians over the rounds; the data are random numbers (timing only, no simulator).
MICRO and MOBILE do the same work (the per-elite values V_ek) and differ only in the final
reduction; MOPO's step has no value penalty (its cost is in the rollouts).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from pathlib import Path

import torch
from speed import random_batch

from micro.algos import ALGORITHMS, algorithm_class
from micro.buffer import ReplayBuffer
from micro.config import resolve_config
from micro.dynamics import EnsembleDynamics
from micro.envs import termination_fn
from micro.provenance import cpu_model
from micro.rollout import model_rollout
from micro.utils import keep_freed_memory

TASK = "walker2d-medium-expert-v2"
OBS, ACT, REAL = 17, 6, 100_000


def build(algo: str, device: torch.device):
    torch.manual_seed(0)
    cfg = resolve_config(TASK, overrides={"algo": algo})
    dynamics = EnsembleDynamics(OBS, ACT).to(device).requires_grad_(False)
    agent = algorithm_class(algo)(cfg, OBS, ACT, dynamics).to(device)
    return cfg, agent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int = 1) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="gradient steps per timing")
    parser.add_argument("--adv_steps", type=int, default=20, help="model steps per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    keep_freed_memory()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    real = ReplayBuffer(REAL, OBS, ACT, device)
    real.add(random_batch(REAL, OBS, ACT))
    real.storage.next_observations.copy_(
        real.storage.observations + 0.01 * torch.randn(REAL, OBS, generator=g).to(device)
    )
    done_fn = termination_fn("walker2d")
    built = {algo: build(algo, device) for algo in ALGORITHMS}
    batch = random_batch(256, OBS, ACT)
    batch = type(batch)(*(x.to(device) for x in batch.fields()))
    times: dict[str, dict[str, list[float]]] = {a: {} for a in built}

    def one_round(steps: int, adv_steps: int, record: bool) -> None:
        for algo, (cfg, agent) in built.items():
            n_real = int(256 * cfg.real_ratio)
            t = {"step": timed(functools.partial(agent.update, batch, n_real), device, steps)}
            buffer = ReplayBuffer(cfg.rollout_batch_size * cfg.rollout_length, OBS, ACT, device)
            start = real.observations[torch.randint(REAL, (cfg.rollout_batch_size,))]
            rollout = functools.partial(
                model_rollout,
                agent.actor,
                functools.partial(agent.model_step, agent.dynamics),
                start,
                cfg.rollout_length,
                done_fn,
                buffer,
            )
            t["rollout"] = timed(rollout, device)
            if agent.trains_model:
                agent.cfg = dataclasses.replace(cfg, adv_steps=adv_steps)
                update = functools.partial(agent.model_update, real, done_fn)
                t["model_step"] = timed(update, device) / adv_steps
                agent.cfg = cfg
            if record:
                for key, value in t.items():
                    times[algo].setdefault(key, []).append(value)

    one_round(5, 2, record=False)  # warm-up
    for _ in range(args.rounds):
        one_round(args.steps, args.adv_steps, record=True)

    results = {}
    for algo, (cfg, agent) in built.items():
        med = {k: statistics.median(v) for k, v in times[algo].items()}
        per_1k = {
            "steps": 1000 * med["step"],
            "rollouts": 1000 / cfg.rollout_freq * med["rollout"],
            "model_updates": (
                1000 / cfg.dynamics_update_freq * cfg.adv_steps * med["model_step"]
                if agent.trains_model
                else 0.0
            ),
        }
        results[algo] = {
            "step_ms": 1000 * med["step"],
            "rollout_s": med["rollout"],
            "rollout_length": cfg.rollout_length,
            "model_step_ms": 1000 * med["model_step"] if agent.trains_model else None,
            "per_1000_steps_s": per_1k,
            "per_1000_steps_total_s": sum(per_1k.values()),
        }
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_model()
    print(
        f"{TASK} settings, {machine}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, medians of {args.rounds} interleaved rounds"
    )
    print(
        f"{'algo':7s} {'step ms':>8s} {'rollout s':>10s} {'model step ms':>14s} "
        f"{'s per 1000 steps (steps + rollouts + model updates)':>52s}"
    )
    base = results["micro"]["per_1000_steps_total_s"]
    for algo, r in results.items():
        p = r["per_1000_steps_s"]
        model = "–" if r["model_step_ms"] is None else f"{r['model_step_ms']:.2f}"
        print(
            f"{algo:7s} {r['step_ms']:8.2f} {r['rollout_s']:10.2f} {model:>14s} "
            f"{r['per_1000_steps_total_s']:8.1f} = {p['steps']:.1f} + {p['rollouts']:.1f} + "
            f"{p['model_updates']:.1f}  ({r['per_1000_steps_total_s'] / base:.2f}× MICRO's)"
        )
    if args.json:
        record = {
            "task_settings": TASK,
            "machine": machine,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
