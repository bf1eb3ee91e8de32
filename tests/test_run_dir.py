"""micro/run_dir.py: the run directory's layout, state and experiment keys."""

from __future__ import annotations

import os

import pytest

from micro import MicroError
from micro.config import resolve_config
from micro.run_dir import (
    NOT_EXPERIMENT_KEYS,
    RUN_ONLY_KEYS,
    RunDir,
    RunState,
    experiment,
    find_run_dirs,
)


def test_layout_names_every_file_below_the_folder(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config_file == tmp_path / "r" / "config.yaml"
    assert run.checkpoint_file == tmp_path / "r" / "checkpoints" / "last.pt"
    assert run.snapshot_file(30) == tmp_path / "r" / "snapshots" / "epoch30.pt"
    assert RunDir(str(tmp_path)).path == tmp_path  # str paths become Paths


def test_state_new_partial_finished_and_a_foreign_folder(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.state() == RunState.NEW  # absent
    run.path.mkdir()
    assert run.state() == RunState.NEW  # empty
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(MicroError, match=r"holds files but no config\.yaml"):
        run.state()
    run.config_file.write_text("task: hopper-medium-v2\nseed: 0\n")
    assert run.state() == RunState.PARTIAL and not run.finished
    run.policy_file.write_bytes(b"")
    assert run.state() == RunState.FINISHED and run.finished


def test_read_config_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(MicroError, match="not a run directory"):
        RunDir(tmp_path).read_config()
    (tmp_path / "config.yaml").write_text("[1, 2]")
    with pytest.raises(MicroError, match="is not a run's config"):
        RunDir(tmp_path).read_config()
    (tmp_path / "config.yaml").write_text("task: [unclosed")
    with pytest.raises(MicroError, match="cannot read"):
        RunDir(tmp_path).read_config()


def test_create_makes_a_new_folder_each_time_and_claim_takes_only_an_empty_one(tmp_path):
    a = RunDir.create(tmp_path, "mujoco/hopper/medium-v0", "micro", 3)
    b = RunDir.create(tmp_path, "mujoco/hopper/medium-v0", "micro", 3)
    assert a != b and a.path.parent == b.path.parent == tmp_path / "mujoco/hopper/medium-v0/micro"
    assert a.path.name.startswith("seed3-") and a.path.is_dir()
    assert RunDir.claim(tmp_path / "fixed").path.is_dir()
    (tmp_path / "fixed" / "x").write_text("")
    with pytest.raises(MicroError, match="not empty"):
        RunDir.claim(tmp_path / "fixed")


def test_seeds_paths_and_data_records_are_not_the_experiment():
    base = {"task": "hopper-medium-v2", "seed": 0, "penalty_coef": 0.5, "dataset_sha256": "ab"}
    same = {**base, "seed": 4, "dataset": "/elsewhere.hdf5", "logdir": "x", "sim": {"a": 1}}
    assert experiment(same) == experiment(base) == {**experiment(base), "algo": "micro"}
    assert experiment({**base, "penalty_coef": 1.0}) != experiment(base)
    assert experiment({**base, "dataset_sha256": "cd"}) != experiment(base)
    assert RUN_ONLY_KEYS < NOT_EXPERIMENT_KEYS


def test_a_sweeps_folder_hash_is_unchanged(tmp_path):
    """An existing sweep finds its runs again only if the hash of a config stays what it was:
    pinned to the value code before micro/run_dir.py gave (the paths stay in it)."""
    from micro.sweep import config_hash

    cfg = resolve_config("hopper-medium-v2", overrides={"seed": 3, "dataset": "/x.hdf5"})
    assert config_hash(cfg, "abc") == "7d9eaa6e"
    other_seed = resolve_config("hopper-medium-v2", overrides={"seed": 5, "dataset": "/x.hdf5"})
    assert config_hash(other_seed, "abc") == "7d9eaa6e"
    assert config_hash(cfg, "abd") != "7d9eaa6e"


def test_find_run_dirs_reads_each_run_once_as_named(tmp_path):
    for name in ("a/r1", "a/b/r2", "c"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text("task: t\nseed: 0\n")
    (tmp_path / "a/r1/progress.csv").write_text("epoch\n1\n")
    (tmp_path / "a/b/r2/progress.csv").write_text("epoch\n1\n")  # "c" has not logged
    found = list(find_run_dirs([tmp_path / "a", tmp_path / "a" / "r1"]))
    assert [r.path for r in found] == [tmp_path / "a/b/r2", tmp_path / "a/r1"]
    with pytest.raises(MicroError, match="does not exist"):
        list(find_run_dirs([tmp_path / "none"]))


HOLD = """
import sys, time
from micro.run_dir import RunDir
with RunDir(sys.argv[1]).writer():
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path, seconds):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_one_writer_a_second_is_refused_naming_the_holder(tmp_path):
    import socket

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    proc = _holder(run.path, 60)
    try:
        with pytest.raises(MicroError) as caught, run.writer():
            pass
        message = str(caught.value)
        assert f"pid {proc.pid} on {socket.gethostname()} writes it" in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    with run.writer():  # killed: the OS released its lock, the run is writable again
        assert run.state() == RunState.NEW  # the lock file is not a file of the run
        assert str(os.getpid()) in run.lock_file.read_text()
    assert RunDir.claim(run.path) == run  # nor does it make the folder non-empty


def test_a_holder_that_ends_releases_the_run(tmp_path):
    proc = _holder(tmp_path, 0)
    proc.wait()
    with RunDir(tmp_path).writer():
        pass
