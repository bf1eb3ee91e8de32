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
