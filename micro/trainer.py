"""The training loop, alone: model rollouts every ``rollout_freq`` steps, mixed batches, learner
updates, periodic evaluation, logs and checkpoints. The stages around it (data, dynamics, the
run directory) are in ``micro.pipeline``.

A run can be killed at any time and continued with ``train.py --resume RUN_DIR``: every
``save_freq`` epochs the checkpoint (``micro.checkpoint``) holds everything the loop needs to
continue exactly as an uninterrupted run would (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.algos.base import Algorithm
from micro.buffer import Batch, ReplayBuffer
from micro.checkpoint import CheckpointWriter, Progress, load_checkpoint, save_checkpoint
from micro.config import Config
from micro.dynamics import EnsembleDynamics, read_dynamics_info
from micro.envs import SimSpec, termination_fn
from micro.evaluation import EvalResult, run_episodes
from micro.graphs import graphed
from micro.logger import RunLogger
from micro.policy_file import save_policy
from micro.rollout import model_rollout
from micro.run_dir import TIMED_STAGES, RunDir
from micro.utils import EVAL_SEED_OFFSET, atomic_write_text, bar_disable

# Wall seconds by stage (``TIMED_STAGES``) go to timings.json and are carried by checkpoints
# across resumes.


@dataclass
class TrainResult:
    run_dir: Path
    final_eval: EvalResult | None
    timings: dict[str, float]  # TIMED_STAGES


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        real: ReplayBuffer,
        dynamics: EnsembleDynamics,
        agent: Algorithm,
        logger: RunLogger,
        sim: SimSpec,
        progress: bool = True,
    ) -> None:
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.run = RunDir(run_dir)  # its files
        self.real, self.dynamics, self.agent, self.logger = real, dynamics, agent, logger
        self.device = real.device
        self.sim = sim  # where evaluation runs, and the score references
        # the attacks in eval.py scale their budget by the data's observation std
        self.obs_std = real.observation_std()
        self.done_fn = termination_fn(sim.robot)
        self.n_real = int(cfg.batch_size * cfg.real_ratio)
        self.model_buffer = ReplayBuffer(
            cfg.rollout_batch_size * cfg.rollout_length * cfg.model_retain_epochs,
            sim.obs_dim,
            sim.act_dim,
            self.device,
        )
        stages = TIMED_STAGES + (("model_updates",) if agent.trains_model else ())
        self.timings = dict.fromkeys(stages, 0.0)
        self.model_updates = 0  # in this session: a recorded step must see the current model
        self.state = Progress(rollout_info={})
        self.last_eval: EvalResult | None = None
        self.checkpoints = CheckpointWriter()
        # the step the loop calls: recorded and replayed on CUDA (micro.graphs), else eager
        self.step: Callable[[], dict[str, torch.Tensor]] = self.eager_step
        if self.device.type == "cuda" and cfg.cuda_graph:
            self.step = graphed(self.eager_step, self.graph_key, agent.optimizers())

    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_file

    # --- one rollout, one batch, one evaluation -----------------------------------------------
    def rollout(self) -> dict[str, float]:
        cfg = self.cfg
        start = torch.randint(self.real.size, (cfg.rollout_batch_size,), device=self.device)
        return model_rollout(
            self.agent.actor,
            functools.partial(self.agent.model_step, self.dynamics),
            self.real.observations[start],
            cfg.rollout_length,
            self.done_fn,
            self.model_buffer,
        )

    def sample_batch(self) -> tuple[Batch, int]:
        """A mixed batch, real rows first, and the number of real rows."""
        n_real = self.n_real if self.model_buffer.size > 0 else self.cfg.batch_size
        real = self.real.sample(n_real)
        if n_real == self.cfg.batch_size:
            return real, n_real
        return Batch.cat(real, self.model_buffer.sample(self.cfg.batch_size - n_real)), n_real

    def eager_step(self) -> dict[str, torch.Tensor]:
        """Sample a mixed batch and take one gradient step; the metrics stay on the device."""
        batch, n_real = self.sample_batch()
        return self.agent.update(batch, n_real)

    def graph_key(self) -> tuple:
        """What a recorded step (``GraphedStep``) freezes: the index bounds of both buffers and
        the learning rates, and the model (a model update invalidates the copies of its weights
        that a recording holds)."""
        lrs = tuple(g["lr"] for opt in self.agent.optimizers() for g in opt.param_groups)
        return self.real.size, self.model_buffer.size, lrs, self.model_updates

    def evaluate(self) -> EvalResult:
        start = time.time()
        result = run_episodes(
            self.agent.actor,
            self.sim,
            self.cfg.eval_episodes,
            self.cfg.seed + EVAL_SEED_OFFSET,
            device=self.device,
        )
        self.timings["evaluation"] += time.time() - start
        return result

    # --- the loop --------------------------------------------------------------------------------
    def train_epoch(self, bar: tqdm | None = None) -> dict[str, float]:
        """``step_per_epoch`` updates. Metrics stay on the device, one row per step, and are
        read once at the end, where any non-finite value stops the run at its exact step."""
        cfg, state = self.cfg, self.state
        rows: list[torch.Tensor] = []
        keys: list[str] = []
        for _ in range(cfg.step_per_epoch):
            if state.step % cfg.rollout_freq == 0:
                t_rollout = time.time()
                state.rollout_info = self.rollout()
                self.timings["rollouts"] += time.time() - t_rollout
            metrics = self.step()
            keys = keys or list(metrics)
            rows.append(torch.stack([metrics[k] for k in keys]))
            state.step += 1
            if self.agent.trains_model and state.step % self.agent.model_update_freq == 0:
                # after every model_update_freq steps (the published codes' order): a rollout at
                # this step count uses the updated model
                t_model = time.time()
                state.model_info = self.agent.model_update(self.real, self.done_fn)
                self.model_updates += 1
                self.timings["model_updates"] += time.time() - t_model
            if bar is not None:
                bar.update(1)  # host-side counter only: no device sync
        values = torch.stack(rows).cpu()
        bad = ~torch.isfinite(values)
        if bad.any():
            i, j = (int(x) for x in torch.nonzero(bad)[0])
            step = state.step - cfg.step_per_epoch + i + 1
            self.checkpoints.wait()  # the last one may still be being written
            kept = (
                f"the last good checkpoint is {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise MicroError(
                f"non-finite {keys[j]} ({values[i, j].item()}) at step {step} "
                f"(epoch {state.epoch + 1}); training stopped and {kept}"
            )
        return dict(zip(keys, values.mean(0).tolist(), strict=True))

    def train(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        self.logger.start(state.epoch, state.step)
        bar = tqdm(
            total=cfg.epoch * cfg.step_per_epoch,
            initial=state.step,
            desc=self.agent.name.upper(),
            unit="step",
            disable=bar_disable(self.progress),
        )
        t = self.timings
        try:
            self._loop(bar)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the last checkpoint whole; report the cause
                self.checkpoints.wait()
            raise
        wait_start = time.time()
        self.checkpoints.wait()
        t["checkpoints"] += time.time() - wait_start
        bar.close()
        if self.agent.trains_model:  # dynamics/ stays the model the run started from
            self.dynamics.save(
                self.run.final_dynamics_dir,
                extra={
                    **read_dynamics_info(self.run.dynamics_dir),  # robot, task, data
                    "trained_by": self.agent.name,
                    "step": self.state.step,
                },
            )
        self.save_policy(self.run.policy_file, evaluated=True)
        self.logger.close()
        atomic_write_text(self.run.timings_file, json.dumps({k: round(v, 1) for k, v in t.items()}))
        return TrainResult(self.run_dir, self.last_eval, dict(t))

    def _loop(self, bar: tqdm) -> None:
        cfg, state, t = self.cfg, self.state, self.timings
        start_time = time.time()
        evaluated = False
        first_epoch = state.epoch + 1
        bar.write(
            f"schedule: {cfg.epoch} epochs x {cfg.step_per_epoch} steps, from epoch {first_epoch}"
        )
        if state.step == 0:
            self._pretrain(bar)
        while state.epoch < cfg.epoch:
            epoch_start, outside = time.time(), self._outside_updates()
            before = dict(t)
            at_start = self.agent.epoch_metrics()  # e.g. the actor's learning rate
            means = self.train_epoch(bar)
            state.epoch += 1
            self.agent.end_epoch()
            rollout = {k: v for k, v in state.rollout_info.items() if k != "transitions"}
            row = {
                "epoch": state.epoch,
                "step": state.step,
                **means,
                **at_start,
                **{f"rollout_{k}": v for k, v in rollout.items()},
                **{f"model_{k}": v for k, v in (state.model_info or {}).items()},
                "model_buffer_size": self.model_buffer.size,
            }
            self.logger.epoch_scalars({**means, **at_start}, rollout, state.step)
            if state.model_info:
                self.logger.scalars(state.model_info, state.step, "model/")
            evaluated = cfg.evaluates_at(state.epoch)
            if evaluated:
                self.last_eval = e = self.evaluate()
                state.last_eval = {"returns": e.returns.tolist(), "lengths": e.lengths.tolist()}
                row.update(
                    eval_return=e.mean,
                    eval_return_std=e.std,
                    eval_normalized_score=e.normalized_mean,
                    eval_normalized_score_std=e.normalized_std,
                    eval_normalized_score_min=e.normalized_min,
                    eval_normalized_score_max=e.normalized_max,
                )
                self.logger.eval_scalars(
                    {
                        "return": e.mean,
                        "normalized_score": e.normalized_mean,
                        "normalized_score_min": e.normalized_min,
                        "normalized_score_max": e.normalized_max,
                    },
                    state.step,
                )
                self.logger.episode_rows(
                    e.episode_rows(cfg.seed + EVAL_SEED_OFFSET), state.epoch, state.step
                )
                bar.write(
                    f"epoch {state.epoch}: return {e.mean:.1f} ± {e.std:.1f}, "
                    f"normalized {e.normalized_mean:.1f}"
                )
            self.logger.csv_row(row)
            self.logger.time_scalar(time.time() - start_time, state.step)
            # the epoch's time not spent in rollouts or evaluation (updates and logging)
            t["updates"] += time.time() - epoch_start - (self._outside_updates() - outside)
            if state.epoch == first_epoch and state.epoch < cfg.epoch:
                bar.write(self._estimate(time.time() - epoch_start, before))
            if (
                cfg.snapshot_freq
                and state.epoch % cfg.snapshot_freq == 0
                and state.epoch < cfg.epoch
            ):
                # before the checkpoint: a run killed in between redoes this epoch and rewrites it
                self.save_policy(self.run.snapshot_file(state.epoch), evaluated)
            if state.epoch % cfg.save_freq == 0 or state.epoch == cfg.epoch:
                save_start = time.time()
                state.timings = dict(t)
                save_checkpoint(
                    self.checkpoint_path,
                    cfg.task,
                    self.agent,
                    self.model_buffer,
                    state,
                    self.checkpoints,  # written in the background; the copy is timed
                    obs_std=self.obs_std,
                )
                t["checkpoints"] += time.time() - save_start

    def _pretrain(self, bar: tqdm) -> None:
        """The algorithm's training before the first step, if it has any (RAMBO's behaviour
        cloning); a run killed before its first checkpoint does it again, from the same seed."""
        start = time.time()
        info = self.agent.pretrain(self.real)
        if info is None:
            return
        self.timings["pretraining"] = time.time() - start
        self.logger.scalars(info, 0, "pretrain/")
        shown = ", ".join(f"{k} {v:.4g}" for k, v in info.items())
        bar.write(f"pretraining ({duration(self.timings['pretraining'])}): {shown}")

    def _estimate(self, epoch_seconds: float, before: dict[str, float]) -> str:
        """From the session's first epoch (``before``: the timings at its start): its time per
        gradient step and per rollout (and model update), extrapolated to the rest of the
        schedule, evaluations aside."""
        cfg, state, t = self.cfg, self.state, self.timings
        spent = {k: t.get(k, 0.0) - before.get(k, 0.0) for k in t}
        steps = (epoch_seconds - spent["rollouts"] - spent["evaluation"]) - spent.get(
            "model_updates", 0.0
        )
        first, now = state.step - cfg.step_per_epoch, state.step
        end = now + (cfg.epoch - state.epoch) * cfg.step_per_epoch
        seconds = steps / cfg.step_per_epoch * (end - now)
        # rollouts come before the steps at multiples of their period, model updates after them
        for key, every, after in (
            ("rollouts", cfg.rollout_freq, 0),
            ("model_updates", self._model_freq(), 1),
        ):
            done = _multiples(first + after, now + after, every) if every else 0
            if done:
                seconds += spent.get(key, 0.0) / done * _multiples(now + after, end + after, every)
        return (
            f"the first epoch took {duration(epoch_seconds)}: about {duration(seconds)} more for "
            f"the remaining {cfg.epoch - state.epoch} epochs at its rate, evaluations aside"
        )

    def _model_freq(self) -> int | None:
        return self.agent.model_update_freq if self.agent.trains_model else None

    def _outside_updates(self) -> float:
        t = self.timings
        return t["rollouts"] + t["evaluation"] + t.get("model_updates", 0.0)

    def save_policy(self, path: Path, evaluated: bool) -> None:
        """The current policy as a policy file, with this epoch's score if it was evaluated."""
        e = self.last_eval if evaluated else None
        save_policy(
            path,
            config=self.cfg.to_dict(),
            actor=self.agent.actor,
            critics=self.agent.critics,
            obs_std=self.obs_std,
            sim=self.sim,
            step=self.state.step,
            normalized_score=None if e is None else e.normalized_mean,
        )

    def restore(self) -> None:
        """Continue from the run's checkpoint."""
        self.state = load_checkpoint(
            self.checkpoint_path, self.cfg.task, self.agent, self.model_buffer
        )
        self.state.rollout_info = self.state.rollout_info or {}
        if self.state.timings:  # the earlier sessions' time, the dynamics fit included
            self.timings.update(self.state.timings)
        if self.state.last_eval is not None:
            le = self.state.last_eval
            self.last_eval = EvalResult(
                np.asarray(le["returns"]), np.asarray(le["lengths"]), self.sim
            )
        print(f"resuming at epoch {self.state.epoch} (step {self.state.step})")


def duration(seconds: float) -> str:
    """``40 s``, ``14 min``, ``2.3 h``, ``3.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _multiples(start: int, end: int, every: int) -> int:
    """How many steps in [start, end) are multiples of ``every``."""
    return (end + every - 1) // every - (start + every - 1) // every
