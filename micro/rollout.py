"""Model rollouts: the policy acting in the learned dynamics, written into the model buffer.
One function, used by training and by the bench."""

from __future__ import annotations

from collections.abc import Callable

import torch

from micro.buffer import Batch, ReplayBuffer
from micro.nets import TanhGaussianPolicy

# (obs [N, obs_dim], act [N, act_dim]) -> next obs [N, obs_dim], stored reward [N, 1], and
# per-row extras [N, 1] by name: an algorithm's ``model_step`` bound to the dynamics model
ModelStep = Callable[
    [torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
]


@torch.no_grad()
def model_rollout(
    actor: TanhGaussianPolicy,
    step: ModelStep,
    start_obs: torch.Tensor,
    length: int,
    done_fn: Callable[[torch.Tensor], torch.Tensor],
    buffer: ReplayBuffer,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Roll the stochastic policy ``length`` steps in the model from ``start_obs`` [N, obs_dim];
    a row stops once it terminates. ``step`` takes each model step (``Algorithm.model_step``:
    MOPO evaluates every member and stores r − λ·max_e ‖σ_e(s, a)‖₂). The policy's draws come
    from ``generator`` when given (a population's run's; ``step`` should draw from it too),
    else from the global one.

    Returns the mean stored reward, the number of transitions added and the mean of each of
    ``step``'s extras (MOPO: ``reward_penalty``, before λ).
    """
    device = start_obs.device
    obs = start_obs
    reward_sum = torch.zeros((), device=device)
    extra_sums: dict[str, torch.Tensor] = {}
    count = 0
    for _ in range(length):
        noise = None
        if generator is not None:
            noise = torch.randn(obs.shape[0], actor.act_dim, device=device, generator=generator)
        act = actor.sample_action(obs, noise)
        next_obs, reward, extras = step(obs, act)
        for key, value in extras.items():
            extra_sums[key] = extra_sums.get(key, torch.zeros((), device=device)) + value.sum()
        done = done_fn(next_obs)
        buffer.add(Batch(obs, act, next_obs, reward, done.float().unsqueeze(-1)))
        reward_sum += reward.sum()
        count += obs.shape[0]
        obs = next_obs[~done]
        if obs.shape[0] == 0:
            break
    info = {"reward_mean": float(reward_sum) / max(count, 1), "transitions": count}
    for key, total in extra_sums.items():
        info[key] = float(total) / max(count, 1)
    return info
