"""Shipped reference results: copy a finished run's small files into
``results/<dataset>/<algo>/seed<N>/`` with a ``run.json`` saying what it is, and list them.

    python -m micro.results ship RUN_DIR --dataset halfcheetah-medium-200k [--root results]
    python -m micro.results table [--root results]

``run.json`` holds the task, algorithm, seed, steps, final and best normalized score (the
deterministic evaluations in progress.csv), the wall time by stage (timings.json), the machine
(CPU model, GPU, torch), the dataset's SHA-256 and the run's original folder. ``table`` prints
the Markdown table that ``results/README.md`` carries.
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from micro import MicroError, __version__
from micro.utils import atomic_path, atomic_write_text

SHIPPED = ("policy.pt", "progress.csv", "config.yaml")
OPTIONAL = ("timings.json",)
RUN_FILE = "run.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "gpu": gpu, "torch": torch.__version__, "micro": __version__}


def summarize(run_dir: Path) -> dict:
    """What ``run.json`` records about a finished run."""
    missing = [name for name in SHIPPED if not (run_dir / name).is_file()]
    if missing:
        raise MicroError(
            f"{run_dir} lacks {', '.join(missing)}; ship a finished run (train.py writes "
            "policy.pt at the end)"
        )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    with open(run_dir / "progress.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    evals = [r for r in rows if r.get("eval_normalized_score", "") != ""]
    if not evals:
        raise MicroError(f"{run_dir}/progress.csv has no evaluation")
    scores = [float(r["eval_normalized_score"]) for r in evals]
    best = max(range(len(scores)), key=scores.__getitem__)
    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else None
    return {
        "task": config["task"],
        "algo": config.get("algo", "micro"),
        "seed": config["seed"],
        "steps": int(rows[-1]["step"]),
        "final_score": scores[-1],
        "final_score_std": float(evals[-1]["eval_normalized_score_std"]),
        "best_score": scores[best],
        "best_step": int(evals[best]["step"]),
        "eval_episodes": config.get("eval_episodes"),
        "seconds": timings,
        "dataset_sha256": config.get("dataset_sha256"),
        "source_run": str(run_dir.resolve()),
    }


def ship(run_dir: Path, dataset: str, root: Path, force: bool = False) -> Path:
    """Copy a finished run's small files to ``root/<dataset>/<algo>/seed<N>/``."""
    summary = summarize(run_dir)
    dest = root / dataset / summary["algo"] / f"seed{summary['seed']}"
    if dest.exists() and not force:
        raise MicroError(f"{dest} exists; pass --force to replace the shipped files")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED + OPTIONAL:
        if (run_dir / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    record = {"dataset": dataset, **summary, "machine": machine()}
    atomic_write_text(dest / RUN_FILE, json.dumps(record, indent=1) + "\n")
    return dest


def table(root: Path) -> str:
    """The Markdown table of every shipped run under ``root``."""
    runs = sorted(
        (json.loads(p.read_text()) for p in root.glob(f"*/*/*/{RUN_FILE}")),
        key=lambda r: (r["dataset"], r["algo"], r["seed"]),
    )
    if not runs:
        raise MicroError(f"no shipped run ({RUN_FILE}) under {root}")
    lines = [
        "| dataset | algo | seed | steps | final score | best score (step) | wall time "
        "| CPU / GPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        seconds = sum((r.get("seconds") or {}).values())
        hardware = r["machine"]["gpu"] or r["machine"]["cpu"]
        lines.append(
            f"| {r['dataset']} | {r['algo']} | {r['seed']} | {r['steps']} | "
            f"{r['final_score']:.1f} ± {r['final_score_std']:.1f} | "
            f"{r['best_score']:.1f} ({r['best_step']}) | {seconds / 3600:.1f} h | {hardware} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from micro.cli import OneLineParser, guarded

    parser = OneLineParser(prog="python -m micro.results", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("ship", help="copy a finished run's small files into the results")
    s.add_argument("run_dir")
    s.add_argument(
        "--dataset", required=True, help="the dataset's name, e.g. halfcheetah-medium-200k"
    )
    s.add_argument("--root", default="results")
    s.add_argument("--force", action="store_true", help="replace shipped files")
    t = sub.add_parser("table", help="print the Markdown table of the shipped runs")
    t.add_argument("--root", default="results")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        if a.command == "ship":
            dest = ship(Path(a.run_dir), a.dataset, Path(a.root), a.force)
            print(f"shipped {a.run_dir} to {dest}")
        else:
            print(table(Path(a.root)))
        return 0

    return guarded(run, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
