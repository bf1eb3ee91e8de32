"""Command-line helpers shared by every entry point: one-line usage errors, config keys as
flags, and the guard that turns user errors into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable

from micro import MicroError
from micro.config import FIELDS, Config, field_comments, field_type, parse_cli_value, resolve_config
from micro.utils import is_write_error, keep_freed_memory, write_error


class DefaultsFormatter(argparse.HelpFormatter):
    """--help names each flag's default (unless its help already does, or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return action.help
        return f"{text} (default: %(default)s)".strip()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and pointing at --help, and
    --help names every default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --penalty must not silently mean --penalty_coef
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _config_flag_help(name: str, comments: dict[str, str]) -> str:
    default = FIELDS[name].default
    tp = field_type(name)
    kind = f"default {default!r}, {getattr(tp, '__name__', str(tp)).replace('typing.', '')}"
    text = f"{comments[name]} ({kind})" if name in comments else kind
    return text.replace("%", "%%")  # argparse formats help strings with %


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
    except OSError as exc:  # a write the storage refused, outside the atomic writers
        if debug or not is_write_error(exc):
            raise
        print(f"error: {write_error(exc.filename, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_config_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """``--config FILE`` presets and one ``--<key> V`` flag per config key (but ``exclude``),
    each documented by its comment in ``micro/config.py``."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of config overrides layered over the algorithm's and task's (repeatable)",
    )
    group = parser.add_argument_group("config keys")
    comments = field_comments()
    for name in FIELDS:
        if name in exclude:
            continue
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


def typed_overrides(args: dict) -> dict:
    """Parsed config flags (strings) as typed config values."""
    overrides = {}
    for key, raw in args.items():
        tokens = raw if isinstance(raw, list) else [raw]
        overrides[key] = parse_cli_value(key, [str(t) for t in tokens])
    return overrides


def config_from_args(args: dict) -> Config:
    """The resolved config from parsed ``add_config_flags`` arguments (consumed from ``args``)."""
    presets = args.pop("config")
    task = args.pop("task", FIELDS["task"].default)
    return resolve_config(task, presets, typed_overrides(args))
