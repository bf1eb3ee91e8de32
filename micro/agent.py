"""The learner: SAC whose critic target carries an algorithm's conservatism (``micro.algos``).

The SAC maths lives in small pure functions of tensors (``critic_loss``, ``actor_loss``,
``alpha_loss``); each algorithm's penalty and target are in ``micro.algos``. ``Learner`` wires
them to the networks and optimizers; MICRO, MOBILE and MOPO differ only in ``cfg.algo``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from micro.algos import get_algorithm
from micro.buffer import Batch
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.nets import Actor, EnsembleCritic, polyak_update
from micro.utils import adam

MAX_Q_BACKUP_ACTIONS = 10
UNCERTAINTY_CHUNK = 2048  # rows per block when evaluating U(s, a) on the CPU


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


class Learner(nn.Module):
    """Actor, batched critics with Polyak targets, temperature, and their optimizers."""

    def __init__(
        self, cfg: Config, obs_dim: int, act_dim: int, dynamics: EnsembleDynamics | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.algo = get_algorithm(cfg.algo)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.actor = Actor(obs_dim, act_dim, cfg.hidden_dims)
        self.critics = EnsembleCritic(obs_dim, act_dim, cfg.hidden_dims, cfg.num_q_ensemble)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.dynamics = dynamics
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

    def state_dict(self, *args, **kwargs):  # the frozen dynamics model is saved on its own
        return {
            k: v
            for k, v in super().state_dict(*args, **kwargs).items()
            if not k.startswith("dynamics.")
        }

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.critic_optim, self.actor_optim, self.alpha_optim) if o is not None]

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
    def elite_values(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        state_noise: torch.Tensor | None = None,
        action_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """V_ek = min_j Q̄_j(s''_ek, a''_ek) for ``num_samples`` next states s''_ek ~ N(μ_e, σ_e)
        from each elite e, a''_ek ~ π(·|s''_ek): [K, n_elites, M] for M rows (s, a)."""
        assert self.dynamics is not None, "the value penalty needs the dynamics model"
        mean, std = self.dynamics.elite_mean_std(obs, act)
        mean, std = mean[..., :-1], std[..., :-1]  # next-observation part: [E, M, obs_dim]
        k = self.cfg.num_samples
        if state_noise is None:
            state_noise = torch.randn((k, *mean.shape), device=mean.device)
        states = (mean + std * state_noise).reshape(-1, self.obs_dim)
        if action_noise is None:
            action_noise = torch.randn(states.shape[0], self.act_dim, device=states.device)
        # Row blocks sized to stay in cache: the activations of all K·E·M states (12 200 x 256
        # at the defaults) would be streamed through memory once per elementwise op.
        chunk = UNCERTAINTY_CHUNK if states.device.type == "cpu" else states.shape[0]
        values = torch.cat(
            [
                self.target_critics(s, self.actor.sample_action(s, n)).min(dim=0).values
                for s, n in zip(states.split(chunk), action_noise.split(chunk), strict=True)
            ]
        )
        return values.view(k, mean.shape[0], mean.shape[1])

    @torch.no_grad()
    def target(
        self, batch: Batch, n_real: int, noise: TargetNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target y [B] and the algorithm's value penalty [B] (0 on the first ``n_real`` rows,
        which are real data, and for algorithms without one) for a mixed batch."""
        noise = noise or TargetNoise()
        next_value = self.next_value(batch.next_observations, noise.next_action)
        penalty = torch.zeros_like(next_value)
        value_penalty = self.algo.value_penalty
        if value_penalty is not None and n_real < len(batch) and self.cfg.penalty_coef > 0:
            values = self.elite_values(
                batch.observations[n_real:],
                batch.actions[n_real:],
                noise.model_state,
                noise.model_action,
            )
            penalty[n_real:] = value_penalty(values)
        y = self.algo.target(
            batch.rewards.squeeze(-1),
            batch.terminals.squeeze(-1),
            next_value,
            penalty,
            self.cfg.gamma,
            self.cfg.penalty_coef,
            self.cfg.clamp_target,
        )
        return y, penalty

    # --- one gradient step -----------------------------------------------------------------------
    def update(self, batch: Batch, n_real: int) -> dict[str, torch.Tensor]:
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
        if self.algo.value_penalty is not None:  # its mean over the model rows (0 without any)
            metrics[self.algo.penalty_metric] = (
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

    def end_epoch(self) -> None:
        if self.actor_scheduler is not None:
            self.actor_scheduler.step()
