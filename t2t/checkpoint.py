"""Checkpoints, written atomically: a crash mid-save leaves the previous checkpoint valid and `latest` on it.

    RUN_DIR/checkpoints/step_00000100/
        model/            plain HF dir (model + tokenizer, safetensors): from_pretrained works, after ZeRO-3 too
        accelerate/       accelerate / DeepSpeed state (optimizer, scheduler, RNG, balancing parameters)
        run_state.json    step, tokens, each process's data position, balancing state
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint
    RUN_DIR/checkpoints/best     the checkpoint chosen by validation (t2t.selection), kept when pruning

A checkpoint is assembled in a hidden `.tmp-...` folder and renamed into place when complete; only then does
`latest` move (itself replaced atomically), and older checkpoints beyond `keep` are removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from t2t.errors import T2TError, Where
from t2t.fileio import atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
RUN_STATE = "run_state.json"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / checkpoint_name(step)


def export_model(accelerator: Any, wrapped: Any, tokenizer: Any, out_dir: Path) -> None:
    """Write the seq2seq model (gathered from every process under ZeRO-3) and tokenizer as a plain HF dir."""
    state = accelerator.get_state_dict(wrapped)  # every process must call this under ZeRO-3
    inner = {k.removeprefix("model."): v for k, v in (state or {}).items() if k.startswith("model.")}
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(wrapped).model.save_pretrained(
            str(out_dir), state_dict=inner, save_function=accelerator.save, safe_serialization=True
        )
        tokenizer.save_pretrained(str(out_dir))


def save_checkpoint(accelerator: Any, wrapped: Any, tokenizer: Any, run_dir: Path, step: int,
                    run_state: dict, keep: int) -> Path:  # fmt: skip
    folder = run_dir / CHECKPOINTS
    final = folder / checkpoint_name(step)
    staging = folder / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging / "accelerate"))
    export_model(accelerator, wrapped, tokenizer, staging / "model")
    if accelerator.is_main_process:
        atomic_write_text(staging / RUN_STATE, json.dumps(run_state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved before (e.g. a rerun): replace it whole
            shutil.rmtree(final)
        staging.rename(final)
        atomic_write_text(folder / LATEST, final.name + "\n")
        prune(folder, keep)
    accelerator.wait_for_everyone()
    return final


def prune(folder: Path, keep: int) -> None:
    """Remove the oldest complete checkpoints beyond `keep` (never `best`), and leftovers of interrupted saves."""
    complete = sorted(p for p in folder.glob("step_*") if (p / RUN_STATE).is_file())
    best = (folder / BEST).read_text().strip() if (folder / BEST).is_file() else None
    for old in complete[:-keep]:
        if old.name != best:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(".tmp-step_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / CHECKPOINTS / pointer.read_text().strip()
    if not (path / RUN_STATE).is_file():
        raise T2TError(f"'latest' names {path.name}, which is not a complete checkpoint", Where(file=pointer))
    return path


def load_run_state(checkpoint: Path) -> dict:
    path = checkpoint / RUN_STATE
    if not path.is_file():
        raise T2TError("not a t2t checkpoint (no run_state.json)", Where(file=checkpoint))
    return json.loads(path.read_text())


def mark_best(run_dir: Path, step: int) -> None:
    atomic_write_text(run_dir / CHECKPOINTS / BEST, checkpoint_name(step) + "\n")
