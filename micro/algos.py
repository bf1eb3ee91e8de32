"""The conservatism of each algorithm, as pure functions of tensors, and the registry that names
them. MICRO, MOBILE and MOPO share everything else (data, dynamics, rollouts, SAC, evaluation);
a new model-based method is one more entry in ``ALGORITHMS`` (and its ``configs/<algo>/``).

Notation (SPEC §3, §6): for a model row (s, a), V_ek = min_j Q̄_j(s''_ek, a''_ek) for sample k of
elite e, s''_ek ~ N(μ_e(s, a), σ_e(s, a)), a''_ek ~ π(·|s''_ek); V̄_e = mean_k V_ek;
V(s') = min_j Q̄_j(s', a') − α log π(a'|s') (entropy omitted with deterministic backup).
Every target is clamped at 0 like the published code (``clamp``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from micro import MicroError

# --- MICRO (Liu et al., IJCAI 2024) ----------------------------------------------------------


def state_uncertainty(values: torch.Tensor) -> torch.Tensor:
    """U = mean_e V̄_e − min_e V̄_e with V̄_e = mean_k V_ek.

    values: [K, E, B] — V_ek per row. Returns [B]: how far the worst member of the state
    uncertainty set falls below the average.
    """
    per_member = values.mean(dim=0)
    return per_member.mean(dim=0) - per_member.min(dim=0).values


def soft_bellman_target(
    rewards: torch.Tensor, terminals: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """The plain soft Bellman target r + γ (1 − d) V(s'); all inputs [B]."""
    return rewards + gamma * (1.0 - terminals) * next_value


def conservative_target(
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    next_value: torch.Tensor,
    uncertainty: torch.Tensor,
    gamma: float,
    penalty_coef: float,
    clamp: bool = True,
) -> torch.Tensor:
    """MICRO's conservative Bellman target:

        y = max( r + γ (1 − d) (V(s') − β U(s, a)),  0 )

    β = ``penalty_coef``, U = 0 on real rows. All inputs are [B]. With ``clamp=False`` (online
    SAC for behavior policies) the max with 0 is skipped.
    """
    y = soft_bellman_target(rewards, terminals, next_value - penalty_coef * uncertainty, gamma)
    return y.clamp(min=0.0) if clamp else y


# --- MOBILE (Sun et al., ICML 2023) -----------------------------------------------------------


def bellman_inconsistency(values: torch.Tensor) -> torch.Tensor:
    """MOBILE's penalty P = std_e V̄_e: the sample standard deviation (unbiased, torch's default)
    over the elites of V̄_e = mean_k V_ek. values: [K, E, B] -> [B]."""
    return values.mean(dim=0).std(dim=0)


def mobile_target(
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    next_value: torch.Tensor,
    penalty: torch.Tensor,
    gamma: float,
    penalty_coef: float,
    clamp: bool = True,
) -> torch.Tensor:
    """MOBILE's target, the penalty outside the discount (unlike MICRO's U):

        y = max( r − β P(s, a) + γ (1 − d) V(s'),  0 )

    P = 0 on real rows; all inputs [B].
    """
    y = soft_bellman_target(rewards - penalty_coef * penalty, terminals, next_value, gamma)
    return y.clamp(min=0.0) if clamp else y


# --- MOPO (Yu et al., NeurIPS 2020) -----------------------------------------------------------


def plain_target(
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    next_value: torch.Tensor,
    penalty: torch.Tensor,
    gamma: float,
    penalty_coef: float,
    clamp: bool = True,
) -> torch.Tensor:
    """The soft Bellman target with no value penalty, y = max(r + γ (1 − d) V(s'), 0): MOPO's,
    whose conservatism is already in the model rows' rewards. ``penalty`` is unused (zeros)."""
    y = soft_bellman_target(rewards, terminals, next_value, gamma)
    return y.clamp(min=0.0) if clamp else y


def reward_penalty(logvar: torch.Tensor) -> torch.Tensor:
    """MOPO's uncertainty u(s, a) = max_e ‖σ_e(s, a)‖₂ over *all* ensemble members, σ the
    predicted standard deviation of (Δs, r) (OfflineRL-Kit's "aleatoric" mode).
    logvar: [E, B, obs_dim + 1] -> [B]. Rollouts store r̃ = r − λ u."""
    return (0.5 * logvar).exp().norm(dim=-1).max(dim=0).values


# --- the registry ------------------------------------------------------------------------------

Target = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Algorithm:
    name: str
    title: str  # paper, for logs and reports
    target: Target  # (r, d, V(s'), penalty, γ, β, clamp) -> y, all [B]
    # per-elite values [K, E, M] -> penalty [M] on model rows; None: the target needs none
    value_penalty: Callable[[torch.Tensor], torch.Tensor] | None
    penalty_metric: str  # name of the logged penalty (before its coefficient)
    penalize_model_reward: bool = False  # rollouts store r − β·reward_penalty (MOPO)


ALGORITHMS: dict[str, Algorithm] = {
    "micro": Algorithm(
        "micro",
        "MICRO (Liu et al., IJCAI 2024)",
        conservative_target,
        state_uncertainty,
        "uncertainty",
    ),
    "mobile": Algorithm(
        "mobile",
        "MOBILE (Sun et al., ICML 2023)",
        mobile_target,
        bellman_inconsistency,
        "penalty",
    ),
    "mopo": Algorithm(
        "mopo",
        "MOPO (Yu et al., NeurIPS 2020)",
        plain_target,
        None,
        "reward_penalty",
        penalize_model_reward=True,
    ),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise MicroError(f"unknown algo {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
