"""The benchmark's analytic FLOP counts, checked against the products it actually times."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import speed

from micro.config import Config


@pytest.mark.parametrize(("env", "real_ratio"), [("walker2d", 0.05), ("hopper", 0.5)])
def test_step_products_add_up_to_the_step_flop_count(env, real_ratio):
    obs, act = speed.SIZES[env]
    cfg = Config(task=f"{env}-medium-v2", real_ratio=real_ratio)
    ops = speed.step_products(cfg, obs, act)
    # U's 244 x 5 x 10 = 12 200 states at real_ratio 0.05 come in blocks of 2048 rows
    assert speed.products_gflop(ops) == pytest.approx(speed.step_gflop(cfg, obs, act), rel=1e-12)


def test_mlp_flops_known_value():
    # 2 per multiply-add: 10 rows through 3 -> 4 -> 2
    assert speed.mlp_flops(10, [3, 4, 2]) == 2 * 10 * (3 * 4 + 4 * 2)


def test_population_bench_runs_and_records(tmp_path):
    """bench/population.py end to end at one round: a row per (algo, runs), one run's first."""
    import json
    import subprocess

    out = tmp_path / "pop.json"
    cmd = [sys.executable, "bench/population.py", "--algos", "mobile", "--runs", "2"]
    cmd += ["--rounds", "1", "--steps", "1", "--json", str(out)]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["algo"], r["runs"]) for r in rows] == [("mobile", "one run"), ("mobile", 2)]
    assert rows[0]["vs_one_run"] == 1.0 and rows[1]["steps_per_s"] > 0
    assert "| mobile | 2 |" in proc.stdout
