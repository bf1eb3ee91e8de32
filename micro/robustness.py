"""Robustness evaluation (SPEC §5): physics perturbations and observation attacks.

Physics is scaled in the loaded MuJoCo model's arrays, in memory, and restored exactly
afterwards — every geom's friction (all three coefficients), gravity, and body masses (with
their inertias, i.e. a uniform change of density). Attacks perturb only what the policy sees;
the simulator is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from micro import MicroError
from micro.nets import Actor, EnsembleCritic

ATTACK_MODES = ("random", "action_diff", "min_Q")
N_CANDIDATES = 50
PUBLISHED_FRICTION = tuple(np.linspace(0.5, 1.5, 10).round(6).tolist())
PUBLISHED_GRAVITY = tuple(np.linspace(0.5, 5.0, 10).round(6).tolist())
PUBLISHED_EPS = tuple(np.linspace(0.0, 0.2, 10).round(6).tolist())


# --- physics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Physics:
    friction: float = 1.0
    gravity: float = 1.0
    mass: float = 1.0


@contextlib.contextmanager
def scaled_physics(model, physics: Physics) -> Iterator[None]:
    """Scale a loaded ``mujoco.MjModel`` in place; restore the original arrays on exit."""
    saved = {
        name: getattr(model, name).copy() for name in ("geom_friction", "body_mass", "body_inertia")
    }
    saved_gravity = model.opt.gravity.copy()
    try:
        model.geom_friction[:] = saved["geom_friction"] * physics.friction
        model.body_mass[:] = saved["body_mass"] * physics.mass
        model.body_inertia[:] = saved["body_inertia"] * physics.mass
        model.opt.gravity[:] = saved_gravity * physics.gravity
        yield
    finally:
        for name, value in saved.items():
            getattr(model, name)[:] = value
        model.opt.gravity[:] = saved_gravity


# --- attacks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    mode: str  # "none" or one of ATTACK_MODES
    eps: float = 0.0


def gaussian_symmetric_kl(mean_a, log_std_a, mean_b, log_std_b) -> torch.Tensor:
    """KL(a‖b) + KL(b‖a) for diagonal Gaussians, summed over the last axis. The tanh squashing is
    the same bijection for both policies, so this is also the KL of the squashed policies."""
    var_a, var_b = (2 * log_std_a).exp(), (2 * log_std_b).exp()
    diff2 = (mean_a - mean_b).pow(2)
    kl_ab = log_std_b - log_std_a + (var_a + diff2) / (2 * var_b) - 0.5
    kl_ba = log_std_a - log_std_b + (var_b + diff2) / (2 * var_a) - 0.5
    return (kl_ab + kl_ba).sum(-1)


@torch.no_grad()
def choose_perturbation(
    obs: torch.Tensor,
    deltas: torch.Tensor,
    mode: str,
    actor: Actor,
    critics: EnsembleCritic,
) -> torch.Tensor:
    """Pick one candidate perturbation per row, all rows and candidates scored in one batch.

    obs: [B, obs_dim]; deltas: [B, K, obs_dim]. ``action_diff`` maximizes the symmetric KL
    between π(·|s) and π(·|s+δ); ``min_Q`` minimizes min_j Q_j(s, π_det(s+δ)) over the
    candidates plus δ = 0. Returns the chosen δ: [B, obs_dim].
    """
    b, k, d = deltas.shape
    if mode == "min_Q":
        deltas = torch.cat(
            [torch.zeros(b, 1, d, dtype=deltas.dtype, device=deltas.device), deltas], 1
        )
        k += 1
    candidates = (obs.unsqueeze(1) + deltas).reshape(b * k, d)
    if mode == "action_diff":
        mean, log_std = actor(candidates)
        mean0, log_std0 = actor(obs)
        score = gaussian_symmetric_kl(
            mean0.repeat_interleave(k, 0), log_std0.repeat_interleave(k, 0), mean, log_std
        ).view(b, k)
        best = score.argmax(1)
    elif mode == "min_Q":
        actions = torch.tanh(actor(candidates)[0])
        q = critics(obs.repeat_interleave(k, 0), actions).min(0).values.view(b, k)
        best = q.argmin(1)
    else:
        raise ValueError(mode)
    return deltas[torch.arange(b, device=deltas.device), best]


def attack_delta(
    obs: torch.Tensor,
    u: torch.Tensor,
    attack: Attack,
    actor: Actor,
    critics: EnsembleCritic | None,
    obs_std: torch.Tensor,
) -> torch.Tensor:
    """The perturbation an attack adds to ``obs`` [B, obs_dim], from uniform draws ``u`` in
    [-1, 1] of shape [B, K, obs_dim]: candidates δ = u · ε · std, so |δ_d| <= ε · std_d."""
    deltas = u * (attack.eps * obs_std)
    if attack.mode == "random":
        return deltas[:, 0]
    if critics is None and attack.mode == "min_Q":
        raise MicroError("the min_Q attack needs the policy's critics")
    return choose_perturbation(obs, deltas, attack.mode, actor, critics)
