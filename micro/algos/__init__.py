"""The algorithms, one module each, and the registry that names them.

Every algorithm is an ``Algorithm`` (``micro.algos.base``): it owns its networks and optimizers,
its update, the names of the metrics it logs, optional hooks into the training loop (how a
model rollout step is taken, an update of the dynamics model) and one training state that a
checkpoint saves whole. MICRO, MOBILE and MOPO are SAC (``micro.algos.sac``) with a
conservatism of their own; RAMBO is SAC whose dynamics model trains against the policy.

A new algorithm is a module here, one line in ``ALGORITHMS``, and its ``configs/<algo>/``.
This module imports nothing, so that ``micro.config`` can check ``--algo`` against the names
without pulling in the learners.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from micro.algos.base import Algorithm

# name -> "module:class"
ALGORITHMS: dict[str, str] = {
    "micro": "micro.algos.micro:MICRO",
    "mobile": "micro.algos.mobile:MOBILE",
    "mopo": "micro.algos.mopo:MOPO",
    "rambo": "micro.algos.rambo:RAMBO",
}


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as ``name`` (a ``MicroError`` for an unknown name)."""
    if name not in ALGORITHMS:
        from micro import MicroError

        raise MicroError(f"unknown algo {name!r}; choose one of {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def penalty_columns() -> tuple[str, ...]:
    """The ``progress.csv`` column of each registered algorithm's conservatism (before its
    coefficient), in registry order: what reports look for."""
    columns = (algorithm_class(name).penalty_metric for name in ALGORITHMS)
    return tuple(c for c in columns if c is not None)
