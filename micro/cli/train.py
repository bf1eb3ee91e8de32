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
        nargs="+",
        help="continue a killed run from its last checkpoint (its config applies); several "
        "runs of one population (--seeds) continue together",
    )
    parser.add_argument(
        "--seeds",
        metavar="SEED",
        nargs="+",
        type=int,
        help="train these seeds together in one process (a population: one dataset, one "
        "dynamics model, batched gradient steps), each in its own run directory; instead of "
        "--seed",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_config_flags(parser)
    return parser


@dataclass
class TrainArgs:
    cfg: Config | None  # None when resuming: the run's own config.yaml applies
    resume_dirs: list[str] | None  # one run, or a population's runs
    device: str | None  # an override of the device when resuming
    progress: bool
    seeds: list[int] | None = None  # a population's seeds (cfg's seed is the first)


def parse_train_args(argv: Sequence[str] | None = None) -> TrainArgs:
    args = vars(build_train_parser().parse_args(argv))
    no_progress = args.pop("no_progress")
    args.pop("debug")
    resume_dirs = args.pop("resume")
    seeds = args.pop("seeds")
    if resume_dirs is not None:
        presets = args.pop("config")
        extra = sorted(k for k in args if k != "device") + (["config"] if presets else [])
        extra += ["seeds"] if seeds is not None else []
        if extra:
            raise MicroError(
                f"--resume continues a run with its own config.yaml; drop --{', --'.join(extra)}"
            )
        return TrainArgs(None, resume_dirs, args.get("device"), not no_progress)
    if seeds is not None:
        if "seed" in args:
            raise MicroError("give --seed or --seeds, not both")
        for seed in seeds[1:]:  # each checked like any --seed
            config_from_args({**args, "seed": seed})
        cfg = config_from_args({**args, "seed": seeds[0]})
        return TrainArgs(cfg, None, None, not no_progress, seeds)
    return TrainArgs(config_from_args(args), None, None, not no_progress)


def _train(argv: list[str]) -> int:
    args = parse_train_args(argv)
    from micro.pipeline import resume, resume_population, run, run_population

    if args.resume_dirs is not None and len(args.resume_dirs) > 1:
        _check_population(resume_population(args.resume_dirs, args.device, progress=args.progress))
    elif args.resume_dirs is not None:
        resume(args.resume_dirs[0], args.device, progress=args.progress)
    elif args.seeds is not None:
        _check_population(run_population(args.cfg, args.seeds, progress=args.progress))
    else:
        run(args.cfg, progress=args.progress)
    return 0


def _check_population(results: list) -> None:
    """Exit 1 when any run of a population stopped early (the others finished)."""
    failed = [r.run_dir.name for r in results if r.failed is not None]
    if failed:
        raise MicroError(
            f"{len(failed)} of {len(results)} runs stopped early on non-finite values "
            f"({', '.join(failed)}: see failed.json in each); the others finished"
        )


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
