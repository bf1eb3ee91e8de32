"""Policy evaluation in the simulator: one episode runner for training, behavior policies and
the robustness sweeps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from micro.envs import SimSpec, as_sim
from micro.nets import Actor, EnsembleCritic
from micro.robustness import N_CANDIDATES, Attack, Physics, attack_delta, scaled_physics


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    sim: SimSpec

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())

    @property
    def normalized_mean(self) -> float:
        return self.sim.normalized_score(self.mean)

    @property
    def normalized_std(self) -> float:
        """The std of returns scaled by the normalization's slope (no offset)."""
        return self.std * self.sim.normalized_scale()

    @property
    def normalized_min(self) -> float:
        """The worst episode's normalized score (one bad episode hides in a mean)."""
        return self.sim.normalized_score(float(self.returns.min()))

    @property
    def normalized_max(self) -> float:
        return self.sim.normalized_score(float(self.returns.max()))

    def episode_rows(self, seed: int) -> list[dict]:
        """One row per episode: its index, simulator seed (``run_episodes`` seeds episode i
        with ``seed + i``), return, normalized score and length."""
        return [
            {
                "episode": i,
                "seed": seed + i,
                "return": float(r),
                "normalized": self.sim.normalized_score(float(r)),
                "length": int(n),
            }
            for i, (r, n) in enumerate(zip(self.returns, self.lengths, strict=True))
        ]

    def row(self) -> dict[str, float]:
        return {
            "episodes": len(self.returns),
            "return_mean": self.mean,
            "return_std": self.std,
            "normalized_mean": self.normalized_mean,
            "normalized_std": self.normalized_std,
        }


@torch.no_grad()
def run_episodes(
    actor: Actor,
    env: str | SimSpec,
    episodes: int,
    seed: int,
    *,
    deterministic: bool = True,
    physics: Physics | None = None,
    attack: Attack | None = None,
    critics: EnsembleCritic | None = None,
    obs_std: np.ndarray | None = None,
    n_envs: int = 5,
    envs: list | None = None,
    device: torch.device | None = None,
    observer: Callable[[int, int, np.ndarray], None] | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes, ``n_envs`` simulators in lockstep with the policy batched.

    Episode i is seeded ``seed + i``, for the simulator and for its own noise (stochastic
    actions, attack candidates), and the policy always sees a batch of ``n_envs`` rows with
    episode i in row ``i % n_envs``, so episode i's result is a function of its seed, the
    policy, the code and ``n_envs`` alone (on one machine and torch build): not of how many
    episodes run, nor of when the others end. (Another ``n_envs`` batches the policy
    differently, which can round differently.)
    The policy acts with tanh(μ(s)) when ``deterministic``, else samples from π(·|s). An attack
    perturbs only what the policy sees (budget scaled by ``obs_std``); ``physics`` scales the
    simulators' models for the duration of the call. ``observer(i, t, obs)``, when given, sees
    episode i's observation after its step t (0-based), e.g. to find when something happens.
    """
    device = device or torch.device("cpu")
    sim = as_sim(env)  # a robot name means D4RL's simulator and references
    envs = envs if envs is not None else [sim.make() for _ in range(n_envs)]
    attacking = attack is not None and attack.mode != "none" and attack.eps > 0
    std = None if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32, device=device)
    if attacking and std is None:
        raise ValueError("an attack needs the observation std")
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    was_training = actor.training
    actor.eval()
    try:
        with contextlib.ExitStack() as stack:
            if physics is not None:
                for env in envs:
                    stack.enter_context(scaled_physics(env.unwrapped.model, physics))
            n = len(envs)
            for first in range(0, episodes, n):
                # slot j holds episode first + j for the whole chunk; the policy always sees all
                # n rows (zeros where a slot has no episode or its episode ended), so episode
                # i's arithmetic is the same however many episodes run beside it
                active = [(j, first + j) for j in range(min(n, episodes - first))]
                obs = np.zeros((n, sim.obs_dim))
                for j, i in active:
                    obs[j] = envs[j].reset(seed=seed + i)[0]
                rngs = {i: np.random.default_rng([seed, i]) for _, i in active}
                while active:
                    o = torch.as_tensor(obs, dtype=torch.float32, device=device)
                    seen = o
                    if attacking:
                        k = 1 if attack.mode == "random" else N_CANDIDATES
                        u = np.zeros((n, k, o.shape[1]))
                        for j, i in active:
                            u[j] = rngs[i].uniform(-1.0, 1.0, (k, o.shape[1]))
                        u = torch.as_tensor(u, dtype=torch.float32, device=device)
                        seen = o + attack_delta(o, u, attack, actor, critics, std)
                    if deterministic:
                        actions = actor.deterministic(seen)
                    else:
                        noise = np.zeros((n, actor.act_dim))
                        for j, i in active:
                            noise[j] = rngs[i].standard_normal(actor.act_dim)
                        noise = torch.as_tensor(noise, dtype=torch.float32, device=device)
                        actions = actor.sample(seen, noise).action
                    actions = actions.cpu().numpy()
                    still = []
                    for j, i in active:
                        obs[j], reward, terminated, truncated, _ = envs[j].step(actions[j])
                        returns[i] += reward
                        lengths[i] += 1
                        if observer is not None:
                            observer(i, int(lengths[i]) - 1, obs[j].copy())
                        if terminated or truncated:
                            obs[j] = 0.0
                        else:
                            still.append((j, i))
                    active = still
    finally:
        actor.train(was_training)
    return EvalResult(returns, lengths, sim)
