"""Evaluation sweeps of policy files, as a library: the clean score, physics perturbations
(sim2real) and observation attacks of one policy or several, with their tables, figures,
summaries and provenance. ``eval.py`` parses its flags into an ``EvalSpec`` and calls this;
``sweep.py eval`` runs ``sweep`` for each policy of a sweep on Ray workers and ``finish`` once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.envs import parse_task
from micro.evaluation import EvalResult, run_episodes
from micro.policy_file import LoadedPolicy, load_policy, read_policy_task
from micro.robustness import (
    ATTACK_MODES,
    PUBLISHED_EPS,
    PUBLISHED_FRICTION,
    PUBLISHED_GRAVITY,
    Attack,
    Physics,
)
from micro.run_dir import POLICY_FILE, SNAPSHOTS_DIR, RunDir
from micro.utils import (
    ROBUSTNESS_SEED,
    atomic_path,
    atomic_write_text,
    bar_disable,
    check_seed,
    sha256_file,
)

CHOICES = ("clean", "sim2real", "attack")
GROUPINGS = ("auto", "policy", "algo")
RESULT_COLUMNS = ["episodes", "return_mean", "return_std", "normalized_mean", "normalized_std"]


def _check_positive(name: str, values: Sequence[float], allow_zero: bool = False) -> None:
    for v in values:
        if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise MicroError(
                f"--{name} values must be {'non-negative' if allow_zero else 'positive'}; got {v}"
            )


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate and how: checked when made (a bad value is a ``MicroError`` naming its
    flag), so nothing is written for bad input."""

    choice: str  # clean | sim2real | attack
    attack_mode: str = "all"  # one of ATTACK_MODES, or all
    eps: tuple[float, ...] = PUBLISHED_EPS  # attack budgets, x the data's observation std
    friction: tuple[float, ...] = PUBLISHED_FRICTION  # friction scales
    gravity: tuple[float, ...] = PUBLISHED_GRAVITY  # gravity scales
    mass: tuple[float, ...] = (1.0,)  # body mass scales
    eval_episodes: int = 10  # episodes per grid cell / budget
    seed: int = ROBUSTNESS_SEED  # episode i uses seed + i in every cell
    n_envs: int = 5  # simulators stepped in lockstep
    group: str = "auto"  # several policies: a line/panel per policy, or per algorithm
    progress: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        for name in ("eps", "friction", "gravity", "mass"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.choice not in CHOICES:
            raise MicroError(f"choice must be one of {', '.join(CHOICES)}")
        if self.attack_mode not in (*ATTACK_MODES, "all"):
            raise MicroError(f"attack_mode must be one of {', '.join(ATTACK_MODES)}, all")
        if self.group not in GROUPINGS:
            raise MicroError(f"group must be one of {', '.join(GROUPINGS)}")
        if self.eval_episodes < 1 or self.n_envs < 1:
            raise MicroError("--eval_episodes and --n_envs must be at least 1")
        check_seed(self.seed)
        if self.choice == "sim2real":
            _check_positive("friction", self.friction)
            _check_positive("gravity", self.gravity, allow_zero=True)
            _check_positive("mass", self.mass)
        if self.choice == "attack":
            _check_positive("eps", self.eps, allow_zero=True)

    @property
    def stem(self) -> str:
        """The output files' name: clean, sim2real or attack-<mode>."""
        return {"clean": "clean", "sim2real": "sim2real"}.get(
            self.choice, f"attack-{self.attack_mode}"
        )

    def to_dict(self) -> dict:
        """Plain values (for a Ray task); ``EvalSpec(**d)`` rebuilds it."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --- rows -----------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def episode_rows(res: EvalResult, seed: int, cell: dict | None = None) -> list[dict]:
    """Each episode of a cell (a physics setting, an attack budget, or the clean evaluation):
    the cell's keys, then the episode's index, simulator seed (``env_seed``: ``seed`` is a
    policy's own when several share a file), return, normalized score and length."""
    return [
        {**(cell or {}), **{("env_seed" if k == "seed" else k): v for k, v in r.items()}}
        for r in res.episode_rows(seed)
    ]


# --- one policy's sweep ------------------------------------------------------------------------


def clean(spec: EvalSpec, policy: LoadedPolicy, device) -> tuple[list[dict], list[dict]]:
    """The plain score: its summary row, and one row per episode (seed, return, length), which
    shows what a mean ± std hides, e.g. one episode of ten that went wrong."""
    res = run_episodes(
        policy.actor, policy.sim, spec.eval_episodes, spec.seed, n_envs=spec.n_envs, device=device
    )
    return [res.row()], episode_rows(res, spec.seed)


def sim2real(spec: EvalSpec, policy: LoadedPolicy, device) -> tuple[list[dict], list[dict]]:
    envs = [policy.sim.make() for _ in range(spec.n_envs)]
    cells = [(m, f, g) for m in spec.mass for f in spec.friction for g in spec.gravity]
    rows, episodes = [], []
    bar = bar_disable(spec.progress)
    for m, f, g in tqdm(cells, desc="sim2real", unit="cell", disable=bar):
        res = run_episodes(
            policy.actor,
            policy.sim,
            spec.eval_episodes,
            spec.seed,
            physics=Physics(f, g, m),
            envs=envs,
            device=device,
        )
        cell = {"friction": f, "gravity": g, "mass": m}
        rows.append({**cell, **res.row()})
        episodes += episode_rows(res, spec.seed, cell)
    return rows, episodes


def attack(spec: EvalSpec, policy: LoadedPolicy, device) -> tuple[list[dict], list[dict]]:
    modes = list(ATTACK_MODES) if spec.attack_mode == "all" else [spec.attack_mode]
    envs = [policy.sim.make() for _ in range(spec.n_envs)]
    cells = [(mode, e) for mode in modes for e in spec.eps]
    rows, episodes = [], []
    bar = bar_disable(spec.progress)
    for mode, e in tqdm(cells, desc="attack", unit="budget", disable=bar):
        res = run_episodes(
            policy.actor,
            policy.sim,
            spec.eval_episodes,
            spec.seed,
            attack=Attack(mode, e),
            critics=policy.critics,
            obs_std=policy.obs_std,
            envs=envs,
            device=device,
        )
        cell = {"attack_mode": mode, "eps": e}
        rows.append({**cell, **res.row()})
        episodes += episode_rows(res, spec.seed, cell)
    return rows, episodes


def sweep(
    spec: EvalSpec, policy: LoadedPolicy, device: torch.device
) -> tuple[list[dict], list[str], list[dict]]:
    """One policy's rows, the keys that name a row, and its episodes' rows."""
    if spec.choice == "clean":
        rows, episodes = clean(spec, policy, device)
        return rows, [], episodes
    if spec.choice == "sim2real":
        rows, episodes = sim2real(spec, policy, device)
        return rows, ["friction", "gravity", "mass"], episodes
    rows, episodes = attack(spec, policy, device)
    return rows, ["attack_mode", "eps"], episodes


# --- which policies ----------------------------------------------------------------------------


def newest_policy(logdir: str | Path) -> Path:
    """The most recently written ``policy.pt`` below ``logdir``."""
    found = sorted(Path(logdir).glob(f"**/{POLICY_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MicroError(
            f"no --policy_path given and no policy.pt under {logdir}/; "
            "train one with train.py or pass --policy_path FILE"
        )
    return found[-1]


def policy_file_of(path: str) -> str:
    """A ``--policy_path``: a policy file, or a run directory standing for its policy.pt."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    run = RunDir(folder)
    if run.policy_file.is_file():
        return str(run.policy_file)
    if run.checkpoint_file.is_file():
        raise MicroError(
            f"run {folder} has no policy.pt yet (still training, or killed); export its last "
            f"checkpoint with python -m micro.results export {folder} and pass that file"
        )
    raise MicroError(f"{folder} is a folder without policy.pt; pass a policy file or a run folder")


def load_policies(
    paths: Sequence[str], task: str | None, device: torch.device
) -> tuple[str, list[LoadedPolicy]]:
    """The task (``task``, else the first policy's) and the policies; all must be for one task
    and one simulator."""
    paths = [policy_file_of(p) for p in paths]
    task = task or read_policy_task(paths[0])
    parse_task(task)  # unknown task -> one-line error
    if len(set(map(str, paths))) != len(paths):
        raise MicroError("the same --policy_path is given twice")
    policies = [load_policy(p, task, device) for p in paths]
    sims = {p.sim for p in policies}
    if len(sims) > 1:
        raise MicroError(
            f"the policies were trained for {task} on different simulators or score references "
            f"({', '.join(sorted(s.env_id + ' / ' + s.ref_source for s in sims))}); "
            "compare them in separate runs of eval.py"
        )
    return task, policies


def group_names(policies: list[LoadedPolicy], mode: str) -> list[str]:
    """The line/panel each policy belongs to: its algorithm (mean over seeds) or itself."""
    algos = [p.algo for p in policies]
    if mode == "auto":
        mode = "algo" if len(set(algos)) < len(algos) else "policy"
    if mode == "algo":
        return algos
    labels = [p.label for p in policies]
    if len(set(labels)) == len(labels):
        return labels
    # same algorithm and seed: tell them apart by training step (snapshots of one run), else by run
    by_step = [f"{p.label}, step {p.step}" for p in policies]
    if None not in {p.step for p in policies} and len(set(by_step)) == len(by_step):
        return by_step
    return [f"{p.label} ({run_folder(p.path).name})" for p in policies]


def run_folder(policy_path: Path) -> Path:
    """The run a policy file belongs to: its folder, or the run above ``snapshots/``."""
    folder = policy_path.parent
    return folder.parent if folder.name == SNAPSHOTS_DIR else folder


# --- outputs ------------------------------------------------------------------------------------


def output_files(spec: EvalSpec, out: Path) -> dict[str, Path]:
    stem = spec.stem
    files = {"csv": out / f"{stem}.csv", "episodes": out / f"{stem}-episodes.csv"}
    if spec.choice != "clean":
        files |= {"png": out / f"{stem}.png", "summary": out / f"{stem}-summary.md"}
    return {**files, "provenance": out / f"{stem}-provenance.json"}


def prepare_out(spec: EvalSpec, out: Path, force: bool = False) -> dict[str, Path]:
    """The output files in ``out``, refusing to replace earlier results unless ``force``."""
    files = output_files(spec, out)
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise MicroError(
            f"{existing[0]} exists from an earlier evaluation; pass --out DIR or --force"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MicroError(f"cannot create output folder {out}: {exc.strerror}") from None
    return files


def write_provenance(path: Path, policies: list[LoadedPolicy]) -> None:
    """What made these numbers: the command, code, libraries and machine (torch's thread
    count included: it moves the numbers slightly), and each policy file's SHA-256."""
    from micro.provenance import session_record

    record = session_record()
    record["policies"] = [{"path": str(p.path), "sha256": sha256_file(p.path)} for p in policies]
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def print_table(rows: list[dict], keys: list[str]) -> None:
    header = [*keys, "normalized (mean ± std)", "return (mean ± std)"]
    lines = [
        [
            *(f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys),
            f"{r['normalized_mean']:.1f} ± {r['normalized_std']:.1f}",
            f"{r['return_mean']:.1f} ± {r['return_std']:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


def with_group_means(rows: list[dict], keys: list[str]) -> list[dict]:
    """The table's rows, each policy's under its label, and after them a mean row per cell of
    each group of several policies (an algorithm's seeds): the mean of their normalized means
    and returns, ± the std over the policies (ddof 0)."""
    out = list(rows)
    for group in dict.fromkeys(r["group"] for r in rows):
        part = [r for r in rows if r["group"] == group]
        n = len({r["label"] for r in part})
        if n < 2:
            continue
        for cell in dict.fromkeys(tuple(r[k] for k in keys) for r in part):
            members = [r for r in part if tuple(r[k] for k in keys) == cell]
            scores = np.array([r["normalized_mean"] for r in members])
            returns = np.array([r["return_mean"] for r in members])
            out.append(
                {
                    "label": f"{group}: mean of {n}",
                    **dict(zip(keys, cell, strict=True)),
                    "normalized_mean": float(scores.mean()),
                    "normalized_std": float(scores.std()),
                    "return_mean": float(returns.mean()),
                    "return_std": float(returns.std()),
                }
            )
    return out


def tagged_rows(policies: list[LoadedPolicy], parts: list[list[dict]], group: str) -> list[dict]:
    """Several policies' rows in one table, each row naming its policy (file, algorithm, seed,
    and the label that tells it from the others) and the line/panel it belongs to; one policy's
    rows as they are."""
    if len(policies) == 1:
        return list(parts[0])
    rows = []
    labels, groups = group_names(policies, "policy"), group_names(policies, group)
    for policy, label, name, part in zip(policies, labels, groups, parts, strict=True):
        who = {"policy": str(policy.path), "algo": policy.algo, "seed": policy.seed}
        rows += [{**who, "label": label, "group": name, **r} for r in part]
    return rows


def write_results(
    spec: EvalSpec,
    task: str,
    rows: list[dict],
    files: dict[str, Path],
    policies: list[LoadedPolicy],
) -> str | None:
    """The CSV and, for sweeps, the figure (one policy's, or several policies' compared) and
    the summary of its numbers, which is returned."""
    write_csv(files["csv"], rows)
    if "png" not in files:
        return None
    from micro import plots, robustness_summary

    several = len(policies) > 1
    grouped = rows if several else [{"group": policies[0].label, **r} for r in rows]
    what, compare, draw_one, summarize = {
        "sim2real": (
            "normalized score",
            plots.sim2real_comparison,
            plots.sim2real_heatmap,
            robustness_summary.sim2real_summary,
        ),
        "attack": (
            "observation attacks",
            plots.attack_comparison,
            plots.attack_curves,
            robustness_summary.attack_summary,
        ),
    }[spec.choice]
    (compare if several else draw_one)(rows, files["png"], title=f"{task}: {what}")
    summary = summarize(grouped)
    atomic_write_text(files["summary"], summary)
    return summary


def finish(
    spec: EvalSpec,
    task: str,
    policies: list[LoadedPolicy],
    parts: list[list[dict]],
    episode_parts: list[list[dict]],
    keys: list[str],
    files: dict[str, Path],
) -> list[dict]:
    """Every policy's rows into one table, written with every episode's row (and, for sweeps,
    the figure and summary) and printed; returns the table."""
    several = len(policies) > 1
    rows = tagged_rows(policies, parts, spec.group)
    summary = write_results(spec, task, rows, files, policies)
    if several:
        print_table(with_group_means(rows, keys), ["label", *keys])
    else:
        print_table(rows, keys)
    if summary:
        print(f"\n{summary}")
    write_csv(files["episodes"], tagged_rows(policies, episode_parts, spec.group))
    write_provenance(files["provenance"], policies)
    if spec.choice == "clean":
        for policy, episodes in zip(policies, episode_parts, strict=True):
            scores = ", ".join(f"{e['normalized']:.1f}" for e in episodes)
            print(f"{policy.label + ': ' if several else ''}normalized score by episode: {scores}")
    return rows
