"""What produced a run: its code, libraries and machine, one line per working session.

``<run>/sessions.jsonl`` gets a line each time ``train.py`` starts or resumes the run:

- ``started``: UTC time; ``argv``: the command line;
- ``code``: the package version, a SHA-256 over the package's source files (names and bytes,
  so it identifies the code in a git checkout, an archive copy or a wheel alike) and, in a git
  checkout, the commit and whether the package's files differ from it;
- ``libraries``: python, torch, numpy, mujoco, gymnasium;
- ``machine``: CPU model, GPU, torch's thread count.

A run is one computation only while its code stays the same, so resuming on code whose source
digest differs from the run's first session prints a note naming both.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from micro import __version__
from micro.run_dir import RunDir
from micro.utils import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "numpy", "mujoco", "gymnasium")


def source_digest(package: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the package's ``*.py`` files: each relative path, then its bytes."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def git_state(package: Path = PACKAGE_DIR) -> dict:
    """The commit of the checkout the package lives in, and whether its files differ from it;
    empty when the package is not the top of a git checkout (an archive copy, an install)."""
    root = package.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return {}
        dirty = bool(git("status", "--porcelain", "--", package.name))
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """This machine as run.json records the one a run is shipped from."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "gpu": gpu, "torch": torch.__version__, "micro": __version__}


def code_record() -> dict:
    return {"micro": __version__, "source_sha256": source_digest(), **git_state()}


def session_record(argv: list[str] | None = None) -> dict:
    import torch

    libraries = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(sys.argv if argv is None else argv),
        "code": code_record(),
        "libraries": libraries,
        "machine": {
            "cpu": cpu_model(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch_threads": torch.get_num_threads(),
        },
    }


def read_sessions(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).sessions_file
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_session(run_dir: Path, record: dict | None = None) -> str | None:
    """Append this session's line to ``run_dir/sessions.jsonl`` (rewritten whole, atomically);
    returns a note when the code differs from the run's first session's, or when a CPU session
    uses another number of torch threads than the session before (CPU products round
    differently with it)."""
    run_dir = Path(run_dir)
    record = session_record() if record is None else record
    earlier = read_sessions(run_dir)
    lines = [json.dumps(r) for r in [*earlier, record]]
    atomic_write_text(RunDir(run_dir).sessions_file, "\n".join(lines) + "\n")
    if not earlier:
        return None
    notes = []
    first, now = earlier[0]["code"], record["code"]
    if first["source_sha256"] != now["source_sha256"]:

        def name(code: dict) -> str:
            commit = (
                f"commit {code['git_commit'][:10]}" if code.get("git_commit") else "no git commit"
            )
            return f"source {code['source_sha256'][:12]} ({commit})"

        notes.append(
            f"note: {run_dir.name} started on other code, {name(first)}; it continues on "
            f"{name(now)}, so its numbers from here on may differ from an uninterrupted run's"
        )
    before, machine = earlier[-1].get("machine") or {}, record.get("machine") or {}
    threads = before.get("torch_threads"), machine.get("torch_threads")
    on_cpu = before.get("gpu") is None and machine.get("gpu") is None
    if on_cpu and None not in threads and threads[0] != threads[1]:
        notes.append(
            f"note: {run_dir.name}'s last session used {threads[0]} torch threads, this one "
            f"{threads[1]}: CPU products round differently, so from here on it is not bit for "
            "bit the uninterrupted run (set OMP_NUM_THREADS to match)"
        )
    return "\n".join(notes) or None
