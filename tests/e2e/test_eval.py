"""eval.py run as a user runs it: sweeps, outputs, errors, several policies."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, read_rows, run_eval

from micro import MicroError
from micro.policy_file import load_policy
from micro.utils import ROBUSTNESS_SEED


def test_eval_with_two_policies_draws_one_figure(baseline_runs, tmp_path):
    policies = [str(baseline_runs[a] / "policy.pt") for a in ("micro", "mobile", "rambo")]
    out = tmp_path / "cmp"
    common = ["--policy_path", *policies, "--out", str(out), "--eval_episodes", "1"]
    run_eval([*common, "--choice", "attack", "--attack_mode", "min_Q", "--eps", "0", "0.1"])
    rows = read_rows(out / "attack-min_Q.csv")
    assert [(r["algo"], r["eps"]) for r in rows] == [
        ("micro", "0.0"),
        ("micro", "0.1"),
        ("mobile", "0.0"),
        ("mobile", "0.1"),
        ("rambo", "0.0"),
        ("rambo", "0.1"),
    ]
    assert (out / "attack-min_Q.png").read_bytes()[:4] == b"\x89PNG"
    run_eval([*common, "--choice", "sim2real", "--friction", "1", "--gravity", "1", "2"])
    rows = read_rows(out / "sim2real.csv")
    groups = {"micro seed 3", "mobile seed 3", "rambo seed 3"}
    assert len(rows) == 6 and {r["group"] for r in rows} == groups
    summary = (out / "sim2real-summary.md").read_text().splitlines()
    for group in sorted(groups):  # one line per policy: grid mean, by gravity
        cells = [float(r["normalized_mean"]) for r in rows if r["group"] == group]
        means = " | ".join(f"{v:.1f}" for v in [sum(cells) / 2, *cells])
        assert f"| {group} | {means} |" in summary[:12]
    run_eval([*common, "--choice", "clean"])
    episodes = read_rows(out / "clean-episodes.csv")
    assert [(e["algo"], e["episode"]) for e in episodes] == [
        ("micro", "0"),
        ("mobile", "0"),
        ("rambo", "0"),
    ]
    # the policy's seed and the simulator's are separate columns
    assert [(e["seed"], e["env_seed"]) for e in episodes] == [("3", str(ROBUSTNESS_SEED))] * 3
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
    assert [r["return_mean"] for r in rows[2:4]] == [r["return_mean"] for r in single]


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
    proc = run_eval(["--policy_path", policy, "--choice", "clean", "--seed", "-1"], check=False)
    assert (
        proc.returncode == 1
        and proc.stderr == f"error: --seed must be an integer from 0 to {2**31 - 1}, not -1\n"
    )
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


def test_a_shipped_policy_is_evaluated_outside_the_repository(tmp_path):
    from micro.cli.evaluate import default_out

    shipped = ROOT / "results/halfcheetah-medium-200k/micro/seed0/policy.pt"
    assert default_out(shipped, "runs") == Path(
        "runs/eval/results/halfcheetah-medium-200k/micro/seed0"
    )
    mine = tmp_path / "run" / "policy.pt"
    assert default_out(mine, "runs") == tmp_path / "run" / "eval"
