"""The balancing methods side by side on the demo mixture, same budget: scores, transfer, held-out, cost.

    python bench/mtl.py [--steps 600] [--max-examples 100] [--out runs/bench_mtl]

Packed batches (tasks mix within a micro-batch, where the per-micro-batch methods weigh them). The single-task
baselines are trained once (t2t compare's, same size and budget), then one mixture run per method. Per method:
mean score over the training tasks (median over templates each), mean delta against the single-task baselines
with a 95% bootstrap interval over rows (pooled over tasks), tasks with negative transfer (interval below 0),
the held-out tasks' mean, and the time per step relative to `equal`. `adapters` is `equal` with LoRA adapters per
cluster (sharing.mode=adapters). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from t2t.compare import _one_seed, _rows, _scores, run_config
from t2t.evaluation import Scored, delta_interval
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.train import Run

METHODS = [
    "equal",
    "uncertainty",
    "dwa",
    "pcgrad",
    "cagrad",
    "mgda",
    "gradnorm",
    "rlw",
    "gls",
    "famo",
    "adapters",
]
# "adapters": equal balancing, LoRA adapters per cluster on the trained backbone (soft sharing)
ADAPTERS = {"mode": "adapters", "per": "cluster", "r": 8, "alpha": 16}
PACKED = {"strategy": "packed", "rows_per_batch": 32, "pack_input_tokens": 128, "pack_target_tokens": 32,
          "window_examples": 2048, "batch_size": None, "max_tokens": None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mtl"))
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    base = run_config("demo", args.out / "base", args.steps, 0)
    update = {"batching": base.batching.model_validate({**base.batching.model_dump(), **PACKED})}
    rows = {}
    started = time.perf_counter()
    _, singles, _ = _one_seed(
        mixture, args.out / "singles", args.steps, args.max_examples, registry, 0, update
    )
    single_minutes = (time.perf_counter() - started) / 60
    tasks, held = mixture.task_names, list(mixture.held_out)
    n_rows = {t: _rows(registry, t, mixture.spec.splits.eval, args.max_examples) for t in tasks}
    for method in args.methods:
        config = run_config("demo", args.out / method, args.steps, 0, update)
        if method == "adapters":
            config = config.model_copy(update={"sharing": config.sharing.model_validate(ADAPTERS)})
        else:
            config = config.model_copy(
                update={"balancing": config.balancing.model_copy(update={"method": method})}
            )
        run = Run(config, registry)
        run.fit()
        logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()][1:]  # after warm-up
        throughput = float(np.mean([r["tokens_per_s"] for r in logged]))  # packed: fixed tokens per step
        scores = _scores(run, registry, [*tasks, *held], args.max_examples)
        deltas = {
            t: delta_interval([scores[t]], [singles[t]], n_rows[t], keyed_rng("bench", method, t))
            for t in tasks
        }
        pooled = _pooled(
            [scores[t] for t in tasks], [singles[t] for t in tasks], [n_rows[t] for t in tasks], method
        )
        rows[method] = {
            "seen": float(np.mean([scores[t].median for t in tasks])),
            "delta": pooled,
            "negative": sorted(t for t, (_, _, high) in deltas.items() if high < 0),
            "held_out": float(np.mean([scores[t].median for t in held])),
            "tokens_per_s": throughput,
        }
        print(method, rows[method], flush=True)
    equal = rows.get("equal", {}).get("tokens_per_s")
    print(f"\nsingle-task baselines: {len(tasks)} runs, {single_minutes:.1f} minutes")
    print(
        "| method | seen tasks (mean score) | mean delta vs single [95% interval] | negative transfer | held-out mean | time per step |"
    )
    print("|---|---:|---|---|---:|---:|")
    for method, r in rows.items():
        point, low, high = r["delta"]
        cost = f"{equal / r['tokens_per_s']:.2f}x" if equal else f"{r['tokens_per_s']:,.0f} tok/s"
        print(f"| {method} | {r['seen']:.1f} | {point:+.1f} [{low:+.1f}, {high:+.1f}] | {len(r['negative'])} "
              f"({', '.join(r['negative']) or '-'}) | {r['held_out']:.1f} | {cost} |")  # fmt: skip


def _pooled(mixed: list[Scored], single: list[Scored], n_rows: list[int], method: str,
            samples: int = 1000) -> tuple[float, float, float]:  # fmt: skip
    """Mean over tasks of the deltas, with a bootstrap that resamples each task's rows."""
    rng = keyed_rng("bench-pooled", method)

    def median(scored: Scored, rows: np.ndarray) -> float:
        return float(np.median([sample(rows) for sample in scored.samplers.values()]))

    point = float(np.mean([m.median - s.median for m, s in zip(mixed, single, strict=True)]))
    values = []
    for _ in range(samples):
        per_task = []
        for m, s, n in zip(mixed, single, n_rows, strict=True):
            rows = rng.integers(0, n, size=n)
            per_task.append(median(m, rows) - median(s, rows))
        values.append(float(np.mean(per_task)))
    return point, float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


if __name__ == "__main__":
    main()
