"""``python -m micro.datagen.behavior``: parse, then train a behavior SAC, pick a snapshot or
export one (``micro.datagen.behavior``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from micro import MicroError
from micro.cli import OneLineParser, guarded
from micro.datagen.behavior import (
    BehaviorSettings,
    carry_behavior,
    export_policy,
    pick_snapshots,
    train_behavior,
)
from micro.datagen.behavior import __doc__ as BEHAVIOR_DOC
from micro.envs import ENV_IDS
from micro.utils import check_seed


def pick_main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="python -m micro.datagen.behavior pick",
        description="Find the snapshot nearest a normalized score (e.g. D4RL's medium level).",
    )
    parser.add_argument("run", help="a behavior run folder")
    parser.add_argument("--target", type=float, required=True, help="normalized score")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        picked = pick_snapshots(Path(a.run), a.target, a.candidates, a.episodes)
        width = max(len(p["snapshot"]) for p in picked)
        print(f"{'snapshot':{width}s} {'logged':>7s} {'re-evaluated':>15s} {'return':>15s}")
        for p in picked:
            print(
                f"{p['snapshot']:{width}s} {p['logged']:7.1f} "
                f"{p['normalized']:7.1f} ± {p['normalized_std']:5.1f} "
                f"{p['return_mean']:7.0f} ± {p['return_std']:5.0f}"
            )
        print(f"nearest {a.target}: {picked[0]['snapshot']}")
        return 0

    return guarded(run, argv)


def export_main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="python -m micro.datagen.behavior export",
        description="Turn a snapshot into a shipped behavior policy.",
    )
    parser.add_argument("snapshot", help="RUN/snapshots/step_N.pt")
    parser.add_argument(
        "--to", required=True, help="policy file to write, e.g. data/behavior/hopper-medium.pt"
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        meta = export_policy(Path(a.snapshot), Path(a.to), a.episodes, a.force)
        print(
            f"wrote {a.to}: {meta['env']} step {meta['step']}, return {meta['return_mean']:.1f} "
            f"± {meta['return_std']:.1f}, normalized {meta['normalized_score']:.1f} "
            f"± {meta['normalized_score_std']:.1f} over {a.episodes} episodes"
        )
        return 0

    return guarded(run, argv)


def carry_main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="python -m micro.datagen.behavior carry",
        description="Save a run's state without its replay log (a few MB), to go on with it on "
        "another machine: --carried FILE there.",
    )
    parser.add_argument("run", help="a behavior run folder")
    parser.add_argument("--to", required=True, help="file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        info = carry_behavior(Path(a.run), Path(a.to), a.force)
        last = "".join(f", last evaluation {x:.1f} normalized" for x in info["last_normalized"])
        print(
            f"wrote {a.to}: step {info['step']}, {info['wall_time_s'] / 3600:.2f} h of training"
            f"{last}; go on with the run's command and --out NEW --carried {a.to}"
        )
        return 0

    return guarded(run, argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["carry"]:
        return carry_main(argv[1:])
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    if argv[:1] == ["pick"]:
        return pick_main(argv[1:])

    parser = OneLineParser(
        prog="python -m micro.datagen.behavior", description=BEHAVIOR_DOC.split("\n")[0]
    )
    parser.add_argument("--env", required=True, choices=list(ENV_IDS))
    parser.add_argument("--steps", type=int, required=True, help="total environment steps")
    parser.add_argument(
        "--out", required=True, help="run folder (created, or resumed if it exists)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--carried",
        help="a new --out goes on from this carried state (python -m micro.datagen.behavior "
        "carry), its buffer refilled by its policy for --start_steps steps before updates resume",
    )
    parser.add_argument("--start_steps", type=int, default=5000)
    parser.add_argument("--snapshot_every", type=int, default=10_000)
    parser.add_argument("--save_every", type=int, default=20_000)
    parser.add_argument("--eval_episodes", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        check_seed(a.seed)
        if a.threads:
            torch.set_num_threads(a.threads)
        if a.steps < 1 or a.snapshot_every < 1 or a.save_every < 1:
            raise MicroError("--steps, --snapshot_every and --save_every must be positive")
        s = BehaviorSettings(
            env=a.env,
            steps=a.steps,
            seed=a.seed,
            start_steps=a.start_steps,
            snapshot_every=a.snapshot_every,
            save_every=a.save_every,
            eval_episodes=a.eval_episodes,
        )
        carried = Path(a.carried) if a.carried else None
        train_behavior(s, Path(a.out), progress=not a.no_progress, carried=carried)
        return 0

    return guarded(run, argv)
