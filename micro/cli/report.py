"""``report.py``: parse, then ``micro.report`` compares the runs and writes the table and curves."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from micro.cli import OneLineParser, guarded
from micro.report import __doc__ as REPORT_DOC
from micro.report import find_runs, write_report


def report_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="report.py", description=REPORT_DOC.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or logdirs to search")
    parser.add_argument("--out", default="report", help="output folder (default: report/)")
    parser.add_argument("--debug", action="store_true")

    def main(args: list[str]) -> int:
        a = parser.parse_args(args)
        runs = find_runs(a.paths)
        written = write_report(runs, Path(a.out))
        print(Path(written["md"]).read_text())
        for path in written.values():
            print(f"wrote {path}")
        return 0

    return guarded(main, list(sys.argv[1:] if argv is None else argv))
