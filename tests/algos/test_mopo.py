"""micro/algos/mopo.py: MOPO's reward penalty and the rollout step that stores it."""

from functools import partial

import pytest
import torch

from micro.algos.mopo import MOPO, reward_penalty
from micro.buffer import ReplayBuffer
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.envs import termination_fn
from micro.nets import Actor
from micro.rollout import model_rollout


def test_reward_penalty_is_the_largest_member_std_norm():
    # 2 members, 1 row, 2 dims: stds (3, 4) -> 5 and (1, 1) -> √2; max = 5
    logvar = torch.log(torch.tensor([[[9.0, 16.0]], [[1.0, 1.0]]]))
    torch.testing.assert_close(reward_penalty(logvar), torch.tensor([5.0]))


def test_mopo_rollout_stores_the_penalized_reward():
    torch.manual_seed(0)
    dyn = EnsembleDynamics(4, 2, [8], n_ensemble=5, n_elites=3, weight_decay=[0, 0])
    actor = Actor(4, 2, [8])
    start = torch.randn(30, 4) * 0.1
    done = termination_fn("halfcheetah")
    plain, penalized = ReplayBuffer(100, 4, 2, "cpu"), ReplayBuffer(100, 4, 2, "cpu")
    mopo = MOPO(Config(algo="mopo", penalty_coef=0.7, hidden_dims=(8,)), 4, 2, dyn)
    torch.manual_seed(1)
    info0 = model_rollout(actor, lambda o, a: (*dyn.sample_step(o, a), {}), start, 2, done, plain)
    torch.manual_seed(1)  # the same draws: the same states, only the rewards differ
    info = model_rollout(actor, partial(mopo.model_step, dyn), start, 2, done, penalized)
    a, b = plain.all(), penalized.all()
    assert len(a) == len(b) == 60 and info["transitions"] == info0["transitions"] == 60
    torch.testing.assert_close(b.next_observations, a.next_observations, rtol=1e-5, atol=1e-5)
    u = torch.stack(  # max over all 5 members of the norm of the predicted std
        [
            max((0.5 * dyn(torch.cat([o, x]).unsqueeze(0))[1][e, 0]).exp().norm() for e in range(5))
            for o, x in zip(b.observations, b.actions, strict=True)
        ]
    )
    torch.testing.assert_close(b.rewards[:, 0], a.rewards[:, 0] - 0.7 * u, rtol=1e-4, atol=1e-4)
    logvar = dyn(torch.cat([b.observations, b.actions], -1))[1]
    assert info["reward_penalty"] == pytest.approx(
        float(reward_penalty(logvar.detach()).mean()), rel=1e-4
    )


def test_mopos_target_is_not_clamped():
    """SPEC §6: MOPO learns with the plain soft target; the clamp at 0 would remove exactly the
    negative targets its reward penalty makes."""
    from micro.config import resolve_config

    cfg = resolve_config("hopper-medium-v2", overrides={"algo": "mopo", "hidden_dims": (8,)})
    assert not cfg.clamp_target
    assert resolve_config("hopper-medium-v2").clamp_target  # MICRO's is clamped
    torch.manual_seed(0)
    mopo = MOPO(cfg, 3, 2, None)
    r, d = torch.tensor([-5.0, 1.0]), torch.tensor([0.0, 1.0])
    y = mopo.bellman_target(r, d, torch.tensor([1.0, 9.0]), torch.zeros(2))
    torch.testing.assert_close(y, torch.tensor([-5.0 + 0.99, 1.0]))
