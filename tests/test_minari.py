"""Minari datasets: reading (Minari's transition rule, the recorded simulator, references), the
download path against local stand-ins, writing with minari's API, and the CLIs end to end.
Every dataset here is made in the real simulator with minari's ``create_dataset_from_buffers``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import minari
import numpy as np
import pytest
import torch
import yaml
from conftest import make_minari_dataset, run_collect, run_eval, run_train
from minari.storage.remotes.cloud_storage import CloudStorage

from micro import MicroError
from micro.config import CONFIG_DIR, Config, read_overrides, resolve_config
from micro.data import minari_data
from micro.data.d4rl import qlearning_dataset
from micro.data.sources import load_task_data, reload_task_data
from micro.datagen.collect import collect, uniform_policy
from micro.envs import REF_RETURNS, SimSpec, parse_task, versioned_sim

DATASET = "test/hopper/random-v0"


@pytest.fixture
def store(minari_store, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_store))
    return minari_store


# --- task names and configs ----------------------------------------------------------------------


def test_parse_minari_ids():
    t = parse_task("mujoco/hopper/medium-v0")
    assert (t.env, t.kind, t.source, t.config_task) == (
        "hopper",
        "medium",
        "minari",
        "hopper-medium-v2",
    )
    assert t.slug == "mujoco--hopper--medium-v0"
    assert parse_task("mujoco/walker2d/simple-v0").config_task == "walker2d-medium-v2"
    assert parse_task("local/halfcheetah/expert-v3").config_task == "halfcheetah-expert-v2"
    odd = parse_task("myorg/mydata-v0")
    assert (odd.env, odd.kind, odd.config_task) == (None, None, None)
    for bad in ("hopper-medium", "mujoco/hopper/medium", "mujoco/hopper/medium-v0/extra x"):
        with pytest.raises(MicroError, match="unknown task"):
            parse_task(bad)


@pytest.mark.parametrize("algo", ["micro", "mobile", "mopo"])
def test_minari_tasks_get_their_d4rl_counterparts_config(algo):
    def values(task):
        return {
            k: v
            for k, v in resolve_config(task, overrides={"algo": algo}).to_dict().items()
            if k != "task"
        }

    assert values("mujoco/hopper/medium-v0") == values("hopper-medium-v2")
    assert values("mujoco/walker2d/simple-v0") == values("walker2d-medium-v2")
    assert values("mujoco/halfcheetah/expert-v0") == values("halfcheetah-expert-v2")
    # an id that names no robot and kind gets SPEC's values and the algorithm's defaults file
    algo_defaults = CONFIG_DIR / algo / "defaults.yaml"
    expected = {
        **Config().to_dict(),
        **(read_overrides(algo_defaults) if algo_defaults.exists() else {}),
        "algo": algo,
    }
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    assert values("myorg/mydata-v0") == {k: v for k, v in expected.items() if k != "task"}
    # overridable like every key
    assert (
        resolve_config(
            "mujoco/hopper/medium-v0", overrides={"algo": algo, "penalty_coef": 7.0}
        ).penalty_coef
        == 7.0
    )


# --- reading -------------------------------------------------------------------------------------


def test_transitions_follow_minaris_rule(store):
    data = load_task_data(parse_task(DATASET), None)
    episodes = list(minari.load_dataset(DATASET).iterate_episodes())
    t = data.transitions
    assert (
        len(t) == sum(len(e.actions) for e in episodes) == minari.load_dataset(DATASET).total_steps
    )
    assert any(e.truncations[-1] for e in episodes) and any(e.terminations[-1] for e in episodes)
    row = 0
    for e in episodes:
        n = len(e.actions)
        rows = slice(row, row + n)
        np.testing.assert_array_equal(t.observations[rows], e.observations[:-1].astype(np.float32))
        np.testing.assert_array_equal(
            t.next_observations[rows], e.observations[1:].astype(np.float32)
        )
        np.testing.assert_array_equal(t.actions[rows], e.actions)
        np.testing.assert_array_equal(t.rewards[rows, 0], e.rewards.astype(np.float32))
        np.testing.assert_array_equal(t.terminals[rows, 0], e.terminations.astype(np.float32))
        if e.truncations[-1]:  # a truncated last step stays, with done = 0
            assert t.terminals[row + n - 1, 0] == 0.0
        row += n
    assert t.terminals.shape == (len(t), 1) and t.observations.dtype == np.float32


def test_the_simulator_and_references_come_from_the_dataset(store):
    data = load_task_data(parse_task(DATASET), None)
    assert data.sim == SimSpec(
        robot="hopper",
        env_id="Hopper-v5",
        ref_min=-15.0,
        ref_max=3000.0,
        ref_source=f"dataset {DATASET}",
        kwargs="{}",
        max_episode_steps=1000,
    )
    assert data.sim.normalized_score(1492.5) == pytest.approx(50.0)
    assert data.record == {
        "dataset_source": "minari",
        "dataset_id": DATASET,
        "minari_version": minari.__version__,
        "dataset_file": str((store / DATASET).resolve()),
        "dataset_sha256": minari_data.content_sha256(store / DATASET),
        "dataset_transitions": len(data.transitions),
        "dataset_episodes": minari.load_dataset(DATASET).total_episodes,
        "dataset_return_mean": np.mean(
            [ep.rewards.sum() for ep in minari.load_dataset(DATASET).iterate_episodes()]
        ),
    }
    env = data.sim.make()
    assert env.spec.id == "Hopper-v5" and env.spec.max_episode_steps == 1000


def test_d4rl_references_when_the_dataset_has_none(tmp_path, monkeypatch):
    make_minari_dataset(tmp_path, "test/walker2d/plain-v0", "Walker2d-v5", steps=60, refs=None)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    sim = load_task_data(parse_task("test/walker2d/plain-v0"), None).sim
    assert (sim.env_id, sim.ref_source) == ("Walker2d-v5", "D4RL")
    assert (sim.ref_min, sim.ref_max) == REF_RETURNS["walker2d"]


def test_a_dataset_folder_can_be_given_directly(store):
    folder = store / DATASET
    by_id = load_task_data(parse_task(DATASET), None)
    for given in (folder, folder / "data", folder / "data" / "main_data.hdf5"):
        data = load_task_data(parse_task("elsewhere/hopper/random-v0"), str(given))
        np.testing.assert_array_equal(data.transitions.observations, by_id.transitions.observations)
        assert data.record["dataset_sha256"] == by_id.record["dataset_sha256"]


def test_minari_episodes_equal_d4rls_rule_on_the_same_rows():
    """Collected rows split into Minari episodes give D4RL's qlearning_dataset transitions,
    plus the time-limit steps that D4RL drops and Minari keeps."""
    arrays = collect(
        versioned_sim("hopper", 5), uniform_policy(3, 1), steps=400, seed=1, progress=False
    )
    arrays["timeouts"][50] = True  # a time-limit end inside the file, as D4RL files have
    arrays["next_observations"][50] = arrays["next_observations"][50] + 1.0  # its own s'
    episodes = minari_data.split_episodes(arrays)
    assert sum(len(e["actions"]) for e in episodes) == 400
    ours = minari_data.episode_transitions(
        map(lambda e: SimpleNamespace(**e), episodes), 11, 3, "x"
    )
    d4rl = qlearning_dataset(arrays)
    keep = ~np.asarray(arrays["timeouts"], dtype=bool)
    keep[-1] = False  # qlearning_dataset walks i = 0..N-2
    for field in ("observations", "actions", "next_observations", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(ours, field)[keep], getattr(d4rl, field))
    assert ours.terminals[50, 0] == 0.0
    np.testing.assert_array_equal(ours.next_observations[50], arrays["next_observations"][50])


# --- bad datasets --------------------------------------------------------------------------------


def _one_line_error(fn) -> str:
    with pytest.raises(MicroError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_robot_that_is_not_ours_is_refused(tmp_path, monkeypatch):
    make_minari_dataset(
        tmp_path, "test/pendulum/random-v0", "InvertedPendulum-v5", steps=40, refs=None
    )
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    text = _one_line_error(lambda: load_task_data(parse_task("test/pendulum/random-v0"), None))
    assert "InvertedPendulum-v5" in text and "not on one of micro's robots" in text


def test_a_task_naming_another_robot_is_refused(store):
    text = _one_line_error(
        lambda: load_task_data(parse_task("test/walker2d/random-v0"), str(store / DATASET))
    )
    assert "walker2d" in text and "Hopper-v5" in text


def test_observation_sizes_that_do_not_match_the_robot_are_refused(tmp_path, monkeypatch):
    import gymnasium as gym

    make_minari_dataset(tmp_path, "test/hopper/wide-v0", "Hopper-v5", steps=40, refs=None)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    # the same dataset, re-labelled as a 17-dim walker: episodes of 11 numbers do not fit
    meta_file = tmp_path / "test/hopper/wide-v0/data/metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["env_spec"] = gym.spec("Walker2d-v5").to_json()
    meta_file.write_text(json.dumps(meta))
    text = _one_line_error(lambda: load_task_data(parse_task("test/hopper/wide-v0"), None))
    assert "Walker2d-v5" in text  # the task says hopper, the data walker2d
    text = _one_line_error(
        lambda: load_task_data(parse_task("test/x/wide-v0"), str(tmp_path / "test/hopper/wide-v0"))
    )
    assert "(11,)" in text or "sizes 17/6" in text


def test_environment_arguments_that_change_termination_are_refused(tmp_path, monkeypatch):
    import gymnasium as gym

    make_minari_dataset(tmp_path, "test/hopper/kw-v0", "Hopper-v5", steps=40, refs=None)
    meta_file = tmp_path / "test/hopper/kw-v0/data/metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["env_spec"] = (
        gym.spec("Hopper-v5")
        .to_json()
        .replace('"kwargs": {}', '"kwargs": {"healthy_z_range": [0.5, 10]}')
    )
    meta_file.write_text(json.dumps(meta))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    text = _one_line_error(lambda: load_task_data(parse_task("test/hopper/kw-v0"), None))
    assert "healthy_z_range" in text


def test_a_truncated_file_is_refused(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store / DATASET, copy)
    data_file = copy / "data" / "main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    text = _one_line_error(lambda: load_task_data(parse_task(DATASET), str(copy)))
    assert str(copy) in text and "cannot read Minari dataset" in text


def test_folders_that_are_not_minari_datasets_are_refused(store, tmp_path, hopper_file):
    text = _one_line_error(lambda: load_task_data(parse_task(DATASET), str(tmp_path)))
    assert "not a Minari dataset folder" in text
    text = _one_line_error(
        lambda: load_task_data(parse_task("hopper-random-v2"), str(store / DATASET))
    )
    assert "is a Minari dataset; pass its id as --task" in text


def test_resume_refuses_a_changed_dataset(store, tmp_path):
    copy = tmp_path / "test/hopper/random-v0"
    shutil.copytree(store / DATASET, copy)
    task = parse_task(DATASET)
    record = load_task_data(task, str(copy)).record
    assert reload_task_data(task, record).record == record
    meta_file = copy / "data" / "metadata.json"
    meta_file.write_text(meta_file.read_text().replace('"description"', '"description "') + " ")
    with pytest.raises(MicroError, match="has changed since the run started"):
        reload_task_data(task, record)


# --- the download path ---------------------------------------------------------------------------


class FolderRemote(CloudStorage):
    """A stand-in for minari's remote: a local folder laid out like a Minari store."""

    fail_after_copy = False

    def __init__(self, name, token=None):
        self.root = Path(name)

    def upload_dataset(self, dataset_id):
        raise NotImplementedError

    def list_datasets(self, prefix=None):
        for meta in self.root.rglob("data/metadata.json"):
            dataset_id = meta.parent.parent.relative_to(self.root).as_posix()
            if dataset_id.startswith(prefix or ""):
                yield dataset_id

    def get_dataset_metadata(self, dataset_id):
        path = self.root / dataset_id / "data" / "metadata.json"
        if not path.is_file():
            raise FileNotFoundError(f"no {dataset_id} on this remote")
        return json.loads(path.read_text())

    def download_dataset(self, dataset_id, path):
        shutil.copytree(self.root / dataset_id, path / dataset_id)
        if self.fail_after_copy:
            (path / dataset_id / "data" / "main_data.hdf5").unlink()
            raise ConnectionError("connection reset by peer")

    def list_namespaces(self):
        for meta in self.root.rglob("namespace_metadata.json"):
            yield meta.parent.relative_to(self.root).as_posix()

    def download_namespace_metadata(self, namespace, path):
        source = self.root / namespace / "namespace_metadata.json"
        (path / namespace).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, path / namespace / "namespace_metadata.json")

    def upload_namespace(self, namespace):
        raise NotImplementedError


@pytest.fixture
def folder_remote(minari_store, monkeypatch, tmp_path):
    from minari.storage import remotes

    monkeypatch.setitem(remotes._registry, "folder", lambda: FolderRemote)
    monkeypatch.setenv("MINARI_REMOTE", f"folder://{minari_store}")
    local = tmp_path / "empty-store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(local))
    return local


def test_a_missing_dataset_is_downloaded_through_minari(folder_remote, minari_store):
    path = minari_data.find_or_download(parse_task(DATASET))
    assert path == folder_remote / DATASET
    assert minari_data.content_sha256(path) == minari_data.content_sha256(minari_store / DATASET)
    again = minari_data.find_or_download(parse_task(DATASET))  # now local: no download
    assert again == path


def test_a_failed_download_leaves_nothing_behind(folder_remote, monkeypatch):
    monkeypatch.setattr(FolderRemote, "fail_after_copy", True)
    text = _one_line_error(lambda: minari_data.find_or_download(parse_task(DATASET)))
    assert "ConnectionError: connection reset by peer" in text
    assert not (folder_remote / DATASET).exists()
    text = _one_line_error(
        lambda: minari_data.find_or_download(parse_task("test/hopper/absent-v0"))
    )
    assert "test/hopper/absent-v0" in text and "minari download test/hopper/absent-v0" in text


class _NotFound(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def _train_offline(cli_env, tmp_path, endpoint, timeout="3"):
    env = {**cli_env, "HF_ENDPOINT": endpoint, "MICRO_MINARI_TIMEOUT": timeout}
    start = time.time()
    proc = run_train(
        ["--task", "mujoco/hopper/medium-v0", "--logdir", str(tmp_path / "runs")], env, check=False
    )
    return proc, time.time() - start


def _assert_offline_error(proc, cli_env, tmp_path):
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    store = Path(cli_env["MINARI_DATASETS_PATH"]) / "mujoco/hopper/medium-v0"
    for needed in ("mujoco/hopper/medium-v0", str(store), "minari download", "--dataset DIR"):
        assert needed in lines[0]
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_a_remote_that_does_not_answer_fails_within_the_deadline(cli_env, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        proc, took = _train_offline(
            cli_env, tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}"
        )
    finally:
        listener.close()
    _assert_offline_error(proc, cli_env, tmp_path)
    assert "no answer from hf://farama-minari in 3s" in proc.stderr
    assert took < 60


def test_a_remote_without_the_dataset_fails_at_once(cli_env, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc, took = _train_offline(
            cli_env, tmp_path, f"http://127.0.0.1:{server.server_port}", "60"
        )
    finally:
        server.shutdown()
    _assert_offline_error(proc, cli_env, tmp_path)
    assert took < 60


# --- the CLIs ------------------------------------------------------------------------------------


def test_train_resume_and_evaluate_on_a_minari_dataset(
    cli_env, minari_store, tiny_config, tmp_path
):
    store = tmp_path / "store"
    shutil.copytree(minari_store, store)
    env = {**cli_env, "MINARI_DATASETS_PATH": str(store)}
    logdir = tmp_path / "runs"
    proc = run_train(
        ["--task", DATASET, "--config", str(tiny_config), "--logdir", str(logdir)], env
    )
    assert (
        f"evaluated on Hopper-v5, scores normalized by dataset {DATASET}'s references"
        in proc.stdout
    )
    assert "hopper-random-v2's values" in proc.stdout
    (run,) = logdir.glob(f"{DATASET}/micro/seed0-*")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["dataset_id"] == DATASET and saved["minari_version"] == minari.__version__
    assert saved["sim"]["env_id"] == "Hopper-v5" and saved["dataset_source"] == "minari"
    blob = torch.load(run / "policy.pt", weights_only=True)
    assert blob["sim"] == saved["sim"] and blob["task"] == DATASET

    # resume re-reads the dataset by its recorded folder and hash
    (run / "policy.pt").unlink()
    proc = run_train(["--resume", str(run)], env)
    assert "resuming at epoch 2" in proc.stdout and (run / "policy.pt").exists()

    proc = run_eval(
        [
            "--policy_path",
            str(run / "policy.pt"),
            "--choice",
            "attack",
            "--attack_mode",
            "random",
            "--eps",
            "0",
            "0.1",
            "--eval_episodes",
            "2",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert (
        f"simulator: Hopper-v5; scores normalized by dataset {DATASET}'s references" in proc.stdout
    )
    rows = (tmp_path / "ev" / "attack-random.csv").read_text().splitlines()
    header, first = (
        rows[0].split(","),
        dict(zip(rows[0].split(","), rows[1].split(","), strict=True)),
    )
    assert len(rows) == 3 and "normalized_mean" in header
    assert float(first["normalized_mean"]) == pytest.approx(
        100 * (float(first["return_mean"]) + 15) / 3015
    )

    proc = run_eval(
        [
            "--policy_path",
            str(run / "policy.pt"),
            "--choice",
            "sim2real",
            "--friction",
            "0.5",
            "--gravity",
            "1",
            "--eval_episodes",
            "1",
            "--out",
            str(tmp_path / "ev2"),
        ]
    )
    assert (tmp_path / "ev2" / "sim2real.csv").is_file()


def test_collect_writes_a_real_minari_dataset(cli_env, tmp_path):
    store = tmp_path / "made"
    env = {**cli_env, "MINARI_DATASETS_PATH": str(store)}
    cmd = ["--env", "hopper", "--kind", "random", "--steps", "200"]
    made = "local/hopper/random-v0"
    proc = run_collect([*cmd, "--format", "minari", "--dataset_id", made], env)
    assert proc.returncode == 0, proc.stderr
    assert "200 steps on Hopper-v5" in proc.stdout

    dataset = minari.MinariDataset(store / made / "data")  # minari's own reader
    assert dataset.total_steps == 200 and dataset.env_spec.id == "Hopper-v5"
    episodes = list(dataset.iterate_episodes())
    same = collect(
        versioned_sim("hopper", 5), uniform_policy(3, 0), steps=200, seed=0, progress=False
    )
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), same["actions"])
    np.testing.assert_array_equal(
        np.concatenate([e.terminations for e in episodes]), same["terminals"]
    )
    assert episodes[-1].truncations[-1] or episodes[-1].terminations[-1]

    again = run_collect([*cmd, "--format", "minari", "--dataset_id", made], env)
    assert again.returncode == 1 and "exists" in again.stderr and "bump its -vN" in again.stderr
    v5_hdf5 = run_collect([*cmd, "--out", str(tmp_path / "x.hdf5"), "--env_version", "5"], env)
    assert v5_hdf5.returncode == 1 and "-v4 only" in v5_hdf5.stderr
    assert not (tmp_path / "x.hdf5").exists()


def test_policies_from_before_v3_evaluate_on_d4rls_simulator(smoke_run, tmp_path):
    from micro.policy_file import load_policy

    run_dir, _ = smoke_run
    blob = torch.load(run_dir / "policy.pt", weights_only=True)
    blob["format"] = "micro-policy-v2"
    del blob["sim"]
    torch.save(blob, tmp_path / "old.pt")
    old = load_policy(tmp_path / "old.pt", None, torch.device("cpu"))
    assert old.sim == dataclasses.replace(old.sim, env_id="Hopper-v4", ref_source="D4RL")


def test_remote_errors_read_as_one_line_with_their_root_cause():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise ValueError("could not reach the hub\nsecond line") from exc
    except ValueError as exc:
        text = minari_data._one_line(exc)
    assert text == (
        "ValueError: could not reach the hub <- ConnectionRefusedError: [Errno 111] "
        "Connection refused"
    )
    assert minari_data._one_line(KeyError()) == "KeyError"
