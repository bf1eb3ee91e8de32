"""Shared fixtures: small datasets made in the real MuJoCo simulator, tiny configs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from micro.datagen.collect import collect, uniform_policy, write_dataset

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

# RAMBO at the tiny config's scale: a model update after each 20-step epoch, short BC
TINY_RAMBO = ["--dynamics_update_freq", "20", "--adv_steps", "10", "--bc_epochs", "1"]

# Device-dependent tests run on every device this machine has: the CPU, and CUDA when present.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory) -> Path:
    """800 steps of uniform random actions in the real Hopper simulator, D4RL layout."""
    path = tmp_path_factory.mktemp("data") / "hopper-random-tiny.hdf5"
    arrays = collect("hopper", uniform_policy(3, 0), steps=800, seed=0, progress=False)
    write_dataset(path, arrays, "hopper", "uniform random actions", 0)
    return path


def make_minari_dataset(
    store: Path,
    dataset_id: str,
    env_id: str = "Hopper-v5",
    steps: int = 300,
    max_len: int = 60,
    refs: tuple[float, float] | None = (-15.0, 3000.0),
    seed: int = 0,
):
    """A real Minari dataset, written by minari's ``create_dataset_from_buffers``: uniform
    random actions in the real simulator, episodes cut (truncated) at ``max_len`` steps."""
    import warnings

    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    buffers, total = [], 0
    while total < steps:
        obs, _ = env.reset(seed=seed * 1000 + len(buffers))
        ep = {
            "observations": [obs],
            "actions": [],
            "rewards": [],
            "terminations": [],
            "truncations": [],
        }
        for t in range(max_len):
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            ep["observations"].append(obs)
            ep["actions"].append(action)
            ep["rewards"].append(reward)
            ep["terminations"].append(terminated)
            ep["truncations"].append(truncated or (t == max_len - 1 and not terminated))
            if terminated or ep["truncations"][-1]:
                break
        total += len(ep["actions"])
        buffers.append(EpisodeBuffer(id=len(buffers), **{k: np.asarray(v) for k, v in ep.items()}))
    kwargs = {} if refs is None else {"ref_min_score": refs[0], "ref_max_score": refs[1]}
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(store)  # where minari writes; read at call time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, num_episodes_average_score=1, **kwargs
            )
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved


@pytest.fixture(scope="session")
def minari_store(tmp_path_factory) -> Path:
    """A Minari store holding test/hopper/random-v0: ~300 steps on Hopper-v5 with its own
    references."""
    store = tmp_path_factory.mktemp("minari-store")
    make_minari_dataset(store, "test/hopper/random-v0")
    return store


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for CLI subprocesses: no real D4RL cache or Minari store, no network."""
    env = dict(os.environ)
    env["D4RL_DATASET_DIR"] = str(tmp_path / "d4rl-cache")
    env["MICRO_D4RL_BASE_URL"] = "http://127.0.0.1:9/none"  # discard port: refused at once
    env["MINARI_DATASETS_PATH"] = str(tmp_path / "minari-store")
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env.pop("MINARI_REMOTE", None)
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


def run_collect(args, env=None):
    """Run ``python -m micro.datagen.collect`` as a user does; the caller checks the outcome."""
    return subprocess.run(
        [sys.executable, "-m", "micro.datagen.collect", "--no_progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
    runs = list(logdir.glob("*/*/*"))  # <task>/<algo>/<run>
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


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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


@pytest.fixture(scope="session")
def baseline_runs(tmp_path_factory, hopper_file, tiny_config, smoke_run):
    """A tiny MOBILE, MOPO and RAMBO run beside the session's MICRO run, all from one fitted
    model (RAMBO's updated after each of its two epochs)."""
    import os

    logdir = tmp_path_factory.mktemp("baselines")
    env = {**os.environ, "D4RL_DATASET_DIR": str(logdir / "no-cache")}
    dynamics = str(smoke_run[0] / "dynamics")
    runs = {"micro": smoke_run[0]}
    for algo in ("mobile", "mopo", "rambo"):
        extra = ["--load_dynamics_path", dynamics, *(TINY_RAMBO if algo == "rambo" else [])]
        runs[algo], _ = algo_run(algo, logdir, hopper_file, tiny_config, env, extra=extra)
    return runs


def on_small_disk(args, mount: Path, size: str = "2m", read_only: bool = False, env=None):
    """Run ``args`` (from the repository root) with a fresh tmpfs of ``size`` mounted at
    ``mount``, in a private mount namespace (``unshare``): a real full or read-only disk, seen
    by that process alone. Returns the process (its stdout less the listing) and the files
    left on the disk (relative paths). Skips the test where this machine allows no such
    namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    script = (
        f'mount -t tmpfs -o {options} tmpfs "$0" || exit 97; "$@"; rc=$?; '
        'echo "@@left"; cd "$0" && find . -type f; exit $rc'
    )
    try:
        proc = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script, str(mount), *map(str, args)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if proc.returncode == 97 or "@@left" not in proc.stdout:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    proc.stdout, listing = proc.stdout.split("@@left\n")
    return proc, sorted(line.removeprefix("./") for line in listing.splitlines())
