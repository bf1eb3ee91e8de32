"""Physics perturbation, observation attacks and eval.py."""

import csv

import numpy as np
import pytest
import torch
from conftest import run_eval

from micro import MicroError
from micro.envs import make_env
from micro.evaluation import run_episodes
from micro.nets import Actor, EnsembleCritic
from micro.policy_file import load_policy
from micro.robustness import (
    Attack,
    Physics,
    attack_delta,
    choose_perturbation,
    gaussian_symmetric_kl,
    scaled_physics,
)
from micro.robustness_summary import (
    attack_summary,
    averaged_over,
    group_cells,
    sim2real_summary,
)
from micro.utils import ROBUSTNESS_SEED

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


def cell(group, seed, values, **keys):
    return {
        "group": group,
        "seed": seed,
        **keys,
        "episodes": 3,
        "normalized_mean": values[0],
        "normalized_std": values[1],
    }


def test_eval_result_per_episode_rows_and_extremes():
    from micro.envs import SimSpec
    from micro.evaluation import EvalResult

    sim = SimSpec("hopper", "Hopper-v4", ref_min=-100.0, ref_max=900.0, ref_source="D4RL")
    res = EvalResult(np.array([400.0, -100.0, 900.0]), np.array([1000, 37, 1000]), sim)
    assert (res.normalized_mean, res.normalized_min, res.normalized_max) == (50.0, 0.0, 100.0)
    assert res.episode_rows(seed=7) == [
        {"episode": 0, "seed": 7, "return": 400.0, "normalized": 50.0, "length": 1000},
        {"episode": 1, "seed": 8, "return": -100.0, "normalized": 0.0, "length": 37},
        {"episode": 2, "seed": 9, "return": 900.0, "normalized": 100.0, "length": 1000},
    ]


def test_group_cells_spread_over_episodes_for_one_policy_over_seeds_for_several():
    rows = [
        cell("a seed 0", 0, (10.0, 4.0), eps=0.0),
        cell("b", 0, (10.0, 4.0), eps=0.0),
        cell("b", 1, (20.0, 1.0), eps=0.0),
    ]
    assert group_cells(rows, ("eps",)) == {
        "a seed 0": {(0.0,): (10.0, 4.0)},
        "b": {(0.0,): (15.0, 5.0)},
    }


def test_sim2real_summary_means_by_axis():
    grid = {(0.5, 1.0): 10.0, (0.5, 2.0): 20.0, (1.5, 1.0): 30.0, (1.5, 2.0): 50.0}
    rows = [cell("a", 0, (v, 1.0), friction=f, gravity=g, mass=1.0) for (f, g), v in grid.items()]
    rows += [
        cell("b", s, (10.0 * s, 1.0), friction=f, gravity=g, mass=1.0)
        for s in (0, 1)
        for f, g in grid
    ]
    lines = sim2real_summary(rows).splitlines()
    assert (
        lines[2] == "Mean of 3 deterministic episodes per cell, then over each algorithm's "
        "seeds; 2 friction × 2 gravity scales."
    )
    by_gravity = lines[lines.index("By gravity scale (mean over the friction scales):") + 2 :][:4]
    assert by_gravity == [
        "| group | all cells | 1 | 2 |",
        "| --- | --- | --- | --- |",
        "| a | 27.5 | 20.0 | 35.0 |",
        "| b | 5.0 | 5.0 | 5.0 |",
    ]
    by_friction = lines[lines.index("By friction scale (mean over the gravity scales):") + 2 :]
    assert by_friction == [
        "| group | all cells | 0.5 | 1.5 |",
        "| --- | --- | --- | --- |",
        "| a | 27.5 | 15.0 | 40.0 |",
        "| b | 5.0 | 5.0 | 5.0 |",
    ]


def test_sim2real_summary_one_line_per_mass():
    rows = [cell("a", 0, (m * 10, 0.0), friction=1.0, gravity=1.0, mass=m) for m in (1.0, 2.0)]
    lines = sim2real_summary(rows).splitlines()
    assert lines[2].endswith("1 friction × 1 gravity scales × 2 mass scales.")
    assert lines[6:10] == [
        "| group | mass | all cells | 1 |",
        "| --- | --- | --- | --- |",
        "| a | 1 | 10.0 | 10.0 |",
        "| a | 2 | 20.0 | 20.0 |",
    ]


def test_attack_summary_scores_by_budget_and_their_mean():
    rows = [
        cell("a", 0, (40.0, 1.0), attack_mode="random", eps=0.0),
        cell("a", 0, (20.0, 1.0), attack_mode="random", eps=0.1),
        cell("a", 0, (40.0, 1.0), attack_mode="min_Q", eps=0.0),
        cell("a", 0, (5.0, 1.0), attack_mode="min_Q", eps=0.1),
    ]
    assert attack_summary(rows).splitlines()[4:] == [
        "| group | attack | ε 0 | ε 0.1 | mean over ε | cost (ε 0 − mean) |",
        "| --- | --- | --- | --- | --- | --- |",
        "| a | random | 40.0 | 20.0 | 30.0 | 10.0 |",
        "| a | min_Q | 40.0 | 5.0 | 22.5 | 17.5 |",
    ]
    # without an unattacked budget there is nothing to measure a cost from
    attacked = [
        cell("a", 0, (20.0, 1.0), attack_mode="random", eps=0.1),
        cell("a", 0, (10.0, 1.0), attack_mode="random", eps=0.2),
    ]
    assert attack_summary(attacked).splitlines()[4:] == [
        "| group | attack | ε 0.1 | ε 0.2 | mean over ε |",
        "| --- | --- | --- | --- | --- |",
        "| a | random | 20.0 | 10.0 | 15.0 |",
    ]


def test_summary_says_what_a_group_averages_over():
    def row(group, policy, seed):
        return {**cell(group, seed, (1.0, 0.0)), "policy": policy}

    alone = [row("a", "a.pt", 0), row("b", "b.pt", 0)]
    seeds = [row("micro", "s0.pt", 0), row("micro", "s1.pt", 1), row("mobile", "m.pt", 0)]
    snapshots = [row("micro", "s0/epoch5.pt", 0), row("micro", "s0/policy.pt", 0)]
    assert averaged_over(alone) == ""
    assert averaged_over(seeds) == ", then over each algorithm's seeds"
    assert averaged_over(snapshots + seeds[1:]).endswith("(seeds and snapshots alike)")


def test_a_group_of_several_policies_lists_each_policys_own_mean():
    def row(label, seed, value, **keys):
        return {**cell("micro", seed, (value, 0.0), **keys), "label": label, "policy": label}

    attack = [
        row(f"micro seed {s}", s, v + 10 * s, attack_mode=m, eps=e)
        for s in (0, 1)
        for m, v in (("random", 40.0), ("min_Q", 20.0))
        for e, v in ((0.0, v), (0.1, v - 10))
    ]
    attack[-1]["normalized_mean"] = 0.0  # seed 1's min_Q at ε 0.1: 30 -> 0
    lines = attack_summary(attack).splitlines()
    at = lines.index("Each policy (its mean over ε):")
    assert lines[at + 2 : at + 6] == [
        "| policy | random | min_Q |",
        "| --- | --- | --- |",
        "| micro seed 0 | 35.0 | 15.0 |",
        "| micro seed 1 | 45.0 | 15.0 |",
    ]
    # what each attack takes from each policy: its ε 0 score minus its mean over ε
    at = lines.index("Each policy's cost (its ε 0 score − its mean over ε):")
    assert lines[at + 2 :] == [
        "| policy | random | min_Q |",
        "| --- | --- | --- |",
        "| micro seed 0 | 5.0 | 5.0 |",
        "| micro seed 1 | 5.0 | 15.0 |",
    ]
    assert "| micro | random | 40.0 | 30.0 | 35.0 | 5.0 |" not in lines  # the group's: the mean
    assert "| micro | random | 45.0 | 35.0 | 40.0 | 5.0 |" in lines
    assert "| micro | min_Q | 25.0 | 5.0 | 15.0 | 10.0 |" in lines
    physics = [
        row(label, 0, v, friction=f, gravity=1.0, mass=1.0)
        for label, v in (("micro seed 0, step 1000", 10.0), ("micro seed 0, step 2000", 30.0))
        for f in (0.5, 1.5)
    ]
    lines = sim2real_summary(physics).splitlines()
    assert lines[-4:] == [
        "| policy | all cells |",
        "| --- | --- |",
        "| micro seed 0, step 1000 | 10.0 |",
        "| micro seed 0, step 2000 | 30.0 |",
    ]
    # one policy per group: nothing to list
    single = [r for r in attack if r["seed"] == 0]
    assert "Each policy" not in attack_summary(single)


# --- eval.py ---


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_eval_cli_sim2real_attack_clean(smoke_run, tmp_path):
    policy = smoke_run[0] / "policy.pt"
    base = [
        "--task",
        "hopper-medium-v2",
        "--policy_path",
        str(policy),
        "--out",
        str(tmp_path),
        "--eval_episodes",
        "2",
    ]
    run_eval([*base, "--choice", "sim2real", "--friction", "0.5", "1.5", "--gravity", "1", "2"])
    rows = read_csv(tmp_path / "sim2real.csv")
    assert list(rows[0]) == [
        "friction",
        "gravity",
        "mass",
        "episodes",
        "return_mean",
        "return_std",
        "normalized_mean",
        "normalized_std",
    ]
    assert [(r["friction"], r["gravity"]) for r in rows] == [
        ("0.5", "1.0"),
        ("0.5", "2.0"),
        ("1.5", "1.0"),
        ("1.5", "2.0"),
    ]
    assert (tmp_path / "sim2real.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "sim2real-summary.md").read_text().splitlines()
    grid_mean = np.mean([float(r["normalized_mean"]) for r in rows])
    label = load_policy(policy, "hopper-medium-v2", torch.device("cpu")).label
    assert summary[8].startswith(f"| {label} | {grid_mean:.1f} |")
    # what made the numbers: command, code, machine, and the policy file's digest
    import json

    from micro.utils import sha256_file

    made = json.loads((tmp_path / "sim2real-provenance.json").read_text())
    assert made["policies"] == [{"path": str(policy), "sha256": sha256_file(policy)}]
    assert "sim2real" in made["argv"] and made["machine"]["torch_threads"] >= 1
    assert made["code"]["source_sha256"]
    # every episode of every cell, whose mean is the cell's
    episodes = read_csv(tmp_path / "sim2real-episodes.csv")
    assert list(episodes[0]) == [
        "friction",
        "gravity",
        "mass",
        "episode",
        "env_seed",
        "return",
        "normalized",
        "length",
    ]
    assert len(episodes) == 4 * 2
    for r in rows:
        mine = [
            e for e in episodes if (e["friction"], e["gravity"]) == (r["friction"], r["gravity"])
        ]
        assert [e["env_seed"] for e in mine] == [str(ROBUSTNESS_SEED), str(ROBUSTNESS_SEED + 1)]
        returns = [float(e["return"]) for e in mine]
        assert np.mean(returns) == pytest.approx(float(r["return_mean"]), rel=1e-12)

    run_eval([*base, "--choice", "attack", "--attack_mode", "all", "--eps", "0", "0.1"])
    rows = read_csv(tmp_path / "attack-all.csv")
    episodes = read_csv(tmp_path / "attack-all-episodes.csv")
    assert [(e["attack_mode"], e["eps"], e["episode"]) for e in episodes[:3]] == [
        ("random", "0.0", "0"),
        ("random", "0.0", "1"),
        ("random", "0.1", "0"),
    ]
    assert len(episodes) == 3 * 2 * 2
    assert list(rows[0]) == [
        "attack_mode",
        "eps",
        "episodes",
        "return_mean",
        "return_std",
        "normalized_mean",
        "normalized_std",
    ]
    assert [r["attack_mode"] for r in rows] == [
        "random",
        "random",
        "action_diff",
        "action_diff",
        "min_Q",
        "min_Q",
    ]
    assert (tmp_path / "attack-all.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "attack-all-summary.md").read_text().splitlines()
    for i, mode in enumerate(("random", "action_diff", "min_Q")):
        scores = [float(r["normalized_mean"]) for r in rows[2 * i : 2 * i + 2]]
        cost = scores[0] - np.mean(scores)  # the budgets are 0 and 0.1
        cells = " | ".join(f"{s:.1f}" for s in [*scores, np.mean(scores), cost])
        assert f"| {label} | {mode} | {cells} |" in summary

    out = run_eval([*base, "--choice", "clean"])
    clean = read_csv(tmp_path / "clean.csv")[0]
    episodes = read_csv(tmp_path / "clean-episodes.csv")
    assert list(episodes[0]) == ["episode", "env_seed", "return", "normalized", "length"]
    assert [(e["episode"], e["env_seed"]) for e in episodes] == [
        ("0", str(ROBUSTNESS_SEED)),
        ("1", str(ROBUSTNESS_SEED + 1)),
    ]
    returns = [float(e["return"]) for e in episodes]
    assert np.mean(returns) == pytest.approx(float(clean["return_mean"]), rel=1e-12)
    assert np.std(returns) == pytest.approx(float(clean["return_std"]), rel=1e-9, abs=1e-9)
    assert all(1 <= int(e["length"]) <= 1000 for e in episodes)
    scores = ", ".join(f"{float(e['normalized']):.1f}" for e in episodes)
    assert f"normalized score by episode: {scores}" in out.stdout
    # ε = 0 equals the clean evaluation, for every attack
    for r in rows[::2]:
        assert r["return_mean"] == clean["return_mean"]
    # normalization: mean normalized with the offset, std scaled by the slope only
    slope = 100 / (3234.3 + 20.272305)
    assert float(clean["normalized_std"]) == pytest.approx(float(clean["return_std"]) * slope)
    assert float(clean["normalized_mean"]) == pytest.approx(
        (float(clean["return_mean"]) + 20.272305) * slope
    )

    again = run_eval([*base, "--choice", "clean"], check=False)  # never overwrite silently
    assert again.returncode == 1 and "exists from an earlier evaluation" in again.stderr


def test_eval_cli_errors(smoke_run, tmp_path):
    policy = str(smoke_run[0] / "policy.pt")
    proc = run_eval(
        [
            "--task",
            "walker2d-medium-v2",
            "--policy_path",
            policy,
            "--choice",
            "clean",
            "--out",
            str(tmp_path),
        ],
        check=False,
    )
    assert proc.returncode == 1 and "was trained on hopper-medium-v2" in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = run_eval(
        [
            "--task",
            "hopper-medium-v2",
            "--policy_path",
            policy,
            "--choice",
            "attack",
            "--attack_mode",
            "fgsm",
        ],
        check=False,
    )
    assert proc.returncode == 2 and "invalid choice: 'fgsm'" in proc.stderr
    proc = run_eval(
        ["--task", "hopper-medium-v2", "--policy_path", policy, "--choice", "robust"], check=False
    )
    assert proc.returncode == 2
    assert not any(tmp_path.iterdir())


def test_a_run_folder_stands_for_its_policy_file(smoke_run, tmp_path):
    from micro.eval_sweep import policy_file_of

    run_dir = smoke_run[0]
    assert policy_file_of(str(run_dir)) == str(run_dir / "policy.pt")
    assert policy_file_of("no/such/file.pt") == "no/such/file.pt"  # load_policy says it is missing
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(MicroError, match=r"no policy\.pt yet.*python -m micro\.results export"):
        policy_file_of(str(killed))
    with pytest.raises(MicroError, match=r"a folder without policy\.pt"):
        policy_file_of(str(tmp_path / "killed" / "checkpoints"))
    base = ["--choice", "clean", "--eval_episodes", "1", "--out"]
    run_eval([*base, str(tmp_path / "by-file"), "--policy_path", str(run_dir / "policy.pt")])
    run_eval([*base, str(tmp_path / "by-run"), "--policy_path", str(run_dir)])
    by_file, by_run = (read_csv(tmp_path / d / "clean.csv") for d in ("by-file", "by-run"))
    assert by_file == by_run and len(by_file) == 1


def test_policy_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "micro-policy-v1", "payload": object.__new__(Attack)}, path)
    with pytest.raises(MicroError, match="cannot load policy file"):
        load_policy(path, "hopper-medium-v2", torch.device("cpu"))
