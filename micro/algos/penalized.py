"""SAC whose target carries a penalty computed from the values of the model's next states: the
part MICRO and MOBILE share (SPEC §3, §6).

For a model row (s, a), V_ek = min_j Q̄_j(s''_ek, a''_ek) for sample k of elite e,
s''_ek ~ N(μ_e(s, a), σ_e(s, a)), a''_ek ~ π(·|s''_ek). A subclass names two pure functions:
``penalty_from_values`` reduces V [..., K, E, M] to a penalty per row, and ``target_from_penalty``
(r, d, V(s'), penalty, γ, β, clamp) -> y says how it enters the target.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from micro.algos.sac import SAC, TargetNoise
from micro.buffer import Batch

UNCERTAINTY_CHUNK = 2048  # rows per block when evaluating V_ek on the CPU


class ValuePenalizedSAC(SAC):
    value_penalized = True
    # [..., K, E, M] per-elite values -> [..., M] penalty
    penalty_from_values: Callable[[torch.Tensor], torch.Tensor]
    # (r, d, V(s'), penalty, γ, β, clamp) -> y, all [..., B]
    target_from_penalty: Callable[..., torch.Tensor]

    def bellman_target(self, rewards, terminals, next_value, penalty):
        cfg = self.cfg
        return self.target_from_penalty(
            rewards, terminals, next_value, penalty, cfg.gamma, cfg.penalty_coef, cfg.clamp_target
        )

    @torch.no_grad()
    def elite_values(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        state_noise: torch.Tensor | None = None,
        action_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """V_ek = min_j Q̄_j(s''_ek, a''_ek) for ``num_samples`` next states s''_ek ~ N(μ_e, σ_e)
        from each elite e, a''_ek ~ π(·|s''_ek): [K, n_elites, M] for M rows (s, a); for a
        population's rows [runs, M, ...], [runs, K, n_elites, M], each run's through its own
        networks (the shared model sees all rows at once)."""
        assert self.dynamics is not None, "the value penalty needs the dynamics model"
        lead, rows = obs.shape[:-2], obs.shape[-2]
        mean, std = self.dynamics.elite_mean_std(
            obs.reshape(-1, self.obs_dim), act.reshape(-1, self.act_dim)
        )
        mean, std = mean[..., :-1], std[..., :-1]  # next-observation part: [E, runs·M, obs_dim]
        n_elites = mean.shape[0]
        if lead:  # [E, runs·M, obs_dim] -> [runs, E, M, obs_dim]
            mean = mean.view(n_elites, *lead, rows, self.obs_dim).movedim(0, -3)
            std = std.view(n_elites, *lead, rows, self.obs_dim).movedim(0, -3)
        k = self.cfg.num_samples
        if state_noise is None:
            state_noise = self.randn((k, *mean.shape[-3:]), mean.device)
        states = (mean.unsqueeze(-4) + std.unsqueeze(-4) * state_noise).reshape(
            *lead, -1, self.obs_dim
        )
        if action_noise is None:
            action_noise = self.randn((states.shape[-2], self.act_dim), states.device)
        # Row blocks sized to stay in cache: the activations of all K·E·M states (12 200 x 256
        # at the defaults) would be streamed through memory once per elementwise op.
        # A population's block holds every run's rows: as many rows in all as one run's.
        runs = 1 if not lead else lead.numel()
        chunk = (
            max(1, UNCERTAINTY_CHUNK // runs) if states.device.type == "cpu" else states.shape[-2]
        )
        values = torch.cat(
            [
                self.target_critics(s, self.actor.sample_action(s, n)).min(dim=-2).values
                for s, n in zip(
                    states.split(chunk, dim=-2), action_noise.split(chunk, dim=-2), strict=True
                )
            ],
            dim=-1,
        )
        return values.view(*lead, k, n_elites, rows)

    @torch.no_grad()
    def value_penalty(self, batch: Batch, n_real: int, noise: TargetNoise) -> torch.Tensor:
        """The penalty on the model rows (after the first ``n_real``), 0 on real rows."""
        penalty = super().value_penalty(batch, n_real, noise)  # zeros
        if n_real < len(batch) and self.cfg.penalty_coef > 0:
            values = self.elite_values(
                batch.observations[..., n_real:, :],
                batch.actions[..., n_real:, :],
                noise.model_state,
                noise.model_action,
            )
            penalty[..., n_real:] = self.penalty_from_values(values)
        return penalty
