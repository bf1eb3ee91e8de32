"""micro/evaluation.py: episodes and their results."""

import numpy as np


def test_eval_result_per_episode_rows_and_extremes():
    from micro.envs import SimSpec
    from micro.evaluation import EvalResult

    sim = SimSpec("hopper", "Hopper-v4", ref_min=-100.0, ref_max=900.0, ref_source="D4RL")
    res = EvalResult(np.array([400.0, -100.0, 900.0]), np.array([1000, 37, 1000]), sim)
    assert (res.normalized_mean, res.normalized_min, res.normalized_max) == (50.0, 0.0, 100.0)
    assert res.episode_rows(seed=7) == [
        {"episode": 0, "seed": 7, "return": 400.0, "normalized": 50.0, "length": 1000},
        {"episode": 1, "seed": 8, "return": -100.0, "normalized": 0.0, "length": 37},
        {"episode": 2, "seed": 9, "return": 900.0, "normalized": 100.0, "length": 1000},
    ]
