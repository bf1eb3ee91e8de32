"""Policy evaluation in the simulator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from micro.envs import make_env, normalized_scale, normalized_score
from micro.nets import Actor


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    env: str

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())

    @property
    def normalized_mean(self) -> float:
        return normalized_score(self.env, self.mean)

    @property
    def normalized_std(self) -> float:
        return self.std * normalized_scale(self.env)


@torch.no_grad()
def evaluate(
    actor: Actor,
    env_name: str,
    episodes: int,
    seed: int,
    device: torch.device,
    deterministic: bool = True,
) -> EvalResult:
    """Run ``episodes`` episodes of the deterministic policy tanh(μ(s)) (or of the stochastic
    policy); episode i is seeded ``seed + i`` so the same call gives the same result."""
    generator = torch.Generator(device=device).manual_seed(seed)
    env = make_env(env_name)
    returns, lengths = [], []
    was_training = actor.training
    actor.eval()
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, steps, done = 0.0, 0, False
            while not done:
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
                if deterministic:
                    action = actor.deterministic(obs_t)
                else:
                    mean = actor(obs_t)[0]
                    noise = torch.randn(mean.shape, device=device, generator=generator)
                    action = actor.sample(obs_t, noise).action
                action = action.squeeze(0).cpu().numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
    finally:
        env.close()
        actor.train(was_training)
    return EvalResult(np.asarray(returns), np.asarray(lengths), env_name)
