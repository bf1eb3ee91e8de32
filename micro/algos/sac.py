"""Soft actor-critic, the learner every algorithm here builds on (SPEC §2).

The maths is in small pure functions of tensors (``soft_bellman_target``, ``critic_loss``,
``actor_loss``, ``alpha_loss``); ``SAC`` wires them to the networks and optimizers. An
algorithm's conservatism enters through two methods a subclass overrides: ``value_penalty``
(a penalty per row, computed with the target networks) and ``bellman_target`` (how the penalty
enters the target). Plain ``SAC`` has no penalty: with ``clamp_target`` false and
``real_ratio`` 1 it is the online SAC that trains the behavior policies (``micro.datagen``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from micro.algos.base import Algorithm, Metrics
from micro.buffer import Batch
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.nets import Actor, EnsembleCritic, polyak_update
from micro.utils import adam

MAX_Q_BACKUP_ACTIONS = 10


@dataclass
class TargetNoise:
    """Standard-normal draws the target consumes, for reproducing it exactly in tests.

    next_action: [B, act_dim] for a' ~ π(·|s') (or [B·10, act_dim] with max_q_backup).
    model_state: [K, n_elites, M, obs_dim] for s'' ~ N(μ_e, σ_e) on the M model rows.
    model_action: [K·n_elites·M, act_dim] for a'' ~ π(·|s'').
    """

    next_action: torch.Tensor | None = None
    model_state: torch.Tensor | None = None
    model_action: torch.Tensor | None = None


# --- pure functions ------------------------------------------------------------------------------


def soft_bellman_target(
    rewards: torch.Tensor, terminals: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """The plain soft Bellman target r + γ (1 − d) V(s'); all inputs [B]."""
    return rewards + gamma * (1.0 - terminals) * next_value


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over critics j and rows i of (Q_j(s_i, a_i) − y_i)²; q: [n, B], target: [B]."""
    return (q - target.unsqueeze(0)).pow(2).mean()


def actor_loss(log_prob: torch.Tensor, q_new: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """mean of α log π(ã|s) − min_j Q_j(s, ã); q_new: [n, B]."""
    return (alpha * log_prob - q_new.min(dim=0).values).mean()


def alpha_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """−log α · (log π + target entropy), the entropy term detached."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


# --- the learner ---------------------------------------------------------------------------------


class SAC(Algorithm):
    """Actor, batched critics with Polyak targets, temperature, and their optimizers."""

    name = "sac"
    title = "SAC (Haarnoja et al., ICML 2018)"
    # whether ``value_penalty`` computes one (then logged as ``penalty_metric``)
    value_penalized: ClassVar[bool] = False

    def __init__(
        self, cfg: Config, obs_dim: int, act_dim: int, dynamics: EnsembleDynamics | None = None
    ) -> None:
        super().__init__(cfg, obs_dim, act_dim, dynamics)
        self.actor = Actor(obs_dim, act_dim, cfg.hidden_dims)
        self.critics = EnsembleCritic(obs_dim, act_dim, cfg.hidden_dims, cfg.num_q_ensemble)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        # Tuned: starts at α = 1 (log α = 0) as in the published code; fixed: α = cfg.alpha.
        init = 0.0 if cfg.auto_alpha else float(torch.log(torch.tensor(cfg.alpha)))
        self.log_alpha = nn.Parameter(torch.tensor(init), requires_grad=cfg.auto_alpha)
        self.actor_optim = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optim = adam(self.critics.parameters(), cfg.critic_lr)
        self.alpha_optim = adam([self.log_alpha], cfg.alpha_lr) if cfg.auto_alpha else None
        self.actor_scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optim, T_max=cfg.epoch)
            if cfg.lr_scheduler
            else None
        )

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optims = {"critic": self.critic_optim, "actor": self.actor_optim, "alpha": self.alpha_optim}
        return {k: o for k, o in optims.items() if o is not None}

    def named_schedulers(self) -> dict[str, Any]:
        return {} if self.actor_scheduler is None else {"actor": self.actor_scheduler}

    def epoch_metrics(self) -> dict[str, float]:
        return {"actor_lr": self.actor_optim.param_groups[0]["lr"]}

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature in use: clamp(exp(log α), 0, 1) when tuned, else the fixed α."""
        if not self.cfg.auto_alpha:
            return self.log_alpha.detach().exp()
        return self.log_alpha.detach().exp().clamp(0.0, 1.0)

    # --- the target ----------------------------------------------------------------------------
    @torch.no_grad()
    def next_value(self, next_obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """V(s') for the target: [B]."""
        if self.cfg.max_q_backup:
            k = MAX_Q_BACKUP_ACTIONS
            repeated = next_obs.repeat_interleave(k, dim=0)
            pi = self.actor.sample(repeated, noise)
            q = self.target_critics(repeated, pi.action).view(-1, next_obs.shape[0], k)
            return q.max(dim=2).values.min(dim=0).values
        pi = self.actor.sample(next_obs, noise)
        value = self.target_critics(next_obs, pi.action).min(dim=0).values
        if not self.cfg.deterministic_backup:
            value = value - self.alpha * pi.log_prob
        return value

    @torch.no_grad()
    def value_penalty(self, batch: Batch, n_real: int, noise: TargetNoise) -> torch.Tensor:
        """The conservatism's penalty per row [B], 0 on the first ``n_real`` rows (real data);
        0 everywhere for an algorithm without one (plain SAC, MOPO)."""
        return torch.zeros(len(batch), device=batch.rewards.device)

    def bellman_target(
        self,
        rewards: torch.Tensor,
        terminals: torch.Tensor,
        next_value: torch.Tensor,
        penalty: torch.Tensor,
    ) -> torch.Tensor:
        """y from [B] inputs: the soft Bellman target, clamped at 0 when ``clamp_target``."""
        y = soft_bellman_target(rewards, terminals, next_value, self.cfg.gamma)
        return y.clamp(min=0.0) if self.cfg.clamp_target else y

    @torch.no_grad()
    def target(
        self, batch: Batch, n_real: int, noise: TargetNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target y [B] and the value penalty [B] for a mixed batch."""
        noise = noise or TargetNoise()
        next_value = self.next_value(batch.next_observations, noise.next_action)
        penalty = self.value_penalty(batch, n_real, noise)
        y = self.bellman_target(
            batch.rewards.squeeze(-1), batch.terminals.squeeze(-1), next_value, penalty
        )
        return y, penalty

    # --- one gradient step -----------------------------------------------------------------------
    def update(self, batch: Batch, n_real: int) -> Metrics:
        """Critic, actor and temperature steps, then the Polyak update. Returns detached
        scalars (left on the device: reading them is the caller's choice)."""
        y, penalty = self.target(batch, n_real)

        q = self.critics(batch.observations, batch.actions)
        loss_q = critic_loss(q, y)
        self.critic_optim.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_optim.step()

        alpha = self.alpha
        pi = self.actor.sample(batch.observations)
        self.critics.requires_grad_(False)  # the actor step needs no critic weight gradients
        q_new = self.critics(batch.observations, pi.action)
        loss_pi = actor_loss(pi.log_prob, q_new, alpha)
        self.actor_optim.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.actor_optim.step()
        self.critics.requires_grad_(True)

        metrics = {
            "critic_loss": loss_q.detach(),
            "actor_loss": loss_pi.detach(),
            "q_mean": q.detach().mean(),
            "target_mean": y.mean(),
            "log_prob": pi.log_prob.detach().mean(),
        }
        if self.value_penalized:
            # its mean over the model rows (0 without any)
            metrics[self.penalty_metric] = (
                penalty[n_real:].mean() if n_real < len(batch) else penalty.sum()
            )
        if self.alpha_optim is not None:
            loss_alpha = alpha_loss(self.log_alpha, pi.log_prob, self.target_entropy)
            self.alpha_optim.zero_grad(set_to_none=True)
            loss_alpha.backward()
            self.alpha_optim.step()
            metrics["alpha_loss"] = loss_alpha.detach()
        metrics["alpha"] = self.alpha

        polyak_update(self.target_critics, self.critics, self.cfg.tau)
        return metrics
