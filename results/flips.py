"""Which halfcheetah episodes flip: the failure behind the shipped policies' low episodes.

A halfcheetah that turns onto its back (root pitch |rooty| > 90°) rarely gets up again and runs on
at a fraction of its speed, so one flip in ten episodes moves a mean score by several points. For
each policy, this runs deterministic episodes one simulator at a time and prints each episode's
normalized score and the step of its first flip:

    python results/flips.py results/halfcheetah-medium-200k/*/seed0/policy.pt [--episodes 10]
    python results/flips.py --dataset data/halfcheetah-medium-200k.hdf5   # the behavior policy's

With ``--dataset`` it counts the flipped episodes of a D4RL-format halfcheetah file instead
(episodes end at ``terminals`` or ``timeouts``), with their mean return against the upright ones.

Episode i uses seed ``--seed + i`` (eval.py's default seeds); eval.py steps five simulators in
lockstep, whose batched products round differently, so which episodes flip can differ from its
run while the count stays comparable.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from micro.policy_file import load_policy
from micro.utils import ROBUSTNESS_SEED

ROOTY = 1  # HalfCheetah-v4 observation: qpos[1:] then qvel; qpos[2] is the root's pitch


@torch.no_grad()
def episode(policy, env, seed: int) -> tuple[float, int | None]:
    """The return of one deterministic episode and the step of its first flip (or None)."""
    obs, _ = env.reset(seed=seed)
    total, flip = 0.0, None
    for t in range(1000):
        action = policy.actor.deterministic(torch.as_tensor(obs, dtype=torch.float32)[None])
        obs, reward, terminated, truncated, _ = env.step(np.asarray(action[0]))
        total += float(reward)
        if flip is None and abs(obs[ROOTY]) > math.pi / 2:
            flip = t
        if terminated or truncated:
            break
    return total, flip


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
        env = policy.sim.make()
        results = [episode(policy, env, args.seed + i) for i in range(args.episodes)]
        scores = [policy.sim.normalized_score(r) for r, _ in results]
        flips = [f for _, f in results if f is not None]
        print(
            f"{policy.label}: {len(flips)} of {args.episodes} episodes flip; normalized "
            f"{np.mean(scores):.1f} ± {np.std(scores):.1f}; "
            + ", ".join(
                f"{s:.1f}" + (f" (flips at {f})" if f is not None else "")
                for s, (_, f) in zip(scores, results, strict=True)
            )
        )


if __name__ == "__main__":
    main()
