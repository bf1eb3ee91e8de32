"""The one place a task's data source is chosen: a registry from ``Task.source`` (which follows
from the task's name, ``micro.envs.parse_task``) to the module that reads it.

A D4RL name reads a D4RL-format HDF5 file (``micro.data.d4rl``), a Minari id a Minari dataset
(``micro.data.minari_data``). Each gives ``TaskData`` (``micro.data.types``) through two
functions: ``task_dataset_path(task, dataset)`` (the file or folder to read: ``--dataset`` when
given, else the source's own store, downloading when absent) and ``load(path, task)``. A new
source is a module with those two functions and one entry in ``SOURCES``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from micro import MicroError
from micro.data import d4rl, minari_data
from micro.data.types import TaskData
from micro.envs import Task

SOURCES: dict[str, ModuleType] = {"d4rl": d4rl, "minari": minari_data}
MIN_TRANSITIONS = 10  # the dynamics fit holds out a fifth of them


def load_task_data(task: Task, dataset: str | None) -> TaskData:
    """The task's data: ``dataset`` (a file or folder) when given, else the source's own store,
    downloading when absent."""
    source = SOURCES[task.source]
    path = source.task_dataset_path(task, dataset)
    data = source.load(path, task)
    if len(data.transitions) < MIN_TRANSITIONS:
        raise MicroError(
            f"dataset {path} gives {len(data.transitions)} usable transition(s) (at least "
            f"{MIN_TRANSITIONS} are needed): steps marked as timeouts are dropped, and so are "
            "terminal steps when the file has no next_observations"
        )
    return data


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
