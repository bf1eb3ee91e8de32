"""micro/algos/rambo.py: the adversarial model update against plain re-derivations (SPEC §7)."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from micro.algos.rambo import (
    RAMBO,
    mixture_log_prob,
    normalized_advantage,
)
from micro.buffer import Batch, ReplayBuffer
from micro.config import Config, resolve_config
from micro.dynamics import EnsembleDynamics, fit_dynamics, holdout_mse
from micro.envs import termination_fn

OBS, ACT = 4, 2


def small_rambo(seed=0, **overrides) -> RAMBO:
    torch.manual_seed(seed)
    dyn = EnsembleDynamics(OBS, ACT, [16, 16], n_ensemble=4, n_elites=3, weight_decay=[1e-4] * 3)
    dyn.elites.copy_(torch.tensor([0, 2, 3]))
    cfg = Config(algo="rambo", hidden_dims=(16, 16), **overrides)
    return RAMBO(cfg, OBS, ACT, dyn)


def real_buffer(n=300, seed=0, behavior=False) -> ReplayBuffer:
    """A linear system with a reward, for a model to fit; the actions uniform, or with
    ``behavior`` a function of the state plus a little noise (for behaviour cloning)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    if behavior:
        act = torch.tanh(obs[:, :ACT] + 0.05 * act)
    next_obs = 0.9 * obs + 0.1 * act.sum(-1, keepdim=True)
    reward = obs[:, :1] - 0.5 * act[:, :1].pow(2)
    buf = ReplayBuffer(n, OBS, ACT, "cpu")
    buf.add(Batch(obs, act, next_obs, reward, torch.zeros(n, 1)))
    return buf


def test_mixture_log_prob_is_the_elites_average_density():
    torch.manual_seed(0)
    e, b, d = 3, 5, 4
    mean, std = torch.randn(e, b, d), torch.rand(e, b, d) + 0.2
    sample = mean[1] + std[1] * torch.randn(b, d)
    got = mixture_log_prob(sample, mean, std)
    for i in range(b):  # float64, one member and one dimension at a time
        density = 0.0
        for m in range(e):
            log_p = 0.0
            for j in range(d):
                mu, s, x = (float(t[m, i, j]) for t in (mean, std, sample.expand(e, b, d)))
                log_p += -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
            density += math.exp(log_p) / e
        assert float(got[i]) == pytest.approx(math.log(density), rel=1e-6)


def test_mixture_log_prob_does_not_underflow():
    """A sample far from every member: the official exp-then-log would give log 0 = -inf."""
    mean, std = torch.zeros(2, 1, 3), torch.full((2, 1, 3), 0.01)
    got = mixture_log_prob(torch.full((1, 3), 100.0), mean, std)
    assert torch.isfinite(got).all() and float(got) < -1e7


def test_normalized_advantage_population_and_unbiased():
    a = torch.tensor([1.0, 2.0, 4.0, 9.0])
    mean = a.mean()
    pop = math.sqrt(sum((float(x) - float(mean)) ** 2 for x in a) / 4)
    unbiased = math.sqrt(sum((float(x) - float(mean)) ** 2 for x in a) / 3)
    torch.testing.assert_close(normalized_advantage(a), (a - mean) / pop)
    torch.testing.assert_close(normalized_advantage(a, "unbiased"), (a - mean) / (unbiased + 1e-6))


def _fixed_draws(agent, real, seed=1):
    g = torch.Generator().manual_seed(seed)
    b = 32
    obs = real.observations[torch.randint(real.size, (b,), generator=g)]
    act = torch.rand(b, ACT, generator=g) * 2 - 1
    idx = torch.randint(real.size, (agent.dynamics.n_ensemble, b), generator=g)
    d = real.storage
    sl_in = torch.cat([d.observations[idx], d.actions[idx]], -1)
    sl_tg = torch.cat([d.next_observations[idx] - d.observations[idx], d.rewards[idx]], -1)
    noise = torch.randn(b, OBS + 1, generator=g)
    pick = torch.randint(agent.dynamics.n_elites, (b,), generator=g)
    return obs, act, sl_in, sl_tg, noise, pick


def test_the_loss_is_the_mean_form_re_derived():
    """λ·mean(log p·A) + L_sup, A normalised with the population std, from the model's own
    outputs computed separately for each term."""
    agent = small_rambo(adv_weight=0.5)
    real = real_buffer()
    obs, act, sl_in, sl_tg, noise, pick = _fixed_draws(agent, real)
    done_fn = termination_fn("halfcheetah")
    loss, next_obs, metrics = agent.model_loss(obs, act, sl_in, sl_tg, done_fn, noise, pick)
    dyn = agent.dynamics
    mean, logvar = dyn(torch.cat([obs, act], -1))
    elites = dyn.elites
    mu = torch.cat([mean[elites][..., :-1] + obs, mean[elites][..., -1:]], -1)
    sd = (0.5 * logvar[elites]).exp()
    rows = torch.arange(len(obs))
    sample = (mu[pick, rows] + sd[pick, rows] * noise).detach()
    torch.testing.assert_close(next_obs, sample[:, :-1])
    log_p = mixture_log_prob(sample, mu, sd)
    with torch.no_grad():
        q = lambda s, a: agent.critics(s, a).min(0).values  # noqa: E731
        nxt = sample[:, :-1]
        adv = sample[:, -1] + 0.99 * q(nxt, torch.tanh(agent.actor(nxt)[0])) - q(obs, act)
        adv = (adv - adv.mean()) / adv.std(unbiased=False)
    sl_mean, sl_logvar = dyn(sl_in)
    nll = (((sl_mean - sl_tg) ** 2) * torch.exp(-sl_logvar)).mean((1, 2)) + sl_logvar.mean((1, 2))
    sl = nll.sum() + 0.001 * (dyn.max_logvar.sum() - dyn.min_logvar.sum())
    expected = 0.5 * (log_p * adv).mean() + sl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["sl_loss"], sl.detach(), rtol=1e-5, atol=1e-5)


def test_the_official_sum_form_takes_the_same_adam_step():
    """The official code minimises the per-row vector λ·log p_i·A_i + L_sup (decay inside):
    the gradient of its batch sum, B times the mean form's. Under Adam both take the same
    step; summing the adversarial term alone (L_sup once) would not."""

    def step(form, eps=1e-8):
        agent = small_rambo(adv_weight=3e-4)
        real = real_buffer()
        obs, act, sl_in, sl_tg, noise, pick = _fixed_draws(agent, real)
        dyn = agent.dynamics
        opt = torch.optim.Adam(dyn.parameters(), lr=3e-4, eps=eps)  # plain Adam, decay in loss
        for _ in range(3):
            agent.cfg = dataclasses.replace(agent.cfg, adv_weight=0.0)
            sl_part = agent.model_loss(
                obs, act, sl_in, sl_tg, termination_fn("hopper"), noise, pick
            )[0]
            agent.cfg = dataclasses.replace(agent.cfg, adv_weight=3e-4)
            full = agent.model_loss(obs, act, sl_in, sl_tg, termination_fn("hopper"), noise, pick)[
                0
            ]
            adv_mean = full - sl_part  # λ·mean(log p·A)
            sup = sl_part + dyn.decay_loss()
            b = len(obs)
            loss = {
                "mean": adv_mean + sup,
                "official sum": b * adv_mean + b * sup,  # Σ_i (λ log p_i A_i + L_sup)
                "adversary summed alone": b * adv_mean + sup,
            }[form]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in dyn.parameters()])

    mean, official, trap = step("mean"), step("official sum"), step("adversary summed alone")
    start = torch.cat([p.detach().flatten() for p in small_rambo().dynamics.parameters()])
    moved = (mean - start).abs()
    assert moved.max() > 5e-4  # 3 steps of lr 3e-4
    # Adam's ε is the only difference: with ε scaled by B as the gradient is, the same steps
    # to float rounding; with the same ε, the same but where a gradient is as small as ε
    torch.testing.assert_close(step("official sum", eps=32 * 1e-8), mean, rtol=1e-5, atol=1e-7)
    close = (mean - official).abs() <= 1e-3 * moved.max()
    assert close.float().mean() > 0.99
    assert (mean - trap).abs().max() > 0.1 * moved.max()


def test_the_supervised_term_alone_keeps_a_fitted_model():
    """λ_adv = 0: the update is the supervised loss, which keeps the fit's holdout error."""
    torch.manual_seed(0)
    real = real_buffer(n=600)
    data = real.all()
    dyn = EnsembleDynamics(OBS, ACT, [32, 32], n_ensemble=4, n_elites=3, weight_decay=[1e-5] * 3)
    fit_dynamics(
        dyn, data.observations, data.actions, data.next_observations, data.rewards,
        max_epochs=60, progress=False,
    )  # fmt: skip
    dyn.requires_grad_(False)
    inputs = torch.cat([data.observations, data.actions], -1)
    targets = torch.cat([data.next_observations - data.observations, data.rewards], -1)
    before = float(holdout_mse(dyn, inputs, targets)[dyn.elites].mean())
    agent = RAMBO(Config(algo="rambo", hidden_dims=(16, 16), adv_steps=200), OBS, ACT, dyn)
    agent.cfg = dataclasses.replace(agent.cfg, adv_weight=0.0)
    info = agent.model_update(real, termination_fn("halfcheetah"))
    after = float(holdout_mse(dyn, inputs, targets)[dyn.elites].mean())
    assert info["adv_loss"] == 0.0 and math.isfinite(info["sl_loss"])
    assert after < 1.2 * before, (before, after)


class LinearCritic(nn.Module):
    """Q_j(s, a) = s[0] for both critics: a state is worth its first coordinate."""

    def forward(self, obs, act):
        return obs[:, 0].expand(2, -1)


def test_the_adversary_lowers_the_value_of_the_next_states():
    """With critics that value s'[0], the adversarial term moves the model's predictions
    towards lower r + γ s'[0] for the policy's actions: the worst case for the policy."""
    agent = small_rambo(adv_weight=1.0, adv_steps=50, rollout_length=1)
    agent.critics = LinearCritic()
    real = real_buffer()
    dyn = agent.dynamics
    dyn.requires_grad_(True)

    def predicted_value():
        with torch.no_grad():
            torch.manual_seed(7)
            obs = real.observations[:200]
            act = agent.actor.sample_action(obs)
            mean, _ = dyn.elite_mean_std(obs, act)
            return float((mean[..., -1] + 0.99 * mean[..., 0]).mean())

    before = predicted_value()
    # the supervised term off: what moves the model is the adversary alone
    dyn_sl = agent.model_loss
    agent.model_loss = lambda *a, **k: (lambda out: (out[0] - out[2]["sl_loss"], out[1], out[2]))(
        dyn_sl(*a, **k)
    )
    agent.model_update(real, termination_fn("halfcheetah"))
    assert predicted_value() < before - 0.05


def test_rambo_trains_its_model_and_saves_it_with_its_optimizer():
    agent = small_rambo()
    assert agent.trains_model and agent.model_update_freq == 1000
    assert set(agent.named_optimizers()) == {"critic", "actor", "alpha", "dynamics"}
    assert any(k.startswith("dynamics.") for k in agent.training_state()["networks"])
    frozen = small_rambo(adv_weight=0.0)  # the official code never updates the model then
    assert not frozen.trains_model and "dynamics" not in frozen.named_optimizers()
    assert not any(k.startswith("dynamics.") for k in frozen.training_state()["networks"])


def test_behaviour_cloning_moves_the_actor_to_the_data():
    agent = small_rambo(bc_epochs=30, bc_batch_size=32, actor_lr=1e-3)
    real = real_buffer(n=400, behavior=True)
    data = real.all()

    def mse():
        with torch.no_grad():
            return float(
                (agent.actor.deterministic(data.observations) - data.actions).pow(2).mean()
            )

    before = mse()
    info = agent.pretrain(real)
    after = mse()
    assert info["bc_steps"] == 30 * (360 // 32) and info["bc_skipped_batches"] == 0
    assert after < 0.5 * before
    assert small_rambo(bc_epochs=0).pretrain(real) is None


def test_behaviour_cloning_skips_batches_with_an_action_at_the_bound():
    agent = small_rambo(bc_epochs=1, bc_batch_size=360)
    real = real_buffer(n=400)
    real.storage.actions[:, 0] = 1.0  # every row saturated: log π is infinite there
    info = agent.pretrain(real)
    assert (info["bc_steps"], info["bc_skipped_batches"]) == (0, 1)


def test_official_configs():
    c = resolve_config("hopper-medium-replay-v2", overrides={"algo": "rambo"})
    assert (c.rollout_length, c.adv_weight, c.real_ratio, c.epoch) == (2, 3e-4, 0.5, 2000)
    assert (c.bc_epochs, c.lr_scheduler, c.clamp_target, c.rollout_freq) == (50, False, False, 1000)
    assert (c.dynamics_update_freq, c.adv_steps, c.adv_lr, c.adv_batch_size) == (
        1000,
        1000,
        3e-4,
        256,
    )
    assert c.adv_std == "population" and not c.adv_shared_sl_batch
    c = resolve_config("walker2d-medium-v2", overrides={"algo": "rambo"})
    assert (c.rollout_length, c.adv_weight) == (5, 0.0)
    c = resolve_config("walker2d-medium-expert-v2", overrides={"algo": "rambo"})
    assert (c.rollout_length, c.adv_weight) == (2, 3e-4)
