"""Small shared helpers: atomic file writes, safe loading, seeding, device choice."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import io
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from micro import MAX_SEED, MicroError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give: temp files start at 0600


# errors that mean the storage refused a write (full, over quota, read-only, denied, failing)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
WRITE_ERRNOS |= {errno.EIO, errno.EFBIG}


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def free_space(path: str | Path) -> str:
    """``12.3 MiB free there``: the free space of the filesystem holding ``path`` (or its
    nearest existing parent)."""
    for folder in (Path(path), *Path(path).parents):
        if folder.is_dir():
            with contextlib.suppress(OSError):
                return f"{human_bytes(shutil.disk_usage(folder).free)} free there"
            break
    return "free space unknown"


def is_write_error(exc: BaseException) -> bool:
    """An error from storage refusing a write (full, read-only, ...): an OSError of
    ``WRITE_ERRNOS``."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def write_error(path: str | Path | None, exc: BaseException) -> MicroError:
    """One line for a write that failed: what, where, why and how much space is free."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if path is None:
        return MicroError(f"a write failed: {reason} ({free_space('.')} in {Path.cwd()})")
    path = Path(path)
    return MicroError(f"cannot write {path}: {reason} ({free_space(path.parent)})")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``path`` is left as it was; an error of
    storage refusing the write (full disk, read-only) becomes one line (``write_error``).
    """
    path = Path(path)
    if path.is_dir():
        raise MicroError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in path.parents if p.exists() and not p.is_dir())
        raise MicroError(f"cannot write {path}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, _FILE_MODE)
            os.replace(tmp_path, path)
        except OSError as exc:
            if is_write_error(exc):
                with contextlib.suppress(OSError):
                    tmp_path.unlink(missing_ok=True)  # first, so that the free space is true
                raise write_error(path, exc) from None
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` into memory, then written atomically with plain writes: a full disk is
    then one clean error (torch's own writer reports it as an opaque iostream error)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def safe_torch_load(path: str | Path, what: str = "file", mmap: bool = False) -> dict[str, Any]:
    """Load a plain dict of tensors and primitives; never executes pickled objects. A file that
    is not one (damaged, truncated, another format, or holding objects to run) is refused in
    one line, without torch's advice to load it unsafely. ``mmap``: tensors are read only when
    used (to read a large file's counters)."""
    path = Path(path)
    if path.is_dir():
        raise MicroError(f"{what} {path} is a directory; pass the file")
    if not path.is_file():
        raise MicroError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights_only refused it: not plain tensors and primitives
        raise MicroError(
            f"cannot load {what} {path}: it is not a micro file of plain tensors (damaged, or "
            "made by other code)"
        ) from None
    except Exception as exc:  # torch raises several types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "zip archive" in first or isinstance(exc, KeyError | EOFError):
            first = "it is damaged or truncated, or not a torch file"
        raise MicroError(f"cannot load {what} {path}: {first}") from None
    if not isinstance(obj, dict):
        raise MicroError(f"cannot load {what} {path}: expected a dict, got {type(obj).__name__}")
    return obj


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over named tensors (names, dtypes, shapes, bytes), in name order: what a file
    records of its weights so that a flipped byte is found on load (torch does not check its
    zip's CRCs)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 256 << 20


@functools.cache  # once per process: find_library runs ldconfig
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks (up to 32 MB each, 256 MB in all) for reuse.

    PyTorch's CPU tensors come straight from malloc. By default glibc returns a freed block of a
    few MB to the kernel (mmap/trim), so the next step's identical tensor page-faults its memory
    in again: at SPEC's defaults that is a third of the uncertainty term's time on this project's
    2-core test machine. Process-wide; the CLIs call it once. Returns whether it took effect
    (False off glibc, where it does nothing).
    """
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel (one pass over all parameters, CPU since torch 2.4),
    else the multi-tensor one. Same update formula either way; ``params`` may be groups."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused unsupported for this torch/device
        return torch.optim.Adam(params, lr=lr, foreach=True)


# Seed streams. Every simulator episode is seeded; these offsets keep the streams apart, so no
# two purposes ever replay the same episodes. One place for all of them.
EVAL_SEED_OFFSET = 100_000  # training-time evaluation: episode i of a run seeds seed + this + i
ROBUSTNESS_SEED = 1000  # eval.py's default --seed (every grid cell replays the same episodes)
BEHAVIOR_EVAL_SEED_BASE = 10_000_000  # behavior SAC snapshots: this + step
BEHAVIOR_EXPORT_SEED = 20_000_000  # re-evaluation of behavior snapshots (export, pick)
EPISODE_SEED_STRIDE = 1_000_003  # collected datasets, behavior SAC: seed * this + episode


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``seed`` if it is one every RNG here accepts (numpy's legacy one refuses negatives)."""
    if not 0 <= seed <= MAX_SEED:
        raise MicroError(f"{flag} must be an integer from 0 to {MAX_SEED}, not {seed}")
    return seed


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MicroError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MicroError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise MicroError(
                f"device {name!r} requested but this machine has {count} CUDA device(s); "
                f"use cuda:0 to cuda:{count - 1}"
            )
        # the process's current device too: streams and CUDA graphs are made on the current one
        torch.cuda.set_device(device)
    return device


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when asked (``--no_progress``), else shown only where stderr is a
    terminal, so a log file or CI gets no carriage-return bars (the lines printed between them
    stay)."""
    return None if progress else True
