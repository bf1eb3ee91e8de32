"""The data every source gives: transitions ready for learning, and a task's data with the
simulator it is evaluated on and what ``config.yaml`` records about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from micro.envs import SimSpec


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
