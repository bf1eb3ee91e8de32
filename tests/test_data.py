import http.server
import threading
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pytest
import torch

from micro import MicroError
from micro.data import d4rl
from micro.data.d4rl import (
    load_transitions,
    qlearning_dataset,
    read_hdf5,
    validate,
    write_hdf5,
)
from micro.envs import parse_task

HOPPER = parse_task("hopper-medium-v2")


def hand_made(with_next: bool) -> dict:
    """6 steps: episode A = rows 0-2 (row 2 terminal), episode B = rows 3-5 (row 4 timeout)."""
    obs = np.arange(6, dtype=np.float32)[:, None].repeat(11, axis=1)
    raw = {
        "observations": obs,
        "actions": np.full((6, 3), 0.5, dtype=np.float32),
        "rewards": np.arange(6, dtype=np.float64) * 10,
        "terminals": np.array([0, 0, 1, 0, 0, 0], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0], dtype=bool),
    }
    if with_next:
        raw["next_observations"] = obs + 100
    return raw


def test_qlearning_rule_with_next_observations():
    t = qlearning_dataset(hand_made(with_next=True))
    # rows 0..4 walked; row 4 is a timeout -> dropped; terminal row 2 kept (its next obs is given)
    assert t.observations[:, 0].tolist() == [0, 1, 2, 3]
    assert t.next_observations[:, 0].tolist() == [100, 101, 102, 103]
    assert t.terminals[:, 0].tolist() == [0, 0, 1, 0]
    assert t.rewards[:, 0].tolist() == [0, 10, 20, 30]
    for arr in (t.observations, t.actions, t.next_observations, t.rewards, t.terminals):
        assert arr.dtype == np.float32
    assert t.rewards.shape == (4, 1) and t.terminals.shape == (4, 1)


def test_qlearning_rule_without_next_observations():
    t = qlearning_dataset(hand_made(with_next=False))
    # as D4RL: timeouts dropped, and terminal steps dropped too (obs[i+1] is the next episode)
    assert t.observations[:, 0].tolist() == [0, 1, 3]
    assert t.next_observations[:, 0].tolist() == [1, 2, 4]
    assert t.terminals[:, 0].tolist() == [0, 0, 0]


def test_write_read_round_trip(tmp_path):
    raw = hand_made(with_next=True)
    raw["infos/qpos"] = np.zeros((6, 6), dtype=np.float32)
    raw["metadata/algorithm"] = "hand"
    write_hdf5(tmp_path / "d.hdf5", raw)
    back = read_hdf5(tmp_path / "d.hdf5")
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos"):
        np.testing.assert_array_equal(back[key], raw[key])
    assert back["metadata/algorithm"].decode() == "hand"
    assert [p.name for p in tmp_path.iterdir()] == ["d.hdf5"]  # no temporary files left


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("timeouts"), "lacks key(s) timeouts"),
        (lambda r: r.update(observations=np.zeros((6, 17), np.float32)), "sizes 17/3"),
        (lambda r: r.update(actions=np.zeros((6, 6), np.float32)), "sizes 11/6"),
        (
            lambda r: r["rewards"].__setitem__(3, np.nan),
            "rewards holds NaN or inf (first at row 3)",
        ),
        (lambda r: r.update(terminals=np.zeros(5, bool)), "terminals has 5 rows"),
        (  # made here on another robot (sizes alone cannot tell halfcheetah from walker2d)
            lambda r: r.update({"metadata/env": b"Walker2d-v4"}),
            "collected on Walker2d-v4 (metadata/env), but hopper-medium-v2 is a hopper task",
        ),
    ],
)
def test_validate_rejects(mutate, message):
    raw = hand_made(with_next=True)
    mutate(raw)
    with pytest.raises(MicroError) as err:
        validate(raw, HOPPER, "x.hdf5")
    assert message in str(err.value)


def test_truncated_and_missing_files(tmp_path, hopper_file):
    with pytest.raises(MicroError, match="dataset file not found"):
        read_hdf5(tmp_path / "nope.hdf5")
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(hopper_file.read_bytes()[:5000])
    with pytest.raises(MicroError, match="a damaged or truncated HDF5 file"):
        read_hdf5(cut)


def test_what_is_not_a_dataset_file_is_named_as_such(tmp_path):
    """A policy file passed as --dataset used to be told to delete it (a shipped file)."""
    from micro.data.d4rl import task_dataset_path
    from micro.envs import parse_task

    policy = tmp_path / "hopper-medium.pt"
    torch.save({"x": torch.zeros(2)}, policy)
    task = parse_task("hopper-medium-v2")
    with pytest.raises(MicroError, match=r"is not an HDF5 dataset \(it is a torch file: a policy"):
        task_dataset_path(task, str(policy))
    with pytest.raises(MicroError, match=r"is a folder; pass a D4RL-format \.hdf5 file"):
        task_dataset_path(task, str(tmp_path))
    text = tmp_path / "notes.hdf5"
    text.write_text("hello")
    with pytest.raises(MicroError, match="is not an HDF5 dataset; pass"):
        read_hdf5(text)


@pytest.mark.parametrize("marks", ["timeouts", "terminals"])
def test_data_with_no_usable_transition_is_refused_before_a_run_exists(
    marks, tmp_path, hopper_file
):
    """Every step a timeout, or every step terminal in a file without next_observations: D4RL's
    rule keeps nothing."""
    from micro.data.sources import load_task_data
    from micro.envs import parse_task

    raw = read_hdf5(hopper_file)
    raw.pop("next_observations", None)
    raw[marks] = np.ones_like(raw[marks])
    path = tmp_path / "d.hdf5"
    write_hdf5(path, raw)
    with pytest.raises(MicroError, match=r"gives 0 usable transition\(s\)"):
        load_task_data(parse_task("hopper-medium-v2"), str(path))


def test_simulator_dataset_is_consistent(hopper_file):
    raw = read_hdf5(hopper_file)
    assert raw["metadata/env"].decode() == "Hopper-v4"  # checked against the task's robot
    validate(raw, HOPPER, str(hopper_file))
    t = load_transitions(hopper_file, HOPPER)
    n = len(raw["observations"])
    # a random hopper falls within tens of steps, so the 800 steps hold many episodes
    assert raw["terminals"].sum() > 10 and len(t) == n - 1 - raw["timeouts"][: n - 1].sum()
    within = ~(raw["terminals"] | raw["timeouts"])[:-1]
    np.testing.assert_array_equal(
        raw["next_observations"][:-1][within], raw["observations"][1:][within]
    )


def test_load_records_the_behavior_return_of_a_file_made_here(hopper_file, tmp_path):
    raw = read_hdf5(hopper_file)  # collect wrote the behavior policy's mean episode return
    record = d4rl.load(hopper_file, HOPPER).record
    assert record["dataset_return_mean"] == float(raw["metadata/return_mean"])
    # a file without the metadata (D4RL's own): nothing recorded
    bare = {k: v for k, v in raw.items() if not k.startswith("metadata/")}
    write_hdf5(tmp_path / "bare.hdf5", bare)
    assert "dataset_return_mean" not in d4rl.load(tmp_path / "bare.hdf5", HOPPER).record


# --- download through a local HTTP server --------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes, int | None, str]]] = {}

    def do_GET(self):
        status, body, length, ctype = self.routes.get(
            self.path, (404, b"not found", None, "text/plain")
        )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(hopper_file):
    body = hopper_file.read_bytes()
    Handler.routes = {
        "/hopper_medium-v2.hdf5": (200, body, None, "application/octet-stream"),
        "/hopper_expert-v2.hdf5": (
            200,
            body[: len(body) // 2],
            len(body),
            "application/octet-stream",
        ),
        "/hopper_random-v2.hdf5": (200, b"<html>403 Forbidden</html>", None, "text/html"),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _point_at(monkeypatch, url: str, cache: Path) -> None:
    monkeypatch.setenv("MICRO_D4RL_BASE_URL", url)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(cache))


def test_download_success_then_cached(server, monkeypatch, tmp_path, hopper_file):
    _point_at(monkeypatch, server, tmp_path / "cache")
    path = d4rl.find_or_download(HOPPER)
    assert path == tmp_path / "cache" / "hopper_medium-v2.hdf5"
    assert path.read_bytes() == hopper_file.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["hopper_medium-v2.hdf5"]
    monkeypatch.setenv("MICRO_D4RL_BASE_URL", "http://127.0.0.1:9")  # cached: no request made
    assert d4rl.find_or_download(HOPPER) == path


@pytest.mark.parametrize(
    "task, reason",
    [
        ("hopper-medium-replay-v2", "HTTP 404"),
        ("hopper-expert-v2", "truncated"),
        ("hopper-random-v2", "did not send an HDF5 file"),
    ],
)
def test_download_failures_leave_nothing(server, monkeypatch, tmp_path, task, reason):
    cache = tmp_path / "cache"
    _point_at(monkeypatch, server, cache)
    t = parse_task(task)
    with pytest.raises(MicroError) as err:
        d4rl.find_or_download(t)
    msg = str(err.value)
    assert reason in msg and "\n" not in msg
    assert str(cache / t.d4rl_filename) in msg and f"{server}/{t.d4rl_filename}" in msg
    assert "--dataset" in msg and "micro.datagen.collect" in msg
    assert list(cache.iterdir()) == []


def test_download_unreachable_server_fails_fast(monkeypatch, tmp_path):
    _point_at(monkeypatch, "http://127.0.0.1:9", tmp_path / "cache")
    with pytest.raises(MicroError, match="failed"):
        d4rl.find_or_download(HOPPER)
    assert not (tmp_path / "cache" / HOPPER.d4rl_filename).exists()


def test_h5py_layout_matches_d4rl(hopper_file):
    with h5py.File(hopper_file) as f:
        assert {
            "observations",
            "next_observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
        } <= set(f)
        assert {"qpos", "qvel", "action_log_probs"} <= set(f["infos"])
        assert f["observations"].dtype == np.float32 and f["terminals"].dtype == bool
