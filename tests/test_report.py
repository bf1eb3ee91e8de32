"""micro/report.py: runs grouped into experiments, the table, curves and diagnostics."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, read_rows

from micro.data.d4rl import read_hdf5


def test_report_groups_a_run_from_before_algo_was_recorded_with_later_micro_runs(tmp_path):
    from micro.report import Run, group_runs

    config = {"task": "halfcheetah-medium-v2", "seed": 0, "penalty_coef": 0.5}
    rows = [{"epoch": "1", "step": "1000", "eval_normalized_score": "40.0"}]
    old = Run(tmp_path / "a", dict(config), rows, True)
    new = Run(tmp_path / "b", {**config, "seed": 1, "algo": "micro"}, rows, True)
    mobile = Run(tmp_path / "c", {**config, "seed": 1, "algo": "mobile"}, rows, True)
    groups, notes = group_runs([old, new, mobile])
    assert [(g.algo, [r.seed for r in g.runs]) for g in groups] == [
        ("micro", [0, 1]),
        ("mobile", [1]),
    ]
    assert notes == []


def test_find_runs_keeps_paths_as_given_and_reads_a_run_once(baseline_runs, tmp_path, monkeypatch):
    from micro.report import find_runs

    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    monkeypatch.chdir(tmp_path)
    name = baseline_runs["micro"].name
    # the MICRO run named three ways: its own folder (relative), the tree above it, and absolute
    runs = find_runs([Path("runs/micro") / name, "runs", logdir / "micro" / name])
    assert sorted(str(r.path) for r in runs) == sorted(
        f"runs/{algo}/{src.name}" for algo, src in baseline_runs.items()
    )


def test_behavior_line_comes_from_the_runs_record(baseline_runs, hopper_file, tmp_path):
    from micro.envs import normalized_score
    from micro.report import behavior_score, find_runs

    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    recorded = float(read_hdf5(hopper_file)["metadata/return_mean"])
    expected = normalized_score("hopper", recorded)

    def edit(change):
        for cfg_file in logdir.glob("*/*/config.yaml"):
            cfg = yaml.safe_load(cfg_file.read_text())
            change(cfg)
            cfg_file.write_text(yaml.safe_dump(cfg))
        return behavior_score(find_runs([logdir]))

    assert behavior_score(find_runs([logdir])) == pytest.approx(expected, rel=1e-12)
    # the dataset moved away (a clone of shipped results): the recorded return still draws it
    assert edit(lambda c: c.update(dataset_file="/nowhere/d.hdf5")) == pytest.approx(expected)
    # runs from before the return was recorded: read from the file where it still is ...
    assert edit(lambda c: c.update(dataset_file=str(hopper_file))) == pytest.approx(expected)
    assert edit(lambda c: c.pop("dataset_return_mean")) == pytest.approx(expected)
    # ... and no line when it is gone
    assert edit(lambda c: c.update(dataset_file="/nowhere/d.hdf5")) is None
    # runs on two datasets: no single behavior policy to draw
    (one,) = logdir.glob("mopo/*/config.yaml")
    cfg = yaml.safe_load(one.read_text())
    cfg.update(dataset_sha256="0" * 64, dataset_return_mean=1.0)
    one.write_text(yaml.safe_dump(cfg))
    assert behavior_score(find_runs([logdir])) is None


def test_report_table_equals_the_progress_files(baseline_runs, tmp_path):
    from micro.report import diagnostic_panels, find_runs, group_runs, write_report

    # two seeds of MOBILE: the second a copy with another seed and shifted scores
    logdir = tmp_path / "runs"
    for algo, src in baseline_runs.items():
        shutil.copytree(src, logdir / algo / src.name)
    second = logdir / "mobile" / "seed4-copy"
    shutil.copytree(baseline_runs["mobile"], second)
    cfg = yaml.safe_load((second / "config.yaml").read_text())
    cfg["seed"] = 4
    (second / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = read_rows(second / "progress.csv")
    for r in rows:
        r["eval_normalized_score"] = str(float(r["eval_normalized_score"]) + 10.0)
    with open(second / "progress.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # a MICRO run with another config: reported on its own row, not averaged in
    odd = logdir / "micro" / "odd"
    shutil.copytree(baseline_runs["micro"], odd)
    cfg = yaml.safe_load((odd / "config.yaml").read_text())
    cfg["penalty_coef"], cfg["seed"] = 9.0, 8
    (odd / "config.yaml").write_text(yaml.safe_dump(cfg))

    runs = find_runs([logdir])
    assert len(runs) == 6
    written = write_report(runs, tmp_path / "report")
    table = read_rows(written["csv"])
    (mobile,) = [r for r in table if r["algo"] == "mobile"]
    assert mobile["variant"] == ""
    first = [
        float(r["eval_normalized_score"])
        for r in read_rows(baseline_runs["mobile"] / "progress.csv")
    ]
    finals = np.array([first[-1], first[-1] + 10.0])
    bests = np.array([max(first), max(first) + 10.0])
    assert (mobile["seeds"], mobile["runs"]) == ("3 4", "2")
    assert float(mobile["final_mean"]) == pytest.approx(finals.mean())
    assert float(mobile["final_std"]) == pytest.approx(finals.std())  # ddof 0: 5.0
    assert float(mobile["best_mean"]) == pytest.approx(bests.mean())
    lasts = np.array([np.mean(first[-5:]), np.mean(first[-5:]) + 10.0])
    assert float(mobile["last_evals_mean"]) == pytest.approx(lasts.mean())
    assert float(mobile["last_evals_std"]) == pytest.approx(lasts.std())
    assert mobile["penalty_name"] == "penalty"
    last = read_rows(baseline_runs["mobile"] / "progress.csv")[-1]
    assert float(mobile["q_mean"]) == pytest.approx(float(last["q_mean"]))
    (mopo,) = [r for r in table if r["algo"] == "mopo"]
    assert mopo["penalty_name"] == "rollout_reward_penalty"
    # cost, from timings.json: seconds per 1000 gradient steps, RAMBO's model updates in it
    (rambo,) = [r for r in table if r["algo"] == "rambo"]
    assert rambo["penalty_name"] == ""
    t = json.loads((baseline_runs["rambo"] / "timings.json").read_text())
    per_1k = (t["updates"] + t["rollouts"] + t["model_updates"]) / 40 * 1000
    assert float(rambo["train_s_per_1k"]) == pytest.approx(per_1k)
    assert float(rambo["model_updates_s_per_1k"]) == pytest.approx(t["model_updates"] / 40 * 1000)
    assert float(mopo["model_updates_s_per_1k"]) == 0.0
    assert float(rambo["total_h"]) == pytest.approx(sum(t.values()) / 3600)
    assert rambo["cost_runs"] == "1" and rambo["machines"]
    micro_rows = [r for r in table if r["algo"] == "micro"]
    assert len(micro_rows) == 2 and all(r["runs"] == "1" for r in micro_rows)
    assert all(r["variant"] for r in micro_rows)
    md = written["md"].read_text()
    assert "penalty_coef" in md and "not averaged" in md
    assert written["curves-hopper-medium-v2"].read_bytes()[:4] == b"\x89PNG"
    assert written["diagnostics-hopper-medium-v2"].read_bytes()[:4] == b"\x89PNG"
    # the diagnostics: each algorithm's own penalty column, averaged over seeds per step
    panels = diagnostic_panels(group_runs(runs)[0])
    penalty = panels["penalty before its coefficient"]
    assert len(penalty) == 4  # mobile, mopo and MICRO's two variants
    for algo, column in (("mobile", "penalty"), ("mopo", "rollout_reward_penalty")):
        rows = read_rows(baseline_runs[algo] / "progress.csv")
        steps, mean, std = penalty[algo]
        assert steps.tolist() == [int(r["step"]) for r in rows]
        np.testing.assert_allclose(mean, [float(r[column]) for r in rows], rtol=1e-12)
        assert not std.any()  # the second MOBILE seed is a copy of the first's diagnostics
    # the seeds drawn under their mean: each run's own evaluations
    (mobile_group,) = [g for g in group_runs(runs)[0] if g.algo == "mobile"]
    (s3, v3), (s4, v4) = mobile_group.seed_curves()
    assert (
        s3.tolist() == s4.tolist() == [int(r["step"]) for r in read_rows(second / "progress.csv")]
    )
    np.testing.assert_allclose(v4, np.array(first) + 10.0)
    np.testing.assert_allclose(v3, first)
    # each evaluation's worst episode, at the evaluation steps only
    worst = panels["worst evaluation episode (normalized)"]
    rows = [r for r in read_rows(baseline_runs["mopo"] / "progress.csv") if r["eval_return"]]
    steps, mean, _ = worst["mopo"]
    assert steps.tolist() == [int(r["step"]) for r in rows]
    np.testing.assert_allclose(mean, [float(r["eval_normalized_score_min"]) for r in rows])
    proc = subprocess.run(
        [sys.executable, "report.py", str(tmp_path / "nothing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1


def _progress(tmp_path, text: bytes):
    path = tmp_path / "progress.csv"
    path.write_bytes(text)
    return path


def test_progress_csv_cut_short_loses_its_last_line_with_a_note(tmp_path, capsys):
    from micro.logger import read_progress

    head = b"epoch,step,eval_normalized_score\n1,10,3.5\n2,20,\n"
    assert [r["epoch"] for r in read_progress(_progress(tmp_path, head))] == ["1", "2"]
    for cut in (head + b"3,3", head + b"3,30,4.1"):  # mid-row, or a row without its newline
        rows = read_progress(_progress(tmp_path, cut))
        assert [r["epoch"] for r in rows] == ["1", "2"]
        assert "last line is incomplete; it is left out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        (b"epoch,step\n1,10\n\xff\xfe,20\n", "is not UTF-8 text: it is damaged"),
        (b"epoch,step\n1,1x0\n2,20\n", "line 2 is damaged (column step)"),
        (b"epoch,step\n1\n2,20\n", "line 2 is damaged (column step)"),
    ],
)
def test_damaged_progress_csv_is_one_line(tmp_path, text, message):
    from micro import MicroError
    from micro.logger import read_progress

    with pytest.raises(MicroError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_progress(_progress(tmp_path, text))
