"""Physics perturbation, observation attacks and eval.py."""

import csv

import numpy as np
import pytest
import torch

from micro.envs import make_env
from micro.evaluation import run_episodes
from micro.nets import Actor, EnsembleCritic
from micro.robustness import (
    Attack,
    Physics,
    attack_delta,
    choose_perturbation,
    gaussian_symmetric_kl,
    scaled_physics,
)

ARRAYS = ("geom_friction", "body_mass", "body_inertia")


def model_arrays(model):
    return {name: getattr(model, name).copy() for name in ARRAYS} | {
        "gravity": model.opt.gravity.copy()
    }


def fixed_rollout(env, steps=40):
    obs, _ = env.reset(seed=7)
    rng = np.random.default_rng(7)
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append(obs)
    return np.stack(out)


@pytest.mark.parametrize("env_name", ["hopper", "halfcheetah", "walker2d"])
@pytest.mark.parametrize("axis, scale", [("friction", 0.2), ("gravity", 2.0), ("mass", 2.0)])
def test_scaling_changes_the_trajectory_and_is_restored_bitwise(env_name, axis, scale):
    env = make_env(env_name)
    model = env.unwrapped.model
    before = model_arrays(model)
    base = fixed_rollout(env)
    with scaled_physics(model, Physics(**{axis: scale})):
        changed = {k for k, v in model_arrays(model).items() if not np.array_equal(v, before[k])}
        perturbed = fixed_rollout(env)
    assert (
        changed
        == {
            "friction": {"geom_friction"},
            "gravity": {"gravity"},
            "mass": {"body_mass", "body_inertia"},
        }[axis]
    )
    assert np.abs(perturbed - base).max() > 1e-3
    after = model_arrays(model)
    for key, value in before.items():
        assert after[key].tobytes() == value.tobytes(), key
    np.testing.assert_array_equal(fixed_rollout(env), base)


def test_friction_scales_every_geom_and_all_three_coefficients():
    model = make_env("hopper").unwrapped.model
    before = model.geom_friction.copy()
    with scaled_physics(model, Physics(friction=0.5, gravity=3.0)):
        np.testing.assert_array_equal(model.geom_friction, before * 0.5)
        np.testing.assert_array_equal(model.opt.gravity, [0, 0, -9.81 * 3.0])
    assert model.geom_friction.shape[1] == 3 and model.geom_friction.shape[0] > 1


def test_restored_after_an_exception():
    model = make_env("walker2d").unwrapped.model
    before = model_arrays(model)
    with pytest.raises(RuntimeError), scaled_physics(model, Physics(2.0, 2.0, 2.0)):
        raise RuntimeError("boom")
    for key, value in model_arrays(model).items():
        np.testing.assert_array_equal(value, before[key])


# --- attacks ---


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return Actor(11, 3, [32, 32]), EnsembleCritic(11, 3, [32, 32], 2)


def test_min_q_picks_the_lowest_q_candidate(nets):
    actor, critics = nets
    g = torch.Generator().manual_seed(1)
    obs, deltas = torch.randn(6, 11, generator=g), 0.3 * torch.randn(6, 50, 11, generator=g)
    chosen = choose_perturbation(obs, deltas, "min_Q", actor, critics)
    for b in range(6):
        cands = [torch.zeros(11), *deltas[b]]
        qs = []
        for d in cands:
            a = torch.tanh(actor(obs[b : b + 1] + d)[0])
            qs.append(min(critics(obs[b : b + 1], a)[j, 0].item() for j in range(2)))
        torch.testing.assert_close(chosen[b], cands[int(np.argmin(qs))])


def test_action_diff_picks_the_largest_symmetric_kl(nets):
    actor, critics = nets
    g = torch.Generator().manual_seed(2)
    obs, deltas = torch.randn(4, 11, generator=g), 0.5 * torch.randn(4, 50, 11, generator=g)
    chosen = choose_perturbation(obs, deltas, "action_diff", actor, critics)
    normal = torch.distributions.Normal
    for b in range(4):
        m0, s0 = actor(obs[b : b + 1])
        kls = []
        for d in deltas[b]:
            m, s = actor(obs[b : b + 1] + d)
            p, q = normal(m0, s0.exp()), normal(m, s.exp())
            kls.append(
                (torch.distributions.kl_divergence(p, q) + torch.distributions.kl_divergence(q, p))
                .sum()
                .item()
            )
        torch.testing.assert_close(chosen[b], deltas[b, int(np.argmax(kls))])


def test_symmetric_kl_closed_form():
    m1, s1, m2, s2 = (
        torch.tensor([0.0]),
        torch.tensor([0.0]),
        torch.tensor([1.0]),
        torch.tensor([0.0]),
    )
    # unit variances: KL = (Δμ)²/2 each way
    assert gaussian_symmetric_kl(m1, s1, m2, s2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["random", "action_diff", "min_Q"])
def test_attack_never_exceeds_the_budget(nets, mode):
    actor, critics = nets
    std = torch.linspace(0.1, 3.0, 11)
    obs = torch.randn(8, 11)
    u = torch.rand(8, 1 if mode == "random" else 50, 11) * 2 - 1
    for eps in (0.05, 0.2):
        delta = attack_delta(obs, u, Attack(mode, eps), actor, critics, std)
        assert delta.shape == (8, 11)
        assert (delta.abs() <= eps * std + 1e-6).all()
        assert (delta.abs() > 0).any()


def test_eps_zero_is_the_clean_evaluation_and_reruns_are_identical(nets):
    actor, critics = nets
    std = np.ones(11)
    clean = run_episodes(actor, "hopper", 4, seed=5, n_envs=2)
    for mode in ("random", "action_diff", "min_Q"):
        zero = run_episodes(
            actor,
            "hopper",
            4,
            seed=5,
            n_envs=2,
            attack=Attack(mode, 0.0),
            critics=critics,
            obs_std=std,
        )
        np.testing.assert_array_equal(zero.returns, clean.returns)
    again_1, again_2 = (
        run_episodes(
            actor,
            "hopper",
            4,
            seed=5,
            n_envs=n,
            attack=Attack("min_Q", 0.1),
            critics=critics,
            obs_std=std,
        )
        for n in (4, 4)
    )
    np.testing.assert_array_equal(again_1.returns, again_2.returns)  # same n_envs: identical
    assert not np.allclose(again_1.returns, clean.returns)


# --- summaries of the sweeps ---


# --- eval.py ---


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))
