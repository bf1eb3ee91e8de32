"""The data a run learns from, whatever its source, and the one place a source is chosen.

A task's source follows from its name (``micro.envs.parse_task``): a D4RL name reads a
D4RL-format HDF5 file (``micro.data.d4rl``), a Minari id reads a Minari dataset
(``micro.data.minari_data``). Both give ``TaskData``: transitions, the simulator to evaluate on,
and what ``config.yaml`` records about the data. A new source adds a module and a branch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from micro import MicroError
from micro.envs import SimSpec, Task


@dataclass
class Transitions:
    """Transitions ready for learning (float32; ``terminals`` is 0/1 with shape [N, 1])."""

    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray

    def __len__(self) -> int:
        return len(self.observations)


@dataclass
class TaskData:
    """A task's transitions, the simulator to evaluate on, and what config.yaml records about
    the data (source, file, content hash, counts)."""

    transitions: Transitions
    sim: SimSpec
    record: dict[str, Any]


def load_task_data(task: Task, dataset: str | None) -> TaskData:
    """The task's data: ``dataset`` (a file or folder) when given, else the source's own store,
    downloading when absent."""
    if task.source == "minari":
        from micro.data import minari_data

        return minari_data.load(minari_data.task_dataset_path(task, dataset), task)
    from micro.data import d4rl

    return d4rl.load(d4rl.task_dataset_path(task, dataset), task)


def reload_task_data(task: Task, record: dict[str, Any]) -> TaskData:
    """The data a run recorded in its config.yaml, refused if it changed since (for resume)."""
    path = Path(record["dataset_file"])
    if not path.exists():
        raise MicroError(f"the run's dataset {path} is missing; restore it to resume")
    data = load_task_data(task, str(path))
    if data.record["dataset_sha256"] != record["dataset_sha256"]:
        raise MicroError(
            f"the run's dataset {path} has changed since the run started; cannot resume"
        )
    return data
