"""`t2t lint`: render every template on its golden rows (and on real rows where the source is offline)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from t2t.errors import T2TError, Where
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sources import available_offline, load_split, outside_paths, splits_of
from t2t.templates import RowSkipped, Task

SAMPLE_ROWS = 16  # real rows rendered per split and template
ROW_PROBLEMS = 20  # bad rows named per task and split under --all-rows; the rest are counted


def lint(
    registry: Registry, names: list[str] | None = None, all_rows: bool = False
) -> tuple[list[str], list[str]]:
    """(problems, warnings), one line each: no problem means all is well; warnings are things to look at (data
    files outside a task's folder, an imported task without golden rows, rows a promptsource-style template
    skips). `all_rows`: every real row under every template, not a sample (what a long run will meet)."""
    problems: list[str] = []
    warnings: list[str] = []
    for name in names if names is not None else registry.task_names:
        try:
            task = registry.task(name)
        except T2TError as exc:
            problems.append(str(exc))
            continue
        problems.extend(lint_task(task, warnings, all_rows))
    return problems, warnings


def lint_task(task: Task, warnings: list[str] | None = None, all_rows: bool = False) -> list[str]:
    """The task's problems; its warnings are appended to `warnings` when given."""
    notes = warnings if warnings is not None else []
    problems = [str(p) for p in (*_unused_fields(task), *_golden(task), *_real_rows(task, notes, all_rows))]
    spec = task.spec
    if not spec.golden and spec.origin:
        notes.append(f"{Where(file=spec.path, task=task.name)}: no golden examples yet (imported from "
                     f"{spec.origin.get('tool', 'elsewhere')}): add one under 'golden' to pin its rendering")  # fmt: skip
    for split, path in outside_paths(spec):
        where = Where(file=spec.path, task=task.name, split=split)
        notes.append(f"{where}: data file outside the task's folder: {path} (refused under --strict-paths)")
    return problems


def _unused_fields(task: Task) -> Iterator[T2TError]:
    spec = task.spec
    for field in spec.fields:
        if field not in task.used_fields:
            yield T2TError(
                f"field {field!r} is declared but no template, choice list or filter uses it",
                Where(file=spec.path, task=spec.name),
            )


def _golden(task: Task) -> Iterator[T2TError]:
    spec = task.spec
    if not spec.golden and not spec.origin:  # an imported task has none until you add one (a warning then)
        yield T2TError(
            "no golden examples: add at least one under 'golden'", Where(file=spec.path, task=spec.name)
        )
    for i, golden in enumerate(spec.golden):
        where = Where(file=spec.path, task=spec.name, template=golden.template, split="golden", row=i)
        try:
            if not task.keep(golden.row):
                yield T2TError("the task's filter drops this golden row", where)
                continue
            got = task.render(golden.row, golden.template, "golden", i)
        except T2TError as exc:
            yield exc.at(file=spec.path)
            continue
        for part, expected, actual in (
            ("input", golden.input.strip(), got.inputs),
            ("target", golden.target.strip(), got.targets),
            ("choices", golden.choices, list(got.choices) if got.choices else None),
        ):
            if part == "choices" and expected is None:
                continue
            if expected != actual:
                yield T2TError(f"golden {part} differs: expected {expected!r}, rendered {actual!r}", where)


def _real_rows(task: Task, notes: list[str], all_rows: bool = False) -> Iterator[T2TError]:
    """Render a seeded sample of real rows (or every row) of every split under every template."""
    if not available_offline(task.spec):
        return
    for split in splits_of(task.spec):
        try:
            data = load_split(task, split)
        except T2TError as exc:
            yield exc
            return
        picks = np.arange(len(data)) if all_rows else keyed_rng("lint", task.name, split).permutation(len(data))[
            :SAMPLE_ROWS]  # fmt: skip
        skipped, bad = dict.fromkeys(task.template_names, 0), 0
        for i in np.sort(picks):
            row, index = data.rows[int(i)], int(data.source_rows[i])
            for template in task.template_names:
                try:
                    task.render(row, template, split, index)
                except RowSkipped:
                    skipped[template] += 1
                except T2TError as exc:
                    bad += 1
                    if bad <= ROW_PROBLEMS:
                        yield exc.at(file=task.spec.path)
                    break
        if bad > ROW_PROBLEMS:
            where = Where(file=task.spec.path, task=task.name, split=split)
            yield T2TError(
                f"{bad - ROW_PROBLEMS:,} more rows with problems (the first {ROW_PROBLEMS} are named)", where
            )
        for template, n in skipped.items():
            if n:
                notes.append(f"{Where(task=task.name, split=split, template=template)}: skips {n} of {len(picks)} "
                             f"{'' if all_rows else 'sampled '}rows")  # fmt: skip
            if n == len(picks):
                where = Where(file=task.spec.path, task=task.name, template=template, split=split)
                yield T2TError(f"the template skips all {n} {'' if all_rows else 'sampled '}rows: it renders no "
                               "example", where)  # fmt: skip
