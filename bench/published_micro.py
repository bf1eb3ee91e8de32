"""The published MICRO trainer, made to survive a lost machine: ``ref_micro_train.py`` (the shared
script that runs the published training pipeline on a local D4RL-format file, imported from
../shared/bench, not copied) run with the trainer's whole state saved at every epoch boundary, so
that the same command continues a killed run where it stopped.

    python bench/published_micro.py --ref /tmp/ref-micro --task halfcheetah-medium-v2 \\
        --dataset data/halfcheetah-medium-200k.hdf5 --seed 0 --out runs/published/hc-s0 \\
        --set epoch=200
    # killed? the same command again continues from OUT/resume.pt

Every argument is the script's. The published code has no resume, so nothing of it is changed:
hooks around its objects, installed as its modules load, do the work.

- At the start of every epoch (the trainer calls ``policy.train()`` there) the state after the
  last one goes to ``OUT/resume.pt``, atomically: actor, critics and their targets, the three
  optimizers and the temperature, the learning-rate schedule, the fitted dynamics and its
  scaler, the model buffer, the torch, NumPy and Python random states and the evaluation
  simulator's, the logger's running means, and the log folder.
- A continued session builds everything as a fresh one does, loads the dynamics instead of
  fitting them, restores that state when training starts, and runs the epoch loop from the next
  epoch (the trainer's ``range`` starts there; its step counter, which sets the log's
  ``timestep``, is offset to match). Rows the log gained after the checkpoint are dropped first.
  On the same machine and thread count the continued run computes what the uninterrupted one
  does, to the bit (checked with ``--stop_after_epoch`` on a short schedule: the final
  ``policy.pth`` and the log's rows equal the uninterrupted run's).
- ``--stop_after_epoch N`` ends the session once epoch N's state is saved (a run cut into
  session-sized pieces).
- ``OUT/sessions.json`` lists each session: epochs, wall seconds (the dynamics fit and the epoch
  loop apart), CPU and threads, rewritten at every save, so a killed session keeps the epochs it
  saved; ``python -m micro.results import-published`` reads it with the published log.

Requires the trainer's rollouts to start on epoch boundaries (``step_per_epoch`` a multiple of
``rollout_freq``; the published configs use 1000 and 1000).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import random
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from micro.provenance import cpu_model

SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "ref_micro_train.py"
STATE_FILE = "resume.pt"
BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "terminals")
SESSIONS_FILE = "sessions.json"
FINISHED_FILE = "finished.json"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--out", required=True)
    p.add_argument("--script", default=str(SCRIPT), help="ref_micro_train.py to run")
    p.add_argument("--stop_after_epoch", type=int, help="end the session after this epoch")
    return p.parse_known_args(argv)


class Resumable:
    """The hooks, and the state they save and restore."""

    def __init__(self, out: Path, stop_after: int | None = None, argv: list[str] | None = None):
        self.out = out.resolve()
        self.stop_after = stop_after
        self.state_path = self.out / STATE_FILE
        self.saved = (
            torch.load(self.state_path, weights_only=False) if self.state_path.is_file() else None
        )
        self.log_dir: str | None = self.saved["log_dir"] if self.saved else None
        self.session = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": argv or [],
            "ref_commit": None,
            "from_epoch": (self.saved["epoch"] + 1) if self.saved else 1,
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "device": None,
            "dynamics_seconds": 0.0,
            "loop_seconds": 0.0,
        }
        self.t_loop = None
        self.session_index: int | None = None  # its place in sessions.json, once written

    # ---- log folder ----
    def make_log_dirs(self, original):
        def hooked(*args, **kwargs):
            if self.log_dir is None:
                self.log_dir = original(*args, **kwargs)
                return self.log_dir
            self._trim_log()
            return self.log_dir

        return hooked

    def _trim_log(self) -> None:
        """Drop the rows logged after the checkpoint (a run killed between them)."""
        step = self.saved["epoch"] * self.saved["step_per_epoch"]
        path = self.out / self.log_dir / "record" / "policy_training_progress.csv"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        if not lines:
            return
        column = lines[0].split(",").index("timestep")
        keep = [lines[0], *(r for r in lines[1:] if int(float(r.split(",")[column])) <= step)]
        path.write_text("\n".join(keep) + "\n")

    # ---- dynamics ----
    def dynamics_train(self, original):
        def hooked(dynamics, *args, **kwargs):
            if self.saved is not None:  # fitted in the first session: load it
                dynamics.model.load_state_dict(self.saved["dynamics"])
                dynamics.scaler.mu, dynamics.scaler.std = self.saved["scaler"]
                return None
            t0 = time.perf_counter()
            result = original(dynamics, *args, **kwargs)
            self.session["dynamics_seconds"] = time.perf_counter() - t0
            return result

        return hooked

    # ---- the epoch loop ----
    def trainer_train(self, original, module):
        def hooked(trainer):
            if trainer._step_per_epoch % trainer._rollout_freq:
                raise SystemExit(
                    "error: step_per_epoch must be a multiple of rollout_freq for a resumable run"
                )
            device = next(trainer.policy.actor.parameters()).device
            self.session["device"] = str(device)
            if device.type == "cuda":
                self.session["gpu"] = torch.cuda.get_device_name(device)
            start = 1
            if self.saved is not None:
                self.restore(trainer, self.saved)
                start = self.saved["epoch"] + 1
                offset = self.saved["epoch"] * trainer._step_per_epoch
                set_timestep = trainer.logger.set_timestep
                trainer.logger.set_timestep = lambda t: set_timestep(t + offset)
            builtin_range = range

            def epochs(*args):  # the epoch loop is the trainer's only two-argument range
                if len(args) == 2 and args == (1, trainer._epoch + 1):
                    return builtin_range(start, trainer._epoch + 1)
                return builtin_range(*args)

            module.range = epochs
            policy_train = trainer.policy.train
            calls = {"n": 0}

            def at_epoch_start():
                epoch_done = start - 1 + calls["n"]
                if calls["n"] > 0:  # the state after epoch ``epoch_done``
                    self.save(trainer, epoch_done)
                    if epoch_done == self.stop_after:
                        raise _Stop(epoch_done)
                calls["n"] += 1
                return policy_train()

            trainer.policy.train = at_epoch_start
            self.t_loop = time.perf_counter()
            try:
                result = original(trainer)
            finally:
                del module.range
            self.record_progress(trainer._epoch)
            (self.out / FINISHED_FILE).write_text(
                json.dumps({"epochs": trainer._epoch, "log_dir": self.log_dir}) + "\n"
            )
            return result

        return hooked

    # ---- state ----
    @staticmethod
    def _env(trainer):
        return trainer.eval_env._env.unwrapped

    def save(self, trainer, epoch: int) -> None:
        policy, buf = trainer.policy, trainer.fake_buffer
        n = buf._size
        state = {
            "epoch": epoch,
            "step_per_epoch": trainer._step_per_epoch,
            "log_dir": self.log_dir,
            "policy": policy.state_dict(),
            "actor_optim": policy.actor_optim.state_dict(),
            "critics_optim": policy.critics_optim.state_dict(),
            "alpha": (
                (policy._log_alpha.detach().clone(), policy.alpha_optim.state_dict())
                if policy._is_auto_alpha
                else None
            ),
            "alpha_value": policy._alpha,
            "lr_scheduler": trainer.lr_scheduler.state_dict() if trainer.lr_scheduler else None,
            "dynamics": policy.dynamics.model.state_dict(),
            "scaler": (policy.dynamics.scaler.mu, policy.dynamics.scaler.std),
            "fake_buffer": {
                "ptr": buf._ptr,
                "size": n,
                **{
                    k: getattr(buf, k)[:n].copy()
                    for k in (
                        "observations",
                        "next_observations",
                        "actions",
                        "rewards",
                        "terminals",
                    )
                },
            },
            "logger": (dict(trainer.logger._name2val), dict(trainer.logger._name2cnt)),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "env": self._env(trainer).np_random.bit_generator.state,
                "action_space": trainer.eval_env.action_space.np_random.bit_generator.state,
                "pending_seed": trainer.eval_env._seed,  # seeds the next reset, until one ran
            },
        }
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        self.record_progress(epoch)

    def record_progress(self, epoch: int) -> None:
        """This session's record, as of the state after ``epoch``: written at every save, so a
        session that is killed keeps the epochs it saved (the epoch it was in is redone, and not
        counted, by the next)."""
        self.session["to_epoch"] = epoch
        self.session["loop_seconds"] = time.perf_counter() - self.t_loop
        self.write_session()

    def restore(self, trainer, s: dict) -> None:
        policy, buf = trainer.policy, trainer.fake_buffer
        policy.load_state_dict(s["policy"])
        policy.actor_optim.load_state_dict(s["actor_optim"])
        policy.critics_optim.load_state_dict(s["critics_optim"])
        if s["alpha"] is not None:
            log_alpha, optim = s["alpha"]
            with torch.no_grad():
                policy._log_alpha.copy_(log_alpha)
            policy.alpha_optim.load_state_dict(optim)
        policy._alpha = s["alpha_value"]
        if trainer.lr_scheduler is not None:
            trainer.lr_scheduler.load_state_dict(s["lr_scheduler"])
        fb = s["fake_buffer"]
        for k in BUFFER_KEYS:
            getattr(buf, k)[: fb["size"]] = fb[k]
        buf._ptr, buf._size = fb["ptr"], fb["size"]
        name2val, name2cnt = s["logger"]
        trainer.logger._name2val.update(name2val)
        trainer.logger._name2cnt.update(name2cnt)
        rng = s["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        env = self._env(trainer)
        env.np_random.bit_generator.state = rng["env"]
        trainer.eval_env.action_space.np_random.bit_generator.state = rng["action_space"]
        trainer.eval_env._seed = rng["pending_seed"]

    def write_session(self) -> None:
        path = self.out / SESSIONS_FILE
        sessions = json.loads(path.read_text()) if path.is_file() else []
        if self.session_index is None:  # this session's first record
            self.session_index = len(sessions)
            sessions.append({})
        record = {**self.session, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        sessions[self.session_index] = record
        tmp = path.with_name(SESSIONS_FILE + ".tmp")
        tmp.write_text(json.dumps(sessions, indent=1) + "\n")
        os.replace(tmp, path)


class _ExistingDirsOk:
    """``os`` for the published logger of a continued run, whose folders exist."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def mkdir(path, mode=0o777):
        os.makedirs(path, mode, exist_ok=True)


class _Stop(Exception):
    """Ends a session on purpose, its state saved."""


class _Hooks(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps the published modules' functions as they are imported."""

    def __init__(self, resumable: Resumable):
        self.r = resumable
        self.targets = {"utils.logger", "utils.policy_trainer", "dynamics.ensemble_dynamics"}

    def find_spec(self, name, path, target=None):
        if name not in self.targets:
            return None
        self.targets.discard(name)  # find the real spec without ourselves
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.targets.add(name)
        if spec is None:
            return None
        spec.loader = _Wrapped(spec.loader, self.r)
        return spec


class _Wrapped(importlib.abc.Loader):
    def __init__(self, loader, r: Resumable):
        self.loader, self.r = loader, r

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        r = self.r
        if module.__name__ == "utils.logger":
            module.make_log_dirs = r.make_log_dirs(module.make_log_dirs)
            if r.saved is not None:  # the Logger makes its folders anew: they exist
                module.os = _ExistingDirsOk()
        elif module.__name__ == "utils.policy_trainer":
            cls = module.PolicyTrainer
            cls.train = r.trainer_train(cls.train, module)
        else:
            cls = module.EnsembleDynamics
            cls.train = r.dynamics_train(cls.train)


def _commit_of(ref: Path) -> str | None:
    """The published code's commit: ``git archive`` writes it into the tar's header, not the
    files, so it is read from a clone when ``ref`` is one, else from REF_COMMIT in the
    environment (None when neither says)."""
    head = ref / ".git" / "HEAD"
    if head.is_file():
        text = head.read_text().strip()
        if text.startswith("ref: "):
            target = ref / ".git" / text[5:]
            return target.read_text().strip() if target.is_file() else None
        return text
    return os.environ.get("REF_COMMIT")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a, rest = parse(argv)
    out = Path(a.out)
    if (out / FINISHED_FILE).is_file():
        print(f"error: {out} has finished ({FINISHED_FILE}); choose another --out", file=sys.stderr)
        return 1
    resumable = Resumable(out, a.stop_after_epoch, argv)
    ref = rest[rest.index("--ref") + 1] if "--ref" in rest else "/tmp/ref-micro"
    resumable.session["ref_commit"] = _commit_of(Path(ref))
    if resumable.saved is not None:
        print(f"continuing {out} after epoch {resumable.saved['epoch']}", flush=True)
    sys.meta_path.insert(0, _Hooks(resumable))
    sys.argv = [a.script, *rest, "--out", str(out)]
    try:
        runpy.run_path(a.script, run_name="__main__")
    except _Stop as stop:
        print(f"stopped after epoch {stop.args[0]}: the same command continues", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
