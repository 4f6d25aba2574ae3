"""What the benchmark scripts share (imported as `_common`: scripts run as `python bench/NAME.py`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from t2t.mixtures import load_mixture
from t2t.modeling import loss_sums
from t2t.registry import Registry
from t2t.tokenizer import mixture_texts, train_tokenizer


def bare_step(model: Any, optimizer: torch.optim.Optimizer, batch: Any, n_tasks: int) -> None:
    """The bare model step the loop is measured against: mean token loss, backward, optimizer step."""
    sums = loss_sums(model, batch.tensors, n_tasks)
    (sums.loss / sums.tokens).backward()
    optimizer.step()
    optimizer.zero_grad()


def demo_tokenizer_dir(given: str | None) -> Path:
    """The tokenizer dir given with --tokenizer, or one trained now on the demo mixture's text (a temporary dir)."""
    if given:
        return Path(given)
    registry = Registry.default()
    tasks = load_mixture(registry, "demo").task_names
    return train_tokenizer(
        mixture_texts(registry, tasks, "train", 500), 2000, Path(tempfile.mkdtemp()) / "tok"
    )
