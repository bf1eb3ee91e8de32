"""``eval.py``: clean score, physics sweeps (sim2real) and observation attacks of a policy."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.envs import make_env, parse_task
from micro.evaluation import run_episodes
from micro.robustness import (
    ATTACK_MODES,
    PUBLISHED_EPS,
    PUBLISHED_FRICTION,
    PUBLISHED_GRAVITY,
    Attack,
    Physics,
    load_policy,
)
from micro.utils import atomic_path, resolve_device

RESULT_COLUMNS = ["episodes", "return_mean", "return_std", "normalized_mean", "normalized_std"]


def build_parser():
    from micro.cli import OneLineParser

    p = OneLineParser(
        prog="eval.py",
        description="Evaluate a trained MICRO policy: clean score, "
        "physics perturbations (sim2real) or observation attacks.",
    )
    p.add_argument("--task", required=True, help="the task the policy was trained on")
    p.add_argument("--policy_path", required=True, help="policy.pt from a training run")
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
    p.add_argument("--seed", type=int, default=1000, help="episode i uses seed + i in every cell")
    p.add_argument("--n_envs", type=int, default=5, help="simulators stepped in lockstep")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output folder (default: eval/ beside the policy)")
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


def sim2real(args, policy, device, progress: bool) -> list[dict]:
    friction = args.friction or list(PUBLISHED_FRICTION)
    gravity = args.gravity or list(PUBLISHED_GRAVITY)
    _check_positive("friction", friction)
    _check_positive("gravity", gravity, allow_zero=True)
    _check_positive("mass", args.mass)
    envs = [make_env(policy.env) for _ in range(args.n_envs)]
    cells = [(m, f, g) for m in args.mass for f in friction for g in gravity]
    rows = []
    for m, f, g in tqdm(cells, desc="sim2real", unit="cell", disable=not progress):
        res = run_episodes(
            policy.actor,
            policy.env,
            args.eval_episodes,
            args.seed,
            physics=Physics(f, g, m),
            envs=envs,
            device=device,
        )
        rows.append({"friction": f, "gravity": g, "mass": m, **res.row()})
    return rows


def attack(args, policy, device, progress: bool) -> list[dict]:
    eps = args.eps or list(PUBLISHED_EPS)
    _check_positive("eps", eps, allow_zero=True)
    modes = list(ATTACK_MODES) if args.attack_mode == "all" else [args.attack_mode]
    envs = [make_env(policy.env) for _ in range(args.n_envs)]
    cells = [(mode, e) for mode in modes for e in eps]
    rows = []
    for mode, e in tqdm(cells, desc="attack", unit="budget", disable=not progress):
        res = run_episodes(
            policy.actor,
            policy.env,
            args.eval_episodes,
            args.seed,
            attack=Attack(mode, e),
            critics=policy.critics,
            obs_std=policy.obs_std,
            envs=envs,
            device=device,
        )
        rows.append({"attack_mode": mode, "eps": e, **res.row()})
    return rows


def output_files(args, out: Path) -> dict[str, Path]:
    if args.choice == "clean":
        return {"csv": out / "clean.csv"}
    stem = "sim2real" if args.choice == "sim2real" else f"attack-{args.attack_mode}"
    return {"csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}


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


def _eval(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    parse_task(args.task)  # unknown task -> one-line error
    if args.eval_episodes < 1 or args.n_envs < 1:
        raise MicroError("--eval_episodes and --n_envs must be at least 1")
    device = resolve_device(args.device)
    policy = load_policy(args.policy_path, args.task, device)
    out = Path(args.out) if args.out else Path(args.policy_path).resolve().parent / "eval"
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
    progress = not args.no_progress
    start = time.time()
    if args.choice == "clean":
        res = run_episodes(
            policy.actor,
            policy.env,
            args.eval_episodes,
            args.seed,
            n_envs=args.n_envs,
            device=device,
        )
        rows, keys = [res.row()], []
    elif args.choice == "sim2real":
        rows, keys = sim2real(args, policy, device, progress), ["friction", "gravity", "mass"]
    else:
        rows, keys = attack(args, policy, device, progress), ["attack_mode", "eps"]
    write_csv(files["csv"], rows)
    if "png" in files:
        from micro import plots

        if args.choice == "sim2real":
            plots.sim2real_heatmap(rows, files["png"], title=f"{args.task}: normalized return")
        else:
            plots.attack_curves(rows, files["png"], title=f"{args.task}: observation attacks")
    print_table(rows, keys)
    took = time.time() - start
    print(f"{args.choice}: {len(rows)} row(s), {args.eval_episodes} episodes each, {took:.0f}s")
    for path in files.values():
        print(f"wrote {path}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    from micro.cli import guarded

    torch.set_grad_enabled(False)
    return guarded(_eval, list(sys.argv[1:] if argv is None else argv))
