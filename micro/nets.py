"""Networks: batched ensembles with a leading member axis, and the tanh-Gaussian actor — one
(``Actor``) or a population's, one per run, evaluated together (``PopulationActor``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
TANH_EPS = 1e-6


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated as one batched matmul.

    weight: [E, in, out], bias: [E, 1, out]. Input [B, in] (shared by all members) or
    [E, B, in] (one batch per member); output [E, B, out].
    """

    def __init__(self, in_dim: int, out_dim: int, n_members: int, init: str = "torch") -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.n_members = in_dim, out_dim, n_members
        self.weight = nn.Parameter(torch.empty(n_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        if init == "torch":  # what nn.Linear does, member by member
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        elif init == "trunc_normal":  # the dynamics model's (MBPO/OfflineRL-Kit) init
            nn.init.trunc_normal_(self.weight, std=1.0 / (2.0 * math.sqrt(in_dim)))
            nn.init.zeros_(self.bias)
        else:
            raise ValueError(f"unknown init {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 2 or x.shape[0] == self.n_members, x.shape
        assert x.shape[-1] == self.in_dim, x.shape
        return ensemble_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"members={self.n_members}, in={self.in_dim}, out={self.out_dim}"


def ensemble_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [E, B, in], or [B, in] shared by every member, times weight [E, in, out] plus bias
    [E, 1, out] -> [E, B, out]. A shared input is a broadcast view, not a copy, and the bias is
    added inside the product."""
    if x.dim() == 2:
        x = x.expand(weight.shape[0], *x.shape)
    return torch.baddbmm(bias, x, weight)


class EnsembleMLP(nn.Module):
    """An MLP per member, batched: [B, in] or [E, B, in] -> [E, B, out]."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        n_members: int,
        activation: type[nn.Module] = nn.ReLU,
        init: str = "torch",
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden_dims, out_dim]
        self.layers = nn.ModuleList(
            EnsembleLinear(a, b, n_members, init) for a, b in itertools.pairwise(dims)
        )
        self.activation = activation()
        self.n_members = n_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class _InplaceReLU(nn.ReLU):
    def __init__(self) -> None:
        super().__init__(inplace=True)  # the matmul outputs it overwrites are not needed later


class EnsembleCritic(nn.Module):
    """``n`` Q-networks Q_j(s, a) evaluated together: [B, ...] inputs give [n, B].

    With ``runs`` > 1 it is the critics of a population of runs, ``runs × n`` members (run r's
    are members r·n … r·n + n − 1): inputs [runs, B, ...] give [runs, n, B], each run's rows
    seen by its own critics only. A single run's critics may be called that way too
    ([1, B, ...] -> [1, n, B]), computing exactly what the [B, ...] call does."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int], n: int, runs: int = 1
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(obs_dim + act_dim, hidden_dims, 1, n * runs, _InplaceReLU)
        self.n, self.runs = n, runs

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        if x.dim() == 2:
            return self.net(x).squeeze(-1)
        runs, rows, width = x.shape
        # each run's rows to its n critics: a view for one run, a copy for several
        x = x.unsqueeze(1).expand(runs, self.n, rows, width).reshape(runs * self.n, rows, width)
        return self.net(x).view(runs, self.n, rows)

    def run_state(self, run: int) -> dict[str, torch.Tensor]:
        """Run ``run``'s critics as the state dict of ``EnsembleCritic(..., n)`` (copies)."""
        members = slice(run * self.n, (run + 1) * self.n)
        return {k: v[members].clone() for k, v in self.state_dict().items()}

    def load_run_state(self, run: int, state: dict[str, torch.Tensor]) -> None:
        """Write one run's critics (an ``EnsembleCritic(..., n)`` state dict) into its slice."""
        members = slice(run * self.n, (run + 1) * self.n)
        with torch.no_grad():
            for k, v in self.state_dict().items():
                v[members].copy_(state[k])


def mlp(in_dim: int, hidden_dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    return nn.Sequential(*layers)


@dataclass
class PolicyOutput:
    action: torch.Tensor  # tanh-squashed, [B, act_dim]
    log_prob: torch.Tensor  # [B]


class TanhGaussianPolicy(nn.Module):
    """Tanh-squashed diagonal Gaussian policy; a subclass computes the pre-tanh mean and
    clamped log-std (``forward``).

    log π(a|s) = Σ_d [log N(u_d; μ_d, σ_d) − log(1 − tanh(u_d)² + 1e-6)],  a = tanh(u).
    """

    obs_dim: int
    act_dim: int

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> PolicyOutput:
        """Reparameterized sample; ``noise`` (standard normal, same shape as the action) makes
        it reproducible."""
        mean, log_std = self(obs)
        if noise is None:
            noise = torch.randn_like(mean)
        return squash(mean, log_std, noise)

    def sample_action(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The action of ``sample`` without its log-probability (same draws, less work)."""
        mean, log_std = self(obs)
        if noise is None:
            noise = torch.randn_like(mean)
        return torch.tanh(mean + log_std.exp() * noise)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log π(a|s) of given actions [B, act_dim] strictly inside (−1, 1): [B]. (Behaviour
        cloning's likelihood; at ±1 the pre-tanh value is infinite.)"""
        mean, log_std = self(obs)
        pre_tanh = torch.atanh(action)
        noise = (pre_tanh - mean) / log_std.exp()
        gauss = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        return (gauss - torch.log(1 - action.pow(2) + TANH_EPS)).sum(-1)


class Actor(TanhGaussianPolicy):
    """One run's policy: an MLP backbone and two linear heads (mean, log-std)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.backbone = mlp(obs_dim, hidden_dims)
        last = hidden_dims[-1] if hidden_dims else obs_dim
        self.mean = nn.Linear(last, act_dim)
        self.log_std = nn.Linear(last, act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std of the pre-tanh Gaussian."""
        # Both heads as one product: a matmul this narrow costs about the same for twice the
        # columns, so this halves the heads' time.
        weight = torch.cat([self.mean.weight, self.log_std.weight])
        bias = torch.cat([self.mean.bias, self.log_std.bias])
        mean, log_std = F.linear(self.backbone(obs), weight, bias).split(self.act_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class PopulationActor(TanhGaussianPolicy):
    """The policies of ``runs`` runs evaluated together: observations [runs, B, obs_dim] give
    [runs, B, act_dim], run r's rows through run r's weights only.

    Its parameters are the ``Actor``'s with a leading run axis, in ``nn.Linear``'s layout
    (weight [runs, out, in], bias [runs, out]), so run r's slice is an ``Actor``'s state as it
    is (``run_actor``) and each product is the one ``Actor`` computes, batched.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int], runs: int) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.runs = obs_dim, act_dim, runs
        self.hidden_dims = list(hidden_dims)
        template = Actor(obs_dim, act_dim, hidden_dims)  # names and shapes; overwritten
        self.names = list(template.state_dict())
        self.params = nn.ParameterList(
            nn.Parameter(torch.empty(runs, *v.shape)) for v in template.state_dict().values()
        )

    @classmethod
    def stack(cls, actors: Sequence[Actor]) -> PopulationActor:
        """The population of these actors (copies of their weights, in order)."""
        first = actors[0]
        hidden = [layer.out_features for layer in first.backbone if isinstance(layer, nn.Linear)]
        pop = cls(first.obs_dim, first.act_dim, hidden, len(actors))
        for r, actor in enumerate(actors):
            pop.load_run_state(r, actor.state_dict())
        return pop

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std [runs, B, act_dim] of observations [runs, B, obs_dim]."""
        w = list(self.params)
        if self.runs == 1:
            # One run: the Actor's own products (F.linear), whose weight gradients round
            # differently from a batched product's; so a population of one is the ordinary run
            # to the bit.
            w, x = [t[0] for t in w], obs[0]

            def linear(x, weight, bias):
                return F.linear(x, weight, bias)
        else:
            x = obs

            def linear(x, weight, bias):
                return torch.baddbmm(bias.unsqueeze(-2), x, weight.transpose(-1, -2))

        n_hidden = len(self.hidden_dims)
        for i in range(n_hidden):  # backbone.{2i}.weight / .bias
            x = torch.relu_(linear(x, w[2 * i], w[2 * i + 1]))
        mean_w, mean_b, std_w, std_b = w[2 * n_hidden :]
        weight = torch.cat([mean_w, std_w], dim=-2)
        bias = torch.cat([mean_b, std_b], dim=-1)
        mean, log_std = linear(x, weight, bias).split(self.act_dim, dim=-1)
        if self.runs == 1:
            mean, log_std = mean.unsqueeze(0), log_std.unsqueeze(0)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def run_state(self, run: int) -> dict[str, torch.Tensor]:
        """Run ``run``'s policy as an ``Actor`` state dict (copies)."""
        return {k: p[run].detach().clone() for k, p in zip(self.names, self.params, strict=True)}

    def load_run_state(self, run: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in zip(self.names, self.params, strict=True):
                p[run].copy_(state[k])

    def run_actor(self, run: int) -> Actor:
        """Run ``run``'s policy as an ``Actor`` of its own (a copy, on this one's device)."""
        actor = Actor(self.obs_dim, self.act_dim, self.hidden_dims)
        actor.load_state_dict(self.run_state(run))
        return actor.to(self.params[0].device)


def squash(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor) -> PolicyOutput:
    """a = tanh(μ + σ·ε) with its log-probability under the tanh-Gaussian."""
    pre_tanh = mean + log_std.exp() * noise
    action = torch.tanh(pre_tanh)
    gauss = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_prob = (gauss - torch.log(1 - action.pow(2) + TANH_EPS)).sum(-1)
    return PolicyOutput(action, log_prob)


def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


class Swish(nn.Module):
    """x · sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)
