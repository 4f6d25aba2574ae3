"""Data pipeline, resume and evaluation costs on the demo mixture.

    python bench/pipeline.py [--tokenizer DIR]

1. render + tokenise throughput (examples/s, uncached) and its share of a training step's time per example;
2. the time to restart the data stream at training step 10^6 (no replay);
3. rank classification examples/s: t2t's batched scoring (one encoder pass per input, all choices in one decoder
   pass) against a loop that calls the model once per choice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import demo_tokenizer_dir

from t2t.data import BatchLoader, LoaderState, MixtureData
from t2t.encoding import Limits, encode_task
from t2t.evaluation import score_choices
from t2t.mixtures import load_mixture
from t2t.modeling import build_tiny_t5, loss_sums
from t2t.registry import Registry
from t2t.sources import load_split
from t2t.tokenizer import load_tokenizer
from t2t.train_config import BatchingSpec, TinyModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    torch.set_num_threads(2)
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    tmp = Path(tempfile.mkdtemp())
    tokenizer = load_tokenizer(demo_tokenizer_dir(args.tokenizer))
    limits = Limits(96, 24)

    # 1. render + tokenise, uncached (rows are generated beforehand, as a dataset would be on disk)
    tasks = [registry.task(n) for n in mixture.task_names]
    for task in tasks:
        load_split(task, "train")
    start = time.perf_counter()
    encoded = sum(encode_task(t, "train", tokenizer, limits, cache_dir=tmp / "cache").n_rows * len(t.template_names)
                  for t in tasks)  # fmt: skip
    encode_s = time.perf_counter() - start
    per_example_encode = encode_s / encoded

    data = MixtureData(mixture, registry, tokenizer, limits, tmp / "cache")
    config = BatchingSpec(strategy="padded", max_tokens=2048, batch_size=None, window_examples=2048)
    loader = BatchLoader(data, config)
    model = build_tiny_t5(TinyModelSpec(), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(loader)
    next(batches)
    start, examples = time.perf_counter(), 0
    for _ in range(30):
        batch = next(batches)
        loss_sums(model, batch, len(mixture.task_names)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        examples += batch.n_examples
    step_per_example = (time.perf_counter() - start) / examples

    # 2. restart at step 10^6: ~90 examples per step -> window 10^6 * 90 / 2048 of this process
    target_window = 10**6 * 90 // config.window_examples
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

    print("demo mixture, tiny T5 (d_model 128, 2 layers), 2 threads\n")
    print(
        f"render + tokenise:      {1 / per_example_encode:>10,.0f} examples/s ({encoded:,} examples, uncached)"
    )
    print(f"training step:          {1 / step_per_example:>10,.0f} examples/s")
    print(
        f"data pipeline share:    {per_example_encode / (per_example_encode + step_per_example):>10.1%} of the time per example"
    )
    print(
        f"restart at step 10^6:   {resume_s:>10.2f} s (stream position {target_window * config.window_examples:,}, no replay)"
    )
    print(
        f"rank classification:    {64 / batched_s:>10,.0f} examples/s batched vs {64 / loop_s:,.0f} per-choice loop "
        f"({loop_s / batched_s:.1f}x)"
    )


if __name__ == "__main__":
    main()
