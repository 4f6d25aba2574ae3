"""What keeping the task mix per batch does to per-task scores, at the same budget.

    python bench/mix.py [--steps 600] [--max-examples 100] [--out runs/bench_mix]

The demo mixture and model, one seed, the same number of optimizer steps and about the same token slots per step
(2,048): length-bucketed padded batches (the demo's default), padded with `keep_mix`, and packed rows (16 x 128).
Per strategy: the task mix distance of its first 200 batches, real tokens seen, the mean score over the training
tasks (median over templates each) with each task's score, and the held-out mean. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from t2t.batching import task_mix_distance
from t2t.compare import _scores, run_config
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.train import Run

STRATEGIES = {
    "padded (bucketed)": {"strategy": "padded", "max_tokens": 2048, "batch_size": None, "keep_mix": False},
    "padded, keep_mix": {"strategy": "padded", "max_tokens": 2048, "batch_size": None, "keep_mix": True},
    "packed (16 x 128)": {"strategy": "packed", "rows_per_batch": 16, "pack_input_tokens": 128,
                          "pack_target_tokens": 32, "batch_size": None, "max_tokens": None, "keep_mix": False},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mix"))
    args = parser.parse_args()
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    tasks, held = mixture.task_names, list(mixture.held_out)
    rows = {}
    for name, batching in STRATEGIES.items():
        config = run_config(
            "demo",
            args.out / (name.split()[0].strip(",") + ("_mix" if "keep" in name else "")),
            args.steps,
            0,
        )
        config = config.model_copy(
            update={"batching": config.batching.model_validate({**config.batching.model_dump(), **batching})}
        )
        run = Run(config, registry)
        first = list(itertools.islice(iter(run.loader), 200))
        distance = task_mix_distance(first, len(tasks))
        run.loader.state = type(run.loader.state)()  # back to the stream's start: training sees those batches
        run.fit()
        scores = _scores(run, registry, [*tasks, *held], args.max_examples)
        rows[name] = {
            "distance": distance,
            "tokens": run.state.tokens_seen,
            "seen": float(np.mean([scores[t].median for t in tasks])),
            "held_out": float(np.mean([scores[t].median for t in held])),
            "tasks": {t: scores[t].median for t in tasks},
        }
        print(name, rows[name], flush=True)
    print("\n| batching | task mix distance | real tokens seen | seen tasks (mean) | held-out mean |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['distance']:.2f} | {r['tokens'] / 1e6:.2f}M | {r['seen']:.1f} | {r['held_out']:.1f} |"
        )
    print("\n| task | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for task in tasks:
        print(f"| {task} | " + " | ".join(f"{r['tasks'][task]:.1f}" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
