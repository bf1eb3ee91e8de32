"""``python -m micro.results``: parse, then ship, export or tabulate (``micro.results``)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from micro.cli import OneLineParser, guarded
from micro.policy_file import export_checkpoint_policy
from micro.results import (
    REFERENCE_SEEDS,
    cards,
    import_published,
    overview,
    reference_data,
    reference_fit_argv,
    reference_plan,
    remake,
    ship,
    ship_dynamics,
    table,
    write_card,
)
from micro.results import __doc__ as RESULTS_DOC


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
    o = sub.add_parser(
        "overview", help="print the table of datasets by algorithms (means over seeds)"
    )
    o.add_argument("--root", default="results")
    c = sub.add_parser("card", help="record how a dataset made here was made (dataset.json)")
    c.add_argument("file", help="the HDF5 file micro.datagen.collect wrote")
    c.add_argument("--dataset", required=True, help="its name, e.g. hopper-medium-200k")
    c.add_argument(
        "--recipe",
        required=True,
        help="collect's arguments that made it, e.g. --recipe=\"--env hopper --kind medium "
        '--steps 200000 --seed 0"',
    )
    c.add_argument("--root", default="results")
    c.add_argument("--force", action="store_true", help="replace the card")
    r = sub.add_parser("remake", help="make a carded dataset again and check it is the same")
    r.add_argument("dataset")
    r.add_argument("--out", required=True, help="the HDF5 file to write")
    r.add_argument("--root", default="results")
    r.add_argument("--force", action="store_true", help="replace an existing --out file")
    k = sub.add_parser("cards", help="print the table of the dataset cards")
    k.add_argument("--root", default="results")
    d = sub.add_parser(
        "dynamics", help="ship the dynamics model every run on a carded dataset learns from"
    )
    d.add_argument("folder", help="fit_dynamics.py's --out folder")
    d.add_argument("--dataset", required=True, help="the carded dataset it was fitted on")
    d.add_argument("--root", default="results")
    d.add_argument("--force", action="store_true", help="replace the shipped model")
    i = sub.add_parser(
        "import-published", help="ship a run of the published trainer (bench/published_micro.py)"
    )
    i.add_argument("out", help="the run's --out folder")
    i.add_argument(
        "--dataset", required=True, help="the dataset's name, e.g. halfcheetah-medium-200k"
    )
    i.add_argument("--data", help="the dataset file (default: the one the run was given)")
    i.add_argument("--root", default="results")
    i.add_argument("--force", action="store_true", help="replace shipped files")
    g = sub.add_parser(
        "train",
        help="train (or continue) the reference runs of an algorithm on a carded dataset",
    )
    g.add_argument("algo", help="micro, mobile, mopo or rambo")
    g.add_argument("dataset", help="a carded dataset, e.g. hopper-medium-200k")
    g.add_argument(
        "--data", help="its file, remade by its card when absent (default data/DATASET.hdf5)"
    )
    g.add_argument("--logdir", default="runs/reference", help="where the runs live")
    g.add_argument(
        "--dynamics", help="the dynamics folder (default: the shipped results/DATASET/dynamics)"
    )
    g.add_argument("--seeds", type=int, nargs="+", default=list(REFERENCE_SEEDS))
    g.add_argument("--root", default="results")
    g.add_argument(
        "--dry_run", action="store_true", help="print what it would run, and run nothing"
    )
    g.add_argument("--no_progress", action="store_true")
    f = sub.add_parser("fit", help="fit the dynamics model a carded dataset's reference runs share")
    f.add_argument("dataset", help="a carded dataset, e.g. hopper-medium-200k")
    f.add_argument(
        "--data", help="its file, remade by its card when absent (default data/DATASET.hdf5)"
    )
    f.add_argument("--out", help="the model's folder (default runs/reference/dynamics-DATASET)")
    f.add_argument("--root", default="results")
    f.add_argument(
        "--dry_run", action="store_true", help="print what it would run, and run nothing"
    )
    f.add_argument("--no_progress", action="store_true")
    parser.add_argument("--debug", action="store_true")

    def run(argv: list[str]) -> int:
        a = parser.parse_args(argv)
        if a.command == "ship":
            dest = ship(Path(a.run_dir), a.dataset, Path(a.root), a.force, a.in_progress)
            print(f"shipped {a.run_dir} to {dest}")
        elif a.command == "export":
            out, progress = export_checkpoint_policy(a.run_dir, a.out)
            print(f"policy at epoch {progress.epoch} (step {progress.step}): {out}")
        elif a.command == "card":
            dest = write_card(Path(a.file), a.dataset, Path(a.root), shlex.split(a.recipe), a.force)
            print(f"wrote {dest}")
        elif a.command == "remake":
            card = remake(a.dataset, Path(a.root), Path(a.out), a.force)
            print(f"{a.out} is {a.dataset}, SHA-256 {card['sha256']} as its card says")
        elif a.command == "import-published":
            data = Path(a.data) if a.data else None
            dest = import_published(Path(a.out), a.dataset, Path(a.root), data, a.force)
            print(f"shipped {a.out} to {dest}")
        elif a.command == "dynamics":
            dest = ship_dynamics(Path(a.folder), a.dataset, Path(a.root), a.force)
            print(f"shipped {a.folder} to {dest} (use it with --load_dynamics_path {dest})")
        elif a.command == "train":
            return _train_reference(a)
        elif a.command == "fit":
            return _fit_reference(a)
        elif a.command == "cards":
            print(cards(Path(a.root)))
        elif a.command == "overview":
            print(overview(Path(a.root)))
        else:
            print(table(Path(a.root)))
        return 0

    return guarded(run, list(sys.argv[1:] if argv is None else argv))


def _train_reference(a) -> int:
    root, data = Path(a.root), Path(a.data or f"data/{a.dataset}.hdf5")
    dynamics = Path(a.dynamics) if a.dynamics else None
    plan = reference_plan(a.algo, a.dataset, root, data, Path(a.logdir), dynamics, a.seeds)
    if plan.finished:
        print(f"{a.algo} on {a.dataset}: every run has finished ({', '.join(map(str, plan.runs))})")
        return 0
    argv = plan.argv + ["--no_progress"] * a.no_progress
    if a.dry_run:
        print("would run: " + shlex.join(["python", "train.py", *argv]))
        return 0
    if not plan.runs:
        reference_data(a.dataset, root, data)
    print(shlex.join(["python", "train.py", *argv]))
    from micro.cli.train import train_main

    return train_main(argv)


def _fit_reference(a) -> int:
    root, data = Path(a.root), Path(a.data or f"data/{a.dataset}.hdf5")
    out = Path(a.out or f"runs/reference/dynamics-{a.dataset}")
    argv = reference_fit_argv(a.dataset, root, data, out) + ["--no_progress"] * a.no_progress
    if a.dry_run:
        print("would run: " + shlex.join(["python", "fit_dynamics.py", *argv]))
        return 0
    reference_data(a.dataset, root, data)
    print(shlex.join(["python", "fit_dynamics.py", *argv]))
    from micro.cli.train import fit_dynamics_main

    code = fit_dynamics_main(argv)
    if code == 0:
        print(f"ship it: python -m micro.results dynamics {out} --dataset {a.dataset}")
    return code
