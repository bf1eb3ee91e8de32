"""The training loop, alone: model rollouts every ``rollout_freq`` steps, mixed batches, learner
updates, periodic evaluation, logs and checkpoints. The stages around it (data, dynamics, the
run directory) are in ``micro.pipeline``.

A run can be killed at any time and continued with ``train.py --resume RUN_DIR``: every
``save_freq`` epochs the checkpoint (``micro.checkpoint``) holds everything the loop needs to
continue exactly as an uninterrupted run would (bit for bit on the CPU).

The loop trains one run or a population (``micro.population``): several runs in one process
whose gradient steps are one batched step of a learner with a run axis (``SAC(runs=N)``). Each
run is a ``Member``: its own run directory, logs, model buffer, rollouts, evaluations, random
stream and checkpoint (an ordinary one: the run can continue alone). One run is a population of
one member whose learner has no run axis and whose draws come from the global generator.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.algos.base import Algorithm
from micro.buffer import Batch, ReplayBuffer
from micro.checkpoint import (
    CheckpointWriter,
    Progress,
    checkpoint_blob,
    commit_together,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
    settle_together,
)
from micro.config import Config
from micro.dynamics import EnsembleDynamics, read_dynamics_info
from micro.envs import SimSpec, termination_fn
from micro.evaluation import EvalResult, run_episodes
from micro.graphs import graphed
from micro.logger import RunLogger
from micro.nets import Actor, EnsembleCritic
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
    failed: str | None = None  # a population's run stopped early: why (its last good
    # checkpoint is kept); None when it trained to the end


@dataclass
class Member:
    """One run in the loop: its config (its seed), files, logs, model buffer, counters and
    random stream (``generator``: None for a run alone, which draws from the global one)."""

    cfg: Config
    run: RunDir
    logger: RunLogger
    model_buffer: ReplayBuffer
    generator: torch.Generator | None = None
    state: Progress = field(default_factory=lambda: Progress(rollout_info={}))
    last_eval: EvalResult | None = None
    checkpoints: CheckpointWriter = field(default_factory=CheckpointWriter)
    failed: str | None = None  # why it stopped (a population's run), None while it trains


def model_buffer_for(cfg: Config, sim: SimSpec, device: torch.device) -> ReplayBuffer:
    """An empty model buffer: ``model_retain_epochs`` rollouts' worth of transitions."""
    capacity = cfg.rollout_batch_size * cfg.rollout_length * cfg.model_retain_epochs
    return ReplayBuffer(capacity, sim.obs_dim, sim.act_dim, device)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path | None,
        real: ReplayBuffer,
        dynamics: EnsembleDynamics,
        agent: Algorithm,
        logger: RunLogger | None,
        sim: SimSpec,
        progress: bool = True,
        members: Sequence[Member] | None = None,
    ) -> None:
        """One run in ``run_dir`` logged by ``logger``; or, with ``members`` (then ``run_dir``
        and ``logger`` are None), a population whose learner ``agent`` has a run axis of
        ``len(members)`` and whose runs draw from their members' generators."""
        self.cfg, self.progress = cfg, progress
        self.real, self.dynamics, self.agent = real, dynamics, agent
        self.device = real.device
        self.sim = sim  # where evaluation runs, and the score references
        # the attacks in eval.py scale their budget by the data's observation std
        self.obs_std = real.observation_std()
        self.done_fn = termination_fn(sim.robot)
        self.n_real = int(cfg.batch_size * cfg.real_ratio)
        self.population = members is not None
        if members is None:
            assert run_dir is not None and getattr(agent, "runs", None) is None
            buffer = model_buffer_for(cfg, sim, self.device)
            members = [Member(cfg, RunDir(run_dir), logger, buffer)]  # type: ignore[arg-type]
        else:
            assert getattr(agent, "runs", None) == len(members), "one learner run per member"
        self.members = list(members)
        stages = TIMED_STAGES + (("model_updates",) if agent.trains_model else ())
        self.timings = dict.fromkeys(stages, 0.0)  # the whole process's (all members')
        self.model_updates = 0  # in this session: a recorded step must see the current model
        # the step the loop calls: recorded and replayed on CUDA (micro.graphs), else eager
        self.step: Callable[[], dict[str, torch.Tensor]] = self.eager_step
        if self.device.type == "cuda" and cfg.cuda_graph:
            generators = [m.generator for m in self.members if m.generator is not None]
            self.step = graphed(self.eager_step, self.graph_key, agent.optimizers(), generators)

    # --- the run alone (one member) ------------------------------------------------------------
    @property
    def _only(self) -> Member:
        assert len(self.members) == 1
        return self.members[0]

    @property
    def run(self) -> RunDir:
        return self._only.run

    @property
    def run_dir(self) -> Path:
        return self._only.run.path

    @property
    def logger(self) -> RunLogger:
        return self._only.logger

    @property
    def model_buffer(self) -> ReplayBuffer:
        return self._only.model_buffer

    @property
    def state(self) -> Progress:
        return self._only.state

    @property
    def last_eval(self) -> EvalResult | None:
        return self._only.last_eval

    @property
    def checkpoints(self) -> CheckpointWriter:
        return self._only.checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self._only.run.checkpoint_file

    @property
    def active(self) -> list[tuple[int, Member]]:
        """The members still training, with their run index."""
        return [(i, m) for i, m in enumerate(self.members) if m.failed is None]

    # --- one rollout, one batch, one evaluation -----------------------------------------------
    def member_actor(self, i: int) -> Actor:
        """Run ``i``'s policy as an ``Actor`` (the learner's own for one run, a copy of its
        slice for a population's run): what rollouts, evaluations and policy files use."""
        if not self.population:
            return self.agent.actor
        return self.agent.actor.run_actor(i)

    def member_critics(self, i: int) -> EnsembleCritic:
        if not self.population:
            return self.agent.critics
        cfg = self.cfg
        critics = EnsembleCritic(
            self.sim.obs_dim, self.sim.act_dim, cfg.hidden_dims, cfg.num_q_ensemble
        )
        critics.load_state_dict(self.agent.critics.run_state(i))
        return critics.to(self.device)

    def rollout(self) -> None:
        """Every training member's model rollout, into its model buffer (its ``rollout_info``)."""
        cfg = self.cfg
        for i, m in self.active:
            start = torch.randint(
                self.real.size, (cfg.rollout_batch_size,), device=self.device, generator=m.generator
            )
            m.state.rollout_info = model_rollout(
                self.member_actor(i),
                functools.partial(self.agent.model_step, self.dynamics, generator=m.generator),
                self.real.observations[start],
                cfg.rollout_length,
                self.done_fn,
                m.model_buffer,
                m.generator,
            )

    def _member_batch(self, m: Member, n_real: int) -> Batch:
        real = self.real.sample(n_real, m.generator)
        if n_real == self.cfg.batch_size:
            return real
        return Batch.cat(real, m.model_buffer.sample(self.cfg.batch_size - n_real, m.generator))

    def sample_batch(self) -> tuple[Batch, int]:
        """A mixed batch, real rows first, and the number of real rows; a population's is
        [runs, B, ...], each run's rows from its own model buffer and generator."""
        has_model_rows = {m.model_buffer.size > 0 for m in self.members}
        assert len(has_model_rows) == 1, "all members roll out at the same steps"
        n_real = self.n_real if has_model_rows.pop() else self.cfg.batch_size
        if not self.population:
            return self._member_batch(self._only, n_real), n_real
        return Batch.stack([self._member_batch(m, n_real) for m in self.members]), n_real

    def eager_step(self) -> dict[str, torch.Tensor]:
        """Sample a mixed batch and take one gradient step; the metrics stay on the device."""
        batch, n_real = self.sample_batch()
        return self.agent.update(batch, n_real)

    def graph_key(self) -> tuple:
        """What a recorded step (``GraphedStep``) freezes: the index bounds of both buffers and
        the learning rates, and the model (a model update invalidates the copies of its weights
        that a recording holds)."""
        lrs = tuple(g["lr"] for opt in self.agent.optimizers() for g in opt.param_groups)
        sizes = tuple(m.model_buffer.size for m in self.members)
        return self.real.size, sizes, lrs, self.model_updates

    def evaluate(self, i: int = 0) -> EvalResult:
        """Member ``i``'s evaluation episodes (its seed's)."""
        start = time.time()
        result = run_episodes(
            self.member_actor(i),
            self.sim,
            self.cfg.eval_episodes,
            self.members[i].cfg.seed + EVAL_SEED_OFFSET,
            device=self.device,
        )
        self.timings["evaluation"] += time.time() - start
        return result

    # --- the loop --------------------------------------------------------------------------------
    def train_epoch(self, bar: tqdm | None = None) -> dict[str, float]:
        """``step_per_epoch`` updates. Metrics stay on the device, one row per step, and are
        read once at the end, where any non-finite value stops the run at its exact step.
        Returns the epoch's metric means (one run's; ``train_population_epoch`` for several)."""
        means = self.train_population_epoch(bar)
        assert means[0] is not None
        return means[0]

    def train_population_epoch(self, bar: tqdm | None = None) -> list[dict[str, float] | None]:
        """``train_epoch`` for every member: its metric means, None for a member that stopped.
        A population's member whose metrics turn non-finite is stopped there (its last good
        checkpoint kept) and the others go on; a run alone, or the last member, raises."""
        cfg = self.cfg
        step0 = self.members[0].state.step
        rows: list[torch.Tensor] = []
        keys: list[str] = []
        step = step0
        for _ in range(cfg.step_per_epoch):
            if step % cfg.rollout_freq == 0:
                t_rollout = time.time()
                self.rollout()
                self.timings["rollouts"] += time.time() - t_rollout
            metrics = self.step()
            keys = keys or list(metrics)
            rows.append(torch.stack([metrics[k] for k in keys]))
            step += 1
            for _, m in self.active:
                m.state.step = step
            if self.agent.trains_model and step % self.agent.model_update_freq == 0:
                # after every model_update_freq steps (the published codes' order): a rollout at
                # this step count uses the updated model
                t_model = time.time()
                self.state.model_info = self.agent.model_update(self.real, self.done_fn)
                self.model_updates += 1
                self.timings["model_updates"] += time.time() - t_model
            if bar is not None:
                bar.update(1)  # host-side counter only: no device sync
        values = torch.stack(rows).cpu()  # [steps, keys], or [steps, keys, runs]
        if not self.population:
            values = values.unsqueeze(-1)
        means: list[dict[str, float] | None] = [None] * len(self.members)
        for i, m in self.active:
            mine = values[..., i].contiguous()
            bad = ~torch.isfinite(mine)
            if bad.any():
                row, col = (int(x) for x in torch.nonzero(bad)[0])
                self._stop(m, keys[col], mine[row, col].item(), step0 + row + 1)
                continue
            means[i] = dict(zip(keys, mine.mean(0).tolist(), strict=True))
        return means

    def _stop(self, m: Member, key: str, value: float, step: int) -> None:
        """Stop member ``m`` at ``step``, where its ``key`` became ``value``: for a run alone an
        error; a population's member is recorded as failed and the others go on."""
        self.members[0].checkpoints.wait()  # the last one may still be being written (a
        # population's are written by its first member's writer)
        kept = (
            f"the last good checkpoint is {m.run.checkpoint_file}"
            if m.run.checkpoint_file.exists()
            else "no checkpoint was written yet"
        )
        reason = (
            f"non-finite {key} ({value}) at step {step} (epoch {m.state.epoch + 1}); "
            f"training stopped and {kept}"
        )
        if not self.population or len(self.active) == 1:
            raise MicroError(f"{m.run.path.name}: {reason}" if self.population else reason)
        m.failed = reason
        m.run.record_failure(reason, step)
        print(f"{m.run.path.name}: {reason}; the other runs go on")

    def train(self) -> TrainResult:
        """Train to the end of the schedule; the run's result (``train_all`` for a
        population's)."""
        return self.train_all()[0]

    def train_all(self) -> list[TrainResult]:
        """Train every member to the end of the schedule (or until it fails); their results in
        order."""
        cfg = self.cfg
        for m in self.members:
            m.logger.start(m.state.epoch, m.state.step)
        bar = tqdm(
            total=cfg.epoch * cfg.step_per_epoch,
            initial=self.members[0].state.step,
            desc=self.agent.name.upper() + (f" x{len(self.members)}" if self.population else ""),
            unit="step",
            disable=bar_disable(self.progress),
        )
        t = self.timings
        try:
            self._loop(bar)
        except BaseException:
            for m in self.members:  # keep the last checkpoints whole; report the cause
                with contextlib.suppress(Exception):
                    m.checkpoints.wait()
            raise
        wait_start = time.time()
        for m in self.members:
            m.checkpoints.wait()
        t["checkpoints"] += time.time() - wait_start
        bar.close()
        results = []
        for i, m in enumerate(self.members):
            if m.failed is None:
                self._finish(i, m)
            else:
                m.logger.close()
            results.append(TrainResult(m.run.path, m.last_eval, dict(t), m.failed))
        return results

    def _finish(self, i: int, m: Member) -> None:
        """A member's files at the end of its schedule: policy.pt, timings.json (and the model
        it trained, for an algorithm that trains one)."""
        if self.agent.trains_model:  # dynamics/ stays the model the run started from
            self.dynamics.save(
                m.run.final_dynamics_dir,
                extra={
                    **read_dynamics_info(m.run.dynamics_dir),  # robot, task, data
                    "trained_by": self.agent.name,
                    "step": m.state.step,
                },
            )
        self.save_policy(m.run.policy_file, evaluated=True, i=i)
        m.logger.close()
        atomic_write_text(m.run.timings_file, json.dumps(self._timings_record()))

    def _timings_record(self) -> dict:
        """timings.json: wall seconds by stage; a population's are the whole process's, for
        all its runs together (``population``: how many)."""
        record: dict = {k: round(v, 1) for k, v in self.timings.items()}
        if self.population:
            record["population"] = len(self.members)
        return record

    def _loop(self, bar: tqdm) -> None:
        cfg, t = self.cfg, self.timings
        start_time = time.time()
        lead = self.members[0].state
        first_epoch = lead.epoch + 1
        bar.write(
            f"schedule: {cfg.epoch} epochs x {cfg.step_per_epoch} steps, from epoch {first_epoch}"
            + (f", {len(self.members)} runs together" if self.population else "")
        )
        if lead.step == 0:
            self._pretrain(bar)
        while self.active and self.active[0][1].state.epoch < cfg.epoch:
            epoch_start, outside = time.time(), self._outside_updates()
            before = dict(t)
            at_start = self.agent.epoch_metrics()  # e.g. the actor's learning rate
            all_means = self.train_population_epoch(bar)
            self.agent.end_epoch()
            for i, m in self.active:
                means = all_means[i]
                assert means is not None
                m.state.epoch += 1
                self._end_epoch(i, m, means, at_start, bar, start_time)
            epoch = self.active[0][1].state.epoch if self.active else cfg.epoch
            # the epoch's time not spent in rollouts or evaluation (updates and logging)
            t["updates"] += time.time() - epoch_start - (self._outside_updates() - outside)
            if epoch == first_epoch and epoch < cfg.epoch:
                bar.write(self._estimate(time.time() - epoch_start, before))
            if cfg.snapshot_freq and epoch % cfg.snapshot_freq == 0 and epoch < cfg.epoch:
                # before the checkpoint: a run killed in between redoes this epoch and rewrites it
                for i, m in self.active:
                    self.save_policy(m.run.snapshot_file(epoch), cfg.evaluates_at(epoch), i)
            if epoch % cfg.save_freq == 0 or epoch == cfg.epoch:
                save_start = time.time()
                self._save_checkpoints()
                t["checkpoints"] += time.time() - save_start

    def _end_epoch(
        self,
        i: int,
        m: Member,
        means: dict[str, float],
        at_start: dict[str, float],
        bar: tqdm,
        start_time: float,
    ) -> None:
        """Member ``m``'s logs at the end of an epoch, its evaluation and its snapshot."""
        cfg, state = self.cfg, m.state
        rollout = {k: v for k, v in state.rollout_info.items() if k != "transitions"}
        row = {
            "epoch": state.epoch,
            "step": state.step,
            **means,
            **at_start,
            **{f"rollout_{k}": v for k, v in rollout.items()},
            **{f"model_{k}": v for k, v in (state.model_info or {}).items()},
            "model_buffer_size": m.model_buffer.size,
        }
        m.logger.epoch_scalars({**means, **at_start}, rollout, state.step)
        if state.model_info:
            m.logger.scalars(state.model_info, state.step, "model/")
        evaluated = cfg.evaluates_at(state.epoch)
        if evaluated:
            m.last_eval = e = self.evaluate(i)
            state.last_eval = {"returns": e.returns.tolist(), "lengths": e.lengths.tolist()}
            row.update(
                eval_return=e.mean,
                eval_return_std=e.std,
                eval_normalized_score=e.normalized_mean,
                eval_normalized_score_std=e.normalized_std,
                eval_normalized_score_min=e.normalized_min,
                eval_normalized_score_max=e.normalized_max,
            )
            m.logger.eval_scalars(
                {
                    "return": e.mean,
                    "normalized_score": e.normalized_mean,
                    "normalized_score_min": e.normalized_min,
                    "normalized_score_max": e.normalized_max,
                },
                state.step,
            )
            m.logger.episode_rows(
                e.episode_rows(m.cfg.seed + EVAL_SEED_OFFSET), state.epoch, state.step
            )
            who = f"{m.run.path.name}: " if self.population else ""
            bar.write(
                f"{who}epoch {state.epoch}: return {e.mean:.1f} ± {e.std:.1f}, "
                f"normalized {e.normalized_mean:.1f}"
            )
        m.logger.csv_row(row)
        m.logger.time_scalar(time.time() - start_time, state.step)

    def _save_checkpoints(self) -> None:
        """Every training member's checkpoint, written in the background. A population's are
        staged and committed together once all are written (``commit_together``), so that a
        process killed meanwhile leaves them all at one epoch."""
        if not self.population:
            m = self._only
            m.state.timings = dict(self.timings)
            save_checkpoint(
                m.run.checkpoint_file,
                self.cfg.task,
                self.agent,
                m.model_buffer,
                m.state,
                m.checkpoints,  # written in the background; the copy is timed
                obs_std=self.obs_std,
            )
            return
        # One writer thread for the population (the first member's): every member's file, one
        # after another, then the commit. Host memory holds all the copies meanwhile.
        writer = self.members[0].checkpoints
        writer.wait()
        files, pending = [], []
        for i, m in self.active:
            m.state.timings = dict(self.timings)
            blob = checkpoint_blob(
                self.cfg.task,
                self.agent,
                m.model_buffer,
                m.state,
                self.obs_std,
                run=i,
                generator=m.generator,
            )
            files.append((m.run.staged_checkpoint_file, blob))
            pending.append((m.run.staged_checkpoint_file, m.run.checkpoint_file))
        writer.write_all(files, then=functools.partial(commit_together, pending))

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
        cfg, t = self.cfg, self.timings
        state = self.members[0].state
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

    def save_policy(self, path: Path, evaluated: bool, i: int = 0) -> None:
        """Member ``i``'s current policy as a policy file, with this epoch's score if it was
        evaluated."""
        m = self.members[i]
        e = m.last_eval if evaluated else None
        save_policy(
            path,
            config=m.cfg.to_dict(),
            actor=self.member_actor(i),
            critics=self.member_critics(i),
            obs_std=self.obs_std,
            sim=self.sim,
            step=m.state.step,
            normalized_score=None if e is None else e.normalized_mean,
        )

    def restore(self) -> None:
        """Continue from the run's checkpoint; a population's from its members' (brought to
        one epoch first: ``settle_together``)."""
        if not self.population:
            m = self._only
            m.state = load_checkpoint(
                m.run.checkpoint_file, self.cfg.task, self.agent, m.model_buffer
            )
            self._restored(m)
            print(f"resuming at epoch {m.state.epoch} (step {m.state.step})")
            return
        pairs = [(m.run.staged_checkpoint_file, m.run.checkpoint_file) for m in self.members]
        settle_together(pairs, self.cfg.task)
        if not self.members[0].run.checkpoint_file.exists():
            print("no checkpoint was written yet: the runs start again")
            return
        learners = []
        for m in self.members:
            assert m.generator is not None
            m.state, learner = load_run_checkpoint(
                m.run.checkpoint_file, self.cfg.task, m.model_buffer, m.generator
            )
            learners.append(learner)
            self._restored(m)
        try:
            self.agent.load_runs_training_state(learners)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise MicroError(f"the runs' checkpoints do not fit one population ({exc})") from None
        state = self.members[0].state
        print(f"resuming {len(self.members)} runs at epoch {state.epoch} (step {state.step})")

    def _restored(self, m: Member) -> None:
        m.state.rollout_info = m.state.rollout_info or {}
        if m.state.timings:  # the earlier sessions' time, the dynamics fit included
            self.timings.update(m.state.timings)
        if m.state.last_eval is not None:
            le = m.state.last_eval
            m.last_eval = EvalResult(np.asarray(le["returns"]), np.asarray(le["lengths"]), self.sim)


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
