"""Collect D4RL-format datasets in the real simulator.

    python -m micro.data.collect --env hopper --kind random --steps 100000 --out FILE.hdf5

The file has D4RL's layout: observations, next_observations, actions, rewards, terminals,
timeouts (set on the step where an episode reaches the 1000-step limit without terminating),
infos/qpos, infos/qvel, infos/action_log_probs, and metadata/*.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from micro import MicroError, __version__
from micro.data.d4rl import write_hdf5
from micro.envs import ENV_IDS, make_env, normalized_score

# policy(obs [obs_dim], rng) -> (action [act_dim], log_prob)
Policy = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, float]]
KINDS = ("random",)


def uniform_policy(act_dim: int) -> Policy:
    log_prob = -act_dim * np.log(2.0)  # density of U[-1, 1]^act_dim

    def act(obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        return rng.uniform(-1.0, 1.0, size=act_dim).astype(np.float32), log_prob

    return act


def collect(env_name: str, policy: Policy, steps: int, seed: int, progress: bool = True) -> dict:
    """Run ``policy`` for ``steps`` environment steps; episodes end at termination or at the
    1000-step limit. Returns D4RL's arrays plus per-episode returns under ``episode_returns``."""
    env = make_env(env_name)
    rng = np.random.default_rng(seed)
    data: dict[str, list] = {
        k: []
        for k in (
            "observations",
            "next_observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "infos/qpos",
            "infos/qvel",
            "infos/action_log_probs",
        )
    }
    episode_returns: list[float] = []
    episode = 0
    obs, _ = env.reset(seed=seed)
    ep_return = 0.0
    for _ in tqdm(range(steps), desc=f"collect {env_name}", unit="step", disable=not progress):
        sim = env.unwrapped.data
        data["infos/qpos"].append(sim.qpos.copy())
        data["infos/qvel"].append(sim.qvel.copy())
        action, log_prob = policy(obs, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        data["observations"].append(obs)
        data["next_observations"].append(next_obs)
        data["actions"].append(action)
        data["rewards"].append(reward)
        data["terminals"].append(terminated)
        data["timeouts"].append(truncated and not terminated)
        data["infos/action_log_probs"].append(log_prob)
        ep_return += float(reward)
        if terminated or truncated:
            episode_returns.append(ep_return)
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
            ep_return = 0.0
        else:
            obs = next_obs
    env.close()
    dtypes = {"terminals": np.bool_, "timeouts": np.bool_}
    out = {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in data.items()}
    out["episode_returns"] = np.asarray(episode_returns)
    return out


def write_dataset(
    path: str | Path, arrays: dict, env_name: str, policy_name: str, seed: int
) -> None:
    returns = arrays.pop("episode_returns")
    meta = {
        "metadata/algorithm": policy_name,
        "metadata/env": ENV_IDS[env_name],
        "metadata/seed": seed,
        "metadata/generator": f"micro {__version__}",
        "metadata/episodes": len(returns),
        "metadata/return_mean": float(returns.mean()) if len(returns) else float("nan"),
        "metadata/return_std": float(returns.std()) if len(returns) else float("nan"),
        "metadata/normalized_score_mean": (
            normalized_score(env_name, float(returns.mean())) if len(returns) else float("nan")
        ),
    }
    write_hdf5(path, {**arrays, **meta})


def make_policy(kind: str, env_name: str) -> tuple[Policy, str]:
    env = make_env(env_name)
    act_dim = env.action_space.shape[0]
    env.close()
    if kind == "random":
        return uniform_policy(act_dim), "uniform random actions"
    raise MicroError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def main(argv: list[str] | None = None) -> int:
    from micro.cli import OneLineParser, guarded

    parser = OneLineParser(prog="python -m micro.data.collect", description=__doc__.split("\n")[0])
    parser.add_argument("--env", required=True, choices=list(ENV_IDS))
    parser.add_argument("--kind", required=True, choices=list(KINDS))
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="HDF5 file to write (must not exist)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        out = Path(args.out)
        if out.exists() and not args.force:
            raise MicroError(f"{out} exists; choose another --out or pass --force to replace it")
        if args.steps < 2:
            raise MicroError("--steps must be at least 2")
        policy, name = make_policy(args.kind, args.env)
        start = time.time()
        arrays = collect(args.env, policy, args.steps, args.seed)
        n_episodes = len(arrays["episode_returns"])
        mean_return = float(arrays["episode_returns"].mean()) if n_episodes else float("nan")
        write_dataset(out, arrays, args.env, name, args.seed)
        print(
            f"wrote {out}: {args.steps} steps, {n_episodes} finished episodes, "
            f"mean return {mean_return:.1f} in {time.time() - start:.0f}s"
        )
        return 0

    return guarded(run, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
