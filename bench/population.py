"""Throughput of a population: N seeds' gradient steps as one batched step (``train.py --seeds``).

    python bench/population.py                          # CPU: N = 1 2 4 8, MICRO and MOBILE
    python bench/population.py --device cuda --runs 1 2 4 8 16 32
    python bench/population.py --ref /tmp/ref-micro     # the published code's step beside it
    python bench/population.py --json out.json          # also write the figures

At walker2d-medium-expert-v2's settings (obs 17, act 6, batch 256, each algorithm's config), on
random data and a random dynamics model: the ordinary learner's step (one run), then the
population's step for each N, interleaved over ``--rounds`` rounds (medians). Aggregate steps/s
is N / (seconds per population step): gradient steps of all runs together per second. On CUDA
the steps replay as CUDA graphs, as training does (each run's generator registered with the
graph), unless ``--eager``. ``--ref DIR`` also runs ``../shared/bench/ref_micro_speed.py`` (the
published MICRO code's step, real_ratio 0.05) on the same device, after ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import random_batch

from micro.algos import algorithm_class
from micro.buffer import Batch
from micro.config import config_from_dict, resolve_config
from micro.dynamics import EnsembleDynamics
from micro.graphs import GraphedStep
from micro.population import build_population
from micro.provenance import cpu_model
from micro.utils import keep_freed_memory

TASK = "walker2d-medium-expert-v2"
OBS, ACT = 17, 6
REF_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "ref_micro_speed.py"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(algo: str, runs: int | None, device: torch.device, eager: bool):
    """A step function of ``algo``'s learner: the ordinary one (``runs`` None) or a population
    of ``runs`` seeds, on a fixed random batch per run."""
    cfg = resolve_config(TASK, overrides={"algo": algo})
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(OBS, ACT).to(device).requires_grad_(False)
    n_real = int(cfg.batch_size * cfg.real_ratio)
    if runs is None:
        agent = algorithm_class(algo)(cfg, OBS, ACT, dynamics).to(device)
        batch = _to(random_batch(cfg.batch_size, OBS, ACT), device)
        generators = []
    else:
        cfgs = [config_from_dict({**cfg.to_dict(), "seed": s}) for s in range(runs)]
        sim = SimpleNamespace(obs_dim=OBS, act_dim=ACT)
        agent, generators = build_population(cfgs, sim, dynamics, device)
        batch = Batch.stack([_to(random_batch(cfg.batch_size, OBS, ACT), device)] * runs)

    def step():
        return agent.update(batch, n_real)

    if device.type == "cuda" and not eager:
        return GraphedStep(step, lambda: None, agent.optimizers(), generators=generators)
    return step


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(x.to(device) for x in batch.fields()))


def timed(step, device: torch.device, steps: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def published(ref: str, device: str, steps: int, script: Path = REF_SCRIPT) -> float | None:
    """The published MICRO code's steps/s (real_ratio 0.05) on ``device``."""
    cmd = [sys.executable, str(script), "--ref", ref, "--device", device]
    cmd += ["--steps", str(steps), "--real-ratio", "0.05"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():  # "learn real_ratio=0.05: 11.4 steps/s, 87.5 ms/step"
        words = line.replace(",", " ").split()
        if line.startswith("learn") and "steps/s" in words:
            return float(words[words.index("steps/s") - 1])
    print(f"published code: no timing ({(out.stderr or out.stdout)[-300:]})", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=["micro", "mobile"])
    parser.add_argument("--runs", nargs="+", type=int, help="population sizes (default 1 2 4 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--steps", type=int, help="steps per timing (CPU 3, CUDA 50)")
    parser.add_argument("--eager", action="store_true", help="CUDA: no graphs")
    parser.add_argument(
        "--matmul_precision", default="highest", help="highest | high (TF32) | medium"
    )
    parser.add_argument("--ref", help="the published code's folder: time its step too")
    parser.add_argument("--ref_script", type=Path, default=REF_SCRIPT, help="its timing script")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_float32_matmul_precision(args.matmul_precision)
    device = torch.device(args.device)
    runs = args.runs or [1, 2, 4, 8]
    steps = args.steps or (3 if device.type == "cpu" else 50)
    cases = [(algo, n) for algo in args.algos for n in [None, *runs]]
    built = {case: build(case[0], case[1], device, args.eager) for case in cases}
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    for step in built.values():  # warm-up (and CUDA graph recording)
        timed(step, device, 4)
    for _ in range(args.rounds):
        for case, step in built.items():
            times[case].append(timed(step, device, steps))
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_model()
    ref_steps = 40 if device.type == "cpu" else 200
    ref = published(args.ref, args.device, ref_steps, args.ref_script) if args.ref else None
    print(
        f"{TASK} settings, {machine}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {'eager' if args.eager or device.type == 'cpu' else 'CUDA graphs'}, matmul "
        f"precision {args.matmul_precision}, medians "
        f"of {args.rounds} interleaved rounds of {steps} steps"
    )
    header = "| algo | runs | ms per step | aggregate steps/s | vs one run |"
    if ref:
        header += " vs published |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    rows = []
    for algo in args.algos:
        single = statistics.median(times[(algo, None)])
        for n in [None, *runs]:
            sec = statistics.median(times[(algo, n)])
            k = 1 if n is None else n
            row = {
                "algo": algo,
                "runs": "one run" if n is None else n,
                "ms_per_step": 1000 * sec,
                "steps_per_s": k / sec,
                "vs_one_run": (k / sec) / (1 / single),
            }
            if ref:
                row["vs_published"] = row["steps_per_s"] / ref
            rows.append(row)
            line = (
                f"| {algo} | {row['runs']} | {row['ms_per_step']:.1f} | "
                f"{row['steps_per_s']:.1f} | {row['vs_one_run']:.2f}x |"
            )
            if ref:
                line += f" {row['vs_published']:.1f}x |"
            print(line)
    if ref:
        print(f"published MICRO code: {ref:.1f} steps/s (real_ratio 0.05, same device)")
    if args.json:
        record = {
            "task": TASK,
            "machine": machine,
            "device": args.device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "graphs": device.type == "cuda" and not args.eager,
            "matmul_precision": args.matmul_precision,
            "rounds": args.rounds,
            "steps": steps,
            "published_steps_per_s": ref,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
