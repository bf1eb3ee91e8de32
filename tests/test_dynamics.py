import numpy as np
import pytest
import torch
import torch.nn.functional as F

from micro import MicroError, dynamics
from micro.data.d4rl import load_transitions
from micro.dynamics import (
    FIT_CHECKPOINT,
    EnsembleDynamics,
    dynamics_optimizer,
    fit_dynamics,
    gaussian_nll_loss,
    holdout_mse,
)
from micro.envs import parse_task


def test_logvar_soft_clamp_and_shapes():
    torch.manual_seed(0)
    model = EnsembleDynamics(11, 3, [16, 16], n_ensemble=3, n_elites=2, weight_decay=[0, 0, 0])
    with torch.no_grad():
        model.layers[-1].bias[..., 12:] = 50.0  # huge raw log-variance
    mean, logvar = model(torch.randn(5, 14))
    assert mean.shape == (3, 5, 12) and logvar.shape == (3, 5, 12)
    # the lower softplus lifts values by at most softplus(-10.5) ~ 3e-5
    assert (logvar <= model.max_logvar + 1e-4).all() and (logvar >= model.min_logvar).all()
    raw = torch.full((1,), 50.0)
    expect = 0.5 - F.softplus(0.5 - raw)
    expect = -10 + F.softplus(expect + 10)
    torch.testing.assert_close(logvar[0, 0, 0], expect[0], rtol=1e-5, atol=1e-5)


def test_nll_loss_re_derivation():
    torch.manual_seed(1)
    mean, logvar, target = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    expected = 0.0
    for e in range(3):
        expected += ((mean[e] - target[e]) ** 2 * torch.exp(-logvar[e])).mean() + logvar[e].mean()
    torch.testing.assert_close(gaussian_nll_loss(mean, logvar, target), expected)


def test_decay_loss():
    model = EnsembleDynamics(2, 1, [4], n_ensemble=2, n_elites=1, weight_decay=[0.1, 0.2])
    expected = (
        0.05 * model.layers[0].weight.pow(2).sum() + 0.1 * model.layers[1].weight.pow(2).sum()
    )
    torch.testing.assert_close(model.decay_loss(), expected)


def test_optimizer_weight_decay_equals_the_decay_loss_gradient():
    """fit_dynamics applies weight decay inside Adam; three steps of it must match three steps
    of plain Adam on NLL + decay_loss() (the published formulation)."""
    torch.manual_seed(0)
    a = EnsembleDynamics(3, 2, [8, 8], n_ensemble=3, n_elites=2, weight_decay=[0.1, 0.2, 0.3])
    b = EnsembleDynamics(3, 2, [8, 8], n_ensemble=3, n_elites=2, weight_decay=[0.1, 0.2, 0.3])
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, foreach=False)
    opt_b = dynamics_optimizer(b, lr=1e-2)
    x, y = torch.randn(3, 16, 5), torch.randn(3, 16, 4)
    for _ in range(3):
        for model, opt, decay in ((a, opt_a, True), (b, opt_b, False)):
            mean, logvar = model(x)
            loss = gaussian_nll_loss(mean, logvar, y) + (model.decay_loss() if decay else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_scaler_guards_constant_inputs():
    model = EnsembleDynamics(2, 1, [4], n_ensemble=2, n_elites=1, weight_decay=[0, 0])
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0]])
    model.set_scaler(x)
    assert model.input_mean.tolist() == [2.0, 5.0, 2.0]
    assert model.input_std.tolist() == [1.0, 1.0, 1.0]  # std 1, then 0 -> 1, 0 -> 1


@pytest.fixture(scope="module")
def fitted(hopper_file):
    data = load_transitions(hopper_file, parse_task("hopper-random-v2"))
    t = [
        torch.as_tensor(x)
        for x in (data.observations, data.actions, data.next_observations, data.rewards)
    ]
    torch.manual_seed(0)
    model = EnsembleDynamics(
        11, 3, [64, 64], n_ensemble=4, n_elites=2, weight_decay=[2.5e-5, 5e-5, 1e-4]
    )
    gen = torch.Generator().manual_seed(0)
    result = fit_dynamics(
        model, *t, max_epochs=25, max_epochs_since_update=25, generator=gen, progress=False
    )
    return model, result, t


def test_fit_lowers_holdout_loss_and_picks_best_members(fitted):
    model, result, _ = fitted
    assert result.epochs == 25
    assert result.holdout_curve[-1] < 0.5 * result.holdout_curve[0]
    best = np.asarray(result.holdout_losses)
    assert sorted(result.elites) == sorted(np.argsort(best)[:2].tolist())
    assert model.elites.tolist() == result.elites


def test_restored_members_have_their_best_holdout_loss(fitted, hopper_file):
    model, result, t = fitted
    obs, act, next_obs, rew = t
    # recompute the holdout split exactly as fit_dynamics drew it (same generator seed)
    gen = torch.Generator().manual_seed(0)
    n = obs.shape[0]
    perm = torch.randperm(n, generator=gen)
    hold = perm[: min(int(n * 0.2), 1000)]
    inputs = torch.cat([obs, act], -1)[hold]
    targets = torch.cat([next_obs - obs, rew], -1)[hold]
    torch.testing.assert_close(
        holdout_mse(model, inputs, targets),
        torch.tensor(result.holdout_losses),
        rtol=1e-4,
        atol=1e-6,
    )


def test_save_load_round_trip(fitted, tmp_path):
    model, _, t = fitted
    model.save(tmp_path / "dyn")
    again = EnsembleDynamics.load(tmp_path / "dyn", 11, 3)
    x = torch.cat([t[0][:9], t[1][:9]], -1)
    for a, b in zip(model(x), again(x), strict=True):
        torch.testing.assert_close(a, b)
    assert again.elites.tolist() == model.elites.tolist()


def test_sample_step_uses_an_elite_per_row():
    torch.manual_seed(3)
    model = EnsembleDynamics(3, 1, [8], n_ensemble=4, n_elites=2, weight_decay=[0, 0])
    model.elites.copy_(torch.tensor([1, 3]))
    with torch.no_grad():  # make the model almost deterministic so samples equal means
        model.min_logvar.fill_(-40.0)
        model.max_logvar.fill_(-39.0)
    obs, act = torch.randn(200, 3), torch.randn(200, 1)
    next_obs, reward = model.sample_step(obs, act)
    mean, _ = model(torch.cat([obs, act], -1))
    candidates = torch.cat([mean[..., :-1] + obs, mean[..., -1:]], -1)  # [4, 200, 4]
    got = torch.cat([next_obs, reward], -1)
    dist = (candidates - got).abs().amax(-1)  # [4, 200]
    member = dist.argmin(0)
    assert torch.all(dist.min(0).values < 1e-5)
    assert set(member.tolist()) == {1, 3}


def test_sample_step_matches_the_chosen_members_gaussian():
    """Grouping rows by elite evaluates the same Gaussian as the full ensemble forward."""
    torch.manual_seed(4)
    model = EnsembleDynamics(3, 1, [8], n_ensemble=4, n_elites=3, weight_decay=[0, 0])
    model.elites.copy_(torch.tensor([0, 1, 3]))
    obs, act = torch.randn(50, 3), torch.randn(50, 1)
    gen = torch.Generator().manual_seed(9)
    next_obs, reward = model.sample_step(obs, act, generator=gen)
    gen = torch.Generator().manual_seed(9)  # the same draws, re-derived with the full forward
    pick = torch.randint(3, (50,), generator=gen)
    noise = torch.randn(50, 4, generator=gen)
    mean, logvar = model(torch.cat([obs, act], -1))
    member = model.elites[pick]
    rows = torch.arange(50)
    sample = mean[member, rows] + (0.5 * logvar[member, rows]).exp() * noise
    torch.testing.assert_close(next_obs, sample[:, :3] + obs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reward, sample[:, 3:], rtol=1e-5, atol=1e-5)


def test_elite_choice_is_uniform():
    """Counts of each elite over n rows ~ Binomial(n, 1/E): within 5 standard deviations."""
    torch.manual_seed(5)
    model = EnsembleDynamics(3, 1, [8], n_ensemble=7, n_elites=5, weight_decay=[0, 0])
    with torch.no_grad():  # distinct, nearly deterministic members so each row reveals its elite
        model.min_logvar.fill_(-40.0)
        model.max_logvar.fill_(-39.0)
        for e in range(7):
            model.layers[-1].bias[e, 0, 3] = 10.0 * e  # reward mean = 10·e (+ a small MLP term)
    n = 20_000
    obs, act = torch.zeros(n, 3), torch.zeros(n, 1)
    _, reward = model.sample_step(obs, act, generator=torch.Generator().manual_seed(11))
    member = torch.round(reward[:, 0] / 10.0).long()
    counts = torch.bincount(member, minlength=7)
    assert counts[[m for m in range(7) if m not in model.elites.tolist()]].sum() == 0
    expected, sd = n / 5, (n * 0.2 * 0.8) ** 0.5
    for e in model.elites.tolist():
        assert abs(counts[e].item() - expected) < 5 * sd, counts


def _elite_reference(model, obs, act):
    """elite_mean_std re-derived from the every-member forward, indexed afterwards."""
    mean, logvar = model(torch.cat([obs, act], -1))
    mean, logvar = mean[model.elites], logvar[model.elites]
    return torch.cat([mean[..., :-1] + obs, mean[..., -1:]], -1), (0.5 * logvar).exp()


def test_elite_forward_follows_every_change_of_weights_and_elites():
    """The gathered elite weights are reused only while nothing they came from changed."""
    torch.manual_seed(6)
    model = EnsembleDynamics(3, 2, [8, 8], n_ensemble=5, n_elites=3, weight_decay=[0, 0, 0])
    model.requires_grad_(False)
    obs, act = torch.randn(7, 3), torch.randn(7, 2)

    def check():
        got, want = model.elite_mean_std(obs, act), _elite_reference(model, obs, act)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    check()
    check()  # served from the cache
    model.layers[1].weight.mul_(-2.0)  # an in-place write, like an optimizer step
    check()
    model.elites.copy_(torch.tensor([4, 0, 2]))  # a new elite set
    check()
    other = EnsembleDynamics(3, 2, [8, 8], n_ensemble=5, n_elites=3, weight_decay=[0, 0, 0])
    model.load_state_dict(other.state_dict())
    check()
    # a replaced tensor (frozen, like the rest: a tensor that needs gradients skips the cache)
    model.layers[0].bias = torch.nn.Parameter(torch.randn(5, 1, 8), requires_grad=False)
    check()
    model.double()  # new data under the same Parameter objects and versions
    obs, act = obs.double(), act.double()
    check()


def test_elite_forward_inside_autograd_reaches_the_elite_weights():
    torch.manual_seed(7)
    model = EnsembleDynamics(3, 2, [8], n_ensemble=4, n_elites=2, weight_decay=[0, 0])
    model.elites.copy_(torch.tensor([1, 3]))
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    with torch.no_grad():
        model.elite_mean_std(obs, act)  # fills the cache outside autograd
    mean, std = model.elite_mean_std(obs, act)
    (mean.sum() + std.sum()).backward()
    grad = model.layers[0].weight.grad.abs().sum(dim=(1, 2))
    assert grad[1] > 0 and grad[3] > 0 and grad[0] == 0 and grad[2] == 0


def test_all_member_step_draws_the_same_sample_as_the_elite_step():
    """MOPO's rollouts evaluate every member; with the same draws they sample what the fast
    elite-only step samples, and return every member's log-variance."""
    torch.manual_seed(5)
    model = EnsembleDynamics(3, 1, [8], n_ensemble=4, n_elites=3, weight_decay=[0, 0])
    model.elites.copy_(torch.tensor([0, 2, 3]))
    obs, act = torch.randn(40, 3), torch.randn(40, 1)
    fast = model.sample_step(obs, act, generator=torch.Generator().manual_seed(7))
    full = model.sample_step_all_members(obs, act, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(full[0], fast[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[1], fast[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[2], model(torch.cat([obs, act], -1))[1])


def test_a_fit_that_diverges_is_refused_not_saved(fitted):
    """Rewards x 1e30 are finite data, but the fit's holdout MSE is not: it used to save the
    model anyway."""
    from micro import MicroError
    from micro.dynamics import fit_dynamics

    _, _, (obs, act, next_obs, rew) = fitted
    model = EnsembleDynamics(11, 3, [16, 16], n_ensemble=3, n_elites=2, weight_decay=[0, 0, 0])
    with pytest.raises(MicroError, match=r"the dynamics fit diverged .*largest \|reward\| 1e\+30"):
        fit_dynamics(model, obs, act, next_obs, rew * 0 + 1e30, max_epochs=2, progress=False)


def test_a_saved_model_records_its_sha256_and_a_replaced_one_is_refused(fitted, tmp_path):
    from micro import MicroError
    from micro.dynamics import copy_saved, read_dynamics_info
    from micro.utils import sha256_file

    model = fitted[0]
    model.save(tmp_path / "a")
    assert read_dynamics_info(tmp_path / "a")["model_sha256"] == sha256_file(
        tmp_path / "a/model.pt"
    )
    sha = copy_saved(tmp_path / "a", tmp_path / "b")
    assert sha == sha256_file(tmp_path / "b/model.pt") == sha256_file(tmp_path / "a/model.pt")
    assert read_dynamics_info(tmp_path / "b")["copied_from"] == str(tmp_path / "a")
    EnsembleDynamics.load(tmp_path / "b", 11, 3, sha)
    blob = torch.load(tmp_path / "b/model.pt", weights_only=True)
    blob["state_dict"]["layers.0.weight"][0, 0, 0] += 1.0
    torch.save(blob, tmp_path / "b/model.pt")
    with pytest.raises(MicroError, match="damaged or was replaced"):
        EnsembleDynamics.load(tmp_path / "b", 11, 3)


def test_without_a_progress_bar_the_fit_prints_progress_lines(fitted, monkeypatch, capsys):
    """A fit logged to a file used to print nothing for minutes."""
    from micro import dynamics

    monkeypatch.setattr(dynamics, "LOG_INTERVAL_S", 0.0)
    _, _, (obs, act, next_obs, rew) = fitted
    model = EnsembleDynamics(11, 3, [16, 16], n_ensemble=3, n_elites=2, weight_decay=[0, 0, 0])
    dynamics.fit_dynamics(model, obs, act, next_obs, rew, max_epochs=2, progress=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("dynamics fit:")]
    assert [x.split(",")[0] for x in lines] == ["dynamics fit: epoch 1", "dynamics fit: epoch 2"]


class Cut(Exception):
    """Stands for the kill that ends a fit part-way."""


def _small_fit(t, **kwargs):
    model = EnsembleDynamics(11, 3, [16, 16], n_ensemble=3, n_elites=2, weight_decay=[0, 0, 0])
    result = fit_dynamics(
        model, *t, max_epochs=5, max_epochs_since_update=5, progress=False, **kwargs
    )
    return model, result


def _cut_at(epoch):
    def on_epoch(e, *_):
        if e == epoch:
            raise Cut

    return on_epoch


def test_a_fit_cut_short_continues_from_its_checkpoint_as_if_never_cut(
    fitted, tmp_path, monkeypatch, capsys
):
    """A 2.6-hour fit (hopper at MICRO's settings, on a CPU) lost to a killed process started
    over; now it continues from its last saved epoch, drawing what the uninterrupted fit drew
    (the global RNG's state is in the file: the second process starts from another seed)."""
    monkeypatch.setattr(dynamics, "FIT_CHECKPOINT_EVERY_S", 0.0)  # a save after every epoch
    t = fitted[2]
    torch.manual_seed(7)
    whole, expected = _small_fit(t)
    path = tmp_path / FIT_CHECKPOINT
    torch.manual_seed(7)
    with pytest.raises(Cut):
        _small_fit(t, checkpoint=path, on_epoch=_cut_at(3))  # saved after epoch 2, then cut
    assert torch.load(path, weights_only=True)["epoch"] == 2
    torch.manual_seed(12345)
    capsys.readouterr()
    model, result = _small_fit(t, checkpoint=path)
    assert f"dynamics fit: continuing from epoch 2 ({path})" in capsys.readouterr().out
    assert (
        (result.epochs, result.elites) == (expected.epochs, expected.elites) == (5, result.elites)
    )
    assert result.holdout_curve == expected.holdout_curve and len(result.train_losses) == 5
    assert result.holdout_losses == expected.holdout_losses
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert result.seconds > 0


def test_a_checkpoint_of_another_fit_is_refused(fitted, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamics, "FIT_CHECKPOINT_EVERY_S", 0.0)
    obs, act, next_obs, rew = fitted[2]
    path = tmp_path / FIT_CHECKPOINT
    with pytest.raises(Cut):
        _small_fit(fitted[2], checkpoint=path, on_epoch=_cut_at(2))
    with pytest.raises(MicroError, match=r"begun with other settings \(lr\); continue it"):
        _small_fit(fitted[2], checkpoint=path, lr=2e-3)
    with pytest.raises(MicroError, match="unfinished dynamics fit begun with other data"):
        _small_fit((obs, act, next_obs, rew + 1), checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MicroError, match=r"unfinished dynamics fit .*other code\); delete it"):
        _small_fit(fitted[2], checkpoint=path)
    torch.save({"format": "something else"}, path)
    with pytest.raises(MicroError, match="not an unfinished micro dynamics fit; delete it"):
        _small_fit(fitted[2], checkpoint=path)
