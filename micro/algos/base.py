"""What every algorithm is to the training loop, the checkpoint, the policy file and the report.

An ``Algorithm`` is an ``nn.Module`` built from ``(cfg, obs_dim, act_dim, dynamics)`` that

- takes one gradient step on a batch, ``update(batch, n_real) -> metrics`` (real rows first);
  the metrics are detached scalars left on the device, keyed by the names it logs;
- names its optimizers and learning-rate schedulers (``named_optimizers``, ``named_schedulers``),
  so that ``training_state()`` / ``load_training_state()`` cover everything it trains, and the
  checkpoint names none of them;
- exposes the ``actor`` and ``critics`` a policy file holds;
- may change how a model rollout steps (``model_step``: MOPO penalises the reward there), may
  train the dynamics model itself (``model_update`` every ``model_update_freq`` steps; the model
  and its optimizer are then part of the training state: RAMBO), and may train before the first
  step (``pretrain``: RAMBO's behaviour cloning).

``penalty_metric`` names the conservatism's logged quantity (before its coefficient) as it
appears in ``progress.csv``; ``micro.report`` reads it from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from micro.buffer import Batch, ReplayBuffer
from micro.config import Config
from micro.dynamics import EnsembleDynamics

Metrics = dict[str, torch.Tensor]


class Algorithm(nn.Module):
    name: ClassVar[str]
    title: ClassVar[str]  # the paper, for logs and reports
    # the progress.csv column of the conservatism (before its coefficient); None: it has none
    penalty_metric: ClassVar[str | None] = None
    # train the dynamics model every this many gradient steps (``model_update``); None: frozen
    model_update_freq: int | None = None
    # why the algorithm cannot train a population of runs in one process (``runs=N``:
    # ``micro.population``); None: it can
    population_refused: ClassVar[str | None] = "it has no population form"

    actor: nn.Module
    critics: nn.Module

    def __init__(
        self, cfg: Config, obs_dim: int, act_dim: int, dynamics: EnsembleDynamics | None
    ) -> None:
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.dynamics = dynamics

    # --- the step ----------------------------------------------------------------------------
    def update(self, batch: Batch, n_real: int) -> Metrics:
        raise NotImplementedError

    def end_epoch(self) -> None:
        for scheduler in self.named_schedulers().values():
            scheduler.step()

    def epoch_metrics(self) -> dict[str, float]:
        """Values logged once per epoch, read at its start (e.g. learning rates)."""
        return {}

    # --- hooks into the loop -------------------------------------------------------------------
    @torch.no_grad()
    def model_step(
        self,
        dynamics: EnsembleDynamics,
        obs: torch.Tensor,
        act: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One step of a model rollout: next observations [N, obs_dim], the rewards to store
        [N, 1] and per-row extras [N, 1] whose means the rollout reports by name; its draws
        from ``generator`` (a population's run's), else the global one."""
        next_obs, reward = dynamics.sample_step(obs, act, generator)
        return next_obs, reward, {}

    def model_update(
        self, real: ReplayBuffer, done_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, float]:
        """Train ``self.dynamics`` (when ``model_update_freq`` is set: after every that many
        gradient steps, before the rollout of the next step); ``done_fn`` is the task's
        termination function. Returns metrics, logged under ``model/``."""
        raise NotImplementedError(f"{self.name} does not train its model")

    def pretrain(self, real: ReplayBuffer) -> dict[str, float] | None:
        """Called once before the first gradient step of a run (RAMBO's behaviour cloning);
        None when the algorithm does nothing there, else metrics logged under ``pretrain/``."""
        return None

    @property
    def trains_model(self) -> bool:
        return self.model_update_freq is not None

    # --- state -------------------------------------------------------------------------------
    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def named_schedulers(self) -> dict[str, Any]:
        return {}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.named_optimizers().values())

    def state_dict(self, *args, **kwargs):
        """The networks; a frozen dynamics model is saved on its own (``dynamics/``)."""
        state = super().state_dict(*args, **kwargs)
        if self.trains_model:
            return state
        return {k: v for k, v in state.items() if not k.startswith("dynamics.")}

    def training_state(self) -> dict[str, Any]:
        """Everything this algorithm trains: networks (the dynamics model too when it trains
        it), optimizers and schedulers, by name. The tensors are the learner's own, updated in
        place by its next step: copy them to keep them (the checkpoint does)."""
        return {
            "networks": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.named_optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.named_schedulers().items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore ``training_state()``'s output; ``ValueError`` if it is another learner's."""
        missing, unexpected = self.load_state_dict(state["networks"], strict=False)
        if unexpected or any(self.trains_model or not k.startswith("dynamics.") for k in missing):
            raise ValueError("the saved networks do not match this learner's")
        for kind, mine in (
            ("optimizers", self.named_optimizers()),
            ("schedulers", self.named_schedulers()),
        ):
            saved = state[kind]
            if set(saved) != set(mine):
                raise ValueError(f"saved {kind} {sorted(saved)}, this learner has {sorted(mine)}")
            for key, obj in mine.items():
                obj.load_state_dict(saved[key])
