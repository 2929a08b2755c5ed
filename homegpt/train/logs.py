"""Where a run's numbers go while it trains: RUN/metrics.csv always, TensorBoard and W&B when asked.

metrics.csv has one row per optimizer step (METRICS_FIELDS); rows with a held-out evaluation also carry
val_loss and val_bpb. On resume, rows past the checkpoint being resumed are dropped (a crash can leave
some), so the file always describes one unbroken run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from homegpt.errors import UserError
from homegpt.train.config import TrainConfig

METRICS_FIELDS = ["step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss", "val_bpb", "tokens_per_s",
                  "mfu", "cost_usd"]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint being resumed."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, METRICS_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


class RunLoggers:
    """metrics.csv always; TensorBoard and Weights & Biases when the config asks for them (rank 0 only)."""

    def __init__(self, out: Path, cfg: TrainConfig, active: bool) -> None:
        self.path, self.active, self.tb, self.wandb = out / "metrics.csv", active, None, None
        if not active:
            return
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, METRICS_FIELDS).writeheader()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("tensorboard = true needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_project is set but wandb is not installed: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), dir=str(out))

    def write(self, row: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRICS_FIELDS).writerow(row)
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
