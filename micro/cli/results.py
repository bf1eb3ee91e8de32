"""``python -m micro.results``: parse, then ship, export or tabulate (``micro.results``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from micro.cli import OneLineParser, guarded
from micro.policy_file import export_checkpoint_policy
from micro.results import __doc__ as RESULTS_DOC
from micro.results import ship, table


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m micro.results", description=RESULTS_DOC.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("ship", help="copy a run's small files into the results")
    s.add_argument("run_dir")
    s.add_argument(
        "--dataset", required=True, help="the dataset's name, e.g. halfcheetah-medium-200k"
    )
    s.add_argument("--root", default="results")
    s.add_argument("--force", action="store_true", help="replace shipped files")
    s.add_argument(
        "--in_progress",
        action="store_true",
        help="a run without policy.pt: ship its last checkpoint, marked unfinished",
    )
    x = sub.add_parser("export", help="write a policy file from a run's last checkpoint")
    x.add_argument("run_dir")
    x.add_argument("--out", help="the policy file (default RUN/snapshots/epoch<N>.pt)")
    t = sub.add_parser("table", help="print the Markdown table of the shipped runs")
    t.add_argument("--root", default="results")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        if a.command == "ship":
            dest = ship(Path(a.run_dir), a.dataset, Path(a.root), a.force, a.in_progress)
            print(f"shipped {a.run_dir} to {dest}")
        elif a.command == "export":
            out, progress = export_checkpoint_policy(a.run_dir, a.out)
            print(f"policy at epoch {progress.epoch} (step {progress.step}): {out}")
        else:
            print(table(Path(a.root)))
        return 0

    return guarded(run, list(sys.argv[1:] if argv is None else argv))
