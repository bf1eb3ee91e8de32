"""Collect datasets in the real simulator, D4RL's way: D4RL-format HDF5 files, or Minari datasets.

    python -m micro.datagen.collect --env hopper --kind medium --steps 1000000 --out FILE.hdf5
    python -m micro.datagen.collect --env hopper --kind medium --steps 1000000 \
        --format minari --dataset_id local/hopper/medium-v0

A D4RL-format file is collected on the robot's ``-v4`` environment (D4RL's dynamics). A Minari
dataset is written with minari's own API into the Minari store (``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``), collected on ``-v5`` (Minari's robots) unless ``--env_version 4``.

Kinds: ``random`` (uniform actions), ``medium`` / ``expert`` (rollouts of a behavior policy's
stochastic actions; by default the policy shipped in data/behavior/), ``medium-replay`` (a
behavior run's replay buffer up to the medium snapshot), ``medium-expert`` (a medium part followed
by an expert part, ``--steps`` each, as D4RL concatenates them).

The file has D4RL's layout: observations, next_observations, actions, rewards, terminals,
timeouts (set on the step where an episode reaches the 1000-step limit without terminating, and
on the last row when the file cuts its last episode short),
infos/qpos, infos/qvel (the simulator state before the step), infos/action_log_probs, and
metadata/*. Episodes are whole and contiguous; only the file's last episode may be cut short.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError, __version__
from micro.data.d4rl import write_hdf5
from micro.datagen.behavior_files import load_snapshot, read_replay, read_settings
from micro.envs import (
    DATASET_KINDS,
    ENV_IDS,
    SimSpec,
    as_sim,
    make_env,
    normalized_score,
    versioned_sim,
)
from micro.nets import Actor, squash
from micro.utils import EPISODE_SEED_STRIDE, bar_disable

# policy(obs [n, obs_dim]) -> (actions [n, act_dim], log_probs [n])
Policy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
BEHAVIOR_DIR = Path(__file__).resolve().parents[2] / "data" / "behavior"
STEP_KEYS = (
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


def uniform_policy(act_dim: int, seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    log_prob = -act_dim * np.log(2.0)  # density of U[-1, 1]^act_dim

    def act(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        actions = rng.uniform(-1.0, 1.0, size=(len(obs), act_dim)).astype(np.float32)
        return actions, np.full(len(obs), log_prob, np.float32)

    return act


def actor_policy(actor: Actor, seed: int) -> Policy:
    """The actor's stochastic tanh-Gaussian actions, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, log_std = actor(torch.as_tensor(obs, dtype=torch.float32))
        out = squash(mean, log_std, torch.randn(mean.shape, generator=generator))
        return out.action.numpy(), out.log_prob.numpy()

    return act


def collect(
    env: str | SimSpec,
    policy: Policy,
    steps: int,
    seed: int,
    n_envs: int = 8,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``policy`` until ``steps`` rows of whole episodes are gathered (the last one cut to
    fit) on ``env`` (a robot name: its D4RL simulator). ``n_envs`` simulators step in lockstep
    so the policy runs on a batch; finished episodes are appended in the order they finish, so
    the result depends only on ``seed`` and ``n_envs``. Also returns ``episode_returns`` of the
    whole episodes."""
    sim = as_sim(env)
    env_name = sim.robot
    envs = [make_env(sim) for _ in range(n_envs)]
    next_seed = seed * EPISODE_SEED_STRIDE
    obs = np.zeros((n_envs, sim.obs_dim))
    for i, one in enumerate(envs):
        obs[i], _ = one.reset(seed=next_seed)
        next_seed += 1
    current: list[dict[str, list]] = [{k: [] for k in STEP_KEYS} for _ in envs]
    returns = np.zeros(n_envs)
    finished: list[dict[str, np.ndarray]] = []
    episode_returns: list[float] = []
    rows = 0
    bar = tqdm(total=steps, desc=f"collect {env_name}", unit="step", disable=bar_disable(progress))
    while rows < steps:
        actions, log_probs = policy(obs.astype(np.float32))
        for i, one in enumerate(envs):
            ep = current[i]
            ep["infos/qpos"].append(one.unwrapped.data.qpos.copy())
            ep["infos/qvel"].append(one.unwrapped.data.qvel.copy())
            next_obs, reward, terminated, truncated, _ = one.step(actions[i])
            ep["observations"].append(obs[i].copy())
            ep["next_observations"].append(next_obs)
            ep["actions"].append(actions[i])
            ep["rewards"].append(reward)
            ep["terminals"].append(terminated)
            ep["timeouts"].append(truncated and not terminated)
            ep["infos/action_log_probs"].append(log_probs[i])
            returns[i] += reward
            if terminated or truncated:
                finished.append(_episode_arrays(ep))
                episode_returns.append(returns[i])
                rows += len(ep["rewards"])
                bar.update(min(len(ep["rewards"]), steps - bar.n))
                current[i] = {k: [] for k in STEP_KEYS}
                returns[i] = 0.0
                obs[i], _ = one.reset(seed=next_seed)
                next_seed += 1
            else:
                obs[i] = next_obs
    bar.close()
    for one in envs:
        one.close()
    out = {k: np.concatenate([ep[k] for ep in finished])[:steps] for k in STEP_KEYS}
    whole = np.cumsum([len(ep["rewards"]) for ep in finished]) <= steps
    episode_returns = [r for r, keep in zip(episode_returns, whole, strict=True) if keep]
    if rows > steps:  # the last episode in the file was cut short
        # Mark the cut as a time-limit end so no reader joins it to whatever follows
        # (medium-expert's expert part, or observations[i+1] in qlearning_dataset).
        out["timeouts"][-1] = not out["terminals"][-1]
    out["episode_returns"] = np.asarray(episode_returns)
    return out


def _episode_arrays(ep: dict[str, list]) -> dict[str, np.ndarray]:
    dtypes = {
        "terminals": np.bool_,
        "timeouts": np.bool_,
        "infos/qpos": np.float64,
        "infos/qvel": np.float64,
    }
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in ep.items()}


def metadata(
    env_name: str, policy_name: str, seed: int, returns: np.ndarray, prefix: str = ""
) -> dict:
    has = len(returns) > 0
    mean = float(returns.mean()) if has else float("nan")
    return {
        f"metadata/{prefix}policy": policy_name,
        f"metadata/{prefix}seed": seed,
        f"metadata/{prefix}episodes": len(returns),
        f"metadata/{prefix}return_mean": mean,
        f"metadata/{prefix}return_std": float(returns.std()) if has else float("nan"),
        f"metadata/{prefix}normalized_score_mean": normalized_score(env_name, mean)
        if has
        else float("nan"),
    }


def write_dataset(
    path: str | Path, arrays: dict, env_name: str, policy_name: str, seed: int
) -> None:
    """Write collected arrays (with ``episode_returns``) and their metadata in D4RL's layout."""
    arrays = dict(arrays)
    returns = arrays.pop("episode_returns")
    meta = {
        "metadata/env": ENV_IDS[env_name],
        "metadata/generator": f"micro {__version__}",
        **metadata(env_name, policy_name, seed, returns),
        **{k: v for k, v in arrays.items() if k.startswith("metadata/")},
    }
    write_hdf5(path, {**{k: v for k, v in arrays.items() if not k.startswith("metadata/")}, **meta})


def default_policy_path(env_name: str, level: str) -> Path:
    return BEHAVIOR_DIR / f"{env_name}-{level}.pt"


def load_policy(path: str | Path, env_name: str, flag: str = "--policy") -> tuple[Actor, dict]:
    path = Path(path)
    if not path.is_file():
        raise MicroError(
            f"behavior policy not found: {path}; train one with python -m micro.datagen.behavior "
            f"--env {env_name} --steps N --out DIR and pass {flag} DIR/snapshots/step_N.pt"
        )
    actor, meta = load_snapshot(path)
    if meta["env"] != env_name:
        raise MicroError(f"behavior policy {path} is for {meta['env']}, not {env_name}")
    return actor, meta


def _policy_rollouts(
    sim: SimSpec, loaded: tuple[Path, Actor, dict], steps: int, seed: int, n_envs: int, progress
) -> tuple[dict, str]:
    path, actor, meta = loaded
    went_on = "".join(f", carried at {step}" for step in meta.get("carried_at", []))
    name = f"SAC snapshot {path.name} (step {meta['step']}, seed {meta['seed']}{went_on})"
    return collect(sim, actor_policy(actor, seed), steps, seed, n_envs, progress), name


def _behavior(given: str | None, env_name: str, level: str, flag: str) -> tuple[Path, Actor, dict]:
    path = Path(given) if given else default_policy_path(env_name, level)
    return (path, *load_policy(path, env_name, flag))


def replay_dataset(run: Path, upto: int) -> dict[str, np.ndarray]:
    """A behavior run's first ``upto`` transitions, in D4RL's layout (D4RL's medium-replay)."""
    r = read_replay(Path(run) / "replay", upto)
    out = {
        "observations": r["observations"],
        "next_observations": r["next_observations"],
        "actions": r["actions"],
        "rewards": r["rewards"][:, 0],
        "terminals": r["terminals"][:, 0] > 0,
        "timeouts": r["timeouts"][:, 0] > 0,
        "infos/qpos": r["qpos"],
        "infos/qvel": r["qvel"],
        "infos/action_log_probs": r["action_log_probs"][:, 0],
    }
    ends = np.flatnonzero(out["terminals"] | out["timeouts"])
    out["episode_returns"] = np.array([s.sum() for s in np.split(out["rewards"], ends + 1)[:-1]])
    return out


def build(
    kind: str,
    env: str | SimSpec,
    steps: int,
    seed: int,
    n_envs: int,
    policy: str | None,
    expert_policy: str | None,
    run: str | None,
    upto: int | None,
    progress: bool = True,
) -> tuple[dict, str]:
    """The arrays of one dataset kind, collected on ``env`` (a robot name: its D4RL simulator),
    and a description of its source."""
    sim = as_sim(env)
    env_name = sim.robot
    if kind == "random":
        policy_fn = uniform_policy(sim.act_dim, seed)
        return collect(sim, policy_fn, steps, seed, n_envs, progress), "uniform random actions"
    if kind in ("medium", "expert"):
        loaded = _behavior(policy, env_name, kind, "--policy")
        return _policy_rollouts(sim, loaded, steps, seed, n_envs, progress)
    if kind == "medium-expert":  # both policies loaded before either part is collected
        medium_policy = _behavior(policy, env_name, "medium", "--policy")
        expert_policy_ = _behavior(expert_policy, env_name, "expert", "--expert_policy")
        medium, medium_name = _policy_rollouts(sim, medium_policy, steps, seed, n_envs, progress)
        expert, expert_name = _policy_rollouts(
            sim, expert_policy_, steps, seed + 1, n_envs, progress
        )
        out = {k: np.concatenate([medium[k], expert[k]]) for k in medium}
        out.update(metadata(env_name, medium_name, seed, medium["episode_returns"], "medium_"))
        out.update(metadata(env_name, expert_name, seed + 1, expert["episode_returns"], "expert_"))
        return out, f"{medium_name} then {expert_name}"
    if kind == "medium-replay":
        if run is None:
            raise MicroError("--kind medium-replay needs --run DIR, a behavior training run folder")
        if sim.env_id != ENV_IDS[env_name]:
            raise MicroError(
                f"--kind medium-replay replays a behavior run made on {ENV_IDS[env_name]}, not "
                f"{sim.env_id}; pass --env_version 4"
            )
        made_on = (read_settings(Path(run)) or {}).get("env")
        if made_on is not None and made_on != env_name:
            raise MicroError(f"behavior run {run} was made on {made_on}, not {env_name}")
        if upto is None:
            medium_path = Path(policy) if policy else default_policy_path(env_name, "medium")
            upto = int(load_policy(medium_path, env_name)[1]["step"])
        return replay_dataset(Path(run), upto), f"replay buffer of {run} up to step {upto}"
    raise MicroError(f"unknown kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")


def check_target(
    env: str,
    kind: str,
    steps: int,
    n_envs: int,
    fmt: str,
    out: str | None,
    dataset_id: str | None,
    env_version: int | None,
    force: bool = False,
) -> tuple[SimSpec, str]:
    """The simulator to collect on and where the dataset goes (a file for ``fmt`` hdf5, a
    Minari id for minari), checked before collecting: nothing is replaced without ``force``."""
    if steps < 2 or n_envs < 1:
        raise MicroError("--steps must be at least 2 and --n_envs at least 1")
    if fmt == "hdf5":
        if out is None or dataset_id is not None:
            raise MicroError("--format hdf5 writes --out FILE.hdf5 (--dataset_id is minari's)")
        if env_version not in (None, 4):
            raise MicroError("a D4RL-format file holds D4RL's dynamics: -v4 only")
        if Path(out).exists() and not force:
            raise MicroError(f"{out} exists; choose another --out or pass --force to replace it")
        return versioned_sim(env, 4), out
    from micro.data import minari_data
    from micro.envs import MINARI_ID

    if dataset_id is None or out is not None:
        raise MicroError("--format minari writes --dataset_id NAMESPACE/NAME-vN (not --out)")
    if "/" not in dataset_id or not MINARI_ID.match(dataset_id):
        raise MicroError(
            f"bad --dataset_id {dataset_id!r}; use namespace/robot/kind-vN, e.g. "
            f"local/{env}/{kind}-v0"
        )
    path = minari_data.local_path(dataset_id)
    if path.exists():
        raise MicroError(
            f"Minari dataset {dataset_id} exists at {path}; choose another --dataset_id "
            "(bump its -vN) or delete that folder"
        )
    return versioned_sim(env, env_version or 5), dataset_id


@dataclass
class MadeDataset:
    target: str | Path  # the file written, or the Minari dataset's id
    steps: int
    episodes: int  # whole episodes
    return_mean: float  # over the whole episodes
    normalized: float  # D4RL-normalized return_mean


def make_dataset(
    kind: str,
    sim: SimSpec,
    target: str,
    fmt: str,
    steps: int,
    seed: int,
    n_envs: int,
    policy: str | None = None,
    expert_policy: str | None = None,
    run: str | None = None,
    upto: int | None = None,
    progress: bool = True,
) -> MadeDataset:
    """Collect a dataset of ``kind`` (``build``) and write it to ``target`` (``check_target``'s)
    as a D4RL-format file or a Minari dataset."""
    arrays, name = build(kind, sim, steps, seed, n_envs, policy, expert_policy, run, upto, progress)
    returns = arrays["episode_returns"]
    mean = float(returns.mean()) if len(returns) else float("nan")
    score = normalized_score(sim.robot, mean)
    if fmt == "hdf5":
        write_dataset(target, arrays, sim.robot, name, seed)
    else:
        from micro.data import minari_data

        description = (
            f"{kind} data for {sim.env_id} made by micro's collector: {name}, seed "
            f"{seed}, {len(arrays['rewards'])} steps; whole episodes' return {mean:.1f} "
            f"(D4RL-normalized {score:.1f})"
        )
        target = minari_data.write(
            target, minari_data.split_episodes(arrays), sim, description, name
        )
    return MadeDataset(target, len(arrays["rewards"]), len(returns), mean, score)


if __name__ == "__main__":  # the command line is micro.cli.collect's
    from micro.cli.collect import main

    sys.exit(main())
