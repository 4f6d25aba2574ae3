"""Data pipeline, resume and evaluation costs on the demo mixture.

    python bench/pipeline.py [--tokenizer DIR] [--windows 4] [--data-steps 4000]

1. a first run (empty encoding cache) of the demo's batching over its first windows: the time spent building
   batches (lazy encoding of each new (row, template) pair included) against the training steps' time;
2. the time to restart the data stream at training step 10^6 (no replay);
3. rank classification examples/s: t2t's batched scoring (one encoder pass per input, all choices in one decoder
   pass) against a loop that calls the model once per choice;
4. the data path alone (no training) over the demo's steps: from an empty cache and with it warm, each with
   Python's automatic garbage collection and with collection paced as `t2t train` paces it (t2t.train.
   paced_collection: what automatic collection costs), and what the tokenizer costs per text through
   its fast backend, through sentencepiece's own processor, and as t2t encodes (t2t.pieces: the processor where it
   gives the tokenizer's ids), on the same texts.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import sentencepiece
import torch
from _common import demo_tokenizer_dir

from t2t.data import BatchLoader, LoaderState, MixtureData
from t2t.encoding import Limits
from t2t.evaluation import score_choices
from t2t.mixtures import load_mixture
from t2t.modeling import build_tiny_t5, loss_sums
from t2t.pieces import text_ids
from t2t.registry import Registry
from t2t.sources import load_split
from t2t.tokenizer import load_tokenizer
from t2t.train import paced_collection
from t2t.train_config import BatchingSpec, TinyModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer")
    parser.add_argument(
        "--windows", type=int, default=4, help="windows of 2,048 examples to train on (default 4)"
    )
    parser.add_argument(
        "--data-steps", type=int, default=4000, help="batches for part 4 (default: the demo's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    tmp = Path(tempfile.mkdtemp())
    tokenizer_dir = demo_tokenizer_dir(args.tokenizer)
    tokenizer = load_tokenizer(tokenizer_dir)
    limits = Limits(96, 24)

    # 1. a first run: every (row, template) pair is encoded lazily, when a window first draws it (rows are
    # generated beforehand, as a dataset would be on disk); data time = building the batches (encoding included)
    tasks = [registry.task(n) for n in mixture.task_names]
    for task in tasks:
        load_split(task, "train")
    data = MixtureData(mixture, registry, tokenizer, limits, tmp / "cache")  # an empty cache
    config = BatchingSpec(max_tokens=2048, window_examples=2048)  # the demo's: auto, packed rows for a T5
    start = time.perf_counter()
    loader = BatchLoader(data, config, model_kind="t5")
    data_s = time.perf_counter() - start
    model = build_tiny_t5(TinyModelSpec(d_model=128, num_layers=2, num_heads=4, d_ff=256), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batches, step_s, examples, steps = iter(loader), 0.0, 0, 0
    while loader.state.window < args.windows:
        start = time.perf_counter()
        batch = next(batches)
        data_s += time.perf_counter() - start
        start = time.perf_counter()
        loss_sums(model, batch, len(mixture.task_names)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_s += time.perf_counter() - start
        examples, steps = examples + batch.n_examples, steps + 1
    pairs = sum(c[0] for p in data.encoded_pairs().values() for c in (q.counts() for q in p))

    # 2. restart at step 10^6: ~90 examples per step -> window 10^6 * 90 / 2048 of this process
    target_window = 10**6 * 80 // config.window_examples
    start = time.perf_counter()
    restarted = BatchLoader(MixtureData(mixture, registry, tokenizer, limits, tmp / "cache"), config,
                            state=LoaderState(window=target_window, batch=5))  # fmt: skip
    next(iter(restarted))
    resume_s = time.perf_counter() - start

    # 3. rank classification: batched vs one model call per choice
    task = registry.task("color_check")
    rows = load_split(task, "validation").rows
    rendered = [task.render(rows[i], "verify", "validation", i) for i in range(64)]
    inputs, choices = [r.inputs for r in rendered], [r.choices for r in rendered]
    model.eval()
    start = time.perf_counter()
    score_choices(model, tokenizer, inputs, choices, batch_size=32)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for text, options in zip(inputs, choices, strict=True):
            ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
            for option in options:
                model(input_ids=ids, labels=torch.tensor([tokenizer(option).input_ids]))
    loop_s = time.perf_counter() - start

    # 4. the data path alone over the demo's steps, from an empty cache and warm, with Python's automatic garbage
    # collection and with collection paced as `t2t train` paces it (a step here is a batch)
    whole = {}
    for label, cache, paced in (
        ("empty cache", "cold", False),
        ("warm cache", "cold", False),
        ("empty cache, paced gc", "cold_paced", True),
        ("warm cache, paced gc", "cold_paced", True),
    ):
        loader = BatchLoader(
            MixtureData(mixture, registry, tokenizer, limits, tmp / cache), config, model_kind="t5"
        )
        batches, drawn = iter(loader), 0
        with paced_collection() if paced else contextlib.nullcontext(lambda step: None) as collect:
            start = time.perf_counter()
            for step in range(1, args.data_steps + 1):
                drawn += next(batches).n_examples
                collect(step)
            whole[label] = (time.perf_counter() - start, drawn)
    texts = [r.inputs for t in tasks for r in (t.render(row, t.template_names[0], "train", i)
                                                for i, row in enumerate(load_split(t, "train").rows.select(range(20))))]  # fmt: skip
    backend = tokenizer.backend_tokenizer
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_dir / "spiece.model"))
    per_text = {}
    for name, encode in (("fast backend", lambda: backend.encode_batch(texts, add_special_tokens=False)),
                         ("sentencepiece", lambda: processor.encode(texts)),
                         ("t2t (t2t.pieces)", lambda: text_ids(tokenizer, texts))):  # fmt: skip
        encode()
        start = time.perf_counter()
        for _ in range(20):
            encode()
        per_text[name] = (time.perf_counter() - start) / (20 * len(texts))

    print("demo mixture, tiny T5 (d_model 128, 2 layers), 2 threads\n")
    print(f"first run, {args.windows} windows: {steps} steps, {examples:,} examples, {pairs:,} pairs encoded")
    print(f"data (encoding, batches): {data_s:>8.2f} s ({pairs / data_s:,.0f} pairs/s with the batching)")
    print(f"training steps:           {step_s:>8.2f} s ({examples / step_s:,.0f} examples/s)")
    print(f"data pipeline share:      {data_s / (data_s + step_s):>8.1%} of the loop's time")
    print(
        f"restart at step 10^6:   {resume_s:>10.2f} s (stream position {target_window * config.window_examples:,}, no replay)"
    )
    print(
        f"rank classification:    {64 / batched_s:>10,.0f} examples/s batched vs {64 / loop_s:,.0f} per-choice loop "
        f"({loop_s / batched_s:.1f}x)"
    )
    print(f"\nthe data path alone, {args.data_steps} batches (no training):")
    for label, (seconds, drawn) in whole.items():
        print(
            f"  {label:<22} {seconds:>7.2f} s, {drawn:,} examples, {seconds / drawn * 1e6:.1f} us per example"
        )
    print(f"tokenizer per text ({len(texts)} training inputs, each task's first template): "
          + ", ".join(f"{name} {s * 1e6:.1f} us" for name, s in per_text.items()))  # fmt: skip


if __name__ == "__main__":
    main()
