"""The files of a behavior SAC run (``micro.datagen.behavior``), written and read here only:

- the behavior policy (snapshot ``snapshots/step_<N>.pt``, or a shipped ``data/behavior/*.pt``):
  the actor and its evaluated return, format ``micro-behavior-v1``;
- the replay log (``replay/<start>-<end>.npz`` chunks): every transition in order, with the
  simulator state, the source of medium-replay datasets;
- the run's settings (``settings.json``: robot, seed, schedule), which a resumed run must match;
- the carried state (``carry``: the learner, its optimizers and counters, and the evaluations so
  far, without the replay log; a few MB, format ``micro-behavior-carry-v1``): what a run needs to go
  on on a machine that lost its folder, from an empty buffer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from micro import MicroError
from micro.envs import normalized_score
from micro.nets import Actor
from micro.utils import atomic_path, atomic_torch_save, atomic_write_text, safe_torch_load

SNAPSHOT_FORMAT = "micro-behavior-v1"
CARRY_FORMAT = "micro-behavior-carry-v1"
SETTINGS_FILE = "settings.json"
REPLAY_KEYS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
    "action_log_probs",
    "qpos",
    "qvel",
)


def save_snapshot(
    path: Path,
    actor: Actor,
    env: str,
    hidden_dims: tuple[int, ...],
    seed: int,
    step: int,
    ret: np.ndarray,
    wall: float,
    carried_at: list[int] | None = None,
) -> None:
    """A behavior policy: the actor of a SAC run at ``step`` with its evaluated returns;
    ``carried_at``: the steps where its run went on from a carried state with an empty buffer."""
    went_on = {"carried_at": carried_at} if carried_at else {}
    atomic_torch_save(
        {
            "format": SNAPSHOT_FORMAT,
            "env": env,
            "obs_dim": actor.obs_dim,
            "act_dim": actor.act_dim,
            "hidden_dims": list(hidden_dims),
            "actor": {k: v.cpu() for k, v in actor.state_dict().items()},
            "step": step,
            "seed": seed,
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std()),
            "normalized_score": normalized_score(env, float(ret.mean())),
            "eval_episodes": len(ret),
            "wall_time_s": round(wall, 1),
            **went_on,
        },
        path,
    )


def load_snapshot(path: str | Path) -> tuple[Actor, dict]:
    """A behavior policy (snapshot or shipped file): its actor and metadata."""
    blob = safe_torch_load(path, "behavior policy")
    if blob.get("format") != SNAPSHOT_FORMAT:
        raise MicroError(f"{path} is not a micro behavior policy (format {blob.get('format')!r})")
    actor = Actor(blob["obs_dim"], blob["act_dim"], blob["hidden_dims"])
    actor.load_state_dict(blob["actor"])
    actor.eval()
    return actor, {k: v for k, v in blob.items() if k != "actor"}


def write_replay_chunk(
    folder: Path, start: int, end: int, arrays: dict[str, np.ndarray], first: int = 0
) -> None:
    """Steps ``start:end`` of the replay log as one chunk; row 0 of ``arrays`` is step ``first``."""
    path = folder / f"{start:09d}-{end:09d}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: v[start - first : end - first] for k, v in arrays.items()})


def read_replay(folder: Path, upto: int, first: int = 0) -> dict[str, np.ndarray]:
    """Transitions ``first:upto`` of a behavior run, in order. Rows are numbered by the run's
    step: a run carried to another machine (``carry``) logs from the step it went on at."""
    spans = sorted(
        (tuple(int(x) for x in chunk.stem.split("-")), chunk)
        for chunk in Path(folder).glob("*.npz")
    )
    if spans and spans[0][0][0] > first:
        raise MicroError(
            f"the replay log in {folder} starts at step {spans[0][0][0]}, not {first}: the run "
            "went on there from a carried state, and its earlier transitions are not in it"
        )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in REPLAY_KEYS}
    covered = first
    for (start, end), chunk in spans:
        if end <= first:
            continue
        if start >= upto:
            break
        if start > covered:
            raise MicroError(f"replay chunks in {folder} have a gap at row {covered}")
        with np.load(chunk) as z:
            for key in REPLAY_KEYS:
                parts[key].append(z[key][covered - start : min(end, upto) - start])
        covered = min(end, upto)
    if covered < upto:
        raise MicroError(f"{folder} holds {covered} transitions, {upto} were asked for")
    return {k: np.concatenate(v) for k, v in parts.items()}


def write_settings(run: Path, settings: dict) -> None:
    atomic_write_text(Path(run) / SETTINGS_FILE, json.dumps(settings, indent=2))


def read_settings(run: Path) -> dict | None:
    """A behavior run's settings, or None for a folder without them (not a run, or a new one)."""
    path = Path(run) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise MicroError(f"{path} is not readable JSON; is {run} a behavior run?") from None


def write_carry(path: Path, settings: dict, state: dict, evals: str) -> None:
    """A behavior run's carried state: its settings, its ``state.pt`` dict, and ``evals.csv``."""
    atomic_torch_save(
        {"format": CARRY_FORMAT, "settings": settings, "state": state, "evals": evals}, path
    )


def read_carry(path: Path) -> dict:
    blob = safe_torch_load(path, "carried behavior state")
    if blob.get("format") != CARRY_FORMAT:
        raise MicroError(
            f"{path} is not a carried behavior state (format {blob.get('format')!r}); make one "
            "with python -m micro.datagen.behavior carry RUN --to FILE"
        )
    return blob
