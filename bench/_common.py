"""What the benchmark scripts share (imported as `_common`: scripts run as `python bench/NAME.py`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.tokenizer import mixture_texts, train_tokenizer


def demo_tokenizer_dir(given: str | None) -> Path:
    """The tokenizer dir given with --tokenizer, or one trained now on the demo mixture's text (a temporary dir)."""
    if given:
        return Path(given)
    registry = Registry.default()
    tasks = load_mixture(registry, "demo").task_names
    return train_tokenizer(
        mixture_texts(registry, tasks, "train", 500), 2000, Path(tempfile.mkdtemp()) / "tok"
    )
