"""`t2t compare`: the mixture model against single-task baselines, to catch negative transfer.

The mixture is trained once; then, for each training task, a model of the same size is trained on that task
alone with the example budget the mixture gave it (its probability times the mixture's examples), using the
mixture run's tokenizer. Both are evaluated on the task under every template; the report gives per task the
mixture-minus-single delta of the median over templates, flags negative transfer (delta below -margin), and the
mean delta.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from t2t.demo import demo_config
from t2t.evaluation import evaluate
from t2t.fileio import atomic_write_text
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.train import Run


def _train(config, registry: Registry) -> Run:
    run = Run(config, registry)
    run.fit()
    return run


def _scores(run: Run, registry: Registry, tasks: list[str], max_examples: int) -> dict[str, float]:
    model = run.accelerator.unwrap_model(run.model).model
    report, _ = evaluate(model, run.tokenizer, registry, tasks, set(),
                         run.eval_config(max_examples))  # fmt: skip
    return {name: info["summary"]["median"] for name, info in report["tasks"].items()}


def compare(
    mixture_name: str, out: Path, steps: int, max_examples: int, margin: float, registry: Registry
) -> dict:
    mixture = load_mixture(registry, mixture_name)
    print(f"mixture run: {mixture_name}, {steps} steps")
    config = demo_config(out / "mixture", steps).model_copy(update={"mixture": mixture_name, "trackers": []})
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
    rows = []
    for member in mixture.members:
        budget = member.probability * mixed.state.examples_seen
        single_steps = max(1, math.ceil(budget / examples_per_step))
        name = f"single_{member.task}"
        print(f"single-task run: {member.task}, {single_steps} steps (~{budget:,.0f} examples)")
        single_config = config.model_copy(update={
            "run_dir": out / "single" / member.task, "mixture": name, "steps": single_steps,
            "tokenizer": config.tokenizer.model_copy(update={"pretrained": str(out / "mixture" / "tokenizer"),
                                                             "vocab_size": None}),
            "log_every_steps": max(1, single_steps // 5), "schedule": config.schedule.model_copy(
                update={"warmup_steps": max(1, single_steps // 20)}),
        })  # fmt: skip
        single = _train(single_config, single_registry)
        single_score = _scores(single, single_registry, [member.task], max_examples)[member.task]
        delta = mixed_scores[member.task] - single_score
        rows.append({"task": member.task, "examples": round(budget), "mixture": mixed_scores[member.task],
                     "single": single_score, "delta": delta, "negative_transfer": delta < -margin})  # fmt: skip
    result = {"mixture": mixture_name, "steps": steps, "margin": margin, "tasks": rows,
              "mean_delta": sum(r["delta"] for r in rows) / len(rows)}  # fmt: skip
    atomic_write_text(out / "compare.md", compare_markdown(result))
    plot_deltas(result, out / "compare.png")
    return result


def compare_markdown(result: dict) -> str:
    lines = [f"# Mixture `{result['mixture']}` against single-task baselines", "",
             f"Median over templates of each task's score ([0, 100]); single-task models have the mixture model's "
             f"size and the example budget the mixture gave the task. Negative transfer: delta < -{result['margin']:g}.",
             "", "| task | examples | mixture | single | delta | |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["tasks"]:
        flag = "negative transfer" if r["negative_transfer"] else ""
        lines.append(f"| {r['task']} | {r['examples']:,} | {r['mixture']:.1f} | {r['single']:.1f} | "
                     f"{r['delta']:+.1f} | {flag} |")  # fmt: skip
    lines += ["", f"Mean delta: {result['mean_delta']:+.1f} points over {len(result['tasks'])} tasks."]
    return "\n".join(lines) + "\n"


def plot_deltas(result: dict, out_path: Path) -> Path:
    from t2t.plots import plt

    rows = result["tasks"]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    ax.bar(range(len(rows)), [r["delta"] for r in rows],
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
