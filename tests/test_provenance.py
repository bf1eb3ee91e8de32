"""sessions.jsonl: what code, libraries and machine each session of a run used."""

from __future__ import annotations

import hashlib
import json
import subprocess

from conftest import ROOT

from micro import __version__
from micro.provenance import (
    PACKAGE_DIR,
    git_state,
    read_sessions,
    record_session,
    source_digest,
)
from micro.run_dir import SESSIONS_FILE


def test_source_digest_is_the_sha256_of_names_and_bytes(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_bytes(b"x = 1\n")
    (pkg / "sub" / "b.py").write_bytes(b"y = 2\n")
    (pkg / "notes.txt").write_bytes(b"not code")
    expected = hashlib.sha256(b"a.py\0x = 1\n\0sub/b.py\0y = 2\n\0").hexdigest()
    assert source_digest(pkg) == expected
    (pkg / "notes.txt").write_bytes(b"changed")  # only Python files count
    assert source_digest(pkg) == expected
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")  # a rename is a change
    assert source_digest(pkg) != expected


def test_git_state_of_this_checkout_and_of_a_plain_folder(tmp_path):
    assert git_state(tmp_path / "pkg") == {}  # not a checkout (an archive copy, an install)
    if not (ROOT / ".git").exists():
        return
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "micro"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert git_state(PACKAGE_DIR) == {"git_commit": head, "git_dirty": bool(dirty)}


def session(digest: str, commit: str | None = None) -> dict:
    code = {"micro": "0", "source_sha256": digest} | ({"git_commit": commit} if commit else {})
    return {"started": "t", "argv": ["train.py"], "code": code, "libraries": {}, "machine": {}}


def test_each_session_appends_a_line_and_a_code_change_is_noted(tmp_path):
    assert record_session(tmp_path, session("a" * 64, "1234567890abcdef")) is None
    assert record_session(tmp_path, session("a" * 64)) is None  # same source, other checkout
    note = record_session(tmp_path, session("b" * 64))
    assert note == (
        f"note: {tmp_path.name} started on other code, source {'a' * 12} (commit 1234567890); "
        f"it continues on source {'b' * 12} (no git commit), so its numbers from here on may "
        "differ from an uninterrupted run's"
    )
    assert [s["code"]["source_sha256"][0] for s in read_sessions(tmp_path)] == ["a", "a", "b"]
    assert len((tmp_path / SESSIONS_FILE).read_text().splitlines()) == 3
    assert read_sessions(tmp_path / "elsewhere") == []


def test_another_thread_count_on_the_cpu_is_noted(tmp_path):
    def on(threads, gpu=None):
        return {**session("a" * 64), "machine": {"cpu": "x", "gpu": gpu, "torch_threads": threads}}

    assert record_session(tmp_path, on(2)) is None
    assert record_session(tmp_path, on(2)) is None
    note = record_session(tmp_path, on(1))
    assert note is not None and "used 2 torch threads, this one 1" in note
    assert record_session(tmp_path / "gpu", on(2, "H100")) is None
    assert record_session(tmp_path / "gpu", on(1, "H100")) is None  # GPU products: no note


def test_a_run_records_its_session(smoke_run):
    run_dir, _ = smoke_run
    (record,) = read_sessions(run_dir)
    assert record["argv"][0].endswith("train.py") and "--dataset" in record["argv"]
    assert record["code"]["micro"] == __version__
    assert record["code"]["source_sha256"] == source_digest()
    assert record["code"].get("git_commit") == git_state().get("git_commit")
    assert set(record["libraries"]) == {"python", "torch", "numpy", "mujoco", "gymnasium"}
    assert set(record["machine"]) == {"cpu", "gpu", "torch_threads"}
    assert record["machine"]["cpu"] and record["machine"]["torch_threads"] >= 1
    assert json.loads((run_dir / SESSIONS_FILE).read_text()) == record
