"""Minari datasets: find them (the local store, else a download through ``minari``), read them
into transitions with the simulator they were collected on, and write them.

A Minari dataset is a folder ``<store>/<dataset id>/data/`` holding ``metadata.json`` and the
episodes (``main_data.hdf5``). The store is ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``.
Each episode keeps T+1 observations, so step t is the transition
(observations[t], actions[t], rewards[t], observations[t+1], done = terminations[t]); a truncated
last step is an ordinary transition with done = 0, and nothing is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from micro import MicroError
from micro.data.types import TaskData, Transitions
from micro.envs import ENV_IDS, REF_RETURNS, SimSpec, Task, robot_of
from micro.utils import sha256_file

STORE_ENV = "MINARI_DATASETS_PATH"
TIMEOUT_ENV = "MICRO_MINARI_TIMEOUT"  # seconds the remote gets to answer (default 60)
DEFAULT_TIMEOUT = 60.0
# Constructor arguments that change what the model-rollout termination functions or the
# observation layout assume; a dataset recorded with any of them is refused.
UNSUPPORTED_KWARGS = (
    "healthy_reward",
    "terminate_when_unhealthy",
    "healthy_state_range",
    "healthy_z_range",
    "healthy_angle_range",
    "exclude_current_positions_from_observation",
    "reset_noise_scale",
)


def store() -> Path:
    """The local Minari store, by minari's own rule."""
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def local_path(dataset_id: str) -> Path:
    return store() / dataset_id


def is_minari_dataset(path: Path) -> bool:
    return (path / "data" / "metadata.json").is_file() or (
        path.name == "data" and (path / "metadata.json").is_file()
    )


# --- finding and downloading ---------------------------------------------------------------------


def _remote() -> str:
    from minari.storage.remotes import DEFAULT_REMOTE

    return os.environ.get("MINARI_REMOTE", DEFAULT_REMOTE)


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, with its root cause's when it has one (the
    connection error behind a hub error)."""

    def line(e: BaseException) -> str:
        text = str(e).strip().splitlines()
        first = text[0] if text else ""
        first = first if len(first) <= 120 else first[:117] + "..."
        return f"{type(e).__name__}: {first}" if first else type(e).__name__

    root = exc
    for _ in range(20):  # the chain's end (bounded: a chain could loop)
        nxt = root.__cause__ or root.__context__
        if nxt is None or nxt is root:
            break
        root = nxt
    return line(exc) if root is exc else f"{line(exc)} <- {line(root)}"


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hide huggingface_hub's retry warnings: the failure is reported once, by us."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _with_deadline(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread; a remote that does not answer in ``seconds`` is an error
    (the thread is abandoned, and dies with the process)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name="minari-remote")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise MicroError(f"no answer from {what} in {seconds:.0f}s")
    if "error" in box:
        raise MicroError(_one_line(box["error"]))
    return box.get("value")


def download(dataset_id: str) -> Path:
    """Download ``dataset_id`` into the local store through minari. The remote must answer a
    request for the dataset's metadata within ``$MICRO_MINARI_TIMEOUT`` seconds (60) before the
    download starts; a failed download leaves no partial dataset behind."""
    import minari
    from minari.storage.remotes import get_cloud_storage

    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    remote = _remote()
    path = local_path(dataset_id)
    existed = path.exists()
    try:
        storage = get_cloud_storage()  # imports the remote's client (no network yet)
    except Exception as exc:
        raise MicroError(f"cannot use the remote {remote}: {_one_line(exc)}") from None
    with _quiet_hub():
        _with_deadline(lambda: storage.get_dataset_metadata(dataset_id), timeout, remote)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.download_dataset(dataset_id)
    except Exception as exc:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        raise MicroError(_one_line(exc)) from None
    if not is_minari_dataset(path):
        raise MicroError(f"the download finished but {path / 'data'} holds no dataset")
    return path


def find_or_download(task: Task) -> Path:
    """The local folder of Minari dataset ``task.name``; downloads it when absent."""
    path = local_path(task.name)
    if is_minari_dataset(path):
        return path
    try:
        return download(task.name)
    except MicroError as exc:
        raise MicroError(
            f"{task.name}: not in the local Minari store ({path}) and the download from "
            f"{_remote()} failed ({exc}). Pass --dataset DIR (a Minari dataset folder), point "
            f"{STORE_ENV} at a store that has it, set MINARI_REMOTE or HF_ENDPOINT to a mirror, "
            f"or run `minari download {task.name}` on a connected machine and copy the folder "
            f"to {path}"
        ) from None


def task_dataset_path(task: Task, dataset: str | None) -> Path:
    """The dataset folder of a Minari task: ``--dataset`` when given, else the store's."""
    if dataset is None:
        return find_or_download(task)
    path = Path(dataset).expanduser()
    if path.is_file() and path.parent.name == "data":  # .../data/main_data.hdf5
        path = path.parent.parent
    if path.name == "data" and (path / "metadata.json").is_file():
        path = path.parent
    if not is_minari_dataset(path):
        raise MicroError(
            f"{path} is not a Minari dataset folder (no data/metadata.json); a Minari task "
            "needs the folder that holds data/"
        )
    return path


# --- reading -------------------------------------------------------------------------------------


def content_sha256(path: Path) -> str:
    """One hash over every file under ``path/data`` (names and contents), in name order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in (path / "data").rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _env_spec(metadata: dict, key: str) -> dict | None:
    text = metadata.get(key)
    if not text:
        return None
    try:
        spec = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
    return spec if isinstance(spec, dict) and "id" in spec else None


def sim_of(metadata: dict, source: str) -> SimSpec:
    """The simulator to evaluate on (the dataset's evaluation env, else the one it was collected
    on) and the score references (the dataset's own, else D4RL's for the robot)."""
    spec = _env_spec(metadata, "eval_env_spec") or _env_spec(metadata, "env_spec")
    if spec is None:
        raise MicroError(
            f"Minari dataset {source} records no environment; micro needs one of "
            f"{', '.join(ENV_IDS.values())} (or their -v5)"
        )
    env_id = spec["id"]
    robot = robot_of(env_id)
    if robot is None:
        raise MicroError(
            f"Minari dataset {source} was collected on {env_id}, not on one of micro's robots "
            "(Hopper, HalfCheetah, Walker2d)"
        )
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items() if k != "render_mode"}
    bad = sorted(set(kwargs) & set(UNSUPPORTED_KWARGS))
    if bad:
        raise MicroError(
            f"Minari dataset {source} sets {', '.join(bad)} on {env_id}; micro's model-rollout "
            "termination assumes the defaults"
        )
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is not None and high is not None and float(high) != float(low):
        refs = (float(low), float(high), f"dataset {metadata.get('dataset_id', source)}")
    else:
        refs = (*REF_RETURNS[robot], "D4RL")
    return SimSpec(
        robot=robot,
        env_id=env_id,
        ref_min=refs[0],
        ref_max=refs[1],
        ref_source=refs[2],
        kwargs=json.dumps(kwargs, sort_keys=True),
        max_episode_steps=int(spec.get("max_episode_steps") or 1000),
    )


def _open(path: Path):
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return minari.MinariDataset(path / "data")
        except Exception as exc:
            raise MicroError(
                f"cannot read Minari dataset {path} ({_one_line(exc)}); delete the folder and "
                "download or make it again"
            ) from None


def episode_transitions(episodes: Iterable, obs_dim: int, act_dim: int, source: str):
    """Transitions from episodes with T+1 observations (see the module's docstring)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("o", "a", "r", "o2", "d")}
    for i, ep in enumerate(episodes):
        obs, act = np.asarray(ep.observations), np.asarray(ep.actions)
        rew, term = np.asarray(ep.rewards), np.asarray(ep.terminations)
        t = len(act)
        if obs.ndim != 2 or obs.shape[1] != obs_dim or act.ndim != 2 or act.shape[1] != act_dim:
            raise MicroError(
                f"Minari dataset {source}: episode {i} has observations {obs.shape} and actions "
                f"{act.shape}, but the robot needs sizes {obs_dim}/{act_dim}"
            )
        if len(obs) != t + 1 or len(rew) != t or len(term) != t:
            raise MicroError(
                f"Minari dataset {source}: episode {i} has {len(obs)} observations for {t} "
                "actions (a Minari episode stores T+1)"
            )
        for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
            if not np.isfinite(arr).all():
                raise MicroError(f"Minari dataset {source}: episode {i} {name} hold NaN or inf")
        parts["o"].append(obs[:-1])
        parts["o2"].append(obs[1:])
        parts["a"].append(act)
        parts["r"].append(rew)
        parts["d"].append(term)
    if not parts["a"] or sum(map(len, parts["a"])) < 2:
        raise MicroError(f"Minari dataset {source} has fewer than 2 steps")

    def cat(key: str) -> np.ndarray:
        return np.concatenate(parts[key]).astype(np.float32)

    return Transitions(
        observations=cat("o"),
        actions=cat("a"),
        next_observations=cat("o2"),
        rewards=cat("r")[:, None],
        terminals=cat("d")[:, None],
    )


def load(path: Path, task: Task) -> TaskData:
    """Read the Minari dataset in folder ``path`` for ``task``."""
    dataset = _open(path)
    metadata = dataset.storage.metadata
    source = str(metadata.get("dataset_id", path))
    sim = sim_of(metadata, source)
    if task.env is not None and task.env != sim.robot:
        raise MicroError(
            f"{task.name} names the {task.env} robot, but dataset {source} was collected on "
            f"{sim.env_id}"
        )
    returns: list[float] = []  # each episode's, tallied on the one pass over the episodes

    def tally(episodes: Iterable) -> Iterator:
        for ep in episodes:
            returns.append(float(np.sum(ep.rewards)))
            yield ep

    try:
        data = episode_transitions(
            tally(dataset.iterate_episodes()), sim.obs_dim, sim.act_dim, source
        )
    except (OSError, KeyError, ValueError) as exc:
        raise MicroError(
            f"cannot read Minari dataset {path} ({_one_line(exc)}); delete the folder and "
            "download or make it again"
        ) from None
    record = {
        "dataset_source": "minari",
        "dataset_id": source,
        "minari_version": str(metadata.get("minari_version")),
        "dataset_file": str(path.resolve()),
        "dataset_sha256": content_sha256(path),
        "dataset_transitions": len(data),
        "dataset_episodes": int(dataset.total_episodes),
    }
    if returns:
        record["dataset_return_mean"] = float(np.mean(returns))
    return TaskData(data, sim, record)


def mean_episode_return(path: Path) -> float | None:
    """The mean return of a Minari dataset's episodes (its data's own score), or None."""
    try:
        returns = [float(np.sum(ep.rewards)) for ep in _open(path).iterate_episodes()]
    except (MicroError, OSError, KeyError, ValueError):
        return None
    return float(np.mean(returns)) if returns else None


# --- writing -------------------------------------------------------------------------------------


def split_episodes(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Episodes (T+1 observations each) from contiguous D4RL-layout rows whose episodes end on a
    terminal or a timeout (``micro.datagen.collect``'s layout)."""
    ends = np.flatnonzero(np.asarray(arrays["terminals"]) | np.asarray(arrays["timeouts"]))
    out, start = [], 0
    for end in ends:
        sl = slice(start, end + 1)
        out.append(
            {
                "observations": np.concatenate(
                    [arrays["observations"][sl], arrays["next_observations"][end : end + 1]]
                ),
                "actions": arrays["actions"][sl],
                "rewards": arrays["rewards"][sl],
                "terminations": np.asarray(arrays["terminals"][sl], dtype=bool),
                "truncations": np.asarray(arrays["timeouts"][sl], dtype=bool),
            }
        )
        start = end + 1
    return out


def write(
    dataset_id: str,
    episodes: list[dict[str, np.ndarray]],
    sim: SimSpec,
    description: str,
    algorithm_name: str,
) -> Path:
    """Write a Minari dataset with minari's own API (``create_dataset_from_buffers``) into the
    store. A failure leaves nothing behind."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from micro import __version__

    path = local_path(dataset_id)
    if path.exists():
        raise MicroError(
            f"Minari dataset {dataset_id} exists at {path}; choose another --dataset_id "
            "(bump its -vN) or delete that folder"
        )
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminations"],
            truncations=ep["truncations"],
        )
        for i, ep in enumerate(episodes)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari warns about every unset optional field
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=sim.make(),  # made here: MuJoCo's warnings handled as everywhere
                algorithm_name=algorithm_name,
                author=f"micro {__version__}",
                description=description,
            )
    except Exception as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
        raise MicroError(f"cannot write Minari dataset {dataset_id}: {_one_line(exc)}") from None
    return path
