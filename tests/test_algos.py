"""MOBILE and MOPO through the whole harness: rollouts, tiny CLI runs, policy files, reports and
multi-policy evaluation."""

import csv
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_eval, run_train

from micro.algos.mopo import MOPO, reward_penalty
from micro.buffer import ReplayBuffer
from micro.config import Config
from micro.data.d4rl import read_hdf5
from micro.dynamics import EnsembleDynamics
from micro.envs import termination_fn
from micro.nets import Actor
from micro.rollout import model_rollout
from micro.utils import ROBUSTNESS_SEED


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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


def algo_run(algo, logdir, hopper_file, tiny_config, env, seed=3, extra=()):
    args = [
        "--task",
        "hopper-medium-v2",
        "--algo",
        algo,
        "--dataset",
        str(hopper_file),
        "--config",
        str(tiny_config),
        "--logdir",
        str(logdir),
        "--seed",
        str(seed),
        *extra,
    ]
    proc = run_train(args, env)
    (run_dir,) = (logdir / "hopper-medium-v2" / algo).iterdir()
    return run_dir, proc


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory, hopper_file, tiny_config, smoke_run):
    """A tiny MOBILE and MOPO run beside the session's MICRO run, all on one fitted model."""
    import os

    logdir = tmp_path_factory.mktemp("baselines")
    env = {**os.environ, "D4RL_DATASET_DIR": str(logdir / "no-cache")}
    dynamics = str(smoke_run[0] / "dynamics")
    runs = {"micro": smoke_run[0]}
    for algo in ("mobile", "mopo"):
        runs[algo], _ = algo_run(
            algo, logdir, hopper_file, tiny_config, env, extra=["--load_dynamics_path", dynamics]
        )
    return runs


@pytest.mark.parametrize("algo", ["mobile", "mopo"])
def test_baseline_cli_run(baseline_runs, algo):
    run_dir = baseline_runs[algo]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["algo"] == algo and run_dir.parent.name == algo
    assert cfg["rollout_length"] == 5 and cfg["penalty_coef"] == {"mobile": 1.5, "mopo": 5.0}[algo]
    rows = read_rows(run_dir / "progress.csv")
    assert len(rows) == 2 and all(r["eval_normalized_score"] != "" for r in rows)
    if algo == "mobile":
        assert "penalty" in rows[0] and float(rows[-1]["penalty"]) > 0
        assert "uncertainty" not in rows[0]
    else:  # MOPO: a reward penalty from the rollouts, no value penalty in the target
        assert float(rows[-1]["rollout_reward_penalty"]) > 0
        assert "penalty" not in rows[0] and "uncertainty" not in rows[0]
    blob = torch.load(run_dir / "policy.pt", weights_only=True)
    assert blob["algo"] == algo


def test_fit_dynamics_alone_then_reuse(hopper_file, tiny_config, tmp_path, cli_env):
    out = tmp_path / "dyn"
    common = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file)]
    proc = subprocess.run(
        [
            sys.executable,
            "fit_dynamics.py",
            *common,
            "--config",
            str(tiny_config),
            "--out",
            str(out),
            "--no_progress",
        ],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.pt").is_file() and (out / "dynamics.json").is_file()
    again = subprocess.run(
        [sys.executable, "fit_dynamics.py", *common, "--out", str(out)],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "exists; choose a new --out" in again.stderr
    run_dir, proc = algo_run(
        "mopo",
        tmp_path / "runs",
        hopper_file,
        tiny_config,
        cli_env,
        extra=["--load_dynamics_path", str(out), "--epoch", "1"],
    )
    assert f"dynamics: loaded from {out}" in proc.stdout
    assert not (run_dir / "dynamics").exists()


def test_step_ticks_are_short():
    from micro.plots import step_label

    labels = [step_label(x) for x in (0, 2_000, 50_000, 150_000, 1_000_000, 2_500_000, 3e6)]
    assert labels == ["0", "2k", "50k", "150k", "1M", "2.5M", "3M"]


def test_report_groups_a_run_from_before_algo_was_recorded_with_later_micro_runs(tmp_path):
    from micro.report import Run, group_runs

    config = {"task": "halfcheetah-medium-v2", "seed": 0, "penalty_coef": 0.5}
    rows = [{"epoch": "1", "step": "1000", "eval_normalized_score": "40.0"}]
    old = Run(tmp_path / "a", dict(config), rows, True)
    new = Run(tmp_path / "b", {**config, "seed": 1, "algo": "micro"}, rows, True)
    mobile = Run(tmp_path / "c", {**config, "seed": 1, "algo": "mobile"}, rows, True)
    groups, notes = group_runs([old, new, mobile])
    assert [(g.algo, [r.seed for r in g.runs]) for g in groups] == [
        ("micro", [0, 1]),
        ("mobile", [1]),
    ]
    assert notes == []


def test_find_runs_keeps_paths_as_given_and_reads_a_run_once(baseline_runs, tmp_path, monkeypatch):
    from micro.report import find_runs

    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    monkeypatch.chdir(tmp_path)
    name = baseline_runs["micro"].name
    # the MICRO run named three ways: its own folder (relative), the tree above it, and absolute
    runs = find_runs([Path("runs/micro") / name, "runs", logdir / "micro" / name])
    assert sorted(str(r.path) for r in runs) == sorted(
        f"runs/{algo}/{src.name}" for algo, src in baseline_runs.items()
    )


def test_behavior_line_comes_from_the_runs_record(baseline_runs, hopper_file, tmp_path):
    from micro.envs import normalized_score
    from micro.report import behavior_score, find_runs

    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    recorded = float(read_hdf5(hopper_file)["metadata/return_mean"])
    expected = normalized_score("hopper", recorded)

    def edit(change):
        for cfg_file in logdir.glob("*/*/config.yaml"):
            cfg = yaml.safe_load(cfg_file.read_text())
            change(cfg)
            cfg_file.write_text(yaml.safe_dump(cfg))
        return behavior_score(find_runs([logdir]))

    assert behavior_score(find_runs([logdir])) == pytest.approx(expected, rel=1e-12)
    # the dataset moved away (a clone of shipped results): the recorded return still draws it
    assert edit(lambda c: c.update(dataset_file="/nowhere/d.hdf5")) == pytest.approx(expected)
    # runs from before the return was recorded: read from the file where it still is ...
    assert edit(lambda c: c.update(dataset_file=str(hopper_file))) == pytest.approx(expected)
    assert edit(lambda c: c.pop("dataset_return_mean")) == pytest.approx(expected)
    # ... and no line when it is gone
    assert edit(lambda c: c.update(dataset_file="/nowhere/d.hdf5")) is None
    # runs on two datasets: no single behavior policy to draw
    (one,) = logdir.glob("mopo/*/config.yaml")
    cfg = yaml.safe_load(one.read_text())
    cfg.update(dataset_sha256="0" * 64, dataset_return_mean=1.0)
    one.write_text(yaml.safe_dump(cfg))
    assert behavior_score(find_runs([logdir])) is None


def test_report_table_equals_the_progress_files(baseline_runs, tmp_path):
    from micro.report import diagnostic_panels, find_runs, group_runs, write_report

    # two seeds of MOBILE: the second a copy with another seed and shifted scores
    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    second = logdir / "mobile" / "seed4-copy"
    shutil.copytree(baseline_runs["mobile"], second)
    cfg = yaml.safe_load((second / "config.yaml").read_text())
    cfg["seed"] = 4
    (second / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = read_rows(second / "progress.csv")
    for r in rows:
        r["eval_normalized_score"] = str(float(r["eval_normalized_score"]) + 10.0)
    with open(second / "progress.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # a MICRO run with another config: reported on its own row, not averaged in
    odd = logdir / "micro" / "odd"
    shutil.copytree(baseline_runs["micro"], odd)
    cfg = yaml.safe_load((odd / "config.yaml").read_text())
    cfg["penalty_coef"], cfg["seed"] = 9.0, 8
    (odd / "config.yaml").write_text(yaml.safe_dump(cfg))

    runs = find_runs([logdir])
    assert len(runs) == 5
    written = write_report(runs, tmp_path / "report")
    table = read_rows(written["csv"])
    (mobile,) = [r for r in table if r["algo"] == "mobile"]
    assert mobile["variant"] == ""
    first = [
        float(r["eval_normalized_score"])
        for r in read_rows(baseline_runs["mobile"] / "progress.csv")
    ]
    finals = np.array([first[-1], first[-1] + 10.0])
    bests = np.array([max(first), max(first) + 10.0])
    assert (mobile["seeds"], mobile["runs"]) == ("3 4", "2")
    assert float(mobile["final_mean"]) == pytest.approx(finals.mean())
    assert float(mobile["final_std"]) == pytest.approx(finals.std())  # ddof 0: 5.0
    assert float(mobile["best_mean"]) == pytest.approx(bests.mean())
    lasts = np.array([np.mean(first[-5:]), np.mean(first[-5:]) + 10.0])
    assert float(mobile["last_evals_mean"]) == pytest.approx(lasts.mean())
    assert float(mobile["last_evals_std"]) == pytest.approx(lasts.std())
    assert mobile["penalty_name"] == "penalty"
    last = read_rows(baseline_runs["mobile"] / "progress.csv")[-1]
    assert float(mobile["q_mean"]) == pytest.approx(float(last["q_mean"]))
    (mopo,) = [r for r in table if r["algo"] == "mopo"]
    assert mopo["penalty_name"] == "rollout_reward_penalty"
    micro_rows = [r for r in table if r["algo"] == "micro"]
    assert len(micro_rows) == 2 and all(r["runs"] == "1" for r in micro_rows)
    assert all(r["variant"] for r in micro_rows)
    md = written["md"].read_text()
    assert "penalty_coef" in md and "not averaged" in md
    assert written["curves-hopper-medium-v2"].read_bytes()[:4] == b"\x89PNG"
    assert written["diagnostics-hopper-medium-v2"].read_bytes()[:4] == b"\x89PNG"
    # the diagnostics: each algorithm's own penalty column, averaged over seeds per step
    panels = diagnostic_panels(group_runs(runs)[0])
    penalty = panels["penalty before its coefficient"]
    assert len(penalty) == 4  # mobile, mopo and MICRO's two variants
    for algo, column in (("mobile", "penalty"), ("mopo", "rollout_reward_penalty")):
        rows = read_rows(baseline_runs[algo] / "progress.csv")
        steps, mean, std = penalty[algo]
        assert steps.tolist() == [int(r["step"]) for r in rows]
        np.testing.assert_allclose(mean, [float(r[column]) for r in rows], rtol=1e-12)
        assert not std.any()  # the second MOBILE seed is a copy of the first's diagnostics
    # the seeds drawn under their mean: each run's own evaluations
    (mobile_group,) = [g for g in group_runs(runs)[0] if g.algo == "mobile"]
    (s3, v3), (s4, v4) = mobile_group.seed_curves()
    assert (
        s3.tolist() == s4.tolist() == [int(r["step"]) for r in read_rows(second / "progress.csv")]
    )
    np.testing.assert_allclose(v4, np.array(first) + 10.0)
    np.testing.assert_allclose(v3, first)
    # each evaluation's worst episode, at the evaluation steps only
    worst = panels["worst evaluation episode (normalized)"]
    rows = [r for r in read_rows(baseline_runs["mopo"] / "progress.csv") if r["eval_return"]]
    steps, mean, _ = worst["mopo"]
    assert steps.tolist() == [int(r["step"]) for r in rows]
    np.testing.assert_allclose(mean, [float(r["eval_normalized_score_min"]) for r in rows])
    proc = subprocess.run(
        [sys.executable, "report.py", str(tmp_path / "nothing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def test_eval_with_two_policies_draws_one_figure(baseline_runs, tmp_path):
    policies = [str(baseline_runs[a] / "policy.pt") for a in ("micro", "mobile")]
    out = tmp_path / "cmp"
    common = ["--policy_path", *policies, "--out", str(out), "--eval_episodes", "1"]
    run_eval([*common, "--choice", "attack", "--attack_mode", "min_Q", "--eps", "0", "0.1"])
    rows = read_rows(out / "attack-min_Q.csv")
    assert [(r["algo"], r["eps"]) for r in rows] == [
        ("micro", "0.0"),
        ("micro", "0.1"),
        ("mobile", "0.0"),
        ("mobile", "0.1"),
    ]
    assert (out / "attack-min_Q.png").read_bytes()[:4] == b"\x89PNG"
    run_eval([*common, "--choice", "sim2real", "--friction", "1", "--gravity", "1", "2"])
    rows = read_rows(out / "sim2real.csv")
    assert len(rows) == 4 and {r["group"] for r in rows} == {"micro seed 3", "mobile seed 3"}
    summary = (out / "sim2real-summary.md").read_text().splitlines()
    for group in ("micro seed 3", "mobile seed 3"):  # one line per policy: grid mean, by gravity
        cells = [float(r["normalized_mean"]) for r in rows if r["group"] == group]
        means = " | ".join(f"{v:.1f}" for v in [sum(cells) / 2, *cells])
        assert f"| {group} | {means} |" in summary[:12]
    run_eval([*common, "--choice", "clean"])
    episodes = read_rows(out / "clean-episodes.csv")
    assert [(e["algo"], e["episode"]) for e in episodes] == [("micro", "0"), ("mobile", "0")]
    # the policy's seed and the simulator's are separate columns
    assert [(e["seed"], e["env_seed"]) for e in episodes] == [("3", str(ROBUSTNESS_SEED))] * 2
    # each policy's numbers equal a single-policy sweep of it
    alone = tmp_path / "alone"
    run_eval(
        [
            "--policy_path",
            policies[1],
            "--out",
            str(alone),
            "--eval_episodes",
            "1",
            "--choice",
            "sim2real",
            "--friction",
            "1",
            "--gravity",
            "1",
            "2",
        ]
    )
    single = read_rows(alone / "sim2real.csv")
    assert [r["return_mean"] for r in rows[2:]] == [r["return_mean"] for r in single]


def test_eval_without_policy_or_task_uses_the_newest_run(baseline_runs, tmp_path):
    logdir = tmp_path / "runs"
    shutil.copytree(baseline_runs["mopo"], logdir / "a")
    proc = run_eval(
        ["--logdir", str(logdir), "--choice", "clean", "--eval_episodes", "1"], cwd=tmp_path
    )
    assert f"policy: {logdir / 'a' / 'policy.pt'} (the newest" in proc.stdout
    assert (logdir / "a" / "eval" / "clean.csv").is_file()
    empty = run_eval(["--logdir", str(tmp_path / "none"), "--choice", "clean"], check=False)
    assert empty.returncode == 1 and "no policy.pt under" in empty.stderr


def test_v1_policy_files_still_load(smoke_run, tmp_path):
    """Files written before the format recorded the algorithm are MICRO policies."""
    from micro.policy_file import load_policy

    blob = torch.load(smoke_run[0] / "policy.pt", weights_only=True)
    old = {k: v for k, v in blob.items() if k != "algo"}
    old.update(format="micro-policy-v1", obs_mean=torch.zeros(11))
    torch.save(old, tmp_path / "old.pt")
    policy = load_policy(tmp_path / "old.pt", None, torch.device("cpu"))
    assert (policy.algo, policy.task) == ("micro", "hopper-medium-v2")
    torch.testing.assert_close(torch.as_tensor(policy.obs_std).float(), blob["obs_std"])
