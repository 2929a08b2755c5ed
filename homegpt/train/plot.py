"""The loss-curve picture of a run: training loss per step and held-out loss at each evaluation."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_loss_curve(metrics_csv: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps, train, vsteps, val = [], [], [], []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            tokens = float(row["tokens"])
            steps.append(tokens)
            train.append(float(row["train_loss"]))
            if row.get("val_loss"):
                vsteps.append(tokens)
                val.append(float(row["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(steps, train, lw=1, alpha=0.8, label="train (one batch)")
    if val:
        ax.plot(vsteps, val, "o-", lw=1.5, ms=3, label="held-out")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("homegpt training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
