"""The training checkpoint (``checkpoints/last.pt``): everything a killed run needs to continue
exactly as an uninterrupted one would. Written and read here only.

It holds the algorithm's training state whatever the algorithm (``Algorithm.training_state``:
its networks, optimizers and schedulers by name), the model buffer, every RNG state (torch,
CUDA, numpy, Python), the counters and the wall time spent so far by stage (older checkpoints
lack the last; a run resumed from one counts from the resume). A frozen dynamics model is not in
it: it lives in the run's ``dynamics/`` folder (``micro.dynamics``); an algorithm that trains
its model has it, and its optimizer, in its training state.

Format ``micro-checkpoint-v2`` holds that training state under ``learner``;
``micro-checkpoint-v1`` (the SAC learner's weights under ``agent`` and its optimizers and
scheduler under fixed keys) still loads.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from micro import MicroError
from micro.buffer import ReplayBuffer
from micro.utils import atomic_torch_save, safe_torch_load

if TYPE_CHECKING:
    from micro.algos.base import Algorithm

CHECKPOINT_FORMAT = "micro-checkpoint-v2"
READABLE_FORMATS = ("micro-checkpoint-v1", CHECKPOINT_FORMAT)


@dataclass
class Progress:
    """The counters and small state a checkpoint carries besides networks and buffers."""

    epoch: int = 0
    step: int = 0
    last_eval: dict[str, list] | None = None  # {"returns": [...], "lengths": [...]}
    rollout_info: dict[str, float] | None = None
    model_info: dict[str, float] | None = None  # the last model update's (algorithms that train it)
    timings: dict[str, float] | None = None  # wall seconds by stage, summed over all sessions


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG's state; with ``generator`` (a population's run's, drawing on the training
    device) in the place of the global generator of its device, so that the run continues
    alone from its checkpoint with the stream it had."""
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    cpu = torch.get_rng_state()
    if generator is not None and generator.device.type == "cpu":
        cpu = generator.get_state()
    elif generator is not None:  # CUDA: the run's stream, as the state of its device
        cuda = list(cuda)
        cuda[generator.device.index or 0] = generator.get_state()
    return {
        "torch": cpu,
        "cuda": cuda,
        # numpy's state as tensors and primitives, so the file loads with weights_only
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_generator(generator: torch.Generator, rng: dict[str, Any]) -> None:
    """Set a population run's generator from its checkpoint's ``rng`` (``rng_state``)."""
    if generator.device.type == "cpu":
        generator.set_state(rng["torch"])
    else:
        generator.set_state(rng["cuda"][generator.device.index or 0])


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))


def _host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory: a snapshot that later in-place updates
    (optimizer steps, rollouts into the buffer) cannot reach."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on a background thread, so training goes on while the file (the model
    buffer alone is ~200 MB at SPEC's sizes) is written and fsynced; the loop pays only for the
    copy to host memory. One write at a time: a new one first waits for the last. ``wait``
    re-raises a failed write's error in the training thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, path: Path, blob: dict[str, Any]) -> None:
        self.write_all([(path, blob)])

    def write_all(
        self, files: list[tuple[Path, dict[str, Any]]], then: Callable[[], None] | None = None
    ) -> None:
        """Write ``files`` one after another, then call ``then`` (if all were written)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(files, then), name="checkpoint")
        self._thread.start()

    def _run(
        self, files: list[tuple[Path, dict[str, Any]]], then: Callable[[], None] | None
    ) -> None:
        try:
            for path, blob in files:
                atomic_torch_save(blob, path)
            if then is not None:
                then()
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def save_checkpoint(
    path: Path,
    task: str,
    agent: Algorithm,
    model_buffer: ReplayBuffer,
    progress: Progress,
    writer: CheckpointWriter | None = None,
    obs_std: torch.Tensor | None = None,
) -> None:
    """Write the checkpoint (atomically: the old one stays until the new one is complete); with
    ``writer``, in the background from a snapshot taken now. ``obs_std``, the data's observation
    std that policy files carry, lets a policy be exported from it without the data."""
    blob = checkpoint_blob(task, agent, model_buffer, progress, obs_std)
    if writer is None:
        atomic_torch_save(blob, path)
    else:
        writer.write(path, blob)


def checkpoint_blob(
    task: str,
    agent: Algorithm,
    model_buffer: ReplayBuffer,
    progress: Progress,
    obs_std: torch.Tensor | None = None,
    run: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """What ``save_checkpoint`` writes, copied to host memory now. For run ``run`` of a
    population ``agent``: an ordinary checkpoint of that run alone, the random stream its
    ``generator``'s."""
    buf = model_buffer
    learner = agent.training_state() if run is None else agent.run_training_state(run)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "epoch": progress.epoch,
        "step": progress.step,
        "learner": learner,
        "model_buffer": {
            "ptr": buf.ptr,
            "size": buf.size,
            **{k: v[: buf.size] for k, v in buf.named_tensors().items()},
        },
        "rng": rng_state(generator),
        "last_eval": progress.last_eval,
        "rollout_info": dict(progress.rollout_info or {}),
        "model_info": progress.model_info,
        "timings": dict(progress.timings or {}),
        "obs_std": obs_std,
    }
    return _host_copy(blob)


def commit_together(pending: list[tuple[Path, Path]]) -> None:
    """Replace each ``final`` by its ``staged`` file, after all were written: a population's
    runs each write their checkpoint to ``staged`` first, so that a process killed while they
    are written leaves every run's ``final`` at the same epoch (``settle_together`` finishes a
    commit that was cut short)."""
    for staged, final in pending:
        staged.replace(final)


def settle_together(pairs: list[tuple[Path, Path]], task: str) -> None:
    """Before a population resumes: bring every run's checkpoint (``final``) to one epoch.
    Staged files (``staged``) of an epoch that every run reached are committed; otherwise they
    are removed, which leaves the epoch before. ``MicroError`` if the runs still differ."""

    def epoch(path: Path) -> int | None:
        return _read(path, task, mmap=True)["epoch"] if path.exists() else None

    finals = [epoch(final) for _, final in pairs]
    staged = [epoch(s) for s, _ in pairs]
    newest = max((e for e in finals + staged if e is not None), default=None)
    if newest is not None and all(newest in (f, s) for f, s in zip(finals, staged, strict=True)):
        for (s_path, final), f, s in zip(pairs, finals, staged, strict=True):
            if s == newest and f != newest:
                s_path.replace(final)
    for s_path, _ in pairs:
        s_path.unlink(missing_ok=True)
    finals = [epoch(final) for _, final in pairs]
    if len(set(finals)) > 1:
        named = zip(pairs, finals, strict=True)
        shown = ", ".join(f"{final.parents[1].name} at {e}" for (_, final), e in named)
        raise MicroError(
            f"the population's checkpoints are at different epochs ({shown}); resume its runs "
            "one by one (train.py --resume RUN_DIR)"
        )


def _read(path: Path, task: str, mmap: bool = False) -> dict[str, Any]:
    blob = safe_torch_load(path, "checkpoint", mmap=mmap)
    if blob.get("format") not in READABLE_FORMATS or blob.get("task") != task:
        raise MicroError(f"{path} is not a checkpoint of this {task} run")
    if blob["format"] == "micro-checkpoint-v1":  # SAC's parts under fixed keys
        optims = {"critic": "critic_optim", "actor": "actor_optim", "alpha": "alpha_optim"}
        blob["learner"] = {
            "networks": blob.pop("agent"),
            "optimizers": {k: blob[v] for k, v in optims.items() if blob[v] is not None},
            "schedulers": {"actor": blob["actor_scheduler"]}
            if blob["actor_scheduler"] is not None
            else {},
        }
    return blob


def load_checkpoint(
    path: Path, task: str, agent: Algorithm, model_buffer: ReplayBuffer
) -> Progress:
    """Restore ``agent``, ``model_buffer`` and the RNGs in place; return the counters."""
    blob = _read(path, task)
    try:
        agent.load_training_state(blob["learner"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise MicroError(f"{path} does not match this run's learner ({exc})") from None
    _fill_buffer(model_buffer, blob["model_buffer"])
    restore_rng(blob["rng"])
    return _progress(blob)


def load_run_checkpoint(
    path: Path, task: str, model_buffer: ReplayBuffer, generator: torch.Generator
) -> tuple[Progress, dict[str, Any]]:
    """For one run of a population: restore ``model_buffer`` and the run's ``generator`` in
    place; return the counters and the learner's training state (``Algorithm.training_state``),
    which the population takes with its other runs' (``load_runs_training_state``)."""
    blob = _read(path, task)
    _fill_buffer(model_buffer, blob["model_buffer"])
    restore_generator(generator, blob["rng"])
    return _progress(blob), blob["learner"]


def _fill_buffer(model_buffer: ReplayBuffer, saved: dict[str, Any]) -> None:
    for key, store in model_buffer.named_tensors().items():
        store[: saved["size"]] = saved[key].to(store.device)
    model_buffer.ptr, model_buffer.size = saved["ptr"], saved["size"]


def read_learner(
    path: Path, task: str
) -> tuple[Progress, dict[str, torch.Tensor], torch.Tensor | None]:
    """The counters, the learner's weights (``Algorithm.state_dict()`` keys) and the data's
    observation std (None in checkpoints from before it was saved) of a checkpoint, without
    building a learner: what exporting a policy from it needs."""
    blob = _read(path, task)
    return _progress(blob), blob["learner"]["networks"], blob.get("obs_std")


def _progress(blob: dict) -> Progress:
    # "timings" is absent from checkpoints written before it was added
    return Progress(
        blob["epoch"],
        blob["step"],
        blob["last_eval"],
        blob["rollout_info"],
        blob.get("model_info"),
        blob.get("timings"),
    )
