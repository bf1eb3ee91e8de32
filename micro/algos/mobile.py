"""MOBILE (Sun et al., ICML 2023): model-Bellman inconsistency as a reward penalty (SPEC §6).

The same per-elite values V̄_e as MICRO; the penalty is their spread, outside the discount.
"""

from __future__ import annotations

import torch

from micro.algos.penalized import ValuePenalizedSAC
from micro.algos.sac import soft_bellman_target


def bellman_inconsistency(values: torch.Tensor) -> torch.Tensor:
    """MOBILE's penalty P = std_e V̄_e: the sample standard deviation (unbiased, torch's default)
    over the elites of V̄_e = mean_k V_ek. values: [..., K, E, B] -> [..., B]."""
    return values.mean(dim=-3).std(dim=-2)


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

    P = 0 on real rows; all inputs [..., B].
    """
    y = soft_bellman_target(rewards - penalty_coef * penalty, terminals, next_value, gamma)
    return y.clamp(min=0.0) if clamp else y


class MOBILE(ValuePenalizedSAC):
    name = "mobile"
    title = "MOBILE (Sun et al., ICML 2023)"
    penalty_metric = "penalty"

    penalty_from_values = staticmethod(bellman_inconsistency)
    target_from_penalty = staticmethod(mobile_target)
