"""Find task and mixture files in the shipped folders and the user's, into one explicit Registry.

Nothing registers itself on import: a Registry is built from a list of folders, names are the file stems,
and a name found twice is an error naming both files. Files are parsed only when a task is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from t2t.config import load_task_spec
from t2t.errors import T2TError, Where, did_you_mean
from t2t.templates import Task

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_ENV = "T2T_TEMPLATES_PATH"
MIXTURES_ENV = "T2T_MIXTURES_PATH"
YAML_SUFFIXES = (".yaml", ".yml")


def shipped_dir(kind: str) -> Path:
    """The shipped `templates` or `mixtures` folder: inside the package in a wheel, beside it in a checkout."""
    for candidate in (PACKAGE_DIR / "_data" / kind, PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise T2TError(f"cannot find t2t's shipped {kind!r} folder (looked in the package and beside it)")


def env_dirs(variable: str) -> list[Path]:
    return [Path(p) for p in os.environ.get(variable, "").split(os.pathsep) if p]


def scan(dirs: Iterable[Path], what: str) -> dict[str, Path]:
    """Map each name (file stem) to its file; refuse a name found in two files and a missing folder."""
    found: dict[str, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            raise T2TError(f"{what} folder not found", Where(file=folder))
        for path in sorted(folder.rglob("*")):
            if path.suffix not in YAML_SUFFIXES or not path.is_file():
                continue
            if path.stem in found and found[path.stem].resolve() != path.resolve():
                raise T2TError(
                    f"{what} {path.stem!r} is defined twice: here and in {found[path.stem]}", Where(file=path)
                )
            found[path.stem] = path
    return found


class Registry:
    """The tasks and mixtures a command can use."""

    def __init__(self, template_dirs: Sequence[Path], mixture_dirs: Sequence[Path] = ()) -> None:
        self.template_dirs = list(template_dirs)
        self.mixture_dirs = list(mixture_dirs)
        self.task_files = scan(self.template_dirs, "task")
        self.mixture_files = scan(self.mixture_dirs, "mixture")
        for name in sorted(self.task_files.keys() & self.mixture_files.keys()):
            where = Where(file=self.mixture_files[name])
            raise T2TError(f"{name!r} names both a mixture and the task in {self.task_files[name]}", where)
        self._tasks: dict[str, Task] = {}

    @classmethod
    def default(cls, templates_dirs: Sequence[Path] = (), mixtures_dirs: Sequence[Path] = ()) -> Registry:
        """Shipped folders, then those in the environment variables, then those given on the command line."""
        return cls(
            [shipped_dir("templates"), *env_dirs(TEMPLATES_ENV), *templates_dirs],
            [shipped_dir("mixtures"), *env_dirs(MIXTURES_ENV), *mixtures_dirs],
        )

    @property
    def task_names(self) -> list[str]:
        return sorted(self.task_files)

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            if name not in self.task_files:
                raise T2TError(f"unknown task {name!r}{did_you_mean(name, self.task_files)}")
            self._tasks[name] = Task(load_task_spec(self.task_files[name]))
        return self._tasks[name]

    def tasks(self, names: Iterable[str] | None = None) -> list[Task]:
        return [self.task(n) for n in (self.task_names if names is None else names)]
