"""`t2t affinity RUN_DIR`: which tasks pull the shared parameters the same way, from a run's logged gradients.

A run trained with a gradient method (t2t.gradients) logs, per log line, the cosine between every two tasks'
gradients on the gradient subset, averaged over the micro-batches where both appeared. Here those matrices are
averaged over the run's log lines (each line counts once; a pair that never met stays unknown), drawn as a
task x task map, and the tasks grouped by average linkage: the two groups whose tasks' mean cosine is highest are
merged while it is above a threshold (0: merge only tasks whose gradients agree more than they conflict).

`--lookahead` measures TAG's inter-task affinity (Fifty et al. 2021) on the run's saved checkpoints: for a batch of
each task, one SGD step of the shared parameters on task i's loss alone, and the relative change it makes to task
j's loss on its own batch, Z[i, j] = 1 - L_j(theta - lr * grad L_i) / L_j(theta), averaged over the checkpoints
(TAG averages it over training steps; the checkpoints sample that trajectory). Z[i, j] > 0: a step for task i
helps task j. It needs no gradient method, costs one backward per task and one forward per pair and checkpoint,
and is meant for small mixtures. Adapters (t2t.adapters) are task-specific: each task's loss runs through its own,
and only the shared backbone takes the lookahead step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2t.errors import T2TError, Where
from t2t.fileio import atomic_write_text

if TYPE_CHECKING:
    from t2t.registry import Registry


def read_cosines(
    run_dir: Path, required: bool = True
) -> tuple[list[str], np.ndarray, np.ndarray, int] | None:
    """(tasks, mean cosine matrix with nan where unknown, share of log lines where each pair was negative,
    log lines used) from RUN_DIR/metrics.jsonl. A run without a log or without cosines is refused, or None when
    not `required`; a malformed log is refused either way."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        if not required:
            return None
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
    if tasks is None and not required:
        return None
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


def _rounded(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(x) else round(float(x), 4) for x in row] for row in matrix]


def affinity_report(run_dir: Path, out: Path, threshold: float = 0.0, lookahead: dict | None = None) -> dict:
    """The cosine map (when the run logged cosines) and, with `lookahead` (the arguments of lookahead_affinity),
    TAG's lookahead map; groups from the lookahead map when there is one, else from the cosines."""
    result: dict[str, Any] = {"run": str(run_dir), "threshold": threshold}
    cosines = read_cosines(run_dir, required=lookahead is None)
    tasks: list[str] = []
    if cosines is not None:
        tasks, mean, share, lines = cosines
        result.update(log_lines=lines, tasks=tasks, cosine=_rounded(mean), negative_share=_rounded(share),
                      groups=[[tasks[i] for i in g] for g in group_tasks(mean, threshold)])  # fmt: skip
    if lookahead is not None:
        names, z, used = lookahead_affinity(run_dir, **lookahead)
        if tasks and names != tasks:
            raise T2TError(f"the logged cosines are over {', '.join(tasks)} but the run's mixture trains "
                           f"{', '.join(names)}", Where(file=run_dir / "metrics.jsonl"))  # fmt: skip
        result.update(tasks=names, lookahead=_rounded(z), lookahead_checkpoints=used,
                      groups=[[names[i] for i in g] for g in group_tasks((z + z.T) / 2, threshold)])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "affinity.json", json.dumps(result, indent=2) + "\n")
    if "cosine" in result:
        _plot(tasks, mean, out / "affinity.png", f"task affinity ({lines} log lines)", "mean gradient cosine")
    if lookahead is not None:
        _plot(result["tasks"], z, out / "lookahead.png", f"lookahead affinity, row helps column ({len(used)} "
              "checkpoints)", "1 - L_col(after a step on row) / L_col")  # fmt: skip
    return result


def lookahead_affinity(run_dir: Path, registry: Registry, batch_size: int = 32,
                       lr: float | None = None) -> tuple[list[str], np.ndarray, list[str]]:  # fmt: skip
    """(tasks, Z, checkpoints used): TAG's lookahead affinity Z[i, j] averaged over the run's complete
    checkpoints (or its exported model when none is kept), on `batch_size` training rows of each task spread over
    the mixture's templates; the lookahead step size is `lr`, default the run's learning rate."""
    import torch

    from t2t.adapters import load_adapters
    from t2t.checkpoint import CHECKPOINTS, RUN_STATE
    from t2t.mixtures import load_mixture
    from t2t.modeling import load_model
    from t2t.tokenizer import load_tokenizer
    from t2t.train_config import load_train_config

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise T2TError("--lookahead needs the run's config.yaml: give a t2t run folder", Where(file=run_dir))
    config = load_train_config(config_path)
    mixture = load_mixture(registry, config.mixture, sizes="skip")
    tasks = mixture.task_names
    folders = sorted(p / "model" for p in (run_dir / CHECKPOINTS).glob("step_*") if (p / RUN_STATE).is_file())
    if not folders and (run_dir / "model").is_dir():
        folders = [run_dir / "model"]
    if not folders:
        raise T2TError("the run has no checkpoint or exported model to measure", Where(file=run_dir))
    step = lr if lr is not None else config.optimizer.lr
    total = np.zeros((len(tasks), len(tasks)))
    torch.manual_seed(config.seed)
    for folder in folders:
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        load_adapters(model, folder)
        batches = {t: _task_batch(registry.task(t), mixture, tokenizer, config, batch_size) for t in tasks}
        total += _lookahead(model.eval(), tasks, batches, step)
    return (
        tasks,
        total / len(folders),
        [f.parent.name if f.parent.name != run_dir.name else "model" for f in folders],
    )


def _task_batch(task: Any, mixture: Any, tokenizer: Any, config: Any, batch_size: int) -> dict:
    """A padded batch of the task's first training rows (t2t eval's row selection), row k under the mixture's
    template k mod n, encoded under the run's limits."""
    from t2t.batching import Example
    from t2t.encoding import encode_texts
    from t2t.sources import load_split, select_rows

    split = mixture.spec.splits.train
    data = load_split(task, split)
    picks = select_rows(task.name, split, len(data), batch_size).tolist()
    columns = data.rows.select(picks)[:]
    templates = mixture.templates_of(task.name)
    rendered = []
    for k, index in enumerate(picks):
        row = {f: columns[f][k] for f in columns}
        example = task.try_render(row, templates[k % len(templates)], split, int(data.source_rows[index]))
        if example is not None:
            rendered.append(example)
    if not rendered:
        raise T2TError(f"no {split} row renders under the mixture's templates",
                       Where(file=task.spec.path, task=task.name, split=split))  # fmt: skip
    inputs, _ = encode_texts(tokenizer, [e.inputs for e in rendered], config.max_input_tokens)
    labels, _ = encode_texts(tokenizer, [e.targets for e in rendered], config.max_target_tokens)
    examples = [Example(i, t, 0) for i, t in zip(inputs, labels, strict=True) if i and t]
    return {"examples": examples, "pad": tokenizer.pad_token_id}


def _lookahead(model: Any, tasks: list[str], batches: dict, step: float) -> np.ndarray:
    """Z[i, j] = 1 - L_j(theta - step * grad L_i) / L_j(theta) on the shared (non-adapter) parameters."""
    import torch

    from t2t.adapters import route_task
    from t2t.batching import pad_batch
    from t2t.encoding import decoder_start_id
    from t2t.modeling import loss_sums

    start = decoder_start_id(model.config)
    tensors = {t: pad_batch(b["examples"], b["pad"], start).tensors for t, b in batches.items()}
    shared = [p for n, p in model.named_parameters() if not n.endswith(("lora_A", "lora_B"))]

    def loss(task: str) -> torch.Tensor:
        with route_task(model, task):
            sums = loss_sums(model, tensors[task], 1)
        return sums.loss / sums.tokens

    with torch.no_grad():
        before = np.array([float(loss(t)) for t in tasks])
    z = np.zeros((len(tasks), len(tasks)))
    for i, task in enumerate(tasks):
        grads = torch.autograd.grad(loss(task), shared, allow_unused=True)
        saved = [p.detach().clone() for p in shared]
        with torch.no_grad():
            for p, g in zip(shared, grads, strict=True):
                if g is not None:
                    p.sub_(step * g)
            after = np.array([float(loss(t)) for t in tasks])
            for p, original in zip(shared, saved, strict=True):
                p.copy_(original)
        z[i] = 1.0 - after / before
    return z


def _plot(tasks: list[str], mean: np.ndarray, path: Path, title: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.55 * len(tasks) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    cosine = (
        label == "mean gradient cosine"
    )  # in [-1, 1]; lookahead values are small: scaled to their largest
    scale = 1.0 if cosine or not np.isfinite(mean).any() else max(float(np.nanmax(np.abs(mean))), 1e-12)
    image = ax.imshow(np.ma.masked_invalid(mean), cmap="RdBu", vmin=-scale, vmax=scale)
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if not np.isnan(mean[i, j]):
                ax.text(j, i, f"{mean[i, j]:.2f}" if cosine else f"{mean[i, j]:.1e}", ha="center", va="center",
                        fontsize=6 if not cosine else 7)  # fmt: skip
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
