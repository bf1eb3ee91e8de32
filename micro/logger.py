"""Run logging: TensorBoard scalars and a CSV with one row per epoch, of whatever metrics the
learner and the rollouts return (the CSV's columns are its first row's, plus the evaluation's),
and ``eval-episodes.csv``, one row per evaluation episode (a mean of ten hides the one episode
that fell over).

On resume, CSV rows and TensorBoard events past the checkpoint are dropped (TensorBoard's
``purge_step``), so a killed-and-resumed run has no duplicated or missing epochs; each CSV keeps
its header.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from micro import MicroError
from micro.run_dir import RunDir
from micro.utils import atomic_path

if TYPE_CHECKING:  # imported when a run logs: readers of progress.csv need no TensorBoard
    from torch.utils.tensorboard import SummaryWriter

# Always in the CSV header, even when the first rows have no evaluation.
EVAL_COLUMNS = (
    "eval_return",
    "eval_return_std",
    "eval_normalized_score",
    "eval_normalized_score_std",
    "eval_normalized_score_min",
    "eval_normalized_score_max",
)
EPISODE_COLUMNS = ("epoch", "step", "episode", "seed", "return", "normalized", "length")


def _keep_rows_to(path: Path, epoch: int) -> list[str] | None:
    """Rewrite the CSV at ``path`` keeping its rows of epochs up to ``epoch``; its columns
    (None when it has none)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        kept = [r for r in reader if int(r["epoch"]) <= epoch]
        columns = list(reader.fieldnames or []) or None
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        if columns is not None:
            w = csv.DictWriter(out, fieldnames=columns)
            w.writeheader()
            w.writerows(kept)
    return columns


class RunLogger:
    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir, self.resume = run_dir, resume
        run = RunDir(run_dir)
        self.csv_path = run.progress_file
        self.episodes_path = run.episodes_file
        self.tb_dir = run.tb_dir
        # dynamics-fitting curves have their own folder: their x axis is the fitting epoch
        self._dynamics_writer: SummaryWriter | None = None
        self.writer: SummaryWriter | None = None
        self._csv_file = None
        self._columns: list[str] | None = None

    def dynamics_scalars(self, values: dict[str, float], epoch: int) -> None:
        if self._dynamics_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run's fit starts at its first epoch not saved (1 when fitted afresh):
            # events an interrupted process wrote from there on are dropped
            purge = epoch if self.resume else None
            self._dynamics_writer = SummaryWriter(str(self.tb_dir / "dynamics"), purge_step=purge)
        for key, value in values.items():
            self._dynamics_writer.add_scalar(f"dynamics/{key}", value, epoch)

    def start(self, epoch: int, step: int) -> None:
        """Open the training logs at ``epoch``/``step`` (0 for a new run), dropping anything
        written after that point by an earlier, interrupted process."""
        if self._dynamics_writer is not None:
            self._dynamics_writer.close()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.tb_dir), purge_step=step + 1 if self.resume else None)
        if self.resume and self.csv_path.exists():
            self._columns = _keep_rows_to(self.csv_path, epoch)
        if self.resume and self.episodes_path.exists():
            _keep_rows_to(self.episodes_path, epoch)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", value, step)

    def epoch_scalars(self, means: dict[str, float], rollout: dict, step: int) -> None:
        """The epoch's learner metrics (losses under loss/, the rest, learning rates included,
        under train/) and the last rollout's numbers (under rollout/)."""
        self.scalars({k: v for k, v in means.items() if k.endswith("_loss")}, step, "loss/")
        self.scalars({k: v for k, v in means.items() if not k.endswith("_loss")}, step, "train/")
        self.scalars({k: v for k, v in rollout.items() if k != "transitions"}, step, "rollout/")

    def eval_scalars(self, values: dict[str, float], step: int) -> None:
        self.scalars(values, step, "eval/")

    def episode_rows(self, rows: list[dict], epoch: int, step: int) -> None:
        """Append one evaluation's episodes (``EvalResult.episode_rows``) to eval-episodes.csv,
        which is new in runs started by this version: a run resumed from an older one gets
        the file from its resume on."""
        new = not self.episodes_path.exists()
        with open(self.episodes_path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=EPISODE_COLUMNS)
            if new:
                w.writeheader()
            w.writerows({"epoch": epoch, "step": step, **r} for r in rows)

    def time_scalar(self, seconds: float, step: int) -> None:
        self.scalars({"elapsed_s": seconds}, step, "time/")

    def csv_row(self, row: dict[str, float | int | str]) -> None:
        """Append one epoch's row. A new file takes this row's keys (and the evaluation columns)
        as its header; a resumed one keeps its own."""
        if self._csv_file is None:
            new = self._columns is None
            if new:
                self._columns = [*row, *(c for c in EVAL_COLUMNS if c not in row)]
            self._csv_file = open(self.csv_path, "w" if new else "a", newline="")  # noqa: SIM115
            self._csv = csv.DictWriter(self._csv_file, fieldnames=self._columns)
            if new:
                self._csv.writeheader()
        self._csv.writerow({k: row.get(k, "") for k in self._columns})
        self._csv_file.flush()

    def close(self) -> None:
        if self._dynamics_writer is not None:
            self._dynamics_writer.close()
        if self.writer is not None:
            self.writer.close()
        if self._csv_file is not None:
            self._csv_file.close()


def logged_seconds(run_dir: Path) -> dict[str, float] | None:
    """Wall seconds read back from a run's TensorBoard files, for runs whose checkpoints predate
    carrying timings: ``dynamics`` (first to last event of the fit) and ``training loop`` (over
    the sessions, one events file each, the sum of their last ``time/elapsed_s``). None when the
    run logged no time."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    def values(path: Path, tag: str | None):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if tag is None or v.tag == tag:
                    simple = v.WhichOneof("value") == "simple_value"
                    yield (
                        event.wall_time,
                        v.simple_value if simple else float(make_ndarray(v.tensor)),
                    )

    loop = 0.0
    tb = RunDir(run_dir).tb_dir
    for events in sorted(tb.glob("events.out.tfevents.*")):
        loop += max((x for _, x in values(events, "time/elapsed_s")), default=0.0)
    fit = [t for f in sorted((tb / "dynamics").glob("events.*")) for t, _ in values(f, None)]
    if not loop and not fit:
        return None
    return {"dynamics": max(fit) - min(fit) if fit else 0.0, "training loop": loop}


def read_progress(file: Path) -> list[dict]:
    """A progress.csv's rows, every value a number or empty. A last line cut short (a run
    appending it right now, or a crash mid-write) is left out with a note; any other damage is
    refused in one line naming the file and line."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MicroError(f"{file} is not UTF-8 text: it is damaged") from None
    except OSError as exc:
        raise MicroError(f"cannot read {file}: {exc.strerror}") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise MicroError(f"{file} is not a valid CSV ({exc}): it is damaged") from None

    def complete(row: dict) -> bool:
        return None not in row and None not in row.values()

    if rows and (not text.endswith("\n") or not complete(rows[-1])):
        print(f"note: {file}'s last line is incomplete; it is left out", file=sys.stderr)
        rows.pop()
    for line, row in enumerate(rows, start=2):
        bad = [k or "past the header" for k, v in row.items() if v != "" and not _number(v)]
        if bad:
            raise MicroError(f"{file} line {line} is damaged (column {bad[0]}); remove that line")
    return rows


def _number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):  # None: a missing field; a list: fields past the header
        return False
    return True
