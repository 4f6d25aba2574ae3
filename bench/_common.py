"""What the benchmark scripts share (imported as `_common`: scripts run as `python bench/NAME.py`)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

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


def local_mixture(folder: Path, name: str, description: str, tasks: dict[str, tuple[int, int, int, int]],
                  members: dict[str, float], rows: int) -> Registry:  # fmt: skip
    """A mixture of generated tasks as local jsonl files under `folder` (tasks/, mixtures/): each task `rows` rows
    of random words, its input and target word counts drawn from (input low, input high, target low, target high),
    its cluster the first part of its name; a registry that has them. The same arguments write the same files."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(600)]

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    for sub in ("tasks", "mixtures"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for task, (in_lo, in_hi, out_lo, out_hi) in tasks.items():
        lines = [{"text": text(in_lo, in_hi), "answer": text(out_lo, out_hi)} for _ in range(rows)]
        (folder / "tasks" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        spec = {"name": task, "version": 1, "cluster": task.split("_")[0],
                "source": {"kind": "files", "splits": {"train": f"{task}.jsonl"}},
                "fields": {"text": "the input", "answer": "the target"}, "metrics": ["exact_match"],
                "templates": [{"name": "plain", "input": f"{task}: {{{{ text }}}}", "target": "{{ answer }}"}]}  # fmt: skip
        (folder / "tasks" / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    mixture = {"name": name, "description": description, "members": members,
               "splits": {"train": "train", "eval": "train"}, "seed": 0}  # fmt: skip
    (folder / "mixtures" / f"{name}.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))
    return Registry.default(templates_dirs=[folder / "tasks"], mixtures_dirs=[folder / "mixtures"])
