"""Jinja's immutable sandbox with resource bounds: no template can hang t2t or exhaust the machine's memory.

Jinja's sandbox keeps templates away from Python internals, but not away from `{{ 'a' * 10**9 }}`. The bounds:

- sizes are checked at the operation, before anything is allocated: `*`, `+`, `~`, `%` and `**` on strings,
  lists and integers, the string methods and filters that pad or repeat (`center`, `ljust`, `rjust`, `zfill`,
  `expandtabs`, `replace`, `indent`, `format`, `str.format` widths, `tojson`'s indentation, `urlize`'s
  attributes), on `str` and on its subclass `Markup`; and wherever a value becomes text (output, `~`, `%`,
  `format`, `join`, `pprint`, `string`, `tojson`, `sum`), the text it would make is counted first, so a list of a
  million references to one long string cannot turn into a terabyte of text;
- every other filter, string method and slice makes at most a few times its input: its result is checked and
  counted right after, so values made one by one over a list (`map('upper')`) add up to the render's total;
- `range` counts its iterations against a per-render budget (nested loops share it);
- the text a render outputs is counted as it is produced;
- a wall-clock budget per render interrupts pure-Python loops (a timer signal, in the main thread);
- constant expressions are never folded at compile time (the intercepted operators are not folded), so
  `{{ 9**(9**9) }}` is checked when rendered, not computed while compiling;
- a template's source length and nesting depth are bounded when it is compiled;
- functions, methods, modules and classes never render into text (their repr holds a memory address).

`PromptsourceEnvironment` is the same with what promptsource's templates need (list mutation, bounded, on a
deep copy of the row; `zip`, `most_frequent`, a seeded `choice`/`random`).

Breaking a bound raises `LimitError` naming the limit; t2t.templates turns it into one line naming the file,
task, template and row. The defaults (`RenderLimits`) are far above what any shipped or promptsource template
needs; a task file overrides them under `limits:`.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import re
import signal
import string
import threading
import time
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, StrictUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment, SecurityError


@dataclass(frozen=True)
class RenderLimits:
    """Per-render bounds (a task file may override any of them under `limits:`)."""

    max_output_chars: int = 100_000  # characters one render outputs
    max_value_size: int = 1_000_000  # length of any string or list a template builds
    max_built_size: int = 100_000_000  # the lengths of all the strings and lists one render builds, summed
    max_int_bits: int = 4_096  # bits of any integer a template builds (about 1,200 digits)
    max_loop_iterations: int = 100_000  # range() iterations per render, all loops together
    max_seconds: float = 2.0  # wall-clock time of one render
    max_template_chars: int = 50_000  # source length of one template or expression
    max_nesting: int = 60  # depth of a template's syntax tree


class LimitError(Exception):
    """A template broke one of the render limits; `limit` names it."""

    def __init__(self, limit: str, message: str) -> None:
        self.limit = limit
        super().__init__(f"{message} (limit {limit})")


@dataclass
class _Budget:
    limits: RenderLimits
    deadline: float
    iterations: int = 0
    output: int = 0
    built: int = 0  # items of the strings and lists built so far (max_built_size)
    key: tuple = ()  # (task, template, row): seeds the `choice` filter of promptsource-style templates
    choices_made: int = 0

    def tick(self, n: int = 1) -> None:
        self.iterations += n
        if self.iterations > self.limits.max_loop_iterations:
            raise LimitError(
                "max_loop_iterations", f"loops ran over {self.limits.max_loop_iterations:,} iterations"
            )
        if time.monotonic() > self.deadline:
            raise _timeout(self.limits)


def _timeout(limits: RenderLimits) -> LimitError:
    return LimitError("max_seconds", f"the render took over {limits.max_seconds:g} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("t2t_render_budget", default=None)
_DEFAULT = RenderLimits()


def _budget() -> _Budget:
    budget = _BUDGET.get()
    return budget if budget is not None else _Budget(_DEFAULT, time.monotonic() + _DEFAULT.max_seconds)


def _limits() -> RenderLimits:
    return _budget().limits


def _add_built(size: int) -> None:
    """Count a value about to be built against the render's total: one value's size is bounded by max_value_size,
    and many of them, each within it (`map('center', 999999)` over a long list), by max_built_size."""
    budget = _budget()
    budget.built += size
    if budget.built > budget.limits.max_built_size:
        raise LimitError("max_built_size", f"the render built over {budget.limits.max_built_size:,} items of "
                         "strings and lists in all")  # fmt: skip


def check_size(size: int, what: str, built: int | None = None) -> None:
    """Refuse a value of over max_value_size items before it is built, and count it (or `built` items of it, the
    growth of a value extended in place) against max_built_size."""
    limit = _limits().max_value_size
    if size > limit:
        raise LimitError("max_value_size", f"{what} would build a value of {size:,} items (over {limit:,})")
    _add_built(size if built is None else built)


def check_int(value: int) -> int:
    limit = _limits().max_int_bits
    if abs(value).bit_length() > limit:
        raise LimitError("max_int_bits", f"an integer of over {limit:,} bits")
    return value


def text_size(value: Any, limit: int) -> int:
    """About how many characters `str(value)` would have, counted without building it, and only up to just
    past `limit`: a list of a million references to one long string is small in memory but not as text."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 4  # quotes and a separator inside a container's repr
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        else:
            total += 24
    return total


def check_text(value: Any, what: str) -> None:
    """Refuse a value whose text would be larger than the value-size limit, before it is made into text."""
    if isinstance(value, str | int | float | bool) or value is None:
        if isinstance(value, str):
            check_size(len(value), what)
        return
    limit = _limits().max_value_size
    size = text_size(value, limit)
    if size > limit:
        raise LimitError("max_value_size", f"{what} would make over {limit:,} characters of text")
    _add_built(size)


_WIDTH = re.compile(r"(\d+)")
_PRINTF = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


def _check_widths(spec: str, what: str) -> None:
    for match in _WIDTH.finditer(spec):
        check_size(int(match.group(1)), what)


def _check_printf(fmt: str) -> None:
    for match in _PRINTF.finditer(fmt):
        for group in match.groups():
            if group is not None and group != "*":
                check_size(int(group), "a % format width")
            elif group == "*":
                raise SecurityError("'*' widths in % formats are not allowed in templates")


def _check_format_string(fmt: str) -> None:
    for _, _field, spec, _ in string.Formatter().parse(fmt):
        if spec:
            _check_widths(spec, "a format width")
            if "{" in spec:
                raise SecurityError("nested replacement fields in format specs are not allowed in templates")


def _bounded_binop(op: str, left: Any, right: Any) -> Any:
    sequence = (str, list, tuple)
    if op == "*":
        if isinstance(left, sequence) and isinstance(right, int):
            check_size(len(left) * max(right, 0), "'*'")
        elif isinstance(right, sequence) and isinstance(left, int):
            check_size(len(right) * max(left, 0), "'*'")
        elif (isinstance(left, int) and isinstance(right, int)
              and left.bit_length() + right.bit_length() > _limits().max_int_bits + 1):  # fmt: skip
            raise LimitError("max_int_bits", f"an integer of over {_limits().max_int_bits:,} bits")
    elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if (abs(left).bit_length() - 1) * right > _limits().max_int_bits:
            raise LimitError("max_int_bits", f"an integer of over {_limits().max_int_bits:,} bits")
    elif op == "+" and isinstance(left, sequence) and isinstance(right, sequence):
        check_size(len(left) + len(right), "'+'")
    elif op == "%" and isinstance(left, str):
        _check_printf(left)
        check_text(right, "'%'")
    return _BINOPS[op](left, right)


_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "//": operator.floordiv, "**": operator.pow, "%": operator.mod}  # fmt: skip

# str methods whose result can be far larger than their inputs, and how large
_PADDING = {"center", "ljust", "rjust", "zfill"}
# methods that make bytes (`str.encode`, `int.to_bytes`): a template builds text, and bytes have methods of their own
# (`ljust`, `*`, `replace`) that would grow them unchecked
_BYTES_MAKERS = {"encode", "to_bytes"}


def _translation_growth(table: Any) -> int:
    """The most characters `str.translate(table)` writes for one character of its input."""
    if isinstance(table, dict):
        values: Any = table.values()
    elif isinstance(table, list | tuple):
        values = table
    else:
        return 1
    return max([1, *(len(v) for v in values if isinstance(v, str))])


def _check_str_method(obj: str, name: str, args: tuple, kwargs: dict) -> None:
    if name in _PADDING and args and isinstance(args[0], int):
        check_size(args[0], f"str.{name}")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            check_size(len(obj) * max(size, 1), "str.expandtabs")
    elif name == "join" and args:
        check_text(args[0] if isinstance(args[0], list | tuple) else list(args[0]), "str.join")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = obj.count(args[0]) if args[0] else len(obj) + 1
        check_size(len(obj) + count * max(len(args[1]) - len(args[0]), 0), "str.replace")
    elif name == "translate" and args:
        check_size(len(obj) * _translation_growth(args[0]), "str.translate")


class _CountedRange:
    """range() for templates: a sequence whose iteration counts against the render's loop budget."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        # len() of a range past sys.maxsize items raises OverflowError; its items are counted exactly so
        size = (
            self._range.stop - self._range.start + self._range.step - (1 if self._range.step > 0 else -1)
        ) // self._range.step
        if max(size, 0) > _limits().max_loop_iterations:
            raise LimitError("max_loop_iterations", f"range of {size:,} items "
                             f"(over {_limits().max_loop_iterations:,})")  # fmt: skip

    def __iter__(self) -> Iterator[int]:
        budget = _budget()
        for value in self._range:
            budget.tick()
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, value: Any) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


_NOT_TEXT = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType,
             types.ModuleType, type, _CountedRange)  # fmt: skip


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` output passes here: no callables in the text, and the output budget."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: a missing value is an error, as without finalize
    if isinstance(value, _NOT_TEXT) or callable(value):
        raise SecurityError(f"a {type(value).__name__} cannot render into text")
    budget = _budget()
    if isinstance(value, str):
        budget.output += len(value)
    else:
        budget.output += text_size(value, budget.limits.max_output_chars + 1)
    if budget.output > budget.limits.max_output_chars:
        raise LimitError(
            "max_output_chars", f"the output passed {budget.limits.max_output_chars:,} characters"
        )
    if time.monotonic() > budget.deadline:
        raise _timeout(budget.limits)
    return value


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` joined through the environment's size check and slices counted."""

    def visit_Getitem(self, node: nodes.Getitem, frame: Any) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        # Jinja writes `x[a:b]` as Python's slice, past the environment: a slice is a new value (`big[1:]` kept in
        # a loop's list built 3 GB within the 2 s timer until 2026-12-05), so it is made through the environment
        self.write("environment.bounded_slice(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for i, part in enumerate((node.arg.start, node.arg.stop, node.arg.step)):
            self.write(", " if i else "")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write("))")

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, strict undefined, no randomness, and the bounds above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})  # also keeps them out of compile-time folding
    code_generator_class = _BoundedCodeGenerator

    @staticmethod
    def bounded_slice(value: Any, part: slice) -> Any:
        result = value[part]
        count_made(result, (value,), "a slice")
        return result

    @staticmethod
    def bounded_concat(values: tuple) -> str:
        for value in values:
            check_text(value, "'~'")
        parts = [str(v) for v in values]
        check_size(sum(len(p) for p in parts), "'~'", built=0)  # each part was counted by check_text
        return "".join(parts)

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        del self.filters["random"]
        del self.globals["lipsum"]
        self.globals["range"] = _CountedRange
        checks = {"center": _check_center, "indent": _check_indent, "format": _check_format_filter,
                  "replace": _check_replace_filter, "join": _check_join, "pprint": _check_text_of,
                  "string": _check_text_of, "tojson": _check_tojson, "sum": _check_sum, "batch": _check_batch,
                  "slice": _check_slice, "wordwrap": _check_wordwrap, "urlize": _check_urlize,
                  "xmlattr": _check_text_of}  # fmt: skip
        # every filter's result is counted too: those without a check above (`e`, `forceescape`, `urlencode`,
        # `upper`, ...) make values of a few times their input's size, and over a list (`map('e')`) many of them
        for name, filter_fn in list(self.filters.items()):
            self.filters[name] = _checked(filter_fn, name, checks.get(name))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _bounded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(__obj, types.BuiltinMethodType) and name in _BYTES_MAKERS:
            raise SecurityError(f"{type(owner).__name__}.{name} is not allowed in templates (it makes bytes)")
        # str's methods, and those of its subclass Markup (what `|e` and `|tojson` return), which are Python
        # functions wrapping str's: `(field|e).center(10**9)` built 1 GB unchecked until 2026-12-05
        text_method = isinstance(owner, str) and callable(__obj)
        if text_method:
            _check_str_method(owner, name, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, int) and not isinstance(result, bool):
            check_int(result)
        elif text_method and name not in _STR_CHECKED:
            count_made(result, (owner, *args), f"str.{name}")
        return result

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        if value.__name__ == "format_map":

            def refuse(*args: Any, **kwargs: Any) -> str:
                raise SecurityError("str.format_map is not allowed in templates")

            return refuse
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(template)
            check_text(list(args) + list(kwargs.values()), "str.format")
            return wrapped(*args, **kwargs)

        return checked


def _check_center(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> None:
    if isinstance(width, int):
        check_size(width, "center")


def _check_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    text = str(value)
    pad = width if isinstance(width, int) else len(str(width))
    check_size(len(text) + pad * (text.count("\n") + 1), "indent")


def _check_format_filter(value: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(value, str):
        _check_printf(value)
    check_text(list(args) + list(kwargs.values()), "format")


def _filter_args(args: tuple) -> tuple:
    """A filter's own arguments, without the environment or evaluation context Jinja passes some filters first."""
    return (
        args[1:] if args and (isinstance(args[0], Environment) or hasattr(args[0], "environment")) else args
    )


def _check_batch(*args: Any, **kwargs: Any) -> None:
    """A filled last batch holds `linecount` items however short the input."""
    _, linecount, fill_with = (*_filter_args(args), None, None, None)[:3]
    linecount = kwargs.get("linecount", linecount)
    if kwargs.get("fill_with", fill_with) is not None and isinstance(linecount, int):
        check_size(linecount, "batch")


def _check_slice(*args: Any, **kwargs: Any) -> None:
    """`slice(n)` makes n lists, empty ones included."""
    _, slices = (*_filter_args(args), None, None)[:2]
    slices = kwargs.get("slices", slices)
    if isinstance(slices, int):
        check_size(slices, "slice")


def _check_wordwrap(*args: Any, **kwargs: Any) -> None:
    """Each line break writes `wrapstring`: at most one break per character of the text."""
    text, _, _, wrapstring = (*_filter_args(args), None, None, None, None)[:4]
    wrapstring = kwargs.get("wrapstring", wrapstring)
    if isinstance(wrapstring, str):
        size = len(str(text))
        check_size(size + size * max(len(wrapstring) - 1, 0), "wordwrap")


def _check_join(*args: Any, **kwargs: Any) -> None:
    value = args[-2] if len(args) >= 2 and not isinstance(args[-1], list | tuple) else args[-1]
    for item in args + tuple(kwargs.values()):
        if isinstance(item, list | tuple | str):
            check_text(item, "join")
    if isinstance(value, list | tuple):
        separator = next((a for a in args if isinstance(a, str)), "")
        check_size(len(separator) * len(value), "join")


def _check_text_of(*args: Any, **kwargs: Any) -> None:
    for item in _filter_args(args):
        check_text(item, "the filter's text")


def _check_sum(*args: Any, **kwargs: Any) -> None:
    start = kwargs.get("start", args[-1] if len(args) >= 3 else 0)
    if not isinstance(start, int | float):
        items = next((a for a in args if isinstance(a, list | tuple)), [])
        check_text([start, *items], "sum")


def _check_replace_filter(value: Any, old: Any = "", new: Any = "", *args: Any, **kwargs: Any) -> None:
    _check_str_method(str(value), "replace", (str(old), str(new)), {})


def _check_tojson(*args: Any, **kwargs: Any) -> None:
    """`tojson(indent=N)` writes a line break and N spaces per nesting level before every item, in one call of
    C code: `[[[[[[[[1]]]]]]]]|tojson(indent=999999)` made 64 million characters."""
    value, indent = (*_filter_args(args), None, None)[:2]
    indent = kwargs.get("indent", indent)
    check_text(value, "the filter's text")
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > 0:
        check_size(_indented_json_size(value, width, _limits().max_value_size), "tojson's indentation")


def _indented_json_size(value: Any, width: int, limit: int) -> int:
    """The characters the indentation of `json.dumps(value, indent=width)` adds (each item of a container at
    level L gets a line break and width x (L + 1) characters, its closing bracket width x L), counted only up
    to just past `limit`."""
    total, stack = 0, [(value, 0)]
    while stack and total <= limit:
        item, level = stack.pop()
        items = (
            list(item.values()) if isinstance(item, dict) else item if isinstance(item, list | tuple) else ()
        )
        if items:
            total += len(items) * (1 + width * (level + 1)) + 1 + width * level
            stack.extend((child, level + 1) for child in items)
    return total


def _check_urlize(*args: Any, **kwargs: Any) -> None:
    """Every link gets the `rel` and `target` text: `('www.ab.com ' * 10000)|urlize(target='x' * 999999)` built
    3.7 GB within the 2 s timer."""
    value, _, _, target, rel = (*_filter_args(args), None, None, None, None, None)[:5]
    extra = sum(len(v) for v in (kwargs.get("target", target), kwargs.get("rel", rel)) if isinstance(v, str))
    if extra:
        check_size(len(str(value).split()) * extra, "urlize's links", built=0)


# str methods whose results are counted before they are made (_check_str_method, wrap_str_format)
_STR_CHECKED = _PADDING | {"expandtabs", "join", "replace", "translate", "format"}


def count_made(result: Any, inputs: tuple, what: str, counted: bool = False) -> None:
    """Refuse a string or list an operation has just made where it is over max_value_size and larger than any of
    its inputs (a row's field may be longer than the limit; a value a template grows past it may not), and count
    it against the render's total (max_built_size) unless a check before the operation has (`counted`). Bounded
    by one call: the operations checked only here make at most a few times their input's size."""
    if not isinstance(result, str | list | tuple) or any(result is item for item in inputs):
        return
    size, limit = len(result), _limits().max_value_size
    if size > limit and size > max((len(i) for i in inputs if isinstance(i, str | list | tuple)), default=0):
        raise LimitError("max_value_size", f"{what} made a value of {size:,} items (over {limit:,})")
    if not counted:
        _add_built(size)


def _checked(filter_fn: Any, name: str, check: Any) -> Any:
    """A filter with its check before the call (if any), and its result counted after it (where no check has
    counted it before)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(*args, **kwargs)
        result = filter_fn(*args, **kwargs)
        count_made(result, _filter_args(args) + tuple(kwargs.values()), name, counted=check is not None)
        return result

    for attr in ("jinja_pass_arg",):  # keep Jinja's pass_context / pass_environment markers
        if hasattr(filter_fn, attr):
            setattr(run, attr, getattr(filter_fn, attr))
    return run


class PromptsourceEnvironment(BoundedEnvironment):
    """For promptsource-style templates: the same bounds, list and dict mutation allowed (promptsource's templates
    build lists with `.append`; t2t renders them on a deep copy of the row, so the cached row never changes), and
    promptsource's `zip`, `most_frequent` and `choice`, the last seeded by (task, template, row, call number)
    instead of the global random state, so a render is the same at every position and on every resume."""

    def __init__(self) -> None:
        super().__init__()
        self.globals["zip"] = zip
        self.filters["most_frequent"] = most_frequent
        self.filters["choice"] = seeded_choice
        self.filters["random"] = (
            seeded_choice  # Jinja's own random filter, used by a few templates: seeded too
        )

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return SandboxedEnvironment.is_safe_attribute(
            self, obj, attr, value
        )  # mutation allowed, internals not

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, list | dict) and isinstance(__obj, types.BuiltinMethodType):
            grow = {"append": 1, "insert": 1, "extend": text_size(args[0], _limits().max_value_size) if args else 0,
                    "update": len(args[0]) if args and hasattr(args[0], "__len__") else 0}.get(__obj.__name__, 0)  # fmt: skip
            check_size(len(owner) + grow, f"{type(owner).__name__}.{__obj.__name__}", built=grow)
        return super().call(__context, __obj, *args, **kwargs)


def most_frequent(items: Any) -> list | None:
    """promptsource's filter: the items that occur most often, in order of first occurrence."""
    if not items:
        return None
    counts = Counter(items).most_common()
    return [item for item, count in counts if count == counts[0][1]]


def seeded_choice(items: Any) -> Any:
    """promptsource's `choice` filter, deterministic: seeded by the render's (task, template, row) and call count."""
    from t2t.rng import keyed_rng

    budget = _budget()
    options = list(items)
    if not options:
        raise SecurityError("choice of an empty sequence")
    budget.choices_made += 1
    return options[int(keyed_rng("choice", *budget.key, budget.choices_made).integers(len(options)))]


ENV = BoundedEnvironment()
PROMPTSOURCE_ENV = PromptsourceEnvironment()


def check_source(source: str, limits: RenderLimits) -> None:
    if len(source) > limits.max_template_chars:
        raise LimitError("max_template_chars", f"the template has {len(source):,} characters "
                         f"(over {limits.max_template_chars:,})")  # fmt: skip


def nesting_depth(ast: nodes.Node) -> int:
    """The depth of a syntax tree, without recursion."""
    deepest, stack = 0, [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


class _Alarm(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm


_HANDLER_SET = False  # alarm_handler() holds the SIGALRM handler for a batch of renders
_ARMED_UNTIL = 0.0  # in a batch: when its armed timer fires (time.monotonic), 0.0 while none is armed


def _on_batch_alarm(signum: int, frame: Any) -> None:
    """The timer of a batch of renders: one timer serves many renders. It fires at the deadline of the render
    that armed it; if another render runs now, whose deadline is later, it is armed again for that one."""
    global _ARMED_UNTIL
    budget = _BUDGET.get()
    if budget is None:  # between renders: the next render arms it
        _ARMED_UNTIL = 0.0
        return
    left = budget.deadline - time.monotonic()
    if left <= 0:
        _ARMED_UNTIL = 0.0
        raise _Alarm
    signal.setitimer(signal.ITIMER_REAL, left)
    _ARMED_UNTIL = budget.deadline


@contextlib.contextmanager
def alarm_handler() -> Iterator[None]:
    """One timer for many `bounded_call`s (a batch of rows): the first render arms it, and a render whose
    deadline it would miss arms it again; when it fires during a render that still has time left, it is armed
    for that render's deadline. So each render is still interrupted at its own deadline, with a system call per
    timer period instead of two per render. Outside the main thread (no timers there) it does nothing."""
    global _HANDLER_SET, _ARMED_UNTIL
    if (
        _HANDLER_SET
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
    ):
        yield
        return
    # read before it is replaced: a signal handled between the two (Ctrl-C, SIGTERM) leaves `previous` set
    previous = _current_alarm_handler()
    signal.signal(signal.SIGALRM, _on_batch_alarm)
    _HANDLER_SET, _ARMED_UNTIL = True, 0.0
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _HANDLER_SET, _ARMED_UNTIL = False, 0.0
        signal.signal(signal.SIGALRM, previous)


def _current_alarm_handler() -> Any:
    """SIGALRM's handler as `signal.signal` takes it back (None, a handler set outside Python, as the default)."""
    handler = signal.getsignal(signal.SIGALRM)
    return signal.SIG_DFL if handler is None else handler


def bounded_call(fn: Any, context: Any, limits: RenderLimits, key: tuple = ()) -> Any:
    """Run one render (or expression) under `limits`: the per-render budget, and in the main thread a timer that
    interrupts a render still running after `max_seconds` (inside `alarm_handler`, the batch's timer). `key`
    seeds the `choice` filter."""
    global _ARMED_UNTIL
    budget = _Budget(limits, time.monotonic() + limits.max_seconds, key=key)
    token = _BUDGET.set(budget)
    use_timer = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    in_batch = use_timer and _HANDLER_SET
    own_timer = use_timer and not in_batch
    previous = _current_alarm_handler() if own_timer else None
    try:
        if own_timer:
            # `previous` read before: `previous = signal.signal(...)` left it None where a signal was handled
            # between the call and the assignment (SIGTERM raising Terminated there turned into a TypeError from
            # the restore below, and the row into "failed to render")
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, limits.max_seconds)
        elif in_batch and not 0.0 < _ARMED_UNTIL <= budget.deadline:  # none armed, or armed too late for us
            signal.setitimer(signal.ITIMER_REAL, limits.max_seconds)
            _ARMED_UNTIL = budget.deadline
        try:
            return fn(context)
        except _Alarm:
            raise _timeout(limits) from None
        except RecursionError:
            raise LimitError("max_nesting", "the template recursed too deeply") from None
        except MemoryError as exc:
            raise LimitError("max_value_size", f"{type(exc).__name__}: {exc}") from None
        except Exception:
            if (
                time.monotonic() >= budget.deadline
            ):  # the timer fired inside code that turned it into another error
                raise _timeout(limits) from None
            raise
    finally:
        if own_timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _BUDGET.reset(token)  # a batch's timer that fires from now on finds no render running
