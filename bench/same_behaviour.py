"""Does a change keep what training computes? Tiny runs of every algorithm on this checkout and
on an earlier commit, compared file by file and tensor by tensor.

    python bench/same_behaviour.py REV            # e.g. HEAD~3, or a commit before a refactor
    python bench/same_behaviour.py REV --keep DIR # keep both trees' runs in DIR

Both trees train MICRO, MOBILE and MOPO (and two variants: max-Q backup with a fixed
temperature; deterministic backup at real_ratio 0.5) for 40 gradient steps on one 800-step
hopper dataset made in the simulator, on the CPU with one thread, plus 1500 steps of the
behavior SAC. Same means: byte-identical ``progress.csv`` and ``eval-episodes.csv``, equal
tensors in ``policy.pt`` and snapshots, and the same checkpoint tensors (compared as a multiset
of their shapes and sums, so that a renamed or regrouped checkpoint format still compares; the
observation std that v2 checkpoints add is left out). Exit 0 when all are the same.
Used for the restructuring of issue 28: against ff07cc3 every run was the same up to d741ab2;
from 40a866c on, MOPO's differ from ff07cc3's by design (its target is no longer clamped).
Issue 31 (populations) reseeds the learner after the dynamics stage, which changes runs that fit
their own dynamics: against d3677e8 with only that line added (``set_seed(cfg.seed)`` before the
learner is built in ``micro.pipeline._trainer``), every run here, RAMBO's included, was the same
at 65ffd97 and again at the issue's last commit.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
epoch: 2
step_per_epoch: 20
rollout_freq: 10
rollout_batch_size: 64
eval_episodes: 2
eval_freq: 1
dynamics_max_epochs: 3
hidden_dims: [32, 32]
dynamics_hidden_dims: [32, 32, 32, 32]
"""
RUNS = [
    ("micro", ["--seed", "3"]),
    ("mobile", ["--seed", "3"]),
    ("mopo", ["--seed", "3"]),
    ("micro", ["--seed", "4", "--max_q_backup", "--auto_alpha", "false", "--snapshot_freq", "1"]),
    ("mopo", ["--seed", "4", "--deterministic_backup", "--real_ratio", "0.5", "--epoch", "3"]),
    (
        "rambo",
        ["--seed", "3", "--dynamics_update_freq", "20", "--adv_steps", "10", "--bc_epochs", "1"],
    ),
]


def run_tree(code: Path, out: Path, data: Path, config: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    env["D4RL_DATASET_DIR"] = str(out / "no-cache")
    for i, (algo, extra) in enumerate(RUNS):
        cmd = [sys.executable, "train.py", "--no_progress", "--task", "hopper-medium-v2"]
        cmd += ["--dataset", str(data), "--config", str(config), "--device", "cpu"]
        cmd += ["--algo", algo, "--logdir", str(out / f"runs{i}"), *extra]
        subprocess.run(cmd, cwd=code, env=env, check=True, capture_output=True)
    behavior = [sys.executable, "-m", "micro.datagen.behavior", "--env", "hopper"]
    behavior += ["--steps", "1500", "--start_steps", "500", "--snapshot_every", "500"]
    behavior += ["--save_every", "500", "--eval_episodes", "1", "--threads", "1"]
    behavior += ["--no_progress", "--out", str(out / "behavior")]
    subprocess.run(behavior, cwd=code, env=env, check=True, capture_output=True)


def tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


def load(path: Path):
    return torch.load(path, weights_only=True)


def same_tensors(a: Path, b: Path) -> list[str]:
    ta, tb = dict(tensors(load(a))), dict(tensors(load(b)))
    if ta.keys() != tb.keys():
        return [f"{a.name}: keys {sorted(set(ta) ^ set(tb))}"]
    return [f"{a.name}{k}" for k in ta if not torch.equal(ta[k], tb[k])]


def checkpoint_signature(path: Path) -> list:
    blob = torch.load(path, weights_only=False)  # our own file; v1 and v2 alike
    kept = {k: v for k, v in blob.items() if k not in ("rng", "obs_std")}
    return sorted(
        (tuple(t.shape), str(t.dtype), t.double().sum().item(), t.double().abs().sum().item())
        for _, t in tensors(kept)
        if t.numel()
    )


def compare_run(a: Path, b: Path) -> list[str]:
    bad = [n for n in ("progress.csv", "eval-episodes.csv") if not filecmp.cmp(a / n, b / n, False)]
    for f in ["policy.pt", *(p.relative_to(a) for p in sorted(a.glob("snapshots/*.pt")))]:
        bad += same_tensors(a / f, b / f)
    last = Path("checkpoints/last.pt")
    if checkpoint_signature(a / last) != checkpoint_signature(b / last):
        bad.append("checkpoint tensors")
    return bad


def compare(new: Path, old: Path) -> bool:
    ok = True
    for i, (algo, extra) in enumerate(RUNS):
        (a,) = (new / f"runs{i}").glob("*/*/*")
        (b,) = (old / f"runs{i}").glob("*/*/*")
        bad = compare_run(a, b)
        print(("same " if not bad else "DIFFERENT ") + f"{algo} {' '.join(extra)}", *bad[:6])
        ok &= not bad
    bad = []
    for snap in sorted((old / "behavior" / "snapshots").glob("*.pt")):
        a, b = load(new / "behavior" / "snapshots" / snap.name), load(snap)
        bad += [
            f"{snap.name}/{k}" for k in b["actor"] if not torch.equal(a["actor"][k], b["actor"][k])
        ]
    print(("same " if not bad else "DIFFERENT ") + "behavior SAC snapshots", *bad[:6])
    return ok and not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev", help="the earlier commit to compare with")
    parser.add_argument("--keep", help="keep both trees' runs in this folder")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="same-behaviour-"))
    try:
        old_code = work / "old-code"
        old_code.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", args.rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "x", "-C", str(old_code)], input=archive, check=True)
        data, config = work / "hopper-tiny.hdf5", work / "tiny.yaml"
        config.write_text(TINY)
        collect = ["micro.datagen.collect", "--env", "hopper", "--kind", "random", "--steps", "800"]
        subprocess.run(
            [sys.executable, "-m", *collect, "--out", str(data), "--no_progress"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        run_tree(ROOT, work / "new", data, config)
        run_tree(old_code, work / "old", data, config)
        return 0 if compare(work / "new", work / "old") else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
