"""Tasks, simulator environments, model-rollout termination functions and normalized scores.

D4RL's v2 locomotion datasets were collected with gym's v3 MuJoCo robots. Gymnasium's ``-v4``
environments (official ``mujoco`` bindings) have the same model files, observation layout
(qpos[1:], qvel; hopper/walker2d velocities clipped to ±10), rewards and termination, so they
reproduce D4RL's dynamics; ``-v5`` does not (different walker2d foot friction, no healthy reward
on the terminating step). Minari's MuJoCo datasets were collected on ``-v5``, so a Minari task is
evaluated on the environment its dataset records (``SimSpec``). ``tests/test_envs.py`` pins both.

A task is either a D4RL name (``hopper-medium-v2``) or a Minari dataset id
(``mujoco/hopper/medium-v0``); the simulator and the score references of a Minari task come
from its dataset (``micro.data.minari_data``).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass

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
# Gymnasium's class name of each robot, as in "Hopper-v5".
ROBOT_OF_ENV_NAME = {"Hopper": "hopper", "HalfCheetah": "halfcheetah", "Walker2d": "walker2d"}
# The D4RL kind whose per-task config a Minari kind gets. Minari's `simple` is one weak SAC
# policy's rollouts: a narrow, single-policy distribution like `medium` (D4RL's `random` is
# uniform actions, with the broad coverage its low penalties were tuned for).
MINARI_KIND_CONFIG = {"simple": "medium", **{kind: kind for kind in DATASET_KINDS}}
MINARI_ID = re.compile(r"^(?:[\w.-]+/)*[\w.-]+-v\d+$")


@dataclass(frozen=True)
class Task:
    """What ``--task`` names. ``env`` (the robot) and ``kind`` are ``None`` for a Minari id that
    does not spell them (``myorg/mydata-v0``): then the dataset's environment decides the robot
    and the algorithm's defaults apply."""

    name: str  # "hopper-medium-replay-v2" or "mujoco/hopper/medium-v0"
    env: str | None  # "hopper"
    kind: str | None  # "medium-replay"
    source: str = "d4rl"  # "d4rl" | "minari"

    @property
    def obs_dim(self) -> int:
        return OBS_ACT_DIMS[self.env][0]

    @property
    def act_dim(self) -> int:
        return OBS_ACT_DIMS[self.env][1]

    @property
    def d4rl_filename(self) -> str:
        return f"{self.env}_{self.kind.replace('-', '_')}-v2.hdf5"

    @property
    def config_task(self) -> str | None:
        """The D4RL task whose per-task config files this task uses (None: defaults only)."""
        if self.source == "d4rl":
            return self.name
        if self.env is None or self.kind not in MINARI_KIND_CONFIG:
            return None
        return f"{self.env}-{MINARI_KIND_CONFIG[self.kind]}-v2"

    @property
    def slug(self) -> str:
        """The name as one path component (Minari ids hold slashes)."""
        return self.name.replace("/", "--")


def parse_task(name: str) -> Task:
    if name in TASKS:
        env, rest = name.split("-", 1)
        return Task(name=name, env=env, kind=rest.removesuffix("-v2"))
    if "/" in name and MINARI_ID.match(name):
        parts = name.split("/")
        robots = [p for p in parts[:-1] if p in ENV_IDS]
        kind = parts[-1].rsplit("-v", 1)[0]
        return Task(
            name=name,
            env=robots[-1] if robots else None,
            kind=kind if kind in MINARI_KIND_CONFIG else None,
            source="minari",
        )
    raise MicroError(
        f"unknown task {name!r}; choose a D4RL task {{hopper,halfcheetah,walker2d}}-"
        f"{{{','.join(DATASET_KINDS)}}}-v2 or a Minari dataset id such as mujoco/hopper/medium-v0"
    )


@dataclass(frozen=True)
class SimSpec:
    """The simulator a policy is evaluated on, and the returns its scores are normalized by.

    D4RL tasks: the robot's ``-v4`` environment and D4RL's reference returns. Minari tasks: the
    environment the dataset records (id, constructor kwargs, episode limit) and the dataset's own
    ``ref_min_score``/``ref_max_score`` when it has them, else D4RL's (``ref_source`` says which).
    """

    robot: str  # "hopper": model-rollout termination, observation/action sizes
    env_id: str  # "Hopper-v4"
    ref_min: float
    ref_max: float
    ref_source: str  # "D4RL" or "dataset mujoco/hopper/medium-v0"
    kwargs: str = "{}"  # JSON of the environment's constructor arguments
    max_episode_steps: int = MAX_EPISODE_STEPS

    @property
    def obs_dim(self) -> int:
        return OBS_ACT_DIMS[self.robot][0]

    @property
    def act_dim(self) -> int:
        return OBS_ACT_DIMS[self.robot][1]

    def normalized_score(self, raw_return: float) -> float:
        return 100.0 * (raw_return - self.ref_min) / (self.ref_max - self.ref_min)

    def normalized_scale(self) -> float:
        """Slope of the normalization, for turning a std of returns into a std of scores."""
        return 100.0 / (self.ref_max - self.ref_min)

    def make(self, **kwargs) -> gym.Env:
        return _make(
            self.env_id,
            max_episode_steps=self.max_episode_steps,
            **json.loads(self.kwargs),
            **kwargs,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SimSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def d4rl_sim(env: str) -> SimSpec:
    """The simulator and references of D4RL's ``env`` tasks."""
    low, high = REF_RETURNS[check_env_name(env)]
    return SimSpec(robot=env, env_id=ENV_IDS[env], ref_min=low, ref_max=high, ref_source="D4RL")


def versioned_sim(env: str, version: int) -> SimSpec:
    """The robot's Gymnasium ``-v<version>`` environment, with D4RL's references (``-v4`` is
    D4RL's simulator; Minari's MuJoCo datasets were collected on ``-v5``)."""
    sim = d4rl_sim(env)
    if version not in (4, 5):
        raise MicroError(f"environment version must be 4 or 5, not {version}")
    return SimSpec(**{**sim.to_dict(), "env_id": sim.env_id.replace("-v4", f"-v{version}")})


def robot_of(env_id: str) -> str | None:
    """Our robot behind a Gymnasium id ("Hopper-v5" -> "hopper"), or None."""
    return ROBOT_OF_ENV_NAME.get(env_id.split(":")[-1].rsplit("-v", 1)[0])


def as_sim(env: str | SimSpec) -> SimSpec:
    return env if isinstance(env, SimSpec) else d4rl_sim(env)


def check_env_name(env: str) -> str:
    if env not in ENV_IDS:
        raise MicroError(f"unknown env {env!r}; choose one of {', '.join(ENV_IDS)}")
    return env


def make_env(env: str | SimSpec, **kwargs) -> gym.Env:
    """The environment of a ``SimSpec``; for a robot name, the Gymnasium environment that
    reproduces D4RL's dynamics and reward."""
    if isinstance(env, SimSpec):
        return env.make(**kwargs)
    check_env_name(env)
    return _make(ENV_IDS[env], **kwargs)


def _make(env_id: str, **kwargs) -> gym.Env:
    # MuJoCo's own warnings go to Python's, not to MUJOCO_LOG.TXT in the working directory.
    # Gymnasium's half_cheetah.xml uses `settotalmass`, deprecated (still applied) in MuJoCo 4.
    messages: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # -v4 is deprecated in favour of -v5, which differs
            made = gym.make(env_id, **kwargs)
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in messages:
        if "'settotalmass' is deprecated" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)
    return made


def normalized_score(env: str | SimSpec, raw_return: float) -> float:
    """100 · (return − min) / (max − min); for a robot name, D4RL's references (random, expert)."""
    return as_sim(env).normalized_score(raw_return)


def normalized_scale(env: str | SimSpec) -> float:
    """Slope of the normalization, for turning a std of returns into a std of scores."""
    return as_sim(env).normalized_scale()


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
