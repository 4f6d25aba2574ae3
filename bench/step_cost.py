"""What a training step costs per batch and per token slot, packed rows against length-bucketed padding.

    python bench/step_cost.py [--tokenizer DIR] [--steps 30]

The demo's config (tiny T5, fp32, 2 threads, one process), the bare model step (loss, backward, AdamW) on batches
drawn from the real loader at token budgets of 512 to 4,096 slots, for the default (`strategy: auto`: packed rows
sized from the budget, attention per segment) and `strategy: padded`. A least-squares line through (slots, seconds) per strategy
splits a step into a fixed cost (per batch: the model's Python and autograd overhead, the optimizer) and a cost
per token slot; the difference between the strategies says where packed rows lose or win on this machine.

Also printed: whether PyTorch's FlexAttention (the issue's route (a) for packed attention) runs a backward pass on
this device. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import bare_step, demo_tokenizer_dir

from t2t.registry import Registry
from t2t.train import Run
from t2t.train_config import load_train_config

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (512, 1024, 2048, 4096)


def step_seconds(tokenizer: Path, strategy: str, budget: int, steps: int) -> tuple[float, float]:
    """(seconds per bare step, token slots per batch) over `steps` batches after 3 warm-up steps."""
    overrides = [f"run_dir={tempfile.mkdtemp()}/run", "tokenizer={pretrained: " + str(tokenizer) + "}",
                 "trackers=[]", f"batching.strategy={strategy}", f"batching.max_tokens={budget}"]  # fmt: skip
    run = Run(load_train_config(REPO / "configs" / "tiny_cpu.yaml", overrides), Registry.default())
    model = run.accelerator.unwrap_model(run.model).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.optimizer.lr, fused=True)
    loader = iter(run.loader)
    batches = [next(loader) for _ in range(steps + 3)]

    def step(batch) -> None:
        bare_step(model, optimizer, batch, len(run.tasks))

    for batch in batches[:3]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[3:]:
        step(batch)
    seconds = (time.perf_counter() - start) / steps
    slots = np.mean([b.tensors["input_ids"].numel() + b.tensors["labels"].numel() for b in batches[3:]])
    return seconds, float(slots)


def flex_backward() -> str:
    """Whether FlexAttention computes gradients here: 'yes', or the error it raises."""
    from torch.nn.attention.flex_attention import flex_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 2, 128, 16, device=device, requires_grad=True) for _ in range(3))
    try:
        flex_attention(q, k, v).sum().backward()
    except Exception as exc:  # the library's own refusal, reported as it is
        return f"no: {type(exc).__name__}: {exc}"
    return "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = demo_tokenizer_dir(args.tokenizer)
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, bare model step of the demo's tiny T5\n"
    )
    print(f"{'strategy':<8} {'budget':>6} {'slots':>6} {'ms/step':>8} {'us/slot':>8}")
    fits = {}
    for strategy in ("packed", "padded"):
        points = []
        for (
            budget
        ) in BUDGETS:  # auto packs for a T5, its rows sized from the budget (`packed` alone: fixed rows)
            setting = "auto" if strategy == "packed" else strategy
            seconds, slots = step_seconds(tokenizer, setting, budget, args.steps)
            points.append((slots, seconds))
            print(f"{strategy:<8} {budget:>6} {slots:>6.0f} {seconds * 1e3:>8.1f} {seconds / slots * 1e6:>8.1f}",
                  flush=True)  # fmt: skip
        slots, seconds = zip(*points, strict=True)
        slope, fixed = np.polyfit(slots, seconds, 1)
        fits[strategy] = (fixed, slope)
    print("\nleast-squares line, seconds = fixed + per_slot * slots:")
    for strategy, (fixed, slope) in fits.items():
        print(f"  {strategy:<8} fixed {fixed * 1e3:5.1f} ms per step, {slope * 1e6:5.1f} us per slot")
    (packed_fixed, packed_slope), (padded_fixed, padded_slope) = fits["packed"], fits["padded"]
    print(
        f"  packed / padded: fixed {packed_fixed / padded_fixed:.2f}x, per slot {packed_slope / padded_slope:.2f}x"
    )
    print(f"\nFlexAttention backward on {'cuda' if torch.cuda.is_available() else 'cpu'}: {flex_backward()}")


if __name__ == "__main__":
    main()
