"""One error type for every bad input: it knows where the problem is and prints as one line."""

from __future__ import annotations

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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise long, multi-line ones), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_pretrained(loader, name_or_dir: str | Path, what: str):
    """`loader.from_pretrained(name_or_dir)`, with a failure as one T2TError line naming what and where."""
    try:
        return loader.from_pretrained(str(name_or_dir))
    except (OSError, ValueError) as exc:
        raise T2TError(f"cannot load {what}: {first_line(exc)}", Where(file=name_or_dir)) from None
