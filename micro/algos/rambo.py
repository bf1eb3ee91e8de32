"""RAMBO (Rigter, Lacerda & Hawes, NeurIPS 2022): robust adversarial model-based offline RL
(SPEC §7).

SAC with the plain soft Bellman target (no penalty, no clamp) whose dynamics model is itself
trained against the policy: every ``dynamics_update_freq`` policy steps, ``adv_steps`` Adam steps
on the ensemble minimise

    λ_adv · mean_i( log p(s'_i, r_i | s_i, a_i) · A_i )  +  L_sup

— the model lowers the likelihood of the transitions that are good for the policy (A > 0)
while the supervised loss on real data keeps it consistent with the data. The maths is in pure
functions (``mixture_log_prob``, ``normalized_advantage``, ``adversarial_objective``,
``supervised_loss``); ``RAMBO`` wires them to the model, the critics and the data.

The official code minimises the per-row vector λ_adv·(log p_i·A_i) + L_sup, i.e. the gradient of
its batch *sum*: B times the mean form here, so under Adam the two take the same step (see
``tests/test_rambo.py``). Summing the adversarial term alone would make the adversary B times
stronger than either published code.

Before training, the actor is behaviour-cloned on the data (``bc_epochs``; ``pretrain``) with
the actor's own optimizer, as the official code does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from micro.algos.sac import SAC
from micro.buffer import ReplayBuffer
from micro.config import Config
from micro.dynamics import EnsembleDynamics, dynamics_optimizer, gaussian_nll_loss
from micro.nets import squash

# L_sup's weight on the learnable log-variance bounds in the adversarial update (the official
# model's train_loss: 0.001, against 0.01 in the fit, SPEC §2)
LOGVAR_BOUND_COEF = 0.001
BC_HOLDOUT_RATIO, BC_MAX_HOLDOUT = 0.1, 2000  # the official BC's holdout, for its MSE only

DoneFn = Callable[[torch.Tensor], torch.Tensor]


# --- pure functions ------------------------------------------------------------------------------


def mixture_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log( (1/E) Σ_e N(sample; mean_e, diag(std_e²)) ), the likelihood of a sample drawn from an
    elite picked uniformly: sample [B, D], mean and std [E, B, D] -> [B]. Computed in float64
    (a log-sum-exp, so a member far from the sample cannot underflow it), returned as float32."""
    x, mu, sigma = sample.double(), mean.double(), std.double()
    per_member = (-0.5 * ((x - mu) / sigma).pow(2) - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(
        -1
    )
    return (torch.logsumexp(per_member, dim=0) - math.log(mean.shape[0])).float()


def normalized_advantage(advantage: torch.Tensor, std: str = "population") -> torch.Tensor:
    """(A − mean A) / std A over the batch: ``population`` the official code's (no ε),
    ``unbiased`` OfflineRL-Kit's (the sample std + 1e-6)."""
    centred = advantage - advantage.mean()
    if std == "population":
        return centred / advantage.std(unbiased=False)
    return centred / (advantage.std() + 1e-6)


def adversarial_objective(
    log_prob: torch.Tensor, advantage: torch.Tensor, weight: float
) -> torch.Tensor:
    """λ_adv · mean_i(log p_i · A_i); the advantage carries no gradient."""
    return weight * (log_prob * advantage.detach()).mean()


def supervised_loss(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    targets: torch.Tensor,
    max_logvar: torch.Tensor,
    min_logvar: torch.Tensor,
) -> torch.Tensor:
    """L_sup without its weight decay (the optimizer adds that, ``dynamics_optimizer``): the
    fit's Gaussian NLL summed over members, mean and logvar [E, B, D] against targets (Δs, r),
    plus 0.001·(Σ max_logvar − Σ min_logvar)."""
    bounds = max_logvar.sum() - min_logvar.sum()
    return gaussian_nll_loss(mean, logvar, targets) + LOGVAR_BOUND_COEF * bounds


# --- the learner ---------------------------------------------------------------------------------


class RAMBO(SAC):
    name = "rambo"
    title = "RAMBO (Rigter, Lacerda & Hawes, NeurIPS 2022)"
    population_refused = (
        "it trains its own dynamics model in every run, and a population shares one model"
    )

    def __init__(
        self, cfg: Config, obs_dim: int, act_dim: int, dynamics: EnsembleDynamics | None = None
    ) -> None:
        super().__init__(cfg, obs_dim, act_dim, dynamics)
        assert dynamics is not None, "RAMBO trains the dynamics model: it needs one"
        self.model_optim = dynamics_optimizer(dynamics, cfg.adv_lr)
        if cfg.adv_weight > 0:
            # From here the run owns its copy of the model: it trains, and checkpoints hold it.
            # With λ_adv = 0 the official code leaves the model as fitted (no update at all).
            self.model_update_freq = cfg.dynamics_update_freq
            dynamics.requires_grad_(True)

    def named_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not self.trains_model:
            return super().named_optimizers()
        return {**super().named_optimizers(), "dynamics": self.model_optim}

    # --- behaviour cloning -------------------------------------------------------------------
    def pretrain(self, real: ReplayBuffer) -> dict[str, float] | None:
        """Behaviour cloning of the actor: ``bc_epochs`` passes of −mean log π(a|s) over one
        bootstrap resample of 90 % of the data (batch ``bc_batch_size``), with the actor's own
        Adam; a batch holding an action at ±1 (log π infinite there) is skipped, as in the
        official code. Returns the last epoch's loss and the held-out actions' MSE."""
        cfg = self.cfg
        if cfg.bc_epochs == 0:
            return None
        data = real.all()
        n = len(data)
        n_holdout = min(int(n * BC_HOLDOUT_RATIO), BC_MAX_HOLDOUT)
        perm = torch.randperm(n, device=real.device)
        train, hold = perm[n_holdout:], perm[:n_holdout]
        resample = train[torch.randint(len(train), (len(train),), device=real.device)]
        saturated = (data.actions[resample].abs() >= 1.0).any(dim=-1)
        loss = torch.zeros((), device=real.device)
        steps = skipped = 0
        for _ in range(cfg.bc_epochs):
            for start in range(0, len(resample) - cfg.bc_batch_size + 1, cfg.bc_batch_size):
                if saturated[start : start + cfg.bc_batch_size].any():
                    skipped += 1
                    continue
                rows = resample[start : start + cfg.bc_batch_size]
                loss = -self.actor.log_prob(data.observations[rows], data.actions[rows]).mean()
                self.actor_optim.zero_grad(set_to_none=True)
                loss.backward()
                self.actor_optim.step()
                steps += 1
        with torch.no_grad():
            mse = (self.actor.deterministic(data.observations[hold]) - data.actions[hold]).pow(2)
        return {
            "bc_loss": float(loss.detach()),
            "bc_holdout_mse": float(mse.mean()) if n_holdout else float("nan"),
            "bc_steps": steps,
            "bc_skipped_batches": skipped,
        }

    # --- the adversarial model update --------------------------------------------------------
    @torch.no_grad()
    def advantage(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        next_obs: torch.Tensor,
        reward: torch.Tensor,
        done: torch.Tensor,
    ) -> torch.Tensor:
        """A = r + γ(1 − d)·V(s') − min_j Q_j(s, a), V(s') = min_j Q_j(s', π_det(s')) (− α log π
        with ``adv_include_entropy``), with the online critics: [B]."""
        mean, log_std = self.actor(next_obs)
        mode = squash(mean, log_std, torch.zeros_like(mean))  # π_det(s') and its log π
        next_value = self.critics(next_obs, mode.action).min(dim=0).values
        if self.cfg.adv_include_entropy:
            next_value = next_value - self.alpha * mode.log_prob
        value = reward + self.cfg.gamma * (1.0 - done.float()) * next_value
        return value - self.critics(obs, act).min(dim=0).values

    def model_loss(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        sl_inputs: torch.Tensor,
        sl_targets: torch.Tensor,
        done_fn: DoneFn,
        noise: torch.Tensor | None = None,
        pick: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one adversarial step and the sampled next states [B, obs_dim].

        obs, act [B, ·]: the states and the policy's actions; sl_inputs [E, B, in] and sl_targets
        [E, B, D]: the supervised batch. ``noise`` [B, D] (standard normal) and ``pick`` [B]
        (indices into the elites) fix the draws, for tests."""
        model, cfg = self.dynamics, self.cfg
        b, d = obs.shape[0], self.obs_dim + 1
        # One forward for both terms: the policy's rows (shared by every member) beside the
        # supervised rows (one batch per member).
        inputs = torch.cat([obs, act], dim=-1).expand(model.n_ensemble, b, -1)
        mean, logvar = model(torch.cat([inputs, sl_inputs], dim=1))
        adv_mean, sl_mean = mean[:, :b], mean[:, b:]
        adv_logvar, sl_logvar = logvar[:, :b], logvar[:, b:]
        elite_mean = adv_mean[model.elites]
        elite_mean = torch.cat([elite_mean[..., :-1] + obs, elite_mean[..., -1:]], dim=-1)
        elite_std = (0.5 * adv_logvar[model.elites]).exp()
        if pick is None:
            pick = torch.randint(model.n_elites, (b,), device=obs.device)
        if noise is None:
            noise = torch.randn(b, d, device=obs.device)
        rows = torch.arange(b, device=obs.device)
        sample = (elite_mean[pick, rows] + elite_std[pick, rows] * noise).detach()
        log_prob = mixture_log_prob(sample, elite_mean, elite_std)
        next_obs, reward = sample[:, :-1], sample[:, -1]
        done = done_fn(next_obs)
        raw = self.advantage(obs, act, next_obs, reward, done)
        adv = normalized_advantage(raw, cfg.adv_std)
        adv_loss = adversarial_objective(log_prob, adv, cfg.adv_weight)
        sl_loss = supervised_loss(
            sl_mean, sl_logvar, sl_targets, model.max_logvar, model.min_logvar
        )
        metrics = {
            "sl_loss": sl_loss.detach(),
            "adv_loss": adv_loss.detach(),
            "advantage": raw.mean(),
            "log_prob": log_prob.detach().mean(),
        }
        return adv_loss + sl_loss, next_obs, metrics

    def supervised_batch(self, real: ReplayBuffer) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [E, B, in] and targets [E, B, D] from the real data: an independent uniform
        draw of ``adv_batch_size`` rows per member (the official code's), or one draw shared by
        every member (``adv_shared_sl_batch``, OfflineRL-Kit's)."""
        model, b = self.dynamics, self.cfg.adv_batch_size
        shape = (1, b) if self.cfg.adv_shared_sl_batch else (model.n_ensemble, b)
        idx = torch.randint(real.size, shape, device=real.device)
        data = real.storage
        inputs = torch.cat([data.observations[idx], data.actions[idx]], dim=-1)
        targets = torch.cat(
            [data.next_observations[idx] - data.observations[idx], data.rewards[idx]], dim=-1
        )
        return inputs.expand(model.n_ensemble, b, -1), targets.expand(model.n_ensemble, b, -1)

    def model_update(self, real: ReplayBuffer, done_fn: DoneFn) -> dict[str, float]:
        """``adv_steps`` Adam steps on the model. The states: ``adv_batch_size`` from the data,
        then each step's sampled next states (terminal ones too, as in the official code), for
        ``rollout_length`` steps, then new ones from the data. Returns the metrics' means."""
        cfg, b = self.cfg, self.cfg.adv_batch_size
        self.dynamics.train()
        totals: dict[str, torch.Tensor] = {}
        obs = real.observations[:0]
        for step in range(cfg.adv_steps):
            if step % cfg.rollout_length == 0:
                obs = real.observations[torch.randint(real.size, (b,), device=real.device)]
            with torch.no_grad():
                act = self.actor.sample_action(obs)
            sl_inputs, sl_targets = self.supervised_batch(real)
            loss, obs, metrics = self.model_loss(obs, act, sl_inputs, sl_targets, done_fn)
            self.model_optim.zero_grad(set_to_none=True)
            loss.backward()
            self.model_optim.step()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        self.dynamics.eval()
        return {k: float(v) / cfg.adv_steps for k, v in totals.items()}
