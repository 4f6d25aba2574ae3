"""`t2t demo`: the whole pipeline on the demo mixture, offline, on a CPU in minutes.

It prints the mixture's dry run, trains a SentencePiece tokenizer on the mixture's text, trains a tiny T5 on the
training tasks, evaluates the training tasks and the held-out ones (zero-shot) under every template, and writes
a run dir with the model (plain HF dir), the metrics, the loss curves and a Markdown report.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

from t2t.evaluation import evaluate
from t2t.fileio import atomic_write_text
from t2t.mixtures import load_mixture, report
from t2t.registry import Registry
from t2t.reports import evaluation_markdown, print_evaluation, print_mixture_report, save_evaluation
from t2t.train import Run
from t2t.train_config import TrainConfig

MIXTURE = "demo"


def demo_config(run_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "run_dir": str(run_dir), "mixture": MIXTURE,
        "model": {"tiny": {"d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 256}},
        "tokenizer": {"vocab_size": 2000, "rows_per_task": 1000},
        "max_input_tokens": 96, "max_target_tokens": 24,
        "batching": {"strategy": "auto", "max_tokens": 2048, "batch_size": None, "window_examples": 2048},
        "steps": steps, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "linear", "warmup_steps": max(1, steps // 20)},
        "log_every_steps": max(1, steps // 30), "save_every_steps": None, "keep_checkpoints": 1,
        "trackers": ["tensorboard"], "seed": 0,
    })  # fmt: skip


def run_demo(out: Path, steps: int, max_examples: int, registry: Registry) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = datetime.datetime.now(datetime.UTC)
    mixture = load_mixture(registry, MIXTURE)
    print("1/4  the demo mixture (dry run)")
    plan = report(mixture, registry, steps=steps, batch_size=90)
    print_mixture_report(plan)
    print("2/4  tokenizer and training")
    run = Run(demo_config(out, steps), registry)
    run.fit()
    print("3/4  evaluation: training tasks and held-out tasks (zero-shot), every template")
    model = run.accelerator.unwrap_model(run.model).model
    tasks = [*mixture.task_names, *mixture.held_out]
    results, records = evaluate(model, run.tokenizer, registry, tasks, set(mixture.held_out),
                                run.eval_config(max_examples))  # fmt: skip
    results["model"] = str(out / "model")
    paths = save_evaluation(results, records, out / "eval")
    print("4/4  report")
    minutes = (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60
    report_path = out / "report.md"
    atomic_write_text(report_path, _report(results, plan, run, minutes, started))
    print_evaluation(results)
    for line in results["warnings"]:
        print(f"warning: {line}")
    print(f"\nrun dir        {out}")
    print(f"report         {report_path}")
    print(f"model          {out / 'model'}   (AutoModelForSeq2SeqLM.from_pretrained)")
    print(f"loss curves    {out / 'loss_curves.png'}")
    print(f"scores         {paths['plot']}   results {paths['json']}")
    print(f"predictions    {paths['predictions']}")
    print(f"took {minutes:.1f} minutes")
    print(f"serve it       t2t serve --model {out / 'model'} --mixture {MIXTURE}   (docs/serving.md)")
    return {"results": results, "report": report_path, "minutes": minutes}


def _report(results: dict, plan: dict, run: Run, minutes: float, started: datetime.datetime) -> str:
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    first, last = records[0], records[-1]
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        "# t2t demo", "",
        f"{started:%Y-%m-%d %H:%M} UTC, {machine}, {minutes:.1f} minutes. A tiny T5 (d_model 128, 2 + 2 layers, "
        f"{sum(p.numel() for p in run.accelerator.unwrap_model(run.model).model.parameters()) / 1e6:.2f}M parameters) "
        f"trained for {run.state.step} steps ({run.state.examples_seen:,} examples, {run.state.tokens_seen:,} "
        f"tokens) on {plan['training_tasks']} tasks of the `demo` mixture; {plan['held_out_tasks']} tasks of "
        "clusters it never trains on are held out and evaluated zero-shot.", "",
        f"Training loss (mean per token): {first['loss']:.3f} at step {first['step']} -> {last['loss']:.3f} at "
        f"step {last['step']}.", "",
        "![loss curves](loss_curves.png)", "", "![scores](eval/scores.png)", "",
    ]  # fmt: skip
    body = evaluation_markdown(results).split("\n", 2)[2]  # drop its title
    return "\n".join(lines) + "\n" + body
