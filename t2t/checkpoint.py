"""Checkpoints, written atomically: a crash mid-save leaves the previous checkpoint valid and `latest` on it.

    RUN_DIR/checkpoints/step_00000100/
        model/            plain HF dir (model + tokenizer, safetensors): from_pretrained works, after ZeRO-3 too;
                          with sharing.mode=adapters, the backbone, and its adapters in model/adapters/ (peft)
        accelerate/       accelerate / DeepSpeed state (optimizer, scheduler, RNG, balancing parameters)
        run_state.json    step, tokens, each process's data position, balancing state
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint
    RUN_DIR/checkpoints/best     the checkpoint chosen by validation (t2t.selection), kept when pruning

A checkpoint is assembled in a hidden `.tmp-...` folder and renamed into place when complete; only then does
`latest` move (itself replaced atomically), and older checkpoints beyond `keep` are removed.

`run_state.json` also holds the run's identity (t2t.checkpoint.run_identity): the training config without the
keys a resumed run may change, the mixture and task specs, the tokenizer, the model config and the batching the
loader resolved `strategy: auto` to (another t2t version may resolve it otherwise). Resuming compares it with the
current run and refuses any difference with one line naming it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from t2t.config import read_json
from t2t.encoding import legacy_tokenizer_fingerprint, tokenizer_fingerprint
from t2t.errors import T2TError, Where, no_progress_bars
from t2t.fileio import atomic_write_text, peft_base
from t2t.train_config import RESUMABLE_KEYS, TrainConfig, config_dict

FAULT_SAVE_ENV = "T2T_FAULT_KILL_IN_SAVE"  # testing hook: SIGKILL halfway through saving this step

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
RUN_STATE = "run_state.json"
LOCK = ".t2t-lock"  # held by the process training into the run dir (RunDirLock)


class RunDirLock:
    """An exclusive `flock` on RUN_DIR/.t2t-lock, held while a run trains into the dir: a second `t2t train` into
    the same dir (a job launched twice, a `--resume auto` while the first still runs) is refused at once instead of
    interleaving its logs and checkpoints with the first's. The kernel drops the lock when its process ends, a
    `kill -9` included. The file says who holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.handle: Any = None
        self.announced = False

    def acquire(self, announce: bool = True) -> None:
        """Take the lock (where not held yet; refused in one line where another process holds it), and with
        `announce` write who holds it into the file. A run that is still checking its config and checkpoints
        holds the lock without a word, so that a refusal leaves the file as it was."""
        try:
            import fcntl
        except ImportError:
            # no flock on this platform: no guard
            return
        if self.handle is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = (self.run_dir / LOCK).open("a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read(200).strip() or "a process starting"
                handle.close()
                raise T2TError(f"another t2t train is writing this run dir ({holder}): wait for it to end, or "
                               "choose another run_dir", Where(file=self.run_dir)) from None  # fmt: skip
            self.handle, self.announced = handle, False
        if announce and not self.announced:
            import socket
            import time

            since = time.strftime("%Y-%m-%d %H:%M:%S")
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}")
            self.handle.flush()
            self.announced = True

    def release(self) -> None:
        if self.handle is not None:
            if self.announced:
                # no longer true once the lock is dropped
                self.handle.seek(0)
                self.handle.truncate()
            self.handle.close()
            self.handle = None


class _Drop(logging.Filter):
    """Drops a library's log records that hold `text`: notices about what t2t does on purpose."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


# Said on every save and every start of a CPU run, about what t2t means to do: accelerate drops the tied
# embedding copies from a T5's safetensors state (they are one tensor; resume is tested exact), and DeepSpeed,
# imported by accelerate's unwrap_model, settles on the CPU where no accelerator is. Filters on the named
# loggers outlive the libraries' own set-up of them (DeepSpeed adds its handler at import); accelerate's records
# start with the process's rank.
logging.getLogger("accelerate.utils.other").addFilter(_Drop("Removed shared tensor"))
logging.getLogger("DeepSpeed").addFilter(_Drop("Setting accelerator to CPU"))


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / checkpoint_name(step)


ENCODING_FILE = "t2t_encoding.json"  # beside an exported model: the limits it was trained with


def export_model(accelerator: Any, wrapped: Any, tokenizer: Any, out_dir: Path, encoding: dict | None = None,
                 final_dir: Path | None = None) -> None:  # fmt: skip
    """Write the seq2seq model (gathered from every process under ZeRO-3) and tokenizer as a plain HF dir, with the
    encoding limits it was trained under (read by `t2t eval`). `final_dir`: where `out_dir` will be renamed to
    (the adapters' files name it as their base model)."""
    from t2t.adapters import ADAPTERS_DIR, router_of, save_adapters, split_state

    state = accelerator.get_state_dict(wrapped)  # every process must call this under ZeRO-3
    inner = {k.removeprefix("model."): v for k, v in (state or {}).items() if k.startswith("model.")}
    model = accelerator.unwrap_model(wrapped).model
    router = router_of(model)
    if router is not None:  # the backbone as a plain HF model, each adapter beside it in peft's format
        inner, lora = split_state(inner, model.t2t_adapter_paths)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        with no_progress_bars():  # transformers' "Writing model shards" bar, twice per checkpoint
            model.save_pretrained(
                str(out_dir), state_dict=inner, save_function=accelerator.save, safe_serialization=True
            )
        tokenizer.save_pretrained(str(out_dir))
        if router is not None:
            save_adapters(out_dir / ADAPTERS_DIR, router.routing, lora, base_name=str(final_dir or out_dir))
        if encoding is not None:
            atomic_write_text(out_dir / ENCODING_FILE, json.dumps(encoding, indent=1) + "\n")


def read_encoding(model_dir: Path) -> dict:
    """The encoding limits saved beside an exported model, or {} for a model t2t did not train; a file t2t did not
    write (torn, edited by hand) is refused in one line."""
    path = Path(model_dir) / ENCODING_FILE
    base = peft_base(model_dir)
    if not path.is_file() and base is not None and Path(base).is_dir():
        path = Path(base) / ENCODING_FILE  # a PEFT adapter on a t2t model: the limits its base trained under
    if not path.is_file():
        return {}
    encoding = read_json(path, "unreadable encoding limits")
    limits = ("max_input_tokens", "max_target_tokens")
    if not isinstance(encoding, dict) or not all(
        encoding.get(key) is None or (type(encoding[key]) is int and encoding[key] > 0) for key in limits
    ):
        raise T2TError("not the encoding limits t2t writes (a JSON object whose max_input_tokens and "
                       "max_target_tokens are positive integers)", Where(file=path))  # fmt: skip
    return encoding


# a model that states no length of its own is cut here (lm-evaluation-harness's default too): T5's relative
# positions set no limit, and its encoder's attention grows with the square of the input
DEFAULT_MAX_TOKENS = 2048
# what transformers stores as a tokenizer's model_max_length when none was given (int(1e30))
_NO_TOKENIZER_LIMIT = 1_000_000


def model_limits(model_dir: Path, model: Any, tokenizer: Any) -> tuple[int, int | None]:
    """(max input tokens, max target tokens) to encode with for a model handed to eval, predict or serve: the
    limits a t2t model was trained under (t2t_encoding.json); else the model's own, found where
    lm-evaluation-harness finds it (the config's n_positions, max_position_embeddings or n_ctx: 512 in the hub's
    T5 and flan-t5 configs, 1,024 for BART), then the tokenizer's model_max_length; else DEFAULT_MAX_TOKENS for
    inputs. Until 2026-12-05 a hub T5 read no limit at all: inputs went in whole (a 20,000-token document is an
    attention of 20,000 squared per head)."""
    encoding = read_encoding(model_dir)
    config = model.config
    own = next((value for attr in ("n_positions", "max_position_embeddings", "n_ctx")
                if isinstance(value := getattr(config, attr, None), int) and value > 0), None)  # fmt: skip
    if own is None:
        value = getattr(tokenizer, "model_max_length", None)
        own = value if isinstance(value, int) and 0 < value < _NO_TOKENIZER_LIMIT else None
    max_input = encoding.get("max_input_tokens") or own or DEFAULT_MAX_TOKENS
    return max_input, encoding.get("max_target_tokens") or own


def save_checkpoint(accelerator: Any, wrapped: Any, tokenizer: Any, run_dir: Path, step: int,
                    run_state: dict, keep: int, encoding: dict | None = None) -> Path:  # fmt: skip
    folder = run_dir / CHECKPOINTS
    final = folder / checkpoint_name(step)
    staging = folder / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging / "accelerate"))
    if os.environ.get(FAULT_SAVE_ENV) == str(step):  # testing hook: a kill halfway through this save
        os.kill(os.getpid(), signal.SIGKILL)
    export_model(accelerator, wrapped, tokenizer, staging / "model", encoding, final / "model")
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
    """The checkpoint's run_state.json, refused in one line where it is not one t2t wrote (torn, edited by hand)."""
    path = checkpoint / RUN_STATE
    if not path.is_file():
        raise T2TError("not a t2t checkpoint (no run_state.json)", Where(file=checkpoint))
    run_state = read_json(path, "unreadable run state", "; resume from another checkpoint with --resume PATH")
    if not (isinstance(run_state, dict) and isinstance(run_state.get("state"), dict)
            and isinstance(run_state.get("world_size"), int) and isinstance(run_state.get("identity", {}), dict)):  # fmt: skip
        raise T2TError("not a run state t2t wrote (a JSON object with state, world_size and identity); resume from "
                       "another checkpoint with --resume PATH", Where(file=path))  # fmt: skip
    return run_state


def mark_best(run_dir: Path, step: int) -> None:
    atomic_write_text(run_dir / CHECKPOINTS / BEST, checkpoint_name(step) + "\n")


# ------------------------------------------------------------------------------------- resume checks

_MODEL_CONFIG_NOISE = {"transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"}


def run_identity(config: TrainConfig, mixture: Any, registry: Any, tokenizer: Any, model: Any) -> dict:
    """What must not change when a run resumes: everything that shapes the data stream or the model."""
    return {
        "config": {k: v for k, v in config_dict(config).items() if k not in RESUMABLE_KEYS},
        "mixture": mixture.spec.model_dump(mode="json"),
        "tasks": {name: registry.task(name).spec.model_dump(mode="json") for name in mixture.task_names},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "model_config": {k: v for k, v in model.config.to_dict().items() if k not in _MODEL_CONFIG_NOISE},
        # the stream's positions are read against these counts (each task's share and row order)
        "rows": {m.task: m.n_examples for m in mixture.members},
    }


def first_difference(saved: Any, current: Any, path: str = "") -> str | None:
    """The dotted path of the first place two JSON-like values differ, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in current:
                return where
            found = first_difference(saved[key], current[key], where)
            if found is not None:
                return found
        return None
    if isinstance(saved, list | tuple) and isinstance(current, list | tuple) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if saved == current else path


_WHAT = {"config": "the training config", "mixture": "the mixture", "tasks": "the task set or a task file",
         "tokenizer": "the tokenizer", "model_config": "the model config",
         "batching": "the batching chosen from the config and the data (auto's choice, or packed rows' sizes)",
         "rows": "a task's training rows"}  # fmt: skip
_OPTIONAL = {"batching", "rows"}  # recorded since 2026-12: older checkpoints resume without these checks


def check_identity(saved: dict, current: dict, checkpoint: Path) -> None:
    """Refuse to resume into a different run; one line names the first change."""
    for part, what in _WHAT.items():
        if part not in saved and part in _OPTIONAL:
            continue
        if part not in saved:
            raise T2TError(f"the checkpoint records no {part}: it was written by an older t2t; start a new run",
                           Where(file=checkpoint))  # fmt: skip
        where = first_difference(_plain(saved[part]), _plain(current[part]))
        if where is not None and part == "rows":
            before, now = saved[part].get(where), current[part].get(where)  # keyed by task name
            raise T2TError(f"cannot resume: task {where}'s training data changed since this checkpoint ({before} "
                           f"-> {now} rows), so the stream would not go on where the run stopped: its positions are "
                           "read against each task's row count. Restore the data the run started with, or start "
                           "a new run_dir", Where(file=checkpoint))  # fmt: skip
        if where is not None:
            detail = f" ({where})" if where else ""
            if part in ("config", "batching"):
                name = where if part == "config" else f"batching.{where}"
                detail = f" ({name}: {_get(saved[part], where)!r} -> {_get(current[part], where)!r})"
            raise T2TError(f"cannot resume: {what} changed since this checkpoint{detail}; only steps, logging, "
                           "evaluation, saving and selection settings may change on resume. Start a new run_dir "
                           "or restore the original setting", Where(file=checkpoint))  # fmt: skip


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return "<absent>"
        data = data[part]
    return data


class Checkpointer:
    """Saving, resuming (with its checks) and exporting the run's model, for every process of the run."""

    def __init__(self, accelerator: Any, run_dir: Path, keep: int) -> None:
        self.accelerator, self.run_dir, self.keep = accelerator, run_dir, keep

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint to resume from, checked before anything costly runs (and before anything is written)."""
        if resume is None:
            if latest_checkpoint(self.run_dir) is not None:
                raise T2TError("the run dir holds checkpoints already: pass --resume auto to continue it, "
                               "or choose another run_dir", Where(file=self.run_dir))  # fmt: skip
            return None
        if resume == "auto":
            return latest_checkpoint(self.run_dir)  # None on a fresh run dir: start from the beginning
        path = Path(resume)
        if not (path / RUN_STATE).is_file():
            raise T2TError("--resume: no such t2t checkpoint (a checkpoint folder holds run_state.json); "
                           "use --resume auto for the run dir's latest", Where(file=path))  # fmt: skip
        return path

    def restore(self, checkpoint: Path, identity: dict, tokenizer: Any = None) -> dict:
        """Check that the checkpoint belongs to this run, load the engine state; returns the saved TrainState."""
        run_state = load_run_state(checkpoint)
        if run_state["world_size"] != self.accelerator.num_processes:
            raise T2TError(f"the checkpoint was written by {run_state['world_size']} processes, this run has "
                           f"{self.accelerator.num_processes}: resume with the same number", Where(file=checkpoint))  # fmt: skip
        saved = run_state.get("identity", {})
        # a checkpoint of an older t2t, whose fingerprint hashed the tokenizer's paths too (hashed only where the
        # recorded one differs: it pickles the whole tokenizer)
        recorded = saved.get("tokenizer")
        legacy = recorded != identity["tokenizer"] and tokenizer is not None
        if legacy and recorded == legacy_tokenizer_fingerprint(tokenizer):
            saved = {**saved, "tokenizer": identity["tokenizer"]}
        check_identity(saved, identity, checkpoint)
        self.accelerator.load_state(str(checkpoint / "accelerate"))
        return run_state["state"]

    def save(
        self, model: Any, tokenizer: Any, step: int, state: dict, identity: dict, encoding: dict
    ) -> Path:
        run_state = {"state": state, "world_size": self.accelerator.num_processes, "identity": identity}
        return save_checkpoint(self.accelerator, model, tokenizer, self.run_dir, step, run_state, self.keep,
                               encoding)  # fmt: skip

    def export(self, model: Any, tokenizer: Any, encoding: dict) -> Path:
        out = self.run_dir / "model"
        export_model(self.accelerator, model, tokenizer, out, encoding)
        return out

    def export_best(self, step: int) -> Path:
        """Copy the selected checkpoint's model to RUN_DIR/best (a plain HF dir), replacing it atomically."""
        out = self.run_dir / BEST
        if self.accelerator.is_main_process:
            staging = self.run_dir / f".tmp-{BEST}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_path(self.run_dir, step) / "model", staging)
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        self.accelerator.wait_for_everyone()
        return out
