"""Soft actor-critic, the learner every algorithm here builds on (SPEC §2).

The maths is in small pure functions of tensors (``soft_bellman_target``, ``critic_loss``,
``actor_loss``, ``alpha_loss``); ``SAC`` wires them to the networks and optimizers. An
algorithm's conservatism enters through two methods a subclass overrides: ``value_penalty``
(a penalty per row, computed with the target networks) and ``bellman_target`` (how the penalty
enters the target). Plain ``SAC`` has no penalty: with ``clamp_target`` false and
``real_ratio`` 1 it is the online SAC that trains the behavior policies (``micro.datagen``).

A learner built with ``runs=N`` is the learners of N runs trained together (a population,
``micro.population``): every network gains a leading run axis (``PopulationActor``, critics of
N × n members, N temperatures), batches are [N, B, ...], losses and metrics are [N] (summed
before each backward pass, so each run's gradient is its own loss's), and each run draws its
noise from its own generator. The pure functions reduce over their trailing dimensions, so the
same ones serve both. ``run_training_state`` / ``load_runs_training_state`` convert between a
population and its runs' ordinary training states (what their checkpoints hold).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from micro.algos.base import Algorithm, Metrics
from micro.buffer import Batch
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.nets import Actor, EnsembleCritic, PopulationActor, polyak_update
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
    """mean over critics j and rows i of (Q_j(s_i, a_i) − y_i)²; q: [..., n, B], target: [..., B]
    -> [...] (one per run of a population)."""
    return (q - target.unsqueeze(-2)).pow(2).mean(dim=(-2, -1))


def actor_loss(log_prob: torch.Tensor, q_new: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """mean over rows of α log π(ã|s) − min_j Q_j(s, ã); log_prob [..., B], q_new [..., n, B],
    alpha [...] -> [...]."""
    return (alpha.unsqueeze(-1) * log_prob - q_new.min(dim=-2).values).mean(-1)


def alpha_loss(
    log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """−log α · (log π + target entropy), the entropy term detached, averaged over rows;
    log_alpha [...], log_prob [..., B] -> [...]."""
    return -(log_alpha.unsqueeze(-1) * (log_prob.detach() + target_entropy)).mean(-1)


# --- the learner ---------------------------------------------------------------------------------


class SAC(Algorithm):
    """Actor, batched critics with Polyak targets, temperature, and their optimizers."""

    name = "sac"
    title = "SAC (Haarnoja et al., ICML 2018)"
    # whether ``value_penalty`` computes one (then logged as ``penalty_metric``)
    value_penalized: ClassVar[bool] = False
    population_refused = None  # SAC and its conservative forms train populations

    def __init__(
        self,
        cfg: Config,
        obs_dim: int,
        act_dim: int,
        dynamics: EnsembleDynamics | None = None,
        runs: int | None = None,
    ) -> None:
        super().__init__(cfg, obs_dim, act_dim, dynamics)
        # None: one run; N: a population of N runs, whose weights are loaded afterwards
        # (``load_runs_training_state``) and whose draws come from ``generators``
        self.runs = runs
        self.generators: list[torch.Generator] | None = None
        if runs is None:
            self.actor = Actor(obs_dim, act_dim, cfg.hidden_dims)
        else:
            self.actor = PopulationActor(obs_dim, act_dim, cfg.hidden_dims, runs)
        n_q = cfg.num_q_ensemble
        self.critics = EnsembleCritic(obs_dim, act_dim, cfg.hidden_dims, n_q, runs or 1)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.target_entropy = (
            float(-act_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        # Tuned: starts at α = 1 (log α = 0) as in the published code; fixed: α = cfg.alpha.
        init = 0.0 if cfg.auto_alpha else float(torch.log(torch.tensor(cfg.alpha)))
        log_alpha = torch.tensor(init) if runs is None else torch.full((runs,), init)
        self.log_alpha = nn.Parameter(log_alpha, requires_grad=cfg.auto_alpha)
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

    # --- a population and its runs ---------------------------------------------------------------
    def _run_axes(self) -> dict[str, str]:
        """How each optimizer's parameters hold the runs: ``stack`` (a leading run axis) or
        ``cat`` (the runs' critics one after another, ``num_q_ensemble`` each)."""
        return {"actor": "stack", "critic": "cat", "alpha": "stack"}

    def _take(self, tensor: torch.Tensor, how: str, run: int) -> torch.Tensor:
        n = self.critics.n
        part = tensor[run] if how == "stack" else tensor[run * n : (run + 1) * n]
        return part.detach().clone()

    def run_training_state(self, run: int) -> dict[str, Any]:
        """Run ``run`` of a population as an ordinary learner's ``training_state()`` (copies):
        what its checkpoint holds, loadable by ``SAC(cfg, ...)`` without ``runs``."""
        assert self.runs is not None, "not a population"
        networks = {f"actor.{k}": v for k, v in self.actor.run_state(run).items()}
        for name in ("critics", "target_critics"):
            state = getattr(self, name).run_state(run)
            networks.update({f"{name}.{k}": v for k, v in state.items()})
        networks["log_alpha"] = self.log_alpha.detach()[run].clone()
        axes = self._run_axes()
        optimizers = {}
        for name, opt in self.named_optimizers().items():
            full = opt.state_dict()
            per_param = {
                i: {
                    key: value if key == "step" else self._take(value, axes[name], run)
                    for key, value in param_state.items()
                }
                for i, param_state in full["state"].items()
            }
            optimizers[name] = {"state": per_param, "param_groups": full["param_groups"]}
        schedulers = {k: s.state_dict() for k, s in self.named_schedulers().items()}
        return {"networks": networks, "optimizers": optimizers, "schedulers": schedulers}

    def load_runs_training_state(self, states: Sequence[dict[str, Any]]) -> None:
        """Make this population the runs whose ordinary ``training_state()`` are ``states``, in
        order; ``ValueError`` if they do not fit (another learner's, or runs at different
        steps)."""
        assert self.runs == len(states), (self.runs, len(states))
        for run, state in enumerate(states):
            nets = state["networks"]
            try:
                self.actor.load_run_state(run, _prefixed(nets, "actor."))
                self.critics.load_run_state(run, _prefixed(nets, "critics."))
                self.target_critics.load_run_state(run, _prefixed(nets, "target_critics."))
                with torch.no_grad():
                    self.log_alpha[run] = nets["log_alpha"]
            except (KeyError, RuntimeError) as exc:
                raise ValueError(f"run {run}'s networks do not fit this learner ({exc})") from None
        axes = self._run_axes()
        for name, opt in self.named_optimizers().items():
            saved = [s["optimizers"][name] for s in states]
            combined = {}
            for i, first in saved[0]["state"].items():
                combined[i] = {}
                for key, value in first.items():
                    values = [s["state"][i][key] for s in saved]
                    if key == "step":
                        if any(not torch.equal(v, value) for v in values):
                            raise ValueError("the runs have taken different numbers of steps")
                        combined[i][key] = value
                    else:
                        join = torch.stack if axes[name] == "stack" else torch.cat
                        combined[i][key] = join(values)
            opt.load_state_dict({"state": combined, "param_groups": saved[0]["param_groups"]})
        for name, scheduler in self.named_schedulers().items():
            scheduler.load_state_dict(states[0]["schedulers"][name])

    # --- random draws ---------------------------------------------------------------------------
    def randn(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """Standard-normal draws of ``shape`` for each run: from the global generator for one
        run; [runs, *shape] for a population, run r's from its own generator."""
        if self.generators is None:
            return torch.randn(tuple(shape), device=device)
        return torch.stack(
            [torch.randn(tuple(shape), device=device, generator=g) for g in self.generators]
        )

    def _policy_noise(self, obs: torch.Tensor) -> torch.Tensor:
        """Noise for one policy sample on observations [..., B, obs_dim]."""
        return self.randn((obs.shape[-2], self.act_dim), obs.device)

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature in use: clamp(exp(log α), 0, 1) when tuned, else the fixed α; one
        per run of a population."""
        if not self.cfg.auto_alpha:
            return self.log_alpha.detach().exp()
        return self.log_alpha.detach().exp().clamp(0.0, 1.0)

    # --- the target ----------------------------------------------------------------------------
    @torch.no_grad()
    def next_value(self, next_obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """V(s') for the target: [..., B] for next_obs [..., B, obs_dim]."""
        rows = next_obs.shape[-2]
        if self.cfg.max_q_backup:
            k = MAX_Q_BACKUP_ACTIONS
            repeated = next_obs.repeat_interleave(k, dim=-2)
            noise = self._policy_noise(repeated) if noise is None else noise
            pi = self.actor.sample(repeated, noise)
            q = self.target_critics(repeated, pi.action)
            q = q.view(*q.shape[:-1], rows, k)
            return q.max(dim=-1).values.min(dim=-2).values
        noise = self._policy_noise(next_obs) if noise is None else noise
        pi = self.actor.sample(next_obs, noise)
        value = self.target_critics(next_obs, pi.action).min(dim=-2).values
        if not self.cfg.deterministic_backup:
            value = value - self.alpha.unsqueeze(-1) * pi.log_prob
        return value

    @torch.no_grad()
    def value_penalty(self, batch: Batch, n_real: int, noise: TargetNoise) -> torch.Tensor:
        """The conservatism's penalty per row [..., B], 0 on the first ``n_real`` rows (real
        data); 0 everywhere for an algorithm without one (plain SAC, MOPO)."""
        return torch.zeros(batch.rewards.shape[:-1], device=batch.rewards.device)

    def bellman_target(
        self,
        rewards: torch.Tensor,
        terminals: torch.Tensor,
        next_value: torch.Tensor,
        penalty: torch.Tensor,
    ) -> torch.Tensor:
        """y from [..., B] inputs: the soft Bellman target, clamped at 0 when ``clamp_target``."""
        y = soft_bellman_target(rewards, terminals, next_value, self.cfg.gamma)
        return y.clamp(min=0.0) if self.cfg.clamp_target else y

    @torch.no_grad()
    def target(
        self, batch: Batch, n_real: int, noise: TargetNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target y [..., B] and the value penalty [..., B] for a mixed batch."""
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
        scalars (left on the device: reading them is the caller's choice); [runs] each for a
        population, whose losses are summed over runs before each backward pass."""
        y, penalty = self.target(batch, n_real)

        q = self.critics(batch.observations, batch.actions)
        loss_q = critic_loss(q, y)
        self.critic_optim.zero_grad(set_to_none=True)
        loss_q.sum().backward()
        self.critic_optim.step()

        alpha = self.alpha
        pi = self.actor.sample(batch.observations, self._policy_noise(batch.observations))
        self.critics.requires_grad_(False)  # the actor step needs no critic weight gradients
        q_new = self.critics(batch.observations, pi.action)
        loss_pi = actor_loss(pi.log_prob, q_new, alpha)
        self.actor_optim.zero_grad(set_to_none=True)
        loss_pi.sum().backward()
        self.actor_optim.step()
        self.critics.requires_grad_(True)

        metrics = {
            "critic_loss": loss_q.detach(),
            "actor_loss": loss_pi.detach(),
            "q_mean": q.detach().mean(dim=(-2, -1)),
            "target_mean": y.mean(-1),
            "log_prob": pi.log_prob.detach().mean(-1),
        }
        if self.value_penalized:
            # its mean over the model rows (0 without any)
            metrics[self.penalty_metric] = (
                penalty[..., n_real:].mean(-1) if n_real < len(batch) else penalty.sum(-1)
            )
        if self.alpha_optim is not None:
            loss_alpha = alpha_loss(self.log_alpha, pi.log_prob, self.target_entropy)
            self.alpha_optim.zero_grad(set_to_none=True)
            loss_alpha.sum().backward()
            self.alpha_optim.step()
            metrics["alpha_loss"] = loss_alpha.detach()
        metrics["alpha"] = self.alpha

        polyak_update(self.target_critics, self.critics, self.cfg.tau)
        return metrics


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
