"""Tasks, simulator environments, model-rollout termination functions and D4RL scores.

D4RL's v2 locomotion datasets were collected with gym's v3 MuJoCo robots. Gymnasium's ``-v4``
environments (official ``mujoco`` bindings) have the same model files, observation layout
(qpos[1:], qvel; hopper/walker2d velocities clipped to ±10), rewards and termination, so they
reproduce D4RL's dynamics; ``-v5`` does not (different walker2d foot friction, no healthy reward
on the terminating step). ``tests/test_envs.py`` pins this.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import torch

from micro import MicroError

ENV_IDS = {"hopper": "Hopper-v4", "halfcheetah": "HalfCheetah-v4", "walker2d": "Walker2d-v4"}
OBS_ACT_DIMS = {"hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6)}
DATASET_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
# D4RL's reference returns (random policy, expert policy) for the normalized score.
REF_RETURNS = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}
MAX_EPISODE_STEPS = 1000
TASKS = tuple(f"{env}-{kind}-v2" for env in ENV_IDS for kind in DATASET_KINDS)


@dataclass(frozen=True)
class Task:
    name: str  # e.g. "hopper-medium-replay-v2"
    env: str  # "hopper"
    kind: str  # "medium-replay"

    @property
    def obs_dim(self) -> int:
        return OBS_ACT_DIMS[self.env][0]

    @property
    def act_dim(self) -> int:
        return OBS_ACT_DIMS[self.env][1]

    @property
    def d4rl_filename(self) -> str:
        return f"{self.env}_{self.kind.replace('-', '_')}-v2.hdf5"


def parse_task(name: str) -> Task:
    if name not in TASKS:
        raise MicroError(
            f"unknown task {name!r}; choose one of {{hopper,halfcheetah,walker2d}}-"
            f"{{{','.join(DATASET_KINDS)}}}-v2"
        )
    env, rest = name.split("-", 1)
    return Task(name=name, env=env, kind=rest.removesuffix("-v2"))


def check_env_name(env: str) -> str:
    if env not in ENV_IDS:
        raise MicroError(f"unknown env {env!r}; choose one of {', '.join(ENV_IDS)}")
    return env


def make_env(env: str, **kwargs) -> gym.Env:
    """The Gymnasium environment that reproduces D4RL's dynamics and reward for ``env``."""
    check_env_name(env)
    # MuJoCo's own warnings go to Python's, not to MUJOCO_LOG.TXT in the working directory.
    # Gymnasium's half_cheetah.xml uses `settotalmass`, deprecated (still applied) in MuJoCo 4.
    messages: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # -v4 is deprecated in favour of -v5, which differs
            made = gym.make(ENV_IDS[env], **kwargs)
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in messages:
        if "'settotalmass' is deprecated" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)
    return made


def normalized_score(env: str, raw_return: float) -> float:
    """D4RL's normalized score: 100 · (return − random) / (expert − random)."""
    low, high = REF_RETURNS[check_env_name(env)]
    return 100.0 * (raw_return - low) / (high - low)


def normalized_scale(env: str) -> float:
    """Slope of the normalization, for turning a std of returns into a std of scores."""
    low, high = REF_RETURNS[check_env_name(env)]
    return 100.0 / (high - low)


# --- termination functions for model rollouts (MBPO's), batched over rows -----------------------


def hopper_done(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    alive = (
        torch.isfinite(next_obs).all(dim=-1)
        # The published code writes abs(x < 100), which is true for every finite x; the
        # intended test is |x| < 100.
        & (next_obs[:, 1:].abs() < 100).all(dim=-1)
        & (height > 0.7)
        & (angle.abs() < 0.2)
    )
    return ~alive


def walker2d_done(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    alive = (
        (next_obs.abs() < 100).all(dim=-1)
        & (height > 0.8)
        & (height < 2.0)
        & (angle > -1.0)
        & (angle < 1.0)
    )
    return ~alive


def halfcheetah_done(next_obs: torch.Tensor) -> torch.Tensor:
    # The robot never terminates; like the published code we end a model rollout whose state
    # has diverged (|s'| >= 100, or non-finite), which no real halfcheetah state reaches.
    return ~(next_obs.abs() < 100).all(dim=-1)


TERMINATION_FNS = {
    "hopper": hopper_done,
    "walker2d": walker2d_done,
    "halfcheetah": halfcheetah_done,
}


def termination_fn(env: str):
    """``done(next_obs [B, obs_dim]) -> bool [B]`` for model rollouts of ``env``."""
    return TERMINATION_FNS[check_env_name(env)]
