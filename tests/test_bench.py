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
