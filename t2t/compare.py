"""`t2t compare`: the mixture model against single-task baselines, to catch negative transfer.

For each of `seeds` seeds the mixture is trained; then, for each training task, a model of the same size is
trained on that task alone with the example budget the mixture gave it (its probability times the mixture's
examples), using the mixture run's tokenizer. Both are evaluated on the task under every template. Per task the
delta is the mixture-minus-single median over templates, averaged over seeds, with a 95% percentile-bootstrap
interval that resamples the evaluation rows (the same rows for both models) and the seeds. Negative transfer is
flagged only when the whole interval lies below -margin (margin 0 by default): one seed's noise on a hundred
rows does not make a flag.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from t2t.demo import demo_config
from t2t.errors import T2TError
from t2t.evaluation import Scored, delta_samples, evaluate_task, scored_tasks
from t2t.fileio import atomic_write_text
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.train import Run


def _train(config, registry: Registry) -> Run:
    run = Run(config, registry)
    run.fit()
    return run


def _scores(run: Run, registry: Registry, tasks: list[str], max_examples: int) -> dict[str, Scored]:
    model = run.accelerator.unwrap_model(run.model).model
    model.eval()
    scores = {}
    for name in scored_tasks(registry, tasks):
        result = evaluate_task(model, run.tokenizer, registry.task(name), run.eval_config(max_examples))
        scores[name] = Scored(result.summary["median"], result.samplers)
    return scores


def compare(mixture_name: str, out: Path, steps: int, max_examples: int, margin: float, registry: Registry,
            seeds: int = 1) -> dict:  # fmt: skip
    mixture = load_mixture(registry, mixture_name)
    if not scored_tasks(registry, [m.task for m in mixture.members]):  # before any training
        raise T2TError(
            f"mixture {mixture_name}: every member is a span-corruption task; there is nothing to compare"
        )
    mixed_runs, single_runs, budgets = [], [], {}
    for seed in range(seeds):
        mixed, singles, budgets = _one_seed(mixture, out / f"seed_{seed}" if seeds > 1 else out, steps,
                                            max_examples, registry, seed)  # fmt: skip
        mixed_runs.append(mixed)
        single_runs.append(singles)
    rows, replicates = [], []
    for task in scored_tasks(registry, [m.task for m in mixture.members]):
        n_rows = _rows(registry, task, mixture.spec.splits.eval, max_examples)
        point, deltas = delta_samples([m[task] for m in mixed_runs], [s[task] for s in single_runs], n_rows,
                                      keyed_rng("compare", mixture_name, task))  # fmt: skip
        low, high = (float(np.percentile(deltas, q)) for q in (2.5, 97.5))
        replicates.append(deltas)
        rows.append({"task": task, "examples": round(budgets[task]),
                     "mixture": float(np.mean([m[task].median for m in mixed_runs])),
                     "single": float(np.mean([s[task].median for s in single_runs])),
                     "delta": point, "ci_low": low, "ci_high": high,
                     "negative_transfer": high < -margin, "positive_transfer": low > margin})  # fmt: skip
    # the mean delta's interval: replicate b of every task (each resampled its own rows) averaged over tasks
    means = np.mean(replicates, axis=0)
    result = {"mixture": mixture_name, "steps": steps, "margin": margin, "seeds": seeds, "tasks": rows,
              "mean_delta": sum(r["delta"] for r in rows) / len(rows),
              "mean_ci_low": float(np.percentile(means, 2.5)), "mean_ci_high": float(np.percentile(means, 97.5))}  # fmt: skip
    atomic_write_text(out / "compare.md", compare_markdown(result))
    plot_deltas(result, out / "compare.png")
    return result


def _rows(registry: Registry, task: str, split: str, max_examples: int) -> int:
    from t2t.sources import load_split, select_rows

    data = load_split(registry.task(task), split)
    return len(select_rows(task, split, len(data), max_examples))


def run_config(mixture_name: str, run_dir: Path, steps: int, seed: int, update: dict | None = None):
    """The demo's training config for a mixture run of t2t compare (and bench/mtl.py), with `update` applied."""
    return demo_config(run_dir, steps).model_copy(
        update={"mixture": mixture_name, "trackers": [], "seed": seed, **(update or {})}
    )


def _one_seed(mixture, out: Path, steps: int, max_examples: int, registry: Registry, seed: int,
              update: dict | None = None) -> tuple[dict, dict, dict]:  # fmt: skip
    """The mixture run and the single-task runs of one seed: their scores, and each task's example budget."""
    print(f"mixture run: {mixture.name}, {steps} steps, seed {seed}")
    config = run_config(mixture.name, out / "mixture", steps, seed, update)
    mixed = _train(config, registry)
    mixed_scores = _scores(mixed, registry, mixture.task_names, max_examples)
    examples_per_step = mixed.state.examples_seen / mixed.state.step
    mixtures_dir = out / "single_mixtures"
    mixtures_dir.mkdir(parents=True, exist_ok=True)
    for (
        member
    ) in mixture.members:  # one single-task mixture per training task, written before the registry scans
        spec = {"name": f"single_{member.task}", "members": {member.task: None},
                "splits": mixture.spec.splits.model_dump(), "seed": mixture.spec.seed}  # fmt: skip
        (mixtures_dir / f"single_{member.task}.yaml").write_text(yaml.safe_dump(spec))
    single_registry = Registry(registry.template_dirs, [*registry.mixture_dirs, mixtures_dir])
    single_scores, budgets = {}, {}
    for member in mixture.members:
        if member.task not in mixed_scores:  # span corruption: trained in the mixture, nothing to compare
            continue
        budget = budgets[member.task] = member.probability * mixed.state.examples_seen
        single_steps = max(1, math.ceil(budget / examples_per_step))
        name = f"single_{member.task}"
        print(f"single-task run: {member.task}, {single_steps} steps (~{budget:,.0f} examples), seed {seed}")
        single_config = config.model_copy(update={
            "run_dir": out / "single" / member.task, "mixture": name, "steps": single_steps,
            "tokenizer": config.tokenizer.model_copy(update={"pretrained": str(out / "mixture" / "tokenizer"),
                                                             "vocab_size": None}),
            "log_every_steps": max(1, single_steps // 5), "schedule": config.schedule.model_copy(
                update={"warmup_steps": max(1, single_steps // 20)}),
        })  # fmt: skip
        single = _train(single_config, single_registry)
        single_scores[member.task] = _scores(single, single_registry, [member.task], max_examples)[
            member.task
        ]
    return mixed_scores, single_scores, budgets


def compare_markdown(result: dict) -> str:
    seeds = result["seeds"]
    lines = [f"# Mixture `{result['mixture']}` against single-task baselines", "",
             f"Median over templates of each task's score ([0, 100]), mean over {seeds} seed(s); single-task models "
             "have the mixture model's size and the example budget the mixture gave the task. The interval is a 95% "
             f"bootstrap over evaluation rows{' and seeds' if seeds > 1 else ''}; negative transfer: the whole "
             f"interval below {0.0 - result['margin']:g}.",
             "", "| task | examples | mixture | single | delta | 95% interval | |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["tasks"]:
        flag = {(True, False): "negative transfer", (False, True): "positive transfer"}.get(
            (r["negative_transfer"], r["positive_transfer"]), ""
        )
        lines.append(f"| {r['task']} | {r['examples']:,} | {r['mixture']:.1f} | {r['single']:.1f} | "
                     f"{r['delta']:+.1f} | [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | {flag} |")  # fmt: skip
    lines += [
        "",
        f"Mean delta: {result['mean_delta']:+.1f} points [{result['mean_ci_low']:+.1f}, "
        f"{result['mean_ci_high']:+.1f}] over {len(result['tasks'])} tasks; positive transfer (the whole "
        f"interval above {result['margin']:g}) on {sum(r['positive_transfer'] for r in result['tasks'])}, "
        f"negative on {sum(r['negative_transfer'] for r in result['tasks'])}.",
    ]
    return "\n".join(lines) + "\n"


def plot_deltas(result: dict, out_path: Path) -> Path:
    from t2t.plots import plt

    rows = result["tasks"]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    deltas = [r["delta"] for r in rows]
    errors = [[r["delta"] - r["ci_low"] for r in rows], [r["ci_high"] - r["delta"] for r in rows]]
    ax.bar(range(len(rows)), deltas, yerr=errors, capsize=3,
           color=["#c44e52" if r["negative_transfer"] else "#55a868" for r in rows])  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(-result["margin"], color="#c44e52", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(rows)), [r["task"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("mixture - single (points)")
    ax.set_title(f"transfer in mixture {result['mixture']} (red: negative transfer)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
