"""micro/algos/sac.py: the SAC losses, temperature and update, and the target of every
algorithm (SAC's with MICRO's, MOBILE's or MOPO's conservatism) against a plain loop
re-derivation with the same weights and noise."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from micro.algos import algorithm_class
from micro.algos.sac import TargetNoise, actor_loss, alpha_loss, critic_loss
from micro.buffer import Batch
from micro.config import Config
from micro.dynamics import EnsembleDynamics

OBS, ACT, B, N_REAL, K = 5, 2, 9, 3, 4


def member_forward(layers, e, x, activation):
    for i, layer in enumerate(layers):
        x = x @ layer.weight[e] + layer.bias[e, 0]
        if i < len(layers) - 1:
            x = activation(x)
    return x


def q_ref(critics, j, s, a):
    return member_forward(critics.net.layers, j, torch.cat([s, a]), torch.relu).squeeze()


def pi_ref(actor, s, eps):
    h = actor.backbone(s)
    mean, log_std = actor.mean(h), actor.log_std(h).clamp(-5, 2)
    u = mean + log_std.exp() * eps
    a = torch.tanh(u)
    logp = (
        torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum()
        - torch.log(1 - a**2 + 1e-6).sum()
    )
    return a, logp


def dyn_ref(model, e, s, a):
    x = (torch.cat([s, a]) - model.input_mean) / model.input_std
    out = member_forward(model.layers, e, x, lambda v: v * torch.sigmoid(v))
    mean, lv = out[: OBS + 1], out[OBS + 1 :]
    lv = model.max_logvar - nn.functional.softplus(model.max_logvar - lv)
    lv = model.min_logvar + nn.functional.softplus(lv - model.min_logvar)
    return mean[:OBS] + s, (0.5 * lv[:OBS]).exp()


def make_agent(**overrides):
    torch.manual_seed(0)
    cfg = Config(**{"hidden_dims": (16, 16), "num_samples": K, "penalty_coef": 0.7, **overrides})
    dyn = EnsembleDynamics(OBS, ACT, [12, 12], n_ensemble=4, n_elites=3, weight_decay=[0, 0, 0])
    with torch.no_grad():
        dyn.elites.copy_(torch.tensor([0, 2, 3]))
        dyn.input_mean.normal_()
        dyn.input_std.uniform_(0.5, 2.0)
        dyn.min_logvar.fill_(-3.0)
    agent = algorithm_class(cfg.algo)(cfg, OBS, ACT, dyn.requires_grad_(False))
    with torch.no_grad():  # targets differ from the online critics, and log α is not 0
        for p in agent.target_critics.parameters():
            p.add_(0.1 * torch.randn_like(p))
        agent.log_alpha.fill_(-1.3)
    return agent


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(B, OBS, generator=g),
        torch.rand(B, ACT, generator=g) * 2 - 1,
        torch.randn(B, OBS, generator=g),
        torch.randn(B, 1, generator=g),
        (torch.rand(B, 1, generator=g) < 0.3).float(),
    )


def make_noise(max_q=False, seed=2):
    g = torch.Generator().manual_seed(seed)
    m = B - N_REAL
    return TargetNoise(
        next_action=torch.randn(B * 10 if max_q else B, ACT, generator=g),
        model_state=torch.randn(K, 3, m, OBS, generator=g),
        model_action=torch.randn(K * 3 * m, ACT, generator=g),
    )


def on(device, agent, batch, noise=None):
    """A copy of the agent, the batch and the noise on ``device``."""
    moved = copy.deepcopy(agent).to(device)
    batch = Batch(*(x.to(device) for x in batch.fields()))
    if noise is not None:
        noise = TargetNoise(*(x.to(device) for x in dataclasses.astuple(noise)))
    return moved, batch, noise


def target_ref(agent, batch, noise, n_real):
    """Row by row, elite by elite, sample by sample."""
    cfg, alpha = agent.cfg, agent.alpha
    elites = agent.dynamics.elites.tolist()
    ys, us = [], []
    for i in range(B):
        s2 = batch.next_observations[i]
        if cfg.max_q_backup:
            per_critic = []
            for j in range(cfg.num_q_ensemble):
                actions = [
                    pi_ref(agent.actor, s2, noise.next_action[i * 10 + k])[0] for k in range(10)
                ]
                qs = [q_ref(agent.target_critics, j, s2, a) for a in actions]
                per_critic.append(max(qs))
            v = min(per_critic)
        else:
            a2, logp = pi_ref(agent.actor, s2, noise.next_action[i])
            v = min(q_ref(agent.target_critics, j, s2, a2) for j in range(cfg.num_q_ensemble))
            if not cfg.deterministic_backup:
                v = v - alpha * logp
        u = torch.tensor(0.0)
        if i >= n_real and cfg.algo != "mopo":
            m = i - n_real
            v_bar = []
            for ei, e in enumerate(elites):
                mean, std = dyn_ref(agent.dynamics, e, batch.observations[i], batch.actions[i])
                vals = []
                for k in range(K):
                    s3 = mean + std * noise.model_state[k, ei, m]
                    flat = (k * len(elites) + ei) * (B - n_real) + m
                    a3, _ = pi_ref(agent.actor, s3, noise.model_action[flat])
                    vals.append(
                        min(
                            q_ref(agent.target_critics, j, s3, a3)
                            for j in range(cfg.num_q_ensemble)
                        )
                    )
                v_bar.append(sum(vals) / K)
            mean_v = sum(v_bar) / len(v_bar)
            if cfg.algo == "micro":  # mean minus worst member
                u = mean_v - min(v_bar)
            else:  # MOBILE: sample std over the elites, n - 1 in the denominator
                u = (sum((x - mean_v) ** 2 for x in v_bar) / (len(v_bar) - 1)).sqrt()
        r, not_done = batch.rewards[i, 0], 1 - batch.terminals[i, 0]
        if cfg.algo == "micro":  # the penalty inside the discount
            y = r + cfg.gamma * not_done * (v - cfg.penalty_coef * u)
        else:  # MOBILE: outside it; MOPO: u = 0 (its penalty is in the model rewards)
            y = r - cfg.penalty_coef * u + cfg.gamma * not_done * v
        ys.append(torch.clamp(y, min=0.0))
        us.append(u)
    return torch.stack(ys), torch.stack(us)


@pytest.mark.parametrize("algo", ["micro", "mobile", "mopo"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"deterministic_backup": True}, {"max_q_backup": True}, {"auto_alpha": False}],
    ids=["entropy", "deterministic_backup", "max_q_backup", "fixed_alpha"],
)
def test_target_equals_loop_re_derivation(overrides, algo, device):
    """The batched target on each device against the loop on the CPU, same weights and noise."""
    agent = make_agent(algo=algo, **overrides)
    batch, noise = make_batch(), make_noise(max_q=overrides.get("max_q_backup", False))
    batch.rewards[N_REAL:] += 3.0  # keep MOBILE's r - beta P mostly above the clamp
    moved, batch_d, noise_d = on(device, agent, batch, noise)
    y, u = (t.cpu() for t in moved.target(batch_d, N_REAL, noise_d))
    y_ref, u_ref = target_ref(agent, batch, noise, N_REAL)
    torch.testing.assert_close(u, u_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    assert (u[:N_REAL] == 0).all()  # real rows get the plain backup
    if algo == "mopo":
        assert (u == 0).all()  # no value penalty: MOPO's is in the rollouts' rewards
    else:
        assert (u[N_REAL:] > 0).all()  # the uncertainty set really spreads
        assert (y > 0).sum() > N_REAL  # not a test of the clamp alone


def test_deterministic_backup_drops_exactly_the_entropy_term():
    batch, noise = make_batch(), make_noise()
    batch.rewards += 100.0  # keep every target above the clamp
    with_entropy, without = make_agent(), make_agent(deterministic_backup=True)
    y1, u1 = with_entropy.target(batch, N_REAL, noise)
    y2, u2 = without.target(batch, N_REAL, noise)
    torch.testing.assert_close(u1, u2)
    logp = with_entropy.actor.sample(batch.next_observations, noise.next_action).log_prob
    entropy_term = 0.99 * (1 - batch.terminals[:, 0]) * with_entropy.alpha * logp
    torch.testing.assert_close(y2 - y1, entropy_term, rtol=1e-4, atol=1e-4)


def test_all_real_batch_skips_the_model(device):
    agent, batch, noise = on(device, make_agent(), make_batch(), make_noise())
    agent.dynamics = None  # would fail if touched
    y, u = agent.target(batch, B, noise)
    assert (u == 0).all() and y.shape == (B,)


def test_losses():
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([1.0, 1.0])
    assert critic_loss(q, y).item() == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert actor_loss(torch.tensor([1.0, -1.0]), q, torch.tensor(0.5)).item() == pytest.approx(
        ((0.5 - 1) + (-0.5 - 2)) / 2
    )
    log_alpha = torch.tensor(0.3, requires_grad=True)
    loss = alpha_loss(log_alpha, torch.tensor([-1.0, -3.0]), -2.0)
    assert loss.item() == pytest.approx(-0.3 * (-3 + -5) / 2)


def test_update_moves_networks_and_targets(device):
    agent, batch, _ = on(device, make_agent(), make_batch())
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    target_before = [p.clone() for p in agent.target_critics.parameters()]
    metrics = agent.update(batch, N_REAL)
    assert set(metrics) >= {
        "critic_loss",
        "actor_loss",
        "alpha_loss",
        "alpha",
        "uncertainty",
        "q_mean",
    }
    for name in ("actor.mean.weight", "critics.net.layers.0.weight", "log_alpha"):
        assert not torch.equal(before[name], dict(agent.named_parameters())[name]), name
    for t_new, t_old, src in zip(
        agent.target_critics.parameters(), target_before, agent.critics.parameters(), strict=True
    ):
        torch.testing.assert_close(t_new, 0.995 * t_old + 0.005 * src.detach())
    assert not any(k.startswith("dynamics.") for k in agent.state_dict())


def test_fixed_alpha_stays_fixed():
    cfg = Config(hidden_dims=(8,), auto_alpha=False)
    agent = algorithm_class(cfg.algo)(cfg, OBS, ACT, None)
    assert agent.alpha.item() == pytest.approx(0.1)
    agent.update(make_batch(), B)
    assert agent.alpha.item() == pytest.approx(0.1) and agent.alpha_optim is None


def test_auto_alpha_starts_at_one_and_is_clamped():
    agent = algorithm_class("micro")(Config(hidden_dims=(8,)), OBS, ACT, None)
    assert agent.alpha.item() == 1.0
    with torch.no_grad():
        agent.log_alpha.fill_(2.0)
    assert agent.alpha.item() == 1.0


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reduced_matmul_precision_is_opt_in_and_close(precision, device):
    """matmul_precision high (TF32 on CUDA) and medium (bfloat16 products where the hardware has
    them) must stay within bfloat16 rounding of the exact target; the default leaves float32
    products exact."""
    agent, batch, noise = on(device, make_agent(hidden_dims=(256, 256)), make_batch(), make_noise())
    assert torch.get_float32_matmul_precision() == "highest"
    y_exact, u_exact = agent.target(batch, N_REAL, noise)
    try:
        torch.set_float32_matmul_precision(precision)
        y_fast, u_fast = agent.target(batch, N_REAL, noise)
    finally:
        torch.set_float32_matmul_precision("highest")
    scale = y_exact.abs().max()
    assert (y_fast - y_exact).abs().max() <= 0.02 * scale
    assert (u_fast - u_exact).abs().max() <= 0.02 * scale
