"""Typed specs for task files, loaded from YAML with unknown keys refused and errors pointing at lines."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from t2t.errors import T2TError, Where

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Metric names a task may declare; t2t.metrics implements each of them.
METRIC_NAMES = ("accuracy", "exact_match", "f1", "rouge_l", "bleu", "chrf")
# Names a field may not take, as a template could not read it by them: the template's own variables, Jinja's
# globals, Jinja's constants (`{{ none }}` renders "None", not the field), the operator `not`, and `self`.
RESERVED_FIELDS = frozenset({"answer_choices", "range", "dict", "cycler", "joiner", "namespace", "loop", "self",
                             "not", "true", "false", "none", "True", "False", "None"})  # fmt: skip


def check_name(value: str, what: str = "name") -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must be lowercase letters, digits and '_', starting with a letter"
        )
    return value


class Spec(BaseModel):
    # no inf or nan in any number of a t2t file (`optimizer.lr: .inf` trained to a non-finite loss at step 2)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HubSource(Spec):
    """A dataset on the Hugging Face hub (or a local dataset directory), loaded with `datasets.load_dataset`."""

    kind: Literal["hub"]
    path: str
    name: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    # t2t split name -> the dataset's split name; splits not listed keep their own name.
    splits: dict[str, str] = Field(default_factory=dict)


class FilesSource(Spec):
    """Local files, one per split; relative paths are resolved from the task file's folder."""

    kind: Literal["files"]
    splits: dict[str, str]

    @field_validator("splits")
    @classmethod
    def _known_formats(cls, splits: dict[str, str]) -> dict[str, str]:
        if not splits:
            raise ValueError("a files source needs at least one split")
        for split, path in splits.items():
            if Path(path).suffix.lower() not in FILE_FORMATS:
                raise ValueError(
                    f"split {split!r}: {path!r} is not one of {', '.join(sorted(FILE_FORMATS))} files"
                )
        return splits


class GeneratorSource(Spec):
    """A built-in deterministic generator from `t2t.generators`."""

    kind: Literal["generator"]
    generator: str
    sizes: dict[str, int]
    seed: int = 0

    @field_validator("sizes")
    @classmethod
    def _positive(cls, sizes: dict[str, int]) -> dict[str, int]:
        if not sizes:
            raise ValueError("a generator source needs at least one split size")
        for split, n in sizes.items():
            if n <= 0:
                raise ValueError(f"split {split!r} must have a positive size, not {n}")
        return sizes


Source = Annotated[HubSource | FilesSource | GeneratorSource, Field(discriminator="kind")]
# A fixed list of choices, or a Jinja expression over the row that evaluates to a list.
Choices = list[str] | str


class TemplateSpec(Spec):
    """A template: `input` and `target` rendered apart (t2t's kind), or one promptsource-style `jinja` rendered
    whole and split on `|||` into input and target (a row that does not split into two non-empty parts is
    skipped for this template, as promptsource and P3 do). With `jinja`, `answer_choices` is promptsource's
    form too: a Jinja template whose output is split on `|||`."""

    name: str
    input: str | None = None
    target: str | None = None
    jinja: str | None = None
    answer_choices: Choices | None = None  # overrides the task's choices for this template
    choices_in_prompt: bool = False
    truncate_fields: Annotated[int, Field(gt=0)] | None = (
        2048  # jinja: each {{ }} output cut, as promptsource
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_name(name, "template name")

    @field_validator("input", "target", "jinja")
    @classmethod
    def _non_blank(cls, text: str | None) -> str | None:
        if text is not None and not text.strip():
            raise ValueError("must not be empty")
        return text

    @model_validator(mode="after")
    def _one_kind(self) -> TemplateSpec:
        if self.jinja is not None:
            if self.input is not None or self.target is not None:
                raise ValueError("a template has either `jinja` (promptsource style) or `input` and `target`")
            if "|||" not in self.jinja:
                raise ValueError("a `jinja` template separates input and target with |||")
            if isinstance(self.answer_choices, list):
                raise ValueError(
                    "with `jinja`, answer_choices is a Jinja template whose output is split on |||"
                )
        elif self.input is None:
            raise ValueError("a template needs `input` and `target` (or one promptsource-style `jinja`)")
        return self

    @property
    def promptsource(self) -> bool:
        return self.jinja is not None


class GoldenSpec(Spec):
    """A row, the template to render it with, and the exact expected output."""

    template: str
    row: dict[str, Any]
    input: str
    target: str
    choices: list[str] | None = None


class LimitsSpec(Spec):
    """Overrides of the render limits (t2t.sandbox.RenderLimits) for one task."""

    max_output_chars: Annotated[int, Field(gt=0)] | None = None
    max_value_size: Annotated[int, Field(gt=0)] | None = None
    max_built_size: Annotated[int, Field(gt=0)] | None = None
    max_int_bits: Annotated[int, Field(gt=0)] | None = None
    max_loop_iterations: Annotated[int, Field(gt=0)] | None = None
    max_seconds: Annotated[float, Field(gt=0, le=600)] | None = None
    max_template_chars: Annotated[int, Field(gt=0)] | None = None
    max_nesting: Annotated[int, Field(gt=0, le=500)] | None = None


class SpanCorruptionSpec(Spec):
    """T5's span corruption (t2t.span_corruption): the share of a text's tokens hidden, and the mean span length."""

    noise_density: Annotated[float, Field(gt=0, lt=1)] = 0.15
    mean_span_length: Annotated[float, Field(ge=1)] = 3.0


class TaskSpec(Spec):
    name: str
    # `prompted`: templates render input and target. `span_corruption`: each template renders a text (its input,
    # then its target where it has one) that is corrupted as T5 pre-trains (training only; nothing to score).
    objective: Literal["prompted", "span_corruption"] = "prompted"
    span_corruption: SpanCorruptionSpec | None = None
    version: int = Field(ge=0)
    cluster: str
    description: str = ""
    source: Source
    fields: dict[str, str]  # field name -> what it holds (as the dataset card documents it)
    answer_choices: Choices | None = None
    filter: str | None = None  # a Jinja expression over the row; rows where it is false are dropped
    references: str | None = None  # a Jinja expression over the row giving every accepted answer (evaluation)
    # Rows per split after the filter, for planning mixtures without loading the data (checked when loaded).
    num_examples: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"])
    templates: list[TemplateSpec] = Field(min_length=1)
    golden: list[GoldenSpec] = Field(default_factory=list)
    # field -> the value a template sees where a row lacks the field or holds null (else that is an error)
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: LimitsSpec = LimitsSpec()  # render limits, where the defaults do not suit this task
    # Where the file came from when a tool wrote it (e.g. `t2t import promptsource`): its templates, licence, ids.
    origin: dict[str, Any] = Field(default_factory=dict)
    few_shot_separator: str | None = None  # between exemplars when a mixture prompts this task few-shot
    serve_template: str | None = (
        None  # the template `t2t predict` / `t2t serve` use by default (else the first)
    )
    path: Path | None = Field(default=None, exclude=True)  # set by the loader, never by the file

    @field_validator("name", "cluster")
    @classmethod
    def _valid_names(cls, value: str, info: Any) -> str:
        return check_name(value, "task name" if info.field_name == "name" else "cluster")

    @field_validator("fields")
    @classmethod
    def _field_names(cls, fields: dict[str, str]) -> dict[str, str]:
        if not fields:
            raise ValueError("a task declares at least one field")
        for name in fields:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"field {name!r} is not a valid identifier")
            if name in RESERVED_FIELDS:
                raise ValueError(f"field {name!r} is a reserved template variable")
        return fields

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for metric in metrics:
            if metric not in METRIC_NAMES:
                raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
        return metrics

    @model_validator(mode="after")
    def _templates_and_golden(self) -> TaskSpec:
        names = [t.name for t in self.templates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"template names must be unique; repeated: {', '.join(dupes)}")
        for i, golden in enumerate(self.golden):
            if golden.template not in names:
                raise ValueError(f"golden[{i}] names unknown template {golden.template!r}")
        if self.objective == "prompted":
            if self.span_corruption is not None:
                raise ValueError("span_corruption settings need `objective: span_corruption`")
            for template in self.templates:
                if template.jinja is None and template.target is None:
                    raise ValueError(f"template {template.name!r} needs a `target` (only a span-corruption task's "
                                     "templates may leave it out)")  # fmt: skip
        return self

    @property
    def noise(self) -> SpanCorruptionSpec:
        """The span-corruption settings (T5's defaults where the file gives none)."""
        return self.span_corruption or SpanCorruptionSpec()

    def template(self, name: str) -> TemplateSpec:
        from t2t.errors import did_you_mean

        for spec in self.templates:
            if spec.name == name:
                return spec
        names = [t.name for t in self.templates]
        raise T2TError(f"unknown template {name!r}{did_you_mean(name, names)}", Where(task=self.name))

    @property
    def source_id(self) -> str:
        """What identifies the underlying dataset: two tasks with one source_id share their data."""
        src = self.source
        if isinstance(src, HubSource):
            return f"hub:{src.path}/{src.name or ''}"
        if isinstance(src, FilesSource):
            base = self.path.parent if self.path else Path()
            return "files:" + ",".join(sorted(str((base / p).resolve()) for p in src.splits.values()))
        return f"generator:{src.generator}:{src.seed}"


# --------------------------------------------------------------------------------------------- YAML


MAX_FILE_BYTES = 16 * 1024 * 1024  # task, mixture and config files (golden rows included) stay far below


def read_text(path: Path, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file's contents (at most `max_bytes`), or one clear error."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise T2TError(f"{what} is {size:,} bytes, over the limit of {max_bytes:,}", Where(file=path))
        data = path.read_bytes()
    except FileNotFoundError:
        raise T2TError(f"{what} not found", Where(file=path)) from None
    except OSError as exc:
        raise T2TError(f"cannot read {what}: {exc.strerror}", Where(file=path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise T2TError(f"not valid UTF-8 (byte {exc.start})", Where(file=path, line=line)) from None


def read_json(path: Path, problem: str, advice: str = "") -> Any:
    """A JSON file's value (bounded and UTF-8 as read_text reads it); one that is not JSON is one error at its
    line: "{problem} ({what the parser says}){advice}"."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise T2TError(f"{problem} ({exc.msg}){advice}", Where(file=path, line=exc.lineno)) from None


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster


class SafeLoader(_Loader):  # type: ignore[misc, valid-type]
    """YAML's safe loader, refusing a key repeated in one mapping (YAML itself keeps the last silently: a task
    file with `cluster:` twice, or a mixture naming a member twice, took the later value without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice in one mapping", key.start_mark
                    )
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep)


def refuse_aliases(text: str, where: Where, what: str = "t2t files") -> None:
    """YAML aliases (`*name`) can expand a small file into gigabytes (the 'billion laughs'): t2t files (and the
    other YAML t2t reads) may not use them. Anchors alone are harmless."""
    if "*" not in text:
        return
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise T2TError(f"YAML alias *{event.anchor} is not allowed in {what} (aliases can expand without "
                           "bound): write the value out", replace(where, line=event.start_mark.line + 1))  # fmt: skip


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely (plain data only, no aliases), with parse errors pointing at their line."""
    text = read_text(path)
    try:
        refuse_aliases(text, Where(file=path))
        return yaml.load(text, Loader=SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise T2TError(f"malformed YAML: {exc.problem or exc.context}", Where(file=path, line=line)) from None
    except yaml.YAMLError as exc:
        raise T2TError(f"malformed YAML: {exc}", Where(file=path)) from None


def yaml_nodes(path: Path) -> yaml.Node | None:
    """The node tree of a YAML file that parsed once already: only needed to put line numbers on errors."""
    return yaml.compose(read_text(path), Loader=SafeLoader)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node along `loc` (a pydantic error location)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def validation_error(exc: ValidationError, path: Path, **where: Any) -> T2TError:
    """The first pydantic error as one located line (the rest usually follow from it)."""
    node = yaml_nodes(path)
    err = exc.errors()[0]
    # Discriminated unions put the variant's tag in loc ('source', 'files', 'splits'); drop it.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in {"hub", "files", "generator"}))
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        message = f"unknown key {dotted!r}"
    elif err["type"] == "missing":
        message = f"missing key {dotted!r}"
    elif err["type"] == "union_tag_invalid":
        message = f"{dotted}: kind must be one of hub, files, generator"
    else:
        text = err["msg"].removeprefix("Value error, ")
        message = f"{dotted}: {text}" if dotted else text
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    line = line_of(node, loc) if loc else None  # a check across keys has no one line
    return T2TError(message, Where(file=path, line=line, **where))


def load_task_spec(path: Path) -> TaskSpec:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise T2TError("a task file must be a YAML mapping", Where(file=path))
    if "path" in data:
        raise T2TError("unknown key 'path'", Where(file=path, line=line_of(yaml_nodes(path), ("path",))))
    try:
        spec = TaskSpec.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise validation_error(exc, path, task=data.get("name")) from None
    if spec.name != path.stem:
        raise T2TError(
            f"task name {spec.name!r} must match the file name {path.stem!r}",
            Where(file=path, line=line_of(yaml_nodes(path), ("name",))),
        )
    return spec
