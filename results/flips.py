"""Which halfcheetah episodes flip: the failure behind the shipped policies' low episodes.

A halfcheetah that turns onto its back (root pitch |rooty| > 90°) rarely gets up again and runs on
at a fraction of its speed, so one flip in ten episodes moves a mean score by several points. For
each policy, this runs deterministic episodes and prints each episode's normalized score and the
step of its first flip:

    python results/flips.py results/halfcheetah-medium-200k/*/seed0/policy.pt [--episodes 10]
    python results/flips.py --dataset data/halfcheetah-medium-200k.hdf5   # the behavior policy's

With ``--dataset`` it counts the flipped episodes of a D4RL-format halfcheetah file instead
(episodes end at ``terminals`` or ``timeouts``), with their mean return against the upright ones.

The episodes are eval.py's: the same runner, five simulators in lockstep, episode i seeded
``--seed + i`` (eval.py's default seeds), so the first ten are the episodes of
``eval.py --choice clean`` (at the same torch thread count).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from micro.evaluation import EvalResult, run_episodes
from micro.policy_file import load_policy
from micro.utils import ROBUSTNESS_SEED

ROOTY = 1  # HalfCheetah-v4 observation: qpos[1:] then qvel; qpos[2] is the root's pitch


def policy_flips(
    policy, episodes: int, seed: int, envs: list | None = None
) -> tuple[EvalResult, list[int | None]]:
    """``episodes`` deterministic episodes of a policy file's actor (eval.py's runner and seeds),
    and the step of each episode's first flip (None where it stays upright)."""
    first: dict[int, int] = {}

    def watch(i: int, t: int, obs: np.ndarray) -> None:
        if i not in first and abs(obs[ROOTY]) > math.pi / 2:
            first[i] = t

    result = run_episodes(policy.actor, policy.sim, episodes, seed, envs=envs, observer=watch)
    return result, [first.get(i) for i in range(episodes)]


def dataset_flips(path: str) -> str:
    """How many of a halfcheetah dataset's episodes flip, and their mean return."""
    from micro.data.d4rl import read_hdf5

    raw = read_hdf5(path)
    ends = np.flatnonzero(np.logical_or(raw["terminals"], raw["timeouts"])) + 1
    episodes = np.split(np.arange(len(raw["rewards"])), ends[ends < len(raw["rewards"])])
    flipped = [bool((np.abs(raw["observations"][e, ROOTY]) > math.pi / 2).any()) for e in episodes]
    returns = np.array([raw["rewards"][e].sum() for e in episodes])
    mask = np.array(flipped)
    upright = f"{returns[~mask].mean():.0f}" if (~mask).any() else "–"
    down = f"{returns[mask].mean():.0f}" if mask.any() else "–"
    return (
        f"{path}: {mask.sum()} of {len(episodes)} episodes flip; mean return {down} flipped, "
        f"{upright} upright"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("policy_path", nargs="*")
    p.add_argument("--dataset", help="count the flipped episodes of this D4RL-format file")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=ROBUSTNESS_SEED)
    args = p.parse_args()
    if args.dataset:
        print(dataset_flips(args.dataset))
    for path in args.policy_path:
        policy = load_policy(path, None, torch.device("cpu"))
        if not policy.sim.env_id.startswith("HalfCheetah"):
            raise SystemExit(f"{path} is a {policy.sim.env_id} policy; this is for halfcheetah")
        result, flips = policy_flips(policy, args.episodes, args.seed)
        scores = [policy.sim.normalized_score(float(r)) for r in result.returns]
        print(
            f"{policy.label}: {sum(f is not None for f in flips)} of {args.episodes} episodes "
            f"flip; normalized {np.mean(scores):.1f} ± {np.std(scores):.1f}; "
            + ", ".join(
                f"{s:.1f}" + (f" (flips at {f})" if f is not None else "")
                for s, f in zip(scores, flips, strict=True)
            )
        )


if __name__ == "__main__":
    main()
