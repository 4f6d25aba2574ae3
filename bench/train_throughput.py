"""Training throughput: `t2t train` vs HF Seq2SeqTrainer, same tiny model, data and example budget.

    python bench/train_throughput.py [--examples 12800] [--tokenizer DIR]

Both train the same tiny T5 (d_model 128, 2 layers, fp32, 2 threads) on the same examples of the demo mixture's
stream: HF with DataCollatorForSeq2Seq and 64 examples per step, t2t with its length-bucketed padded batches of
the same average size. Printed: real (non-pad) tokens per second of the whole training loop and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import datasets
import torch
from _common import demo_tokenizer_dir
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from t2t.data import MixtureData
from t2t.encoding import Limits
from t2t.mixtures import load_mixture
from t2t.modeling import build_tiny_t5
from t2t.registry import Registry
from t2t.tokenizer import load_tokenizer
from t2t.train import Run
from t2t.train_config import TinyModelSpec, TrainConfig

HF_BATCH = 64
SIZE = {"d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 256}


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


def t2t_run(
    tokenizer_dir: Path, run_dir: Path, registry: Registry, steps: int, max_tokens: int
) -> tuple[float, int]:
    config = TrainConfig.model_validate({
        "run_dir": str(run_dir), "mixture": "demo", "model": {"tiny": SIZE},
        "tokenizer": {"pretrained": str(tokenizer_dir)}, "max_input_tokens": 128, "max_target_tokens": 32,
        "batching": {"strategy": "padded", "max_tokens": max_tokens, "batch_size": None, "window_examples": 2048},
        "steps": steps, "optimizer": {"lr": 3e-3}, "log_every_steps": 10_000, "trackers": [],
    })  # fmt: skip
    run = Run(config, registry)
    # encoding is set-up, as HF's dataset is built before its timer: the pairs the run draws, encoded now
    run.data.prepare(run.data.stream.items(0, steps * max_tokens // 8 + 4096))
    start = time.perf_counter()
    run.fit()
    return time.perf_counter() - start, run.state.tokens_seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=12800)
    parser.add_argument("--tokenizer", help="a tokenizer dir (default: train one on the demo mixture)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    datasets.disable_progress_bars()
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    tmp = Path(tempfile.mkdtemp())
    tokenizer_dir = demo_tokenizer_dir(args.tokenizer)
    tokenizer = load_tokenizer(tokenizer_dir)
    data = MixtureData(mixture, registry, tokenizer, Limits(128, 32))
    examples = [data.example(item) for item in data.stream.items(0, args.examples)]
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)

    hf_seconds = hf_run(examples, tokenizer, args.examples // HF_BATCH)
    # t2t: the same number of examples; its token budget gives batches of about 64 examples on this data
    mean_slots = 1.0 * real / len(examples)
    t2t_seconds, t2t_tokens = t2t_run(tokenizer_dir, tmp / "run", registry, args.examples // HF_BATCH,
                                      max_tokens=int(HF_BATCH * mean_slots * 1.04))  # fmt: skip
    hf_speed, t2t_speed = real / hf_seconds, t2t_tokens / t2t_seconds
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"demo mixture, {args.examples} examples (HF) / {t2t_tokens:,} real tokens (t2t), tiny T5 d_model 128\n"
    )
    print(f"{'trainer':<34} {'seconds':>8} {'real tok/s':>11} {'ratio':>6}")
    print(f"{'HF Seq2SeqTrainer + collator':<34} {hf_seconds:>8.1f} {hf_speed:>11,.0f} {1:>5.2f}x")
    print(
        f"{'t2t train (padded, bucketed)':<34} {t2t_seconds:>8.1f} {t2t_speed:>11,.0f} {t2t_speed / hf_speed:>5.2f}x"
    )


if __name__ == "__main__":
    main()
