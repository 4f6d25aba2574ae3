"""One error type for every bad input: it knows where the problem is and prints as one line."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Where:
    """The place a problem was found: any subset of file, line, task, template, split and row."""

    file: str | Path | None = None
    line: int | None = None
    task: str | None = None
    template: str | None = None
    split: str | None = None
    row: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else str(self.file))
        for label, value in (
            ("task", self.task),
            ("template", self.template),
            ("split", self.split),
            ("row", self.row),
        ):
            if value is not None:
                parts.append(f"{label} {value!r}" if isinstance(value, str) else f"{label} {value}")
        return ", ".join(parts)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`, a container stopping), raised where a command stands (t2t.cli)
    so that it stops as on Ctrl-C: an output written piece by piece (t2t.fileio.atomic_writer) is removed, a training
    run says where it stands. Without it the process ended at once, leaving `t2t predict`'s partial output behind."""


class T2TError(Exception):
    """A problem with the user's input. `str()` is one line: where, then what."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        self.message = " ".join(message.split())  # always one line
        self.where = where or Where()
        super().__init__(str(self))

    def __str__(self) -> str:
        place = str(self.where)
        return f"{place}: {self.message}" if place else self.message

    def at(self, **fields: object) -> T2TError:
        """The same error with more location filled in (fields already set are kept)."""
        known = {k: v for k, v in fields.items() if getattr(self.where, k) is None}
        return T2TError(self.message, replace(self.where, **known))


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ' (did you mean ...?)' suffix naming the closest candidates, or ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def lone_surrogate(text: str) -> str | None:
    """Where `text` holds a lone surrogate, which is not Unicode text (JSON's or a Jinja literal's \\ud800 escape
    decodes to one; no tokenizer or UTF-8 file takes it): "character N is a lone surrogate (\\ud800)"; else None."""
    found = first_surrogate(text)
    return None if found is None else f"character {found[0]} is a lone surrogate ({found[1]})"


def first_surrogate(text: str) -> tuple[int, str] | None:
    """(index, escape) of the first lone surrogate in `text`, or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start, text[exc.start].encode("unicode_escape").decode()
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise long, multi-line ones), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def no_progress_bars():
    """transformers' progress bars off for the duration ("Loading weights", "Writing model shards"): t2t's output,
    and a refusal's one line, stand alone."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_pretrained(loader, name_or_dir: str | Path, what: str, **kwargs):
    """`loader.from_pretrained(name_or_dir, **kwargs)`, with a failure as one T2TError line naming what and where
    (and, for a local dir that is not a model, where the model is). A torn weights file, or a config file of the
    wrong JSON type, is such a failure too."""
    from safetensors import SafetensorError

    from t2t.hub import hub_or_cache

    _check_config_files(Path(name_or_dir), what)
    try:
        with hub_or_cache(ask=not Path(name_or_dir).exists()) as unreachable, no_progress_bars():
            # never a model's own code: transformers would otherwise ask on the terminal whether to run it
            return loader.from_pretrained(str(name_or_dir), trust_remote_code=False, **kwargs)
    except SafetensorError as exc:
        raise T2TError(f"cannot load {what}: a weights file is not readable as safetensors ({first_line(exc)}): "
                       f"a torn or partial copy?", Where(file=name_or_dir)) from None  # fmt: skip
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        hint = _not_a_model_dir(
            Path(name_or_dir), "tokenizer_config.json" if what == "tokenizer" else "config.json"
        )
        if hint is not None:
            raise T2TError(f"cannot load {what}: {hint}", Where(file=name_or_dir)) from None
        if not Path(name_or_dir).exists():
            cache = f"; {unreachable}, so only the local cache was read" if unreachable else ""
            raise T2TError(f"cannot load {what}: no such local dir, and as a hub name: {first_line(exc).rstrip('.')}{cache}",
                           Where(file=name_or_dir)) from None  # fmt: skip
        if "contains custom code" in str(exc):
            raise T2TError(f"cannot load {what}: it comes with code of its own to run (auto_map in its config), and "
                           "t2t runs no model's code: use a model transformers implements (T5, mT5, BART, ...), or "
                           "load it yourself where you trust its code", Where(file=name_or_dir)) from None  # fmt: skip
        if isinstance(exc, OSError | ValueError):
            raise T2TError(f"cannot load {what}: {first_line(exc)}", Where(file=name_or_dir)) from None
        # a JSON file of the wrong shape (a list where an object belongs) fails deep inside the library
        raise T2TError(f"cannot load {what}: {type(exc).__name__}: {first_line(exc)} (is every JSON file in the dir "
                       f"the object the library wrote?)", Where(file=name_or_dir)) from None  # fmt: skip


# The small JSON files of a model or tokenizer dir that the libraries read as objects: one that is not valid JSON,
# or JSON of another type, failed deep inside them (an AttributeError or a TypeError, by transformers version)
CONFIG_FILES = {"model": ("config.json", "generation_config.json"),
                "tokenizer": ("tokenizer_config.json", "special_tokens_map.json")}  # fmt: skip


def _check_config_files(path: Path, what: str) -> None:
    from t2t.config import read_json

    if not path.is_dir():
        return
    for name in CONFIG_FILES.get(what, ()):
        file = path / name
        if not file.is_file():
            continue
        data = read_json(file, f"cannot load {what}: not valid JSON")
        if not isinstance(data, dict):
            raise T2TError(f"cannot load {what}: a JSON {type(data).__name__}, where the object the library "
                           "writes belongs", Where(file=file))  # fmt: skip


def _not_a_model_dir(path: Path, marker: str) -> str | None:
    """What a local dir without `marker` (a model's config.json, a tokenizer's tokenizer_config.json) is, and where
    its model is, or None for other paths. A t2t run dir holds the final model (with its tokenizer) in model/ and
    each checkpoint's in checkpoints/step_N/model/."""
    if not path.is_dir() or (path / marker).is_file():
        return None
    if (path / "model" / marker).is_file():
        return f"a run dir or checkpoint, not a model dir: its model is {path / 'model'}"
    steps = sorted(p for p in (path / "checkpoints").glob("step_*") if (p / "model" / marker).is_file())
    if steps:
        return (f"a run dir with no final model yet, not a model dir: its newest checkpoint's model is "
                f"{steps[-1] / 'model'}")  # fmt: skip
    return f"the dir holds no {marker}: not a model dir (a plain HF dir, or a run dir's model/)"
