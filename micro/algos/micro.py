"""MICRO (Liu et al., IJCAI 2024): the conservative Bellman operator (SPEC §3, §4).

The target subtracts, inside the discount, how far the value of the worst plausible next state
falls below the average one: U = mean_e V̄_e − min_e V̄_e over the model's elites.
"""

from __future__ import annotations

import torch

from micro.algos.penalized import ValuePenalizedSAC
from micro.algos.sac import soft_bellman_target


def state_uncertainty(values: torch.Tensor) -> torch.Tensor:
    """U = mean_e V̄_e − min_e V̄_e with V̄_e = mean_k V_ek.

    values: [..., K, E, B] — V_ek per row. Returns [..., B]: how far the worst member of the
    state uncertainty set falls below the average.
    """
    per_member = values.mean(dim=-3)
    return per_member.mean(dim=-2) - per_member.min(dim=-2).values


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

    β = ``penalty_coef``, U = 0 on real rows. All inputs are [..., B]. With ``clamp=False`` the max
    with 0 is skipped.
    """
    y = soft_bellman_target(rewards, terminals, next_value - penalty_coef * uncertainty, gamma)
    return y.clamp(min=0.0) if clamp else y


class MICRO(ValuePenalizedSAC):
    name = "micro"
    title = "MICRO (Liu et al., IJCAI 2024)"
    penalty_metric = "uncertainty"

    penalty_from_values = staticmethod(state_uncertainty)
    target_from_penalty = staticmethod(conservative_target)
