"""Shipping a finished run into results/ and listing what is shipped."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from micro import MicroError
from micro.results import main, ship, table


def test_ship_copies_the_small_files_and_records_the_run(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    dest = ship(run_dir, "hopper-random-tiny", tmp_path)
    assert dest == tmp_path / "hopper-random-tiny" / "micro" / "seed3"
    for name in ("policy.pt", "progress.csv", "config.yaml", "timings.json"):
        assert (dest / name).read_bytes() == (run_dir / name).read_bytes()
    record = json.loads((dest / "run.json").read_text())
    with open(run_dir / "progress.csv", newline="") as fh:
        evals = [r for r in csv.DictReader(fh) if r["eval_normalized_score"]]
    scores = [float(r["eval_normalized_score"]) for r in evals]
    assert record["final_score"] == scores[-1] and record["best_score"] == max(scores)
    assert (record["task"], record["algo"], record["seed"]) == ("hopper-medium-v2", "micro", 3)
    assert record["steps"] == int(evals[-1]["step"]) and record["machine"]["cpu"]
    row = table(tmp_path).splitlines()[2]
    assert row.startswith(f"| hopper-random-tiny | micro | 3 | {record['steps']} |")

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
    with pytest.raises(MicroError, match=r"lacks policy\.pt"):
        ship(partial, "x", tmp_path / "results")
    assert not (tmp_path / "results").exists()
    assert main(["table", "--root", str(tmp_path / "none")]) == 1


def test_the_demo_sweeps_shipped_policies(smoke_run, tmp_path, monkeypatch):
    from micro import demo

    run_dir, _ = smoke_run
    dest = ship(run_dir, "hopper-random-tiny", tmp_path)
    shutil.copytree(dest, dest.parent / "seed4")  # a second seed of the same algorithm
    found = demo.shipped_policies(tmp_path)
    assert found == {
        "hopper-random-tiny": [dest / "policy.pt", dest.parent / "seed4" / "policy.pt"]
    }
    assert demo.shipped_policies(tmp_path / "nothing") == {}
    monkeypatch.setattr(demo, "FRICTION", ["1.0"])
    monkeypatch.setattr(demo, "GRAVITY", ["0.5", "1.0"])
    monkeypatch.setattr(demo, "EPS", ["0", "0.1"])
    monkeypatch.setattr(demo, "SHIPPED_EPISODES", "1")
    figures = demo.sweep_shipped(found, tmp_path / "out")
    folder = tmp_path / "out" / "hopper-random-tiny"
    assert figures == {"hopper-random-tiny": [folder / "sim2real.png", folder / "attack-all.png"]}
    assert all(f.is_file() for f in figures["hopper-random-tiny"])
    with open(folder / "attack-all.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2 and {r["group"] for r in rows} == {"micro"}
    lines = demo.shipped_scores(found)
    assert len(lines) == 2 and lines[0].startswith("MICRO seed 3 (hopper-random-tiny,")
