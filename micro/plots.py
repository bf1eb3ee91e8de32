"""Figures for robustness results (matplotlib, written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from micro.utils import atomic_path


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def sim2real_heatmap(rows: list[dict], path: Path, title: str) -> None:
    """Friction × gravity heatmap of the normalized mean, one panel per mass scale."""
    masses = sorted({r["mass"] for r in rows})
    frictions = sorted({r["friction"] for r in rows})
    gravities = sorted({r["gravity"] for r in rows})
    fig, axes = plt.subplots(
        1,
        len(masses),
        figsize=(1.0 + 0.75 * len(gravities) * len(masses), 0.6 * len(frictions) + 1.5),
        squeeze=False,
    )
    values = {(r["mass"], r["friction"], r["gravity"]): r["normalized_mean"] for r in rows}
    vmax = max(100.0, max(values.values()))
    for ax, mass in zip(axes[0], masses, strict=True):
        grid = np.array([[values[(mass, f, g)] for g in gravities] for f in frictions])
        im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for i in range(len(frictions)):
            for j in range(len(gravities)):
                color = "white" if grid[i, j] < 0.6 * vmax else "black"
                ax.text(
                    j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color
                )
        ax.set_xticks(range(len(gravities)), [f"{g:g}" for g in gravities], rotation=45)
        ax.set_yticks(range(len(frictions)), [f"{f:g}" for f in frictions])
        ax.set_xlabel("gravity scale")
        ax.set_ylabel("friction scale")
        ax.set_title(title if len(masses) == 1 else f"{title}\nmass × {mass:g}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="normalized return")
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
    ax.set_ylabel("normalized return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
