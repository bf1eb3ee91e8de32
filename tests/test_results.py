"""Shipping a finished run into results/ and listing what is shipped."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from micro import MicroError
from micro.cli.collect import main as collect_main
from micro.cli.results import main
from micro.logger import logged_seconds
from micro.policy_file import export_checkpoint_policy as export_policy
from micro.provenance import read_sessions
from micro.results import (
    ReferencePlan,
    cards,
    overview,
    reference_plan,
    remake,
    ship,
    ship_dynamics,
    table,
    write_card,
)
from micro.run_dir import TIMED_STAGES


def test_ship_copies_the_small_files_and_records_the_run(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    dest = ship(run_dir, "hopper-random-tiny", tmp_path)
    assert dest == tmp_path / "hopper-random-tiny" / "micro" / "seed3"
    for name in ("policy.pt", "progress.csv", "config.yaml", "timings.json", "eval-episodes.csv"):
        assert (dest / name).read_bytes() == (run_dir / name).read_bytes()
    record = json.loads((dest / "run.json").read_text())
    with open(run_dir / "progress.csv", newline="") as fh:
        evals = [r for r in csv.DictReader(fh) if r["eval_normalized_score"]]
    scores = [float(r["eval_normalized_score"]) for r in evals]
    assert record["final_score"] == scores[-1] and record["best_score"] == max(scores)
    assert record["last_evals_score"] == pytest.approx(sum(scores[-5:]) / len(scores[-5:]))
    assert record["last_evals_from_step"] == int(evals[-5:][0]["step"])
    assert (record["task"], record["algo"], record["seed"]) == ("hopper-medium-v2", "micro", 3)
    assert record["steps"] == int(evals[-1]["step"]) and record["machine"]["cpu"]
    row = table(tmp_path).splitlines()[2]
    assert row.startswith(
        f"| hopper-random-tiny | micro | 3 | {record['steps']} | {scores[-1]:.1f} ± "
    )
    assert f" | {record['last_evals_score']:.1f} ({record['last_evals_from_step']}) | " in row

    with pytest.raises(MicroError, match="pass --force"):
        ship(run_dir, "hopper-random-tiny", tmp_path)
    assert (
        main(
            [
                "ship",
                str(run_dir),
                "--dataset",
                "hopper-random-tiny",
                "--root",
                str(tmp_path),
                "--force",
            ]
        )
        == 0
    )


def test_an_unfinished_run_is_refused(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    partial = tmp_path / "partial"
    shutil.copytree(
        run_dir, partial, ignore=shutil.ignore_patterns("policy.pt", "checkpoints", "tb")
    )
    with pytest.raises(MicroError, match=r"lacks policy\.pt.*--in_progress"):
        ship(partial, "x", tmp_path / "results")
    with pytest.raises(MicroError, match=r"no checkpoint to export"):
        ship(partial, "x", tmp_path / "results", in_progress=True)
    assert not (tmp_path / "results").exists()
    assert main(["table", "--root", str(tmp_path / "none")]) == 1


def test_exported_checkpoint_policy_equals_the_runs_policy_file(smoke_run, tmp_path):
    """The last checkpoint holds the final networks, so its export is policy.pt's twin."""
    run_dir, _ = smoke_run
    out, progress = export_policy(run_dir, tmp_path / "snap.pt")
    assert (progress.epoch, progress.step) == (2, 40)
    a = torch.load(out, weights_only=True)
    b = torch.load(run_dir / "policy.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in ("actor", "critics"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0)
    torch.testing.assert_close(a["obs_std"], b["obs_std"], rtol=0, atol=0)
    assert (a["step"], a["normalized_score"], a["sim"]) == (
        b["step"],
        b["normalized_score"],
        b["sim"],
    )
    with pytest.raises(MicroError, match="exists"):
        export_policy(run_dir, out)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "cli.pt")]) == 0
    assert (tmp_path / "cli.pt").is_file()


def test_a_checkpoint_without_the_observation_std_exports_from_the_runs_data(smoke_run, tmp_path):
    """Checkpoints from before they carried obs_std (and v1 ones) read the run's dataset for it:
    the same number as the trainer's."""
    run_dir, _ = smoke_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("tb", "snapshots"))
    blob = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    assert blob.pop("obs_std") is not None
    torch.save(blob, old / "checkpoints" / "last.pt")
    out, _ = export_policy(old, tmp_path / "snap.pt")
    a = torch.load(out, weights_only=True)
    b = torch.load(run_dir / "policy.pt", weights_only=True)
    torch.testing.assert_close(a["obs_std"], b["obs_std"], rtol=0, atol=0)


def test_a_run_in_progress_ships_its_checkpoint_marked_unfinished(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    live = tmp_path / "live"
    shutil.copytree(run_dir, live, ignore=shutil.ignore_patterns("policy.pt", "timings.json"))
    # a run killed between its csv row and its checkpoint has one row more than the checkpoint
    lines = (live / "progress.csv").read_text().splitlines()
    extra = lines[-1].split(",")
    extra[0], extra[1] = "3", "60"
    (live / "progress.csv").write_text("\n".join([*lines, ",".join(extra)]) + "\n")
    episodes = (live / "eval-episodes.csv").read_text().splitlines()
    late = [",".join(["3", "60", *r.split(",")[2:]]) for r in episodes[-2:]]
    (live / "eval-episodes.csv").write_text("\n".join([*episodes, *late]) + "\n")
    dest = ship(live, "tiny", tmp_path / "results", in_progress=True)
    record = json.loads((dest / "run.json").read_text())
    assert record["finished"] is False
    assert (record["steps"], record["steps_planned"], record["final_step"]) == (40, 40, 40)
    assert set(record["seconds"]) == set(TIMED_STAGES)
    assert (dest / "progress.csv").read_text().splitlines() == lines
    assert (dest / "eval-episodes.csv").read_text().splitlines() == episodes
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.yaml",
        "eval-episodes.csv",
        "policy.pt",
        "progress.csv",
        "run.json",
        "sessions.jsonl",
    ]
    assert record["sessions"] == 1 and record["code"] == [read_sessions(live)[0]["code"]]
    machine = read_sessions(live)[0]["machine"]
    assert record["trained_on"] == [machine["gpu"] or machine["cpu"]]  # the GPU's name on one
    assert "40 of 40 (in progress)" in table(tmp_path / "results")
    # shipping the finished run over it replaces every file
    ship(run_dir, "tiny", tmp_path / "results", force=True)
    assert json.loads((dest / "run.json").read_text())["finished"] is True
    assert (dest / "policy.pt").read_bytes() == (run_dir / "policy.pt").read_bytes()


def test_the_demo_sweeps_shipped_policies(smoke_run, tmp_path, monkeypatch):
    from micro.cli import demo

    run_dir, _ = smoke_run
    dest = ship(run_dir, "hopper-random-tiny", tmp_path)
    shutil.copytree(dest, dest.parent / "seed4")  # a second seed of the same algorithm
    found = demo.shipped_policies(tmp_path)
    assert found == {
        "hopper-random-tiny": [dest / "policy.pt", dest.parent / "seed4" / "policy.pt"]
    }
    assert demo.shipped_policies(tmp_path / "nothing") == {}
    # by default, the results this repository ships: six policies of one dataset
    shipped = demo.shipped_policies()
    assert list(shipped) == ["halfcheetah-medium-200k"]
    assert len(shipped["halfcheetah-medium-200k"]) == 6
    monkeypatch.setattr(demo, "FRICTION", ["1.0"])
    monkeypatch.setattr(demo, "GRAVITY", ["0.5", "1.0"])
    monkeypatch.setattr(demo, "EPS", ["0", "0.1"])
    monkeypatch.setattr(demo, "SHIPPED_EPISODES", "1")
    figures = demo.sweep_shipped(found, tmp_path / "out")
    folder = tmp_path / "out" / "hopper-random-tiny"
    assert figures == {
        "hopper-random-tiny": [
            folder / "sim2real.png",
            folder / "sim2real-summary.md",
            folder / "attack-all.png",
            folder / "attack-all-summary.md",
        ]
    }
    assert all(f.is_file() for f in figures["hopper-random-tiny"])
    with open(folder / "attack-all.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2 and {r["group"] for r in rows} == {"micro"}
    assert torch.is_grad_enabled()  # eval.py's no_grad ends with it (training may follow)
    lines = demo.shipped_scores(found)
    assert len(lines) == 2 and lines[0].startswith("MICRO seed 3 (hopper-random-tiny,")
    record = json.loads((dest / "run.json").read_text())
    assert lines[0].endswith(f"its last 5 evaluations {record['last_evals_score']:.1f})")


def test_wall_time_read_back_from_tensorboard_matches_the_runs_timings(smoke_run, tmp_path):
    """Runs whose checkpoints predate timings get their wall time from TensorBoard: the loop's
    logged elapsed time is everything timings.json counts but the dynamics fit and, at most,
    the last checkpoint write (timings.json rounds to 0.1 s)."""
    run_dir, _ = smoke_run
    timings = json.loads((run_dir / "timings.json").read_text())
    logged = logged_seconds(run_dir)
    loop = sum(v for k, v in timings.items() if k != "dynamics")
    assert loop - timings["checkpoints"] - 0.25 <= logged["training loop"] <= loop + 0.25
    assert 0 < logged["dynamics"] <= timings["dynamics"] + 0.05
    partial = tmp_path / "no-tb"
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("tb"))
    assert logged_seconds(partial) is None
    # timings.json from code before TIMED_STAGES (no "checkpoints") covers only a resumed
    # run's last session, so shipping reads the time back from TensorBoard instead
    record = json.loads((ship(run_dir, "tiny", tmp_path / "a") / "run.json").read_text())
    assert (record["seconds"], record["seconds_from"]) == (timings, "the run's timings")
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / "timings.json").write_text(json.dumps({k: timings[k] for k in list(timings)[:4]}))
    record = json.loads((ship(old, "tiny", tmp_path / "b") / "run.json").read_text())
    assert (record["seconds"], record["seconds_from"]) == (logged, "TensorBoard events")


def test_flips_finds_a_cheetah_on_its_back():
    """results/flips.py: an episode started upside down flips at its first step; one started
    upright by a policy that does nothing does not; and its episodes are eval.py's."""
    import importlib.util
    from types import SimpleNamespace

    import gymnasium as gym
    import numpy as np

    from micro.evaluation import run_episodes
    from micro.policy_file import load_policy
    from micro.utils import ROBUSTNESS_SEED

    spec = importlib.util.spec_from_file_location("flips", ROOT / "results" / "flips.py")
    flips = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flips)
    policy = load_policy(
        ROOT / "results/halfcheetah-medium-200k/micro/seed0/policy.pt", None, torch.device("cpu")
    )

    class UpsideDown(gym.Wrapper):
        def reset(self, **kwargs):
            self.env.reset(**kwargs)
            qpos = self.env.unwrapped.init_qpos.copy()
            qpos[2] = np.pi  # root pitch: on its back
            self.env.unwrapped.set_state(qpos, self.env.unwrapped.init_qvel)
            return self.env.unwrapped._get_obs(), {}

    _, at = flips.policy_flips(policy, 1, 0, envs=[UpsideDown(policy.sim.make())])
    assert at == [0]

    class Still(torch.nn.Module):  # a policy that never moves: it stays on its feet, going nowhere
        def deterministic(self, obs):
            return torch.zeros(len(obs), 6)

    still = SimpleNamespace(actor=Still(), sim=policy.sim)
    result, at = flips.policy_flips(still, 2, 0)
    assert at == [None, None] and (abs(result.returns) < 50).all()

    # the same episodes as eval.py's runner with its default seeds and simulators
    result, at = flips.policy_flips(policy, 5, ROBUSTNESS_SEED)
    plain = run_episodes(policy.actor, policy.sim, 5, ROBUSTNESS_SEED)
    np.testing.assert_array_equal(result.returns, plain.returns)
    assert len(at) == 5


def test_last_evaluations_score_is_the_mean_of_the_last_five():
    from micro.report import last_evals_score

    evals = [{"eval_normalized_score": str(v)} for v in (90.0, 80.0, 2.0, 4.0, 6.0, 8.0, 10.0)]
    assert last_evals_score(evals) == 6.0
    assert last_evals_score(evals[:2]) == 85.0  # fewer than five: all of them


def test_flips_counts_a_datasets_flipped_episodes(hopper_file, tmp_path):
    """--dataset: episodes split at terminals/timeouts; one set on its back is one flip, and
    its return is reported apart from the others'."""
    import importlib.util

    import h5py
    import numpy as np

    spec = importlib.util.spec_from_file_location("flips", ROOT / "results" / "flips.py")
    flips = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flips)
    path = tmp_path / "d.hdf5"
    shutil.copyfile(hopper_file, path)
    with h5py.File(path, "r+") as f:
        ends = np.flatnonzero(np.logical_or(f["terminals"][:], f["timeouts"][:])) + 1
        starts = [0, *ends[ends < len(f["rewards"])]]
        obs = f["observations"][:]
        obs[starts[1] + 2, flips.ROOTY] = 3.0  # the second episode, on its back for a step
        f["observations"][...] = obs
        returns = [part.sum() for part in np.split(f["rewards"][:], starts[1:])]
    assert len(returns) >= 3  # the tiny hopper data has many short episodes
    upright = np.mean([r for i, r in enumerate(returns) if i != 1])
    assert flips.dataset_flips(str(path)) == (
        f"{path}: 1 of {len(returns)} episodes flip; mean return {returns[1]:.0f} flipped, "
        f"{upright:.0f} upright"
    )


def test_snapshot_freq_keeps_earlier_policies_without_changing_the_run(
    hopper_file, tiny_config, tmp_path
):
    """--snapshot_freq 1 over 3 epochs keeps epochs 1 and 2 (the last is policy.pt), each the
    policy of its epoch — re-evaluated, epoch 2's scores what the run logged there — and the run
    computes what it computes without them."""
    import os

    from conftest import only_run_dir, run_train

    from micro.eval_sweep import group_names
    from micro.evaluation import run_episodes
    from micro.policy_file import load_policy
    from micro.utils import EVAL_SEED_OFFSET, resolve_device

    env = {**os.environ, "D4RL_DATASET_DIR": str(tmp_path / "no-cache")}
    base = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file), "--config"]
    base += [str(tiny_config), "--seed", "3", "--epoch", "3", "--eval_freq", "2"]
    run_train([*base, "--logdir", str(tmp_path / "a"), "--snapshot_freq", "1"], env)
    run_train([*base, "--logdir", str(tmp_path / "b")], env)
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert sorted(p.name for p in (a / "snapshots").iterdir()) == ["epoch1.pt", "epoch2.pt"]
    assert not (b / "snapshots").exists()
    assert (a / "progress.csv").read_bytes() == (b / "progress.csv").read_bytes()
    final_a = torch.load(a / "policy.pt", weights_only=True)["actor"]
    final_b = torch.load(b / "policy.pt", weights_only=True)["actor"]
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=0, atol=0)

    with open(a / "progress.csv", newline="") as fh:
        logged = {int(r["epoch"]): r["eval_normalized_score"] for r in csv.DictReader(fh)}
    device = resolve_device("auto")  # the run's: re-evaluated where it was evaluated
    one, two = (load_policy(a / "snapshots" / f"epoch{e}.pt", None, device) for e in (1, 2))
    assert (one.step, one.normalized_score, two.step) == (20, None, 40)
    assert logged[1] == "" and float(logged[2]) == pytest.approx(two.normalized_score, abs=1e-9)
    again = run_episodes(two.actor, two.sim, 2, 3 + EVAL_SEED_OFFSET, device=device)
    assert again.normalized_mean == two.normalized_score
    # eval.py tells snapshots of one run apart by their step
    assert group_names([one, two], "policy") == ["micro seed 3, step 20", "micro seed 3, step 40"]
    assert group_names([one, two], "algo") == ["micro", "micro"]

    # results/snapshots.sh: the attacks on every snapshot and the final policy, each listed
    script = [shutil.which("bash"), str(ROOT / "results" / "snapshots.sh")]
    env = {**env, "PY": sys.executable, "EPISODES": "1"}
    proc = subprocess.run(
        [*script, str(tmp_path / "out"), str(a)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "out" / "attack-all.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    assert labels == [f"micro seed 3, step {s}" for s in (20, 40, 60)]
    assert {r["group"] for r in rows} == {"micro"} and len(rows) == 3 * 3 * 10
    summary = (tmp_path / "out" / "attack-all-summary.md").read_text()
    assert all(f"| {label} | " in summary for label in labels)
    proc = subprocess.run([*script, str(tmp_path / "bad"), str(b)], env=env, capture_output=True)
    assert proc.returncode == 1 and b"needs snapshots" in proc.stderr


def test_overview_tabulates_datasets_by_algorithms_with_the_behavior_score(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    root = tmp_path / "results"
    first = ship(run_dir, "hopper-tiny", root)
    record = json.loads((first / "run.json").read_text())

    def copy(algo: str, seed: int, **changes) -> dict:
        dest = root / "hopper-tiny" / algo / f"seed{seed}"
        shutil.copytree(first, dest)
        new = {**record, "algo": algo, "seed": seed, **changes}
        (dest / "run.json").write_text(json.dumps(new))
        return new

    second = copy("micro", 4, final_score=record["final_score"] + 2.0, last_evals_score=7.0)
    late = copy("mobile", 0, finished=False, steps=20000, steps_planned=40000, final_score=1.25)
    lines = overview(root).splitlines()
    assert lines[0] == (
        "| dataset | behavior | MICRO final | MICRO last 5 | MOBILE final | MOBILE last 5 |"
    )
    assert len(lines) == 3
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    low, high = -20.272305, 3234.3  # D4RL's hopper references
    behavior = 100 * (config["dataset_return_mean"] - low) / (high - low)
    finals = [record["final_score"], second["final_score"]]
    lasts = [record["last_evals_score"], 7.0]
    mean = lambda v: sum(v) / 2  # noqa: E731
    std = lambda v: abs(v[0] - v[1]) / 2  # noqa: E731  (ddof 0, two values)
    assert lines[2] == (
        f"| hopper-tiny | {behavior:.1f} | {mean(finals):.1f} ± {std(finals):.1f} (2 seeds) "
        f"| {mean(lasts):.1f} ± {std(lasts):.1f} | 1.2 (1 seed, 20k of 40k steps) "
        f"| {late['last_evals_score']:.1f} |"
    )
    with pytest.raises(MicroError, match="no shipped run"):
        overview(tmp_path / "empty")
    assert main(["overview", "--root", str(root)]) == 0
    # a carded dataset without runs yet: its row, with the card's behavior score
    (root / "walker-tiny").mkdir()
    (root / "walker-tiny" / "dataset.json").write_text(json.dumps({"normalized_score_mean": 60.44}))
    lines = overview(root).splitlines()
    assert lines[2].startswith("| hopper-tiny |") and len(lines) == 4
    assert lines[3] == "| walker-tiny | 60.4 | – | – | – | – |"


def test_a_dataset_card_remakes_its_dataset_to_the_byte(tmp_path):
    root = tmp_path / "results"
    recipe = ["--env", "hopper", "--kind", "random", "--steps", "300", "--seed", "1"]
    made = tmp_path / "made.hdf5"
    assert collect_main([*recipe, "--out", str(made), "--no_progress"]) == 0
    text = " ".join(recipe)
    assert main(["card", str(made), "--dataset", "hop-tiny", "--root", str(root),
                 f"--recipe={text}"]) == 0  # fmt: skip
    card = json.loads((root / "hop-tiny" / "dataset.json").read_text())
    with h5py.File(made) as f:
        rows, episodes = len(f["rewards"]), int(f["metadata/episodes"][()])
        score = float(f["metadata/normalized_score_mean"][()])
    assert card["recipe"] == ["python", "-m", "micro.datagen.collect", *recipe]
    assert card["sha256"] == hashlib.sha256(made.read_bytes()).hexdigest()
    assert (card["rows"], card["episodes"], card["env"]) == (300, episodes, "Hopper-v4")
    assert rows == 300 and card["normalized_score_mean"] == score and card["seed"] == 1

    row = cards(root).splitlines()[2]
    assert row.startswith(f"| hop-tiny | `python -m micro.datagen.collect {text}` | ")
    mean, std = card["return_mean"], card["return_std"]
    tail = f"| 300 | {episodes} | {mean:.1f} ± {std:.1f} | {score:.1f} | `{card['sha256']}` |"
    assert row.endswith(tail)
    assert main(["cards", "--root", str(root)]) == 0

    again = tmp_path / "again.hdf5"
    assert remake("hop-tiny", root, again)["sha256"] == card["sha256"]
    assert again.read_bytes() == made.read_bytes()
    cli = tmp_path / "cli.hdf5"
    assert main(["remake", "hop-tiny", "--root", str(root), "--out", str(cli)]) == 0
    assert cli.read_bytes() == made.read_bytes()
    with pytest.raises(MicroError, match="exists; choose another --out"):
        remake("hop-tiny", root, again)  # nothing a user saved is overwritten
    # a card whose file this machine does not make again says so, and the file stays
    (root / "hop-tiny" / "dataset.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    with pytest.raises(MicroError, match="differs from hop-tiny's card"):
        remake("hop-tiny", root, again, force=True)
    assert again.is_file()

    with pytest.raises(MicroError, match="exists; pass --force"):
        write_card(made, "hop-tiny", root, recipe)
    with pytest.raises(MicroError, match="without --out"):
        write_card(made, "other", root, [*recipe, "--out", "x.hdf5"])
    with pytest.raises(MicroError, match=r"no dataset card .*cards: hop-tiny"):
        remake("nothing", root, tmp_path / "n.hdf5")
    foreign = tmp_path / "foreign.hdf5"  # D4RL's own files carry no metadata/generator
    with h5py.File(foreign, "w") as f:
        f["rewards"] = np.zeros(3)
    with pytest.raises(MicroError, match=r"not made by micro\.datagen\.collect"):
        write_card(foreign, "d4rl", root, recipe)
    assert not (root / "d4rl").exists() and not (root / "other").exists()


def test_the_dynamics_every_run_on_a_dataset_learns_from_ships_beside_its_card(
    smoke_run, hopper_file, tmp_path
):
    from micro.envs import d4rl_sim
    from micro.pipeline import check_saved_dynamics

    root, fitted = tmp_path / "results", smoke_run[0] / "dynamics"
    with pytest.raises(MicroError, match="no dataset card"):
        ship_dynamics(fitted, "hop", root)
    write_card(hopper_file, "hop", root, ["--env", "hopper", "--steps", "800"])
    assert main(["dynamics", str(fitted), "--dataset", "hop", "--root", str(root)]) == 0
    dest = root / "hop" / "dynamics"
    assert {p.name for p in dest.iterdir()} == {"model.pt", "dynamics.json"}  # a run's: no config
    assert (dest / "model.pt").read_bytes() == (fitted / "model.pt").read_bytes()
    assert (dest / "dynamics.json").read_text() == (fitted / "dynamics.json").read_text()
    card = json.loads((root / "hop" / "dataset.json").read_text())
    assert check_saved_dynamics(dest, d4rl_sim("hopper"), card["sha256"]) == card_sha(dest)
    with pytest.raises(MicroError, match="exists; pass --force"):
        ship_dynamics(fitted, "hop", root)
    # another dataset's card: refused, nothing written
    other = {**card, "dataset": "other", "sha256": "0" * 64}
    (root / "other").mkdir()
    (root / "other" / "dataset.json").write_text(json.dumps(other))
    with pytest.raises(MicroError, match="fitted on other data than other"):
        ship_dynamics(fitted, "other", root)
    assert not (root / "other" / "dynamics").exists()
    with pytest.raises(MicroError, match="holds no finished dynamics fit"):
        ship_dynamics(tmp_path, "hop", root)


def card_sha(folder):
    return hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()


def test_reference_runs_start_continue_and_finish_by_one_recipe(
    hopper_file, tmp_path, monkeypatch, capsys
):
    import micro.results as results

    root, logdir = tmp_path / "results", tmp_path / "runs"
    write_card(hopper_file, "hop", root, ["--env", "hopper", "--kind", "medium", "--steps", "800"])
    common = ["--root", str(root), "--data", str(hopper_file), "--logdir", str(logdir)]
    with pytest.raises(MicroError, match="no dynamics model in"):
        reference_plan("micro", "hop", root, hopper_file, logdir)

    # the dynamics they share: fitted by the recipe (at the tiny config's scale), then shipped
    fitted = tmp_path / "fitted"
    fit = ["fit", "hop", "--root", str(root), "--data", str(hopper_file), "--out", str(fitted)]
    assert main([*fit, "--dry_run"]) == 0
    fit_argv = ["python", "fit_dynamics.py", "--task", "hopper-medium-v2", "--algo", "micro",
                "--seed", "0", "--dataset", str(hopper_file.resolve()),
                "--out", str(fitted)]  # fmt: skip
    assert capsys.readouterr().out == f"would run: {shlex.join(fit_argv)}\n"
    assert not fitted.exists()
    tiny_fit = {"algo": "micro", "seed": 0, "dynamics_max_epochs": 2,
                "dynamics_hidden_dims": [32, 32, 32, 32]}  # fmt: skip
    monkeypatch.setattr(results, "REFERENCE_DYNAMICS", tiny_fit)
    assert main([*fit, "--no_progress"]) == 0
    assert f"ship it: python -m micro.results dynamics {fitted} --dataset hop" in (
        capsys.readouterr().out
    )
    info = json.loads((fitted / "dynamics.json").read_text())
    assert info["epochs"] == 2 and info["task"] == "hopper-medium-v2"
    assert main([*fit, "--no_progress"]) == 1  # a finished fit is not overwritten
    assert "exists" in capsys.readouterr().err
    ship_dynamics(fitted, "hop", root)
    dyn = (root / "hop" / "dynamics").resolve()
    plan = reference_plan("micro", "hop", root, hopper_file, logdir)
    start = ["--task", "hopper-medium-v2", "--algo", "micro", "--seeds", "0", "1", "2",
             "--dataset", str(hopper_file.resolve()), "--load_dynamics_path", str(dyn),
             "--epoch", "200", "--eval_freq", "5", "--eval_episodes", "10",
             "--logdir", str(logdir)]  # fmt: skip
    assert plan == ReferencePlan("hopper-medium-v2", start, [], False)
    assert main(["train", "mobile", "hop", *common, "--dry_run"]) == 0
    expected = shlex.join(["python", "train.py", *start, "--no_progress"][:-1]).replace(
        "--algo micro", "--algo mobile"
    )
    assert capsys.readouterr().out == f"would run: {expected}\n" and not logdir.exists()

    # the same recipe at the tiny config's scale, trained for real: two seeds as one population
    tiny = {"epoch": 1, "step_per_epoch": 20, "rollout_freq": 10, "rollout_batch_size": 64,
            "eval_freq": 1, "eval_episodes": 1, "hidden_dims": [32, 32]}  # fmt: skip
    monkeypatch.setattr(results, "REFERENCE_SETTINGS", tiny)
    args = ["train", "micro", "hop", *common, "--seeds", "0", "1", "--no_progress"]
    assert main(args) == 0
    runs = sorted((logdir / "hopper-medium-v2" / "micro").iterdir())
    assert [yaml.safe_load((r / "config.yaml").read_text())["seed"] for r in runs] == [0, 1]
    assert all((r / "policy.pt").is_file() for r in runs)
    capsys.readouterr()
    assert main(args) == 0  # finished: nothing runs, nothing new
    assert "every run has finished" in capsys.readouterr().out
    assert sorted((logdir / "hopper-medium-v2" / "micro").iterdir()) == runs

    # a run that has not finished is continued with its population
    (runs[1] / "policy.pt").rename(tmp_path / "policy.pt")
    plan = reference_plan("micro", "hop", root, hopper_file, logdir, seeds=(1, 0))
    assert plan.argv == ["--resume", str(runs[0]), str(runs[1])] and not plan.finished
    whole = r"holds runs of seeds \[0, 1\], the population's are \[0, 1, 2\]"
    with pytest.raises(MicroError, match=whole):
        reference_plan("micro", "hop", root, hopper_file, logdir)
    # runs trained otherwise are not taken for the recipe's
    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    (runs[0] / "config.yaml").write_text(yaml.safe_dump({**config, "eval_freq": 2}))
    foreign = r"seed0.* is not a reference run of micro on hop \(its eval_freq is 2, "
    foreign += "the recipe's 1\\)"
    with pytest.raises(MicroError, match=foreign):
        reference_plan("micro", "hop", root, hopper_file, logdir, seeds=(0, 1))
    # the data must be the card's
    other = tmp_path / "other.hdf5"
    other.write_bytes(b"not the data")
    capsys.readouterr()
    assert main(["train", "micro", "hop", *common[:2], "--data", str(other),
                 "--logdir", str(tmp_path / "new")]) == 1  # fmt: skip
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {other} is not hop (SHA-256 ")
    assert not (tmp_path / "new").exists()
