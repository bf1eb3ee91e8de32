"""The numbers behind eval.py's robustness figures, as markdown tables (``<stem>-summary.md``).

A sweep's rows (one per grid cell or attack budget, per policy) are grouped the way the figures
group them: one group per policy, or per algorithm when its seeds are averaged. Then

- sim2real: each group's mean normalized score over the whole grid, and its means by gravity
  scale (over the friction scales) and by friction scale (over the gravity scales), per mass;
- attack: each group's normalized score at every budget ε, per attack mode, the mean over ε and,
  when the budgets include 0, what the attack costs: the ε = 0 score minus the mean over ε (a
  policy that scores less unattacked has less to lose, so orders by score alone can mislead);
- and, when a group averages several policies (seeds, snapshots), each policy's own mean (and,
  for attacks, its own cost).

Text that quotes robustness numbers (a README, a paper) can then cite this file instead of
numbers read off a heatmap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Cells = dict[tuple, tuple[float, float]]


def group_cells(rows: list[dict], keys: tuple[str, ...]) -> dict[str, Cells]:
    """Per group, per cell ``keys``: the normalized mean and its spread. A group of one policy
    spreads over its episodes; a group of several (seeds of one algorithm) over their means."""
    out: dict[str, dict[tuple, list[dict]]] = {}
    for r in rows:
        out.setdefault(r["group"], {}).setdefault(tuple(r[k] for k in keys), []).append(r)
    result = {}
    for group, cells in out.items():
        result[group] = {}
        for cell, part in cells.items():
            means = np.array([r["normalized_mean"] for r in part])
            spread = part[0]["normalized_std"] if len(part) == 1 else float(means.std())
            result[group][cell] = (float(means.mean()), spread)
    return result


def averaged_over(rows: list[dict]) -> str:
    """How a group's numbers were averaged beyond its episodes: over its seeds, or over its
    policies when some share a seed (snapshots of one run)."""
    policies: dict[str, set] = {}
    for r in rows:
        policies.setdefault(r["group"], set()).add((r.get("policy"), r.get("seed")))
    if all(len(p) == 1 for p in policies.values()):
        return ""
    if all(len({seed for _, seed in p}) == len(p) for p in policies.values()):
        return ", then over each algorithm's seeds"
    return ", then over each group's policies (seeds and snapshots alike)"


def each_policy(
    rows: list[dict], columns: str, title: str, value: Callable[[list[dict]], float]
) -> list[str]:
    """When a group averages several policies: each policy's own ``value`` over the sweep
    (its mean score, or an attack's cost), one column per value of ``columns`` (attack mode, or mass
    scale), so a reader sees whether the seeds (or snapshots) agree or one of them makes the
    mean. ``value`` gets one policy's rows of one column."""
    if not averaged_over(rows) or "label" not in rows[0]:
        return []
    values = list(dict.fromkeys(r[columns] for r in rows))
    parts: dict[tuple[str, str], dict] = {}
    for r in rows:
        parts.setdefault((r["group"], r["label"]), {}).setdefault(r[columns], []).append(r)
    # in the order the policies were given; the group only says which line each one feeds
    lines = [[label, *(f"{value(by[v]):.1f}" for v in values)] for (_, label), by in parts.items()]
    if columns == "attack_mode":
        header = values
    else:
        header = [f"mass {v:g}" for v in values] if len(values) > 1 else ["all cells"]
    return ["", title, "", *_table(["policy", *header], lines)]


def _mean_score(part: list[dict]) -> float:
    return float(np.mean([r["normalized_mean"] for r in part]))


def _attack_cost(part: list[dict]) -> float:
    """One policy's, one attack's: its unattacked (ε = 0) score minus its mean over ε."""
    (clean,) = [r["normalized_mean"] for r in part if r["eps"] == 0]
    return clean - _mean_score(part)


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(line) + " |" for line in lines),
    ]


def _by_axis(
    groups: dict[str, Cells], masses: list[float], axis: int, values: list[float]
) -> list[list[str]]:
    """One line per group (and mass): the grid mean, then the mean at each value of ``axis``
    (1 friction, 2 gravity) over the other axis."""
    lines = []
    for group, cells in groups.items():
        for mass in masses:
            part = {k: v[0] for k, v in cells.items() if k[0] == mass}
            line = [group] + ([f"{mass:g}"] if len(masses) > 1 else [])
            line.append(f"{np.mean(list(part.values())):.1f}")
            line += [f"{np.mean([s for k, s in part.items() if k[axis] == v]):.1f}" for v in values]
            lines.append(line)
    return lines


def sim2real_summary(rows: list[dict]) -> str:
    groups = group_cells(rows, ("mass", "friction", "gravity"))
    masses = sorted({r["mass"] for r in rows})
    frictions = sorted({r["friction"] for r in rows})
    gravities = sorted({r["gravity"] for r in rows})
    lead = ["group"] + (["mass"] if len(masses) > 1 else []) + ["all cells"]
    out = [
        "# sim2real: normalized score",
        "",
        f"Mean of {rows[0]['episodes']} deterministic episodes per cell"
        + averaged_over(rows)
        + f"; {len(frictions)} friction × {len(gravities)} gravity scales"
        + (f" × {len(masses)} mass scales" if len(masses) > 1 else "")
        + ".",
        "",
        "By gravity scale (mean over the friction scales):",
        "",
        *_table(lead + [f"{g:.3g}" for g in gravities], _by_axis(groups, masses, 2, gravities)),
        "",
        "By friction scale (mean over the gravity scales):",
        "",
        *_table(lead + [f"{f:.3g}" for f in frictions], _by_axis(groups, masses, 1, frictions)),
        *each_policy(rows, "mass", "Each policy (its mean over all cells):", _mean_score),
    ]
    return "\n".join(out) + "\n"


def attack_summary(rows: list[dict]) -> str:
    groups = group_cells(rows, ("attack_mode", "eps"))
    modes = list(dict.fromkeys(r["attack_mode"] for r in rows))
    eps = sorted({r["eps"] for r in rows})
    costs = 0.0 in eps
    lines = []
    for mode in modes:
        for group, cells in groups.items():
            scores = [cells[(mode, e)][0] for e in eps]
            line = [group, mode, *(f"{s:.1f}" for s in scores), f"{np.mean(scores):.1f}"]
            lines.append(line + ([f"{scores[0] - np.mean(scores):.1f}"] if costs else []))
    cost_header = ["cost (ε 0 − mean)"] if costs else []
    out = [
        "# Observation attacks: normalized score",
        "",
        f"Mean of {rows[0]['episodes']} deterministic episodes per budget"
        + averaged_over(rows)
        + "; ε is the budget, × the data's observation std per dimension."
        + (
            " Cost: the score at ε 0 minus the mean over ε, what the attack takes away."
            if costs
            else ""
        ),
        "",
        *_table(
            ["group", "attack", *(f"ε {e:.3g}" for e in eps), "mean over ε", *cost_header], lines
        ),
        *each_policy(rows, "attack_mode", "Each policy (its mean over ε):", _mean_score),
        *(
            each_policy(
                rows,
                "attack_mode",
                "Each policy's cost (its ε 0 score − its mean over ε):",
                _attack_cost,
            )
            if costs
            else []
        ),
    ]
    return "\n".join(out) + "\n"
