"""Load a task's rows, all through `datasets`: a hub dataset, local jsonl/csv/parquet files, or a generator."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import sys
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from t2t.config import FILE_FORMATS, FilesSource, GeneratorSource, HubSource, TaskSpec
from t2t.errors import T2TError, Where, did_you_mean, first_line, first_surrogate
from t2t.generators import GENERATORS, generate
from t2t.hub import hub_or_cache
from t2t.rng import keyed_rng
from t2t.templates import Task

datasets.disable_progress_bars()


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split that the task's filter keeps, and where each sits in the source split."""

    rows: datasets.Dataset
    source_rows: np.ndarray  # source_rows[i] is the index in the source split of rows[i]

    def __len__(self) -> int:
        return len(self.rows)


def splits_of(spec: TaskSpec) -> list[str]:
    """The split names a task offers (for hub sources: those named in its split mapping, or the usual three)."""
    src = spec.source
    if isinstance(src, FilesSource):
        return list(src.splits)
    if isinstance(src, GeneratorSource):
        return list(src.sizes)
    return list(src.splits) or ["train", "validation", "test"]


def available_offline(spec: TaskSpec) -> bool:
    """Whether the rows can be read without a network: generators, local files, hub paths that are local dirs."""
    src = spec.source
    if isinstance(src, HubSource):
        return _local_hub_dir(spec) is not None
    if isinstance(src, GeneratorSource):
        return src.generator in GENERATORS
    return True


_LOADED: weakref.WeakKeyDictionary[Task, dict[str, SplitRows]] = weakref.WeakKeyDictionary()


def load_split(task: Task, split: str) -> SplitRows:
    """The split's rows after the task's filter; loaded and filtered once per Task object."""
    loaded = _LOADED.setdefault(task, {})
    if split not in loaded:
        loaded[split] = _load_split(task, split)
    return loaded[split]


def _load_split(task: Task, split: str) -> SplitRows:
    spec = task.spec
    where = Where(file=spec.path, task=spec.name, split=split)
    if split not in splits_of(spec):
        raise T2TError(f"no split {split!r}; the task has {', '.join(splits_of(spec))}", where)
    loaders = {HubSource: _load_hub, FilesSource: _load_files, GeneratorSource: _load_generated}
    rows = loaders[type(spec.source)](spec, split, where)
    _check_columns(spec, rows, where)
    if task.filter is None:
        split_rows = SplitRows(rows, np.arange(len(rows)))
    else:
        columns = rows.select_columns(sorted(task.filter_fields)) if task.filter_fields else rows
        keep = np.fromiter((task.keep(row) for row in columns), dtype=bool, count=len(rows))
        kept = np.flatnonzero(keep)
        split_rows = SplitRows(rows.select(kept), kept)
    expected = spec.num_examples.get(split)
    if expected is not None and expected != len(split_rows):
        raise T2TError(f"num_examples says {expected} rows but the data has {len(split_rows)}", where)
    return split_rows


def select_rows(task_name: str, split: str, n_rows: int, max_examples: int | None) -> np.ndarray:
    """The indices (into the filtered split) that `t2t eval --max-examples N` and `t2t render -n N` both take: all
    rows when N is None or covers the split, else a sample seeded by (task, split), in row order."""
    if max_examples is None or n_rows <= max_examples:
        return np.arange(n_rows)
    return np.sort(keyed_rng("eval", task_name, split).permutation(n_rows)[:max_examples])


def num_rows(task: Task, split: str) -> int:
    """Rows in a split after the filter, without loading the data where the task file says how many."""
    spec = task.spec
    if split in spec.num_examples:
        return spec.num_examples[split]
    if isinstance(spec.source, GeneratorSource) and task.filter is None and split in spec.source.sizes:
        return spec.source.sizes[split]
    return len(load_split(task, split))


def _check_columns(spec: TaskSpec, rows: datasets.Dataset, where: Where) -> None:
    missing = [f for f in spec.fields if f not in rows.column_names]
    if missing:
        hint = did_you_mean(missing[0], rows.column_names)
        raise T2TError(
            f"the data has no column {missing[0]!r}{hint}; its columns are {', '.join(rows.column_names)}",
            where,
        )
    for name in spec.fields:
        kind = _not_text(rows.features[name])
        if kind is not None:
            raise T2TError(f"field {name!r} holds {kind}, not text: a template would print their Python form "
                           "(b'...', or an object with its memory address) into the prompt; store it as text, or "
                           "leave it out of the task's fields", where)  # fmt: skip
    if len(rows) == 0:
        raise T2TError("the split has no rows", where)


def _not_text(feature: object) -> str | None:
    """What a column holds that a template cannot render as text (bytes, images, audio, video), looking inside
    lists and structs; None for text, numbers, booleans and dates."""
    stack = [feature]
    while stack:
        item = stack.pop()
        kind = type(item).__name__
        if kind in ("Image", "Audio", "Video", "Pdf", "Nifti"):
            return f"{kind.lower()}s (a datasets {kind} feature)"
        if kind == "Value" and getattr(item, "dtype", "") in ("binary", "large_binary", "binary_view"):
            return "bytes (a binary column)"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "feature"):  # datasets' List / Sequence / LargeList
            stack.append(item.feature)
    return None


# ---------------------------------------------------------------------------------------- loaders


def _local_hub_dir(spec: TaskSpec) -> Path | None:
    assert isinstance(spec.source, HubSource)
    base = spec.path.parent if spec.path else Path()
    for candidate in (Path(spec.source.path), base / spec.source.path):
        if candidate.is_dir():
            return candidate
    return None


def _load_hub(spec: TaskSpec, split: str, where: Where) -> datasets.Dataset:
    src = spec.source
    assert isinstance(src, HubSource)
    local = _local_hub_dir(spec)
    path = str(local) if local is not None else src.path
    with hub_or_cache(ask=local is None) as unreachable:
        try:
            return datasets.load_dataset(
                path,
                src.name,
                data_dir=src.data_dir,
                revision=src.revision,
                split=src.splits.get(split, split),
            )
        except Exception as exc:  # datasets raises many types; the user needs the first line of the reason
            reason = first_line(exc)
            if unreachable:
                reason += f"; {unreachable}, so only the local datasets cache was read"
            raise T2TError(f"cannot load hub dataset {src.path!r}: {reason}", where) from None


STRICT_PATHS_ENV = (
    "T2T_STRICT_PATHS"  # 1: refuse data files outside their task's folder (also --strict-paths)
)


def outside_paths(spec: TaskSpec) -> list[tuple[str, Path]]:
    """(split, resolved path) of each data file a files task reads from outside its own folder (through `..`,
    an absolute path or a symlink): fine for your own files, worth a look in a task file from someone else."""
    if not isinstance(spec.source, FilesSource) or spec.path is None:
        return []
    base = spec.path.parent.resolve()
    found = []
    for split, relative in spec.source.splits.items():
        resolved = (base / relative).resolve()
        if not resolved.is_relative_to(base):
            found.append((split, resolved))
    return found


def _load_files(spec: TaskSpec, split: str, where: Where) -> datasets.Dataset:
    src = spec.source
    assert isinstance(src, FilesSource)
    base = spec.path.parent if spec.path else Path()
    written = base / src.splits[split]
    outside = dict(outside_paths(spec))
    if split in outside and os.environ.get(STRICT_PATHS_ENV, "") not in ("", "0"):
        raise T2TError(f"data file {src.splits[split]!r} lies outside the task's folder ({outside[split]}): "
                       "refused by --strict-paths", where)  # fmt: skip
    # The format comes from the name the task file gives (a symlink's target may have no suffix).
    return load_data_file(
        written.resolve(), split, replace(where, file=None), FILE_FORMATS[written.suffix.lower()]
    )


def load_data_file(path: Path, split: str = "train", where: Where | None = None,
                   builder: str | None = None) -> datasets.Dataset:  # fmt: skip
    """One local jsonl/csv/parquet file as a Dataset, with bad lines named."""
    where = replace(where or Where(), file=path, split=split)
    if not path.is_file():
        raise T2TError("data file not found", where)
    builder = builder or FILE_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise T2TError(
            f"unknown data file format {path.suffix!r}; use one of {', '.join(sorted(FILE_FORMATS))}", where
        )
    if path.stat().st_size == 0:
        raise T2TError("the data file is empty", where)
    warnings: list[str] = []
    if builder == "json":
        warnings = _check_text_file(path, where, jsonl=path.suffix.lower() in (".jsonl", ""))
    elif builder == "csv":
        _check_csv(path, where)
    library = logging.getLogger("datasets")
    level = library.level
    library.setLevel(logging.CRITICAL)  # its own log line would come before t2t's one line
    try:
        rows = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        if builder == "csv":
            warnings = csv_changes(path, rows, where)
        # said once the file has loaded: a file refused is one line, without them
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        return rows
    except T2TError:
        raise
    except Exception as exc:
        if builder == "json":
            _diagnose_json(path, where)
        if builder == "csv" and isinstance(_root_cause(exc), OverflowError):
            _diagnose_csv_overflow(path, where)
        raise T2TError(f"cannot read the {builder} file: {first_line(_root_cause(exc))}", where) from None
    finally:
        library.setLevel(level)


def _root_cause(exc: BaseException) -> BaseException:
    """The error under datasets' "An error occurred while generating the dataset" (Arrow's, which says what)."""
    seen = [exc]
    while isinstance(seen[-1], datasets.exceptions.DatasetGenerationError) and seen[-1].__cause__ is not None:
        seen.append(seen[-1].__cause__)
    return seen[-1]


def _diagnose_json(path: Path, where: Where) -> None:
    """Arrow refused a jsonl file t2t's own pass found readable: find the line and say why, in terms of the file
    (Arrow counts rows within a block of the file, not lines)."""

    def number(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise _Found(f"the number {text[:40]} is too large for a 64-bit float")
        return value

    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                json.loads(line, object_pairs_hook=unique_keys, parse_float=number)
            except (_Found, RepeatedKey) as found:
                raise T2TError(str(found), replace(where, line=line_number)) from None


def _diagnose_csv_overflow(path: Path, where: Where) -> None:
    """pandas read a whole number past 64 bits in a column of whole numbers, which Arrow cannot hold: name it."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        start = reader.line_num + 1
        for fields in reader:
            for name, text in zip(header, fields, strict=False):
                if re.fullmatch(r"\s*[+-]?[0-9]{19,}\s*", text) and not -(2**63) <= int(text) < 2**64:
                    raise T2TError(f"field {name!r} holds {text.strip()}, past 64-bit integers: the CSV loader "
                                   "cannot read it in a column of whole numbers (a jsonl file with the value as a "
                                   "string can)", replace(where, line=start))  # fmt: skip
            start = reader.line_num + 1


class _Found(Exception):
    pass


class RepeatedKey(ValueError):
    """A JSON object names a key twice (Python's json keeps the last silently; Arrow refuses the file)."""


def unique_keys(items: list) -> dict:
    """`json.loads`' object_pairs_hook: the object, or RepeatedKey naming the key it repeats."""
    value = dict(items)
    if len(value) != len(items):
        keys = [key for key, _ in items]
        repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise RepeatedKey(f"the key {repeated!r} appears twice in one object")
    return value


# whole numbers an Arrow column keeps as written: int64 (a column of whole numbers and decimals is read as decimals)
_INT64 = (-(2**63), 2**63 - 1)


def number_warnings(numbers: dict[str, dict[str, tuple[int, object]]], where: Where) -> list[str]:
    """What the loader changes in a jsonl file's fields, from the first whole number, decimal and out-of-range
    whole number of each field (`kind -> (line, value)`): a whole number past 64 bits, or a field mixing whole
    numbers and decimals, is read as a decimal, so `1` renders as `1.0` and 12345678901234567891 as
    1.2345678901234567e+19. One line each, placed as an error would be."""
    lines = []
    for field, seen in numbers.items():
        if "big" in seen:
            line, value = seen["big"]
            message = (f"field {field!r} holds {value}, past 64-bit integers: the loader reads the field as "
                       f"decimals ({float(value)!r}); write such numbers as strings to keep them")  # fmt: skip
        elif "int" in seen and "float" in seen:
            (line, whole), (float_line, decimal) = seen["int"], seen["float"]
            message = (f"field {field!r} holds whole numbers ({whole}) and decimals ({decimal}, line {float_line}): "
                       f"the loader reads the field as decimals, so {whole} renders as "
                       f"{float(whole)!r}; write the field as strings to keep each value as written")  # fmt: skip
        else:
            continue
        lines.append(str(T2TError(message, replace(where, line=line))))
    return lines


def _check_csv(path: Path, where: Where) -> None:
    """Refuse non-UTF-8 bytes and rows with another number of fields than the header, naming the line."""
    _check_text_file(path, where, jsonl=False)
    # Python's csv refuses a field over 128 KiB by default ("field larger than field limit", as if the file were
    # malformed), where pandas, which datasets reads the file with, has no limit: a long document is data. A field
    # can be no longer than the file.
    limit = csv.field_size_limit(max(csv.field_size_limit(), path.stat().st_size))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if not header:
                raise T2TError("the CSV file has no header row", replace(where, line=1))
            rows = 0
            for row in reader:
                if row and len(row) != len(header):
                    raise T2TError(f"{len(row)} fields, but the header has {len(header)}",
                                   replace(where, line=reader.line_num))  # fmt: skip
                rows += bool(row)
            if not rows:
                raise T2TError("the data file has no rows (only a header)", where)
        except csv.Error as exc:
            raise T2TError(f"malformed CSV: {exc}", replace(where, line=reader.line_num)) from None
        finally:
            csv.field_size_limit(limit)


def csv_changes(path: Path, rows: datasets.Dataset, where: Where) -> list[str]:
    """Where the loaded CSV does not say what the file says: pandas, which datasets reads CSV files with, takes
    `NA`, `None`, `null` and a dozen other texts for a missing value, and reads a column whose values all look
    like numbers (or booleans) as numbers, so `007` renders as 7, `12` in a column of decimals (or of whole numbers
    with an empty field) as 12.0, `true` as True. One line for the first such value of each column, naming its
    line; the loaded values are compared with the file's text, read again as text by Arrow, only in the columns
    that hold numbers, booleans or missing values."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = rows.data
    typed = [name for name in rows.column_names
             if not pa.types.is_string(table.schema.field(name).type)
             and not pa.types.is_large_string(table.schema.field(name).type)]  # fmt: skip
    nullable = [name for name in rows.column_names if table.column(name).null_count]
    wanted = [name for name in rows.column_names if name in typed or name in nullable]
    if not wanted:
        return []
    try:
        text = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(
                                  column_types=dict.fromkeys(wanted, pa.string()), include_columns=wanted,
                                  strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]))  # fmt: skip
    except (pa.ArrowException, OSError):
        return []  # (a file Arrow reads otherwise than pandas: no comparison, no warning)
    if text.num_rows != len(rows):
        return []
    found = []  # (row, message)
    for name in wanted:
        written, loaded = text.column(name), table.column(name)
        # a value the loader took for missing where the file has text (compared in Arrow, in C++)
        missing = pc.index(pc.and_(pc.is_null(loaded), pc.not_equal(written, "")), True).as_py()
        if missing >= 0:
            found.append((missing, f"field {name!r} reads {written[missing].as_py()!r}, which the loader takes "
                                   "for a missing value (a template reading it stops at the row)"))  # fmt: skip
        if name not in typed:
            continue
        if pa.types.is_integer(loaded.type):  # Arrow writes whole numbers as Python does
            shown = pc.cast(loaded, written.type)
            changed = pc.index(pc.fill_null(pc.equal(shown, written), True), False).as_py()
        else:  # decimals and booleans as Python writes them (12.0, True): what a template renders
            changed = _first_rewritten(loaded, written)
        if changed >= 0:
            value = loaded[changed].as_py()
            found.append((changed, f"field {name!r} reads {written[changed].as_py()!r}, which the loader reads as "
                                   f"{value!r} (a column of only numbers or only booleans is read as such): a "
                                   f"template renders {value}, not the text in the file"))  # fmt: skip
    lines = _csv_row_lines(path, sorted({row for row, _ in found}))
    return [str(T2TError(message, replace(where, line=lines.get(row)))) for row, message in found]


def _first_rewritten(loaded: Any, written: Any, rows: int = 1 << 20) -> int:
    """The first row whose loaded value, written as Python writes it, is not the file's text (-1 if none); a
    million rows at a time, so a long column never becomes one list of Python objects."""
    for lo in range(0, len(loaded), rows):
        texts = [None if v is None else str(v) for v in loaded.slice(lo, rows).to_pylist()]
        original = written.slice(lo, rows).to_pylist()
        if texts != original:
            for i, (w, v) in enumerate(zip(original, texts, strict=True)):
                if v is not None and v != w:
                    return lo + i
    return -1


def _csv_row_lines(path: Path, wanted: list[int]) -> dict[int, int]:
    """The line each of the rows `wanted` (0-based, blank lines skipped as pandas does) starts on."""
    lines: dict[int, int] = {}
    if not wanted:
        return lines
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        row, start, targets = 0, reader.line_num + 1, set(wanted)
        for fields in reader:
            if fields:
                if row in targets:
                    lines[row] = start
                    if len(lines) == len(targets):
                        break
                row += 1
            start = reader.line_num + 1
    return lines


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape of a UTF-16 surrogate


def _check_text_file(path: Path, where: Where, jsonl: bool) -> list[str]:
    """Refuse non-UTF-8 bytes and (for jsonl) lines that are not JSON objects, naming the line; return the
    warnings of numbers the loader will change (`number_warnings`)."""

    def at(line: int) -> Where:
        return replace(where, line=line)

    seen = 0
    numbers: dict[str, dict[str, tuple[int, object]]] = {}  # field -> kind -> (first line, value)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            seen = number
            try:
                # utf-8-sig on the first line: a byte order mark (Windows editors write one) starts no row
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise T2TError(f"not valid UTF-8 (byte {exc.start} of the line)", at(number)) from None
            if not jsonl:
                continue
            if not line.strip():
                raise T2TError("empty line (a row must be a JSON object)", at(number))
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise T2TError(f"not valid JSON: {exc.msg}", at(number)) from None
            except RecursionError:
                raise T2TError("JSON nested too deeply to read", at(number)) from None
            if not isinstance(value, dict):
                raise T2TError("not a JSON object", at(number))
            for field, item in value.items():
                kind = type(item)
                if kind is int:
                    kind_name = "big" if not _INT64[0] <= item <= _INT64[1] else "int"
                elif kind is float:
                    kind_name = "float"
                else:
                    continue
                kinds = numbers.setdefault(field, {})
                if kind_name not in kinds:
                    kinds[kind_name] = (number, item)
            # a surrogate pair (an emoji's) decodes to one character, a lone surrogate to no text at all
            if SURROGATE_ESCAPE.search(line):
                found = first_surrogate(json.dumps(value, ensure_ascii=False))
                if found is not None:
                    raise T2TError(
                        f"a string holds a lone surrogate ({found[1]}), not Unicode text", at(number)
                    )
    if jsonl and seen == 0:
        raise T2TError("the data file has no rows", where)
    return number_warnings(numbers, where)


def _load_generated(spec: TaskSpec, split: str, where: Where) -> datasets.Dataset:
    src = spec.source
    assert isinstance(src, GeneratorSource)
    if src.generator not in GENERATORS:
        raise T2TError(f"unknown generator {src.generator!r}{did_you_mean(src.generator, GENERATORS)}", where)
    return _generated(src.generator, tuple(src.sizes.items()), src.seed)[split]


@functools.lru_cache(maxsize=256)
def _generated(name: str, sizes: tuple[tuple[str, int], ...], seed: int) -> dict[str, datasets.Dataset]:
    return {
        split: datasets.Dataset.from_list(rows) for split, rows in generate(name, dict(sizes), seed).items()
    }
