"""The run directory: its layout, its state, its config, and which config keys make the
experiment. Every module that reads or writes a run's files finds them here.

    <logdir>/<task>/<algo>/seed<seed>-<YYYYmmdd-HHMMSS>/   a train.py run (never reused)
    <logdir>/<task>/<algo>/seed<seed>-<config hash>/        a sweep's run (sweep.py)

The formats of the files are each owned by one module: ``config.yaml`` by ``micro.config``,
``progress.csv`` and ``eval-episodes.csv`` by ``micro.logger``, the checkpoint by
``micro.checkpoint``, ``policy.pt`` and snapshots by ``micro.policy_file``, ``dynamics/`` by
``micro.dynamics``, ``sessions.jsonl`` by ``micro.provenance``.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from micro import MicroError

CONFIG_FILE = "config.yaml"
PROGRESS_FILE = "progress.csv"
EPISODES_FILE = "eval-episodes.csv"
POLICY_FILE = "policy.pt"
CHECKPOINT_FILE = "checkpoints/last.pt"
# a population's run: its next checkpoint, until every run's is written (micro.checkpoint)
STAGED_CHECKPOINT_FILE = "checkpoints/next.pt"
FAILED_FILE = "failed.json"  # a population's run stopped early: why, and at which step
DYNAMICS_DIR = "dynamics"  # the model the run started from (fitted, or a copy of one given)
FINAL_DYNAMICS_DIR = "dynamics-final"  # an algorithm that trains its model (RAMBO): the last one
TIMINGS_FILE = "timings.json"
SESSIONS_FILE = "sessions.jsonl"
TB_DIR = "tb"
SNAPSHOTS_DIR = "snapshots"
EVAL_DIR = "eval"  # what eval.py writes by default
WORKER_FILE = "worker.json"  # a sweep's run: the process (pid, host) that trains it
LOG_FILE = "train.log"  # a sweep's run: what it printed
LOCK_FILE = "writer.lock"  # held (flock) by the one process writing the run: its pid and host

# timings.json: wall seconds by stage, summed over every session of a run. "updates" is an
# epoch's time outside rollouts and evaluation (gradient steps and logging); an algorithm that
# trains its model adds "model_updates".
TIMED_STAGES = ("dynamics", "rollouts", "updates", "evaluation", "checkpoints")

# --- which config keys are the experiment ------------------------------------------------------
# Config keys that do not change what a run computes (snapshot_freq only adds files).
RUN_ONLY_KEYS = frozenset({"seed", "logdir", "device", "snapshot_freq", "cuda_graph"})
# Where a run's inputs are, not what they hold (the data's content is recorded as
# dataset_sha256, which counts).
INPUT_PATH_KEYS = frozenset({"dataset", "load_dynamics_path"})
# What config.yaml records about the data besides the config: all of it follows from
# dataset_sha256 (runs from before these keys were recorded group with later ones); and the
# SHA-256 of a --load_dynamics_path model (copied into the run's dynamics/), like the path
# itself not part of the experiment.
DATA_RECORD_KEYS = frozenset(
    {"dataset_file", "dataset_source", "dataset_id", "minari_version", "dataset_episodes", "sim"}
    | {"dataset_return_mean", "dynamics_sha256"}
)
# How a run was trained, not what: the runs it trained beside in one process (a population:
# ``micro.population``), recorded in config.yaml.
POPULATION_KEY = "population"
# Runs whose config.yaml differ only in these are seeds of one experiment.
NOT_EXPERIMENT_KEYS = RUN_ONLY_KEYS | INPUT_PATH_KEYS | DATA_RECORD_KEYS | {POPULATION_KEY}
# Config keys added after runs were first recorded (RAMBO's, 2026-12): every run before them
# computed what these keys at their defaults compute, so a key at its default counts as absent —
# older runs group with newer ones, and an existing sweep's folder names (config hashes) stay.
LATER_KEYS = frozenset(
    {"dynamics_update_freq", "adv_steps", "adv_lr", "adv_weight", "adv_batch_size"}
    | {"adv_include_entropy", "adv_std", "adv_shared_sl_batch", "bc_epochs", "bc_batch_size"}
)


def without_later_defaults(config: dict) -> dict:
    """``config`` less the ``LATER_KEYS`` that hold their default value."""
    from micro.config import Config

    defaults = Config().to_dict()
    return {k: v for k, v in config.items() if not (k in LATER_KEYS and v == defaults[k])}


def experiment(config: dict) -> dict:
    """The part of a run's config.yaml that defines what it computes; ``algo`` filled in for
    runs from before it was recorded (they are MICRO runs)."""
    kept = {k: v for k, v in without_later_defaults(config).items() if k not in NOT_EXPERIMENT_KEYS}
    return {**kept, "algo": config.get("algo", "micro")}


class RunState(enum.Enum):
    NEW = "new"  # absent or empty: a run may start there
    PARTIAL = "partial"  # started (config.yaml), not finished: resumable
    FINISHED = "finished"  # policy.pt written


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    # --- layout --------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def progress_file(self) -> Path:
        return self.path / PROGRESS_FILE

    @property
    def episodes_file(self) -> Path:
        return self.path / EPISODES_FILE

    @property
    def policy_file(self) -> Path:
        return self.path / POLICY_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def staged_checkpoint_file(self) -> Path:
        return self.path / STAGED_CHECKPOINT_FILE

    @property
    def failed_file(self) -> Path:
        return self.path / FAILED_FILE

    def record_failure(self, reason: str, step: int) -> None:
        """Mark a population's run as stopped early (``failed.json``)."""
        from micro.utils import atomic_write_text  # (torch: not for readers of run folders)

        record = {
            "step": step,
            "reason": reason,
            "time": datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(self.failed_file, json.dumps(record, indent=2))

    def failure(self) -> dict | None:
        """What ``record_failure`` wrote, or None."""
        if not self.failed_file.exists():
            return None
        return json.loads(self.failed_file.read_text())

    @property
    def dynamics_dir(self) -> Path:
        return self.path / DYNAMICS_DIR

    @property
    def final_dynamics_dir(self) -> Path:
        return self.path / FINAL_DYNAMICS_DIR

    @property
    def timings_file(self) -> Path:
        return self.path / TIMINGS_FILE

    @property
    def sessions_file(self) -> Path:
        return self.path / SESSIONS_FILE

    @property
    def tb_dir(self) -> Path:
        return self.path / TB_DIR

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOTS_DIR

    def snapshot_file(self, epoch: int) -> Path:
        """The policy of an earlier epoch (``--snapshot_freq``, or exported from the
        checkpoint by ``python -m micro.results export``)."""
        return self.snapshots_dir / f"epoch{epoch}.pt"

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def worker_file(self) -> Path:
        return self.path / WORKER_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    # --- one writer ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator[RunDir]:
        """Hold the run's lock while writing it: a second process that tries (a second
        ``--resume``, a sweep's retry racing a slow worker) is refused with the holder's pid
        and host. An advisory ``flock`` on ``writer.lock``, released by the OS when the holder
        dies, so a killed run stays resumable."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MicroError(f"cannot write in {self.path} ({exc.strerror})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MicroError(f"{self.path} is in use: {self._holder(fd)}") from None
            holder = {"pid": os.getpid(), "host": socket.gethostname()}
            holder["since"] = datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
            yield self
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            h = json.loads(os.pread(fd, 4096, 0))
            who = f"pid {h['pid']} on {h['host']} writes it (since {h['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process writes it"
        return f"{who}; wait for it to end, or stop it, before writing to it"

    # --- state ---------------------------------------------------------------------------------
    def state(self) -> RunState:
        """finished (policy.pt) | partial (config.yaml: a run was started) | new (absent or
        empty); a folder holding other files is refused rather than taken over."""
        if self.policy_file.exists():
            return RunState.FINISHED
        if self.config_file.exists():
            return RunState.PARTIAL
        if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
            raise MicroError(f"{self.path} holds files but no {CONFIG_FILE}; move it away to rerun")
        return RunState.NEW

    @property
    def finished(self) -> bool:
        return self.policy_file.exists()

    def has_logs(self) -> bool:
        """A run that has logged: what reports read (config.yaml and progress.csv)."""
        return self.config_file.is_file() and self.progress_file.is_file()

    def epochs_done(self) -> int:
        """Epochs the run has logged (rows of its progress.csv)."""
        try:
            with open(self.progress_file, newline="") as fh:
                return sum(1 for _ in csv.DictReader(fh))
        except OSError:
            return 0

    def read_config(self) -> dict:
        """config.yaml as saved: the resolved config plus what the run recorded of its data."""
        if not self.config_file.is_file():
            raise MicroError(f"{self.path} is not a run directory (no {CONFIG_FILE})")
        try:
            config = yaml.safe_load(self.config_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MicroError(f"cannot read {self.config_file}: {exc}".splitlines()[0]) from None
        if not isinstance(config, dict) or "task" not in config or "seed" not in config:
            raise MicroError(f"{self.config_file} is not a run's config")
        return config

    # --- making one ----------------------------------------------------------------------------
    @classmethod
    def create(cls, logdir: str | Path, task: str, algo: str, seed: int) -> RunDir:
        """A new, unique ``<logdir>/<task>/<algo>/seed<seed>-<timestamp>`` folder."""
        parent = Path(logdir).expanduser() / task / algo  # Minari ids nest folders
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(1000):
                name = f"seed{seed}-{stamp}" + (f"-{attempt}" if attempt else "")
                try:
                    (parent / name).mkdir()
                    return cls(parent / name)
                except FileExistsError:
                    continue
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MicroError(
                f"cannot create the run directory under {parent} ({reason}); pass --logdir DIR"
            ) from None
        raise MicroError(f"could not create a new run directory under {parent}")

    @classmethod
    def claim(cls, path: str | Path) -> RunDir:
        """``path`` as a new run directory: created, or taken over only if it is empty."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MicroError(f"cannot create the run directory {path} ({exc.strerror})") from None
        if any(p.name != LOCK_FILE for p in path.iterdir()):
            raise MicroError(f"{path} is not empty; a new run needs a new folder")
        return cls(path)


def find_run_dirs(paths: Sequence[str | Path]) -> Iterator[RunDir]:
    """Every run below ``paths`` that has logged (config.yaml and progress.csv), each once,
    named as found from the path given (relative paths stay relative)."""
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise MicroError(f"{p} does not exist")
        candidates = [RunDir(p)] if (p / CONFIG_FILE).is_file() else []
        candidates += [RunDir(c.parent) for c in sorted(p.glob(f"**/{PROGRESS_FILE}"))]
        for run in candidates:
            key = run.path.resolve()
            if run.has_logs() and key not in seen:
                seen.add(key)
                yield run
