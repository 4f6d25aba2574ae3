"""Training throughput: `t2t train` (its default batching, and each strategy) vs HF Seq2SeqTrainer, whole loop.

    python bench/train_throughput.py [--profile demo|long-tail|many-long] [--examples 12800] [--tokenizer DIR] [--rounds 3] [--ablate]
    python bench/train_throughput.py --mixture NAME [--limits 512 64] [--examples N] [--rounds 3]

All runs train the same tiny T5 (d_model 128, 2 layers, fp32, 2 threads) with AdamW on the same mixture stream:
HF with DataCollatorForSeq2Seq and 64 examples per step (random order, padded to the longest), t2t with its
default (`strategy: auto`: packed rows for a T5), with length-bucketed padded batches and with padded batches that
keep the task mix, each with a token budget of about 64 examples. The whole training loop is timed (optimizer,
logging and t2t's final checkpoint included; encoding is set-up for both, before the timers). Printed: real
(non-pad) tokens per second and the ratios to HF; also the mean task-mix distance of t2t's batches. Each trainer
runs in a fresh process of its own, one after the other, in rounds (the machine's speed drifts between minutes):
each ratio to HF is taken within a round, and the median over the rounds is printed with each round's.

Profiles: `demo`, the demo mixture (short examples: 19 input and 3 target tokens on average); `long-tail`, a
mixture of generated tasks where most examples are short (classification-like: 8-40 input words, 1-2 target
words) and one in ten is long (150-400 input words, 20-60 target words), as summarisation and QA mix with
classification; `many-long`, a third of the examples 400-900-word documents with 100-200-word summaries (cut at
512 + 128 tokens) beside classification and short QA. Or your own: `--mixture NAME`, any mixture t2t knows (your
task and mixture folders in $T2T_TEMPLATES_PATH and $T2T_MIXTURES_PATH, as for `t2t`), cut at `--limits` input
and target tokens (default 512 64), with a tokenizer trained on its text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from _common import demo_tokenizer_dir, local_mixture
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from t2t.batching import task_mix_distance
from t2t.data import MixtureData
from t2t.encoding import Limits
from t2t.errors import T2TError
from t2t.mixtures import load_mixture
from t2t.modeling import build_tiny_t5
from t2t.registry import Registry
from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer
from t2t.train import Run
from t2t.train_config import TinyModelSpec, TrainConfig

HF_BATCH = 64
SIZE = {"d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 256}
LIMITS = {"demo": (128, 32), "long-tail": (512, 64), "many-long": (512, 128)}


def long_tail_mixture(folder: Path) -> Registry:
    """Four short tasks and one long one (a tenth of the stream), as local jsonl files; a registry that has them."""
    tasks = {f"short_{k}": (8, 40, 1, 2) for k in range(4)} | {"long_summary": (150, 400, 20, 60)}
    # 1 / (1 + 4 * 2.25) = one in ten
    members = {name: 1.0 if name == "long_summary" else 2.25 for name in tasks}
    return local_mixture(
        folder, "long_tail", "most examples short, one in ten long", tasks, members, rows=3000
    )


def many_long_mixture(folder: Path) -> Registry:
    """Classification, short QA and summarisation at equal rates: a third of the examples 400-900-word documents
    with 100-200-word summaries."""
    tasks = {"classify": (2, 5, 1, 1), "qa": (30, 60, 1, 5), "summarise": (400, 900, 100, 200)}
    return local_mixture(folder, "many_long", "a third of the examples long documents", tasks,
                         dict.fromkeys(tasks, 1.0), rows=500)  # fmt: skip


BUILDERS = {"long-tail": (long_tail_mixture, "long_tail"), "many-long": (many_long_mixture, "many_long")}


def hf_run(examples, tokenizer, steps: int) -> float:
    model = build_tiny_t5(TinyModelSpec(**SIZE), tokenizer)
    dataset = datasets.Dataset.from_dict({"input_ids": [list(e.input_ids) for e in examples],
                                          "labels": [list(e.labels) for e in examples]})  # fmt: skip
    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=HF_BATCH, max_steps=steps, learning_rate=3e-3,
        logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"))  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def t2t_run(tokenizer_dir: Path, run_dir: Path, registry: Registry, mixture: str, limits: tuple[int, int],
            steps: int, batching: dict) -> tuple[float, int, str, float]:  # fmt: skip
    config = TrainConfig.model_validate({
        "run_dir": str(run_dir), "mixture": mixture, "model": {"tiny": SIZE},
        "tokenizer": {"pretrained": str(tokenizer_dir)}, "max_input_tokens": limits[0], "max_target_tokens": limits[1],
        "batching": {"batch_size": None, "window_examples": 2048, **batching},
        "steps": steps, "optimizer": {"lr": 3e-3}, "log_every_steps": 10_000, "trackers": [],
    })  # fmt: skip
    run = Run(config, registry)
    # encoding is set-up, as HF's dataset is built before its timer: the windows the run draws, encoded now
    windows = [run.loader.window_batches(w) for w in range(steps * HF_BATCH // 2048 + 2)]
    batches = [b for window in windows for b in window][:steps]
    mix = task_mix_distance(batches, len(run.tasks))
    start = time.perf_counter()
    run.fit()
    return time.perf_counter() - start, run.state.tokens_seen, run.loader.config.strategy, mix


ROWS = {
    "hf": "HF Seq2SeqTrainer + collator",
    "default": "t2t train, default (auto)",
    "padded": "t2t train, padded (bucketed)",
    "keep-mix": "t2t train, padded, keep_mix",
}
BATCHING = {
    "default": {},
    "padded": {"strategy": "padded"},
    "keep-mix": {"strategy": "padded", "keep_mix": True},
}


def profile_mixture(args: argparse.Namespace, work: Path) -> tuple[Registry, str]:
    if args.mixture:
        return Registry.default(), args.mixture
    if args.profile == "demo":
        return Registry.default(), "demo"
    build, mixture_name = BUILDERS[args.profile]
    return build(work / mixture_name), mixture_name


def one_row(args: argparse.Namespace, work: Path) -> dict:
    """One trainer's run in this process (a fresh one per row: a trainer run earlier in the same process leaves
    its heap and threads behind, and slowed the next by up to a third here)."""
    registry, mixture_name = profile_mixture(args, work)
    tokenizer_dir = work / "tok"
    limits = tuple(args.limits) if args.mixture else LIMITS[args.profile]
    tokenizer = load_tokenizer(tokenizer_dir)
    data = MixtureData(load_mixture(registry, mixture_name), registry, tokenizer, Limits(*limits),
                       cache_dir=Path(tempfile.mkdtemp()) / "cache")  # fmt: skip
    items = list(data.stream.items(0, args.examples))
    data.prepare(items)
    examples = [e for e in map(data.example, items) if e is not None]
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    steps = args.examples // HF_BATCH
    budget = int(HF_BATCH * real / len(examples) * 1.04)  # about 64 examples' real tokens per t2t batch
    row = {"row": args.only, "steps": steps, "budget": budget, "real": real,
           "threads": torch.get_num_threads()}  # fmt: skip
    if args.composed_gelu:  # --ablate: transformers' own gelu_new, as before t2t swapped it
        import t2t.train

        t2t.train.fuse_activations = lambda model: 0
    if args.only == "hf":
        seconds = hf_run(examples, tokenizer, steps)
        return {**row, "seconds": seconds, "tokens": real, "strategy": "", "mix": None}
    seconds, tokens, strategy, mix = t2t_run(tokenizer_dir, Path(tempfile.mkdtemp()) / "run", registry,
                                             mixture_name, limits, steps,
                                             {"max_tokens": budget, **BATCHING[args.only]})  # fmt: skip
    return {**row, "seconds": seconds, "tokens": tokens, "strategy": strategy, "mix": mix}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(LIMITS), default="demo")
    parser.add_argument(
        "--mixture", help="instead of a profile: a mixture t2t knows, your own length profile"
    )
    parser.add_argument("--limits", type=int, nargs=2, default=[512, 64], metavar=("INPUT", "TARGET"),
                        help="--mixture: token limits of inputs and targets (default 512 64)")  # fmt: skip
    parser.add_argument("--examples", type=int, default=12800)
    parser.add_argument(
        "--tokenizer", help="demo profile: a tokenizer dir (default: train one on the mixture)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all trainers (default 3)")
    parser.add_argument("--ablate", action="store_true",
                        help="instead: t2t's default with its one-kernel GELU and with transformers' composed one, "
                             "each case in a fresh process, --rounds rounds")  # fmt: skip
    # one row, in a child process
    parser.add_argument("--only", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--composed-gelu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.examples < HF_BATCH or args.rounds < 1 or min(args.limits) < 1:
        parser.error(
            f"--examples must be at least {HF_BATCH} (one HF batch), --rounds and --limits at least 1"
        )
    torch.set_num_threads(2)
    datasets.disable_progress_bars()
    if args.only:
        print("ROW " + json.dumps(one_row(args, args.work)))
        return
    work = Path(tempfile.mkdtemp())
    if args.profile == "demo" and not args.mixture:
        shutil.copytree(demo_tokenizer_dir(args.tokenizer), work / "tok")
    else:
        registry, mixture_name = profile_mixture(args, work)
        try:
            names = load_mixture(registry, mixture_name).task_names
        except T2TError as exc:
            raise SystemExit(f"--mixture: {exc}") from None
        train_tokenizer(mixture_texts(registry, names, "train", 500), 2000, work / "tok")
    profile = (
        f"mixture {args.mixture} (limits {args.limits[0]} + {args.limits[1]})"
        if args.mixture
        else args.profile
    )

    def child(name: str, *flags: str) -> dict:
        command = [sys.executable, __file__, "--profile", args.profile, "--examples", str(args.examples),
                   "--only", name, "--work", str(work), *flags]  # fmt: skip
        if args.mixture:
            command += ["--mixture", args.mixture, "--limits", *map(str, args.limits)]
        environ = {**os.environ, "OMP_NUM_THREADS": "2"}
        done = subprocess.run(command, capture_output=True, text=True, env=environ)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if done.returncode or not lines:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        return json.loads(lines[-1][4:])

    if args.ablate:
        cases = {"composed GELU": ("--composed-gelu",), "one-kernel GELU (t2t train)": ()}
        print(f"t2t train's default, {profile}, the same steps, each case in a fresh process:")
        for round_ in range(1, args.rounds + 1):
            for label, flags in cases.items():
                row = child("default", *flags)
                speed = row["tokens"] / row["seconds"]
                print(
                    f"  round {round_}  {label:<28} {row['seconds']:6.1f} s  {speed:>8,.0f} real tokens/s",
                    flush=True,
                )
        return
    # this machine's speed drifts by 10-20 % within minutes: rounds of every trainer one after the other, each
    # trainer's ratio to HF taken within its round, and the median over the rounds
    rounds = [[child(name) for name in ROWS] for _ in range(args.rounds)]
    hf = rounds[0][0]
    print(f"machine: {platform.machine()}, {hf['threads']} threads, torch {torch.__version__}")
    print(f"profile {profile}: {args.examples} examples for HF ({hf['real']:,} real tokens), {hf['steps']} steps "
          f"each, t2t token budget {hf['budget']}, tiny T5 d_model 128, each trainer in a process of its own, "
          f"{args.rounds} round(s); seconds and ratios: the median over the rounds, then each round's ratio\n")  # fmt: skip
    print(f"{'trainer':<32} {'chosen':>7} {'seconds':>8} {'real tokens':>12} {'real tok/s':>11} {'vs HF':>6} "
          f"{'mix TV':>7}  rounds")  # fmt: skip
    for i, name in enumerate(ROWS):
        runs = [r[i] for r in rounds]
        speeds = [
            (run["tokens"] / run["seconds"], r[0]["tokens"] / r[0]["seconds"])
            for run, r in zip(runs, rounds, strict=True)
        ]
        ratios = [speed / hf_speed for speed, hf_speed in speeds]
        seconds = float(np.median([run["seconds"] for run in runs]))
        row = runs[0]
        mix_cell = "" if row["mix"] is None else f"{row['mix']:.2f}"
        each = " ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"{ROWS[name]:<32} {row['strategy']:>7} {seconds:>8.1f} {row['tokens']:>12,} "
              f"{row['tokens'] / seconds:>11,.0f} {float(np.median(ratios)):>5.2f}x {mix_cell:>7}  {each}")  # fmt: skip


if __name__ == "__main__":
    main()
