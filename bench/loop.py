"""Loop efficiency: t2t's training step against the bare model step, on the same pre-built batches.

    python bench/loop.py [--steps 150] [--strategy auto|padded|packed] [--tokenizer DIR]

The demo's config (tiny T5, fp32, one process). The batches are drawn once from the real loader; then, alternating
in blocks of 10 steps so that both see the same machine state: t2t's `Run.train_step` (balancing, per-task sums,
finiteness check, the scheduler, every reduction) and the bare step (the model's loss, backward, AdamW's step) of
a copy of the same model. Printed: steps per second of each and the ratio. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from _common import bare_step, demo_tokenizer_dir

from t2t.registry import Registry
from t2t.train import Run
from t2t.train_config import load_train_config

REPO = Path(__file__).resolve().parents[1]
PACKED = ("batching={strategy: packed, rows_per_batch: 16, pack_input_tokens: 128, pack_target_tokens: 32, "
          "window_examples: 2048}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    # auto: the config's own batching
    parser.add_argument("--strategy", choices=["auto", "padded", "packed"], default="auto")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    tokenizer = demo_tokenizer_dir(args.tokenizer)
    overrides = [f"run_dir={tempfile.mkdtemp()}/run", "tokenizer={pretrained: " + str(tokenizer) + "}", "trackers=[]",
                 "schedule.warmup_steps=0"] + {"auto": [], "padded": ["batching.strategy=padded"],
                                               "packed": [PACKED]}[args.strategy]  # fmt: skip
    run = Run(load_train_config(REPO / "configs" / "tiny_cpu.yaml", overrides), Registry.default())
    loader = iter(run.loader)
    batches = [next(loader) for _ in range(args.steps)]
    bare_model = copy.deepcopy(run.accelerator.unwrap_model(run.model).model)
    bare_optimizer = torch.optim.AdamW(bare_model.parameters(), lr=run.config.optimizer.lr, fused=True)

    def t2t_step(batch) -> None:
        run.train_step([batch])
        run.state.step += 1

    def bare_model_step(batch) -> None:
        bare_step(bare_model, bare_optimizer, batch, len(run.tasks))

    for warm in batches[:5]:
        t2t_step(warm)
        bare_model_step(warm)
    seconds = {"t2t": 0.0, "bare": 0.0}
    for start in range(5, len(batches), 10):
        block = batches[start : start + 10]
        for name, step in (("t2t", t2t_step), ("bare", bare_model_step)):
            began = time.perf_counter()
            for batch in block:
                step(batch)
            seconds[name] += time.perf_counter() - began
    timed = len(batches) - 5
    rates = {name: timed / s for name, s in seconds.items()}
    print(f"{args.strategy} batches, {timed} steps each, {torch.get_num_threads()} threads")
    print(f"t2t train_step: {rates['t2t']:.2f} steps/s; bare model step: {rates['bare']:.2f} steps/s; "
          f"ratio {rates['t2t'] / rates['bare']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
