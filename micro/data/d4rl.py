"""D4RL-format HDF5 datasets: reading, validation, the ``qlearning_dataset`` rule, writing, and
download into D4RL's cache."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from micro import MicroError
from micro.data.minari_data import is_minari_dataset
from micro.data.types import TaskData, Transitions
from micro.envs import DATASET_KINDS, Task, d4rl_sim, robot_of
from micro.utils import atomic_path, sha256_file

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
DEFAULT_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"
BASE_URL_ENV = "MICRO_D4RL_BASE_URL"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def cache_dir() -> Path:
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets"))


def base_url() -> str:
    return os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    """``path`` open for reading; a missing, non-HDF5, truncated or damaged file (also one that
    lacks what the reader looks up) raises MicroError with one line."""
    check_hdf5_file(path)
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (OSError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MicroError(
            f"cannot read dataset {path}: a damaged or truncated HDF5 file ({first}); "
            "download or collect it again"
        ) from None


def read_hdf5(path: str | Path) -> dict[str, Any]:
    """Read a D4RL-format file into a dict of arrays (``infos/…`` and ``metadata/…`` flattened).

    Raises MicroError with one line for a missing, non-HDF5 or truncated file.
    """
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with _reading(Path(path)) as f:
        f.visititems(visit)
    return out


def check_hdf5_file(path: Path) -> None:
    """One line for a --dataset that is missing, a folder, or not HDF5 at all (HDF5 files
    start with its signature, at byte 0 or after a user block of 512·2^k bytes)."""
    if path.is_dir():
        raise MicroError(f"--dataset {path} is a folder; pass a D4RL-format .hdf5 file")
    if not path.is_file():
        raise MicroError(f"dataset file not found: {path}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            offsets = [0, *(512 << k for k in range(12))]
            found = False
            for at in offsets:
                fh.seek(at)
                if fh.read(8) == HDF5_SIGNATURE:
                    found = True
                    break
    except OSError as exc:
        raise MicroError(f"cannot read dataset {path} ({exc.strerror})") from None
    if not found:
        what = " (it is a torch file: a policy?)" if head.startswith(b"PK") else ""
        raise MicroError(f"{path} is not an HDF5 dataset{what}; pass a D4RL-format .hdf5 file")


def validate(raw: dict[str, Any], task: Task | None, source: str) -> None:
    """Check keys, lengths, dtypes, finiteness and, given a task, observation/action sizes."""
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise MicroError(
            f"dataset {source} lacks key(s) {', '.join(missing)}; a D4RL-format file needs "
            f"{', '.join(REQUIRED_KEYS)}"
        )
    n = len(raw["observations"])
    if n < 2:
        raise MicroError(f"dataset {source} has {n} step(s); it needs at least 2")
    keys = [*REQUIRED_KEYS] + (["next_observations"] if "next_observations" in raw else [])
    for key in keys:
        arr = np.asarray(raw[key])
        if len(arr) != n:
            raise MicroError(f"dataset {source}: {key} has {len(arr)} rows, observations has {n}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise MicroError(f"dataset {source}: {key} has non-numeric dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1)))[0, 0])
            raise MicroError(f"dataset {source}: {key} holds NaN or inf (first at row {bad})")
    for key in ("observations", "actions") + (
        ("next_observations",) if "next_observations" in raw else ()
    ):
        if np.asarray(raw[key]).ndim != 2:
            raise MicroError(f"dataset {source}: {key} must be 2-D [N, dim]")
    if task is not None:
        recorded = raw.get("metadata/env")  # datasets made here say where they were collected
        if isinstance(recorded, bytes):
            recorded = recorded.decode()
        robot = robot_of(recorded) if isinstance(recorded, str) else None
        if robot is not None and robot != task.env:
            # halfcheetah and walker2d share their sizes: the check below cannot tell them apart
            raise MicroError(
                f"dataset {source} was collected on {recorded} (metadata/env), but {task.name} "
                f"is a {task.env} task; pass a {robot} task"
            )
        obs_dim, act_dim = raw["observations"].shape[1], raw["actions"].shape[1]
        if (obs_dim, act_dim) != (task.obs_dim, task.act_dim):
            raise MicroError(
                f"dataset {source} has observation/action sizes {obs_dim}/{act_dim}, but "
                f"{task.name} needs {task.obs_dim}/{task.act_dim}: is it from another robot?"
            )


def qlearning_dataset(raw: dict[str, Any]) -> Transitions:
    """D4RL's ``qlearning_dataset`` rule.

    Walk i = 0..N-2. The next observation is ``next_observations[i]`` when the key exists, else
    ``observations[i+1]``. A step with ``timeouts[i]`` set is dropped (its successor starts a new
    episode); ``terminals[i]`` is the done flag; without ``next_observations``, a terminal step
    is dropped too (D4RL does this because ``observations[i+1]`` is then the next episode's).
    """
    obs = np.asarray(raw["observations"], dtype=np.float32)
    n = len(obs)
    idx = np.arange(n - 1)
    timeouts = np.asarray(raw["timeouts"]).astype(bool)[: n - 1]
    terminals = np.asarray(raw["terminals"]).astype(bool)[: n - 1]
    keep = ~timeouts
    if "next_observations" in raw:
        next_obs = np.asarray(raw["next_observations"], dtype=np.float32)[: n - 1]
    else:
        next_obs = obs[1:]
        keep &= ~terminals
    idx = idx[keep]
    return Transitions(
        observations=obs[idx],
        actions=np.asarray(raw["actions"], dtype=np.float32)[idx],
        next_observations=next_obs[keep],
        rewards=np.asarray(raw["rewards"], dtype=np.float32).reshape(n)[idx, None],
        terminals=terminals[keep].astype(np.float32)[:, None],
    )


def read_metadata(path: str | Path) -> tuple[dict[str, Any], int]:
    """A D4RL-format file's ``metadata/…`` scalars (strings decoded; none for D4RL's own files)
    and its number of rows, without reading the arrays."""
    with _reading(Path(path)) as f:
        rows = len(f["rewards"])
        group = f.get("metadata", {})
        meta = {k: group[k][()] for k in group}
    return {
        k: v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
        for k, v in meta.items()
    }, rows


def recorded_return(path: str | Path) -> float | None:
    """The behavior policy's mean episode return that a file made here records
    (``metadata/return_mean``); None for files without it (D4RL's own)."""
    with h5py.File(path, "r") as f:
        if "metadata/return_mean" not in f:
            return None
        return float(f["metadata/return_mean"][()])


def write_hdf5(path: str | Path, data: dict[str, Any]) -> None:
    """Write a dataset in D4RL's layout, atomically.

    ``data`` maps HDF5 paths to arrays (``"infos/qpos"``) or, under ``metadata/``, to scalars
    and strings. Nothing is left at ``path`` unless the whole file was written.
    """
    # Built in memory (HDF5's core driver: the same bytes as a file written in place), then
    # written with plain writes: a full disk is then one clean error, where HDF5 writing to
    # disk fails in a cascade of errors (and can crash the interpreter).
    f = h5py.File(f"{Path(path).name}.in-memory", "w", driver="core", backing_store=False)
    try:
        for key, value in data.items():
            if isinstance(value, str):
                f.create_dataset(key, data=value, dtype=h5py.string_dtype())
            elif np.ndim(value) == 0:
                f.create_dataset(key, data=value)
            else:
                f.create_dataset(key, data=np.asarray(value), compression="gzip")
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with atomic_path(path) as tmp:
        tmp.write_bytes(image)


def load_transitions(path: str | Path, task: Task | None) -> Transitions:
    raw = read_hdf5(path)
    validate(raw, task, str(path))
    return qlearning_dataset(raw)


def _check_keys(path: Path, source: str) -> None:
    """Open the file and check D4RL's required keys and their lengths, without reading data."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            lengths = {len(f[k]) for k in REQUIRED_KEYS if k in f}
    except OSError as exc:
        raise MicroError(f"{source} is not a readable HDF5 file ({exc})") from None
    if missing:
        raise MicroError(f"{source} lacks key(s) {', '.join(missing)}")
    if len(lengths) != 1:
        raise MicroError(f"{source} has keys of different lengths")


def _looks_like_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def download(url: str, dest: Path, timeout: float = 15.0) -> Path:
    """Download ``url`` to ``dest`` via a temporary file; keep it only if it is a whole,
    valid D4RL file. Raises MicroError (one line) otherwise, leaving nothing at ``dest``."""
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                expected = resp.headers.get("Content-Length")
                shutil.copyfileobj(resp, out, length=1 << 20)
        except urllib.error.HTTPError as exc:
            raise MicroError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MicroError(f"{type(exc).__name__}: {reason}") from None
        size = tmp.stat().st_size
        if expected is not None and size != int(expected):
            raise MicroError(f"download truncated ({size} of {expected} bytes)")
        if not _looks_like_hdf5(tmp):
            raise MicroError("the server did not send an HDF5 file (an HTML error page?)")
        _check_keys(tmp, url)
    return dest


def find_or_download(task: Task) -> Path:
    """The cached D4RL file for ``task``; downloads it when absent."""
    path = cache_dir() / task.d4rl_filename
    if path.is_file():
        return path
    url = f"{base_url()}/{task.d4rl_filename}"
    kind = task.kind if task.kind in DATASET_KINDS else "random"
    needs = "" if kind == "random" else " (behavior policies: see its --help)"
    try:
        return download(url, path)
    except MicroError as exc:
        raise MicroError(
            f"{task.name}: not in the D4RL cache ({path}) and the download from {url} failed "
            f"({exc}). Pass --dataset FILE.hdf5, set {BASE_URL_ENV} to a mirror, or make a local "
            f"dataset: python -m micro.datagen.collect --env {task.env} --kind {kind} "
            f"--out data/{task.env}-{kind}.hdf5{needs}"
        ) from None


def task_dataset_path(task: Task, dataset: str | None) -> Path:
    if dataset is not None:
        path = Path(dataset).expanduser()
        if is_minari_dataset(path):
            raise MicroError(
                f"{path} is a Minari dataset; pass its id as --task (e.g. mujoco/"
                f"{task.env}/{task.kind}-v0) so that it is evaluated on the environment it records"
            )
        check_hdf5_file(path)
        return path
    return find_or_download(task)


def load(path: Path, task: Task) -> TaskData:
    data = load_transitions(path, task)
    record = {
        "dataset_source": "d4rl",
        "dataset_file": str(path.resolve()),
        "dataset_sha256": sha256_file(path),
        "dataset_transitions": len(data),
    }
    behavior = recorded_return(path)
    if behavior is not None:
        record["dataset_return_mean"] = behavior
    return TaskData(data, d4rl_sim(task.env), record)
