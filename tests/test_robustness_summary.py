"""micro/robustness_summary.py: the numbers behind each robustness figure."""

from micro.robustness_summary import (
    attack_summary,
    averaged_over,
    group_cells,
    sim2real_summary,
)


def cell(group, seed, values, **keys):
    return {
        "group": group,
        "seed": seed,
        **keys,
        "episodes": 3,
        "normalized_mean": values[0],
        "normalized_std": values[1],
    }


def test_group_cells_spread_over_episodes_for_one_policy_over_seeds_for_several():
    rows = [
        cell("a seed 0", 0, (10.0, 4.0), eps=0.0),
        cell("b", 0, (10.0, 4.0), eps=0.0),
        cell("b", 1, (20.0, 1.0), eps=0.0),
    ]
    assert group_cells(rows, ("eps",)) == {
        "a seed 0": {(0.0,): (10.0, 4.0)},
        "b": {(0.0,): (15.0, 5.0)},
    }


def test_sim2real_summary_means_by_axis():
    grid = {(0.5, 1.0): 10.0, (0.5, 2.0): 20.0, (1.5, 1.0): 30.0, (1.5, 2.0): 50.0}
    rows = [cell("a", 0, (v, 1.0), friction=f, gravity=g, mass=1.0) for (f, g), v in grid.items()]
    rows += [
        cell("b", s, (10.0 * s, 1.0), friction=f, gravity=g, mass=1.0)
        for s in (0, 1)
        for f, g in grid
    ]
    lines = sim2real_summary(rows).splitlines()
    assert (
        lines[2] == "Mean of 3 deterministic episodes per cell, then over each algorithm's "
        "seeds; 2 friction × 2 gravity scales."
    )
    by_gravity = lines[lines.index("By gravity scale (mean over the friction scales):") + 2 :][:4]
    assert by_gravity == [
        "| group | all cells | 1 | 2 |",
        "| --- | --- | --- | --- |",
        "| a | 27.5 | 20.0 | 35.0 |",
        "| b | 5.0 | 5.0 | 5.0 |",
    ]
    by_friction = lines[lines.index("By friction scale (mean over the gravity scales):") + 2 :]
    assert by_friction == [
        "| group | all cells | 0.5 | 1.5 |",
        "| --- | --- | --- | --- |",
        "| a | 27.5 | 15.0 | 40.0 |",
        "| b | 5.0 | 5.0 | 5.0 |",
    ]


def test_sim2real_summary_one_line_per_mass():
    rows = [cell("a", 0, (m * 10, 0.0), friction=1.0, gravity=1.0, mass=m) for m in (1.0, 2.0)]
    lines = sim2real_summary(rows).splitlines()
    assert lines[2].endswith("1 friction × 1 gravity scales × 2 mass scales.")
    assert lines[6:10] == [
        "| group | mass | all cells | 1 |",
        "| --- | --- | --- | --- |",
        "| a | 1 | 10.0 | 10.0 |",
        "| a | 2 | 20.0 | 20.0 |",
    ]


def test_attack_summary_scores_by_budget_and_their_mean():
    rows = [
        cell("a", 0, (40.0, 1.0), attack_mode="random", eps=0.0),
        cell("a", 0, (20.0, 1.0), attack_mode="random", eps=0.1),
        cell("a", 0, (40.0, 1.0), attack_mode="min_Q", eps=0.0),
        cell("a", 0, (5.0, 1.0), attack_mode="min_Q", eps=0.1),
    ]
    assert attack_summary(rows).splitlines()[4:] == [
        "| group | attack | ε 0 | ε 0.1 | mean over ε | cost (ε 0 − mean) |",
        "| --- | --- | --- | --- | --- | --- |",
        "| a | random | 40.0 | 20.0 | 30.0 | 10.0 |",
        "| a | min_Q | 40.0 | 5.0 | 22.5 | 17.5 |",
    ]
    # without an unattacked budget there is nothing to measure a cost from
    attacked = [
        cell("a", 0, (20.0, 1.0), attack_mode="random", eps=0.1),
        cell("a", 0, (10.0, 1.0), attack_mode="random", eps=0.2),
    ]
    assert attack_summary(attacked).splitlines()[4:] == [
        "| group | attack | ε 0.1 | ε 0.2 | mean over ε |",
        "| --- | --- | --- | --- | --- |",
        "| a | random | 20.0 | 10.0 | 15.0 |",
    ]


def test_summary_says_what_a_group_averages_over():
    def row(group, policy, seed):
        return {**cell(group, seed, (1.0, 0.0)), "policy": policy}

    alone = [row("a", "a.pt", 0), row("b", "b.pt", 0)]
    seeds = [row("micro", "s0.pt", 0), row("micro", "s1.pt", 1), row("mobile", "m.pt", 0)]
    snapshots = [row("micro", "s0/epoch5.pt", 0), row("micro", "s0/policy.pt", 0)]
    assert averaged_over(alone) == ""
    assert averaged_over(seeds) == ", then over each algorithm's seeds"
    assert averaged_over(snapshots + seeds[1:]).endswith("(seeds and snapshots alike)")


def test_a_group_of_several_policies_lists_each_policys_own_mean():
    def row(label, seed, value, **keys):
        return {**cell("micro", seed, (value, 0.0), **keys), "label": label, "policy": label}

    attack = [
        row(f"micro seed {s}", s, v + 10 * s, attack_mode=m, eps=e)
        for s in (0, 1)
        for m, v in (("random", 40.0), ("min_Q", 20.0))
        for e, v in ((0.0, v), (0.1, v - 10))
    ]
    attack[-1]["normalized_mean"] = 0.0  # seed 1's min_Q at ε 0.1: 30 -> 0
    lines = attack_summary(attack).splitlines()
    at = lines.index("Each policy (its mean over ε):")
    assert lines[at + 2 : at + 6] == [
        "| policy | random | min_Q |",
        "| --- | --- | --- |",
        "| micro seed 0 | 35.0 | 15.0 |",
        "| micro seed 1 | 45.0 | 15.0 |",
    ]
    # what each attack takes from each policy: its ε 0 score minus its mean over ε
    at = lines.index("Each policy's cost (its ε 0 score − its mean over ε):")
    assert lines[at + 2 :] == [
        "| policy | random | min_Q |",
        "| --- | --- | --- |",
        "| micro seed 0 | 5.0 | 5.0 |",
        "| micro seed 1 | 5.0 | 15.0 |",
    ]
    assert "| micro | random | 40.0 | 30.0 | 35.0 | 5.0 |" not in lines  # the group's: the mean
    assert "| micro | random | 45.0 | 35.0 | 40.0 | 5.0 |" in lines
    assert "| micro | min_Q | 25.0 | 5.0 | 15.0 | 10.0 |" in lines
    physics = [
        row(label, 0, v, friction=f, gravity=1.0, mass=1.0)
        for label, v in (("micro seed 0, step 1000", 10.0), ("micro seed 0, step 2000", 30.0))
        for f in (0.5, 1.5)
    ]
    lines = sim2real_summary(physics).splitlines()
    assert lines[-4:] == [
        "| policy | all cells |",
        "| --- | --- |",
        "| micro seed 0, step 1000 | 10.0 |",
        "| micro seed 0, step 2000 | 30.0 |",
    ]
    # one policy per group: nothing to list
    single = [r for r in attack if r["seed"] == 0]
    assert "Each policy" not in attack_summary(single)
