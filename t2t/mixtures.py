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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from t2t.config import Spec, check_name, line_of, load_yaml, validation_error, yaml_nodes
from t2t.errors import T2TError, Where, did_you_mean
from t2t.registry import Registry
from t2t.sampler import DEFAULT_BLOCK, MixtureStream
from t2t.sources import num_rows, splits_of


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


class RateSpec(Spec):
    rule: Literal["uniform", "examples", "temperature"] = "examples"
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    cap: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # K
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0  # T


class SplitsSpec(Spec):
    train: str = "train"
    eval: str = "validation"


class MixtureSpec(Spec):
    name: str
    description: str = ""
    # selector -> explicit weight, or null for the rate rule. A selector is a task name, a mixture name,
    # a glob over task names ("*_lookup") or a cluster ("cluster:nli").
    members: dict[str, Weight] = Field(min_length=1)
    rate: RateSpec = RateSpec()
    held_out: list[str] = Field(default_factory=list)
    splits: SplitsSpec = SplitsSpec()
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_name(name, "mixture name")


def rule_rate(n_examples: int, rate: RateSpec) -> float:
    """seqio's mixing_rate_num_examples: min(scale * N, K) ** (1 / T); 1 for the uniform rule."""
    if rate.rule == "uniform":
        return 1.0
    value = rate.scale * n_examples
    if rate.cap is not None:
        value = min(value, rate.cap)
    return value ** (1.0 / rate.temperature)


@dataclass(frozen=True)
class Member:
    """One training task of a resolved mixture."""

    task: str
    rate: float
    probability: float
    n_examples: int
    via: str  # the selector that brought it in
    explicit: bool  # weight given in the file rather than by the rule
    capped: bool  # the cap K lowered its rate


@dataclass(frozen=True)
class Mixture:
    """A mixture with every selector expanded, rates computed and leakage checked."""

    spec: MixtureSpec
    path: Path | None
    members: tuple[Member, ...]
    held_out: tuple[str, ...]

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


def load_mixture(registry: Registry, name: str) -> Mixture:
    return _Resolver(registry).resolve(name, ())


class _Resolver:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._clusters: dict[str, list[str]] | None = None

    def resolve(self, name: str, stack: tuple[str, ...]) -> Mixture:
        if name in stack:
            raise T2TError(f"mixtures nest in a cycle: {' -> '.join((*stack, name))}")
        if name not in self.registry.mixture_files:
            raise T2TError(f"unknown mixture {name!r}{did_you_mean(name, self.registry.mixture_files)}")
        path = self.registry.mixture_files[name]
        spec = load_mixture_spec(path)
        where = Where(file=path)
        held_out = self._expand_held_out(spec, where)
        rates: dict[str, tuple[float, str, bool, bool]] = {}
        for selector, weight in spec.members.items():
            for task, rate, explicit, capped in self._member_rates(
                spec, selector, weight, held_out, stack, where
            ):
                if task in rates:
                    raise T2TError(
                        f"task {task!r} is selected twice: by {rates[task][1]!r} and by {selector!r}", where
                    )
                rates[task] = (rate, selector, explicit, capped)
        self._check_leakage(rates, held_out, where)
        largest = max((r for r, *_ in rates.values()), default=0.0)
        if not largest > 0:
            raise T2TError("the members' weights sum to zero: no task would ever be drawn", where)
        total = sum(r / largest for r, *_ in rates.values())  # scaled first: huge weights cannot overflow
        members = tuple(
            Member(task, rate, rate / largest / total, self._size(task, spec), via, explicit, capped)
            for task, (rate, via, explicit, capped) in rates.items()
        )
        return Mixture(spec, path, members, tuple(held_out))

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

    def _member_rates(self, spec, selector, weight, held_out, stack, where):
        """(task, rate, explicit, capped) for each task a member brings in."""
        is_task = selector in self.registry.task_files
        if selector in self.registry.mixture_files and not is_task:
            yield from self._nested(spec, selector, weight, stack, where)
            return
        tasks = self._select(selector, where)
        if is_task and selector in held_out:
            raise T2TError(f"task {selector!r} is held out but also listed as a training member", where)
        for task in (t for t in tasks if t not in held_out):  # globs and clusters skip held-out tasks
            if weight is not None:
                yield task, float(weight), True, False
            else:
                n = self._size(task, spec)
                capped = (
                    spec.rate.rule != "uniform"
                    and spec.rate.cap is not None
                    and spec.rate.scale * n > spec.rate.cap
                )
                yield task, rule_rate(n, spec.rate), False, capped

    def _nested(self, spec, name, weight, stack, where):
        child = self.resolve(name, (*stack, spec.name))
        total = (
            float(weight)
            if weight is not None
            else sum(rule_rate(m.n_examples, spec.rate) for m in child.members)
        )
        for m in child.members:
            yield m.task, total * m.probability, weight is not None, False

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

    def _size(self, task: str, spec: MixtureSpec) -> int:
        return num_rows(self.registry.task(task), spec.splits.train)


REPEAT_WARNING_EPOCHS = 10.0  # warn when a task's rows would repeat this often


def stream_for(mixture: Mixture, registry: Registry, block_size: int = DEFAULT_BLOCK) -> MixtureStream:
    """The deterministic training stream of a mixture (no data is loaded)."""
    return MixtureStream(
        mixture.task_names,
        mixture.probabilities,
        [m.n_examples for m in mixture.members],
        [registry.task(m.task).template_names for m in mixture.members],
        seed=mixture.spec.seed,
        block_size=block_size,
    )


def report(mixture: Mixture, registry: Registry, steps: int, batch_size: int) -> dict:
    """The dry run: per task, how often it is drawn in `steps` steps of `batch_size` examples, and warnings."""
    drawn_total = steps * batch_size
    rows, warnings = [], []
    for m in mixture.members:
        drawn = m.probability * drawn_total
        epochs = drawn / m.n_examples
        rows.append({
            "task": m.task, "cluster": registry.task(m.task).spec.cluster, "via": m.via,
            "weight": m.rate if m.explicit else None, "rate": m.rate, "probability": m.probability,
            "examples": m.n_examples, "expected_drawn": drawn, "expected_epochs": epochs,
            "capped": m.capped, "held_out": False,
        })  # fmt: skip
        if m.probability == 0:
            warnings.append(f"task {m.task} has weight 0: it is never drawn")
        elif drawn < 1:
            warnings.append(f"task {m.task} is drawn less than once ({drawn:.2f} expected)")
        elif epochs >= REPEAT_WARNING_EPOCHS:
            warnings.append(f"task {m.task} repeats {epochs:.0f}x (each row seen about {epochs:.0f} times)")
    for task in mixture.held_out:
        examples = num_rows(registry.task(task), mixture.spec.splits.eval)
        rows.append({
            "task": task, "cluster": registry.task(task).spec.cluster, "via": "held_out", "weight": None,
            "rate": 0.0, "probability": 0.0, "examples": examples, "expected_drawn": 0.0,
            "expected_epochs": 0.0, "capped": False, "held_out": True,
        })  # fmt: skip
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
        "training_examples": sum(m.n_examples for m in mixture.members),
        "tasks": rows,
        "warnings": warnings,
    }
