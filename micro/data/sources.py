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


def load_task_data(task: Task, dataset: str | None) -> TaskData:
    """The task's data: ``dataset`` (a file or folder) when given, else the source's own store,
    downloading when absent."""
    source = SOURCES[task.source]
    return source.load(source.task_dataset_path(task, dataset), task)


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
