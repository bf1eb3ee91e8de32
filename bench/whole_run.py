"""The whole-run speed ratio: the published MICRO trainer and ours, each training the same
schedule on the same data on this machine, timed as each trainer times itself — everything
after the dynamics fit: rollouts, gradient steps, evaluation and checkpoints.

    OMP_NUM_THREADS=1 python bench/whole_run.py --ref /tmp/ref-micro \\
        --task halfcheetah-medium-v2 --dataset data/halfcheetah-medium-200k.hdf5 \\
        --epochs 10 --out runs/whole-run [--dynamics_epochs 5]

- ours: ``train.py`` at the task's published settings for ``--epochs`` epochs of 1000 steps,
  evaluated every 10th epoch as the published trainer is, checkpointing every epoch as it
  always does; its seconds are the ``timings.json`` stages but the dynamics fit.
- theirs: ``../shared/bench/ref_micro_train.py`` (the published pipeline, unchanged, on the same
  file) with ``--set epoch=N``; its seconds are the ``total time`` its trainer logs for its epoch
  loop (rollouts, steps, its evaluation every 10th epoch and policy saves), nothing of ours
  around it.

Both fit a dynamics model first, capped at ``--dynamics_epochs`` (their fits are not what is
timed; a capped fit keeps the measurement short). Run them one after the other (the default) on
a machine doing nothing else, or give each the same neighbours, and give ``--epochs`` as a
multiple of 10 (ours also evaluates after its last epoch). The result goes to
``OUT/whole_run.json`` and one Markdown row to stdout: seconds per 1000 gradient steps of each,
and theirs / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from micro.provenance import cpu_model  # noqa: E402

SCRIPT = ROOT.parent / "shared" / "bench" / "ref_micro_train.py"
TOTAL_TIME = re.compile(r"total time: ([0-9.]+)s")


def ours(args: argparse.Namespace, out: Path) -> dict:
    logdir = out / "ours"
    cmd = [sys.executable, str(ROOT / "train.py"), "--task", args.task, "--dataset", args.dataset]
    cmd += ["--seed", str(args.seed), "--epoch", str(args.epochs), "--eval_freq", "10"]
    cmd += ["--dynamics_max_epochs", str(args.dynamics_epochs), "--logdir", str(logdir)]
    cmd += ["--no_progress"]
    subprocess.run(cmd, check=True)
    (run,) = logdir.glob("*/*/*")
    timings = json.loads((run / "timings.json").read_text())
    loop = sum(v for k, v in timings.items() if k not in ("dynamics", "population"))
    return {"run": str(run), "timings": timings, "loop_seconds": loop}


def theirs(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, args.script, "--ref", args.ref, "--task", args.task]
    cmd += ["--dataset", str(Path(args.dataset).resolve()), "--seed", str(args.seed)]
    cmd += ["--out", str(out / "published"), "--set", f"epoch={args.epochs}"]
    cmd += ["--set", f"dynamics_max_epochs={args.dynamics_epochs}"]
    began = time.monotonic()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    (out / "published.log").write_text(proc.stdout + proc.stderr)
    found = TOTAL_TIME.findall(proc.stdout)
    if not found:
        raise SystemExit(f"no 'total time' in the published trainer's output ({out}/published.log)")
    return {"loop_seconds": float(found[-1]), "process_seconds": time.monotonic() - began}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", required=True, help="the published code, extracted")
    p.add_argument("--script", default=str(SCRIPT), help="ref_micro_train.py to run")
    p.add_argument("--task", default="halfcheetah-medium-v2")
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=10, help="epochs of 1000 gradient steps")
    p.add_argument("--dynamics_epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=("ours", "theirs"), help="time one trainer")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new --out")
    out.mkdir(parents=True)
    record = {
        "task": args.task,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "cpu": cpu_model(),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if args.only != "theirs":
        record["ours"] = ours(args, out)
    if args.only != "ours":
        record["published"] = theirs(args, out)
    steps_k = args.epochs  # 1000 steps per epoch in both
    row = []
    for name in ("published", "ours"):
        if name in record:
            per_k = record[name]["loop_seconds"] / steps_k
            record[name]["seconds_per_1000_steps"] = round(per_k, 1)
            row.append(f"{name} {per_k:.1f} s")
    if "ours" in record and "published" in record:
        ratio = record["published"]["loop_seconds"] / record["ours"]["loop_seconds"]
        record["ratio"] = round(ratio, 2)
        row.append(f"{ratio:.2f}×")
    (out / "whole_run.json").write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"| {args.task} | {args.epochs}k steps | {' | '.join(row)} | {record['cpu']}, "
        f"{record['threads']} thread(s) |"
    )


if __name__ == "__main__":
    main()
