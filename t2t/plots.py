"""PNG figures for people: per-task training loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def plot_loss_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """One line per task (mean token loss at each log step), and the overall loss, from metrics.jsonl."""
    if not metrics_path.is_file():
        return None
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    tasks = sorted({key.split("/", 1)[1] for r in records for key in r if key.startswith("task_loss/")})
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: the default cycle repeats after 10 tasks
    for i, task in enumerate(tasks):
        points = [(r["step"], r[f"task_loss/{task}"]) for r in records if f"task_loss/{task}" in r]
        ax.plot(*zip(*points, strict=True), label=task, linewidth=1.2, color=colors[i % len(colors)])
    ax.plot(
        [r["step"] for r in records],
        [r["loss"] for r in records],
        color="black",
        linewidth=2.2,
        label="all tasks",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("mean token loss")
    ax.set_yscale("log")
    ax.set_title("training loss per task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
