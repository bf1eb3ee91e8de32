"""Dataset collection in the real simulator, and behavior-policy snapshots."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, run_collect

from micro import MicroError
from micro.data.d4rl import read_hdf5, validate
from micro.datagen.behavior import (
    BehaviorSettings,
    export_policy,
    load_snapshot,
    pick_snapshots,
    train_behavior,
)
from micro.datagen.collect import actor_policy, build, collect, uniform_policy, write_dataset
from micro.envs import make_env, parse_task
from micro.run_dir import RunDir

TINY_SAC = BehaviorSettings(
    env="hopper",
    steps=600,
    start_steps=200,
    snapshot_every=300,
    save_every=300,
    eval_episodes=2,
    hidden_dims=(32, 32),
)


@pytest.fixture(scope="module")
def behavior_run(tmp_path_factory):
    """A real (tiny) online SAC run: 600 steps, snapshots at 300 and 600."""
    out = tmp_path_factory.mktemp("behavior")
    train_behavior(TINY_SAC, out, progress=False)
    return out


def kinds_args(behavior_run):
    snaps = behavior_run / "snapshots"
    return {
        "random": {},
        "medium": {"policy": str(snaps / "step_0000300.pt")},
        "expert": {"policy": str(snaps / "step_0000600.pt")},
        "medium-expert": {
            "policy": str(snaps / "step_0000300.pt"),
            "expert_policy": str(snaps / "step_0000600.pt"),
        },
        "medium-replay": {"policy": str(snaps / "step_0000300.pt"), "run": str(behavior_run)},
    }


def make(kind, behavior_run, steps=300, seed=0, n_envs=3):
    a = {"policy": None, "expert_policy": None, "run": None, "upto": None}
    a.update(kinds_args(behavior_run)[kind])
    return build(kind, "hopper", steps, seed, n_envs, progress=False, **a)


def resimulate(arrays):
    """Replay every row from its recorded simulator state: (next_obs, reward, terminated)."""
    env = make_env("hopper").unwrapped
    env.reset(seed=0)
    out = []
    for qpos, qvel, action in zip(
        arrays["infos/qpos"], arrays["infos/qvel"], arrays["actions"], strict=True
    ):
        env.set_state(qpos, qvel)
        next_obs, reward, terminated, _, _ = env.step(action)
        out.append((next_obs, reward, terminated))
    return out


@pytest.mark.parametrize("kind", ["random", "medium", "expert", "medium-replay", "medium-expert"])
def test_every_kind_is_a_consistent_d4rl_file(kind, behavior_run, tmp_path):
    arrays, name = make(kind, behavior_run)
    path = tmp_path / f"{kind}.hdf5"
    write_dataset(path, arrays, "hopper", name, 0)
    raw = read_hdf5(path)
    validate(raw, parse_task(f"hopper-{kind}-v2"), str(path))
    n = len(raw["observations"])
    assert n == {"medium-expert": 600, "medium-replay": 300}.get(kind, 300)
    # the recorded state, action and outcome agree with the simulator, row by row
    for i, (next_obs, reward, terminated) in enumerate(resimulate(raw)):
        np.testing.assert_allclose(raw["next_observations"][i], next_obs, rtol=0, atol=1e-5)
        assert raw["rewards"][i] == pytest.approx(reward, abs=1e-4)
        assert bool(raw["terminals"][i]) == terminated
    # within an episode, next_observations is the following observation
    ends = raw["terminals"] | raw["timeouts"]
    within = ~ends[:-1]
    np.testing.assert_array_equal(
        raw["next_observations"][:-1][within], raw["observations"][1:][within]
    )
    # nobody lasts 1000 steps here: a timeout only marks where a part cuts its last episode
    cuts = {"medium-expert": [299, 599], "medium-replay": []}.get(kind, [299])
    assert set(np.flatnonzero(raw["timeouts"])) <= set(cuts)
    assert raw["metadata/policy"]


def test_timeouts_fall_exactly_at_the_episode_limit():
    arrays = collect(
        "halfcheetah", uniform_policy(6, 0), steps=2500, seed=0, n_envs=2, progress=False
    )
    timeouts = np.flatnonzero(arrays["timeouts"])
    # halfcheetah never terminates: every episode is 1000 steps; the file cuts the third at 2500
    assert timeouts.tolist() == [999, 1999, 2499]
    assert not arrays["terminals"].any()
    assert len(arrays["episode_returns"]) == 2  # the cut third episode is not counted


def test_medium_expert_is_medium_then_expert(behavior_run):
    both, _ = make("medium-expert", behavior_run, steps=200)
    medium, _ = make("medium", behavior_run, steps=200, seed=0)
    expert, _ = make("expert", behavior_run, steps=200, seed=1)
    for key in ("observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(both[key][:200], medium[key])
        np.testing.assert_array_equal(both[key][200:], expert[key])
    assert both["metadata/medium_policy"].startswith("SAC snapshot step_0000300.pt")
    assert both["metadata/expert_policy"].startswith("SAC snapshot step_0000600.pt")


def test_collection_is_deterministic_for_a_seed(behavior_run):
    a, _ = make("medium", behavior_run, seed=5)
    b, _ = make("medium", behavior_run, seed=5)
    c, _ = make("medium", behavior_run, seed=6)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    assert not np.array_equal(a["actions"], c["actions"])


def test_medium_replay_is_the_run_in_order(behavior_run):
    arrays, _ = make("medium-replay", behavior_run)
    assert len(arrays["observations"]) == 300  # up to the medium snapshot's step
    # the first 200 steps were uniform random (start_steps)
    assert np.allclose(arrays["infos/action_log_probs"][:200], -3 * np.log(2.0))
    # a run of another robot is refused, even with --upto (no policy file to check it by)
    with pytest.raises(MicroError, match="was made on hopper, not walker2d"):
        build("medium-replay", "walker2d", 300, 0, 1, None, None, str(behavior_run), 300)


def test_snapshot_round_trip_gives_identical_actions(behavior_run, tmp_path):
    actor, meta = load_snapshot(behavior_run / "snapshots" / "step_0000600.pt")
    assert meta["env"] == "hopper" and meta["step"] == 600 and meta["eval_episodes"] == 2
    obs = np.random.default_rng(0).normal(size=(16, 11)).astype(np.float32)
    a1, lp1 = actor_policy(actor, seed=3)(obs)
    again, _ = load_snapshot(behavior_run / "snapshots" / "step_0000600.pt")
    a2, lp2 = actor_policy(again, seed=3)(obs)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, lp2)
    with torch.no_grad():
        torch.testing.assert_close(
            actor.deterministic(torch.as_tensor(obs)), again.deterministic(torch.as_tensor(obs))
        )


def test_pick_re_evaluates_the_nearest_snapshots_like_export(behavior_run, tmp_path):
    import csv

    with open(behavior_run / "evals.csv", newline="") as fh:
        logged = {int(r["step"]): float(r["normalized_score"]) for r in csv.DictReader(fh)}
    assert sorted(logged) == [300, 600]
    assert logged[300] != logged[600]
    # beyond the 300 snapshot's logged score, on the side away from 600's: 300 is nearest
    target = logged[300] + (1.0 if logged[300] > logged[600] else -1.0)
    picked = pick_snapshots(behavior_run, target, candidates=1, episodes=3)
    assert [p["step"] for p in picked] == [300]
    meta = export_policy(
        behavior_run / "snapshots" / "step_0000300.pt", tmp_path / "p.pt", episodes=3
    )
    assert picked[0]["return_mean"] == meta["return_mean"]  # the same episodes as export's
    assert picked[0]["normalized"] == meta["normalized_score"]
    both = pick_snapshots(behavior_run, target, candidates=2, episodes=3)
    gaps = [abs(p["normalized"] - target) for p in both]
    assert gaps == sorted(gaps) and {p["step"] for p in both} == {300, 600}
    with pytest.raises(MicroError, match="not a behavior run"):
        pick_snapshots(tmp_path, 40.0)


def test_behavior_run_resumes(behavior_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(behavior_run, copy)
    with open(copy / "evals.csv", "a") as log:  # logged after the last save, then a crash
        log.write("700,9,1.0,0.0,0.1,9.9\n71")
    train_behavior(dataclasses.replace(TINY_SAC, steps=900), copy, progress=False)
    assert sorted(p.name for p in (copy / "snapshots").iterdir())[-1] == "step_0000900.pt"
    assert [int(r.split(",")[0]) for r in (copy / "evals.csv").read_text().splitlines()[1:]] == [
        300,
        600,
        900,
    ]
    other = BehaviorSettings(env="hopper", steps=900, seed=1, hidden_dims=(32, 32))
    with pytest.raises(MicroError, match="other settings"):
        train_behavior(other, copy, progress=False)
    grown = dataclasses.replace(TINY_SAC, steps=1200)
    with RunDir(copy).writer(), pytest.raises(MicroError, match=r"run is in use: pid \d+"):
        train_behavior(grown, copy, progress=False)  # a second process on the same run
    assert (copy / "evals.csv").read_text().splitlines()[-1].startswith("900,")  # untouched


def test_a_carried_run_goes_on_from_its_state_with_an_empty_buffer(behavior_run, tmp_path, capsys):
    from micro.cli.behavior import main as behavior_main
    from micro.datagen.behavior import carry_behavior
    from micro.utils import sha256_file

    carried = tmp_path / "carried.pt"
    assert behavior_main(["carry", str(behavior_run), "--to", str(carried)]) == 0
    assert f"wrote {carried}: step 600" in capsys.readouterr().out
    assert behavior_main(["carry", str(behavior_run), "--to", str(carried)]) != 0  # no overwrite
    assert "exists; pass --force" in capsys.readouterr().err
    saved = torch.load(behavior_run / "state.pt", weights_only=True)
    blob = torch.load(carried, weights_only=True)
    assert blob["state"]["step"] == 600 and "replay" not in str(blob.keys())
    torch.testing.assert_close(blob["state"]["agent"], saved["agent"], rtol=0, atol=0)

    # start_steps - 1 steps on: the buffer is not yet refilled, so nothing was updated
    refill = tmp_path / "refill"
    train_behavior(dataclasses.replace(TINY_SAC, steps=799), refill, False, carried)
    after = torch.load(refill / "state.pt", weights_only=True)
    torch.testing.assert_close(after["agent"], saved["agent"], rtol=0, atol=0)
    assert after["replay_from"] == 600 and after["step"] == 799
    assert after["carried_at"] == [{"step": 600, "sha256": sha256_file(carried)}]
    # ... by the carried policy's own actions, not uniform ones
    log_probs = np.load(refill / "replay" / "000000600-000000799.npz")["action_log_probs"]
    assert len(log_probs) == 199 and not np.any(log_probs == np.float32(-3 * np.log(2.0)))

    grown = dataclasses.replace(TINY_SAC, steps=900)
    went_on = tmp_path / "went_on"
    train_behavior(grown, went_on, False, carried)
    assert sorted(p.name for p in (went_on / "snapshots").iterdir()) == ["step_0000900.pt"]
    steps = [int(r.split(",")[0]) for r in (went_on / "evals.csv").read_text().splitlines()[1:]]
    assert steps == [300, 600, 900]  # the carried evaluations, then its own
    state = torch.load(went_on / "state.pt", weights_only=True)
    assert not torch.equal(
        state["agent"]["actor.backbone.0.weight"], saved["agent"]["actor.backbone.0.weight"]
    )
    assert load_snapshot(went_on / "snapshots" / "step_0000900.pt")[1]["carried_at"] == [600]
    _, name = build("expert", "hopper", 30, 0, 1, str(went_on / "snapshots" / "step_0000900.pt"),
                    None, None, None, progress=False)  # fmt: skip
    assert name.endswith("(step 900, seed 0, carried at 600)")  # the dataset's metadata says so
    # on a machine that kept the new folder, the same command resumes it exactly
    train_behavior(dataclasses.replace(TINY_SAC, steps=1200), went_on, False, carried)
    chunks = sorted(p.name for p in (went_on / "replay").iterdir())
    assert chunks == ["000000600-000000900.npz", "000000900-000001200.npz"]
    with pytest.raises(MicroError, match="starts at step 600"):  # medium-replay needs step 0 on
        build("medium-replay", "hopper", 300, 0, 1, None, None, str(went_on), 900)

    with pytest.raises(MicroError, match="holds a behavior run already"):
        train_behavior(grown, behavior_run, False, carried)
    other = dataclasses.replace(grown, seed=1)
    with pytest.raises(MicroError, match="carried from a run with other settings"):
        train_behavior(other, tmp_path / "other", False, carried)
    snapshot = behavior_run / "snapshots" / "step_0000600.pt"
    with pytest.raises(MicroError, match="not a carried behavior state"):
        train_behavior(grown, tmp_path / "other", False, snapshot)
    assert not (tmp_path / "other").exists()  # refused before anything was written
    assert carry_behavior(behavior_run, carried, force=True)["step"] == 600


def test_collect_cli_refuses_to_overwrite(tmp_path):
    out = tmp_path / "d.hdf5"
    out.write_bytes(b"precious")
    cmd = ["--env", "hopper", "--kind", "random", "--steps", "50", "--out", str(out)]
    proc = run_collect(cmd)
    assert proc.returncode == 1 and "exists" in proc.stderr and out.read_bytes() == b"precious"
    proc = run_collect([*cmd, "--force"])
    assert proc.returncode == 0, proc.stderr
    assert len(read_hdf5(out)["observations"]) == 50


def test_progress_bars_only_on_a_terminal(tmp_path):
    """Without --no_progress a bar shows on a terminal; piped into a log (here, or in CI) the
    carriage-return bar is left out and the lines the command prints stay."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "d.hdf5"
    cmd = [sys.executable, "-m", "micro.datagen.collect", "--env", "hopper", "--kind", "random"]
    cmd += ["--steps", "50", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "collect hopper" not in proc.stderr and "\r" not in proc.stderr
    assert str(out) in proc.stdout


def test_missing_policy_says_how_to_make_one(tmp_path):
    with pytest.raises(MicroError, match=r"python -m micro\.datagen\.behavior"):
        build(
            "medium",
            "hopper",
            10,
            0,
            1,
            str(tmp_path / "none.pt"),
            None,
            None,
            None,
            progress=False,
        )


def test_medium_expert_checks_both_policies_before_collecting(tmp_path):
    """It used to collect the medium half (hours at 1M steps) before finding no expert, and
    named --policy for it."""
    medium = str(ROOT / "data" / "behavior" / "hopper-medium.pt")
    start = time.time()
    with pytest.raises(MicroError, match="pass --expert_policy DIR"):
        build(
            "medium-expert",
            "hopper",
            10**9,  # collecting first would not end
            0,
            1,
            medium,
            str(tmp_path / "none.pt"),
            None,
            None,
            progress=False,
        )
    assert time.time() - start < 30
