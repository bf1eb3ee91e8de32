"""Run logging: TensorBoard scalars and a CSV with one row per epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

CSV_COLUMNS = (
    "epoch",
    "step",
    "time_s",
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
    def __init__(self, run_dir: Path) -> None:
        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.csv_path = run_dir / "progress.csv"
        new = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS)
        if new:
            self._csv.writeheader()

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", value, step)

    def csv_row(self, row: dict[str, float | int | str]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
        self._csv_file.flush()

    def close(self) -> None:
        self.writer.close()
        self._csv_file.close()
