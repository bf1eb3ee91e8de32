"""Exact resume, determinism, safe files, the numerical guard, and bad input."""

import json
import os
import platform
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, on_small_disk, only_run_dir, run_train

from micro import MicroError
from micro.config import resolve_config
from micro.data.d4rl import read_hdf5, write_hdf5
from micro.provenance import read_sessions
from micro.run_dir import TIMED_STAGES
from micro.utils import atomic_path, atomic_torch_save, keep_freed_memory, safe_torch_load

SMALL = [
    "--task",
    "hopper-medium-v2",
    "--seed",
    "5",
    "--epoch",
    "8",
    "--step_per_epoch",
    "15",
    "--rollout_freq",
    "10",
    "--rollout_batch_size",
    "64",
    "--eval_freq",
    "2",
    "--eval_episodes",
    "2",
    "--dynamics_max_epochs",
    "2",
    "--hidden_dims",
    "32",
    "32",
    "--dynamics_hidden_dims",
    "32",
    "32",
    "32",
    "32",
]


def small_run(hopper_file, logdir, env, extra=()):
    run_train([*SMALL, "--dataset", str(hopper_file), "--logdir", str(logdir), *extra], env)
    return only_run_dir(logdir)


@pytest.fixture(scope="module")
def reference(hopper_file, tmp_path_factory):
    return small_run(hopper_file, tmp_path_factory.mktemp("ref"), dict(os.environ))


def test_same_seed_same_progress_csv(reference, hopper_file, tmp_path):
    again = small_run(hopper_file, tmp_path, dict(os.environ))
    assert (again / "progress.csv").read_text() == (reference / "progress.csv").read_text()


def killed_run(args, logdir, rows=4):
    """Start ``train.py ARGS --logdir LOGDIR``, SIGKILL it once progress.csv has ``rows``
    lines (header included), and return its run folder, unfinished."""
    cmd = [sys.executable, "train.py", "--no_progress", *args, "--logdir", str(logdir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    run_dir = None
    while time.time() < deadline:  # wait for a few epochs and their checkpoint, then SIGKILL
        runs = list(logdir.glob("*/*/*"))
        if runs and (runs[0] / "progress.csv").exists():
            run_dir = runs[0]
            if len((run_dir / "progress.csv").read_text().splitlines()) >= rows:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None and not (run_dir / "policy.pt").exists(), "killed too late"
    return run_dir


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(reference, hopper_file, tmp_path):
    run_dir = killed_run([*SMALL, "--dataset", str(hopper_file)], tmp_path)
    before = safe_torch_load(run_dir / "checkpoints" / "last.pt", "checkpoint")["timings"]
    out = run_train(["--resume", str(run_dir)], dict(os.environ))
    assert "resuming at epoch" in out.stdout
    first, again = read_sessions(run_dir)  # one line per session, the same code
    assert "--resume" in again["argv"] and again["code"] == first["code"]
    assert "started on other code" not in out.stderr
    assert (run_dir / "progress.csv").read_text() == (reference / "progress.csv").read_text()
    episodes = (run_dir / "eval-episodes.csv").read_text()
    assert episodes == (reference / "eval-episodes.csv").read_text()
    a = torch.load(run_dir / "policy.pt", weights_only=True)
    b = torch.load(reference / "policy.pt", weights_only=True)
    for key in a["actor"]:
        torch.testing.assert_close(a["actor"][key], b["actor"][key], rtol=0, atol=0)
    # wall time adds up over both sessions; the dynamics were fitted in the first only
    after = json.loads((run_dir / "timings.json").read_text())
    assert set(after) == set(TIMED_STAGES) == set(before)
    assert after["dynamics"] == round(before["dynamics"], 1) > 0
    for stage in ("rollouts", "updates", "evaluation"):
        assert before[stage] > 0 and after[stage] >= round(before[stage], 1)


def test_a_killed_rambo_run_resumes_exactly(hopper_file, tmp_path):
    """RAMBO trains its model: the model and its optimizer are in the checkpoint, so a resumed
    run ends with the same policy and the same final model as an uninterrupted one."""
    args = [*SMALL, "--algo", "rambo", "--dataset", str(hopper_file), "--epoch", "6"]
    args += ["--dynamics_update_freq", "15", "--adv_steps", "5", "--bc_epochs", "1"]
    reference = small_run(hopper_file, tmp_path / "ref", dict(os.environ), args[len(SMALL) :])
    run_dir = killed_run(args, tmp_path / "killed", rows=3)
    run_train(["--resume", str(run_dir)], dict(os.environ))
    assert (run_dir / "progress.csv").read_text() == (reference / "progress.csv").read_text()
    for name in ("policy.pt", "dynamics-final/model.pt"):
        a = torch.load(run_dir / name, weights_only=True)
        b = torch.load(reference / name, weights_only=True)
        for part in ("actor", "critics") if name == "policy.pt" else ("state_dict",):
            for key in a[part]:
                torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0)


def _interrupt_fit_at_epoch(monkeypatch, epoch):
    """Ctrl-C in the dynamics fit's ``epoch``, after a checkpoint at every earlier epoch."""
    from micro import dynamics

    calls, real = [], dynamics.holdout_mse

    def holdout_mse(*args):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(dynamics, "FIT_CHECKPOINT_EVERY_S", 0.0)
    monkeypatch.setattr(dynamics, "holdout_mse", holdout_mse)
    return lambda: monkeypatch.setattr(dynamics, "holdout_mse", real)


def test_a_run_stopped_in_its_dynamics_fit_resumes_the_fit(
    reference, hopper_file, tmp_path, monkeypatch, capsys
):
    """Resume used to fit a run's dynamics from scratch when the run was stopped before its
    first training checkpoint; now the fit continues and the run ends as the reference does."""
    from micro.cli.train import train_main

    undo = _interrupt_fit_at_epoch(monkeypatch, 2)
    args = [*SMALL, "--dataset", str(hopper_file), "--logdir", str(tmp_path), "--no_progress"]
    assert train_main(args) == 130
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "dynamics" / "fit_checkpoint.pt").is_file()
    assert not (run_dir / "dynamics" / "model.pt").exists()
    undo()
    capsys.readouterr()
    assert train_main(["--resume", str(run_dir), "--no_progress"]) == 0
    assert "dynamics fit: continuing from epoch 1" in capsys.readouterr().out
    assert not (run_dir / "dynamics" / "fit_checkpoint.pt").exists()
    assert (run_dir / "progress.csv").read_text() == (reference / "progress.csv").read_text()


def test_a_resumed_fit_drops_the_fitting_curve_written_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from micro.logger import RunLogger

    first = RunLogger(tmp_path)
    for epoch in (1, 2, 3):  # the checkpoint had epoch 1 when this process was killed
        first.dynamics_scalars({"holdout_loss": 10.0 * epoch}, epoch)
    first.close()
    again = RunLogger(tmp_path, resume=True)
    for epoch in (2, 3, 4):
        again.dynamics_scalars({"holdout_loss": float(epoch)}, epoch)
    again.close()
    acc = EventAccumulator(str(tmp_path / "tb" / "dynamics"))
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("dynamics/holdout_loss")]
    assert points == [(1, 10.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_fit_dynamics_cut_short_continues_with_the_same_command(
    hopper_file, tiny_config, tmp_path, monkeypatch, capsys
):
    from micro.cli.train import fit_dynamics_main

    common = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file), "--no_progress"]
    common += ["--config", str(tiny_config)]
    assert fit_dynamics_main([*common, "--out", str(tmp_path / "whole")]) == 0
    undo = _interrupt_fit_at_epoch(monkeypatch, 3)
    cut = tmp_path / "cut"
    assert fit_dynamics_main([*common, "--out", str(cut)]) == 130
    assert {p.name for p in cut.iterdir()} == {"fit_checkpoint.pt", "writer.lock"}
    undo()
    capsys.readouterr()
    assert fit_dynamics_main([*common, "--out", str(cut)]) == 0
    assert "dynamics fit: continuing from epoch 2" in capsys.readouterr().out
    assert not (cut / "fit_checkpoint.pt").exists()
    a = safe_torch_load(cut / "model.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "whole" / "model.pt")["state_dict"]
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=0, atol=0)
    info = json.loads((cut / "dynamics.json").read_text())
    assert info["epochs"] == 3 and info["fit_seconds"] >= 0
    assert fit_dynamics_main([*common, "--out", str(cut)]) == 1  # finished: a new folder, please
    assert "exists; choose a new --out" in capsys.readouterr().err


def test_resume_refuses_a_finished_run_and_extra_flags(reference):
    proc = run_train(["--resume", str(reference)], dict(os.environ), check=False)
    assert proc.returncode == 1 and "already finished" in proc.stderr
    proc = run_train(["--resume", str(reference), "--epoch", "9"], dict(os.environ), check=False)
    assert proc.returncode == 1 and "drop --epoch" in proc.stderr


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "micro-checkpoint-v1", "evil": MicroError("x")}, path)
    with pytest.raises(MicroError, match="cannot load checkpoint"):
        safe_torch_load(path, "checkpoint")


def test_atomic_write_keeps_the_previous_file_when_interrupted(tmp_path):
    target = tmp_path / "policy.pt"
    atomic_torch_save({"v": torch.tensor(1)}, target)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt
    assert torch.load(target, weights_only=True)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["policy.pt"]


def _small_learner():
    from micro.algos.micro import MICRO
    from micro.buffer import Batch, ReplayBuffer
    from micro.config import Config

    torch.manual_seed(0)
    agent = MICRO(Config(hidden_dims=(8,)), 3, 2, None)
    buf = ReplayBuffer(10, 3, 2, torch.device("cpu"))
    buf.add(
        Batch(
            torch.randn(6, 3),
            torch.randn(6, 2),
            torch.randn(6, 3),
            torch.ones(6, 1),
            torch.zeros(6, 1),
        )
    )
    batch = Batch(
        torch.randn(4, 3), torch.rand(4, 2), torch.randn(4, 3), torch.randn(4, 1), torch.zeros(4, 1)
    )
    agent.update(batch, 4)  # optimizer state exists
    return agent, buf, batch


def test_background_checkpoint_is_the_state_when_it_was_asked_for(tmp_path):
    """Training goes on while the checkpoint is written: the file must hold the state at the
    call, not the weights, moments and buffer rows updated in place after it."""
    from micro.checkpoint import CheckpointWriter, Progress, load_checkpoint, save_checkpoint

    agent, buf, batch = _small_learner()
    path = tmp_path / "last.pt"
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    moments = agent.critic_optim.state_dict()["state"][0]["exp_avg"].clone()
    rows = buf.storage.rewards[:6].clone()
    writer = CheckpointWriter()
    save_checkpoint(path, "hopper-medium-v2", agent, buf, Progress(1, 1), writer)
    for _ in range(3):  # what the loop does meanwhile
        agent.update(batch, 4)
    buf.storage.rewards.fill_(7.0)
    writer.wait()
    assert not torch.equal(agent.state_dict()["actor.mean.weight"], before["actor.mean.weight"])
    fresh, fresh_buf, _ = _small_learner()
    load_checkpoint(path, "hopper-medium-v2", fresh, fresh_buf)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(
        fresh.critic_optim.state_dict()["state"][0]["exp_avg"], moments, rtol=0, atol=0
    )
    assert torch.equal(fresh_buf.storage.rewards[:6], rows) and fresh_buf.size == 6


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path):
    from micro.checkpoint import CheckpointWriter, Progress, save_checkpoint

    agent, buf, _ = _small_learner()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    writer = CheckpointWriter()
    save_checkpoint(blocker / "last.pt", "hopper-medium-v2", agent, buf, Progress(), writer)
    with pytest.raises(
        MicroError, match=r"cannot write .*last\.pt: .*a-file is a file, not a folder"
    ):
        writer.wait()
    writer.wait()  # reported once


def test_a_file_cannot_be_written_over_a_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(MicroError, match=r"cannot write .*folder: it is a folder; name a file"):
        atomic_torch_save({"x": 1}, tmp_path / "folder")
    assert list(tmp_path.iterdir()) == [tmp_path / "folder"]  # and nothing left beside it


def test_non_finite_loss_stops_at_its_step_keeping_the_checkpoint(
    hopper_file, tmp_path, monkeypatch
):
    from micro.algos.sac import SAC
    from micro.pipeline import run

    real_update = SAC.update
    calls = {"n": 0}

    def update(self, batch, n_real):
        calls["n"] += 1
        metrics = real_update(self, batch, n_real)
        if calls["n"] == 20:  # step 20 = the 5th step of epoch 2 (15 steps per epoch)
            # on the metrics' device: the loop stacks them there before reading them
            metrics["critic_loss"] = torch.full_like(metrics["critic_loss"], float("nan"))
        return metrics

    monkeypatch.setattr(SAC, "update", update)
    cfg = resolve_config(
        "hopper-medium-v2",
        overrides={
            "dataset": str(hopper_file),
            "logdir": str(tmp_path),
            "epoch": 3,
            "step_per_epoch": 15,
            "rollout_freq": 10,
            "rollout_batch_size": 64,
            "eval_freq": 5,
            "eval_episodes": 1,
            "dynamics_max_epochs": 1,
            "hidden_dims": (16,),
            "dynamics_hidden_dims": (16,),
            "dynamics_weight_decay": (0.0, 0.0),
            # the fault is injected by counting Python calls of update, which a recorded CUDA
            # graph makes only while recording; the guard reads the same metrics either way
            "cuda_graph": False,
        },
    )
    with pytest.raises(MicroError) as err:
        run(cfg, progress=False)
    assert "non-finite critic_loss (nan) at step 20 (epoch 2)" in str(err.value)
    run_dir = only_run_dir(tmp_path)
    assert "last good checkpoint" in str(err.value)
    assert safe_torch_load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run_dir / "policy.pt").exists()


# --- bad input: one line, exit code != 0, nothing half-written ---


def _bad_files(hopper_file, tmp_path):
    raw = read_hdf5(hopper_file)
    cut = tmp_path / "truncated.hdf5"
    cut.write_bytes(hopper_file.read_bytes()[: hopper_file.stat().st_size // 3])
    no_key = tmp_path / "no-timeouts.hdf5"
    write_hdf5(no_key, {k: v for k, v in raw.items() if k != "timeouts"})
    nan = tmp_path / "nan.hdf5"
    obs = raw["observations"].copy()
    obs[17, 4] = np.nan
    write_hdf5(nan, {**raw, "observations": obs})
    html = tmp_path / "page.hdf5"
    html.write_text("<html>403 Forbidden</html>")
    return {"truncated": cut, "no_key": no_key, "nan": nan, "html": html}


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "a damaged or truncated HDF5 file"),
        ("no_key", "lacks key(s) timeouts"),
        ("nan", "observations holds NaN or inf (first at row 17)"),
        ("html", "is not an HDF5 dataset; pass a D4RL-format .hdf5 file"),
    ],
)
def test_bad_dataset_files(case, message, hopper_file, tmp_path, cli_env):
    path = _bad_files(hopper_file, tmp_path)[case]
    proc = run_train(
        ["--task", "hopper-medium-v2", "--dataset", str(path), "--logdir", str(tmp_path / "runs")],
        cli_env,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_log_directory_not_writable(hopper_file, tmp_path, cli_env):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_train(
        [
            "--task",
            "hopper-medium-v2",
            "--dataset",
            str(hopper_file),
            "--logdir",
            str(blocker / "runs"),
        ],
        cli_env,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot create the run directory" in proc.stderr and "--logdir" in proc.stderr
    assert blocker.read_text() == "not a folder"


def test_debug_shows_the_traceback(tmp_path, cli_env):
    proc = run_train(
        ["--task", "hopper-medium-v2", "--dataset", str(tmp_path / "none.hdf5"), "--debug"],
        cli_env,
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_written_datasets_are_atomic(tmp_path, hopper_file):
    raw = read_hdf5(hopper_file)
    target = tmp_path / "d.hdf5"
    write_hdf5(target, raw)
    with pytest.raises(TypeError):
        write_hdf5(target, {**raw, "bad": object()})
    with h5py.File(target) as f:  # the earlier file is intact
        assert len(f["observations"]) == len(raw["observations"])
    assert [p.name for p in tmp_path.iterdir()] == ["d.hdf5"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


# --- storage that refuses writes: one line, temporary files removed, the last good file kept ---


def test_a_full_disk_is_one_line_and_keeps_the_last_good_file(tmp_path, monkeypatch):
    """A fault-injecting writer: half a file, then ENOSPC."""
    import errno
    from pathlib import Path

    target = tmp_path / "last.pt"
    atomic_torch_save({"v": torch.tensor(1)}, target)

    def full(self, data):
        with open(self, "wb") as fh:
            fh.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(MicroError) as caught:
        atomic_torch_save({"v": torch.tensor(2)}, target)
    assert str(caught.value).startswith(f"cannot write {target}: No space left on device (")
    assert "free there)" in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_collect_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """It used to crash the interpreter (exit 139) after pages of HDF5 errors, leaving its
    temporary file."""
    disk = tmp_path / "disk"
    args = [sys.executable, "-m", "micro.datagen.collect", "--env", "hopper", "--kind", "random"]
    args += ["--steps", "20000", "--out", disk / "d.hdf5", "--no_progress"]
    proc, left = on_small_disk(args, disk, size="1m")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: cannot write {disk / 'd.hdf5'}: ")
    assert "No space left on device" in line and "free there" in line
    assert left == []


def test_training_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(
    tmp_path, hopper_file, tiny_config
):
    disk = tmp_path / "disk"
    args = [sys.executable, "train.py", "--no_progress", "--task", "hopper-medium-v2"]
    args += ["--dataset", hopper_file, "--config", tiny_config, "--logdir", disk]
    args += ["--epoch", "30"]
    proc, left = on_small_disk(args, disk, size="300k")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "No space left on device" in line, proc.stderr
    assert not [f for f in left if f.endswith(".tmp")], left
    assert any(f.endswith("config.yaml") for f in left)


@pytest.mark.parametrize("command", ["collect", "report"])
def test_writing_to_a_read_only_filesystem_is_one_line(command, tmp_path, smoke_run):
    disk = tmp_path / "ro"
    if command == "collect":
        args = [sys.executable, "-m", "micro.datagen.collect", "--env", "hopper"]
        args += ["--kind", "random", "--steps", "50", "--out", disk / "d.hdf5", "--no_progress"]
    else:
        args = [sys.executable, "report.py", smoke_run[0], "--out", disk / "report"]
    proc, left = on_small_disk(args, disk, read_only=True)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Read-only file system" in line, proc.stderr
    assert left == []
