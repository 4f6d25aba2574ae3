"""Checkpoint selection: a weighted validation score with a no-regression rule.

A checkpoint becomes `best` only if its score (the weighted mean of per-task scores, each in [0, 100]) beats the
best so far and no task falls more than `margin` points below its floor: its best value in earlier evaluations,
or a given baseline (e.g. the pretrained model's score) where one is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Decision:
    accepted: bool
    score: float
    blocked_by: list[str] = field(default_factory=list)  # "task: 41.0 < floor 45.0"

    def describe(self) -> str:
        if self.accepted:
            return f"new best (score {self.score:.2f})"
        reason = "; ".join(self.blocked_by) if self.blocked_by else "score not above the best so far"
        return f"not best (score {self.score:.2f}): {reason}"


@dataclass
class Selector:
    margin: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight; missing tasks weigh 1
    baseline: dict[str, float] = field(default_factory=dict)  # task -> floor instead of its best so far
    best_score: float = float("-inf")
    best_per_task: dict[str, float] = field(default_factory=dict)

    def score(self, results: dict[str, float]) -> float:
        total = sum(self.weights.get(t, 1.0) for t in results)
        return sum(self.weights.get(t, 1.0) * v for t, v in results.items()) / total

    def decide(self, results: dict[str, float]) -> Decision:
        """Judge one evaluation (task -> score), then remember each task's best value."""
        score = self.score(results)
        blocked = []
        for task, value in results.items():
            floor = self.baseline.get(task, self.best_per_task.get(task))
            if floor is not None and value < floor - self.margin:
                blocked.append(f"{task}: {value:.1f} < floor {floor:.1f} - margin {self.margin:g}")
        decision = Decision(not blocked and score > self.best_score, score, blocked)
        if decision.accepted:
            self.best_score = score
        for task, value in results.items():
            self.best_per_task[task] = max(value, self.best_per_task.get(task, value))
        return decision

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_per_task": self.best_per_task}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_per_task = state["best_score"], dict(state["best_per_task"])
