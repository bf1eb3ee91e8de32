"""sweep.py on Ray: a 2 × 2 grid of tiny runs, rerun as a no-op, a killed worker resumed exactly,
a run with broken data failing alone. One Ray head (2 CPUs, this machine's) serves the module,
reached with --address as on a cluster."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import pytest
from conftest import ROOT, TINY_RAMBO, run_eval

from micro import MicroError
from micro.sweep import config_hash, plan

pytest.importorskip("ray")
RAY = Path(sys.executable).parent / "ray"
# The module's own head on localhost; token authentication would need a token file shared by
# the head and every sweep, which a test's HOME may not hold.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
# Ray Client's proxy gives the per-client server it spawns 30 s to come up; on a loaded 2-core
# machine importing Ray alone can take longer.
HEAD_ENV = {**ENV, "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "300"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A Ray head of our own (``ray start --head --block``, its own session): stopping it stops
    only its processes, never another Ray on the machine."""
    port, client_port = _free_port(), _free_port()
    temp = Path(f"/tmp/ray-micro-{os.getpid()}")  # short: Ray's socket paths have a length limit
    cmd = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0"]
    cmd += ["--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats", "--block"]
    cmd += [f"--ray-client-server-port={client_port}"]
    head = subprocess.Popen(
        cmd,
        env=HEAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    raylet = temp / "session_latest" / "sockets" / "raylet"
    while not raylet.exists():  # the node is up once its raylet listens
        assert head.poll() is None and time.time() < deadline, "ray start --head failed"
        time.sleep(0.2)
    yield SimpleNamespace(
        address=f"127.0.0.1:{port}",
        client=f"ray://127.0.0.1:{client_port}",
        logs=temp / "session_latest" / "logs",
    )
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def sweep(args, head, check=True, wait=True, client=False):
    """Run ``sweep.py [eval] ARGS`` against the module's Ray head, as a user does (through Ray
    Client with ``client``)."""
    address = head.client if client else head.address
    if args[:1] == ["eval"]:
        cmd = [sys.executable, "sweep.py", "eval", "--address", address, *args[1:]]
    else:
        cmd = [sys.executable, "sweep.py", "--address", address, "--status_every", "1", *args]
    if not wait:
        pipe = subprocess.PIPE
        return subprocess.Popen(cmd, cwd=ROOT, stdout=pipe, stderr=pipe, text=True, env=ENV)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def grid_args(hopper_file, tiny_config, logdir, *extra):
    return [
        "--tasks", "hopper-medium-v2", "hopper-random-v2",
        "--seeds", "0", "1",
        "--dataset", f"hopper-medium-v2={hopper_file}",
        "--dataset", f"hopper-random-v2={hopper_file}",
        "--config", str(tiny_config),
        "--logdir", str(logdir),
        *extra,
    ]  # fmt: skip


def test_run_places_follow_the_config(hopper_file, tiny_config, tmp_path):
    entries, configs = plan(
        ["hopper-medium-v2"], ["micro", "mobile"], [0, 1], [str(tiny_config)], {}, {}, tmp_path
    )
    assert [(e.algo, e.seed) for e in entries] == [
        ("micro", 0),
        ("micro", 1),
        ("mobile", 0),
        ("mobile", 1),
    ]
    a, b = entries[0], entries[1]
    assert a.config_hash == b.config_hash  # seeds of one experiment share the hash
    assert Path(a.run_dir) == tmp_path / "hopper-medium-v2" / "micro" / f"seed0-{a.config_hash}"
    assert entries[2].config_hash != a.config_hash  # another algorithm, another config
    changed, _ = plan(
        ["hopper-medium-v2"],
        ["micro"],
        [0],
        [str(tiny_config)],
        {"penalty_coef": 3.0},
        {},
        tmp_path,
    )
    assert changed[0].run_dir != a.run_dir  # a changed config never reuses a run's folder
    assert config_hash(configs[a.run_dir]) == a.config_hash
    # keeping snapshots changes no number, so an existing sweep's folders keep their names
    snapshots, _ = plan(
        ["hopper-medium-v2"], ["micro"], [0], [str(tiny_config)], {"snapshot_freq": 5}, {}, tmp_path
    )
    assert snapshots[0].run_dir == a.run_dir

    # the content of a --dataset file is part of the experiment, not just its path
    data = tmp_path / "data.hdf5"
    shutil.copy(hopper_file, data)
    args = (["hopper-medium-v2"], ["micro"], [0], [str(tiny_config)], {})
    before, _ = plan(*args, {"hopper-medium-v2": str(data)}, tmp_path)
    again, _ = plan(*args, {"hopper-medium-v2": str(data)}, tmp_path)
    assert before[0].run_dir == again[0].run_dir
    data.write_bytes(data.read_bytes() + b"\0")
    after, _ = plan(*args, {"hopper-medium-v2": str(data)}, tmp_path)
    assert after[0].run_dir != before[0].run_dir
    with pytest.raises(MicroError, match="no such file"):
        plan(*args, {"hopper-medium-v2": str(tmp_path / "absent.hdf5")}, tmp_path)


def test_a_grid_completes_then_reruns_as_a_no_op(ray_address, hopper_file, tiny_config, tmp_path):
    logdir = tmp_path / "grid"
    proc = sweep(grid_args(hopper_file, tiny_config, logdir), ray_address)
    record = json.loads((logdir / "sweep.json").read_text())
    assert record["counts"] == {"finished": 4, "running": 0, "failed": 0, "pending": 0}
    assert {(r["task"], r["seed"]) for r in record["runs"]} == {
        (t, s) for t in ("hopper-medium-v2", "hopper-random-v2") for s in (0, 1)
    }
    for r in record["runs"]:
        run = Path(r["run_dir"])
        assert (run / "policy.pt").exists() and (run / "train.log").exists()
        assert r["final_score"] is not None
    table = (logdir / "report" / "summary.md").read_text()
    for task in ("hopper-medium-v2", "hopper-random-v2"):
        assert f"| {task} | micro | 0 1 | 40 |" in table
    assert "4 done" in proc.stdout

    start = time.time()
    again = sweep(grid_args(hopper_file, tiny_config, logdir), ray_address)
    assert time.time() - start < 30
    assert "4 finished before" in again.stdout and "starts" not in again.stdout
    assert json.loads((logdir / "sweep.json").read_text())["counts"]["finished"] == 4
    (logdir / "report" / "summary.md").unlink()
    sweep(grid_args(hopper_file, tiny_config, logdir, "--report_only"), ray_address)
    assert (logdir / "report" / "summary.md").read_text() == table

    # every finished policy's attack sweep on Ray, one comparison per task
    attack = ["--choice", "attack", "--attack_mode", "random", "--eps", "0", "0.1"]
    attack += ["--eval_episodes", "1", "--n_envs", "1"]
    sweep(["eval", "--logdir", str(logdir), *attack], ray_address)
    table = logdir / "eval" / "hopper-medium-v2" / "attack-random.csv"
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert (logdir / "eval" / "hopper-random-v2" / "attack-random.png").is_file()
    assert len(rows) == 4 and {r["group"] for r in rows} == {"micro"}
    assert {r["seed"] for r in rows} == {"0", "1"}
    # the same numbers as eval.py gives for one of the policies alone
    policy = rows[0]["policy"]
    run_eval(["--policy_path", policy, *attack, "--out", str(tmp_path / "alone")])
    with open(tmp_path / "alone" / "attack-random.csv", newline="") as fh:
        alone = list(csv.DictReader(fh))
    mine = [r for r in rows if r["policy"] == policy]
    assert [float(r["return_mean"]) for r in mine] == [float(r["return_mean"]) for r in alone]
    summary = (logdir / "eval" / "hopper-medium-v2" / "attack-random-summary.md").read_text()
    assert "| micro | random |" in summary  # the two seeds averaged, as in the figure
    # the clean score with each policy's episodes
    clean = ["--choice", "clean", "--eval_episodes", "2", "--n_envs", "1"]
    sweep(["eval", "--logdir", str(logdir), *clean], ray_address)
    with open(logdir / "eval" / "hopper-medium-v2" / "clean-episodes.csv", newline="") as fh:
        episodes = list(csv.DictReader(fh))
    assert len(episodes) == 4 and {e["episode"] for e in episodes} == {"0", "1"}


def test_a_killed_worker_is_resumed_exactly_on_the_next_sweep(
    ray_address, hopper_file, tiny_config, tmp_path
):
    args = ["--tasks", "hopper-medium-v2", "--dataset", f"hopper-medium-v2={hopper_file}"]
    args += ["--config", str(tiny_config), "--epoch", "8", "--max_retries", "0"]
    reference = sweep([*args, "--logdir", str(tmp_path / "reference")], ray_address)
    assert reference.returncode == 0
    (ref_run,) = (tmp_path / "reference").glob("hopper-medium-v2/micro/seed0-*")

    logdir = tmp_path / "killed"
    proc = sweep([*args, "--logdir", str(logdir)], ray_address, wait=False)
    deadline, run = time.time() + 240, None
    while time.time() < deadline:  # wait for two epochs and their checkpoint, then SIGKILL
        runs = list(logdir.glob("hopper-medium-v2/micro/seed0-*"))
        if runs and (runs[0] / "worker.json").exists() and (runs[0] / "progress.csv").exists():
            run = runs[0]
            if len((run / "progress.csv").read_text().splitlines()) >= 3:
                break
        time.sleep(0.05)
    assert run is not None
    os.kill(json.loads((run / "worker.json").read_text())["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "FAILED" in out, out + err
    assert not (run / "policy.pt").exists(), "killed too late"
    record = json.loads((logdir / "sweep.json").read_text())
    assert record["runs"][0]["state"] == "failed" and record["runs"][0]["error"]

    resumed = sweep([*args, "--logdir", str(logdir)], ray_address)
    assert "resumes in" in resumed.stdout
    assert "resuming at epoch" in (run / "train.log").read_text()
    assert (run / "progress.csv").read_text() == (ref_run / "progress.csv").read_text()
    assert json.loads((logdir / "sweep.json").read_text())["runs"][0]["state"] == "finished"


def test_a_run_with_broken_data_fails_alone(ray_address, hopper_file, tiny_config, tmp_path):
    broken = tmp_path / "broken.hdf5"
    with h5py.File(broken, "w") as f:
        f["observations"] = [[0.0] * 11] * 10
    logdir = tmp_path / "mixed"
    args = ["--tasks", "hopper-medium-v2", "hopper-random-v2", "--config", str(tiny_config)]
    args += [
        "--dataset",
        f"hopper-medium-v2={hopper_file}",
        "--dataset",
        f"hopper-random-v2={broken}",
    ]
    proc = sweep([*args, "--logdir", str(logdir)], ray_address, check=False)
    assert proc.returncode == 1
    runs = {r["task"]: r for r in json.loads((logdir / "sweep.json").read_text())["runs"]}
    assert runs["hopper-medium-v2"]["state"] == "finished"
    bad = runs["hopper-random-v2"]
    assert bad["state"] == "failed" and "lacks key(s) actions" in bad["error"]
    assert "\n" not in bad["error"] and not Path(bad["run_dir"]).exists()
    assert f"failed: hopper-random-v2/micro/seed0: {bad['error']}" in proc.stderr
    assert (logdir / "report" / "summary.md").exists()  # the table of what did finish


def test_bad_sweep_arguments_are_one_line_errors(tmp_path):
    for args, message in [
        (["--tasks", "hopper-medium-v2", "--dataset", "nofile"], "use TASK=FILE"),
        (
            ["--tasks", "hopper-medium-v2", "--dataset", "walker2d-medium-v2=x.hdf5"],
            "not in --tasks",
        ),
        (["--tasks", "nope-v2"], "unknown task"),
        (["--tasks", "hopper-medium-v2", "--seeds", "1", "1"], "must not repeat"),
    ]:
        proc = subprocess.run(
            [sys.executable, "sweep.py", *args, "--logdir", str(tmp_path / "x")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


class _RefusingRay:
    """A stand-in for the ``ray`` module whose Ray Client connection is refused ``refusals``
    times, as a busy head's proxy refuses a client whose server died at start."""

    def __init__(self, refusals: int):
        self.refusals, self.inits, self.shutdowns = refusals, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.refusals:
            raise ConnectionAbortedError(
                "Initialization failure from server: RuntimeError: Starting Ray client server "
                "failed. See ray_client_server_23001.err for detailed logs."
            )

    def shutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize("refusals, inits", [(0, 1), (1, 2), (2, 3)])
def test_a_refused_ray_client_is_retried(monkeypatch, refusals, inits):
    import micro.sweep as sweep_module

    fake = _RefusingRay(refusals)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(sweep_module, "CLIENT_RETRY_S", 0.0)
    assert sweep_module.start_ray("ray://head:10001", None) is fake
    assert (fake.inits, fake.shutdowns) == (inits, refusals)


def test_a_ray_client_refused_every_time_is_one_line(monkeypatch):
    import micro.sweep as sweep_module

    fake = _RefusingRay(refusals=10)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(sweep_module, "CLIENT_RETRY_S", 0.0)
    with pytest.raises(MicroError, match=r"cannot start or reach ray://head:10001: Conn") as err:
        sweep_module.start_ray("ray://head:10001", None)
    assert fake.inits == sweep_module.CLIENT_ATTEMPTS == 3
    assert "\n" not in str(err.value) and "ray_client_server" in str(err.value)
    fake = _RefusingRay(refusals=1)  # a plain address is not retried: nothing would change
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(MicroError):
        sweep_module.start_ray("10.0.0.1:6379", None)
    assert fake.inits == 1


def test_a_sweep_through_ray_client(ray_address, hopper_file, tiny_config, tmp_path):
    """``--address ray://host:port``, as from a laptop to a remote cluster."""
    # A head's client server can refuse its first clients while the node is still starting
    # (its runtime-env agent comes up after the raylet); wait until a plain client connects.
    probe = f"import ray; ray.init(address={ray_address.client!r}); ray.shutdown()"
    for _ in range(3):
        ready = subprocess.run(
            [sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=400
        )
        if ready.returncode == 0:
            break
    assert ready.returncode == 0, "the Ray head never accepted a client: " + ready.stderr[-1500:]
    logdir = tmp_path / "client"
    args = ["--tasks", "hopper-medium-v2", "--dataset", f"hopper-medium-v2={hopper_file}"]
    args += ["--config", str(tiny_config), "--logdir", str(logdir)]
    args += ["--algos", "rambo", *TINY_RAMBO]  # the algorithm that trains its model, on Ray
    proc = sweep(args, ray_address, check=False, client=True)
    if proc.returncode != 0:  # the head's own account of refusing the client
        logs = sorted(ray_address.logs.glob("ray_client_server*.err"))
        told = "".join(f"\n--- {f.name}\n{f.read_text(errors='replace')[-1500:]}" for f in logs)
        pytest.fail(proc.stdout[-1500:] + proc.stderr[-1500:] + told)
    record = json.loads((logdir / "sweep.json").read_text())
    assert record["counts"]["finished"] == 1
    run = Path(record["runs"][0]["run_dir"])
    assert run.parent.name == "rambo" and (run / "policy.pt").exists()
    assert (run / "dynamics-final" / "model.pt").exists()


def test_packs_group_the_seeds_of_one_experiment():
    from micro.sweep import RunEntry, packs

    def entry(task, algo, seed, digest="h1"):
        return RunEntry(task, algo, seed, f"/x/{task}/{algo}/seed{seed}-{digest}", digest)

    entries = [entry("t", "micro", s) for s in (0, 1, 2)] + [entry("t", "micro", 0, "h2")]
    entries += [entry("t", "rambo", s) for s in (0, 1)] + [entry("u", "micro", 5)]
    groups = [[(e.task, e.algo, e.seed, e.config_hash) for e in g] for g in packs(entries)]
    assert groups == [
        [("t", "micro", 0, "h1"), ("t", "micro", 1, "h1"), ("t", "micro", 2, "h1")],
        [("t", "micro", 0, "h2")],
        [("t", "rambo", 0, "h1")],  # no population form: one seed per task
        [("t", "rambo", 1, "h1")],
        [("u", "micro", 5, "h1")],
    ]


def test_pack_seeds_trains_each_experiments_seeds_together(
    ray_address, hopper_file, tiny_config, tmp_path
):
    logdir = tmp_path / "packed"
    args = ["--tasks", "hopper-medium-v2", "--dataset", f"hopper-medium-v2={hopper_file}"]
    args += ["--algos", "micro", "rambo", "--seeds", "0", "1", "--config", str(tiny_config)]
    args += [*TINY_RAMBO, "--logdir", str(logdir), "--pack_seeds"]
    proc = sweep(args, ray_address)
    assert "hopper-medium-v2/micro: seeds 0 1 train together" in proc.stdout
    assert "rambo: seeds" not in proc.stdout
    record = json.loads((logdir / "sweep.json").read_text())
    assert record["counts"]["finished"] == 4 and record["grid"]["pack_seeds"] is True
    for r in record["runs"]:
        log = (Path(r["run_dir"]) / "train.log").read_text()
        assert ("a population of 2:" in log) == (r["algo"] == "micro"), r["run_dir"]
        assert (Path(r["run_dir"]) / "policy.pt").exists()
    again = sweep(args, ray_address)
    assert "4 finished before" in again.stdout
