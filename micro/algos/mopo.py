"""MOPO (Yu et al., NeurIPS 2020): the model's uncertainty subtracted from the rewards of the
model rollouts (SPEC §6); the critic learns with the plain soft target, not clamped at 0
(``clamp_target`` false in ``configs/mopo/defaults.yaml``).

Its hook is the rollout step (``model_step``): every ensemble member is evaluated and the stored
reward is r̃ = r − λ u(s, a), u = max_e ‖σ_e(s, a)‖₂ (OfflineRL-Kit's "aleatoric" mode).
"""

from __future__ import annotations

import torch

from micro.algos.sac import SAC
from micro.dynamics import EnsembleDynamics


def reward_penalty(logvar: torch.Tensor) -> torch.Tensor:
    """MOPO's uncertainty u(s, a) = max_e ‖σ_e(s, a)‖₂ over *all* ensemble members, σ the
    predicted standard deviation of (Δs, r). logvar: [E, B, obs_dim + 1] -> [B]."""
    return (0.5 * logvar).exp().norm(dim=-1).max(dim=0).values


class MOPO(SAC):
    name = "mopo"
    title = "MOPO (Yu et al., NeurIPS 2020)"
    # rollouts report the mean u before λ as reward_penalty: progress.csv's rollout_ column
    penalty_metric = "rollout_reward_penalty"

    @torch.no_grad()
    def model_step(
        self,
        dynamics: EnsembleDynamics,
        obs: torch.Tensor,
        act: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        next_obs, reward, logvar = dynamics.sample_step_all_members(obs, act, generator)
        penalty = reward_penalty(logvar).unsqueeze(-1)
        return next_obs, reward - self.cfg.penalty_coef * penalty, {"reward_penalty": penalty}
