"""Importing a run of the published MICRO trainer (bench/published_micro.py) into results/:
a tiny log in the published Logger's format, written here, not a run of the published code."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml

from micro import MicroError
from micro.cli.results import main
from micro.report import find_runs, write_report
from micro.results import import_published, overview, table

LOW, HIGH = -20.272305, 3234.3  # D4RL's hopper references
HYPER = {
    "algo_name": "micro", "task": "hopper-medium-v2", "seed": 2, "device": "cpu",
    "batch_size": 256, "real_ratio": 0.05, "step_per_epoch": 1000, "epoch": 30,
    "eval_episodes": 10, "penalty_coef": 1.0, "rollout_length": 5, "auto_alpha": False,
}  # fmt: skip
# (timestep, normalized mean, raw return std, penalty as logged, critic loss)
ROWS = [
    (10000, 20.5, 30.0, 0.5, 3.25),
    (20000, 40.25, 60.0, 0.75, 2.5),
    (30000, 35.0, 6.0, 1.0, 2.0),
]


def published_run(out, dataset, finished=True, sessions=None):
    log = out / "log/hopper-medium-v2/micro&penalty_coef=1.0&rollout_length=5/seed_2&timestamp_x"
    (log / "record").mkdir(parents=True)
    lines = [json.dumps(HYPER), json.dumps(HYPER)]  # one object per session
    (log / "record/hyper_param.json").write_text("\n".join(lines) + "\n")
    with open(log / "record/policy_training_progress.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "eval/normalized_episode_reward",
                "eval/normalized_episode_reward_std",
                "loss/actor",
                "loss/critic",
                "penalty",
                "rollout_info/reward_mean",
                "timestep",
            ]
        )
        for step, norm, std, penalty, critic in ROWS:
            published_std = (std - LOW) / (HIGH - LOW) * 100  # get_normalized_score(std) * 100
            w.writerow([norm, published_std, -1.5, critic, penalty, 0.25, step])  # fmt: skip
    sessions = sessions or [
        {"argv": ["--dataset", str(dataset)], "cpu": "CPU A", "dynamics_seconds": 100.0,
         "loop_seconds": 1000.0, "ref_commit": "abc", "from_epoch": 1, "to_epoch": 20},
        {"argv": ["--dataset", str(dataset)], "cpu": "CPU A", "gpu": None, "dynamics_seconds": 0.0,
         "loop_seconds": 500.0, "ref_commit": "abc", "from_epoch": 21, "to_epoch": 30},
    ]  # fmt: skip
    (out / "sessions.json").write_text(json.dumps(sessions))
    if finished:
        (out / "finished.json").write_text("{}")
    return out


def test_a_published_run_ships_in_our_format_and_reports_beside_ours(hopper_file, tmp_path):
    out = published_run(tmp_path / "pub", hopper_file)
    root = tmp_path / "results"
    dest = import_published(out, "tiny", root)
    assert dest == root / "tiny" / "published-micro" / "seed2"
    assert sorted(p.name for p in dest.iterdir()) == ["config.yaml", "progress.csv", "run.json"]
    with open(dest / "progress.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10000, 20000, 30000]
    assert [int(r["epoch"]) for r in rows] == [10, 20, 30]
    for row, (_, norm, std, penalty, critic) in zip(rows, ROWS, strict=True):
        assert float(row["eval_normalized_score"]) == norm
        assert float(row["eval_normalized_score_std"]) == pytest.approx(100 * std / (HIGH - LOW))
        assert float(row["eval_return"]) == pytest.approx(norm / 100 * (HIGH - LOW) + LOW)
        assert float(row["uncertainty"]) == pytest.approx(penalty * 256 / (256 - 12))
        assert float(row["critic_loss"]) == critic and float(row["actor_loss"]) == -1.5
        assert float(row["rollout_reward_mean"]) == 0.25
    config = yaml.safe_load((dest / "config.yaml").read_text())
    sha = hashlib.sha256(hopper_file.read_bytes()).hexdigest()
    assert (config["algo"], config["seed"], config["dataset_sha256"]) == ("published-micro", 2, sha)
    assert config["eval_freq"] == 10 and "algo_name" not in config
    record = json.loads((dest / "run.json").read_text())
    assert record["finished"] is True and record["steps"] == 30000
    assert (record["final_score"], record["best_score"], record["best_step"]) == (
        35.0,
        40.25,
        20000,
    )
    assert record["last_evals_score"] == pytest.approx((20.5 + 40.25 + 35.0) / 3)
    assert record["seconds"] == {"dynamics": 100.0, "training loop": 1500.0}
    assert (record["epochs_timed"], record["epochs_done"]) == (30, 30)
    assert record["trained_on"] == ["CPU A"] and record["sessions"] == 2
    assert record["code"] == [{"published_commit": "abc"}]
    assert "| tiny | published-micro | 2 | 30000 | 35.0 ± " in table(root)
    assert "| 0.4 h | CPU A |" in table(root)  # 1600 s, every epoch timed
    assert "PUBLISHED-MICRO final" in overview(root).splitlines()[0]
    report = write_report(find_runs([root / "tiny"]), tmp_path / "report")
    summary = report["md"].read_text()
    assert "| hopper-medium-v2 | published-micro | 2 | 30000 | 35.0 ± 0.0 |" in summary
    assert "running" not in summary

    with pytest.raises(MicroError, match="pass --force"):
        import_published(out, "tiny", root)
    unfinished = published_run(tmp_path / "pub2", hopper_file, finished=False)
    args = ["import-published", str(unfinished), "--dataset", "tiny", "--root", str(root)]
    assert main([*args, "--force"]) == 0
    assert json.loads((dest / "run.json").read_text())["finished"] is False


def test_an_import_refuses_what_it_cannot_vouch_for(hopper_file, tmp_path):
    root = tmp_path / "results"
    with pytest.raises(MicroError, match="no published run folders"):
        import_published(tmp_path, "tiny", root)
    out = published_run(tmp_path / "pub", hopper_file)
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "dataset.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(MicroError, match="SHA-256 differs"):
        import_published(out, "tiny", root)
    (out / "sessions.json").write_text("[]")
    with pytest.raises(MicroError, match="pass --data FILE"):
        import_published(out, "other", root)
    with pytest.raises(MicroError, match="is missing"):
        import_published(out, "other", root, tmp_path / "gone.hdf5")
    assert not (root / "other").exists()


def test_sessions_killed_before_they_were_recorded_are_not_timed(hopper_file, tmp_path):
    # the session that fitted the dynamics and ran epochs 1-11 was killed before
    # bench/published_micro.py recorded a session at every save; so was the one after epoch 25
    sessions = [
        {"argv": ["--dataset", str(hopper_file)], "cpu": "CPU A", "dynamics_seconds": 0.0,
         "loop_seconds": 900.0, "from_epoch": 12, "to_epoch": 20},
        {"argv": ["--dataset", str(hopper_file)], "cpu": "CPU A", "dynamics_seconds": 0.0,
         "loop_seconds": 540.0, "from_epoch": 21, "to_epoch": 25},
    ]  # fmt: skip
    out = published_run(tmp_path / "pub", hopper_file, finished=False, sessions=sessions)
    root = tmp_path / "results"
    record = json.loads((import_published(out, "tiny", root) / "run.json").read_text())
    assert record["seconds"] == {"training loop": 1440.0}  # no dynamics fit: it was not timed
    assert (record["epochs_timed"], record["epochs_done"]) == (14, 30)  # the log reached 30
    row = next(line for line in table(root).splitlines() if "published-micro" in line)
    assert "| 0.4 h (timed: 14 of 30 epochs, not the dynamics fit) | CPU A |" in row
    assert "30000 of 30000 (in progress)" in row
