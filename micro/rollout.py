"""Model rollouts: the policy acting in the learned dynamics, written into the model buffer.
One function, used by training and by the bench."""

from __future__ import annotations

from collections.abc import Callable

import torch

from micro.algos import reward_penalty
from micro.buffer import Batch, ReplayBuffer
from micro.dynamics import EnsembleDynamics
from micro.nets import Actor


@torch.no_grad()
def model_rollout(
    actor: Actor,
    dynamics: EnsembleDynamics,
    start_obs: torch.Tensor,
    length: int,
    done_fn: Callable[[torch.Tensor], torch.Tensor],
    buffer: ReplayBuffer,
    reward_penalty_coef: float | None = None,
) -> dict[str, float]:
    """Roll the stochastic policy ``length`` steps in the model from ``start_obs`` [N, obs_dim];
    a row stops once it terminates. With ``reward_penalty_coef`` λ (MOPO) every member is
    evaluated and the stored reward is r − λ·max_e ‖σ_e(s, a)‖₂.

    Returns the mean stored reward, the number of transitions added and, with λ, the mean
    penalty max_e ‖σ_e‖₂ before λ.
    """
    device = start_obs.device
    obs = start_obs
    reward_sum, penalty_sum, count = (
        torch.zeros((), device=device),
        torch.zeros((), device=device),
        0,
    )
    for _ in range(length):
        act = actor.sample_action(obs)
        if reward_penalty_coef is None:
            next_obs, reward = dynamics.sample_step(obs, act)
        else:
            next_obs, reward, logvar = dynamics.sample_step_all_members(obs, act)
            penalty = reward_penalty(logvar).unsqueeze(-1)
            reward = reward - reward_penalty_coef * penalty
            penalty_sum += penalty.sum()
        done = done_fn(next_obs)
        buffer.add(Batch(obs, act, next_obs, reward, done.float().unsqueeze(-1)))
        reward_sum += reward.sum()
        count += obs.shape[0]
        obs = next_obs[~done]
        if obs.shape[0] == 0:
            break
    info = {"reward_mean": float(reward_sum) / max(count, 1), "transitions": count}
    if reward_penalty_coef is not None:
        info["reward_penalty"] = float(penalty_sum) / max(count, 1)
    return info
