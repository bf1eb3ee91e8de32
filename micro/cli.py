"""Command-line entry points. Thin: parse, build the config, call the library."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from micro import MicroError
from micro.config import FIELDS, Config, field_comments, field_type, parse_cli_value, resolve_config
from micro.utils import keep_freed_memory


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and pointing at --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --penalty must not silently mean --penalty_coef
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _config_flag_help(name: str, comments: dict[str, str]) -> str:
    default = FIELDS[name].default
    tp = field_type(name)
    kind = f"default {default!r}, {getattr(tp, '__name__', str(tp)).replace('typing.', '')}"
    text = f"{comments[name]} ({kind})" if name in comments else kind
    return text.replace("%", "%%")  # argparse formats help strings with %


def build_train_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="train.py",
        description="Train a MICRO agent on a D4RL-format dataset. Every config key is a flag; "
        "values come from SPEC defaults < configs/<task>.yaml < --config files < flags.",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of config overrides layered over the task's (repeatable)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed run from its last checkpoint (its config applies)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    group = parser.add_argument_group("config keys")
    comments = field_comments()
    for name in FIELDS:
        tp = field_type(name)
        is_seq = "tuple" in str(tp)
        is_bool = tp is bool
        group.add_argument(
            f"--{name}",
            nargs="+" if is_seq else ("?" if is_bool else None),
            const="true" if is_bool else None,
            default=argparse.SUPPRESS,
            metavar="V",
            help=_config_flag_help(name, comments),
        )
    return parser


@dataclass
class TrainArgs:
    cfg: Config | None  # None when resuming: the run's own config.yaml applies
    resume_dir: str | None
    device: str | None  # an override of the device when resuming
    progress: bool


def parse_train_args(argv: Sequence[str] | None = None) -> TrainArgs:
    parser = build_train_parser()
    args = vars(parser.parse_args(argv))
    presets, no_progress = args.pop("config"), args.pop("no_progress")
    args.pop("debug")
    resume_dir = args.pop("resume")
    if resume_dir is not None:
        extra = sorted(k for k in args if k != "device") + (["config"] if presets else [])
        if extra:
            raise MicroError(
                f"--resume continues a run with its own config.yaml; drop --{', --'.join(extra)}"
            )
        return TrainArgs(None, resume_dir, args.get("device"), not no_progress)
    task = args.pop("task", FIELDS["task"].default)
    overrides = {}
    for key, raw in args.items():
        tokens = raw if isinstance(raw, list) else [raw]
        overrides[key] = parse_cli_value(key, [str(t) for t in tokens])
    return TrainArgs(resolve_config(task, presets, overrides), None, None, not no_progress)


def guarded(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run ``main``; user errors become one line on stderr and exit code 1 (traceback with
    --debug or MICRO_DEBUG=1)."""
    debug = "--debug" in argv or os.environ.get("MICRO_DEBUG") == "1"
    keep_freed_memory()
    try:
        return main(argv)
    except MicroError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _train(argv: list[str]) -> int:
    args = parse_train_args(argv)
    from micro.trainer import resume, run

    if args.resume_dir is not None:
        resume(args.resume_dir, args.device, progress=args.progress)
    else:
        run(args.cfg, progress=args.progress)
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    return guarded(_train, list(sys.argv[1:] if argv is None else argv))
