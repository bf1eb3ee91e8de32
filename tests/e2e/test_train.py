"""The real command line, run as a user runs it, on small datasets made in the simulator."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, algo_run, only_run_dir, read_rows, run_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from micro.utils import sha256_file

TAGS = {
    "loss/critic_loss",
    "loss/actor_loss",
    "train/alpha",
    "train/uncertainty",
    "train/q_mean",
    "train/actor_lr",
    "rollout/reward_mean",
    "dynamics/train_loss",
    "dynamics/holdout_loss",
    "eval/return",
    "eval/normalized_score",
    "eval/normalized_score_min",
    "eval/normalized_score_max",
}


def test_run_directory_layout(smoke_run, hopper_file):
    run_dir, proc = smoke_run
    assert run_dir.name.startswith("seed3-")
    assert run_dir.parent.parent.name == "hopper-medium-v2"
    for rel in (
        "config.yaml",
        "sessions.jsonl",
        "progress.csv",
        "eval-episodes.csv",
        "policy.pt",
        "dynamics/model.pt",
        "dynamics/dynamics.json",
        "checkpoints/last.pt",
    ):
        assert (run_dir / rel).is_file(), rel
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("*.tmp"))
    assert "final: return" in proc.stdout and str(run_dir / "policy.pt") in proc.stdout


def test_config_is_resolved_and_records_the_dataset(smoke_run, hopper_file):
    run_dir, _ = smoke_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["task"] == "hopper-medium-v2" and cfg["seed"] == 3
    assert cfg["penalty_coef"] == 1.0 and cfg["auto_alpha"] is False  # task file
    assert cfg["epoch"] == 2 and cfg["hidden_dims"] == [32, 32]  # preset
    assert cfg["dataset_file"] == str(hopper_file.resolve())
    assert cfg["dataset_sha256"] == sha256_file(hopper_file)


def test_progress_csv_has_one_row_per_epoch(smoke_run):
    run_dir, _ = smoke_run
    rows = list(csv.DictReader((run_dir / "progress.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [20, 40]
    for r in rows:
        assert float(r["eval_return"]) == float(
            r["eval_return"]
        )  # evaluated every epoch (eval_freq 1)
        assert float(r["alpha"]) == pytest.approx(0.1)  # hopper-medium: fixed alpha
        assert float(r["uncertainty"]) > 0


def test_eval_episodes_csv_holds_each_evaluation_episode(smoke_run):
    """One row per episode of every evaluation, which the progress row summarizes exactly."""
    run_dir, _ = smoke_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    episodes = list(csv.DictReader((run_dir / "eval-episodes.csv").open()))
    progress = list(csv.DictReader((run_dir / "progress.csv").open()))
    n = cfg["eval_episodes"]
    assert len(episodes) == n * len(progress)
    for k, row in enumerate(progress):
        mine = episodes[k * n : (k + 1) * n]
        assert {(e["epoch"], e["step"]) for e in mine} == {(row["epoch"], row["step"])}
        assert [int(e["episode"]) for e in mine] == list(range(n))
        assert [int(e["seed"]) for e in mine] == [cfg["seed"] + 100_000 + i for i in range(n)]
        returns = np.array([float(e["return"]) for e in mine])
        normalized = np.array([float(e["normalized"]) for e in mine])
        assert float(row["eval_return"]) == pytest.approx(returns.mean(), rel=1e-12)
        assert float(row["eval_normalized_score"]) == pytest.approx(normalized.mean(), rel=1e-9)
        assert float(row["eval_normalized_score_min"]) == pytest.approx(normalized.min(), rel=1e-12)
        assert float(row["eval_normalized_score_max"]) == pytest.approx(normalized.max(), rel=1e-12)
        assert all(1 <= int(e["length"]) <= 1000 for e in mine)


def test_tensorboard_has_the_scalars(smoke_run):
    run_dir, _ = smoke_run
    tags = set()
    for folder in (run_dir / "tb", run_dir / "tb" / "dynamics"):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        if folder.name == "tb":
            assert [e.step for e in acc.Scalars("eval/return")] == [20, 40]
        else:  # the fitting curve, by fitting epoch
            assert [e.step for e in acc.Scalars("dynamics/holdout_loss")] == [1, 2, 3]
    assert tags >= TAGS, TAGS - tags


def test_policy_file_carries_what_evaluation_needs(smoke_run, hopper_file):
    run_dir, _ = smoke_run
    blob = torch.load(run_dir / "policy.pt", weights_only=True)
    assert blob["format"] == "micro-policy-v3" and blob["task"] == "hopper-medium-v2"
    assert blob["algo"] == "micro" and blob["config"]["algo"] == "micro"
    assert blob["sim"] == {
        "robot": "hopper",
        "env_id": "Hopper-v4",
        "ref_min": -20.272305,
        "ref_max": 3234.3,
        "ref_source": "D4RL",
        "kwargs": "{}",
        "max_episode_steps": 1000,
    }
    assert (blob["obs_dim"], blob["act_dim"], blob["hidden_dims"]) == (11, 3, [32, 32])
    from micro.data.d4rl import load_transitions

    data = load_transitions(hopper_file, None)
    np.testing.assert_allclose(blob["obs_std"].numpy(), data.observations.std(0), rtol=1e-5)
    assert "obs_mean" not in blob  # never read: no longer written
    from micro.nets import Actor, EnsembleCritic

    actor = Actor(11, 3, blob["hidden_dims"])
    actor.load_state_dict(blob["actor"])
    EnsembleCritic(11, 3, blob["hidden_dims"], blob["num_q_ensemble"]).load_state_dict(
        blob["critics"]
    )


def test_load_dynamics_path_copies_the_model_into_the_run(
    smoke_run, hopper_file, tiny_config, tmp_path, cli_env
):
    """The run keeps its own copy (recorded by SHA-256), so moving the source folder away does
    not stop a resume, and a copy replaced inside the run is refused."""
    import shutil

    source = tmp_path / "shared-dynamics"
    shutil.copytree(smoke_run[0] / "dynamics", source)
    common = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file)]
    args = [*common, "--config", str(tiny_config), "--logdir", str(tmp_path / "runs")]
    proc = run_train([*args, "--load_dynamics_path", str(source)], cli_env)
    run = only_run_dir(tmp_path / "runs")
    assert f"dynamics: loaded from {run / 'dynamics'}" in proc.stdout  # no fit
    sha = sha256_file(source / "model.pt")
    assert sha256_file(run / "dynamics" / "model.pt") == sha
    assert yaml.safe_load((run / "config.yaml").read_text())["dynamics_sha256"] == sha
    source.rename(tmp_path / "moved")
    (run / "policy.pt").unlink()  # unfinished again: resume reruns its last epoch's ending
    run_train(["--resume", str(run)], cli_env)
    (run / "policy.pt").unlink()
    other = tmp_path / "other.pt"
    torch.save({**torch.load(run / "dynamics" / "model.pt", weights_only=True)}, other)
    other.replace(run / "dynamics" / "model.pt")  # same weights, other bytes: not the copy
    proc = run_train(["--resume", str(run)], cli_env, check=False)
    assert proc.returncode == 1 and "damaged or was replaced" in proc.stderr, proc.stderr


def test_one_writer_per_run_two_processes(hopper_file, tiny_config, tmp_path, cli_env):
    """A second process writing a run that another is training (a second --resume, a sweep's
    retry) is refused at once with the holder's pid and host; the first run's files stay
    clean (one row per epoch)."""
    import json
    import socket
    import time

    logdir = tmp_path / "runs"
    args = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file), "--config"]
    # long enough to outlive the second process on any machine; interrupted once it is refused
    args += [str(tiny_config), "--logdir", str(logdir), "--epoch", "1000", "--step_per_epoch", "50"]
    first = subprocess.Popen(
        [sys.executable, "train.py", "--no_progress", *args],
        cwd=ROOT,
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, run = time.time() + 120, None
        while run is None and time.time() < deadline and first.poll() is None:
            for lock in logdir.glob("*/micro/*/writer.lock"):
                text = lock.read_text()
                if text and json.loads(text)["pid"] == first.pid:
                    run = lock.parent
            time.sleep(0.05)
        assert run is not None, first.stderr.read() if first.poll() is not None else "no lock"
        second = run_train(["--resume", str(run)], cli_env, check=False)
        assert first.poll() is None, "the first run ended before the second tried"
        assert second.returncode == 1
        line = second.stderr.strip()
        assert "\n" not in line and f"pid {first.pid} on {socket.gethostname()}" in line, line
        progress, deadline = run / "progress.csv", time.time() + 600
        while time.time() < deadline and first.poll() is None:  # two epochs, then Ctrl-C
            if progress.exists() and len(progress.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended while the second was refused"
        first.send_signal(signal.SIGINT)  # Ctrl-C: the run stops between two of its writes
        first.wait(timeout=120)
    finally:
        first.kill()
    epochs = [int(r["epoch"]) for r in read_rows(run / "progress.csv")]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2  # a whole row each


def test_dynamics_records_its_data_and_refuses_another_robot(smoke_run, tmp_path, capsys):
    """halfcheetah and walker2d have the same observation and action sizes, so a model fitted
    on one would load for the other without the robot dynamics.json records."""
    import json

    from micro import MicroError
    from micro.dynamics import read_dynamics_info
    from micro.envs import d4rl_sim
    from micro.pipeline import check_dynamics_source

    folder = smoke_run[0] / "dynamics"
    info = read_dynamics_info(folder)
    config = yaml.safe_load((smoke_run[0] / "config.yaml").read_text())
    assert (info["robot"], info["task"]) == ("hopper", "hopper-medium-v2")
    assert info["dataset_sha256"] == config["dataset_sha256"]
    hopper, cheetah = d4rl_sim("hopper"), d4rl_sim("halfcheetah")
    check_dynamics_source(folder, hopper, config["dataset_sha256"])
    assert capsys.readouterr().err == ""
    check_dynamics_source(folder, hopper, "f" * 64)  # other data of the same robot: a note
    assert "was fitted on other data" in capsys.readouterr().err
    with pytest.raises(MicroError, match=r"fitted on hopper data .*, not halfcheetah"):
        check_dynamics_source(folder, cheetah, None)
    old = tmp_path / "old"  # a folder from before "robot" was recorded: its task tells
    old.mkdir()
    (old / "dynamics.json").write_text(json.dumps({"task": "walker2d-medium-v2"}))
    with pytest.raises(MicroError, match="fitted on walker2d data"):
        check_dynamics_source(old, cheetah, None)
    check_dynamics_source(tmp_path / "bare", cheetah, "f" * 64)  # nothing recorded, nothing to say
    assert capsys.readouterr().err == ""


# --- errors users will hit: one line, non-zero exit, nothing written ---


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "hopper-medium-v3"], "error: unknown task 'hopper-medium-v3'"),
        (
            ["--task", "hopper-medium-v2", "--rollout_length", "x"],
            "error: bad value for rollout_length",
        ),
        (
            ["--task", "walker2d-medium-v2", "--dataset", "DATA"],
            "collected on Hopper-v4 (metadata/env), but walker2d-medium-v2 is a walker2d task",
        ),
        (
            ["--task", "hopper-medium-v2", "--dataset", "/nonexistent.hdf5"],
            "dataset file not found",
        ),
        (["--task", "hopper-medium-v2", "--seed", "-1"], "seed must be an integer from 0 to"),
        (
            ["--task", "hopper-medium-v2", "--dataset", "DATA", "--load_dynamics_path", "/nope"],
            "dynamics model not found: /nope/model.pt",
        ),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, cli_env, hopper_file):
    args = [str(hopper_file) if a == "DATA" else a for a in args]
    proc = run_train([*args, "--logdir", str(tmp_path / "runs")], cli_env, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unreachable_d4rl_fails_fast_with_a_way_out(tmp_path, cli_env):
    proc = run_train(
        ["--task", "walker2d-medium-expert-v2", "--logdir", str(tmp_path / "runs")],
        cli_env,
        check=False,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line.count("\n") == 0
    assert str(Path(cli_env["D4RL_DATASET_DIR"]) / "walker2d_medium_expert-v2.hdf5") in line
    assert "http://127.0.0.1:9/none/walker2d_medium_expert-v2.hdf5" in line
    assert "--dataset" in line and "python -m micro.datagen.collect" in line
    assert not (tmp_path / "runs").exists()
    assert not any(Path(cli_env["D4RL_DATASET_DIR"]).glob("*"))


def test_unknown_flag_exit_code_two(tmp_path, cli_env):
    proc = run_train(["--task", "hopper-medium-v2", "--penalty", "1"], cli_env, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("algo", ["mobile", "mopo", "rambo"])
def test_baseline_cli_run(baseline_runs, algo):
    run_dir = baseline_runs[algo]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["algo"] == algo and run_dir.parent.name == algo
    rows = read_rows(run_dir / "progress.csv")
    assert len(rows) == 2 and all(r["eval_normalized_score"] != "" for r in rows)
    if algo == "rambo":  # the official hopper-medium values; the model trained, then saved
        assert (cfg["rollout_length"], cfg["adv_weight"], cfg["real_ratio"]) == (5, 3e-4, 0.5)
        for key in ("model_sl_loss", "model_adv_loss", "model_advantage", "model_log_prob"):
            assert all(r[key] != "" for r in rows), key
        timings = json.loads((run_dir / "timings.json").read_text())
        assert timings["model_updates"] > 0 and timings["pretraining"] >= 0
        start = torch.load(run_dir / "dynamics" / "model.pt", weights_only=True)["state_dict"]
        final = torch.load(run_dir / "dynamics-final" / "model.pt", weights_only=True)
        assert final["state_dict"].keys() == start.keys()
        moved = [k for k in start if not torch.equal(start[k], final["state_dict"][k])]
        assert "layers.0.weight" in moved and "elites" not in moved
        info = json.loads((run_dir / "dynamics-final" / "dynamics.json").read_text())
        assert (info["trained_by"], info["step"], info["robot"]) == ("rambo", 40, "hopper")
        assert "penalty" not in rows[0] and "uncertainty" not in rows[0]
        assert torch.load(run_dir / "policy.pt", weights_only=True)["algo"] == "rambo"
        return
    assert cfg["rollout_length"] == 5 and cfg["penalty_coef"] == {"mobile": 1.5, "mopo": 5.0}[algo]
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
    assert f"copied from {out})" in proc.stdout
    assert sha256_file(run_dir / "dynamics" / "model.pt") == sha256_file(out / "model.pt")


def test_training_says_its_schedule_and_how_long_the_rest_takes(smoke_run):
    import re

    out = smoke_run[1].stdout
    assert "schedule: 2 epochs x 20 steps, from epoch 1\n" in out
    assert re.search(
        r"the first epoch took \d+ s: about \d+ s more for the remaining 1 epochs", out
    )


def test_steps_that_are_multiples():
    from micro.trainer import _multiples

    assert [_multiples(a, b, 10) for a, b in ((0, 10), (0, 11), (1, 10), (10, 30), (5, 5))] == [
        1,
        2,
        0,
        2,
        0,
    ]
