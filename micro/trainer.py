"""The MICRO training run: data → dynamics → rollouts + conservative SAC → evaluation → files."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.agent import MICRO, Batch
from micro.buffer import ReplayBuffer
from micro.config import Config, save_config
from micro.data.d4rl import Transitions, load_transitions, task_dataset_path
from micro.dynamics import EnsembleDynamics, fit_dynamics
from micro.envs import Task, parse_task, termination_fn
from micro.evaluation import EvalResult, run_episodes
from micro.logger import RunLogger
from micro.utils import atomic_torch_save, resolve_device, set_seed, sha256_file

POLICY_FORMAT = "micro-policy-v1"
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
    except PermissionError:
        raise MicroError(f"log directory {parent} is not writable; pass --logdir DIR") from None
    raise MicroError(f"could not create a new run directory under {parent}")


def transitions_to_buffer(data: Transitions, device: torch.device) -> ReplayBuffer:
    buf = ReplayBuffer(len(data), data.observations.shape[1], data.actions.shape[1], device)
    buf.add(
        Batch(
            *(
                torch.as_tensor(x, device=device)
                for x in (
                    data.observations,
                    data.actions,
                    data.next_observations,
                    data.rewards,
                    data.terminals,
                )
            )
        )
    )
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
    ) -> None:
        self.cfg, self.run_dir, self.device, self.progress = cfg, run_dir, device, progress
        self.task: Task = parse_task(cfg.task)
        self.real = transitions_to_buffer(data, device)
        self.obs_mean = torch.as_tensor(data.observations.mean(0))
        self.obs_std = torch.as_tensor(data.observations.std(0))
        self.done_fn = termination_fn(self.task.env)
        self.logger = RunLogger(run_dir)
        self.n_real = int(cfg.batch_size * cfg.real_ratio)
        self.model_buffer = ReplayBuffer(
            cfg.rollout_batch_size * cfg.rollout_length * cfg.model_retain_epochs,
            self.task.obs_dim,
            self.task.act_dim,
            device,
        )
        self.timings = {"dynamics": 0.0, "rollouts": 0.0, "updates": 0.0, "evaluation": 0.0}
        start = time.time()
        self.dynamics = self._dynamics()
        self.timings["dynamics"] = time.time() - start
        self.agent = MICRO(cfg, self.task.obs_dim, self.task.act_dim, self.dynamics).to(device)
        self.step = 0

    # --- dynamics ------------------------------------------------------------------------------
    def _dynamics(self) -> EnsembleDynamics:
        cfg, task = self.cfg, self.task
        if cfg.load_dynamics_path is not None:
            model = EnsembleDynamics.load(cfg.load_dynamics_path, task.obs_dim, task.act_dim)
            model.to(self.device).requires_grad_(False)
            print(
                f"dynamics: loaded from {cfg.load_dynamics_path} (elites {model.elites.tolist()})"
            )
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
            self.logger.scalars(
                {"train_loss": train_loss, "holdout_loss": holdout_loss}, epoch, "dynamics/"
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
        model.save(
            self.run_dir / "dynamics",
            extra={
                "epochs": result.epochs,
                "holdout_losses": result.holdout_losses,
                "fit_seconds": round(time.time() - start, 1),
                "task": cfg.task,
            },
        )
        elite_mse = np.mean([result.holdout_losses[e] for e in result.elites])
        print(
            f"dynamics: {result.epochs} epochs in {time.time() - start:.0f}s, "
            f"elites {result.elites}, holdout MSE {elite_mse:.4f}"
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
            act = self.agent.actor.sample(obs).action
            next_obs, reward = self.dynamics.sample_step(obs, act)
            done = self.done_fn(next_obs)
            self.model_buffer.add(Batch(obs, act, next_obs, reward, done.float().unsqueeze(-1)))
            reward_sum += reward.sum()
            count += obs.shape[0]
            obs = next_obs[~done]
            if obs.shape[0] == 0:
                break
        return {
            "rollout_reward_mean": float(reward_sum) / max(count, 1),
            "rollout_transitions": count,
        }

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

    def train(self) -> TrainResult:
        cfg = self.cfg
        start_time, last_eval, rollout_info = time.time(), None, {}
        bar = tqdm(
            total=cfg.epoch * cfg.step_per_epoch,
            desc="MICRO",
            unit="step",
            disable=not self.progress,
        )
        for epoch in range(1, cfg.epoch + 1):
            sums: dict[str, torch.Tensor] = {}
            for _ in range(cfg.step_per_epoch):
                if self.step % cfg.rollout_freq == 0:
                    t_rollout = time.time()
                    rollout_info = self.rollout()
                    self.timings["rollouts"] += time.time() - t_rollout
                batch, n_real = self.sample_batch()
                metrics = self.agent.update(batch, n_real)
                for key, value in metrics.items():
                    sums[key] = sums[key] + value if key in sums else value.clone()
                self.step += 1
                bar.update(1)
            lr = self.agent.actor_optim.param_groups[0]["lr"]
            self.agent.end_epoch()
            means = {
                k: float(v) / cfg.step_per_epoch for k, v in sums.items()
            }  # one sync per epoch
            for key, value in means.items():
                if not math.isfinite(value):
                    raise MicroError(
                        f"non-finite {key} ({value}) in epoch {epoch} (step {self.step})"
                    )
            row = {
                "epoch": epoch,
                "step": self.step,
                "time_s": round(time.time() - start_time, 1),
                **means,
                "rollout_reward_mean": rollout_info.get("rollout_reward_mean", ""),
                "model_buffer_size": self.model_buffer.size,
                "actor_lr": lr,
            }
            self.logger.scalars(
                {k: means[k] for k in ("critic_loss", "actor_loss") if k in means},
                self.step,
                "loss/",
            )
            if "alpha_loss" in means:
                self.logger.scalars({"alpha_loss": means["alpha_loss"]}, self.step, "loss/")
            train_keys = ("alpha", "uncertainty", "q_mean", "target_mean")
            self.logger.scalars({k: means[k] for k in train_keys}, self.step, "train/")
            self.logger.scalars({"actor_lr": lr}, self.step, "train/")
            if rollout_info:
                self.logger.scalars(
                    {"reward_mean": rollout_info["rollout_reward_mean"]}, self.step, "rollout/"
                )
            if epoch % cfg.eval_freq == 0 or epoch == cfg.epoch:
                last_eval = self.evaluate()
                row.update(
                    eval_return=last_eval.mean,
                    eval_return_std=last_eval.std,
                    eval_normalized_score=last_eval.normalized_mean,
                    eval_normalized_score_std=last_eval.normalized_std,
                )
                self.logger.scalars(
                    {"return": last_eval.mean, "normalized_score": last_eval.normalized_mean},
                    self.step,
                    "eval/",
                )
                bar.write(
                    f"epoch {epoch}: return {last_eval.mean:.1f} ± {last_eval.std:.1f}, "
                    f"normalized {last_eval.normalized_mean:.1f}"
                )
            self.logger.csv_row(row)
            if epoch % cfg.save_freq == 0 or epoch == cfg.epoch:
                self.save_checkpoint(epoch)
        bar.close()
        self.save_policy(self.run_dir / "policy.pt", last_eval)
        self.logger.close()
        t = self.timings
        t["updates"] = time.time() - start_time - t["rollouts"] - t["evaluation"]
        return TrainResult(self.run_dir, last_eval, dict(t))

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

    def save_checkpoint(self, epoch: int) -> None:
        agent = self.agent
        blob = {
            "epoch": epoch,
            "step": self.step,
            "agent": {k: v.cpu() for k, v in agent.state_dict().items()},
            "actor_optim": agent.actor_optim.state_dict(),
            "critic_optim": agent.critic_optim.state_dict(),
            "alpha_optim": None if agent.alpha_optim is None else agent.alpha_optim.state_dict(),
            "actor_scheduler": None
            if agent.actor_scheduler is None
            else agent.actor_scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng_state": np.random.get_state()[1].copy(),
        }
        atomic_torch_save(blob, self.run_dir / "checkpoints" / "last.pt")


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
            "device_used": str(device),
            **(extra_config or {}),
        },
    )
    print(
        f"run directory: {run_dir}\ndata: {data_path} ({len(data)} transitions), device: {device}"
    )
    trainer = Trainer(cfg, run_dir, data, device, progress=progress)
    result = trainer.train()
    if result.final_eval is not None:
        e = result.final_eval
        print(
            f"final: return {e.mean:.1f} ± {e.std:.1f}, normalized score "
            f"{e.normalized_mean:.1f} ± {e.normalized_std:.1f}"
        )
    print(f"policy: {run_dir / 'policy.pt'}\ntensorboard --logdir {run_dir / 'tb'}")
    return result
