"""The MICRO training run: data → dynamics → rollouts + conservative SAC → evaluation → files.

A run can be killed at any time and continued with ``train.py --resume RUN_DIR``: every
``save_freq`` epochs the checkpoint holds the networks, optimizers, scheduler, temperature, the
model buffer, every RNG state and the counters, so a resumed run continues exactly as an
uninterrupted one would (bit for bit on the CPU).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from micro import MicroError
from micro.agent import MICRO, Batch
from micro.buffer import ReplayBuffer
from micro.config import Config, config_from_dict, save_config
from micro.data.d4rl import Transitions, load_transitions, task_dataset_path
from micro.dynamics import EnsembleDynamics, fit_dynamics
from micro.envs import Task, parse_task, termination_fn
from micro.evaluation import EvalResult, run_episodes
from micro.logger import RunLogger
from micro.utils import (
    atomic_torch_save,
    atomic_write_text,
    resolve_device,
    safe_torch_load,
    set_seed,
    sha256_file,
)

POLICY_FORMAT = "micro-policy-v1"
CHECKPOINT_FORMAT = "micro-checkpoint-v1"
EVAL_SEED_OFFSET = 100_000  # evaluation episodes never share seeds with anything else


def make_run_dir(cfg: Config) -> Path:
    """A new, unique ``<logdir>/<task>/micro/seed<seed>-<timestamp>`` folder."""
    parent = Path(cfg.logdir).expanduser() / cfg.task / "micro"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            name = f"seed{cfg.seed}-{stamp}" + (f"-{attempt}" if attempt else "")
            try:
                (parent / name).mkdir()
                return parent / name
            except FileExistsError:
                continue
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MicroError(
            f"cannot create the run directory under {parent} ({reason}); pass --logdir DIR"
        ) from None
    raise MicroError(f"could not create a new run directory under {parent}")


def transitions_to_buffer(data: Transitions, device: torch.device) -> ReplayBuffer:
    arrays = (data.observations, data.actions, data.next_observations, data.rewards, data.terminals)
    buf = ReplayBuffer(len(data), data.observations.shape[1], data.actions.shape[1], device)
    buf.add(Batch(*(torch.as_tensor(x, device=device) for x in arrays)))
    return buf


@dataclass
class TrainResult:
    run_dir: Path
    final_eval: EvalResult | None
    timings: dict[str, float]  # wall seconds: dynamics, rollouts, updates, evaluation


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        data: Transitions,
        device: torch.device,
        progress: bool = True,
        resume: bool = False,
    ) -> None:
        self.cfg, self.run_dir, self.device, self.progress = cfg, run_dir, device, progress
        torch.set_float32_matmul_precision(cfg.matmul_precision)  # process-wide, like the CLI
        self.task: Task = parse_task(cfg.task)
        self.real = transitions_to_buffer(data, device)
        self.obs_mean = torch.as_tensor(data.observations.mean(0))
        self.obs_std = torch.as_tensor(data.observations.std(0))
        self.done_fn = termination_fn(self.task.env)
        self.n_real = int(cfg.batch_size * cfg.real_ratio)
        self.model_buffer = ReplayBuffer(
            cfg.rollout_batch_size * cfg.rollout_length * cfg.model_retain_epochs,
            self.task.obs_dim,
            self.task.act_dim,
            device,
        )
        self.timings = {"dynamics": 0.0, "rollouts": 0.0, "updates": 0.0, "evaluation": 0.0}
        self.epoch, self.step = 0, 0
        self.last_eval: EvalResult | None = None
        self.rollout_info: dict[str, float] = {}
        checkpoint = self.checkpoint_path if resume and self.checkpoint_path.exists() else None
        self.logger = RunLogger(run_dir, resume=resume)
        start = time.time()
        self.dynamics = self._dynamics(reuse_saved=resume)
        self.timings["dynamics"] = time.time() - start
        self.agent = MICRO(cfg, self.task.obs_dim, self.task.act_dim, self.dynamics).to(device)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.logger.start(self.epoch, self.step)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    # --- dynamics ------------------------------------------------------------------------------
    def _dynamics(self, reuse_saved: bool) -> EnsembleDynamics:
        cfg, task = self.cfg, self.task
        saved = self.run_dir / "dynamics"
        source = cfg.load_dynamics_path or (
            saved if reuse_saved and (saved / "model.pt").exists() else None
        )
        if source is not None:
            model = EnsembleDynamics.load(source, task.obs_dim, task.act_dim)
            model.to(self.device).requires_grad_(False)
            print(f"dynamics: loaded from {source} (elites {model.elites.tolist()})")
            return model
        model = EnsembleDynamics(
            task.obs_dim,
            task.act_dim,
            cfg.dynamics_hidden_dims,
            cfg.n_ensemble,
            cfg.n_elites,
            cfg.dynamics_weight_decay,
        ).to(self.device)
        d = self.real.all()

        def on_epoch(epoch: int, train_loss: float, holdout_loss: float) -> None:
            self.logger.dynamics_scalars(
                {"train_loss": train_loss, "holdout_loss": holdout_loss}, epoch
            )

        start = time.time()
        result = fit_dynamics(
            model,
            d.observations,
            d.actions,
            d.next_observations,
            d.rewards,
            lr=cfg.dynamics_lr,
            batch_size=cfg.dynamics_batch_size,
            holdout_ratio=cfg.dynamics_holdout_ratio,
            max_holdout=cfg.dynamics_max_holdout,
            max_epochs_since_update=cfg.max_epochs_since_update,
            max_epochs=cfg.dynamics_max_epochs,
            on_epoch=on_epoch,
            progress=self.progress,
        )
        model.requires_grad_(False)
        seconds = time.time() - start
        model.save(
            saved,
            extra={
                "epochs": result.epochs,
                "holdout_losses": result.holdout_losses,
                "fit_seconds": round(seconds, 1),
                "task": cfg.task,
            },
        )
        elite_mse = np.mean([result.holdout_losses[e] for e in result.elites])
        print(
            f"dynamics: {result.epochs} epochs in {seconds:.0f}s, elites {result.elites}, "
            f"holdout MSE {elite_mse:.4f}"
        )
        return model

    # --- model rollouts --------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self) -> dict[str, float]:
        """Roll the current stochastic policy ``rollout_length`` steps in the model from real
        start states; rows stop once they terminate."""
        cfg = self.cfg
        start = torch.randint(self.real.size, (cfg.rollout_batch_size,), device=self.device)
        obs = self.real.observations[start]
        reward_sum, count = torch.zeros((), device=self.device), 0
        for _ in range(cfg.rollout_length):
            act = self.agent.actor.sample_action(obs)
            next_obs, reward = self.dynamics.sample_step(obs, act)
            done = self.done_fn(next_obs)
            self.model_buffer.add(Batch(obs, act, next_obs, reward, done.float().unsqueeze(-1)))
            reward_sum += reward.sum()
            count += obs.shape[0]
            obs = next_obs[~done]
            if obs.shape[0] == 0:
                break
        return {"reward_mean": float(reward_sum) / max(count, 1), "transitions": count}

    # --- training --------------------------------------------------------------------------------
    def sample_batch(self) -> tuple[Batch, int]:
        """A mixed batch, real rows first, and the number of real rows."""
        n_real = self.n_real if self.model_buffer.size > 0 else self.cfg.batch_size
        real = self.real.sample(n_real)
        if n_real == self.cfg.batch_size:
            return real, n_real
        return Batch.cat(real, self.model_buffer.sample(self.cfg.batch_size - n_real)), n_real

    def evaluate(self) -> EvalResult:
        start = time.time()
        result = run_episodes(
            self.agent.actor,
            self.task.env,
            self.cfg.eval_episodes,
            self.cfg.seed + EVAL_SEED_OFFSET,
            device=self.device,
        )
        self.timings["evaluation"] += time.time() - start
        return result

    def train_epoch(self, bar: tqdm | None = None) -> dict[str, float]:
        """``step_per_epoch`` updates. Metrics stay on the device, one row per step, and are
        read once at the end, where any non-finite value stops the run at its exact step."""
        cfg = self.cfg
        rows: list[torch.Tensor] = []
        keys: list[str] = []
        for _ in range(cfg.step_per_epoch):
            if self.step % cfg.rollout_freq == 0:
                t_rollout = time.time()
                self.rollout_info = self.rollout()
                self.timings["rollouts"] += time.time() - t_rollout
            batch, n_real = self.sample_batch()
            metrics = self.agent.update(batch, n_real)
            keys = keys or list(metrics)
            rows.append(torch.stack([metrics[k] for k in keys]))
            self.step += 1
            if bar is not None:
                bar.update(1)  # host-side counter only: no device sync
        values = torch.stack(rows).cpu()
        bad = ~torch.isfinite(values)
        if bad.any():
            i, j = (int(x) for x in torch.nonzero(bad)[0])
            step = self.step - cfg.step_per_epoch + i + 1
            kept = (
                f"the last good checkpoint is {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise MicroError(
                f"non-finite {keys[j]} ({values[i, j].item()}) at step {step} "
                f"(epoch {self.epoch + 1}); training stopped and {kept}"
            )
        return dict(zip(keys, values.mean(0).tolist(), strict=True))

    def train(self) -> TrainResult:
        cfg = self.cfg
        start_time = time.time()
        bar = tqdm(
            total=cfg.epoch * cfg.step_per_epoch,
            initial=self.step,
            desc="MICRO",
            unit="step",
            disable=not self.progress,
        )
        while self.epoch < cfg.epoch:
            lr = self.agent.actor_optim.param_groups[0]["lr"]
            means = self.train_epoch(bar)
            self.epoch += 1
            self.agent.end_epoch()
            row = {
                "epoch": self.epoch,
                "step": self.step,
                **means,
                "actor_lr": lr,
                "rollout_reward_mean": self.rollout_info.get("reward_mean", ""),
                "model_buffer_size": self.model_buffer.size,
            }
            self.logger.epoch_scalars(means, lr, self.rollout_info, self.step)
            if self.epoch % cfg.eval_freq == 0 or self.epoch == cfg.epoch:
                self.last_eval = e = self.evaluate()
                row.update(
                    eval_return=e.mean,
                    eval_return_std=e.std,
                    eval_normalized_score=e.normalized_mean,
                    eval_normalized_score_std=e.normalized_std,
                )
                self.logger.eval_scalars(e.mean, e.normalized_mean, self.step)
                bar.write(
                    f"epoch {self.epoch}: return {e.mean:.1f} ± {e.std:.1f}, "
                    f"normalized {e.normalized_mean:.1f}"
                )
            self.logger.csv_row(row)
            self.logger.time_scalar(time.time() - start_time, self.step)
            if self.epoch % cfg.save_freq == 0 or self.epoch == cfg.epoch:
                self.save_checkpoint()
        bar.close()
        self.save_policy(self.run_dir / "policy.pt", self.last_eval)
        self.logger.close()
        t = self.timings
        t["updates"] = max(0.0, time.time() - start_time - t["rollouts"] - t["evaluation"])
        atomic_write_text(
            self.run_dir / "timings.json", json.dumps({k: round(v, 1) for k, v in t.items()})
        )
        return TrainResult(self.run_dir, self.last_eval, dict(t))

    # --- files -----------------------------------------------------------------------------------
    def policy_blob(self, last_eval: EvalResult | None) -> dict:
        """What ``eval.py --policy_path`` needs: plain tensors and primitives only."""
        cfg = self.cfg
        return {
            "format": POLICY_FORMAT,
            "task": cfg.task,
            "env": self.task.env,
            "obs_dim": self.task.obs_dim,
            "act_dim": self.task.act_dim,
            "hidden_dims": list(cfg.hidden_dims),
            "num_q_ensemble": cfg.num_q_ensemble,
            "actor": {k: v.cpu() for k, v in self.agent.actor.state_dict().items()},
            "critics": {k: v.cpu() for k, v in self.agent.critics.state_dict().items()},
            "obs_mean": self.obs_mean.clone(),
            "obs_std": self.obs_std.clone(),
            "config": cfg.to_dict(),
            "step": self.step,
            "normalized_score": None if last_eval is None else last_eval.normalized_mean,
        }

    def save_policy(self, path: Path, last_eval: EvalResult | None) -> None:
        atomic_torch_save(self.policy_blob(last_eval), path)

    def save_checkpoint(self) -> None:
        agent, buf = self.agent, self.model_buffer
        np_state = np.random.get_state()
        e = self.last_eval
        blob = {
            "format": CHECKPOINT_FORMAT,
            "task": self.cfg.task,
            "epoch": self.epoch,
            "step": self.step,
            "agent": {k: v.cpu() for k, v in agent.state_dict().items()},
            "actor_optim": agent.actor_optim.state_dict(),
            "critic_optim": agent.critic_optim.state_dict(),
            "alpha_optim": None if agent.alpha_optim is None else agent.alpha_optim.state_dict(),
            "actor_scheduler": None
            if agent.actor_scheduler is None
            else agent.actor_scheduler.state_dict(),
            "model_buffer": {
                "ptr": buf.ptr,
                "size": buf.size,
                **{k: v[: buf.size].cpu() for k, v in buf.named_tensors().items()},
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [
                    np_state[0],
                    torch.from_numpy(np_state[1].astype(np.int64)),
                    *np_state[2:],
                ],
                "python": random.getstate(),
            },
            "last_eval": None
            if e is None
            else {"returns": e.returns.tolist(), "lengths": e.lengths.tolist()},
            "rollout_info": dict(self.rollout_info),
        }
        atomic_torch_save(blob, self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        blob = safe_torch_load(path, "checkpoint")
        if blob.get("format") != CHECKPOINT_FORMAT or blob.get("task") != self.cfg.task:
            raise MicroError(f"{path} is not a checkpoint of this {self.cfg.task} run")
        agent = self.agent
        missing, unexpected = agent.load_state_dict(blob["agent"], strict=False)
        if unexpected or any(not k.startswith("dynamics.") for k in missing):
            raise MicroError(f"{path} does not match this run's networks")
        agent.actor_optim.load_state_dict(blob["actor_optim"])
        agent.critic_optim.load_state_dict(blob["critic_optim"])
        if agent.alpha_optim is not None:
            agent.alpha_optim.load_state_dict(blob["alpha_optim"])
        if agent.actor_scheduler is not None:
            agent.actor_scheduler.load_state_dict(blob["actor_scheduler"])
        buf, saved = self.model_buffer, blob["model_buffer"]
        for key, store in buf.named_tensors().items():
            store[: saved["size"]] = saved[key].to(self.device)
        buf.ptr, buf.size = saved["ptr"], saved["size"]
        rng = blob["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
        self.epoch, self.step = blob["epoch"], blob["step"]
        self.rollout_info = blob["rollout_info"]
        if blob["last_eval"] is not None:
            le = blob["last_eval"]
            self.last_eval = EvalResult(
                np.asarray(le["returns"]), np.asarray(le["lengths"]), self.task.env
            )
        print(f"resuming at epoch {self.epoch} (step {self.step}) from {path}")


def _report(result: TrainResult) -> None:
    if result.final_eval is not None:
        e = result.final_eval
        print(
            f"final: return {e.mean:.1f} ± {e.std:.1f}, normalized score "
            f"{e.normalized_mean:.1f} ± {e.normalized_std:.1f}"
        )
    print(f"policy: {result.run_dir / 'policy.pt'}\ntensorboard --logdir {result.run_dir / 'tb'}")


def run(cfg: Config, progress: bool = True, extra_config: dict | None = None) -> TrainResult:
    """Everything ``train.py`` does, in order, validating input before writing any file."""
    task = parse_task(cfg.task)
    device = resolve_device(cfg.device)
    data_path = task_dataset_path(task, cfg.dataset)
    data = load_transitions(data_path, task)
    set_seed(cfg.seed)
    run_dir = make_run_dir(cfg)
    save_config(
        cfg,
        run_dir / "config.yaml",
        {
            "dataset_file": str(data_path.resolve()),
            "dataset_sha256": sha256_file(data_path),
            "dataset_transitions": len(data),
            **(extra_config or {}),
        },
    )
    print(
        f"run directory: {run_dir}\ndata: {data_path} ({len(data)} transitions), device: {device}"
    )
    result = Trainer(cfg, run_dir, data, device, progress=progress).train()
    _report(result)
    return result


def resume(
    run_dir: str | Path, device_name: str | None = None, progress: bool = True
) -> TrainResult:
    """Continue a killed run from its last checkpoint (or from its start if it has none)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise MicroError(f"{run_dir} is not a run directory (no config.yaml)")
    saved = yaml.safe_load(config_file.read_text())
    cfg = config_from_dict(saved)
    if (run_dir / "policy.pt").exists():
        raise MicroError(f"{run_dir} already finished (policy.pt exists); start a new run instead")
    device = resolve_device(device_name or cfg.device)
    data_path = Path(saved["dataset_file"])
    if not data_path.is_file():
        raise MicroError(f"the run's dataset {data_path} is missing; restore it to resume")
    if sha256_file(data_path) != saved["dataset_sha256"]:
        raise MicroError(
            f"the run's dataset {data_path} has changed since the run started; cannot resume"
        )
    data = load_transitions(data_path, parse_task(cfg.task))
    set_seed(cfg.seed)
    result = Trainer(cfg, run_dir, data, device, progress=progress, resume=True).train()
    _report(result)
    return result
