"""``train.py`` and ``fit_dynamics.py``: parse, resolve the config, call ``micro.pipeline``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from micro import MicroError
from micro.cli import OneLineParser, add_config_flags, config_from_args, guarded
from micro.config import Config


def build_train_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="train.py",
        description="Train MICRO (or the MOBILE / MOPO baselines, --algo) on a D4RL task or a "
        "Minari dataset id (--task mujoco/hopper/medium-v0). Every config key is a flag; values "
        "come from SPEC defaults < configs/<algo>/defaults.yaml < configs/<algo>/<task>.yaml "
        "< --config files < flags.",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed run from its last checkpoint (its config applies)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_config_flags(parser)
    return parser


@dataclass
class TrainArgs:
    cfg: Config | None  # None when resuming: the run's own config.yaml applies
    resume_dir: str | None
    device: str | None  # an override of the device when resuming
    progress: bool


def parse_train_args(argv: Sequence[str] | None = None) -> TrainArgs:
    args = vars(build_train_parser().parse_args(argv))
    no_progress = args.pop("no_progress")
    args.pop("debug")
    resume_dir = args.pop("resume")
    if resume_dir is not None:
        presets = args.pop("config")
        extra = sorted(k for k in args if k != "device") + (["config"] if presets else [])
        if extra:
            raise MicroError(
                f"--resume continues a run with its own config.yaml; drop --{', --'.join(extra)}"
            )
        return TrainArgs(None, resume_dir, args.get("device"), not no_progress)
    return TrainArgs(config_from_args(args), None, None, not no_progress)


def _train(argv: list[str]) -> int:
    args = parse_train_args(argv)
    from micro.pipeline import resume, run

    if args.resume_dir is not None:
        resume(args.resume_dir, args.device, progress=args.progress)
    else:
        run(args.cfg, progress=args.progress)
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    return guarded(_train, list(sys.argv[1:] if argv is None else argv))


def _fit_dynamics(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="fit_dynamics.py",
        description="Fit the dynamics ensemble alone and save it, for --load_dynamics_path in "
        "any number of train.py runs (every algorithm and seed on the same data).",
    )
    parser.add_argument("--out", required=True, help="new folder for model.pt + dynamics.json")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_config_flags(parser)
    args = vars(parser.parse_args(argv))
    out, no_progress = args.pop("out"), args.pop("no_progress")
    args.pop("debug")
    from micro.pipeline import fit_dynamics_only

    fit_dynamics_only(config_from_args(args), out, progress=not no_progress)
    return 0


def fit_dynamics_main(argv: Sequence[str] | None = None) -> int:
    return guarded(_fit_dynamics, list(sys.argv[1:] if argv is None else argv))
