"""The prediction core of `t2t predict` and `t2t serve`: a task's template over a caller's raw rows, then the model.

A row is checked (fields the task declares, JSON values, a size bound per field), rendered with the task's
template apart from its target (`Task.render_input`: the caller need not know the answer), and answered under
the one encoding policy of training and `t2t eval` (t2t.encoding): a task with answer choices by rank
classification (`t2t.evaluation.score_choices`, the choices scored in bounded decoder passes over one encoder pass
per row; the answer is the choice of highest summed log-likelihood, as `t2t eval`'s `ranked`), any other task by
greedy generation (`t2t.evaluation.generate`). Rows of any tasks go through the model together; a bad row is
refused on its own and the others are answered.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2t.errors import T2TError, Where, did_you_mean, lone_surrogate
from t2t.registry import Registry
from t2t.templates import Task

MAX_VALUE_DEPTH = 4
Rendered = tuple[
    str, tuple[str, ...] | None
]  # (input, answer choices) of a row  # a field may hold a list or mapping of JSON values, nested this deep at most


@dataclass(frozen=True)
class ServeLimits:
    max_rows: int = 256  # rows per request
    # answer choices of a request's rows together (a field may hold the list: 256 rows of 4,000 choices each
    # would hold the model for minutes)
    max_choices: int = 4096
    max_field_chars: int = 20_000  # characters per field value (its JSON text, for lists and mappings)
    max_body_bytes: int = 4_000_000  # an HTTP request body
    # seconds for a request's body to arrive whole, from its headers (a client that stalls gets 408)
    max_body_seconds: float = 30.0
    # predict requests in progress at once (their bodies being read, rendered, queued or answered): one more gets
    # 503 with Retry-After at once, so a flood holds at most this many bodies in memory and waits in no queue
    max_concurrent: int = 64
    batch_rows: int = 64  # rows per model call when requests are coalesced
    batch_tokens: int = 16_384  # input tokens per model call
    wait_ms: float = 5.0  # how long the first request of a batch waits for others


class NotFound(T2TError):
    """An unknown task or template (HTTP 404)."""


class BadRow(T2TError):
    """One row that cannot be answered, with the reason (HTTP 422 when no row of a request is answerable)."""


@dataclass
class Prepared:
    """A row rendered and ready for the model."""

    task: str
    template: str
    input: str
    choices: tuple[str, ...] | None
    tokens: int  # input tokens (for batch bounds), at most max_input_tokens
    full_tokens: int  # the input's tokens before the cut (with the end-of-sequence token)

    @property
    def cut(self) -> bool:
        """Whether the input is longer than the model's max_input_tokens, so the model reads its first part only."""
        return self.full_tokens > self.tokens


@dataclass
class Answer:
    answer: str
    scores: dict[str, float] | None = None  # choice -> summed log-likelihood, for tasks with answer choices
    input: str = ""
    input_cut: bool = False  # the input was longer than max_input_tokens: the answer is to its first part


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    registry: Registry
    task_names: list[str]
    max_input_tokens: int | None
    max_target_tokens: int
    limits: ServeLimits = field(default_factory=ServeLimits)
    device: str = "cpu"
    dtype: str = "fp32"

    @classmethod
    def load(cls, model_dir: Path, registry: Registry, task_names: Sequence[str], device: str = "cpu",
             dtype: str = "fp32", limits: ServeLimits | None = None) -> Predictor:  # fmt: skip
        from t2t.evaluation import generation_settings_warning
        from t2t.modeling import load_for_inference

        for name in task_names:
            registry.task(name)  # unknown names refused before the model loads
        # with adapters, each row of a batch goes through its task's
        model, tokenizer, max_input, max_target = load_for_inference(model_dir, device, dtype)
        if (warning := generation_settings_warning(model)) is not None:
            print(f"warning: {model_dir}: {warning}", file=sys.stderr)
        return cls(model, tokenizer, registry, list(task_names), max_input, max_target or 128,
                   limits or ServeLimits(), device, dtype)  # fmt: skip

    # ------------------------------------------------------------------------------------ routing

    def task(self, name: str) -> Task:
        if name not in self.task_names:
            raise NotFound(f"unknown task {name!r}{did_you_mean(name, self.task_names)}; served: "
                           f"{', '.join(self.task_names)}")  # fmt: skip
        return self.registry.task(name)

    def prepared(self, task: str, template: str, text: str, choices: tuple[str, ...] | None) -> Prepared:
        """A rendered input ready for the model, with its token count (for the batch bounds)."""
        return self._ready(task, template, [(text, choices)])[0]

    def prepare(
        self, task: Task, template: str, rendered: Sequence[Rendered | BadRow]
    ) -> list[Prepared | BadRow]:
        """`render_rows`' results ready for the model; the refusals pass through."""
        ready = iter(self._ready(task.name, template, [r for r in rendered if not isinstance(r, BadRow)]))
        return [r if isinstance(r, BadRow) else next(ready) for r in rendered]

    def _ready(self, task: str, template: str, rendered: Sequence[Rendered]) -> list[Prepared]:
        # counted by t2t.pieces, as training encodes (no state of the HF tokenizer is set: the server prepares
        # requests on a thread of their own while the model's thread encodes)
        from t2t.pieces import text_ids

        counts = [len(ids) + 1 for ids in text_ids(self.tokenizer, [text for text, _ in rendered])]
        limit = self.max_input_tokens
        return [Prepared(task, template, text, choices, full if limit is None else min(full, limit), full)
                for (text, choices), full in zip(rendered, counts, strict=True)]  # fmt: skip

    # ------------------------------------------------------------------------------------ the model

    def answer(self, prepared: Sequence[Prepared]) -> list[Answer]:
        """Answers of rows of any tasks: choice rows ranked together, the others generated together."""
        from t2t.evaluation import generate, score_choices

        answers: list[Answer | None] = [None] * len(prepared)
        ranked = [i for i, p in enumerate(prepared) if p.choices is not None]
        generated = [i for i, p in enumerate(prepared) if p.choices is None]
        batch = max(len(prepared), 1)
        if ranked:
            scores = score_choices(self.model, self.tokenizer, [prepared[i].input for i in ranked],
                                   [prepared[i].choices for i in ranked], "t2t", batch, self.max_input_tokens,
                                   self.max_target_tokens, [prepared[i].task for i in ranked])  # fmt: skip
            for i, score in zip(ranked, scores, strict=True):
                choices, sums = prepared[i].choices, score["sum"]
                best = max(range(len(sums)), key=lambda k: (sums[k], -k))
                answers[i] = Answer(choices[best], dict(zip(choices, sums, strict=True)), prepared[i].input,
                                    prepared[i].cut)  # fmt: skip
        if generated:
            texts = generate(self.model, self.tokenizer, [prepared[i].input for i in generated],
                             self.max_target_tokens, batch, 1, self.max_input_tokens,
                             [prepared[i].task for i in generated])  # fmt: skip
            for i, text in zip(generated, texts, strict=True):
                answers[i] = Answer(text, None, prepared[i].input, prepared[i].cut)
        return [a for a in answers if a is not None]

    # ------------------------------------------------------------------------------------ health

    def health(self, task_name: str) -> dict:
        """The task's golden rows through the model: the rendered input must equal the golden input (the template
        still matches what the task file promises); the answers' agreement with the golden targets is reported."""
        import time

        task = self.registry.task(task_name)
        if not task.spec.golden:
            return {"healthy": None, "reason": "the task has no golden rows", "golden_rows": 0}
        started = time.perf_counter()
        problems, agree, rows = [], 0, []
        for n, golden in enumerate(task.spec.golden):
            try:
                text, choices = task.render_input(golden.row, golden.template, n)
            except T2TError as exc:
                problems.append(f"golden row {n} (template {golden.template}): {exc.message}")
                continue
            if text != golden.input:
                problems.append(f"golden row {n} (template {golden.template}) renders {text!r}, the task file "
                                f"expects {golden.input!r}")  # fmt: skip
                continue
            rows.append((self.prepared(task.name, golden.template, text, choices), golden.target))
        if rows:
            answers = self.answer([p for p, _ in rows])
            agree = sum(a.answer == target for a, (_, target) in zip(answers, rows, strict=True))
        return {"healthy": not problems, "golden_rows": len(task.spec.golden), "rendered": len(rows),
                "answers_agree": agree, "agreement": agree / len(rows) if rows else None, "problems": problems,
                "latency_ms": round(1000 * (time.perf_counter() - started), 2)}  # fmt: skip

    def describe(self, task_name: str) -> dict:
        task = self.registry.task(task_name)
        templates = []
        for name in task.template_names:
            compiled = task.templates[name]
            try:
                _, fields = task.input_part(name)
                servable = True
            except T2TError:
                fields, servable = frozenset(), False
            choices = compiled.choices if isinstance(compiled.choices, tuple) else None
            templates.append({"name": name, "input_fields": sorted(fields), "servable": servable,
                              "answer_choices": list(choices) if choices else None,
                              "ranked": compiled.choices is not None or compiled.choices_template is not None})  # fmt: skip
        from t2t.adapters import router_of

        router = router_of(
            self.model
        )  # a model with adapters: the one this task's rows go through (None: backbone)
        adapter = router.routing.tasks.get(task.name) if router is not None else None
        return {"task": task.name, "description": task.spec.description, "cluster": task.spec.cluster,
                "fields": dict(task.spec.fields), "default_template": task.spec.serve_template or task.template_names[0],
                "templates": templates, "metrics": list(task.spec.metrics), "adapter": adapter}  # fmt: skip


class InputRows:
    """`t2t predict`'s input, read a chunk of rows at a time, as often as asked (a pass that checks every row before
    the model loads, then the pass that answers), so that memory holds a chunk, never the file: jsonl line by line
    (each row keeps exactly its own fields; stdin is copied to a temporary file first, so that it can be read
    twice), csv and parquet through datasets' memory-mapped Arrow table (a bad line is named either way)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = "stdin" if str(path) == "-" else str(path)
        self._dataset: Any = None
        self._spool: Any = None
        if str(path) == "-":
            self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
            source = getattr(sys.stdin, "buffer", None)
            if source is not None:
                shutil.copyfileobj(source, self._spool)
            else:  # a text stream put in its place (tests, embedding programs)
                for block in iter(lambda: sys.stdin.read(1 << 20), ""):
                    self._spool.write(block.encode("utf-8", "surrogatepass"))
        elif path.suffix.lower() not in (".jsonl", ".json"):
            from t2t.sources import load_data_file

            self._dataset = load_data_file(path, "input")
        elif not path.is_file():
            raise T2TError("input file not found", Where(file=path))

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()

    def chunks(self, size: int) -> Iterator[list[Any]]:
        """The rows, `size` at a time, in order."""
        if self._dataset is not None:
            for start in range(0, len(self._dataset), size):
                columns = self._dataset[start : start + size]
                yield [
                    dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
                ]
            return
        from t2t.sources import RepeatedKey, unique_keys

        if self._spool is not None:
            self._spool.seek(0)
            binary = self._spool
        else:
            binary = open(self.path, "rb")  # noqa: SIM115 (closed below, or detached from the spool)
        lines = io.TextIOWrapper(binary, encoding="utf-8", errors="strict")
        rows: list[Any] = []
        try:
            for number, line in enumerate(lines, start=1):
                if number == 1:  # a byte order mark (Windows editors write one) starts no row
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line, object_pairs_hook=unique_keys))
                except RepeatedKey as exc:
                    raise T2TError(f"{self.where} line {number}: {exc}") from None
                except json.JSONDecodeError as exc:
                    raise T2TError(f"{self.where} line {number}: not JSON: {exc.msg}") from None
                except RecursionError:
                    raise T2TError(f"{self.where} line {number}: JSON nested too deeply to read") from None
                if len(rows) == size:
                    yield rows
                    rows = []
        except UnicodeDecodeError:
            raise T2TError(f"{self.where}: not UTF-8 text") from None
        finally:
            if self._spool is not None:
                lines.detach()  # the spool stays open for the next pass
            else:
                lines.close()
        if rows:
            yield rows


def choose_template(task: Task, name: str | None) -> str:
    """The template to answer with: `name`, else the task's `serve_template`, else its first."""
    chosen = name or task.spec.serve_template or task.template_names[0]
    if chosen not in task.templates:
        raise NotFound(f"task {task.name!r} has no template {chosen!r}{did_you_mean(chosen, task.template_names)}"
                       f"; its templates: {', '.join(task.template_names)}")  # fmt: skip
    task.input_part(chosen)  # a template whose input cannot be rendered apart is refused here
    return chosen


def render_rows(
    task: Task, template: str, rows: Sequence[Any], limits: ServeLimits, start: int = 0
) -> list[Rendered | BadRow]:
    """Each row checked (declared fields, JSON values, the size bound) and its input rendered, or why not; the
    rows are numbered from `start` (a chunk of a file)."""
    out: list[Rendered | BadRow] = []
    for index, row in enumerate(rows, start=start):
        try:
            _check_row(task, row, limits)
            out.append(task.render_input(row, template, index))
        except T2TError as exc:
            out.append(BadRow(exc.message, Where(task=task.name, template=template, row=index)))
    return out


def _check_row(task: Task, row: Any, limits: ServeLimits) -> None:
    if not isinstance(row, dict):
        raise T2TError(f"a row must be an object of the task's fields, got {type(row).__name__}")
    for name, value in row.items():
        if name not in task.spec.fields:
            raise T2TError(f"unknown field {name!r}{did_you_mean(name, list(task.spec.fields))}; the task's "
                           f"fields: {', '.join(task.spec.fields)}")  # fmt: skip
        problem = _value_problem(value, MAX_VALUE_DEPTH)
        if problem:
            raise T2TError(f"field {name!r}: {problem}")
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > limits.max_field_chars:
            raise T2TError(f"field {name!r} holds {size:,} characters, over the limit of "
                           f"{limits.max_field_chars:,} (max_field_chars)")  # fmt: skip


def _value_problem(value: Any, depth: int) -> str | None:
    """Why a field value is not a plain JSON value (nested at most `depth` deep), or None."""
    if isinstance(value, str):
        problem = lone_surrogate(value)
        return f"{problem}, not Unicode text" if problem else None
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "a number must be finite"
    if isinstance(value, list | dict):
        if depth <= 0:
            return f"nested deeper than {MAX_VALUE_DEPTH} levels"
        items = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            return "mapping keys must be strings"
        return next((p for p in (_value_problem(v, depth - 1) for v in items) if p), None)
    return f"a {type(value).__name__} is not a JSON value"


def result_record(result: Answer | BadRow, return_scores: bool, return_input: bool) -> dict:
    """One row's answer (or refusal) as JSON."""
    if isinstance(result, BadRow):
        return {"error": str(result)}
    record: dict[str, Any] = {"answer": result.answer}
    if result.input_cut:
        record["input_cut"] = True
    if return_scores and result.scores is not None:
        record["scores"] = result.scores
    if return_input:
        record["input"] = result.input
    return record
