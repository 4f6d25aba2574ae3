"""`t2t affinity RUN_DIR`: which tasks pull the shared parameters the same way, from a run's logged gradients.

A run trained with a gradient method (t2t.gradients) logs, per log line, the cosine between every two tasks'
gradients on the gradient subset, averaged over the micro-batches where both appeared. Here those matrices are
averaged over the run's log lines (each line counts once; a pair that never met stays unknown), drawn as a
task x task map, and the tasks grouped by average linkage: the two groups whose tasks' mean cosine is highest are
merged while it is above a threshold (0: merge only tasks whose gradients agree more than they conflict).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from t2t.errors import T2TError, Where
from t2t.fileio import atomic_write_text


def read_cosines(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """(tasks, mean cosine matrix with nan where unknown, share of log lines where each pair was negative,
    log lines used) from RUN_DIR/metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise T2TError("no metrics.jsonl here: give a t2t run folder", Where(file=run_dir))
    tasks: list[str] | None = None
    total = count = negative = None
    lines = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise T2TError("not a JSON line", Where(file=path, line=number)) from None
        if not isinstance(record, dict) or "grad_cosine" not in record:
            continue
        named = record.get("grad_tasks")
        if not isinstance(named, list) or not all(isinstance(t, str) for t in named):
            raise T2TError(
                "grad_cosine without a grad_tasks list of task names", Where(file=path, line=number)
            )
        if tasks is None:
            tasks = list(named)
            n = len(tasks)
            total, count, negative = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        if named != tasks:
            raise T2TError("the tasks change between log lines", Where(file=path, line=number))
        try:
            matrix = np.array(
                [[np.nan if x is None else x for x in row] for row in record["grad_cosine"]], dtype=float
            )
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.shape != (len(tasks), len(tasks)):
            raise T2TError(f"grad_cosine is not a {len(tasks)} x {len(tasks)} matrix of numbers",
                           Where(file=path, line=number))  # fmt: skip
        known = ~np.isnan(matrix)
        total[known] += matrix[known]
        count[known] += 1
        negative[known] += matrix[known] < 0
        lines += 1
    if tasks is None:
        raise T2TError("the run logged no gradient cosines: train it with a gradient method (balancing.method="
                       "pcgrad, cagrad, mgda or gradnorm) and packed batches", Where(file=path))  # fmt: skip
    mean = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    share = np.divide(negative, count, out=np.full_like(total, np.nan), where=count > 0)
    return tasks, mean, share, lines


def group_tasks(affinity: np.ndarray, threshold: float = 0.0) -> list[list[int]]:
    """Average-linkage grouping: merge the two groups of highest mean pairwise affinity while it exceeds
    `threshold`; unknown pairs (nan) are left out of the means, and groups with no known pair never merge."""
    groups = [[i] for i in range(len(affinity))]
    while len(groups) > 1:
        best, pair = threshold, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                values = [
                    affinity[i, j] for i in groups[a] for j in groups[b] if not np.isnan(affinity[i, j])
                ]
                if values and float(np.mean(values)) > best:
                    best, pair = float(np.mean(values)), (a, b)
        if pair is None:
            break
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    return sorted(groups, key=lambda g: g[0])


def affinity_report(run_dir: Path, out: Path, threshold: float = 0.0) -> dict:
    tasks, mean, share, lines = read_cosines(run_dir)
    groups = [[tasks[i] for i in g] for g in group_tasks(mean, threshold)]
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run_dir), "log_lines": lines, "tasks": tasks, "threshold": threshold,
              "cosine": [[None if np.isnan(x) else round(float(x), 4) for x in row] for row in mean],
              "negative_share": [[None if np.isnan(x) else round(float(x), 4) for x in row] for row in share],
              "groups": groups}  # fmt: skip
    atomic_write_text(out / "affinity.json", json.dumps(result, indent=2) + "\n")
    _plot(tasks, mean, out / "affinity.png", lines)
    return result


def _plot(tasks: list[str], mean: np.ndarray, path: Path, lines: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.55 * len(tasks) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(np.ma.masked_invalid(mean), cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if not np.isnan(mean[i, j]):
                ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="mean gradient cosine")
    ax.set_title(f"task affinity ({lines} log lines)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
