"""Evaluation during training: validation loss and scores of the training tasks, and checkpoint selection.

Every `eval_every_steps` steps each training task gets its validation loss and, with answer choices, rank
classification; every `eval_generate_every`-th evaluation also generation and the selection decision
(t2t.selection). Every process evaluates the same examples (ZeRO-3 gathers parameters collectively). Inputs are
encoded exactly as in training (t2t.encoding).
"""

from __future__ import annotations

from typing import Any

import torch

from t2t.adapters import route_task
from t2t.batching import Example, pad_batch
from t2t.encoding import decoder_start_id, encode_task
from t2t.evaluation import EvalConfig, eval_rows, evaluate_task, scored_tasks
from t2t.modeling import loss_sums
from t2t.selection import Score, Selector, load_reference
from t2t.train_config import TrainConfig


def training_eval_config(
    config: TrainConfig, split: str, max_examples: int | None, generate: bool = True
) -> EvalConfig:
    """Evaluation of a run's model: its eval split, encoded under the limits it trained with."""
    return EvalConfig(split=split, max_examples=max_examples, generate=generate,
                      max_input_tokens=config.max_input_tokens, max_target_tokens=config.max_target_tokens)  # fmt: skip


class InTrainingEval:
    def __init__(self, config: TrainConfig, registry: Any, tasks: list[str], split: str, data: Any) -> None:
        self.config, self.registry, self.split, self.data = config, registry, split, data
        self.tasks = scored_tasks(registry, tasks)
        sel = config.selection
        self.selector = Selector(margin=sel.margin, weights=dict(sel.weights))
        if sel.reference is not None:
            self.selector.reference = load_reference(sel.reference)
            self.selector.reference_source = f"results file {sel.reference}"
        self.evaluations = 0

    def check(self, tokenizer: Any) -> None:
        """Render now what every evaluation will (the sampled rows under each template the mixture uses; the
        first template's encodings for the validation loss, cached): a bad eval row is refused at the run's
        start, not at its first evaluation, steps into the run."""
        for name in self.tasks:
            task = self.registry.task(name)
            rows, source_rows = eval_rows(task, self.split, self.config.eval_max_examples)
            for template in self.data.mixture.templates_of(name):
                for row, source in zip(rows, source_rows, strict=True):
                    task.try_render(row, template, self.split, source)
            encode_task(task, self.split, tokenizer, self.data.limits, self.config.cache_dir, self.data.tokenizer_key,
                        templates=self.data.mixture.templates_of(name)[:1])  # fmt: skip

    def due(self, step: int) -> bool:
        every = self.config.eval_every_steps
        return bool(every) and step % every == 0

    def run(self, model: Any, tokenizer: Any, step: int) -> tuple[dict, Any]:
        """Evaluate the (unwrapped) model; returns the log record and the selection decision (or None)."""
        config = self.config
        self.evaluations += 1
        generation = self.evaluations % config.eval_generate_every == 0
        model.eval()
        eval_config = training_eval_config(config, self.split, config.eval_max_examples, generation)
        record: dict[str, Any] = {"step": step, "generation": generation}
        scores: dict[str, Score] = {}
        rows: dict[str, dict] = {}  # per-row scores: selection compares them with the reference's, paired
        for name in self.tasks:
            task = self.registry.task(name)
            record[f"eval_loss/{name}"] = self.validation_loss(task, model, tokenizer)
            result = evaluate_task(model, tokenizer, task, eval_config, self.data.mixture.templates_of(name))
            if result.metric is not None:  # scored (a generation-only task is not, between generation rounds)
                scores[name] = Score(result.summary["median"], result.summary["ci_half_width"])
                rows[name] = {"n": result.n_rows, "templates": result.rows}
                record[f"eval/{name}"] = scores[name].value
        model.train()
        decision = None
        if generation:
            decision = self.selector.decide(step, scores, rows)
            record.update({"eval_score": decision.score, "best": decision.accepted,
                           "blocked_by": decision.blocked_by})  # fmt: skip
        return record, decision

    @torch.no_grad()
    def validation_loss(self, task: Any, model: Any, tokenizer: Any) -> float:
        """Mean token loss of the first examples of the eval split (the mixture's first template for the task),
        cached encodings."""
        first = self.data.mixture.templates_of(task.name)[0]
        encoded = encode_task(task, self.split, tokenizer, self.data.limits, self.config.cache_dir,
                              self.data.tokenizer_key, templates=(first,))  # fmt: skip
        template = encoded.templates[first]
        n = min(self.config.eval_max_examples, len(template.input_ids))
        examples = [
            Example(template.input_ids[i], template.labels[i], 0) for i in range(n) if template.input_ids[i]
        ]
        n = len(examples)
        start = decoder_start_id(model.config)
        total = tokens = 0.0
        for first in range(0, n, 32):
            batch = pad_batch(examples[first : first + 32], tokenizer.pad_token_id, start)
            tensors = {k: v.to(next(model.parameters()).device) for k, v in batch.tensors.items()}
            with route_task(model, task.name):  # the task's adapter, where the model has adapters
                sums = loss_sums(model, tensors, 1)
            total, tokens = total + float(sums.loss), tokens + float(sums.tokens)
        return total / max(tokens, 1.0)

    def state_dict(self) -> dict:
        return {"evaluations": self.evaluations, "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.evaluations = state["evaluations"]
        self.selector.load_state_dict(state["selector"])
