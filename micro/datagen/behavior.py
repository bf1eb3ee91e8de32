"""Behavior policies the D4RL way: online SAC in the simulator, with evaluated snapshots.

    python -m micro.datagen.behavior --env hopper --steps 1000000 --out runs/behavior/hopper
    python -m micro.datagen.behavior pick RUN --target 44   # snapshots nearest a normalized score
    python -m micro.datagen.behavior export RUN/snapshots/step_N.pt --to data/behavior/NAME.pt
    python -m micro.datagen.behavior carry RUN --to FILE   # go on elsewhere: ... --carried FILE

SAC here is the project's own learner (``micro.algos.sac.SAC``) with the conservative parts switched
off: no model rows (real_ratio 1), no penalty, no target clamp, constant learning rates. The run
folder holds ``state.pt`` (everything needed to resume: run the same command again),
``snapshots/step_<N>.pt`` (actor + evaluated return, every ``--snapshot_every`` steps),
``replay/`` (every transition in order, the source of medium-replay datasets), ``evals.csv``
and ``tb/``. A run's folder is big (its replay log); ``carry`` saves what going on needs without
it, a few MB, and ``--carried`` starts a new folder from that with an empty buffer, refilled by
the policy for ``start_steps`` steps before updates resume: not the run the lost folder would
have made, but the same learner going on (its snapshots say where, ``carried_at``).
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micro import MicroError
from micro.algos.sac import SAC
from micro.buffer import Batch
from micro.config import Config
from micro.datagen.behavior_files import (
    load_snapshot,
    read_carry,
    read_replay,
    read_settings,
    save_snapshot,
    write_carry,
    write_replay_chunk,
    write_settings,
)
from micro.datagen.collect import uniform_policy
from micro.envs import OBS_ACT_DIMS, make_env
from micro.evaluation import EvalResult, run_episodes
from micro.nets import Actor
from micro.run_dir import RunDir
from micro.utils import (
    BEHAVIOR_EVAL_SEED_BASE,
    BEHAVIOR_EXPORT_SEED,
    EPISODE_SEED_STRIDE,
    atomic_torch_save,
    atomic_write_text,
    bar_disable,
    safe_torch_load,
    set_seed,
    sha256_file,
)


@dataclass(frozen=True)
class BehaviorSettings:
    env: str
    steps: int
    seed: int = 0
    start_steps: int = 5000  # uniform random actions before learning starts
    snapshot_every: int = 10_000
    save_every: int = 20_000
    eval_episodes: int = 5
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256


def sac_config(s: BehaviorSettings) -> Config:
    return Config(
        task=f"{s.env}-medium-v2",
        seed=s.seed,
        hidden_dims=s.hidden_dims,
        actor_lr=s.lr,
        critic_lr=s.lr,
        alpha_lr=s.lr,
        lr_scheduler=False,
        clamp_target=False,
        penalty_coef=0.0,
        real_ratio=1.0,
        batch_size=s.batch_size,
    )


class ReplayLog:
    """Every transition in order from step ``first`` (0, or where a carried run went on), in numpy
    (torch views for sampling); saved as append-only chunks named by step."""

    def __init__(
        self, capacity: int, obs_dim: int, act_dim: int, nq: int, nv: int, first: int = 0
    ) -> None:
        self.first = first
        self.arrays = {
            "qpos": np.zeros((capacity, nq), np.float64),
            "qvel": np.zeros((capacity, nv), np.float64),
            "observations": np.zeros((capacity, obs_dim), np.float32),
            "actions": np.zeros((capacity, act_dim), np.float32),
            "rewards": np.zeros((capacity, 1), np.float32),
            "next_observations": np.zeros((capacity, obs_dim), np.float32),
            "terminals": np.zeros((capacity, 1), np.float32),
            "timeouts": np.zeros((capacity, 1), np.float32),
            "action_log_probs": np.zeros((capacity, 1), np.float32),
        }
        self.views = {
            k: torch.from_numpy(v) for k, v in self.arrays.items() if v.dtype == np.float32
        }
        self.size = 0

    def add(self, **row) -> None:
        for key, value in row.items():
            self.arrays[key][self.size] = value
        self.size += 1

    def sample(self, n: int) -> Batch:
        idx = torch.randint(self.size, (n,))
        v = self.views
        return Batch(
            v["observations"][idx],
            v["actions"][idx],
            v["next_observations"][idx],
            v["rewards"][idx],
            v["terminals"][idx],
        )

    def save_chunk(self, folder: Path, start: int) -> None:
        """Steps ``start`` to the last one added."""
        write_replay_chunk(folder, start, self.first + self.size, self.arrays, self.first)

    def load_chunks(self, folder: Path, upto: int) -> None:
        """Steps ``first:upto`` from the saved chunks."""
        if upto > self.first:
            for key, values in read_replay(folder, upto, self.first).items():
                self.arrays[key][: upto - self.first] = values
        self.size = upto - self.first


def snapshot_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def reevaluate(snapshot: Path, episodes: int) -> tuple[Actor, dict, EvalResult]:
    """A snapshot's actor, metadata, and its score over ``episodes`` episodes of its stochastic
    policy (the actions datasets are collected with), seeded as ``export`` and ``pick`` do."""
    actor, meta = load_snapshot(snapshot)
    res = run_episodes(actor, meta["env"], episodes, BEHAVIOR_EXPORT_SEED, deterministic=False)
    return actor, meta, res


def export_policy(snapshot: Path, to: Path, episodes: int = 10, force: bool = False) -> dict:
    """Copy a snapshot to a shipped policy file, re-evaluated over ``episodes`` episodes of its
    stochastic policy (the actions datasets are collected with)."""
    if to.exists() and not force:
        raise MicroError(f"{to} exists; pass --force to replace it")
    actor, meta, res = reevaluate(snapshot, episodes)
    blob = {
        **meta,
        "actor": actor.state_dict(),
        "return_mean": res.mean,
        "return_std": res.std,
        "normalized_score": res.normalized_mean,
        "normalized_score_std": res.normalized_std,
        "eval_episodes": episodes,
        "source": f"{snapshot.parent.parent.name}/{snapshot.name}",
    }
    atomic_torch_save(blob, to)
    return {k: v for k, v in blob.items() if k != "actor"}


def _but_steps(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "steps"}


def train_behavior(
    s: BehaviorSettings, out: Path, progress: bool = True, carried: Path | None = None
) -> Path:
    """Online SAC for ``s.steps`` environment steps; resumes from ``out/state.pt`` if present.
    ``carried``: a new ``out`` goes on from a run's carried state (``carry_behavior``) with an
    empty buffer. One process at a time: a second on the same folder is refused
    (``writer.lock``, as a training run's)."""
    start = None
    if carried is not None and not (out / "state.pt").exists():
        start = _go_on_from(carried, _settings(s))  # read before a folder is made for it
    out.mkdir(parents=True, exist_ok=True)
    with RunDir(out).writer():
        return _train_behavior(s, out, progress, carried, start)


def _settings(s: BehaviorSettings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in s.__dict__.items()}


def carry_behavior(run: Path, to: Path, force: bool = False) -> dict:
    """A behavior run's state without its replay log (a few MB), for going on with it on a
    machine that does not have the run folder: ``train_behavior(..., carried=to)``. Returns the
    state's counters."""
    if to.exists() and not force:
        raise MicroError(f"{to} exists; pass --force to replace it")
    settings = read_settings(run)
    if settings is None or not (run / "state.pt").is_file():
        raise MicroError(f"{run} is not a behavior run with a saved state (no state.pt)")
    state = safe_torch_load(run / "state.pt", "behavior checkpoint")
    evals = _evals_upto(_text(run / "evals.csv"), state["step"])
    write_carry(to, settings, state, evals)
    last = [float(r["normalized_score"]) for r in csv.DictReader(evals.splitlines())][-1:]
    return {"step": state["step"], "wall_time_s": state["wall_time_s"], "last_normalized": last}


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _evals_upto(evals: str, step: int) -> str:
    """The text of ``evals.csv`` without the rows logged after ``step`` (a resumed run logs them
    again) and without a row cut short by a crash; "" when there is none."""
    header, *rows = evals.splitlines(keepends=True) or [""]
    if not header.startswith("step,") or not header.endswith("\n"):
        return ""

    def kept(row: str) -> bool:
        first = row.split(",", 1)[0]
        whole = row.endswith("\n") and row.count(",") == header.count(",")
        return whole and first.isdigit() and int(first) <= step

    return header + "".join(r for r in rows if kept(r))


def _go_on_from(carried: Path, settings: dict) -> dict:
    """The state a new run folder starts from: the carried run's, its buffer left behind."""
    blob = read_carry(carried)
    if _but_steps(blob["settings"]) != _but_steps(settings):
        raise MicroError(
            f"{carried} was carried from a run with other settings ({blob['settings']}); "
            "pass the same --env, --seed and schedule"
        )
    state = blob["state"]
    went_on = {"step": state["step"], "sha256": sha256_file(carried)}
    return {
        **state,
        "replay_from": state["step"],
        "carried_at": [*state.get("carried_at", []), went_on],
        "evals": blob["evals"],
    }


def _train_behavior(
    s: BehaviorSettings, out: Path, progress: bool, carried: Path | None, start: dict | None
) -> Path:
    """``start``: the carried state ``train_behavior`` read, for a folder without ``state.pt``."""
    obs_dim, act_dim = OBS_ACT_DIMS[s.env]
    settings = _settings(s)
    saved = read_settings(out)
    if saved is not None and _but_steps(saved) != _but_steps(settings):  # a run may grow
        raise MicroError(
            f"{out} holds a behavior run with other settings ({saved}); use another --out"
        )
    state_file = out / "state.pt"
    log_path = out / "evals.csv"
    state, went_on, evals = None, False, _text(log_path)
    if state_file.exists():
        state = safe_torch_load(state_file, "behavior checkpoint")
        if carried is not None and sha256_file(carried) not in {
            c["sha256"] for c in state.get("carried_at", [])
        }:
            raise MicroError(
                f"{out} holds a behavior run already; going on from {carried} starts a new "
                "one: pass another --out"
            )
    elif carried is not None:
        state = start if start is not None else _go_on_from(carried, settings)
        went_on, evals = True, state.pop("evals")  # the carried run's evaluations
    write_settings(out, settings)

    set_seed(s.seed)
    agent = SAC(sac_config(s), obs_dim, act_dim)
    env = make_env(s.env)
    model = env.unwrapped.model
    step, episode, wall, replay_from, carried_at = 0, 0, 0.0, 0, []
    if state is not None:
        agent.load_state_dict(state["agent"])
        agent.actor_optim.load_state_dict(state["actor_optim"])
        agent.critic_optim.load_state_dict(state["critic_optim"])
        agent.alpha_optim.load_state_dict(state["alpha_optim"])
        torch.set_rng_state(state["torch_rng"])
        step, episode, wall = state["step"], state["episode"], state["wall_time_s"]
        replay_from, carried_at = state.get("replay_from", 0), state.get("carried_at", [])
    replay = ReplayLog(
        max(s.steps - replay_from, 0), obs_dim, act_dim, model.nq, model.nv, replay_from
    )
    if state is not None:
        replay.load_chunks(out / "replay", step)
        last = replay.size - 1
        if last >= 0 and not (replay.arrays["terminals"][last] or replay.arrays["timeouts"][last]):
            replay.arrays["timeouts"][last] = 1.0  # the interrupted episode ends here
        how = f" from {carried}, with an empty buffer" if went_on else ""
        print(f"resuming {out} at step {step}{how}")
    evals = _evals_upto(evals, step)  # rows logged after the last save are logged again
    if evals:
        atomic_write_text(log_path, evals)
    else:
        log_path.unlink(missing_ok=True)
    if step >= s.steps:
        print(f"{out}: already trained for {step} steps")
        return out

    random_policy = uniform_policy(act_dim, s.seed + step)
    episode += 1
    obs, _ = env.reset(seed=s.seed * EPISODE_SEED_STRIDE + episode)
    last_saved = step
    new_log = not log_path.exists()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    t0 = time.time() - wall
    bar = tqdm(
        total=s.steps, initial=step, desc=f"SAC {s.env}", unit="step", disable=bar_disable(progress)
    )
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(
                ["step", "episodes", "return_mean", "return_std", "normalized_score", "wall_time_s"]
            )
        metrics = None
        while step < s.steps:
            if step < s.start_steps:
                actions, log_probs = random_policy(obs[None])
                action, log_prob = actions[0], float(log_probs[0])
            else:
                with torch.no_grad():
                    pi = agent.actor.sample(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
                action, log_prob = pi.action[0].numpy(), float(pi.log_prob[0])
            sim = env.unwrapped.data
            qpos, qvel = sim.qpos.copy(), sim.qvel.copy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            replay.add(
                qpos=qpos,
                qvel=qvel,
                observations=obs,
                actions=action,
                rewards=reward,
                next_observations=next_obs,
                terminals=float(terminated),
                timeouts=float(truncated and not terminated),
                action_log_probs=log_prob,
            )
            step += 1
            if replay.size >= s.start_steps:  # a carried run refills its buffer first
                metrics = agent.update(replay.sample(s.batch_size), s.batch_size)
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=s.seed * EPISODE_SEED_STRIDE + episode)
            else:
                obs = next_obs
            bar.update(1)
            if step % s.snapshot_every == 0 or step == s.steps:
                res = run_episodes(
                    agent.actor,
                    s.env,
                    s.eval_episodes,
                    BEHAVIOR_EVAL_SEED_BASE + step,
                    deterministic=False,
                )
                wall = time.time() - t0
                save_snapshot(
                    out / "snapshots" / snapshot_name(step),
                    agent.actor,
                    s.env,
                    s.hidden_dims,
                    s.seed,
                    step,
                    res.returns,
                    wall,
                    carried_at=[c["step"] for c in carried_at],
                )
                log.writerow(
                    [step, episode, res.mean, res.std, res.normalized_mean, round(wall, 1)]
                )
                log_file.flush()
                writer.add_scalar("eval/return", res.mean, step)
                writer.add_scalar("eval/normalized_score", res.normalized_mean, step)
                if metrics is not None:
                    for key in ("critic_loss", "actor_loss", "alpha", "q_mean"):
                        writer.add_scalar(f"train/{key}", float(metrics[key]), step)
                bar.write(
                    f"step {step}: return {res.mean:.0f} ± {res.std:.0f} "
                    f"(normalized {res.normalized_mean:.1f})"
                )
            if step % s.save_every == 0 or step == s.steps:
                replay.save_chunk(out / "replay", last_saved)
                last_saved = step
                atomic_torch_save(
                    {
                        "agent": agent.state_dict(),
                        "actor_optim": agent.actor_optim.state_dict(),
                        "critic_optim": agent.critic_optim.state_dict(),
                        "alpha_optim": agent.alpha_optim.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step,
                        "episode": episode,
                        "wall_time_s": time.time() - t0,
                        "replay_from": replay.first,
                        "carried_at": carried_at,
                    },
                    state_file,
                )
    bar.close()
    writer.close()
    env.close()
    return out


def pick_snapshots(run: Path, target: float, candidates: int = 3, episodes: int = 10) -> list[dict]:
    """Re-evaluate the ``candidates`` snapshots of ``run`` whose logged evaluation is nearest
    the normalized score ``target`` over ``episodes`` stochastic episodes (the seeds ``export``
    uses); returns them nearest the target first."""
    log = run / "evals.csv"
    if not log.is_file():
        raise MicroError(f"{run} is not a behavior run (no evals.csv)")
    with open(log, newline="") as fh:
        logged = {
            run / "snapshots" / snapshot_name(int(r["step"])): float(r["normalized_score"])
            for r in csv.DictReader(fh)
        }
    logged = {path: score for path, score in logged.items() if path.is_file()}
    if not logged:
        raise MicroError(f"{run} has no evaluated snapshots yet")
    nearest = sorted(logged, key=lambda path: abs(logged[path] - target))[:candidates]
    picked = []
    for path in nearest:
        _, meta, res = reevaluate(path, episodes)
        picked.append(
            {
                "snapshot": str(path),
                "step": meta["step"],
                "logged": logged[path],
                "normalized": res.normalized_mean,
                "normalized_std": res.normalized_std,
                "return_mean": res.mean,
                "return_std": res.std,
            }
        )
    return sorted(picked, key=lambda p: abs(p["normalized"] - target))


if __name__ == "__main__":  # the command line is micro.cli.behavior's
    from micro.cli.behavior import main

    sys.exit(main())
