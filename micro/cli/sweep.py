"""``sweep.py``: parse, then train a grid on Ray (``micro.sweep.run_grid``) or evaluate its
policies (``sweep.py eval``, ``micro.sweep.evaluate_grid``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from micro import MicroError
from micro.cli import OneLineParser, add_config_flags, guarded, typed_overrides
from micro.sweep import evaluate_grid, run_grid


def _parse_datasets(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, file = item.partition("=")
        if not sep or not task or not file:
            raise MicroError(f"bad --dataset {item!r}; use TASK=FILE")
        out[task] = str(Path(file).expanduser().resolve())
    return out


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="sweep.py",
        description="Train every (task, algorithm, seed) of a grid on Ray, resumably, and "
        "compare them (report.py's table and curves). Config flags apply to every run.",
    )
    parser.add_argument("--tasks", nargs="+", required=True, metavar="T")
    parser.add_argument("--algos", nargs="+", default=["micro"], metavar="A")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S")
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="TASK=FILE", help="a task's local data"
    )
    parser.add_argument("--logdir", default="sweeps/default", help="the sweep's folder")
    parser.add_argument(
        "--address", help="an existing Ray cluster: auto, or ray://host:10001 (default: local)"
    )
    parser.add_argument("--num_cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--cpus_per_run", type=float, default=1.0)
    parser.add_argument("--gpus_per_run", type=float, default=0.0, help="fractions share a GPU")
    parser.add_argument(
        "--max_retries",
        type=int,
        default=3,
        help="reruns of a run whose worker died (each resumes from its checkpoint)",
    )
    parser.add_argument("--status_every", type=float, default=30.0, help="seconds between status")
    parser.add_argument("--report_only", action="store_true", help="only write the report")
    parser.add_argument(
        "--pack_seeds",
        action="store_true",
        help="train the seeds of each (task, algo) together, one population per Ray task "
        "(train.py --seeds); --cpus_per_run/--gpus_per_run are then the population's",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_config_flags(parser, exclude=("task", "algo", "seed", "dataset", "logdir"))
    return parser


def _sweep(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    tasks, algos, seeds = args.pop("tasks"), args.pop("algos"), args.pop("seeds")
    datasets = _parse_datasets(args.pop("dataset"))
    logdir = Path(args.pop("logdir")).expanduser().resolve()
    address, num_cpus = args.pop("address"), args.pop("num_cpus")
    cpus, gpus = args.pop("cpus_per_run"), args.pop("gpus_per_run")
    max_retries, status_every = args.pop("max_retries"), args.pop("status_every")
    report_only, pack_seeds = args.pop("report_only"), args.pop("pack_seeds")
    args.pop("debug")
    presets = args.pop("config")
    unknown = sorted(set(datasets) - set(tasks))
    if unknown:
        raise MicroError(f"--dataset names {', '.join(unknown)}, not in --tasks")
    if len(set(seeds)) != len(seeds) or len(set(tasks)) != len(tasks):
        raise MicroError("--tasks and --seeds must not repeat")
    if cpus <= 0 or gpus < 0 or max_retries < 0:
        raise MicroError("--cpus_per_run must be positive, --gpus_per_run and --max_retries >= 0")
    failed = run_grid(
        tasks,
        algos,
        seeds,
        presets,
        typed_overrides(args),
        datasets,
        logdir,
        address,
        num_cpus,
        cpus,
        gpus,
        max_retries,
        status_every,
        report_only,
        pack_seeds,
    )
    return 1 if failed else 0


def _sweep_eval(argv: list[str]) -> int:
    """``sweep.py eval``: eval.py's flags (policies and task aside) plus Ray's."""
    from micro.cli import evaluate as ev

    parser = ev.build_parser()
    parser.prog = "sweep.py eval"
    parser.description = (
        "eval.py's clean, sim2real or attack sweep for every finished policy of a sweep, run "
        "on Ray; per task, one table and one figure comparing the algorithms (mean ± std over "
        "seeds). Results go to <logdir>/eval/<task>/ unless --out."
    )
    parser.set_defaults(logdir="sweeps/default")
    parser.add_argument("--address", help="an existing Ray cluster (default: a local instance)")
    parser.add_argument("--num_cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--cpus_per_run", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.policy_path or args.task:
        raise MicroError("sweep.py eval evaluates the sweep in --logdir; drop --policy_path/--task")
    failed = evaluate_grid(
        Path(args.logdir),
        ev.spec_from_args(args),
        Path(args.out) if args.out else None,
        args.force,
        args.device,
        args.address,
        args.num_cpus,
        args.cpus_per_run,
    )
    return 1 if failed else 0


def sweep_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        return guarded(_sweep_eval, argv[1:])
    return guarded(_sweep, argv)
