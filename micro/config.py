"""Configuration: one frozen dataclass holding SPEC's defaults, per-task YAML overrides, CLI flags.

The dataclass defaults are SPEC's (MICRO's). Resolution order (later wins): dataclass defaults
< ``configs/<algo>/defaults.yaml`` (a baseline's own defaults) < ``configs/<algo>/<task>.yaml``
< ``--config FILE`` presets (in the order given) < ``--<key> VALUE`` flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from micro import MAX_SEED, MicroError
from micro.algos import ALGORITHMS

CONFIG_DIR = Path(
    os.environ.get("MICRO_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
)


MATMUL_PRECISIONS = ("highest", "high", "medium")
ADV_STDS = ("population", "unbiased")


@dataclass(frozen=True)
class Config:
    # --- run -------------------------------------------------------------------------------
    task: str = "hopper-medium-v2"  # D4RL task or Minari dataset id: picks data, env and config
    algo: str = "micro"  # micro | mobile | mopo | rambo: the algorithm (see micro/algos/)
    seed: int = 0  # seeds torch, numpy and the environments
    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto = cuda when available)
    dataset: str | None = None  # a D4RL-format HDF5 file (Minari: a dataset folder) to use
    logdir: str = "runs"  # runs go to <logdir>/<task>/<algo>/seed<seed>-<timestamp>/
    matmul_precision: str = "highest"  # highest (exact) | high (TF32) | medium (also bfloat16)
    cuda_graph: bool = True  # on CUDA, replay each gradient step as one recorded CUDA graph

    # --- SAC -------------------------------------------------------------------------------
    actor_lr: float = 1e-4  # cosine-annealed over `epoch` epochs when lr_scheduler
    critic_lr: float = 3e-4  # Adam learning rate of the critics
    hidden_dims: tuple[int, ...] = (256, 256)  # actor and critic MLPs
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target critics
    alpha: float = 0.1  # fixed temperature, used when auto_alpha is false
    auto_alpha: bool = True  # tune the temperature towards target_entropy
    target_entropy: float | None = None  # None -> -action_dim
    alpha_lr: float = 1e-4  # Adam learning rate of log alpha (auto_alpha)
    num_q_ensemble: int = 2  # critics; targets use the min over them
    deterministic_backup: bool = False  # drop the entropy term from the critic target
    max_q_backup: bool = False  # next value = min_j max_k Q_j(s', a'_k), k over 10 actions
    lr_scheduler: bool = True  # cosine annealing of the actor learning rate
    clamp_target: bool = True  # y = max(y, 0), as the published code does

    # --- dynamics ensemble -------------------------------------------------------------------
    dynamics_lr: float = 1e-3  # Adam learning rate of the dynamics ensemble
    dynamics_hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    dynamics_weight_decay: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # per layer
    n_ensemble: int = 7  # dynamics members, fitted on their own bootstrap resamples
    n_elites: int = 5  # members with the lowest holdout error; rollouts sample them
    dynamics_batch_size: int = 256  # rows per member per dynamics fitting step
    dynamics_holdout_ratio: float = 0.2  # holdout = min(ratio * N, dynamics_max_holdout)
    dynamics_max_holdout: int = 1000  # cap on the holdout transitions (see dynamics_holdout_ratio)
    max_epochs_since_update: int = 5  # early stop after this many epochs with no 1% improvement
    dynamics_max_epochs: int | None = None  # hard cap on fitting epochs
    load_dynamics_path: str | None = None  # a saved dynamics/ folder: reuse it, skip fitting

    # --- rollouts and conservatism ---------------------------------------------------------
    rollout_freq: int = 1000  # gradient steps between model rollouts
    rollout_batch_size: int = 50_000  # start states per rollout
    rollout_length: int = 5  # model steps per rollout (h)
    penalty_coef: float = 0.5  # beta (MICRO U, MOBILE std) or lambda (MOPO): penalty weight
    num_samples: int = 10  # next states per elite for the value penalty (MICRO, MOBILE)
    model_retain_epochs: int = 5  # model buffer = rollout_batch_size * rollout_length * this
    real_ratio: float = 0.05  # share of real transitions in each batch

    # --- adversarial model (RAMBO) ------------------------------------------------------------
    dynamics_update_freq: int = 1000  # RAMBO: gradient steps between adversarial model updates
    adv_steps: int = 1000  # RAMBO: dynamics gradient steps per adversarial update
    adv_lr: float = 3e-4  # RAMBO: Adam learning rate of the adversarial model updates
    adv_weight: float = 3e-4  # RAMBO: lambda_adv, weight of the adversarial term (0: none)
    adv_batch_size: int = 256  # RAMBO: rows per adversarial step (and per supervised batch)
    adv_include_entropy: bool = False  # RAMBO: -alpha log pi(a'|s') in the advantage's V(s')
    adv_std: str = "population"  # RAMBO advantage scale: population (official) | unbiased (+1e-6)
    adv_shared_sl_batch: bool = False  # RAMBO: one supervised batch for all members (the port's)
    bc_epochs: int = 0  # behaviour cloning of the actor before training (RAMBO: 50); 0: none
    bc_batch_size: int = 256  # rows per behaviour-cloning step

    # --- schedule --------------------------------------------------------------------------
    epoch: int = 3000  # epochs of training; also the actor lr cosine period
    step_per_epoch: int = 1000  # gradient steps per epoch
    batch_size: int = 256  # rows per gradient step, real and model together
    eval_freq: int = 10  # evaluate every this many epochs (and after the last)
    eval_episodes: int = 10  # deterministic episodes per evaluation
    save_freq: int = 1  # checkpoint every this many epochs (and after the last)
    snapshot_freq: int | None = None  # keep a policy file every this many epochs (snapshots/)

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.real_ratio <= 1.0, "real_ratio must be in [0, 1]"),
            (0 < self.n_elites <= self.n_ensemble, "n_elites must be in 1..n_ensemble"),
            (
                len(self.dynamics_weight_decay) == len(self.dynamics_hidden_dims) + 1,
                "dynamics_weight_decay needs one value per dynamics layer "
                "(len(dynamics_hidden_dims) + 1)",
            ),
            (0.0 < self.gamma <= 1.0, "gamma must be in (0, 1]"),
            (0.0 < self.tau <= 1.0, "tau must be in (0, 1]"),
            (0.0 < self.dynamics_holdout_ratio < 1.0, "dynamics_holdout_ratio must be in (0, 1)"),
            (self.algo in ALGORITHMS, f"algo must be one of {', '.join(ALGORITHMS)}"),
            (
                self.adv_std in ADV_STDS,
                f"adv_std must be one of {', '.join(ADV_STDS)}",
            ),
            (
                self.matmul_precision in MATMUL_PRECISIONS,
                f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}",
            ),
        ]
        positive = [
            "epoch",
            "step_per_epoch",
            "batch_size",
            "eval_freq",
            "eval_episodes",
            "save_freq",
            "rollout_freq",
            "rollout_batch_size",
            "rollout_length",
            "num_samples",
            "model_retain_epochs",
            "n_ensemble",
            "num_q_ensemble",
            "dynamics_batch_size",
            "dynamics_max_holdout",
            "max_epochs_since_update",
            "dynamics_update_freq",
            "adv_steps",
            "adv_batch_size",
            "bc_batch_size",
        ]
        checks += [(getattr(self, k) > 0, f"{k} must be positive") for k in positive]
        checks.append((self.penalty_coef >= 0, "penalty_coef must be >= 0"))
        checks.append((self.adv_weight >= 0, "adv_weight must be >= 0"))
        checks.append((self.bc_epochs >= 0, "bc_epochs must be >= 0"))
        checks.append((0 <= self.seed <= MAX_SEED, f"seed must be an integer from 0 to {MAX_SEED}"))
        if self.dynamics_max_epochs is not None:
            checks.append((self.dynamics_max_epochs > 0, "dynamics_max_epochs must be positive"))
        if self.snapshot_freq is not None:
            checks.append((self.snapshot_freq > 0, "snapshot_freq must be positive (or none)"))
        for ok, message in checks:
            if not ok:
                raise MicroError(f"bad config: {message}")

    def evaluates_at(self, epoch: int) -> bool:
        """Whether training evaluates after ``epoch`` (every ``eval_freq`` and the last)."""
        return epoch % self.eval_freq == 0 or epoch == self.epoch

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def field_comments() -> dict[str, str]:
    """Each Config field's trailing ``# comment`` in this file: the help text of its flag."""
    pattern = re.compile(r"^    (\w+): [^=]+=.*?  # (.+)$")
    source = Path(__file__).read_text(encoding="utf-8").splitlines()
    return {m[1]: m[2] for m in map(pattern.match, source) if m and m[1] in FIELDS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def field_type(name: str) -> Any:
    return _HINTS[name]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(_unwrap_optional(tp)[0]) is tuple


def _scalar_from_str(base: type, text: str, key: str) -> Any:
    low = text.strip().lower()
    try:
        if base is bool:
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return text
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a finite number"}[base]
        raise MicroError(f"bad value for {key}: {text!r} is not {kind}") from None


def parse_cli_value(key: str, tokens: list[str]) -> Any:
    """Turn the strings after ``--key`` into a value of the field's type."""
    tp, optional = _unwrap_optional(field_type(key))
    if optional and len(tokens) == 1 and tokens[0].strip().lower() in ("none", "null"):
        return None
    if typing.get_origin(tp) is tuple:
        base = typing.get_args(tp)[0]
        return tuple(_scalar_from_str(base, t, key) for t in tokens)
    if len(tokens) != 1:
        raise MicroError(f"bad value for {key}: expected one value, got {len(tokens)}")
    return _scalar_from_str(tp, tokens[0], key)


def _check_yaml_value(key: str, value: Any, source: str) -> Any:
    tp, optional = _unwrap_optional(field_type(key))
    if value is None:
        if optional:
            return None
        raise MicroError(f"bad value for {key} in {source}: null is not allowed")
    if typing.get_origin(tp) is tuple:
        base = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise MicroError(f"bad value for {key} in {source}: expected a list of {base.__name__}")
        return tuple(_check_scalar(key, base, v, source) for v in value)
    return _check_scalar(key, tp, value, source)


def _check_scalar(key: str, base: type, value: Any, source: str) -> Any:
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (base is str and isinstance(value, str))
    )
    if not ok:
        raise MicroError(
            f"bad value for {key} in {source}: {value!r} is not of type {base.__name__}"
        )
    return float(value) if base is float else value


def read_overrides(path: Path) -> dict[str, Any]:
    """Read a YAML file of config overrides, checking every key and value type."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise MicroError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise MicroError(
            f"config file {path} is not valid YAML: {exc}".replace("\n", " ")
        ) from None
    if not isinstance(data, dict):
        raise MicroError(f"config file {path} must hold a mapping of key: value")
    out = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise MicroError(f"unknown config key {key!r} in {path}; see `python train.py --help`")
        out[key] = _check_yaml_value(key, value, str(path))
    return out


def algo_config_paths(algo: str, task: str) -> list[Path]:
    """The algorithm's defaults and its per-task overrides, in the order they apply. A Minari
    task uses the files of its D4RL counterpart (``Task.config_task``: mujoco/hopper/medium-v0
    -> hopper-medium-v2, `simple` -> medium), or the defaults alone when it has none."""
    from micro.envs import parse_task

    folder = CONFIG_DIR / algo
    config_task = parse_task(task).config_task
    return [folder / "defaults.yaml"] + ([folder / f"{config_task}.yaml"] if config_task else [])


def config_files_note(cfg: Config) -> str:
    """One line naming the config files a run's values came from (before presets and flags)."""
    from micro.envs import parse_task

    task = parse_task(cfg.task)
    used = [p for p in algo_config_paths(cfg.algo, cfg.task) if p.exists()]
    names = ", ".join(str(p.relative_to(CONFIG_DIR.parent)) for p in used) or "none"
    note = f"config files: {names}"
    if task.source == "minari":
        if task.config_task:
            note += f" ({task.config_task}'s values, the D4RL counterpart of {task.name})"
        else:
            note += f" ({task.name} names no robot and kind: the {cfg.algo} defaults)"
    return note


def resolve_config(
    task: str, presets: list[str] | tuple[str, ...] = (), overrides: dict[str, Any] | None = None
) -> Config:
    """Defaults < configs/<algo>/defaults.yaml < configs/<algo>/<task>.yaml < presets <
    overrides (already typed). The algorithm comes from the overrides, else the presets."""
    from micro.envs import parse_task

    parse_task(task)  # unknown task -> MicroError
    overrides = dict(overrides or {})
    preset_values: dict[str, Any] = {}
    for preset in presets:
        preset_values.update(read_overrides(Path(preset)))
    algo = overrides.get("algo", preset_values.get("algo", FIELDS["algo"].default))
    if algo not in ALGORITHMS:
        raise MicroError(f"unknown algo {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    values: dict[str, Any] = {}
    for path in algo_config_paths(algo, task):
        if path.exists():
            part = read_overrides(path)
            if part.get("algo", algo) != algo:
                raise MicroError(f"{path} sets algo {part['algo']!r}; remove that key")
            values.update(part)
    values.update(preset_values)
    values.update(overrides)
    values["task"], values["algo"] = task, algo
    for key in values:
        if key not in FIELDS:
            raise MicroError(f"unknown config key {key!r}")
    return Config(**values)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved by ``Config.to_dict`` (e.g. from a run's config.yaml)."""
    known = {k: _check_yaml_value(k, v, "saved config") for k, v in data.items() if k in FIELDS}
    return Config(**known)


def save_config(cfg: Config, path: Path, extra: dict[str, Any] | None = None) -> None:
    from micro.utils import atomic_write_text

    body = cfg.to_dict()
    if extra:
        body = {**body, **extra}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False))


__all__ = ["FIELDS", "Config", "parse_cli_value", "read_overrides", "resolve_config"]
