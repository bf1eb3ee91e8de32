"""The policy file (``policy.pt``): what a training run hands to ``eval.py``. Written and read
here only.

Plain tensors and primitives (loaded with ``weights_only``): the actor and critics, the
observation std the attacks scale their budget by, the task, the algorithm, the simulator to
evaluate on with its score references (``sim``) and the resolved config, and ``digest``, the
SHA-256 of its tensors, checked on load (torch does not check its zip's CRCs, so a flipped byte
would otherwise load silently; files from before the digest load with a note). Format
``micro-policy-v3`` added ``sim`` (Minari tasks run on the environment their dataset records);
``micro-policy-v2`` added ``algo`` and dropped the never-read ``obs_mean``. Older files (D4RL
tasks only; v1 all MICRO) still load, with D4RL's simulator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from micro import MicroError
from micro.buffer import observation_std
from micro.checkpoint import Progress, read_learner
from micro.config import config_from_dict
from micro.envs import SimSpec, d4rl_sim, parse_task
from micro.evaluation import EvalResult
from micro.nets import Actor, EnsembleCritic
from micro.run_dir import RunDir
from micro.utils import atomic_torch_save, safe_torch_load, tensor_digest

POLICY_FORMAT = "micro-policy-v3"
READABLE_FORMATS = ("micro-policy-v1", "micro-policy-v2", POLICY_FORMAT)
REQUIRED = ("task", "obs_dim", "act_dim", "hidden_dims", "num_q_ensemble", "actor", "critics")
REQUIRED += ("obs_std",)


def _tensors(blob: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a policy file by a flat name: what its digest covers."""
    named = {f"actor.{k}": v for k, v in blob["actor"].items()}
    named.update({f"critics.{k}": v for k, v in blob["critics"].items()})
    return {**named, "obs_std": blob["obs_std"]}


@dataclass
class LoadedPolicy:
    path: Path
    task: str
    algo: str
    sim: SimSpec
    actor: Actor
    critics: EnsembleCritic
    obs_std: np.ndarray
    step: int | None
    normalized_score: float | None
    seed: int | None

    @property
    def label(self) -> str:
        """A short name for tables and legends: algorithm and seed."""
        return self.algo if self.seed is None else f"{self.algo} seed {self.seed}"


def networks(
    obs_dim: int, act_dim: int, hidden_dims: list[int] | tuple[int, ...], num_q_ensemble: int
) -> tuple[Actor, EnsembleCritic]:
    """The actor and critics a policy file holds, untrained."""
    actor = Actor(obs_dim, act_dim, hidden_dims)
    return actor, EnsembleCritic(obs_dim, act_dim, hidden_dims, num_q_ensemble)


def save_policy(
    path: Path,
    *,
    config: dict,
    actor: Actor,
    critics: EnsembleCritic,
    obs_std: torch.Tensor,
    sim: SimSpec,
    step: int,
    normalized_score: float | None,
) -> None:
    blob = {
        "format": POLICY_FORMAT,
        "task": config["task"],
        "algo": config["algo"],
        "env": sim.robot,
        "sim": sim.to_dict(),
        "obs_dim": sim.obs_dim,
        "act_dim": sim.act_dim,
        "hidden_dims": list(config["hidden_dims"]),
        "num_q_ensemble": config["num_q_ensemble"],
        "actor": {k: v.cpu() for k, v in actor.state_dict().items()},
        "critics": {k: v.cpu() for k, v in critics.state_dict().items()},
        "obs_std": obs_std.detach().cpu().clone(),
        "config": config,
        "step": step,
        "normalized_score": normalized_score,
    }
    blob["digest"] = tensor_digest(_tensors(blob))
    atomic_torch_save(blob, path)


def read_policy_task(path: str | Path) -> str:
    """The task a policy file was trained on (for ``eval.py`` without ``--task``)."""
    return _read(path)["task"]


def _read(path: str | Path) -> dict:
    blob = safe_torch_load(path, "policy file")
    if blob.get("format") not in READABLE_FORMATS:
        raise MicroError(f"{path} is not a micro policy file (format {blob.get('format')!r})")
    missing = [k for k in REQUIRED if k not in blob]
    if missing:
        raise MicroError(
            f"policy file {path} lacks {', '.join(missing)}: it is incomplete; export it again "
            "from its run (python -m micro.results export RUN)"
        )
    return blob


def _check(path: str | Path, blob: dict) -> None:
    """Refuse a policy file whose tensors are damaged (digest), not finite, or of the wrong
    sizes for its robot; note one too old to carry a digest."""
    tensors = _tensors(blob)
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise MicroError(f"policy file {path} is damaged: its weights are not all tensors")
    if "digest" in blob:
        if tensor_digest(tensors) != blob["digest"]:
            raise MicroError(
                f"policy file {path} is damaged: its tensors do not match the digest recorded "
                "when it was saved; use another copy (or export it again from its run)"
            )
    else:
        print(
            f"note: {path} predates policy-file digests; it cannot be checked for damage",
            file=sys.stderr,
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise MicroError(f"policy file {path} has non-finite values in {bad[0]}; it is unusable")
    if tuple(blob["obs_std"].shape) != (blob["obs_dim"],):
        raise MicroError(
            f"policy file {path} has an obs_std of shape {tuple(blob['obs_std'].shape)}, not "
            f"({blob['obs_dim']},): it is damaged"
        )


def _load_weights(path: str | Path, net: torch.nn.Module, weights: dict, blob: dict) -> None:
    expected = net.state_dict()
    for k, v in weights.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise MicroError(
                f"policy file {path}: {k} is {list(v.shape)}, not the {list(expected[k].shape)} "
                f"its recorded hidden_dims {list(blob['hidden_dims'])} and "
                f"{blob['num_q_ensemble']} critics make: the file is inconsistent"
            )
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise MicroError(
            f"policy file {path} does not match its recorded network sizes: "
            f"{str(exc).splitlines()[-1].strip()}"
        ) from None


def load_policy(path: str | Path, task: str | None, device: torch.device) -> LoadedPolicy:
    """Load a ``policy.pt``, refusing one made for another task than ``task`` (when given)."""
    blob = _read(path)
    _check(path, blob)
    if task is not None and blob["task"] != task:
        raise MicroError(
            f"policy {path} was trained on {blob['task']}, not {task}; pass --task {blob['task']}"
        )
    t = parse_task(blob["task"])
    sim = SimSpec.from_dict(blob["sim"]) if "sim" in blob else d4rl_sim(t.env)
    if (blob["obs_dim"], blob["act_dim"]) != (sim.obs_dim, sim.act_dim):
        raise MicroError(
            f"policy {path} has observation/action sizes {blob['obs_dim']}/{blob['act_dim']}"
        )
    actor, critics = networks(sim.obs_dim, sim.act_dim, blob["hidden_dims"], blob["num_q_ensemble"])
    _load_weights(path, actor, blob["actor"], blob)
    _load_weights(path, critics, blob["critics"], blob)
    config = blob.get("config") or {}
    return LoadedPolicy(
        path=Path(path),
        task=t.name,
        algo=blob.get("algo", "micro"),  # v1 files were all MICRO
        sim=sim,
        actor=actor.to(device).eval(),
        critics=critics.to(device).eval(),
        obs_std=blob["obs_std"].numpy().astype(np.float64),
        step=blob.get("step"),
        normalized_score=blob.get("normalized_score"),
        seed=config.get("seed"),
    )


def export_checkpoint_policy(
    run_dir: str | Path, out: str | Path | None = None
) -> tuple[Path, Progress]:
    """A policy file from a run's last checkpoint: a run in progress, or one killed before it
    wrote policy.pt. It goes to ``out`` (default ``RUN/snapshots/epoch<N>.pt``), never over an
    existing file. Its score is the checkpoint's evaluation when one ran at that epoch.
    Checkpoints from before they carried the data's observation std read the run's data."""
    run = RunDir(run_dir)
    if not run.config_file.is_file() or not run.checkpoint_file.is_file():
        raise MicroError(f"{run.path} has no checkpoint to export (checkpoints/last.pt)")
    saved = run.read_config()
    cfg = config_from_dict(saved)
    progress, weights, obs_std = read_learner(run.checkpoint_file, cfg.task)
    out = Path(out) if out else run.snapshot_file(progress.epoch)
    if out.exists():
        raise MicroError(f"{out} exists; pass another output file")
    sim = SimSpec.from_dict(saved["sim"]) if "sim" in saved else None
    if obs_std is None or sim is None:
        from micro.data.sources import reload_task_data

        data = reload_task_data(parse_task(cfg.task), saved)
        obs_std = observation_std(torch.as_tensor(data.transitions.observations))
        sim = data.sim
    actor, critics = networks(sim.obs_dim, sim.act_dim, cfg.hidden_dims, cfg.num_q_ensemble)
    for prefix, net in (("actor.", actor), ("critics.", critics)):
        net.load_state_dict(
            {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        )
    score = None
    if progress.last_eval is not None and cfg.evaluates_at(progress.epoch):
        e = progress.last_eval
        score = EvalResult(np.asarray(e["returns"]), np.asarray(e["lengths"]), sim).normalized_mean
    out.parent.mkdir(parents=True, exist_ok=True)
    save_policy(
        out,
        config=cfg.to_dict(),
        actor=actor,
        critics=critics,
        obs_std=obs_std,
        sim=sim,
        step=progress.step,
        normalized_score=score,
    )
    return out, progress
