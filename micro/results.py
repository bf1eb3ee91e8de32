"""Shipped reference results: copy a run's small files into ``results/<dataset>/<algo>/seed<N>/``
with a ``run.json`` saying what it is, and list them. A run still training (or killed) ships
with ``--in_progress``: its last checkpoint's policy, marked unfinished; ``export`` writes that
policy file alone, for ``eval.py``.

    python -m micro.results ship RUN_DIR --dataset halfcheetah-medium-200k [--root results]
                                [--in_progress]
    python -m micro.results export RUN_DIR [--out FILE]
    python -m micro.results table [--root results]
    python -m micro.results overview [--root results]
    python -m micro.results card FILE --dataset hopper-medium-200k --recipe="--env hopper …"
    python -m micro.results remake hopper-medium-200k --out FILE
    python -m micro.results cards [--root results]
    python -m micro.results dynamics FOLDER --dataset hopper-medium-200k
    python -m micro.results import-published OUT --dataset halfcheetah-medium-200k [--data FILE]
    python -m micro.results fit hopper-medium-200k [--data FILE] [--out DIR]
    python -m micro.results train micro hopper-medium-200k [--data FILE] [--logdir runs/reference]

``run.json`` holds the task, algorithm, seed, whether it finished, steps done and planned, the
normalized score at the last evaluation, averaged over the last 5 and at the best one (the
deterministic evaluations in progress.csv), the wall time by
stage (timings.json, or the checkpoint's for an unfinished run; read back from TensorBoard for
runs older than either), the machine it is shipped from
(CPU model, GPU, torch), the dataset's SHA-256, the run's original folder and, from the run's
``sessions.jsonl`` (shipped beside it, as is ``eval-episodes.csv`` when the run has one),
its number of sessions, their code and the CPUs/GPUs
they trained on. ``table`` prints
the Markdown table that ``results/README.md`` carries; ``overview`` the one the README opens
with: datasets (robots) by algorithms, each cell the mean ± std over seeds, beside the score of the
policy that made the data. ``card`` writes a dataset made here into
``results/<dataset>/dataset.json``: the ``micro.datagen.collect`` arguments that made it (its
recipe), its SHA-256, rows, episodes, behavior policy and score; ``remake`` runs the recipe again
and checks the new file is the same, byte for byte (so new runs on it compare with the shipped
ones); ``cards`` lists them. ``dynamics`` ships the one dynamics model (``fit_dynamics.py
--out FOLDER``) that every algorithm and seed on a carded dataset learns from, as
``results/<dataset>/dynamics/``: hours of fitting on a CPU, and what a later run needs to compare
with the shipped ones (``--load_dynamics_path results/<dataset>/dynamics``).
``import-published`` ships a run of the published trainer (``bench/published_micro.py --out
OUT``) as ``results/<dataset>/published-micro/seed<N>/``: its log converted by
``micro.published`` (no policy: the published code's own format), with ``run.json`` like ours,
so the table, the overview and ``report.py`` show it beside our runs. ``train`` trains an
algorithm's reference runs on a carded dataset as the shipped ones were trained (the recipe is
``REFERENCE_SEEDS`` and ``REFERENCE_SETTINGS``, from the shipped dynamics, the dataset remade by
its card when absent and refused when another file), or continues them where they stopped;
``fit`` fits the dynamics model they share (``REFERENCE_DYNAMICS``), for ``dynamics`` to ship.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from micro import MicroError
from micro.data.d4rl import read_metadata, recorded_return
from micro.dynamics import read_dynamics_info
from micro.logger import logged_seconds
from micro.policy_file import export_checkpoint_policy
from micro.provenance import machine, read_sessions
from micro.published import EVAL_EVERY, convert_rows, read_published
from micro.report import LAST_EVALS, behavior_score, find_runs, last_evals_score
from micro.run_dir import (
    CONFIG_FILE,
    EPISODES_FILE,
    POLICY_FILE,
    PROGRESS_FILE,
    SESSIONS_FILE,
    TIMED_STAGES,
    TIMINGS_FILE,
    RunDir,
)
from micro.utils import atomic_path, atomic_write_text, sha256_file

SHIPPED = (POLICY_FILE, PROGRESS_FILE, CONFIG_FILE)
OPTIONAL = (TIMINGS_FILE, SESSIONS_FILE, EPISODES_FILE)
RUN_FILE = "run.json"
CARD_FILE = "dataset.json"  # results/<dataset>/dataset.json: how the data was made
DYNAMICS_DIR = "dynamics"  # results/<dataset>/dynamics/: the model its shipped runs learned from
DYNAMICS_FILES = ("model.pt", "dynamics.json", CONFIG_FILE)


def read_progress(
    run_dir: Path, last_step: int | None = None, name: str = PROGRESS_FILE
) -> list[dict]:
    """progress.csv's (or another per-step CSV's) rows, up to ``last_step`` when given."""
    with open(run_dir / name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows if last_step is None else [r for r in rows if int(r["step"]) <= last_step]


def _write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV whose columns are every key of theirs, in first-seen order."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def scores(run_dir: Path, rows: list[dict]) -> dict:
    """run.json's scores: the last evaluation's, the last 5's mean and the best one's."""
    evals = [r for r in rows if r.get("eval_normalized_score", "") != ""]
    if not evals:
        raise MicroError(f"{run_dir}/progress.csv has no evaluation")
    values = [float(r["eval_normalized_score"]) for r in evals]
    best = max(range(len(values)), key=values.__getitem__)
    return {
        "final_score": values[-1],
        "final_score_std": float(evals[-1]["eval_normalized_score_std"]),
        "final_step": int(evals[-1]["step"]),
        "last_evals_score": last_evals_score(evals),
        "last_evals_from_step": int(evals[-LAST_EVALS:][0]["step"]),
        "best_score": values[best],
        "best_step": int(evals[best]["step"]),
    }


def summarize(run_dir: Path, rows: list[dict], timings: dict | None, finished: bool = True) -> dict:
    """What ``run.json`` records about a run whose progress.csv rows are ``rows``."""
    config = RunDir(run_dir).read_config()
    # timings from code older than TIMED_STAGES cover only a resumed run's last session
    complete = timings is not None and set(TIMED_STAGES) <= set(timings)
    sessions = read_sessions(run_dir)  # none for runs from before sessions.jsonl
    code = list({json.dumps(r["code"], sort_keys=True): r["code"] for r in sessions}.values())
    hardware = dict.fromkeys(r["machine"]["gpu"] or r["machine"]["cpu"] for r in sessions)
    return {
        "task": config["task"],
        "algo": config.get("algo", "micro"),
        "seed": config["seed"],
        "finished": finished,
        "steps": int(rows[-1]["step"]),
        "steps_planned": config["epoch"] * config["step_per_epoch"],
        **scores(run_dir, rows),
        "eval_episodes": config.get("eval_episodes"),
        "seconds": timings if complete else logged_seconds(run_dir),
        "seconds_from": "the run's timings" if complete else "TensorBoard events",
        "dataset_sha256": config.get("dataset_sha256"),
        "source_run": str(run_dir.resolve()),
        "sessions": len(sessions),
        "code": code,
        "trained_on": list(hardware),
    }


def ship(
    run_dir: Path, dataset: str, root: Path, force: bool = False, in_progress: bool = False
) -> Path:
    """Copy a run's small files to ``root/<dataset>/<algo>/seed<N>/``. A finished run ships its
    policy.pt; with ``in_progress``, a run without one ships its last checkpoint's policy and
    the progress.csv rows up to it, and run.json says it is unfinished."""
    run = RunDir(run_dir)
    config = run.read_config()
    finished = run.finished
    if not finished and not in_progress:
        raise MicroError(
            f"{run_dir} lacks policy.pt (train.py writes it at the end); pass --in_progress "
            "to ship its last checkpoint"
        )
    dest = root / dataset / config.get("algo", "micro") / f"seed{config['seed']}"
    if dest.exists() and not force:
        raise MicroError(f"{dest} exists; pass --force to replace the shipped files")
    if finished:
        timings_file = run.timings_file
        timings = json.loads(timings_file.read_text()) if timings_file.is_file() else None
        summary = summarize(run_dir, read_progress(run_dir), timings)
        files = {name: run_dir / name for name in SHIPPED + OPTIONAL}
        return _install(dest, files, {"dataset": dataset, **summary, "machine": machine()})
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        policy, progress = export_checkpoint_policy(run_dir, staging / POLICY_FILE)
        rows = read_progress(run_dir, progress.step)
        summary = summarize(run_dir, rows, progress.timings, finished=False)
        if summary["final_step"] != summary["steps"]:
            print(
                f"note: {run_dir.name}'s checkpoint (step {summary['steps']}) is newer than its "
                f"last evaluation (step {summary['final_step']}), so the shipped policy's own "
                "score is not in run.json; ship right after an evaluation epoch for that",
                file=sys.stderr,
            )
        _write_rows(staging / PROGRESS_FILE, rows)
        files = {
            POLICY_FILE: policy,
            PROGRESS_FILE: staging / PROGRESS_FILE,
            CONFIG_FILE: run.config_file,
            SESSIONS_FILE: run.sessions_file,
        }
        if run.episodes_file.is_file():  # runs from before it have none
            episodes = read_progress(run_dir, progress.step, EPISODES_FILE)
            if episodes:
                _write_rows(staging / EPISODES_FILE, episodes)
                files[EPISODES_FILE] = staging / EPISODES_FILE
        return _install(dest, files, {"dataset": dataset, **summary, "machine": machine()})


def _install(dest: Path, files: dict[str, Path], record: dict) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for stale in (dest / name for name in SHIPPED + OPTIONAL):
        if stale.name not in files or not files[stale.name].is_file():
            stale.unlink(missing_ok=True)  # a replaced run may lack what the old one had
    for name, source in files.items():
        if source.is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(source, tmp)
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
        "| dataset | algo | seed | steps | final score "
        f"| last {LAST_EVALS} evaluations (from step) | best score (step) | wall time "
        "| CPU / GPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        stages = dict(r.get("seconds") or {})
        population = stages.pop("population", None)  # the process's time, for all its runs
        seconds = sum(stages.values())
        hours = f"{seconds / 3600:.1f} h" if seconds else "not recorded"
        if seconds and population:
            hours += f" ({population} runs together)"
        if r.get("epochs_timed", 0) < r.get("epochs_done", 0):  # sessions lost unrecorded
            fit = "" if "dynamics" in stages else ", not the dynamics fit"
            hours += f" (timed: {r['epochs_timed']} of {r['epochs_done']} epochs{fit})"
        # where it trained, when its sessions say; else where it was shipped from
        hardware = ", ".join(r.get("trained_on") or [r["machine"]["gpu"] or r["machine"]["cpu"]])
        last_k = (
            f"{r['last_evals_score']:.1f} ({r['last_evals_from_step']})"
            if "last_evals_score" in r
            else "–"  # shipped before run.json had it
        )
        steps = str(r["steps"])
        if not r.get("finished", True):
            steps += f" of {r['steps_planned']} (in progress)"
        lines.append(
            f"| {r['dataset']} | {r['algo']} | {r['seed']} | {steps} | "
            f"{r['final_score']:.1f} ± {r['final_score_std']:.1f} | {last_k} | "
            f"{r['best_score']:.1f} ({r['best_step']}) | {hours} | {hardware} |"
        )
    return "\n".join(lines)


PUBLISHED_ALGO = "published-micro"  # the published trainer's runs, imported
ALGO_ORDER = (
    "micro",
    PUBLISHED_ALGO,
    "mobile",
    "rambo",
    "mopo",
)  # the overview's columns, those shipped


def _cell(records: list[dict], key: str, runs: bool) -> str:
    """Mean ± std (ddof 0, as report.py) of ``key`` over a dataset's seeds of one algorithm
    (the value alone for one seed); with ``runs``, the number of seeds and how far unfinished
    runs got."""
    values = [r[key] for r in records]
    cell = f"{np.mean(values):.1f}" + (f" ± {np.std(values):.1f}" if len(values) > 1 else "")
    if not runs:
        return cell
    seeds = f"{len(records)} seed{'s' * (len(records) > 1)}"
    unfinished = [r for r in records if not r.get("finished", True)]
    if unfinished:
        steps = min(r["steps"] for r in unfinished)
        seeds += f", {steps // 1000}k of {unfinished[0]['steps_planned'] // 1000}k steps"
    return f"{cell} ({seeds})"


def overview(root: Path) -> str:
    """The Markdown table of datasets by algorithms: each algorithm's final and last-5
    scores, mean ± std over its shipped seeds, beside the dataset's behavior score (the
    policy that made it, on the dataset's own episodes, normalized as the runs are). A carded
    dataset without shipped runs has its row too, with its card's behavior score."""
    by_dataset: dict[str, dict[str, list[dict]]] = {}
    for p in sorted(root.glob(f"*/*/*/{RUN_FILE}")):
        r = json.loads(p.read_text())
        by_dataset.setdefault(r["dataset"], {}).setdefault(r["algo"], []).append(r)
    if not by_dataset:
        raise MicroError(f"no shipped run ({RUN_FILE}) under {root}")
    shipped = set().union(*by_dataset.values())
    carded = {p.parent.name: json.loads(p.read_text()) for p in root.glob(f"*/{CARD_FILE}")}
    for dataset in carded.keys() - by_dataset.keys():
        by_dataset[dataset] = {}
    algos = [a for a in ALGO_ORDER if a in shipped] + sorted(shipped - set(ALGO_ORDER))
    header = ["dataset", "behavior"]
    for a in algos:
        header += [f"{a.upper()} final", f"{a.upper()} last {LAST_EVALS}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for dataset, runs in sorted(by_dataset.items()):
        if runs:
            behavior = behavior_score(find_runs([root / dataset]))
        else:
            behavior = carded[dataset]["normalized_score_mean"]
        row = [dataset, "–" if behavior is None else f"{behavior:.1f}"]
        for a in algos:
            records = sorted(runs.get(a, []), key=lambda r: r["seed"])
            row += (
                [_cell(records, "final_score", True), _cell(records, "last_evals_score", False)]
                if records
                else ["–", "–"]
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_card(
    path: Path, dataset: str, root: Path, recipe: list[str], force: bool = False
) -> Path:
    """Write ``root/<dataset>/dataset.json`` for the file at ``path``, made by
    ``python -m micro.datagen.collect RECIPE --out FILE``: what remakes it and what it is."""
    meta, rows = read_metadata(path)
    if "generator" not in meta:
        raise MicroError(
            f"{path} was not made by micro.datagen.collect (no metadata/generator): a card "
            "records how a dataset made here was made"
        )
    if any(a == "--out" or a.startswith("--out=") or a == "--force" for a in recipe):
        raise MicroError("--recipe: give collect's arguments without --out or --force")
    dest = root / dataset / CARD_FILE
    if dest.exists() and not force:
        raise MicroError(f"{dest} exists; pass --force to replace it")
    card = {
        "dataset": dataset,
        "recipe": ["python", "-m", "micro.datagen.collect", *recipe],
        "sha256": sha256_file(path),
        "rows": rows,
        **{k: meta[k] for k in sorted(meta)},
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, json.dumps(card, indent=1) + "\n")
    return dest


def cards(root: Path) -> str:
    """The Markdown table of the dataset cards under ``root``."""
    found = [json.loads(p.read_text()) for p in sorted(root.glob(f"*/{CARD_FILE}"))]
    if not found:
        raise MicroError(f"no dataset card ({CARD_FILE}) under {root}")
    lines = [
        "| dataset | made by | behavior policy | rows | whole episodes | behavior return "
        "| behavior score | SHA-256 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in found:
        lines.append(
            f"| {c['dataset']} | `{' '.join(c['recipe'])}` | {c.get('policy', '?')} "
            f"| {c['rows']} | {c.get('episodes', '?')} "
            f"| {c['return_mean']:.1f} ± {c['return_std']:.1f} "
            f"| {c['normalized_score_mean']:.1f} | `{c['sha256']}` |"
        )
    return "\n".join(lines)


def read_card(dataset: str, root: Path) -> dict:
    path = root / dataset / CARD_FILE
    if not path.is_file():
        known = sorted(p.parent.name for p in root.glob(f"*/{CARD_FILE}"))
        raise MicroError(
            f"no dataset card {path}; cards: {', '.join(known) or 'none'} "
            "(python -m micro.results card writes one)"
        )
    return json.loads(path.read_text())


def remake(dataset: str, root: Path, out: Path, force: bool = False) -> dict:
    """Run ``dataset``'s recipe into ``out`` and check the file is the card's to the byte. A
    file that differs (another MuJoCo build or CPU can round differently) stays, and the error
    says so: runs on it do not compare with the shipped ones."""
    card = read_card(dataset, root)
    if out.exists() and not force:
        raise MicroError(f"{out} exists; choose another --out or pass --force to replace it")
    # the recipe is a command: run it as one (python -m micro.datagen.collect …)
    args = [sys.executable, *card["recipe"][1:], "--out", str(out), "--no_progress"]
    if subprocess.run(args + ["--force"] * force, check=False).returncode != 0:
        raise MicroError(f"remaking {dataset} failed (above)")
    sha = sha256_file(out)
    if sha != card["sha256"]:
        raise MicroError(
            f"{out} differs from {dataset}'s card (SHA-256 {sha[:12]}…, the card's "
            f"{card['sha256'][:12]}…): this machine's simulator made other numbers, so runs on "
            "it do not compare with the shipped ones"
        )
    return card


# The reference runs' recipe (issue 32): on a carded dataset, each algorithm's seeds train as
# one population from the dataset's shipped dynamics, at the algorithm's published settings for
# the task, 200 epochs of 1000 steps, evaluated every 5 epochs on 10 episodes. One home for it:
# results/longruns.sh (CPU) and bench/gpu.sh longrun (GPU) both run ``reference_plan``'s command.
REFERENCE_SEEDS = (0, 1, 2)
REFERENCE_SETTINGS = {"epoch": 200, "eval_freq": 5, "eval_episodes": 10}
# and the dynamics they share: fitted once (fit_dynamics.py) at MICRO's settings for the task
REFERENCE_DYNAMICS = {"algo": "micro", "seed": 0}


@dataclass(frozen=True)
class ReferencePlan:
    """What ``python -m micro.results train`` does next: train.py's arguments (start the
    population, or resume it), or nothing when every run has finished."""

    task: str
    argv: list[str]
    runs: list[Path]  # the runs it continues (none: it starts new ones)
    finished: bool


def reference_task(card: dict) -> str:
    """The D4RL task a carded dataset stands for, from its recipe: ``--env walker2d --kind
    medium-expert`` -> walker2d-medium-expert-v2 (whose published settings its runs use)."""
    recipe = card["recipe"]

    def flag(name: str) -> str:
        for i, a in enumerate(recipe):
            if a == name and i + 1 < len(recipe):
                return recipe[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        raise MicroError(f"{card['dataset']}'s card has no {name} in its recipe")

    return f"{flag('--env')}-{flag('--kind')}-v2"


def reference_plan(
    algo: str,
    dataset: str,
    root: Path,
    data: Path,
    logdir: Path,
    dynamics: Path | None = None,
    seeds: Sequence[int] = REFERENCE_SEEDS,
) -> ReferencePlan:
    """Start ``algo``'s reference runs on the carded ``dataset`` (file ``data``) under
    ``logdir``, or continue the ones there. Runs under ``logdir/<task>/<algo>/`` that reached a
    checkpoint must be this recipe's, one per seed (a population continues whole); runs that
    never reached one are left as they are and new ones start."""
    card = read_card(dataset, root)
    task = reference_task(card)
    dynamics = root / dataset / DYNAMICS_DIR if dynamics is None else dynamics
    if not (dynamics / "model.pt").is_file():
        raise MicroError(
            f"no dynamics model in {dynamics}: ship the one fitted on {dataset} (python -m "
            "micro.results dynamics) or give --dynamics FOLDER (fit_dynamics.py --out FOLDER)"
        )
    expected = {
        "task": task,
        "algo": algo,
        "dataset": str(data.resolve()),
        "load_dynamics_path": str(dynamics.resolve()),
        **REFERENCE_SETTINGS,
    }
    found = []
    for path in sorted((logdir / task / algo).glob("seed*")):
        run = RunDir(path)
        if not (run.checkpoint_file.is_file() or run.finished):
            continue  # killed before its first checkpoint: nothing to continue
        config = run.read_config()
        for key, want in expected.items():
            have = config.get(key)
            if key in ("dataset", "load_dynamics_path") and have is not None:
                have = str(Path(have).resolve())
            if have != want:
                raise MicroError(
                    f"{path} is not a reference run of {algo} on {dataset} (its {key} is "
                    f"{have}, the recipe's {want}); give another --logdir"
                )
        found.append((config["seed"], run))
    if found:
        have = sorted(seed for seed, _ in found)
        if have != sorted(seeds):
            raise MicroError(
                f"{logdir / task / algo} holds runs of seeds {have}, the population's are "
                f"{sorted(seeds)}: it continues only whole; move those runs away to start again"
            )
        runs = [run.path for _, run in sorted(found, key=lambda f: f[0])]
        if all(run.finished for _, run in found):
            return ReferencePlan(task, [], runs, True)
        return ReferencePlan(task, ["--resume", *map(str, runs)], runs, False)
    argv = ["--task", task, "--algo", algo, "--seeds", *map(str, seeds)]
    argv += ["--dataset", str(data.resolve()), "--load_dynamics_path", str(dynamics.resolve())]
    return ReferencePlan(
        task, [*argv, *_flags(REFERENCE_SETTINGS), "--logdir", str(logdir)], [], False
    )


def reference_fit_argv(dataset: str, root: Path, data: Path, out: Path) -> list[str]:
    """fit_dynamics.py's arguments that fit the dynamics every reference run on the carded
    ``dataset`` (file ``data``) learns from, into ``out`` (the same ``out`` again continues a
    fit that was stopped); ship it with ``ship_dynamics``."""
    task = reference_task(read_card(dataset, root))
    dataset_flags = ["--dataset", str(data.resolve()), "--out", str(out)]
    return ["--task", task, *_flags(REFERENCE_DYNAMICS), *dataset_flags]


def _flags(settings: dict) -> list[str]:
    """{"epoch": 200, "hidden_dims": [32, 32]} -> --epoch 200 --hidden_dims 32 32"""
    out = []
    for key, value in settings.items():
        out += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return out


def reference_data(dataset: str, root: Path, data: Path) -> None:
    """Make sure ``data`` is the carded ``dataset``: remade by its recipe when absent, refused
    when it is another file."""
    if not data.exists():
        remake(dataset, root, data)
        return
    card = read_card(dataset, root)
    sha = sha256_file(data)
    if sha != card["sha256"]:
        raise MicroError(
            f"{data} is not {dataset} (SHA-256 {sha[:12]}…, the card's {card['sha256'][:12]}…): "
            f"give another --data, where it is remade (python -m micro.results remake {dataset})"
        )


def ship_dynamics(folder: Path, dataset: str, root: Path, force: bool = False) -> Path:
    """Copy a fitted dynamics model (``fit_dynamics.py --out FOLDER``: model.pt, dynamics.json,
    config.yaml) to ``root/<dataset>/dynamics/``, refused unless it was fitted on the carded
    dataset and its model.pt is the one its dynamics.json records. Runs given
    ``--load_dynamics_path`` that folder learn from the model the shipped runs learned from."""
    card = read_card(dataset, root)
    info = read_dynamics_info(folder)
    model = folder / "model.pt"
    if not model.is_file() or not info:
        raise MicroError(
            f"{folder} holds no finished dynamics fit (model.pt and dynamics.json); "
            "fit_dynamics.py --out FOLDER makes one"
        )
    if info.get("dataset_sha256") != card["sha256"]:
        raise MicroError(
            f"{folder} was fitted on other data than {dataset} (SHA-256 "
            f"{str(info.get('dataset_sha256'))[:12]}…, the card's {card['sha256'][:12]}…)"
        )
    if sha256_file(model) != info.get("model_sha256"):
        raise MicroError(f"{model} is not the model its dynamics.json records (damaged?)")
    dest = root / dataset / DYNAMICS_DIR
    if dest.exists() and not force:
        raise MicroError(f"{dest} exists; pass --force to replace the shipped model")
    dest.mkdir(parents=True, exist_ok=True)
    for name in DYNAMICS_FILES:
        if (folder / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(folder / name, tmp)
    return dest


def _dataset_of(sessions: list[dict], data: Path | None) -> Path:
    if data is None:
        argv = next((s["argv"] for s in sessions if "--dataset" in s.get("argv", [])), None)
        if argv is None:
            raise MicroError("the run does not say its dataset: pass --data FILE")
        data = Path(argv[argv.index("--dataset") + 1])
    if not data.is_file():
        raise MicroError(f"dataset {data} is missing: pass --data FILE (the file the run used)")
    return data


def _published_seconds(sessions: list[dict], rows: list[dict]) -> dict:
    """The wall seconds the recorded sessions spent (the dynamics fit only when the session that
    fitted it is recorded) and, when they say their epochs, how many of the epochs done (the
    last saved, or the log's last row if later) they time: a session killed before
    bench/published_micro.py recorded one at every save left none."""
    seconds = {"training loop": sum(s.get("loop_seconds", 0.0) for s in sessions)}
    if any(s.get("from_epoch", 1) == 1 for s in sessions):
        seconds = {"dynamics": sum(s.get("dynamics_seconds", 0.0) for s in sessions), **seconds}
    out = {"seconds": seconds, "seconds_from": "bench/published_micro.py's sessions.json"}
    spans = [(s["from_epoch"], s["to_epoch"]) for s in sessions if "to_epoch" in s]
    if spans:
        out["epochs_timed"] = sum(b - a + 1 for a, b in spans)
        out["epochs_done"] = max(rows[-1]["epoch"], *(b for _, b in spans))
    return out


def import_published(
    out: Path, dataset: str, root: Path, data: Path | None = None, force: bool = False
) -> Path:
    """Ship the published trainer's run at ``out`` (``bench/published_micro.py --out``) as
    ``root/<dataset>/published-micro/seed<N>/``: config.yaml, progress.csv and run.json."""
    hyper, raw, sessions = read_published(out)
    data = _dataset_of(sessions, data)
    sha = sha256_file(data)
    card = root / dataset / CARD_FILE
    if card.is_file() and json.loads(card.read_text())["sha256"] != sha:
        raise MicroError(f"{data} is not {dataset} (its SHA-256 differs from {card}'s)")
    seed = int(hyper["seed"])
    dest = root / dataset / PUBLISHED_ALGO / f"seed{seed}"
    if dest.exists() and not force:
        raise MicroError(f"{dest} exists; pass --force to replace the shipped files")
    rows = convert_rows(raw, hyper)
    unrecorded = ("task", "seed", "algo_name", "device")
    config = {
        "task": hyper["task"],
        "algo": PUBLISHED_ALGO,
        "seed": seed,
        **{k: hyper[k] for k in hyper if k not in unrecorded},
        "eval_freq": EVAL_EVERY,
        "dataset_file": str(data),
        "dataset_sha256": sha,
        "dataset_return_mean": recorded_return(data),
        "source": "the published MICRO code, run by bench/published_micro.py",
    }
    finished = (out / "finished.json").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        _write_rows(staging / PROGRESS_FILE, rows)
        record = {
            "dataset": dataset,
            "task": hyper["task"],
            "algo": PUBLISHED_ALGO,
            "seed": seed,
            "finished": finished,
            "steps": rows[-1]["step"],
            "steps_planned": int(hyper["epoch"]) * int(hyper["step_per_epoch"]),
            **scores(out, rows),
            "eval_episodes": hyper.get("eval_episodes"),
            **_published_seconds(sessions, rows),
            "dataset_sha256": sha,
            "source_run": str(out.resolve()),
            "sessions": len(sessions),
            "code": [
                {"published_commit": c}
                for c in dict.fromkeys(s.get("ref_commit") for s in sessions)
            ],
            "trained_on": list(dict.fromkeys(s.get("gpu") or s["cpu"] for s in sessions)),
        }
        files = {CONFIG_FILE: staging / CONFIG_FILE, PROGRESS_FILE: staging / PROGRESS_FILE}
        return _install(dest, files, {**record, "machine": machine()})


if __name__ == "__main__":  # the command line is micro.cli.results's
    from micro.cli.results import main

    sys.exit(main())
