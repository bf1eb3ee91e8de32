import math

import pytest
import torch
from torch import nn

from micro.nets import Actor, EnsembleCritic, EnsembleMLP, polyak_update


def per_member_mlp(ens: EnsembleMLP, e: int, activation) -> nn.Sequential:
    """Plain nn.Linear layers holding member e's weights."""
    layers = []
    for i, layer in enumerate(ens.layers):
        lin = nn.Linear(layer.in_dim, layer.out_dim)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[e].T)
            lin.bias.copy_(layer.bias[e, 0])
        layers.append(lin)
        if i < len(ens.layers) - 1:
            layers.append(activation())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("init", ["torch", "trunc_normal"])
def test_ensemble_mlp_equals_member_mlps(init):
    torch.manual_seed(0)
    ens = EnsembleMLP(5, [16, 16], 3, n_members=4, activation=nn.ReLU, init=init)
    shared = torch.randn(10, 5)
    separate = torch.randn(4, 10, 5)
    out_shared, out_separate = ens(shared), ens(separate)
    assert out_shared.shape == (4, 10, 3) and out_separate.shape == (4, 10, 3)
    for e in range(4):
        ref = per_member_mlp(ens, e, nn.ReLU)
        torch.testing.assert_close(out_shared[e], ref(shared), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_separate[e], ref(separate[e]), rtol=1e-5, atol=1e-6)


def test_members_are_initialized_independently():
    ens = EnsembleMLP(5, [16], 1, n_members=3)
    w = ens.layers[0].weight
    assert not torch.equal(w[0], w[1])
    bound = 1 / math.sqrt(5)
    assert w.abs().max() <= bound


def test_critic_shapes_and_values():
    torch.manual_seed(1)
    critic = EnsembleCritic(4, 2, [8, 8], n=2)
    obs, act = torch.randn(7, 4), torch.randn(7, 2)
    q = critic(obs, act)
    assert q.shape == (2, 7)
    ref = per_member_mlp(critic.net, 1, nn.ReLU)(torch.cat([obs, act], -1)).squeeze(-1)
    torch.testing.assert_close(q[1], ref, rtol=1e-5, atol=1e-6)


def test_actor_log_prob_matches_torch_distributions():
    torch.manual_seed(2)
    actor = Actor(6, 3, [32, 32])
    obs = torch.randn(50, 6)
    noise = torch.randn(50, 3)
    out = actor.sample(obs, noise)
    mean, log_std = actor(obs)
    pre = mean + log_std.exp() * noise
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre).sum(-1)
    ref = ref - torch.log(1 - torch.tanh(pre) ** 2 + 1e-6).sum(-1)
    torch.testing.assert_close(out.log_prob, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.action, torch.tanh(pre))
    assert out.action.abs().max() < 1
    torch.testing.assert_close(actor.deterministic(obs), torch.tanh(mean))


def test_log_std_is_clamped():
    actor = Actor(2, 1, [4])
    with torch.no_grad():
        actor.log_std.bias.fill_(100.0)
    assert actor(torch.zeros(3, 2))[1].max().item() == 2.0
    with torch.no_grad():
        actor.log_std.bias.fill_(-100.0)
    assert actor(torch.zeros(3, 2))[1].min().item() == -5.0


def test_polyak():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = 0.995 * a.weight.detach() + 0.005 * b.weight.detach()
    polyak_update(a, b, 0.005)
    torch.testing.assert_close(a.weight.detach(), expected)


def test_shared_input_gradient_sums_the_members():
    """A 2-D input is broadcast to every member: its gradient is the sum of the members'."""
    torch.manual_seed(3)
    ens = EnsembleMLP(5, [16], 1, n_members=3, activation=nn.ReLU)
    x = torch.randn(8, 5, requires_grad=True)
    ens(x).sum().backward()
    expected = torch.zeros_like(x)
    for e in range(3):
        xe = x.detach().clone().requires_grad_(True)
        per_member_mlp(ens, e, nn.ReLU)(xe).sum().backward()
        expected += xe.grad
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_actor_heads_get_their_own_gradients():
    """The two heads run as one product; each head's weights still get exactly its gradient."""
    torch.manual_seed(4)
    actor = Actor(6, 3, [16])
    obs = torch.randn(20, 6)
    mean, log_std = actor(obs)
    (mean.sin().sum() + log_std.cos().sum()).backward()
    h = actor.backbone(obs).detach()
    ref_mean = nn.functional.linear(h, actor.mean.weight, actor.mean.bias)
    ref_log_std = nn.functional.linear(h, actor.log_std.weight, actor.log_std.bias).clamp(-5, 2)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(log_std, ref_log_std)
    torch.testing.assert_close(actor.mean.weight.grad, ref_mean.cos().T @ h, rtol=1e-5, atol=1e-5)
    inside = ((ref_log_std > -5) & (ref_log_std < 2)).float()  # the clamp passes these only
    grad_std = (-ref_log_std.sin() * inside).T @ h
    torch.testing.assert_close(actor.log_std.weight.grad, grad_std, rtol=1e-5, atol=1e-5)
