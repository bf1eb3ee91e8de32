"""``python -m micro.datagen.collect``: parse, then make a dataset (``micro.datagen.collect``)."""

from __future__ import annotations

import sys
import time

from micro.cli import OneLineParser, guarded
from micro.datagen.collect import DATASET_KINDS, check_target, make_dataset
from micro.datagen.collect import __doc__ as COLLECT_DOC
from micro.envs import ENV_IDS
from micro.utils import check_seed


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m micro.datagen.collect", description=COLLECT_DOC.split("\n")[0]
    )
    parser.add_argument("--env", required=True, choices=list(ENV_IDS))
    parser.add_argument("--kind", required=True, choices=list(DATASET_KINDS))
    parser.add_argument(
        "--steps", type=int, default=1_000_000, help="rows (per part for medium-expert)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("hdf5", "minari"), default="hdf5")
    parser.add_argument("--out", help="hdf5: the file to write (must not exist)")
    parser.add_argument(
        "--dataset_id", help="minari: the new dataset's id, e.g. local/hopper/medium-v0"
    )
    parser.add_argument(
        "--env_version",
        type=int,
        choices=(4, 5),
        help="the robot's Gymnasium version: hdf5 4 only (D4RL's dynamics); minari 5 (default), 4",
    )
    parser.add_argument("--policy", help="behavior policy .pt (medium/expert; the medium part)")
    parser.add_argument("--expert_policy", help="expert part of medium-expert")
    parser.add_argument("--run", help="behavior run folder, for medium-replay")
    parser.add_argument(
        "--upto",
        type=int,
        help="medium-replay: transitions to take (default: the medium policy's training step)",
    )
    parser.add_argument("--n_envs", type=int, default=8, help="simulators stepped in lockstep")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--debug", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        check_seed(a.seed)
        sim, target = check_target(
            a.env, a.kind, a.steps, a.n_envs, a.format, a.out, a.dataset_id, a.env_version, a.force
        )
        start = time.time()
        made = make_dataset(
            a.kind,
            sim,
            target,
            a.format,
            a.steps,
            a.seed,
            a.n_envs,
            a.policy,
            a.expert_policy,
            a.run,
            a.upto,
            not a.no_progress,
        )
        print(
            f"wrote {made.target}: {made.steps} steps on {sim.env_id}, {made.episodes} "
            f"whole episodes, return {made.return_mean:.1f} (D4RL-normalized "
            f"{made.normalized:.1f}) in {time.time() - start:.0f}s"
        )
        return 0

    return guarded(run, list(sys.argv[1:] if argv is None else argv))
