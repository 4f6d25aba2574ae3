"""Batching: HF DataCollatorForSeq2Seq (plain batches) vs t2t padded vs t2t packed, side by side.

    python bench/batching.py [--examples 8192] [--tokenizer DIR]

The same examples of the demo mixture's stream go through each strategy into the same tiny T5 (d_model 128,
2 layers), with about the same number of token slots per batch. Printed per strategy: the non-pad fraction of
the processed tokens, the real (non-pad) tokens per second of forward + backward, the ratios to HF, and the task
mix distance: the mean over batches of the total-variation distance between a batch's label-token share per task
and that of all the examples (t2t.batching.task_mix_distance; 0: every batch holds the mixture's mix).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from _common import demo_tokenizer_dir
from transformers import DataCollatorForSeq2Seq

from t2t.batching import (
    bucket_by_length,
    bucket_keeping_mix,
    pack,
    packed_batch,
    pad_batch,
    task_mix_distance,
)
from t2t.data import MixtureData, auto_target_tokens
from t2t.encoding import Limits
from t2t.mixtures import load_mixture
from t2t.modeling import build_tiny_t5, loss_sums
from t2t.registry import Registry
from t2t.segment_attention import PREFIX as SEGMENTS
from t2t.tokenizer import load_tokenizer
from t2t.train_config import BatchingSpec, TinyModelSpec

HF_BATCH = 64  # examples per HF batch (about 64 x 42 = 2.7k padded token slots)
PADDED_TOKENS = 2688  # t2t padded: token slots per batch
PACKED = (
    (1024, 2),
    (512, 4),
    (128, 16),
)  # t2t packed: (encoder row length, rows per batch), ~2.4k token slots per batch


def timed(model, batches, step) -> tuple[float, int, int]:
    """Seconds of forward + backward over the batches, real tokens, token slots."""
    step(batches[0])  # warm-up
    model.zero_grad()
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - start, sum(b[1] for b in batches), sum(b[2] for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--tokenizer", help="a tokenizer dir (default: train one on the demo mixture)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    tokenizer = load_tokenizer(demo_tokenizer_dir(args.tokenizer))
    data = MixtureData(mixture, registry, tokenizer, Limits(128, 32))
    examples = [data.example(item) for item in data.stream.items(0, args.examples)]
    model = build_tiny_t5(TinyModelSpec(d_model=128, num_layers=2, num_heads=4, d_ff=256), tokenizer)
    n_tasks = len(mixture.members)

    # HF: fixed-size batches in stream order, DataCollatorForSeq2Seq pads to the longest, the model's own loss.
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    hf_batches, hf_groups = [], []
    for i in range(0, len(examples), HF_BATCH):
        chunk = examples[i : i + HF_BATCH]
        hf_groups.append(pad_batch(chunk))  # for the task mix only
        features = collator([{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in chunk])
        real = sum(len(e.input_ids) + len(e.labels) for e in chunk)
        slots = features["input_ids"].numel() + features["labels"].numel()
        hf_batches.append((features, real, slots))

    def hf_step(item):
        features = item[0]
        model(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            labels=features["labels"],
        ).loss.backward()

    def t2t_step(item):
        loss_sums(model, item[0], n_tasks).loss.backward()

    padded = [pad_batch(g) for g in bucket_by_length(examples, None, PADDED_TOKENS)]
    mixed = [pad_batch(g) for g in bucket_keeping_mix(examples, None, PADDED_TOKENS)]
    strategies = [
        ("HF DataCollatorForSeq2Seq", hf_batches, hf_step),
        (
            "t2t padded (bucketed, token budget)",
            [(b, b.real_tokens, b.total_tokens) for b in padded],
            t2t_step,
        ),
        (
            "t2t padded, keep_mix",
            [(b, b.real_tokens, b.total_tokens) for b in mixed],
            t2t_step,
        ),
    ]
    mix = {"HF DataCollatorForSeq2Seq": task_mix_distance(hf_groups, n_tasks),
           "t2t padded (bucketed, token budget)": task_mix_distance(padded, n_tasks),
           "t2t padded, keep_mix": task_mix_distance(mixed, n_tasks)}  # fmt: skip
    for pack_input, n_rows in PACKED:
        config = BatchingSpec(strategy="packed", pack_input_tokens=pack_input, window_examples=len(examples))
        target = auto_target_tokens(data, config)
        rows = pack(examples, pack_input, target)
        packed = [
            packed_batch(examples, rows[i : i + n_rows], pack_input, target)
            for i in range(0, len(rows), n_rows)
        ]
        name = f"t2t packed ({n_rows} x {pack_input}+{target})"
        mix[name] = mix[f"{name}, dense"] = task_mix_distance(packed, n_tasks)
        strategies.append((name, [(b, b.real_tokens, b.total_tokens) for b in packed], t2t_step))
        # the same rows attended densely (row x row scores, examples masked apart): what segment attention saves
        dense = [
            (
                {k: v for k, v in b.tensors.items() if not k.startswith(SEGMENTS)},
                b.real_tokens,
                b.total_tokens,
            )
            for b in packed
        ]
        strategies.append((f"{name}, dense", dense, t2t_step))

    results = {}
    for name, batches, step in strategies:
        seconds, real, slots = timed(model, batches, step)
        results[name] = (real / slots, real / seconds, len(batches))

    base = results["HF DataCollatorForSeq2Seq"][1]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"{args.examples} examples of the demo mixture, vocab {len(tokenizer)}, tiny T5 d_model 128, 2 layers\n"
    )
    print(
        f"{'strategy':<46} {'batches':>8} {'non-pad':>8} {'real tok/s':>11} {'vs HF':>6} {'task mix TV':>12}"
    )
    for name, (fraction, speed, n_batches) in results.items():
        print(
            f"{name:<46} {n_batches:>8} {fraction:>8.1%} {speed:>11,.0f} {speed / base:>5.2f}x {mix[name]:>12.2f}"
        )


if __name__ == "__main__":
    main()
