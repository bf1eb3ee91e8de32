"""The published MICRO trainer's log (github.com/xiaoyinliu0714/MICRO, whose Logger is
OfflineRL-Kit's), read into this project's run format, so that ``report.py``, the results table
and the overview draw it beside our runs (``python -m micro.results import-published``).

A run of ``bench/published_micro.py --out OUT`` leaves

- ``OUT/sessions.json``: each session's arguments, epochs, wall seconds (dynamics fit and epoch
  loop apart), CPU, threads and device;
- ``OUT/log/<task>/micro&…/seed_<N>&timestamp_…/record/hyper_param.json``: the published config
  the run used (one JSON object per session);
- ``…/record/policy_training_progress.csv``: one row per 10 epochs (the trainer evaluates only
  then), whose losses, temperature, penalty and rollout reward are means over the 10 epochs'
  steps, and whose evaluation is 10 deterministic episodes on one simulator.

What the conversion changes, and why:

- ``timestep`` becomes ``step``, and ``epoch`` = step / step_per_epoch.
- ``eval/normalized_episode_reward_std`` is the published code's
  ``get_normalized_score(std) * 100``, which subtracts the reference minimum from a spread;
  ``eval_normalized_score_std`` is the spread normalized (100 · std / (max − min)), recovered
  exactly from it. ``eval_return`` is the mean return the normalized mean stands for.
- ``penalty`` is the mean of U over the whole batch with the real rows' set to 0; ours,
  ``uncertainty``, is the mean over the model rows, so it is scaled by
  batch / (batch − real rows).
- Losses and the rest keep their values under our names (``loss/critic`` → ``critic_loss``, …).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from micro import MicroError
from micro.envs import d4rl_sim, parse_task

SESSIONS_FILE = "sessions.json"  # bench/published_micro.py's record of its sessions
RECORD = "record"
PROGRESS = "policy_training_progress.csv"
HYPER = "hyper_param.json"
EVAL_EVERY = 10  # the published trainer evaluates every 10th epoch
RENAMED = {
    "loss/critic": "critic_loss",
    "loss/actor": "actor_loss",
    "loss/alpha": "alpha_loss",
    "alpha": "alpha",
    "rollout_info/reward_mean": "rollout_reward_mean",
}


def find_log(out: Path) -> Path:
    """The published Logger's run folder under ``out`` (exactly one)."""
    found = sorted(p.parent for p in out.glob(f"log/*/*/*/{RECORD}/{HYPER}"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise MicroError(
            f"{out}: {what} published run folders (log/<task>/<algo>/seed_…/{RECORD}/{HYPER}); "
            "give the --out folder of one bench/published_micro.py run"
        )
    return found[0].parent


def read_published(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """The run's published config, its log rows (as written) and its sessions."""
    log = find_log(out)
    lines = [x for x in (log / RECORD / HYPER).read_text().splitlines() if x.strip()]
    hyper = json.loads(lines[0])  # one object per session, all the same config
    progress = log / RECORD / PROGRESS
    if not progress.is_file():
        raise MicroError(f"{progress} is missing: the run has not reached its first evaluation")
    with open(progress, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise MicroError(f"{progress} has no rows: the run has not reached its first evaluation")
    sessions_file = out / SESSIONS_FILE
    sessions = json.loads(sessions_file.read_text()) if sessions_file.is_file() else []
    return hyper, rows, sessions


def convert_rows(rows: list[dict], hyper: dict) -> list[dict]:
    """``rows`` of the published log as rows of our ``progress.csv`` (see the module doc)."""
    sim = d4rl_sim(parse_task(hyper["task"]).env)
    span = sim.ref_max - sim.ref_min
    batch = int(hyper["batch_size"])
    model_share = batch / (batch - int(batch * float(hyper["real_ratio"])))
    out = []
    for r in rows:
        step = int(float(r["timestep"]))
        norm = float(r["eval/normalized_episode_reward"])
        norm_std = float(r["eval/normalized_episode_reward_std"])
        row = {
            "epoch": step // int(hyper["step_per_epoch"]),
            "step": step,
            **{ours: r[theirs] for theirs, ours in RENAMED.items() if r.get(theirs, "") != ""},
        }
        if r.get("penalty", "") != "":
            row["uncertainty"] = float(r["penalty"]) * model_share
        row |= {
            "eval_return": norm / 100 * span + sim.ref_min,
            "eval_normalized_score": norm,
            # published: 100 (std - min) / span; the spread's own: 100 std / span
            "eval_normalized_score_std": norm_std + 100 * sim.ref_min / span,
        }
        out.append(row)
    return out
