"""Sandboxed, strict Jinja rendering: a row and a template give inputs, targets and choices.

Templates run in Jinja's immutable sandbox with `StrictUndefined`, so a misspelled field is an error, never an
empty string, and a template cannot reach Python internals; t2t.sandbox bounds what a render may cost. A field a
template reads must hold a value: a missing or null field is an error naming the row and field, unless the task
gives it a default (`defaults:`). Jinja's only sources of randomness (the `random`
filter and `lipsum`) are removed: which template renders an example is chosen outside Jinja, with a seeded RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.sandbox import SecurityError

from t2t.config import TaskSpec, TemplateSpec, line_of, yaml_nodes
from t2t.errors import T2TError, Where, did_you_mean, first_surrogate, lone_surrogate
from t2t.rng import choose_template
from t2t.sandbox import (
    ENV,
    PROMPTSOURCE_ENV,
    LimitError,
    RenderLimits,
    bounded_call,
    check_source,
    nesting_depth,
)

TEMPLATE_VARIABLES = frozenset({"answer_choices"})
PIPE_GUARD = "\ue000t2t-pipes\ue000"  # stands for ||| inside a row's strings while a render splits


class RowSkipped(T2TError):
    """A promptsource-style template gives no `input ||| target` for this row: the row is skipped for this
    template (how P3 was built), not an error. Commands that render many rows count these; one that renders a
    single row reports it as a line."""


@dataclass(frozen=True)
class Provenance:
    task: str
    template: str
    split: str
    row: int  # index of the row in the source split


@dataclass(frozen=True)
class Rendered:
    inputs: str
    targets: str
    choices: tuple[str, ...] | None
    provenance: Provenance


def _refuse_private_access(ast: nodes.Template) -> str | None:
    """The first `_private` attribute or item the template reaches for, if any."""
    found = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            found.append(name)
    # The walk visits `a.b.c` from the outside in; the innermost access is the one written first.
    return found[-1] if found else None


def _parse(source: str, what: str, where: Where, limits: RenderLimits, expression: bool = False,
           env: Any = ENV) -> tuple[Any, set[str]]:  # fmt: skip
    """Compile a template (or an expression) within the limits; return it with the variables it reads."""
    text = "{{ " + source + " }}" if expression else source
    try:
        check_source(source, limits)
        ast = env.parse(text)
        depth = nesting_depth(ast)
        if depth > limits.max_nesting:
            raise LimitError(
                "max_nesting", f"the template nests {depth} levels deep (over {limits.max_nesting})"
            )
        compiled = (
            env.compile_expression(source, undefined_to_none=False) if expression else env.from_string(ast)
        )
    except TemplateSyntaxError as exc:
        line = f" line {exc.lineno}" if not expression and source.count("\n") else ""
        raise T2TError(f"Jinja syntax error in {what}{line}: {exc.message}", where) from None
    except LimitError as exc:
        raise T2TError(f"{what}: {exc}", where) from None
    except RecursionError:
        raise T2TError(
            f"{what}: the template nests too deeply to compile (limit max_nesting)", where
        ) from None
    private = _refuse_private_access(ast)
    if private is not None:
        raise T2TError(f"{what} reaches for {private!r}: refused by the sandbox", where)
    # Jinja keeps a template's globals as a ChainMap over the environment's and turns it into a dict twice per
    # render: 45 % of rendering a demo row. t2t's environments are complete once built, so one dict serves.
    template = getattr(compiled, "_template", compiled)  # an expression wraps its template
    template.globals = dict(template.globals)
    used = meta.find_undeclared_variables(ast) - set(env.globals)
    return compiled, used


def _check_fields(used: set[str], spec: TaskSpec, what: str, where: Where, allowed: frozenset[str]) -> None:
    for name in sorted(used - set(spec.fields) - allowed):
        hint = did_you_mean(name, [*spec.fields, *allowed])
        raise T2TError(f"{what} uses undeclared field {name!r}{hint}", where)


@dataclass(frozen=True)
class CompiledTemplate:
    spec: TemplateSpec
    input: Any
    target: Any
    choices: tuple[str, ...] | Any | None  # fixed tuple, compiled expression, or none
    used_fields: frozenset[str]
    whole: Any = None  # promptsource style: the compiled `jinja`, rendered whole then split on |||
    choices_template: Any = None  # promptsource style: answer_choices, rendered then split on |||
    # per part, where it only puts fields into text: its literal text and field names in turn (`substitution`)
    plans: dict[str, tuple[tuple[bool, str], ...]] = field(default_factory=dict)


def substitution(source: str, fields: Iterable[str], env: Any = ENV) -> tuple[tuple[bool, str], ...] | None:
    """A template made only of literal text and `{{ field }}` of the task's fields (no filters, attributes, calls,
    operators or tags): its parts in order, (True, text) or (False, field name), as Jinja parsed them (whitespace
    control, raw blocks and comments already applied). None for any other template. Such a template renders to the
    parts joined, each field's value as it is where it is a string: what Jinja's render gives, without its context
    and per-output machinery (12 us a part; the join, half a microsecond)."""
    body = env.parse(source).body
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    names = set(fields)
    parts = []
    for node in body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append((True, node.data))
        elif isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names:
            parts.append((False, node.name))
        else:
            return None
    return tuple(parts)


def _compile_choices(choices: list[str] | str | None, spec: TaskSpec, where: Where,
                     limits: RenderLimits) -> tuple[Any, set[str]]:  # fmt: skip
    if choices is None:
        return None, set()
    if isinstance(choices, list):
        if not choices or len(set(choices)) != len(choices) or not all(c.strip() for c in choices):
            raise T2TError("answer_choices must be a non-empty list of distinct, non-empty strings", where)
        return tuple(choices), set()
    compiled, used = _parse(choices, "answer_choices", where, limits, expression=True)
    _check_fields(used, spec, "answer_choices", where, frozenset())
    return compiled, used


def task_limits(spec: TaskSpec) -> RenderLimits:
    """The render limits of a task: the defaults, with the task file's overrides."""
    overrides = {k: v for k, v in spec.limits.model_dump().items() if v is not None}
    return replace(RenderLimits(), **overrides)


def file_line(spec: TaskSpec, loc: tuple) -> int | None:
    """The line of `loc` (e.g. ('templates', 0, 'input')) in the task's file, when it has one."""
    if spec.path is None or not spec.path.is_file():
        return None
    try:
        return line_of(yaml_nodes(spec.path), loc)
    except Exception:  # the file changed since it was loaded: no line rather than a wrong one
        return None


def compile_template(
    spec: TaskSpec, template: TemplateSpec, limits: RenderLimits | None = None
) -> CompiledTemplate:
    try:
        return _compile_template(spec, template, limits or task_limits(spec))
    except T2TError as exc:  # a compile error: point at the template in the task file
        part = next(
            (p for p in ("input", "target", "jinja", "answer_choices") if f" {p}" in f" {exc.message}"), None
        )
        loc: tuple = ("templates", spec.templates.index(template))
        if part == "answer_choices" and template.answer_choices is None:
            loc = ("answer_choices",)
        elif part is not None:
            loc = (*loc, part)
        raise exc.at(line=file_line(spec, loc)) from None


def _compile_promptsource(spec: TaskSpec, template: TemplateSpec, limits: RenderLimits) -> CompiledTemplate:
    where = Where(file=spec.path, task=spec.name, template=template.name)
    source = template.jinja
    if template.truncate_fields:  # promptsource's apply(): every output cut to TEXT_VAR_LENGTH characters
        source = source.replace("}}", f" | string | truncate({template.truncate_fields}) }}}}")
    whole, used = _parse(source, "jinja", where, limits, env=PROMPTSOURCE_ENV)
    choices_template, choice_fields = None, set()
    if template.answer_choices is not None:
        choices_template, choice_fields = _parse(template.answer_choices, "answer_choices", where, limits,
                                                 env=PROMPTSOURCE_ENV)  # fmt: skip
        _check_fields(choice_fields, spec, "answer_choices", where, frozenset())
    if "answer_choices" in used and choices_template is None:
        raise T2TError("jinja uses answer_choices but the template declares none", where)
    _check_fields(used, spec, "jinja", where, TEMPLATE_VARIABLES)
    fields = frozenset((used | choice_fields) - TEMPLATE_VARIABLES)
    return CompiledTemplate(template, None, None, None, fields, whole, choices_template)


def _compile_template(spec: TaskSpec, template: TemplateSpec, limits: RenderLimits) -> CompiledTemplate:
    if template.promptsource:
        return _compile_promptsource(spec, template, limits)
    where = Where(file=spec.path, task=spec.name, template=template.name)
    choices_source = template.answer_choices if template.answer_choices is not None else spec.answer_choices
    choices, choice_fields = _compile_choices(choices_source, spec, where, limits)
    allowed = TEMPLATE_VARIABLES if choices is not None else frozenset()
    used: set[str] = set(choice_fields)
    compiled = {}
    compiled["target"] = None  # a span-corruption template may render its text from `input` alone
    plans = {}
    for part in ("input", "target") if template.target is not None else ("input",):
        compiled[part], part_used = _parse(getattr(template, part), part, where, limits)
        plan = substitution(getattr(template, part), spec.fields)
        if plan is not None:
            plans[part] = plan
        if "answer_choices" in part_used and choices is None:
            raise T2TError(f"{part} uses answer_choices but the task declares none", where)
        _check_fields(part_used, spec, part, where, allowed)
        used |= part_used
    return CompiledTemplate(
        template, compiled["input"], compiled["target"], choices, frozenset(used - allowed), plans=plans
    )


def null_field(name: str, note: str = "") -> str:
    """The line for a row whose field `name` is null where a template reads it and the task has no default."""
    return (f"field {name!r} is null in this row, and the template reads it (give the task a default for it under "
            f"defaults:, or filter such rows out{note})")  # fmt: skip


class Task:
    """A task spec with its templates compiled: renders rows into examples."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.limits = task_limits(spec)
        self.templates = {t.name: compile_template(spec, t, self.limits) for t in spec.templates}
        self.template_names = tuple(self.templates)
        self._input_parts: dict[str, tuple[Any, frozenset[str]]] = {}
        self.filter = None
        where = Where(file=spec.path, task=spec.name)
        self.filter_fields: set[str] = set()
        if spec.filter is not None:
            self.filter, self.filter_fields = _parse(
                spec.filter, "filter", where, self.limits, expression=True
            )
            _check_fields(self.filter_fields, spec, "filter", where, frozenset())
        self.references_expr, self.reference_fields = None, set()
        if spec.references is not None:
            self.references_expr, self.reference_fields = _parse(
                spec.references, "references", where, self.limits, expression=True
            )
            _check_fields(self.reference_fields, spec, "references", where, frozenset())

    @property
    def used_fields(self) -> frozenset[str]:
        extra = frozenset(self.filter_fields) | frozenset(self.reference_fields)
        return extra.union(*(t.used_fields for t in self.templates.values()))

    def references(self, row: Mapping[str, Any], rendered: Rendered) -> list[str]:
        """Every accepted answer of a row: the task's `references` expression, or the rendered target alone."""
        if self.references_expr is None:
            return [rendered.targets]
        p = rendered.provenance
        where = Where(file=self.spec.path, task=self.name, template=p.template, split=p.split, row=p.row)
        context = self._fields(row, where, frozenset(self.reference_fields))
        value = self._evaluate(self.references_expr, context, where, "references")
        if not isinstance(value, list | tuple) or not value:
            raise T2TError(f"references must evaluate to a non-empty list, got {value!r}", where)
        return [str(v).strip() for v in value]

    def keep(self, row: Mapping[str, Any]) -> bool:
        """Whether the task's filter keeps this row (always, without a filter)."""
        if self.filter is None:
            return True
        where = Where(file=self.spec.path, task=self.name)
        missing = sorted(self.filter_fields - set(row))
        if missing:
            raise T2TError(f"filter: row has no field {missing[0]!r}", where)
        return bool(self._evaluate(self.filter, {f: row[f] for f in self.filter_fields}, where, "filter"))

    def choose(self, seed: int, index: int) -> str:
        return self.template_names[choose_template(seed, self.name, index, len(self.template_names))]

    def render(self, row: Mapping[str, Any], template: str, split: str = "train", index: int = 0) -> Rendered:
        """Render one row with one template; every problem is a T2TError naming task, template and row."""
        if template not in self.templates:
            raise T2TError(
                f"unknown template {template!r}{did_you_mean(template, self.template_names)}",
                Where(file=self.spec.path, task=self.name),
            )
        compiled = self.templates[template]
        where = Where(file=self.spec.path, task=self.name, template=template, split=split, row=index)
        if compiled.whole is not None:
            return self._render_promptsource(
                compiled, row, where, Provenance(self.name, template, split, index)
            )
        context = self._fields(row, where, compiled.used_fields)
        choices = self._choices(compiled, context, where)
        if choices is not None:
            context["answer_choices"] = list(choices)
        inputs = self._text(compiled, "input", context, where).strip()
        targets = ""
        if compiled.target is not None:
            targets = self._text(compiled, "target", context, where).strip()
        if not inputs:
            raise T2TError("input renders empty", where)
        if not targets and self.spec.objective == "prompted":
            raise T2TError("target renders empty", where)
        if choices is not None and targets not in choices:
            raise T2TError(f"target {targets!r} is not one of the answer choices {list(choices)!r}", where)
        return Rendered(inputs, targets, choices, Provenance(self.name, template, split, index))

    def _render_promptsource(self, compiled: CompiledTemplate, row: Mapping[str, Any], where: Where,
                             provenance: Provenance) -> Rendered:  # fmt: skip
        """promptsource's Template.apply in the sandbox: `|||` in the row's strings protected, answer_choices
        rendered and split, the whole template rendered and split into input and target. The row is deep-copied
        first: a template may build lists with `.append`, and the cached row must never change."""
        key = (self.name, provenance.template, provenance.row)
        context = {k: v.replace("|||", PIPE_GUARD) if isinstance(v, str) else v
                   for k, v in copy.deepcopy(self._fields(row, where, compiled.used_fields)).items()}  # fmt: skip
        choices = None
        if compiled.choices_template is not None:
            text = self._evaluate(compiled.choices_template.render, context, where, "answer_choices", key)
            choices = tuple(part.strip().replace(PIPE_GUARD, "|||") for part in text.split("|||"))
        context["answer_choices"] = list(choices) if choices is not None else None
        output = self._evaluate(compiled.whole.render, context, where, "jinja", key)
        parts = [part.replace(PIPE_GUARD, "|||").strip() for part in output.split("|||")]
        if len(parts) != 2 or not all(parts):
            raise RowSkipped(f"the template gives {len(parts)} part(s), not a non-empty input ||| target: row "
                             "skipped for this template", where)  # fmt: skip
        if choices is not None and parts[1] not in choices:
            raise T2TError(f"target {parts[1]!r} is not one of the answer choices {list(choices)!r}", where)
        return Rendered(parts[0], parts[1], choices, provenance)

    # ----------------------------------------------------------------------------- inputs alone (serving)

    def input_part(self, template: str) -> tuple[Any, frozenset[str]]:
        """The compiled input of a template, apart from its target, and the fields it (with the choices) reads:
        what a caller must give to be answered. A promptsource-style template's input is its `jinja` up to the
        first `|||`; one whose input does not compile apart from its target cannot be served (T2TError)."""
        if template not in self._input_parts:
            compiled = self.templates[template]
            where = Where(file=self.spec.path, task=self.name, template=template)
            if compiled.whole is None:
                source, env = compiled.spec.input, ENV
            else:
                source, env = compiled.spec.jinja, PROMPTSOURCE_ENV
                if "|||" not in source:
                    raise T2TError("the template has no ||| to split its input from its target", where)
                source = source.split("|||", 1)[0]
                if compiled.spec.truncate_fields:
                    source = source.replace(
                        "}}", f" | string | truncate({compiled.spec.truncate_fields}) }}}}"
                    )
            try:
                part, used = _parse(source, "input", where, self.limits, env=env)
            except T2TError as exc:
                raise T2TError(f"the template's input does not render apart from its target ({exc.message}): "
                               "serve another template", where) from None  # fmt: skip
            choice_fields: set[str] = set()
            if compiled.choices_template is not None:
                choice_fields = set(meta.find_undeclared_variables(env.parse(compiled.spec.answer_choices)))
            elif compiled.choices is not None and not isinstance(compiled.choices, tuple):
                choice_fields = set(self._choice_fields(compiled))
            fields = frozenset((used | choice_fields) - TEMPLATE_VARIABLES - set(env.globals))
            self._input_parts[template] = (part, fields)
        return self._input_parts[template]

    def _choice_fields(self, compiled: CompiledTemplate) -> set[str]:
        source = (
            compiled.spec.answer_choices
            if compiled.spec.answer_choices is not None
            else self.spec.answer_choices
        )
        return set(meta.find_undeclared_variables(ENV.parse("{{ " + source + " }}")))

    def render_input(self, row: Mapping[str, Any], template: str, index: int = 0) -> tuple[str, tuple | None]:
        """(input, answer choices) of a row that may lack the target's fields: what serving answers. The row must
        hold every field the input and the choices read (or the task's default for it); values are data."""
        part, fields = self.input_part(template)
        compiled = self.templates[template]
        where = Where(file=self.spec.path, task=self.name, template=template, row=index)
        context: dict[str, Any] = {}
        for name in sorted(fields):
            value = row.get(name, self.spec.defaults.get(name))
            if value is None:
                value = self.spec.defaults.get(name)
            if value is None:
                raise T2TError(f"row has no field {name!r} (the template's input reads it)", where)
            context[name] = value
        key = (self.name, template, index)
        if compiled.whole is not None:
            context = {k: v.replace("|||", PIPE_GUARD) if isinstance(v, str) else v
                       for k, v in copy.deepcopy(context).items()}  # fmt: skip
            choices = None
            if compiled.choices_template is not None:
                text = self._evaluate(compiled.choices_template.render, context, where, "answer_choices", key)
                choices = tuple(c.strip().replace(PIPE_GUARD, "|||") for c in text.split("|||"))
            context["answer_choices"] = list(choices) if choices is not None else None
            inputs = (
                self._evaluate(part.render, context, where, "input", key).replace(PIPE_GUARD, "|||").strip()
            )
        else:
            choices = self._choices(compiled, context, where)
            if choices is not None:
                context["answer_choices"] = list(choices)
            inputs = self._evaluate(part.render, context, where, "input").strip()
        if not inputs:
            raise T2TError("input renders empty", where)
        return inputs, choices

    def try_render(self, row: Mapping[str, Any], template: str, split: str = "train",
                   index: int = 0) -> Rendered | None:  # fmt: skip
        """`render`, or None where a promptsource-style template skips the row."""
        try:
            return self.render(row, template, split, index)
        except RowSkipped:
            return None

    def render_example(self, row: Mapping[str, Any], split: str, index: int, seed: int) -> Rendered:
        """Render with the template chosen for (seed, task, index)."""
        return self.render(row, self.choose(seed, index), split, index)

    # ---------------------------------------------------------------------------------------- helpers

    def _fields(
        self, row: Mapping[str, Any], where: Where, used: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The row's declared fields; a field the template reads (`used`) that is missing or null takes the
        task's default for it, else is an error naming it."""
        defaults = self.spec.defaults
        missing = [f for f in self.spec.fields if f not in row and f not in defaults]
        if missing:
            hint = did_you_mean(missing[0], list(row))
            raise T2TError(
                f"row has no field {missing[0]!r}{hint}; it has {', '.join(sorted(row)) or 'no fields'}",
                where,
            )
        context = {f: row.get(f, defaults.get(f)) for f in self.spec.fields}
        for name in sorted(used):
            if context.get(name) is None:
                if name not in defaults:
                    raise T2TError(null_field(name), where)
                context[name] = defaults[name]
        return context

    def _choices(
        self, compiled: CompiledTemplate, context: dict[str, Any], where: Where
    ) -> tuple[str, ...] | None:
        if compiled.choices is None or isinstance(compiled.choices, tuple):
            return compiled.choices
        value = self._evaluate(compiled.choices, context, where, "answer_choices")
        if not isinstance(value, list | tuple) or not value:
            raise T2TError(f"answer_choices must evaluate to a non-empty list, got {value!r}", where)
        choices = tuple(str(v).strip() for v in value)
        if not all(choices) or len(set(choices)) != len(choices):
            raise T2TError(f"answer_choices must be distinct and non-empty, got {list(choices)!r}", where)
        return choices

    def _text(self, compiled: CompiledTemplate, part: str, context: dict[str, Any], where: Where) -> str:
        """One part of a template rendered: a substitution (`substitution`) whose fields hold strings by joining
        them, anything else (and any text over the output limit or not Unicode, to fail as Jinja's render fails)
        through Jinja in the sandbox."""
        plan = compiled.plans.get(part)
        if plan is not None:
            values = [text if literal else context[text] for literal, text in plan]
            if all(type(v) is str for v in values):
                written = sum(len(v) for (literal, _), v in zip(plan, values, strict=True) if not literal)
                text = "".join(values)
                if written <= self.limits.max_output_chars and first_surrogate(text) is None:
                    return text
        return self._evaluate(getattr(compiled, part).render, context, where, part)

    def _evaluate(self, fn: Any, context: Any, where: Where, what: str, key: tuple = ()) -> Any:
        try:
            value = bounded_call(fn, context, self.limits, key)
            if isinstance(value, Undefined):  # an expression's value: fail here, not later in a repr
                value._fail_with_undefined_error()
            # a literal's "\\ud800" escape renders a lone surrogate: no tokenizer, terminal or file takes it
            texts = [value] if isinstance(value, str) else (
                [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else [])  # fmt: skip
            problem = next((p for p in map(lone_surrogate, texts) if p), None)
            if problem:
                raise T2TError(f"{what}: the rendered text's {problem}, not Unicode text", where)
            return value
        except LimitError as exc:
            raise T2TError(f"{what}: {exc}; a task whose rows need more raises it in its file: limits: "
                           f"{{{exc.limit}: N}}", where) from None  # fmt: skip
        except SecurityError as exc:
            raise T2TError(f"{what}: refused by the sandbox: {exc}", where) from None
        except UndefinedError as exc:
            reason = "refused by the sandbox" if "unsafe" in str(exc) else "undefined value"
            raise T2TError(f"{what}: {reason}: {exc}", where) from None
        except T2TError:
            raise
        except Exception as exc:
            raise T2TError(f"{what} failed to render: {type(exc).__name__}: {exc}", where) from None
