"""Mixtures: which tasks a model trains on, how often each is drawn, and which are held out.

A member without an explicit weight gets its rate from the mixture's rule, in seqio's order:

    rate(task) = min(scale * N, K) ** (1 / T)        (rule "examples" or "temperature"; "uniform": 1)

where N is the number of training rows of the task, K the cap and T the temperature. Rates are then
normalised to probabilities. A nested mixture contributes its own probabilities scaled by its weight (or, without
one, by the sum of the rule's rates of its tasks), as seqio's `Mixture.get_rate` shares a sub-mixture's rate.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from t2t.config import HubSource, Spec, check_name, line_of, load_yaml, validation_error, yaml_nodes
from t2t.errors import T2TError, Where, did_you_mean
from t2t.hub import hub_unreachable
from t2t.registry import Registry
from t2t.sampler import DEFAULT_BLOCK, MixtureStream
from t2t.sources import available_offline, load_split, num_rows, select_rows, splits_of
from t2t.templates import Task


def _check_weight(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a weight must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a weight must be a finite number >= 0, got {value!r}")
    return float(value)


Weight = Annotated[Any, BeforeValidator(_check_weight)]
CLUSTER_PREFIX = "cluster:"


def _options_share(value: Any) -> Any:
    return float(value) if isinstance(value, bool) else value


class PromptingSpec(Spec):
    """FLAN-style variants of the training examples (FLAN 2022 mixes them): exemplars before the input, and an
    options suffix listing the answer choices. Every choice is keyed by (mixture seed, task, the task's running
    example index), so it is the same on every rank and every resume."""

    few_shot: Annotated[int, Field(ge=0, le=64)] = 0  # k exemplars from the training split (0: zero-shot)
    few_shot_share: Annotated[float, Field(ge=0, le=1)] = 1.0  # of the examples, those given exemplars
    separator: str | None = (
        None  # between exemplars (default: the task's few_shot_separator, else a blank line)
    )
    answer_separator: str = "\n"  # between an exemplar's input and its target
    # of the examples whose template has answer choices it does not already list, those given the suffix
    # "OPTIONS:\n- a\n- b" (true = all)
    options: Annotated[float, BeforeValidator(_options_share), Field(ge=0, le=1)] = 0.0


class MemberSpec(Spec):
    """A member written as a mapping: its weight and what it changes for its tasks."""

    weight: Weight = None
    templates: dict[str, Any] | None = None  # keep templates whose metadata has these values
    prompting: PromptingSpec | None = None  # field by field over the mixture's


def _member(value: Any) -> Any:
    if isinstance(value, dict):
        return MemberSpec.model_validate(value)
    return MemberSpec(weight=_check_weight(value))


Member_ = Annotated[Any, BeforeValidator(_member)]


class RateSpec(Spec):
    rule: Literal["uniform", "examples", "temperature"] = "examples"
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    cap: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # K
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0  # T
    # N counts (row, template) pairs: a task's rows times its templates, as when every template is a task of
    # its own (T0's seqio mixtures, P3)
    per_template: bool = False


class SplitsSpec(Spec):
    train: str = "train"
    eval: str = "validation"


class MixtureSpec(Spec):
    name: str
    description: str = ""
    # selector -> explicit weight, or null for the rate rule. A selector is a task name, a mixture name,
    # a glob over task names ("*_lookup") or a cluster ("cluster:nli").
    # A member's value is its weight (null: the rate rule's), or a mapping {weight, templates, prompting}.
    members: dict[str, Member_] = Field(min_length=1)
    rate: RateSpec = RateSpec()
    held_out: list[str] = Field(default_factory=list)
    splits: SplitsSpec = SplitsSpec()
    seed: int = 0
    # Keep only the templates whose metadata has these values (e.g. {original_task: true}, as T0 trains), for
    # the training members and the held-out tasks alike; a member's own `templates` replaces it for that member.
    templates: dict[str, Any] | None = None
    held_out_templates: dict[str, Any] | None = None  # the held-out tasks' filter, where it differs
    prompting: PromptingSpec = PromptingSpec()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_name(name, "mixture name")


def rule_rate(n_examples: int, rate: RateSpec, where: Where | None = None) -> float:
    """seqio's mixing_rate_num_examples: min(scale * N, K) ** (1 / T); 1 for the uniform rule. A temperature so
    small that the power leaves a float's range is refused, saying the smallest that fits."""
    if rate.rule == "uniform":
        return 1.0
    value = rate.scale * n_examples
    if rate.cap is not None:
        value = min(value, rate.cap)
    try:
        result = value ** (1.0 / rate.temperature)
    except OverflowError:
        result = math.inf
    if value > 0 and (result == 0.0 or math.isinf(result)):
        fits = abs(math.log(value)) / math.log(sys.float_info.max)
        raise T2TError(f"rate.temperature {rate.temperature:g}: min(scale * N, K) ** (1 / T) = {value:g} ** "
                       f"{1.0 / rate.temperature:g} is past a float's range (N = {n_examples:,}); use a temperature "
                       f"of at least {fits * 1.01:.3g}", where or Where())  # fmt: skip
    return result


@dataclass(frozen=True)
class Member:
    """One training task of a resolved mixture. Rate and probability are None where they rest on row counts
    that need the hub (`load_mixture(..., sizes="try" or "skip")`)."""

    task: str
    rate: float | None
    probability: float | None
    n_examples: int | None
    via: str  # the selector that brought it in
    explicit: bool  # weight given in the file rather than by the rule
    capped: bool  # the cap K lowered its rate
    templates: tuple[str, ...] = ()  # the templates it trains on (after the mixture's template filter)
    prompting: PromptingSpec = field(default_factory=PromptingSpec)


@dataclass(frozen=True)
class Mixture:
    """A mixture with every selector expanded, rates computed and leakage checked."""

    spec: MixtureSpec
    path: Path | None
    members: tuple[Member, ...]
    held_out: tuple[str, ...]
    held_out_templates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    needs_hub: tuple[str, ...] = ()  # tasks whose row counts could not be read offline

    def templates_of(self, task: str) -> tuple[str, ...]:
        """The templates a task of this mixture is trained or evaluated with."""
        for m in self.members:
            if m.task == task:
                return m.templates
        return self.held_out_templates[task]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task_names(self) -> list[str]:
        return [m.task for m in self.members]

    @property
    def probabilities(self) -> list[float]:
        return [m.probability for m in self.members]


def load_mixture_spec(path: Path) -> MixtureSpec:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise T2TError("a mixture file must be a YAML mapping", Where(file=path))
    try:
        spec = MixtureSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, path) from None
    if spec.name != path.stem:
        where = Where(file=path, line=line_of(yaml_nodes(path), ("name",)))
        raise T2TError(f"mixture name {spec.name!r} must match the file name {path.stem!r}", where)
    return spec


def load_mixture(registry: Registry, name: str, sizes: Literal["read", "try", "skip"] = "read") -> Mixture:
    """Resolve a mixture. `sizes`: "read" every training task's row count (training needs them); "try", and leave
    a hub task's count unknown where the hub cannot be reached (`t2t mixture show` plans the rest); "skip" the
    counts that need the hub (evaluation needs none). An unknown count leaves the rates that rest on it unknown."""
    return _Resolver(registry, sizes).resolve(name, (), PromptingSpec(), None)


def _overlay(base: PromptingSpec, top: PromptingSpec | None) -> PromptingSpec:
    """`top`'s fields that its file sets, over `base`."""
    if top is None:
        return base
    return base.model_copy(update={k: getattr(top, k) for k in top.model_fields_set})


class _Resolver:
    def __init__(self, registry: Registry, sizes: str = "read") -> None:
        self.registry, self.sizes = registry, sizes
        self._clusters: dict[str, list[str]] | None = None
        self.needs_hub: list[str] = []

    def resolve(self, name: str, stack: tuple[str, ...], prompting: PromptingSpec,
                template_filter: dict | None) -> Mixture:  # fmt: skip
        if name in stack:
            raise T2TError(f"mixtures nest in a cycle: {' -> '.join((*stack, name))}")
        if name not in self.registry.mixture_files:
            raise T2TError(f"unknown mixture {name!r}{did_you_mean(name, self.registry.mixture_files)}")
        path = self.registry.mixture_files[name]
        spec = load_mixture_spec(path)
        where = Where(file=path)
        prompting = _overlay(prompting, spec.prompting)
        template_filter = spec.templates if spec.templates is not None else template_filter
        held_out = self._expand_held_out(spec, where)
        rates: dict[str, tuple] = {}
        for selector, member in spec.members.items():
            member_prompting = _overlay(prompting, member.prompting)
            member_filter = member.templates if member.templates is not None else template_filter
            for task, rate, explicit, capped, templates, task_prompting in self._member_rates(
                spec, selector, member, held_out, stack, where, member_prompting, member_filter
            ):
                if task in rates:
                    raise T2TError(
                        f"task {task!r} is selected twice: by {rates[task][1]!r} and by {selector!r}", where
                    )
                rates[task] = (rate, selector, explicit, capped, templates, task_prompting)
        self._check_leakage(rates, held_out, where)
        if any(r is None for r, *_ in rates.values()):
            members = tuple(
                Member(
                    task, None, None, self._size(task, spec), via, explicit, capped, templates, task_prompting
                )
                for task, (_, via, explicit, capped, templates, task_prompting) in rates.items()
            )
        else:
            largest = max((r for r, *_ in rates.values()), default=0.0)
            if not largest > 0:
                raise T2TError("the members' weights sum to zero: no task would ever be drawn", where)
            total = sum(r / largest for r, *_ in rates.values())  # scaled first: huge weights cannot overflow
            members = tuple(
                Member(task, rate, rate / largest / total, self._size(task, spec), via, explicit, capped,
                       templates, task_prompting)
                for task, (rate, via, explicit, capped, templates, task_prompting) in rates.items()
            )  # fmt: skip
        held_filter = spec.held_out_templates if spec.held_out_templates is not None else template_filter
        held_templates = {t: self._templates(t, held_filter, where) for t in held_out}
        return Mixture(
            spec, path, members, tuple(held_out), held_templates, tuple(dict.fromkeys(self.needs_hub))
        )

    def _templates(self, task: str, template_filter: dict | None, where: Where) -> tuple[str, ...]:
        """The task's templates whose metadata has every value of the filter (all of them without one)."""
        found = self.registry.task(task)
        if not template_filter:
            return found.template_names
        kept = tuple(
            t.name for t in found.spec.templates
            if all(t.metadata.get(key) == value for key, value in template_filter.items())
        )  # fmt: skip
        if not kept:
            wanted = ", ".join(f"{k} = {v!r}" for k, v in template_filter.items())
            raise T2TError(f"task {task!r}: no template has metadata {wanted} (the template filter leaves it "
                           "nothing to train or evaluate on)", where)  # fmt: skip
        return kept

    # ------------------------------------------------------------------------------------- selectors

    def _clusters_map(self) -> dict[str, list[str]]:
        if self._clusters is None:
            self._clusters = {}
            for task in self.registry.tasks():
                self._clusters.setdefault(task.spec.cluster, []).append(task.name)
        return self._clusters

    def _select(self, selector: str, where: Where) -> list[str]:
        """Task names a selector stands for (not mixtures)."""
        if selector.startswith(CLUSTER_PREFIX):
            cluster = selector.removeprefix(CLUSTER_PREFIX)
            clusters = self._clusters_map()
            if cluster not in clusters:
                raise T2TError(f"unknown cluster {cluster!r}{did_you_mean(cluster, clusters)}", where)
            return sorted(clusters[cluster])
        if any(c in selector for c in "*?["):
            found = fnmatch.filter(self.registry.task_names, selector)
            if not found:
                raise T2TError(f"the pattern {selector!r} matches no task", where)
            return found
        if selector in self.registry.task_files:
            return [selector]
        known = [*self.registry.task_files, *self.registry.mixture_files]
        raise T2TError(f"unknown task or mixture {selector!r}{did_you_mean(selector, known)}", where)

    def _expand_held_out(self, spec: MixtureSpec, where: Where) -> list[str]:
        held: list[str] = []
        for selector in spec.held_out:
            held.extend(t for t in self._select(selector, where) if t not in held)
        for task in held:
            splits = splits_of(self.registry.task(task).spec)
            if spec.splits.eval not in splits:
                raise T2TError(
                    f"held-out task {task!r} has no {spec.splits.eval!r} split to evaluate on "
                    f"(it has {', '.join(splits)})",
                    where,
                )
        return held

    def _member_rates(self, spec, selector, member, held_out, stack, where, prompting, template_filter):
        """(task, rate, explicit, capped, templates, prompting) for each task a member brings in."""
        weight = member.weight
        is_task = selector in self.registry.task_files
        if selector in self.registry.mixture_files and not is_task:
            yield from self._nested(spec, selector, member, stack, where, prompting, template_filter)
            return
        tasks = self._select(selector, where)
        if is_task and selector in held_out:
            raise T2TError(f"task {selector!r} is held out but also listed as a training member", where)
        for task in (t for t in tasks if t not in held_out):  # globs and clusters skip held-out tasks
            templates = self._templates(task, template_filter, where)
            if weight is not None:
                yield task, float(weight), True, False, templates, prompting
            else:
                n = self._size(task, spec)
                if n is not None and spec.rate.per_template:
                    n *= len(templates)
                capped = (
                    n is not None
                    and spec.rate.rule != "uniform"
                    and spec.rate.cap is not None
                    and spec.rate.scale * n > spec.rate.cap
                )
                rate = (
                    None if n is None and spec.rate.rule != "uniform" else rule_rate(n or 0, spec.rate, where)
                )
                yield task, rate, False, capped, templates, prompting

    def _nested(self, spec, name, member, stack, where, prompting, template_filter):
        """A nested mixture's tasks: its own settings, under those its entry here (or this mixture) sets."""
        child = self.resolve(name, (*stack, spec.name), prompting, template_filter)
        weight = member.weight
        unknown = any(m.probability is None for m in child.members)
        if weight is not None:
            total = float(weight)
        elif unknown or (spec.rate.rule != "uniform" and any(m.n_examples is None for m in child.members)):
            total = None
        else:
            scale = (lambda m: len(m.templates)) if spec.rate.per_template else (lambda m: 1)
            total = sum(rule_rate(m.n_examples * scale(m), spec.rate, where) for m in child.members)
        for m in child.members:
            rate = None if total is None or unknown else total * m.probability
            yield m.task, rate, weight is not None, False, m.templates, m.prompting

    def _check_leakage(self, rates: dict, held_out: list[str], where: Where) -> None:
        sources = {t: self.registry.task(t).spec.source_id for t in rates}
        for held in held_out:
            source = self.registry.task(held).spec.source_id
            for task, task_source in sources.items():
                if task == held:
                    raise T2TError(
                        f"task {held!r} is held out but also trained (via {rates[task][1]!r})", where
                    )
                if task_source == source:
                    raise T2TError(
                        f"held-out task {held!r} and training task {task!r} are built on the same data ({source})",
                        where,
                    )

    def _size(self, task: str, spec: MixtureSpec) -> int | None:
        found = self.registry.task(task)
        hub = isinstance(found.spec.source, HubSource) and not available_offline(found.spec)
        if hub and self.sizes == "try" and hub_unreachable() is not None:
            self.sizes = "skip"  # asked once: every other hub count would fail the same way, slowly
        if hub and self.sizes == "skip" and spec.splits.train not in found.spec.num_examples:
            self.needs_hub.append(task)
            return None
        try:
            return num_rows(found, spec.splits.train)
        except T2TError:
            if not hub or self.sizes == "read":
                raise
            self.needs_hub.append(task)
            return None


REPEAT_WARNING_EPOCHS = 10.0  # warn when a task's rows would repeat this often


def stream_for(mixture: Mixture, registry: Registry, block_size: int = DEFAULT_BLOCK) -> MixtureStream:
    """The deterministic training stream of a mixture (no data is loaded)."""
    if mixture.needs_hub:
        raise T2TError(f"the row counts of {', '.join(mixture.needs_hub)} need the hub")
    return MixtureStream(
        mixture.task_names,
        mixture.probabilities,
        [m.n_examples for m in mixture.members],
        [m.templates for m in mixture.members],
        seed=mixture.spec.seed,
        block_size=block_size,
    )


def skip_counts(task: Task, split: str, templates: tuple[str, ...], sample: int) -> dict[str, int] | None:
    """Per template, how many of a seeded sample of `sample` rows it skips (promptsource style: no input |||
    target); None where the rows need the hub."""
    if sample <= 0 or not available_offline(task.spec):
        return None
    rows = load_split(task, split)
    picks = select_rows(task.name, split, len(rows), sample)
    skipped = dict.fromkeys(templates, 0)
    for i in picks:
        row, index = rows.rows[int(i)], int(rows.source_rows[i])
        for template in templates:
            skipped[template] += task.try_render(row, template, split, index) is None
    return skipped


def report(mixture: Mixture, registry: Registry, steps: int, batch_size: int, sample: int = 0) -> dict:
    """The dry run: per task, how often it is drawn in `steps` steps of `batch_size` examples, its templates (and
    how many of `sample` rows each skips), its prompting, and warnings. Row counts that need the hub are None."""
    drawn_total = steps * batch_size
    rows, warnings = [], []
    train, evaluation = mixture.spec.splits.train, mixture.spec.splits.eval
    for m in mixture.members:
        task = registry.task(m.task)
        drawn = None if m.probability is None else m.probability * drawn_total
        epochs = None if drawn is None or m.n_examples is None else drawn / m.n_examples
        skips = skip_counts(task, train, m.templates, sample if m.n_examples is not None else 0)
        rows.append({
            "task": m.task, "cluster": task.spec.cluster, "via": m.via,
            "weight": m.rate if m.explicit else None, "rate": m.rate, "probability": m.probability,
            "examples": m.n_examples, "expected_drawn": drawn, "expected_epochs": epochs,
            "capped": m.capped, "held_out": False, "templates": list(m.templates),
            "skipped": skips, "sampled_rows": min(sample, m.n_examples or 0) if skips is not None else None,
            "prompting": m.prompting.model_dump(),
        })  # fmt: skip
        if drawn is None:
            continue
        if m.probability == 0:
            warnings.append(f"task {m.task} has weight 0: it is never drawn")
        elif drawn < 1:
            warnings.append(f"task {m.task} is drawn less than once ({drawn:.2f} expected)")
        elif epochs is not None and epochs >= REPEAT_WARNING_EPOCHS:
            warnings.append(f"task {m.task} repeats {epochs:.0f}x (each row seen about {epochs:.0f} times)")
    for name in mixture.held_out:
        task = registry.task(name)
        offline = available_offline(task.spec) or evaluation in task.spec.num_examples
        examples = num_rows(task, evaluation) if offline else None
        skips = skip_counts(task, evaluation, mixture.held_out_templates[name], sample)
        rows.append({
            "task": name, "cluster": task.spec.cluster, "via": "held_out", "weight": None,
            "rate": 0.0, "probability": 0.0, "examples": examples, "expected_drawn": 0.0,
            "expected_epochs": 0.0, "capped": False, "held_out": True,
            "templates": list(mixture.held_out_templates[name]), "skipped": skips,
            "sampled_rows": min(sample, examples or 0) if skips is not None else None,
        })  # fmt: skip
    for row in rows:
        for template, n in (row["skipped"] or {}).items():
            if n:
                warnings.append(f"task {row['task']}: template {template} skips {n} of {row['sampled_rows']} "
                                "sampled rows (no input ||| target for them)")  # fmt: skip
    sizes = [m.n_examples for m in mixture.members]
    needs_hub = [*mixture.needs_hub, *(r["task"] for r in rows if r["held_out"] and r["examples"] is None)]
    return {
        "mixture": mixture.name,
        "rate": mixture.spec.rate.model_dump(),
        "splits": mixture.spec.splits.model_dump(),
        "seed": mixture.spec.seed,
        "steps": steps,
        "batch_size": batch_size,
        "examples_drawn": drawn_total,
        "training_tasks": len(mixture.members),
        "held_out_tasks": len(mixture.held_out),
        "training_examples": None if None in sizes else sum(sizes),
        "templates": mixture.spec.templates,
        "needs_hub": needs_hub,
        "tasks": rows,
        "warnings": warnings,
    }
