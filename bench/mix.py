"""What keeping the task mix per batch does to per-task scores, at the same budget.

    python bench/mix.py [--steps 600] [--max-examples 100] [--out runs/bench_mix]

The demo mixture, model and learning rate (t2t compare's config), one seed, about the same token slots per step
(2,048): length-bucketed padded batches, padded with `keep_mix` (at the same steps, and at twice the steps: about
the real tokens of the others, since its batches pad short tasks to long ones), and the default (`strategy: auto`:
packed rows for a T5). Per strategy: the task mix distance of its first 200 batches, real tokens seen, the mean
score over the training tasks (median over templates each) with each task's score, and the held-out mean. Run it
alone on the machine.
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

PADDED = {"strategy": "padded", "max_tokens": 2048, "batch_size": None}
STRATEGIES = {  # name: (batching, steps as a multiple of --steps)
    "padded (bucketed)": ({**PADDED, "keep_mix": False}, 1),
    "padded, keep_mix": ({**PADDED, "keep_mix": True}, 1),
    "padded, keep_mix, 2x steps": ({**PADDED, "keep_mix": True}, 2),
    "default (auto: packed)": (
        {"strategy": "auto", "max_tokens": 2048, "batch_size": None, "keep_mix": False},
        1,
    ),
}


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
    for index, (name, (batching, factor)) in enumerate(STRATEGIES.items()):
        config = run_config("demo", args.out / f"run{index}", args.steps * factor, 0)
        config = config.model_copy(
            update={
                "batching": config.batching.model_validate(
                    {**config.batching.model_dump(exclude_unset=True), **batching}
                )
            }
        )
        run = Run(config, registry)
        first = list(itertools.islice(iter(run.loader), 200))
        distance = task_mix_distance(first, len(tasks))
        run.loader.state = type(run.loader.state)()  # back to the stream's start: training sees those batches
        run.fit()
        scores = _scores(run, registry, [*tasks, *held], args.max_examples)
        rows[name] = {
            "distance": distance,
            "steps": run.state.step,
            "chosen": run.loader.config.strategy,
            "tokens": run.state.tokens_seen,
            "seen": float(np.mean([scores[t].median for t in tasks])),
            "held_out": float(np.mean([scores[t].median for t in held])),
            "tasks": {t: scores[t].median for t in tasks},
        }
        print(name, rows[name], flush=True)
    print(
        "\n| batching | chosen | steps | task mix distance | real tokens seen | seen tasks (mean) | held-out mean |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['chosen']} | {r['steps']} | {r['distance']:.2f} | {r['tokens'] / 1e6:.2f}M | {r['seen']:.1f} | {r['held_out']:.1f} |"
        )
    print("\n| task | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for task in tasks:
        print(f"| {task} | " + " | ".join(f"{r['tasks'][task]:.1f}" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
