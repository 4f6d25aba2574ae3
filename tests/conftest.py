"""Tests run offline: no hub, datasets' cache in a temporary folder."""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = os.environ.get("HF_DATASETS_CACHE") or tempfile.mkdtemp(
    prefix="t2t-test-datasets-"
)
os.environ["T2T_CACHE"] = tempfile.mkdtemp(prefix="t2t-test-cache-")  # encoded tasks, shared by the session
os.environ["T2T_LOG_DIR"] = tempfile.mkdtemp(prefix="t2t-test-logs-")  # tracebacks of unexpected errors
os.environ.pop("T2T_TEMPLATES_PATH", None)
os.environ.pop("T2T_MIXTURES_PATH", None)

import json
from pathlib import Path

import pytest
import yaml

from t2t.cli import main

# the session's temporary folders above are removed when its process exits (each run of the suite left three behind)
SESSION_DIRS = [os.environ[key] for key in ("HF_DATASETS_CACHE", "T2T_CACHE", "T2T_LOG_DIR")]
SESSION_DIRS = [d for d in SESSION_DIRS if Path(d).name.startswith("t2t-test-")]
atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in SESSION_DIRS])


def same_threads() -> dict[str, str]:
    """The environment of a one-process `t2t` subprocess whose weights a test compares bit for bit with this
    process's: the same thread count (t2t's own choice, the cores free at start, differs while the machine is
    busy, and float sums with it)."""
    import torch

    return {**os.environ, "T2T_NUM_THREADS": str(torch.get_num_threads())}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def golden_rows(input_text: str = "Q: 2+2?", **extra_fields) -> list[dict]:
    """The toy task's one golden example under template 'plain' (its expected input can be varied)."""
    row = {"question": "2+2?", "answer": "4", **extra_fields}
    return [{"template": "plain", "row": row, "input": input_text, "target": "4"}]


def qa_task(name: str = "toy_qa", **overrides) -> dict:
    """A small task over a local jsonl file named data.jsonl."""
    spec = {
        "name": name,
        "version": 1,
        "cluster": "qa",
        "source": {"kind": "files", "splits": {"train": "data.jsonl"}},
        "fields": {"question": "a question", "answer": "its answer"},
        "metrics": ["exact_match"],
        "templates": [
            {"name": "plain", "input": "Q: {{ question }}", "target": "{{ answer }}"},
            {"name": "polite", "input": "Please answer: {{ question }}", "target": "{{ answer }}"},
        ],
        "golden": golden_rows(),
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_jsonl(
        folder / "data.jsonl",
        [{"question": "2+2?", "answer": "4"}, {"question": "capital of peru?", "answer": "lima"}],
    )
    return folder


@pytest.fixture
def run_cli(capsys):
    """Run `t2t ARGS...` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}  # fmt: skip


@pytest.fixture
def run_bounded(run_cli):
    """Run `t2t ARGS...` in-process and assert the bounds a bad input must respect: at most `seconds` of wall
    time, at most `megabytes` of Python allocations at peak, and nothing written under `folder`."""
    import time
    import tracemalloc

    def run(
        folder: Path, *args: str, seconds: float = 20.0, megabytes: float = 300.0
    ) -> tuple[int, str, str]:
        before = snapshot(folder)
        tracemalloc.start()
        started = time.perf_counter()
        try:
            result = run_cli(*args)
        finally:
            took = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
        assert took < seconds, f"took {took:.1f} s"
        assert peak < megabytes, f"peak {peak:.0f} MB"
        assert snapshot(folder) == before, "files were written"
        return result

    return run


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A SentencePiece tokenizer (T5 layout) trained on a few built-in tasks: trains in about a second."""
    from t2t.registry import Registry
    from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer

    registry = Registry.default()
    tasks = ["add_numbers", "color_lookup", "reverse_words", "sentiment", "word_in_list", "color_check"]
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    train_tokenizer(mixture_texts(registry, tasks, "train", rows_per_task=200), 400, out)
    return load_tokenizer(out)


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    """The tiny tokenizer saved as a pretrained folder (for `tokenizer: {pretrained: DIR}`)."""
    path = tmp_path_factory.mktemp("train_tok") / "tok"
    tiny_tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def mixture_dir(tmp_path_factory):
    """A folder with `two_tasks`: add_numbers and color_lookup, uniform, sum_check held out."""
    folder = tmp_path_factory.mktemp("mixtures")
    spec = {"name": "two_tasks", "members": {"add_numbers": None, "color_lookup": None}, "rate": {"rule": "uniform"},
            "held_out": ["sum_check"]}  # fmt: skip
    (folder / "two_tasks.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="session")
def demo_data(tiny_tokenizer):
    """The demo mixture's training data with the tiny tokenizer (tasks encoded once per session)."""
    from t2t.data import MixtureData
    from t2t.encoding import Limits
    from t2t.mixtures import load_mixture
    from t2t.registry import Registry

    registry = Registry.default()
    return MixtureData(load_mixture(registry, "demo"), registry, tiny_tokenizer, Limits(64, 24))


def train_checkpoint(root: Path, tokenizer, name: str, members: dict, steps: int, max_input_tokens: int,
                     max_target_tokens: int) -> Path:  # fmt: skip
    """A tiny T5 trained on the mixture `name` (written under root/mixtures) with the given tokenizer; returns the
    exported model folder root/run/model."""
    from t2t.registry import Registry
    from t2t.train import Run
    from t2t.train_config import TrainConfig

    (root / "mixtures").mkdir(exist_ok=True)
    (root / "mixtures" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "members": members}))
    tokenizer.save_pretrained(str(root / "tok"))
    config = TrainConfig.model_validate({
        "run_dir": str(root / "run"), "mixture": name, "tokenizer": {"pretrained": str(root / "tok")},
        "model": {"tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64}},
        "max_input_tokens": max_input_tokens, "max_target_tokens": max_target_tokens,
        "batching": {"strategy": "padded", "batch_size": 16, "max_tokens": None, "window_examples": 64},
        "steps": steps, "optimizer": {"lr": 1e-2}, "trackers": [], "log_every_steps": steps,
    })  # fmt: skip
    Run(config, Registry.default(mixtures_dirs=[root / "mixtures"])).fit()
    return root / "run" / "model"
