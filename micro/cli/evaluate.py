"""``eval.py``: parse the flags into an ``EvalSpec`` and run the sweep (``micro.eval_sweep``):
clean score, physics sweeps (sim2real) and observation attacks of one policy or several (e.g.
MICRO and MOBILE seeds), drawn on one figure."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from micro import eval_sweep
from micro.eval_sweep import EvalSpec
from micro.robustness import ATTACK_MODES, PUBLISHED_EPS, PUBLISHED_FRICTION, PUBLISHED_GRAVITY
from micro.run_dir import EVAL_DIR
from micro.utils import ROBUSTNESS_SEED, resolve_device


def default_out(policy: Path, logdir: str) -> Path:
    """Where one policy's evaluation goes: ``eval/`` beside it, but for a policy shipped in this
    repository (``results/``), ``<logdir>/eval/<its folder in the repository>``, so that the
    repository gains no files."""
    folder = policy.resolve().parent
    repository = Path(__file__).resolve().parents[2]
    if folder.is_relative_to(repository):
        return Path(logdir) / EVAL_DIR / folder.relative_to(repository)
    return folder / EVAL_DIR


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
    p.add_argument(
        "--attack_mode",
        default="all",
        choices=[*ATTACK_MODES, "all"],
        help="the observation attack (all: each in turn)",
    )
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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--out",
        help="output folder (default: eval/ beside a single policy, or LOGDIR/eval/<its folder> "
        "for one shipped in this repository; LOGDIR/compare-<time>/ for several)",
    )
    p.add_argument("--force", action="store_true", help="replace earlier results in --out")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def spec_from_args(args) -> EvalSpec:
    """The evaluation eval.py's (or ``sweep.py eval``'s) flags ask for."""
    return EvalSpec(
        choice=args.choice,
        attack_mode=args.attack_mode,
        eps=args.eps or PUBLISHED_EPS,
        friction=args.friction or PUBLISHED_FRICTION,
        gravity=args.gravity or PUBLISHED_GRAVITY,
        mass=args.mass,
        eval_episodes=args.eval_episodes,
        seed=args.seed,
        n_envs=args.n_envs,
        group=args.group,
        progress=not args.no_progress,
    )


def _eval(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    device = resolve_device(args.device)
    paths = args.policy_path or []
    if not paths:
        paths = [str(eval_sweep.newest_policy(args.logdir))]
        print(f"policy: {paths[0]} (the newest under {args.logdir}/)")
    task, policies = eval_sweep.load_policies(paths, args.task, device)
    sim = policies[0].sim
    print(
        f"simulator: {sim.env_id}; scores normalized by {sim.ref_source}'s references "
        f"({sim.ref_min:g} / {sim.ref_max:g})"
    )
    several = len(policies) > 1
    if args.out:
        out = Path(args.out)
    elif several:
        out = Path(args.logdir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        out = default_out(policies[0].path, args.logdir)
    files = eval_sweep.prepare_out(spec, out, args.force)
    start = time.time()
    parts, episode_parts = [], []
    for policy in policies:
        if several:
            print(f"{policy.label}: {policy.path}")
        part, keys, episodes = eval_sweep.sweep(spec, policy, device)
        parts.append(part)
        episode_parts.append(episodes)
    rows = eval_sweep.finish(spec, task, policies, parts, episode_parts, keys, files)
    took = time.time() - start
    print(
        f"{args.choice}: {len(policies)} polic{'ies' if several else 'y'}, {len(rows)} row(s), "
        f"{args.eval_episodes} episodes each, {took:.0f}s"
    )
    for path in files.values():
        print(f"wrote {path}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    from micro.cli import guarded

    with torch.no_grad():  # scoped: the demo and tests call this in their own process
        return guarded(_eval, list(sys.argv[1:] if argv is None else argv))
