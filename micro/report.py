"""``report.py``: compare training runs — a table per (task, algorithm) over seeds, and curves.

    python report.py runs/ [more run dirs or logdirs] [--out DIR]

Every folder below the given paths holding ``config.yaml`` and ``progress.csv`` is a run. Runs are
grouped by task, algorithm, the rest of their config (seed, paths and device aside; the dataset's
SHA-256 included) and their step count; only runs in one group are averaged. A (task, algorithm)
with several groups gets one row per group, told apart by ``variant``, and the summary names the
config keys that differ. Writes ``summary.md``, ``summary.csv``, ``curves-<task>.png`` (score,
mean ± std over seeds with each seed drawn thin, and the behavior policy's as a line) and
``diagnostics-<task>.png`` (Q mean, penalty, model rollout reward, critic loss and, for runs that
log it, each evaluation's worst episode, against steps).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from micro import MicroError
from micro.algos import penalty_columns
from micro.data.d4rl import recorded_return
from micro.envs import parse_task
from micro.logger import read_progress
from micro.provenance import read_sessions
from micro.run_dir import TIMED_STAGES, RunDir, experiment, find_run_dirs
from micro.utils import atomic_path, atomic_write_text

# The logged penalty of each algorithm (before its coefficient), in the order looked for.
PENALTY_COLUMNS = penalty_columns()
# The "last evaluations" score averages this many of a run's last evaluations.
LAST_EVALS = 5
# What a run's cost per 1000 gradient steps sums (timings.json): the steps themselves and what
# an algorithm does every so many steps (model rollouts, RAMBO's model updates); evaluations,
# checkpoints, the dynamics fit and pretraining are reported apart.
COST_STAGES = ("updates", "rollouts", "model_updates")
COST_KEYS = (
    "train_s_per_1k",
    *(f"{k}_s_per_1k" for k in COST_STAGES),
    "dynamics_s",
    "pretraining_s",
    "total_h",
)


def last_evals_score(evals: list[dict], k: int = LAST_EVALS) -> float:
    """The mean normalized score of a run's last ``k`` evaluations (all, if it has fewer): with
    10 episodes each, 50 episodes of the last policies, steadier than the last evaluation alone
    when single episodes can fail (a halfcheetah that flips onto its back)."""
    return float(np.mean([float(e["eval_normalized_score"]) for e in evals[-k:]]))


@dataclass
class Run:
    path: Path
    config: dict
    rows: list[dict]
    finished: bool
    timings: dict = field(default_factory=dict)  # timings.json: wall seconds by stage
    machines: list[str] = field(default_factory=list)  # the GPU or CPU of each session

    def cost(self) -> dict[str, float] | None:
        """Wall seconds per 1000 gradient steps (all of ``COST_STAGES``, and each), the dynamics
        fit's and pretraining's seconds and the total hours; None without complete timings
        (runs from before every stage was timed kept their last session's only). A run trained
        in a population of N counts 1/N of the process's time."""
        t = dict(self.timings)
        if not set(TIMED_STAGES) <= set(t) or self.steps == 0:
            return None
        # a population's run: the process's wall time was shared by this many runs
        share = t.pop("population", 1)
        t = {k: v / share for k, v in t.items()}
        per_1k = {k: t.get(k, 0.0) / self.steps * 1000 for k in COST_STAGES}
        return {
            "train_s_per_1k": sum(per_1k.values()),
            **{f"{k}_s_per_1k": v for k, v in per_1k.items()},
            "dynamics_s": t["dynamics"],
            "pretraining_s": t.get("pretraining", 0.0),
            "total_h": sum(t.values()) / 3600,
        }

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def algo(self) -> str:
        return self.config.get("algo", "micro")  # runs from before `algo` existed

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def steps(self) -> int:
        return int(self.rows[-1]["step"]) if self.rows else 0

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.rows if r.get("eval_normalized_score", "") != ""]

    @property
    def experiment(self) -> dict:
        """The config that defines what the run computes (``micro.run_dir.experiment``)."""
        return experiment(self.config)

    @property
    def experiment_hash(self) -> str:
        text = json.dumps(self.experiment, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def read_run(path: Path) -> Run:
    run = RunDir(path)
    config = run.read_config()
    return Run(
        run.path,
        config,
        read_progress(run.progress_file),
        # a shipped run says so in run.json (an imported one has no policy.pt of ours)
        _read_json(run.path / "run.json").get("finished", run.finished),
        _read_json(run.timings_file),
        _machines(run),
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _machines(run: RunDir) -> list[str]:
    """The GPU (else CPU) of each session that trained ``run`` (sessions.jsonl), or the one a
    shipped run records (run.json)."""
    sessions = read_sessions(run.path)
    if sessions:
        names = (s.get("machine", {}) for s in sessions)
        return list(dict.fromkeys(m.get("gpu") or m.get("cpu", "?") for m in names))
    shipped = _read_json(run.path / "run.json").get("machine", {})
    return [shipped.get("gpu") or shipped["cpu"]] if shipped.get("cpu") else []


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    # each run once, named from the path as given (relative stays relative, so a committed
    # report names no machine's folders)
    runs = [read_run(run.path) for run in find_run_dirs(paths)]
    if not runs:
        raise MicroError(
            "no runs (folders with config.yaml and progress.csv) under "
            + ", ".join(map(str, paths))
        )
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0) over seeds; NaN for none."""
    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std())


def _float(row: dict, key: str) -> float | None:
    value = row.get(key, "")
    return None if value in ("", None) else float(value)


@dataclass
class Group:
    task: str
    algo: str
    experiment_hash: str
    steps: int
    runs: list[Run] = field(default_factory=list)
    variant: str = ""  # set when a (task, algo) has several groups

    @property
    def label(self) -> str:
        return self.algo + (f" [{self.variant}]" if self.variant else "")

    def summary(self) -> dict:
        finals = [float(r.evals[-1]["eval_normalized_score"]) for r in self.runs if r.evals]
        bests = [
            max(float(e["eval_normalized_score"]) for e in r.evals) for r in self.runs if r.evals
        ]
        last = [r.evals[-1] for r in self.runs if r.evals]
        q = [v for e in last if (v := _float(e, "q_mean")) is not None]
        name = next((c for c in PENALTY_COLUMNS if any(c in e for e in last)), "")
        pen = [v for e in last if (v := _float(e, name)) is not None] if name else []
        lasts = [last_evals_score(r.evals) for r in self.runs if r.evals]
        final, best, last_k = _mean_std(finals), _mean_std(bests), _mean_std(lasts)
        costs = [c for r in self.runs if (c := r.cost()) is not None]
        cost = {k: _mean_std([c[k] for c in costs])[0] for k in COST_KEYS}
        machines = dict.fromkeys(m for r in self.runs for m in r.machines)
        return {
            "task": self.task,
            "algo": self.algo,
            "variant": self.variant,
            "seeds": " ".join(str(r.seed) for r in self.runs),
            "runs": len(self.runs),
            "finished": sum(r.finished for r in self.runs),
            "steps": self.steps,
            "final_mean": final[0],
            "final_std": final[1],
            "last_evals_mean": last_k[0],
            "last_evals_std": last_k[1],
            "best_mean": best[0],
            "best_std": best[1],
            "q_mean": _mean_std(q)[0],
            "penalty_name": name,
            "penalty": _mean_std(pen)[0],
            **cost,
            "cost_runs": len(costs),
            "machines": "; ".join(machines),
            "run_dirs": " ".join(str(r.path) for r in self.runs),
        }

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps evaluated in every run of the group, and the mean and std over seeds."""
        per_run = [
            {int(e["step"]): float(e["eval_normalized_score"]) for e in r.evals} for r in self.runs
        ]
        steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
        scores = np.array([[p[s] for s in steps] for p in per_run]).reshape(len(per_run), -1)
        return np.array(steps), scores.mean(0), scores.std(0)

    def seed_curves(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each run's own evaluations (steps, normalized scores), for drawing the seeds under
        their mean."""
        return [
            (
                np.array([int(e["step"]) for e in r.evals]),
                np.array([float(e["eval_normalized_score"]) for e in r.evals]),
            )
            for r in self.runs
        ]

    def series(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """An epoch column (e.g. ``q_mean``) at the steps every run of the group logged it,
        mean and std over seeds; None when no run logs it."""
        per_run = [
            {int(r["step"]): v for r in run.rows if (v := _float(r, column)) is not None}
            for run in self.runs
        ]
        steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
        if not steps:
            return None
        values = np.array([[p[s] for s in steps] for p in per_run])
        return np.array(steps), values.mean(0), values.std(0)


# What a diagnostics figure shows: (panel title, progress.csv columns looked for in order).
DIAGNOSTICS = (
    ("Q mean (batch, epoch mean)", ("q_mean",)),
    ("penalty before its coefficient", PENALTY_COLUMNS),
    ("model rollout reward mean", ("rollout_reward_mean",)),
    ("critic loss", ("critic_loss",)),
    # a mean of ten episodes hides the one that fell over (runs from before it lack the column)
    ("worst evaluation episode (normalized)", ("eval_normalized_score_min",)),
)


def diagnostic_panels(groups: list[Group]) -> dict[str, dict]:
    """{panel title: {group label: series}} for the panels some group has data for."""
    panels: dict[str, dict] = {}
    for title, columns in DIAGNOSTICS:
        for g in groups:
            found = next((s for c in columns if (s := g.series(c)) is not None), None)
            if found is not None:
                panels.setdefault(title, {})[g.label] = found
    return panels


def group_runs(runs: list[Run]) -> tuple[list[Group], list[str]]:
    """Groups of runs that may be averaged, and notes on (task, algo) pairs that split."""
    groups: dict[tuple, Group] = {}
    for r in sorted(runs, key=lambda r: (r.task, r.algo, r.seed, str(r.path))):
        key = (r.task, r.algo, r.experiment_hash, r.steps)
        groups.setdefault(key, Group(*key)).runs.append(r)
    notes = []
    by_pair: dict[tuple, list[Group]] = {}
    for g in groups.values():
        by_pair.setdefault((g.task, g.algo), []).append(g)
    for (task, algo), part in by_pair.items():
        if len(part) == 1:
            continue
        configs = [g.runs[0].experiment for g in part]
        differing = sorted(
            k for k in set().union(*configs) if len({str(c.get(k)) for c in configs}) > 1
        )
        for g in part:
            g.variant = f"{g.experiment_hash}, {g.steps} steps"
        what = f"config keys {', '.join(differing)}" if differing else "step counts"
        notes.append(
            f"{task} / {algo}: {len(part)} groups that differ in {what}; "
            "listed separately, not averaged"
        )
    return list(groups.values()), notes


def run_sim(run: Run):
    """The simulator and score references a run was evaluated with (D4RL's before runs
    recorded them)."""
    from micro.envs import SimSpec, d4rl_sim

    saved = run.config.get("sim")
    return SimSpec.from_dict(saved) if saved else d4rl_sim(parse_task(run.task).env)


def behavior_score(runs: list[Run]) -> float | None:
    """The dataset's own score when every run used one dataset (one SHA-256): the behavior
    policy's mean return that the runs recorded (``dataset_return_mean``: a file made here, or a
    Minari dataset's episodes), or, for runs from before that was recorded, read from the
    dataset where it still is."""
    datasets = {r.config.get("dataset_sha256") or r.config.get("dataset_file") for r in runs}
    if len(datasets) != 1 or None in datasets:
        return None
    raw = next(
        (r.config["dataset_return_mean"] for r in runs if "dataset_return_mean" in r.config), None
    )
    if raw is None:
        path = Path(runs[0].config.get("dataset_file", ""))
        if runs[0].config.get("dataset_source") == "minari":
            from micro.data.minari_data import mean_episode_return

            raw = mean_episode_return(path) if path.is_dir() else None
        else:
            raw = recorded_return(path) if path.is_file() else None
    return None if raw is None else run_sim(runs[0]).normalized_score(float(raw))


def _fmt(mean: float, std: float) -> str:
    return "–" if np.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


def _cost_cell(row: dict) -> str:
    if not row["cost_runs"]:
        return "– | –"
    hours = row["total_h"]
    wall = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
    timed = (
        ""
        if row["cost_runs"] == row["runs"]
        else f"; {row['cost_runs']} of {row['runs']} seeds timed"
    )
    return f"{row['train_s_per_1k']:.1f} | {wall} ({row['machines']}{timed})"


def write_report(runs: list[Run], out: Path) -> dict[str, Path]:
    from micro import plots

    groups, notes = group_runs(runs)
    rows = [g.summary() for g in groups]
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "summary.csv", "md": out / "summary.md"}
    with atomic_path(written["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"| task | algo | seeds | steps | final score | last {LAST_EVALS} evaluations | best score "
        "| Q mean | penalty | s / 1000 steps | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, g in zip(rows, groups, strict=True):
        running = "" if r["finished"] == r["runs"] else f" ({r['runs'] - r['finished']} running)"
        pen = "–" if not r["penalty_name"] else f"{r['penalty']:.3g} ({r['penalty_name']})"
        lines.append(
            f"| {r['task']} | {g.label} | {r['seeds']}{running} | {r['steps']} | "
            f"{_fmt(r['final_mean'], r['final_std'])} | "
            f"{_fmt(r['last_evals_mean'], r['last_evals_std'])} | "
            f"{_fmt(r['best_mean'], r['best_std'])} | "
            f"{'–' if np.isnan(r['q_mean']) else format(r['q_mean'], '.1f')} | {pen} "
            f"| {_cost_cell(r)} |"
        )
    lines += [
        "",
        "Scores are normalized returns (100 · (R − min) / (max − min), by each task's references: "
        "D4RL's, or a Minari dataset's own) of the deterministic policy at the run's last "
        f"evaluation (final), the mean of its last {LAST_EVALS} evaluations (steadier when single "
        "episodes can fail) and its best evaluation (best; picking the best of many noisy "
        "evaluations flatters a run), mean ± std (ddof 0) over seeds. Q mean and "
        "the penalty (before its coefficient: MICRO's U, MOBILE's std, MOPO's max‖σ‖) are the "
        "epoch means at the last evaluation, averaged over seeds. Cost, from each run's "
        "timings.json, mean over the seeds that timed every stage: wall seconds per 1000 "
        "gradient steps including what the algorithm does every so many steps (model rollouts, "
        "RAMBO's model updates; the split in summary.csv), then the whole run's wall time "
        "(dynamics fit, pretraining and evaluations included) and the machine; a run trained in a "
        "population of N (train.py --seeds) counts 1/N of the process's time. Compare costs "
        "only between rows of one machine.",
    ]
    if notes:
        lines += ["", "Not averaged:", *(f"- {n}" for n in notes)]
    for task in sorted({g.task for g in groups}):
        part = [g for g in groups if g.task == task]
        series = {g.label: g.curve() for g in part}
        behavior = behavior_score([r for g in part for r in g.runs])
        path = out / f"curves-{parse_task(task).slug}.png"
        plots.score_curves(
            series,
            path,
            title=f"{task}: normalized score (mean ± std over seeds)",
            reference=None if behavior is None else ("behavior policy (dataset)", behavior),
            seeds={g.label: g.seed_curves() for g in part if len(g.runs) > 1},
        )
        written[f"curves-{parse_task(task).slug}"] = path
        lines += ["", f"![{task}]({path.name})"]
        panels = diagnostic_panels(part)
        if panels:
            path = out / f"diagnostics-{parse_task(task).slug}.png"
            plots.diagnostic_curves(
                panels, path, title=f"{task}: training diagnostics (mean ± std over seeds)"
            )
            written[f"diagnostics-{parse_task(task).slug}"] = path
            lines += ["", f"![{task} diagnostics]({path.name})"]
    atomic_write_text(written["md"], "\n".join(lines) + "\n")
    return written
