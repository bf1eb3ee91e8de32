"""Shared fixtures: small datasets made in the real MuJoCo simulator, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from micro.data.collect import collect, uniform_policy, write_dataset

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = """\
epoch: 2
step_per_epoch: 20
rollout_freq: 10
rollout_batch_size: 64
eval_episodes: 2
eval_freq: 1
dynamics_max_epochs: 3
hidden_dims: [32, 32]
dynamics_hidden_dims: [32, 32, 32, 32]
"""


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory) -> Path:
    """800 steps of uniform random actions in the real Hopper simulator, D4RL layout."""
    path = tmp_path_factory.mktemp("data") / "hopper-random-tiny.hdf5"
    arrays = collect("hopper", uniform_policy(3, 0), steps=800, seed=0, progress=False)
    write_dataset(path, arrays, "hopper", "uniform random actions", 0)
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for CLI subprocesses: no real D4RL cache, no network."""
    env = dict(os.environ)
    env["D4RL_DATASET_DIR"] = str(tmp_path / "d4rl-cache")
    env["MICRO_D4RL_BASE_URL"] = "http://127.0.0.1:9/none"  # discard port: refused at once
    env.pop("MICRO_DEBUG", None)
    return env


def run_train(args, env, check=True):
    """Run train.py as a user does."""
    proc = subprocess.run(
        [sys.executable, "train.py", "--no_progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_eval(args, check=True, cwd=ROOT):
    """Run eval.py as a user does (from ``cwd``)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "--no_progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def only_run_dir(logdir: Path) -> Path:
    runs = list(logdir.glob("*/micro/*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, hopper_file, tiny_config):
    import os

    logdir = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "D4RL_DATASET_DIR": str(logdir / "no-cache")}
    args = [
        "--task",
        "hopper-medium-v2",
        "--dataset",
        str(hopper_file),
        "--config",
        str(tiny_config),
        "--logdir",
        str(logdir),
        "--seed",
        "3",
    ]
    proc = run_train(args, env)
    return only_run_dir(logdir), proc
