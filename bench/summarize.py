"""Summarize saved runs of ``bench/speed.py --json`` as the README's table.

    python bench/speed.py --repeats 7 --json > bench/results/<date>T<time>-highest.jsonl
    python bench/summarize.py bench/results/*.jsonl

For each case and matmul precision: the median over runs and the range, since a shared VM's speed
moves between runs. Fractions are of the float32 peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(paths: list[Path]) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in paths:
        precision = "highest"
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["case"] == "matmul_peak":
                precision = row.get("matmul_precision", "highest")
                runs[("matmul_peak", precision)].append(row)
            else:
                runs[(row["case"], precision)].append(row)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    runs = load(args.files)
    print("| case | matmul_precision | runs | median | range | median of peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (case, precision), rows in runs.items():
        if case == "matmul_peak":
            values = [r["gflop_per_s"] for r in rows]
            unit, frac = "GFLOP/s", ""
        else:
            key = "steps_per_s" if "steps_per_s" in rows[0] else "seconds"
            values = [r[key] for r in rows]
            unit = "steps/s" if key == "steps_per_s" else "s"
            frac = f"{100 * statistics.median(r['fraction_of_peak'] for r in rows):.0f} %"
        print(
            f"| {case} | {precision} | {len(values)} | {statistics.median(values):.2f} {unit} | "
            f"{min(values):.2f}–{max(values):.2f} | {frac} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
