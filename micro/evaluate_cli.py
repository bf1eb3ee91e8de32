"""``eval.py``: clean score, physics sweeps (sim2real) and observation attacks of one policy or
several (e.g. MICRO and MOBILE seeds), drawn on one figure."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
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
from micro.run_dir import EVAL_DIR, POLICY_FILE, SNAPSHOTS_DIR, RunDir
from micro.utils import (
    ROBUSTNESS_SEED,
    atomic_path,
    atomic_write_text,
    bar_disable,
    resolve_device,
    sha256_file,
)

RESULT_COLUMNS = ["episodes", "return_mean", "return_std", "normalized_mean", "normalized_std"]


def build_parser():
    from micro.cli import OneLineParser

    p = OneLineParser(
        prog="eval.py",
        description="Evaluate trained policies (MICRO, MOBILE, MOPO): clean score, "
        "physics perturbations (sim2real) or observation attacks. Several --policy_path "
        "files are swept alike and drawn on one figure.",
    )
    p.add_argument(
        "--task", help="the task the policies were trained on (default: read from the policy)"
    )
    p.add_argument(
        "--policy_path",
        nargs="+",
        help="policy files, or run folders (their policy.pt); default: the newest policy.pt "
        "under --logdir",
    )
    p.add_argument("--logdir", default="runs", help="where to look for the newest policy.pt")
    p.add_argument(
        "--group",
        choices=["auto", "policy", "algo"],
        default="auto",
        help="several policies: one line/panel per policy, or per algorithm with mean ± std "
        "over its seeds (auto: per algorithm when one has several policies)",
    )
    p.add_argument("--choice", required=True, choices=["clean", "sim2real", "attack"])
    p.add_argument("--attack_mode", default="all", choices=[*ATTACK_MODES, "all"])
    p.add_argument(
        "--eps", type=float, nargs="+", help="attack budgets (default linspace(0, 0.2, 10))"
    )
    p.add_argument(
        "--friction", type=float, nargs="+", help="friction scales (default linspace(0.5, 1.5, 10))"
    )
    p.add_argument(
        "--gravity", type=float, nargs="+", help="gravity scales (default linspace(0.5, 5, 10))"
    )
    p.add_argument(
        "--mass", type=float, nargs="+", default=[1.0], help="body mass scales (default 1)"
    )
    p.add_argument("--eval_episodes", type=int, default=10, help="episodes per grid cell / budget")
    p.add_argument(
        "--seed", type=int, default=ROBUSTNESS_SEED, help="episode i uses seed + i in every cell"
    )
    p.add_argument("--n_envs", type=int, default=5, help="simulators stepped in lockstep")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out",
        help="output folder (default: eval/ beside a single policy; runs/compare-<time>/ "
        "for several)",
    )
    p.add_argument("--force", action="store_true", help="replace earlier results in --out")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _check_positive(name: str, values: Sequence[float], allow_zero: bool = False) -> None:
    for v in values:
        if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise MicroError(
                f"--{name} values must be {'non-negative' if allow_zero else 'positive'}; got {v}"
            )


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


def sim2real(args, policy, device, progress: bool) -> tuple[list[dict], list[dict]]:
    friction = args.friction or list(PUBLISHED_FRICTION)
    gravity = args.gravity or list(PUBLISHED_GRAVITY)
    _check_positive("friction", friction)
    _check_positive("gravity", gravity, allow_zero=True)
    _check_positive("mass", args.mass)
    envs = [policy.sim.make() for _ in range(args.n_envs)]
    cells = [(m, f, g) for m in args.mass for f in friction for g in gravity]
    rows, episodes = [], []
    for m, f, g in tqdm(cells, desc="sim2real", unit="cell", disable=bar_disable(progress)):
        res = run_episodes(
            policy.actor,
            policy.sim,
            args.eval_episodes,
            args.seed,
            physics=Physics(f, g, m),
            envs=envs,
            device=device,
        )
        cell = {"friction": f, "gravity": g, "mass": m}
        rows.append({**cell, **res.row()})
        episodes += episode_rows(res, args.seed, cell)
    return rows, episodes


def attack(args, policy, device, progress: bool) -> tuple[list[dict], list[dict]]:
    eps = args.eps or list(PUBLISHED_EPS)
    _check_positive("eps", eps, allow_zero=True)
    modes = list(ATTACK_MODES) if args.attack_mode == "all" else [args.attack_mode]
    envs = [policy.sim.make() for _ in range(args.n_envs)]
    cells = [(mode, e) for mode in modes for e in eps]
    rows, episodes = [], []
    for mode, e in tqdm(cells, desc="attack", unit="budget", disable=bar_disable(progress)):
        res = run_episodes(
            policy.actor,
            policy.sim,
            args.eval_episodes,
            args.seed,
            attack=Attack(mode, e),
            critics=policy.critics,
            obs_std=policy.obs_std,
            envs=envs,
            device=device,
        )
        cell = {"attack_mode": mode, "eps": e}
        rows.append({**cell, **res.row()})
        episodes += episode_rows(res, args.seed, cell)
    return rows, episodes


def output_files(args, out: Path) -> dict[str, Path]:
    stem = {"clean": "clean", "sim2real": "sim2real"}.get(args.choice, f"attack-{args.attack_mode}")
    files = {"csv": out / f"{stem}.csv", "episodes": out / f"{stem}-episodes.csv"}
    if args.choice != "clean":
        files |= {"png": out / f"{stem}.png", "summary": out / f"{stem}-summary.md"}
    return {**files, "provenance": out / f"{stem}-provenance.json"}


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


def load_policies(args, device: torch.device) -> tuple[str, list[LoadedPolicy]]:
    """The task and the policies to sweep; all must be for one task."""
    paths = [policy_file_of(p) for p in args.policy_path or []]
    if not paths:
        paths = [str(newest_policy(args.logdir))]
        print(f"policy: {paths[0]} (the newest under {args.logdir}/)")
    task = args.task or read_policy_task(paths[0])
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
    sim = policies[0].sim
    print(
        f"simulator: {sim.env_id}; scores normalized by {sim.ref_source}'s references "
        f"({sim.ref_min:g} / {sim.ref_max:g})"
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


def clean(args, policy: LoadedPolicy, device) -> tuple[list[dict], list[dict]]:
    """The plain score: its summary row, and one row per episode (seed, return, length), which
    shows what a mean ± std hides, e.g. one episode of ten that went wrong."""
    res = run_episodes(
        policy.actor, policy.sim, args.eval_episodes, args.seed, n_envs=args.n_envs, device=device
    )
    return [res.row()], episode_rows(res, args.seed)


def sweep(
    args, policy: LoadedPolicy, device, progress: bool
) -> tuple[list[dict], list[str], list[dict]]:
    """One policy's rows, the keys that name a row, and its episodes' rows."""
    if args.choice == "clean":
        rows, episodes = clean(args, policy, device)
        return rows, [], episodes
    if args.choice == "sim2real":
        rows, episodes = sim2real(args, policy, device, progress)
        return rows, ["friction", "gravity", "mass"], episodes
    rows, episodes = attack(args, policy, device, progress)
    return rows, ["attack_mode", "eps"], episodes


def check_args(args) -> None:
    if args.eval_episodes < 1 or args.n_envs < 1:
        raise MicroError("--eval_episodes and --n_envs must be at least 1")


def prepare_out(args, out: Path) -> dict[str, Path]:
    """The output files in ``out``, refusing to replace earlier results without --force."""
    files = output_files(args, out)
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not args.force:
        raise MicroError(
            f"{existing[0]} exists from an earlier evaluation; pass --out DIR or --force"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MicroError(f"cannot create output folder {out}: {exc.strerror}") from None
    return files


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
    args, task: str, rows: list[dict], files: dict[str, Path], policies: list[LoadedPolicy]
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
            "normalized return",
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
    }[args.choice]
    (compare if several else draw_one)(rows, files["png"], title=f"{task}: {what}")
    summary = summarize(grouped)
    atomic_write_text(files["summary"], summary)
    return summary


def _eval(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    task, policies = load_policies(args, device)
    several = len(policies) > 1
    if args.out:
        out = Path(args.out)
    elif several:
        out = Path(args.logdir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        out = policies[0].path.resolve().parent / EVAL_DIR
    files = prepare_out(args, out)
    progress = not args.no_progress
    start = time.time()
    parts, episode_parts = [], []
    for policy in policies:
        if several:
            print(f"{policy.label}: {policy.path}")
        part, keys, episodes = sweep(args, policy, device, progress)
        parts.append(part)
        episode_parts.append(episodes)
    rows = finish(args, task, policies, parts, episode_parts, keys, files)
    took = time.time() - start
    print(
        f"{args.choice}: {len(policies)} polic{'ies' if several else 'y'}, {len(rows)} row(s), "
        f"{args.eval_episodes} episodes each, {took:.0f}s"
    )
    for path in files.values():
        print(f"wrote {path}")
    return 0


def finish(
    args,
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
    rows = tagged_rows(policies, parts, args.group)
    summary = write_results(args, task, rows, files, policies)
    print_table(rows, (["group"] if several else []) + keys)
    if summary:
        print(f"\n{summary}")
    write_csv(files["episodes"], tagged_rows(policies, episode_parts, args.group))
    write_provenance(files["provenance"], policies)
    if args.choice == "clean":
        for policy, episodes in zip(policies, episode_parts, strict=True):
            scores = ", ".join(f"{e['normalized']:.1f}" for e in episodes)
            print(f"{policy.label + ': ' if several else ''}normalized score by episode: {scores}")
    return rows


def eval_main(argv: Sequence[str] | None = None) -> int:
    from micro.cli import guarded

    with torch.no_grad():  # scoped: the demo and tests call this in their own process
        return guarded(_eval, list(sys.argv[1:] if argv is None else argv))
