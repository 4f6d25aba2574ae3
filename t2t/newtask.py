"""`t2t new-task`: a starter task file for a local data file, its fields taken from the file's columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

from t2t.config import FILE_FORMATS, RESERVED_FIELDS, TaskSpec, check_name
from t2t.errors import T2TError, Where
from t2t.fileio import atomic_write_text
from t2t.sources import load_data_file
from t2t.templates import Task

# Columns that usually hold the answer; otherwise the last column is taken as the target.
TARGET_COLUMNS = ("target", "answer", "output", "label", "summary", "response", "completion", "y")

STARTER = """\
# Task {name}: a starter written by `t2t new-task` from {data}.
# Edit the template below, check it with `t2t lint {name}` and read it with `t2t render {name}`.
# After changing the template, update the golden example's expected input and target to match.
name: {name}
version: 1
cluster: custom  # the task type, T0 style: nli, sentiment, qa, summarization, ...
description: ""
source:
  kind: files
  splits:
    train: {data_path}  # add validation / test files here
fields:
{fields}
metrics: [exact_match]
templates:
  - name: default
    input: {input}
    target: {target}
golden:
  - template: default
    row: {row}
    input: {golden_input}
    target: {golden_target}
"""


def _q(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def write_new_task(name: str, data_file: Path, out_dir: Path, force: bool = False) -> Path:
    try:
        check_name(name, "task name")
    except ValueError as exc:
        raise T2TError(str(exc)) from None
    if data_file.suffix.lower() not in FILE_FORMATS:
        raise T2TError(f"not one of {', '.join(sorted(FILE_FORMATS))} files", Where(file=data_file))
    path = out_dir / f"{name}.yaml"
    if path.exists() and not force:
        raise T2TError("task file exists already (use --force to overwrite it)", Where(file=path))
    rows = load_data_file(data_file.resolve(), "train", Where(task=name))
    columns = rows.column_names
    if len(rows) == 0:
        raise T2TError("the file has no rows", Where(file=data_file, task=name))
    for column in columns:
        if not column.isidentifier() or column.startswith("_"):
            raise T2TError(f"column {column!r} is not a valid field name: rename it", Where(file=data_file))
        if column in RESERVED_FIELDS:
            raise T2TError(f"column {column!r} is a name templates reserve, so no template could read it: rename "
                           "it", Where(file=data_file))  # fmt: skip
    target = next((c for c in TARGET_COLUMNS if c in columns), columns[-1])
    input_text = "\n".join(f"{c}: {{{{ {c} }}}}" for c in columns if c != target) or f"{{{{ {target} }}}}"
    target_text = f"{{{{ {target} }}}}"
    data_path = os.path.relpath(data_file.resolve(), out_dir.resolve())
    spec = TaskSpec.model_validate({
        "name": name, "version": 1, "cluster": "custom",
        "source": {"kind": "files", "splits": {"train": data_path}},
        "fields": dict.fromkeys(columns, ""),
        "templates": [{"name": "default", "input": input_text, "target": target_text}],
        "path": path,
    })  # fmt: skip
    golden = Task(spec).render(rows[0], "default", "train", 0)
    atomic_write_text(path, STARTER.format(
        name=name, data=data_file, data_path=_q(data_path),
        fields="\n".join(f'  {c}: ""  # what this column holds' for c in columns),
        input=_q(input_text), target=_q(target_text),
        row=json.dumps(rows[0], ensure_ascii=False, default=str),
        golden_input=_q(golden.inputs), golden_target=_q(golden.targets),
    ))  # fmt: skip
    return path
