"""Checkpoint selection: a weighted validation score with a no-regression rule against a fixed reference.

Each evaluated checkpoint has, per task, a score in [0, 100] (the median over templates) and the half-width of
its 95% bootstrap interval. The reference is fixed: the first evaluation of the run, or a results file the user
gives (e.g. `t2t eval` of the starting checkpoint). A checkpoint is eligible when no task regresses against its
reference beyond noise:

- against the run's first evaluation, which scored the same rows, the rule of `t2t compare`: the paired
  bootstrap of the delta (checkpoint minus reference, the same resampled rows for both; t2t.evaluation.
  delta_interval) blocks the checkpoint when its whole 95% interval lies below -margin;
- against a results file (scores without their rows), when the score falls below the reference by more than
  max(margin, sqrt(half_width_reference^2 + half_width_checkpoint^2)).

Either way noise between two evaluations of the same quality does not block a checkpoint, and the floor never
ratchets up with a lucky evaluation. Among eligible checkpoints the highest weighted mean score is selected.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from t2t.errors import T2TError, Where


@dataclass(frozen=True)
class Score:
    value: float
    half_width: float = 0.0  # of the 95% bootstrap interval


@dataclass
class Decision:
    step: int
    accepted: bool  # the new selected checkpoint
    score: float
    blocked_by: list[str] = field(default_factory=list)  # "task: 41.0 < 45.0 - 3.2"

    def describe(self) -> str:
        if self.accepted:
            return f"step {self.step}: selected (score {self.score:.2f})"
        reason = (
            "; ".join(self.blocked_by) if self.blocked_by else "score not above the selected checkpoint's"
        )
        return f"step {self.step}: not selected (score {self.score:.2f}): {reason}"


@dataclass
class Selector:
    margin: float = 1.0  # the smallest tolerance, in points
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight; missing tasks weigh 1
    reference: dict[str, Score] | None = None  # None: the first evaluation becomes the reference
    reference_source: str = "first evaluation"
    best_step: int | None = None
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)  # every evaluation: step, score, scores, blocked_by
    # task -> {"n": rows, "templates": {template: metric_rows}}: the reference's per-row scores (first evaluation)
    reference_rows: dict[str, dict] = field(default_factory=dict)

    def score(self, results: dict[str, Score]) -> float:
        total = sum(self.weights.get(t, 1.0) for t in results)
        return sum(self.weights.get(t, 1.0) * s.value for t, s in results.items()) / total

    def tolerance(self, reference: Score, current: Score) -> float:
        return max(self.margin, math.hypot(reference.half_width, current.half_width))

    def decide(self, step: int, results: dict[str, Score], rows: dict[str, dict] | None = None) -> Decision:
        """Judge one evaluation (task -> score) against the reference; `rows` (task -> {"n", "templates"}) are the
        evaluation's per-row scores, which make the comparison with a first-evaluation reference paired."""
        rows = rows or {}
        if self.reference is None:
            self.reference = dict(results)
            self.reference_rows = dict(rows)
        score = self.score(results)
        blocked = []
        for task, current in results.items():
            reference = self.reference.get(task)
            if reference is None:
                continue
            paired = self._paired(task, current, reference, rows.get(task), step)
            if paired is not None:
                point, low, high = paired
                if high < -self.margin:
                    blocked.append(f"{task}: {current.value:.1f} vs reference {reference.value:.1f}, delta {point:+.1f} "
                                   f"[{low:+.1f}, {high:+.1f}] below -{self.margin:g}")  # fmt: skip
                continue
            tolerance = self.tolerance(reference, current)
            if current.value < reference.value - tolerance:
                blocked.append(
                    f"{task}: {current.value:.1f} < reference {reference.value:.1f} - {tolerance:.1f}"
                )
        decision = Decision(step, not blocked and score > self.best_score, score, blocked)
        if decision.accepted:
            self.best_step, self.best_score = step, score
        self.history.append({"step": step, "score": score, "blocked_by": blocked,
                             "scores": {t: asdict(s) for t, s in results.items()}})  # fmt: skip
        return decision

    def _paired(self, task: str, current: Score, reference: Score, rows: dict | None,
                step: int) -> tuple[float, float, float] | None:  # fmt: skip
        """The paired delta interval against the reference, when both have per-row scores of the same rows and
        templates; else None."""
        from t2t.evaluation import Scored, delta_interval, samplers_of
        from t2t.rng import keyed_rng

        saved = self.reference_rows.get(task)
        if (
            rows is None
            or saved is None
            or rows["n"] != saved["n"]
            or set(rows["templates"]) != set(saved["templates"])
        ):
            return None
        return delta_interval([Scored(current.value, samplers_of(rows["templates"]))],
                              [Scored(reference.value, samplers_of(saved["templates"]))], rows["n"],
                              keyed_rng("selection", task, step))  # fmt: skip

    def report(self) -> str:
        """Markdown: the selected step and why each other evaluated step lost."""
        lines = ["# Checkpoint selection", ""]
        if self.best_step is None:
            lines.append("No evaluated checkpoint was eligible: none is selected.")
        else:
            lines.append(f"Selected: step {self.best_step} (weighted score {self.best_score:.2f}).")
        rule = ("a task regresses when the paired bootstrap interval of its delta (same rows) lies below -margin"
                if self.reference_rows else
                "a task regresses when it falls below the reference by more than max(margin, the combined "
                "interval half-widths)")  # fmt: skip
        lines += ["", f"Reference: {self.reference_source}; margin {self.margin:g} points; {rule}.", "",
                  "| step | score | outcome |", "|---|---|---|"]  # fmt: skip
        for entry in self.history:
            if entry["step"] == self.best_step:
                outcome = "selected"
            elif entry["blocked_by"]:
                outcome = "regressed: " + "; ".join(entry["blocked_by"])
            else:
                outcome = f"score not above step {self.best_step}'s"
            lines.append(f"| {entry['step']} | {entry['score']:.2f} | {outcome} |")
        return "\n".join(lines) + "\n"

    def state_dict(self) -> dict:
        reference = {t: asdict(s) for t, s in self.reference.items()} if self.reference is not None else None
        return {"reference": reference, "reference_source": self.reference_source, "best_step": self.best_step,
                "best_score": self.best_score, "history": self.history, "reference_rows": self.reference_rows}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        reference = state["reference"]
        self.reference = {t: Score(**s) for t, s in reference.items()} if reference is not None else None
        self.reference_source = state["reference_source"]
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        self.history = list(state["history"])
        self.reference_rows = dict(state.get("reference_rows", {}))


def load_reference(path: Path) -> dict[str, Score]:
    """Per-task reference scores from a `t2t eval` results.json (each task's summary median and interval)."""
    try:
        report = json.loads(Path(path).read_text())
        return {name: Score(info["summary"]["median"], info["summary"].get("ci_half_width", 0.0))
                for name, info in report["tasks"].items()}  # fmt: skip
    except FileNotFoundError:
        raise T2TError("selection.reference: no such file", Where(file=path)) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise T2TError(f"selection.reference is not a t2t eval results.json ({type(exc).__name__}: {exc})",
                       Where(file=path)) from None  # fmt: skip
