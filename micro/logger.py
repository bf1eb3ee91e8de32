"""Run logging: TensorBoard scalars and a CSV with one row per epoch.

On resume, CSV rows and TensorBoard events past the checkpoint are dropped (TensorBoard's
``purge_step``), so a killed-and-resumed run has no duplicated or missing epochs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from micro.utils import atomic_path

CSV_COLUMNS = (
    "epoch",
    "step",
    "critic_loss",
    "actor_loss",
    "alpha_loss",
    "alpha",
    "uncertainty",
    "q_mean",
    "target_mean",
    "log_prob",
    "rollout_reward_mean",
    "model_buffer_size",
    "actor_lr",
    "eval_return",
    "eval_return_std",
    "eval_normalized_score",
    "eval_normalized_score_std",
)


class RunLogger:
    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir, self.resume = run_dir, resume
        self.csv_path = run_dir / "progress.csv"
        # dynamics-fitting curves have their own folder: their x axis is the fitting epoch
        self._dynamics_writer: SummaryWriter | None = None
        self.writer: SummaryWriter | None = None
        self._csv_file = None

    def dynamics_scalars(self, values: dict[str, float], epoch: int) -> None:
        if self._dynamics_writer is None:
            self._dynamics_writer = SummaryWriter(str(self.run_dir / "tb" / "dynamics"))
        for key, value in values.items():
            self._dynamics_writer.add_scalar(f"dynamics/{key}", value, epoch)

    def start(self, epoch: int, step: int) -> None:
        """Open the training logs at ``epoch``/``step`` (0 for a new run), dropping anything
        written after that point by an earlier, interrupted process."""
        if self._dynamics_writer is not None:
            self._dynamics_writer.close()
        self.writer = SummaryWriter(
            str(self.run_dir / "tb"), purge_step=step + 1 if self.resume else None
        )
        if self.resume and self.csv_path.exists():
            with open(self.csv_path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= epoch]
            with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as out:
                w = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
                w.writeheader()
                w.writerows(kept)
        new = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")  # noqa: SIM115 - open for the run
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS)
        if new:
            self._csv.writeheader()

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", value, step)

    def epoch_scalars(self, means: dict[str, float], lr: float, rollout: dict, step: int) -> None:
        self.scalars(
            {k: means[k] for k in ("critic_loss", "actor_loss", "alpha_loss") if k in means},
            step,
            "loss/",
        )
        train = {k: means[k] for k in ("alpha", "uncertainty", "q_mean", "target_mean")}
        self.scalars({**train, "actor_lr": lr}, step, "train/")
        if rollout:
            self.scalars({"reward_mean": rollout["reward_mean"]}, step, "rollout/")

    def eval_scalars(self, raw_return: float, normalized: float, step: int) -> None:
        self.scalars({"return": raw_return, "normalized_score": normalized}, step, "eval/")

    def time_scalar(self, seconds: float, step: int) -> None:
        self.scalars({"elapsed_s": seconds}, step, "time/")

    def csv_row(self, row: dict[str, float | int | str]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
        self._csv_file.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._csv_file is not None:
            self._csv_file.close()
