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


def _returns(actor, episodes, **kwargs):
    from gymnasium.wrappers import TimeLimit

    from micro.envs import d4rl_sim
    from micro.evaluation import run_episodes

    sim = d4rl_sim("halfcheetah")
    envs = [TimeLimit(sim.make(), 120) for _ in range(5)]
    return run_episodes(actor, sim, episodes, seed=3, envs=envs, **kwargs).returns


def test_an_episode_is_a_function_of_its_seed_not_of_how_many_run_beside_it():
    """Episode i sits in row i % n_envs of a batch that keeps its shape, so 2 or 7 episodes
    (batches that used to be 2 and 5 rows wide, rounding differently) give episode i the same
    return to the last bit, deterministic, stochastic and under an attack."""
    import torch

    from micro.nets import Actor, EnsembleCritic
    from micro.robustness import Attack

    torch.manual_seed(0)
    actor, critics = Actor(17, 6, [64, 64]), EnsembleCritic(17, 6, [64, 64], 2)
    attack = {"attack": Attack("min_Q", 0.1), "critics": critics, "obs_std": np.ones(17)}
    for kwargs in ({}, {"deterministic": False}, attack):
        few, many = _returns(actor, 2, **kwargs), _returns(actor, 7, **kwargs)
        np.testing.assert_array_equal(few, many[:2])
        assert len(set(many.tolist())) == 7  # seven different episodes


def test_a_table_of_seeds_names_each_and_ends_with_their_mean():
    from micro.eval_sweep import with_group_means

    def row(label, group, eps, score):
        r = {"label": label, "group": group, "eps": eps, "normalized_mean": score}
        return {**r, "normalized_std": 1.0, "return_mean": 10 * score, "return_std": 2.0}

    rows = [row("micro seed 0", "micro", 0.0, 50.0), row("micro seed 1", "micro", 0.0, 54.0)]
    rows += [row("mobile seed 0", "mobile", 0.0, 40.0)]
    table = with_group_means(rows, ["eps"])
    assert table[:3] == rows and len(table) == 4  # one policy's group has no mean row
    mean = table[3]
    assert (mean["label"], mean["eps"], mean["normalized_mean"], mean["normalized_std"]) == (
        "micro: mean of 2",
        0.0,
        52.0,
        2.0,
    )
    assert (mean["return_mean"], mean["return_std"]) == (520.0, 20.0)
