"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file written piece by piece that appears at `path` whole when the block ends, and not at all when
    it raises (the pieces go to a temporary file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


def check_out_path(path: Path, folder: bool) -> str | None:
    """What stops a command from writing its output at `path` (a folder, or a file when `folder` is false), found
    before the command's work: an existing path of the other kind, a file where a folder on the way must be, a
    folder this process cannot write in (no permission, a read-only disk). None when nothing does."""
    if path.is_dir() and not folder:
        return f"{path}: a folder, where a file is needed"
    if path.exists() and not path.is_dir() and folder:
        return f"{path}: a file, where a folder is needed"
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{path}: {ancestor} is a file, where a folder is needed"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path}: cannot write in {ancestor} (no permission, or a read-only disk)"
    return None


def peft_base(folder: str | Path) -> str | None:
    """The base model a PEFT adapter dir names (adapter_config.json's `base_model_name_or_path`: transformers loads
    that model with the adapter on it), or None for a whole model dir or any other path."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return None
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) and base else None
