"""Figures for robustness results (matplotlib, written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from micro.robustness_summary import group_cells
from micro.utils import atomic_path


def step_label(steps: float, _pos=None) -> str:
    """A gradient-step tick: 50k, 1.5M (full numbers run into each other on a narrow axis)."""
    if abs(steps) >= 1e6:
        return f"{steps / 1e6:g}M"
    return f"{steps / 1e3:g}k" if steps else "0"


def _steps_axis(ax) -> None:
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(step_label))
    ax.set_xlabel("gradient steps")


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _cell_text(value: float) -> str:
    """A cell's score to the unit, never "-0"."""
    return f"{round(value) + 0:d}"


def _heatmap(ax, grid: np.ndarray, frictions, gravities, scale: tuple[float, float], fontsize):
    """One friction × gravity panel with each cell's value written in it; colours span
    ``scale`` (the data's range, so that a best cell of 57 is not washed out by a 0–100
    scale)."""
    vmin, vmax = scale
    im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(len(frictions)):
        for j in range(len(gravities)):
            dark = grid[i, j] < vmin + 0.6 * (vmax - vmin)
            ax.text(
                j,
                i,
                _cell_text(grid[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(len(gravities)), [f"{g:.2g}" for g in gravities], rotation=60)
    ax.set_yticks(range(len(frictions)), [f"{f:.3g}" for f in frictions])
    ax.set_xlabel("gravity scale")
    return im


def _scale(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    return (low, high) if high > low else (low - 1.0, high + 1.0)


def sim2real_heatmap(rows: list[dict], path: Path, title: str) -> None:
    """Friction × gravity heatmap of the normalized mean, one panel per mass scale."""
    masses = sorted({r["mass"] for r in rows})
    frictions = sorted({r["friction"] for r in rows})
    gravities = sorted({r["gravity"] for r in rows})
    fig, axes = plt.subplots(
        1,
        len(masses),
        figsize=(1.5 + 0.9 * len(gravities) * len(masses), 0.65 * len(frictions) + 1.6),
        squeeze=False,
    )
    values = {(r["mass"], r["friction"], r["gravity"]): r["normalized_mean"] for r in rows}
    scale = _scale(list(values.values()))
    for ax, mass in zip(axes[0], masses, strict=True):
        grid = np.array([[values[(mass, f, g)] for g in gravities] for f in frictions])
        im = _heatmap(ax, grid, frictions, gravities, scale, fontsize=8)
        ax.set_ylabel("friction scale")
        ax.set_title(title if len(masses) == 1 else f"{title}\nmass × {mass:g}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="normalized score")
    _save(fig, path)


def attack_curves(rows: list[dict], path: Path, title: str) -> None:
    """Normalized return (mean ± std over episodes) against the budget ε, one line per attack."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    low, high = 0.0, 100.0  # the normalized scale, so small differences are not blown up
    for mode in dict.fromkeys(r["attack_mode"] for r in rows):
        part = sorted((r for r in rows if r["attack_mode"] == mode), key=lambda r: r["eps"])
        eps = np.array([r["eps"] for r in part])
        mean = np.array([r["normalized_mean"] for r in part])
        std = np.array([r["normalized_std"] for r in part])
        ax.plot(eps, mean, marker="o", markersize=3, label=mode)
        ax.fill_between(eps, mean - std, mean + std, alpha=0.2)
        low, high = min(low, (mean - std).min()), max(high, (mean + std).max())
    ax.set_ylim(low - 0.02 * (high - low), high + 0.02 * (high - low))
    ax.set_xlabel("attack budget ε (× observation std)")
    ax.set_ylabel("normalized score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="band: ±1 std over episodes", title_fontsize=8)
    _save(fig, path)


def attack_comparison(rows: list[dict], path: Path, title: str) -> None:
    """One panel per attack mode; in each, normalized return against ε, one line per group
    (a policy, or an algorithm's mean ± std over seeds)."""
    modes = list(dict.fromkeys(r["attack_mode"] for r in rows))
    groups = group_cells(rows, ("attack_mode", "eps"))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.6), squeeze=False)
    low, high = 0.0, 100.0
    for ax, mode in zip(axes[0], modes, strict=True):
        for group, cells in groups.items():
            eps = np.array(sorted(e for m, e in cells if m == mode))
            mean = np.array([cells[(mode, e)][0] for e in eps])
            spread = np.array([cells[(mode, e)][1] for e in eps])
            ax.plot(eps, mean, marker="o", markersize=3, label=group)
            ax.fill_between(eps, mean - spread, mean + spread, alpha=0.2)
            low, high = min(low, (mean - spread).min()), max(high, (mean + spread).max())
        ax.set_title(mode, fontsize=10)
        ax.set_xlabel("attack budget ε (× observation std)")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.set_ylim(low - 0.02 * (high - low), high + 0.02 * (high - low))
    axes[0][0].set_ylabel("normalized score")
    several = any(len({r["label"] for r in rows if r["group"] == g}) > 1 for g in groups)
    band = "±1 std over seeds" if several else "±1 std over episodes"
    axes[0][-1].legend(fontsize=8, title=f"band: {band}", title_fontsize=8)
    # above the panel titles, a fixed 0.35 inch up whatever the height (saved with a tight box)
    fig.suptitle(title, fontsize=11, y=1 + 0.35 / fig.get_figheight())
    _save(fig, path)


def sim2real_comparison(rows: list[dict], path: Path, title: str) -> None:
    """Friction × gravity heatmaps side by side, one column per group and one row per mass
    scale, all on one colour scale."""
    groups = group_cells(rows, ("mass", "friction", "gravity"))
    masses = sorted({r["mass"] for r in rows})
    frictions = sorted({r["friction"] for r in rows})
    gravities = sorted({r["gravity"] for r in rows})
    scale = _scale([v[0] for cells in groups.values() for v in cells.values()])
    fig, axes = plt.subplots(
        len(masses),
        len(groups),
        figsize=(
            1.5 + 0.9 * len(gravities) * len(groups),
            (0.55 * len(frictions) + 1.2) * len(masses),
        ),
        squeeze=False,
    )
    for col, (group, cells) in enumerate(groups.items()):
        for row, mass in enumerate(masses):
            ax = axes[row][col]
            grid = np.array([[cells[(mass, f, g)][0] for g in gravities] for f in frictions])
            im = _heatmap(ax, grid, frictions, gravities, scale, fontsize=7)
            if col == 0:
                ax.set_ylabel("friction scale")
            ax.set_title(group if len(masses) == 1 else f"{group}, mass × {mass:g}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="normalized score")
    # above the panel titles, a fixed 0.35 inch up whatever the height (saved with a tight box)
    fig.suptitle(title, fontsize=11, y=1 + 0.35 / fig.get_figheight())
    _save(fig, path)


def score_curves(
    series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    reference: tuple[str, float] | None = None,
    seeds: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> None:
    """Normalized score against gradient steps, one line per series (steps, mean, std over
    seeds) with a ±1 std band; ``seeds`` (label → each run's steps and scores) are drawn thin
    in the series' colour; ``reference`` (label, score) is drawn as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for i, (label, (steps, mean, std)) in enumerate(series.items()):
        ax.plot(steps, mean, label=label, color=f"C{i}")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=f"C{i}")
        for run_steps, scores in (seeds or {}).get(label, []):
            ax.plot(run_steps, scores, color=f"C{i}", linewidth=0.6, alpha=0.45)
    if reference is not None:
        ax.axhline(reference[1], color="gray", linestyle="--", linewidth=1, label=reference[0])
    _steps_axis(ax)
    ax.set_ylabel("normalized score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="band: ±1 std over seeds", title_fontsize=8)
    _save(fig, path)


def diagnostic_curves(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    path: Path,
    title: str,
) -> None:
    """One panel per quantity (title → {label: (steps, mean, std)}), side by side, sharing the
    step axis and the line colours of ``score_curves`` (labels in the same order)."""
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, (steps, mean, std) in series.items():
            color = f"C{labels.index(label)}"
            ax.plot(steps, mean, label=label, color=color)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color)
        ax.set_title(name, fontsize=9)
        _steps_axis(ax)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10, y=1 + 0.3 / fig.get_figheight())
    _save(fig, path)
