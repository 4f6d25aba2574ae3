"""Evaluation: every task under every template, by generation and (with answer choices) rank classification.

Rank classification scores each choice by its log-likelihood given the input, all choices of a batch in one
decoder pass over one encoder pass per input. The choice is picked under four normalisations: the sum of token
log-probabilities (T0's), the mean per token, per character and per byte. Two scoring conventions:

    t0       input without EOS on the encoder, choice with EOS (T0, promptsource)
    harness  input with EOS on the encoder, choice without EOS (lm-evaluation-harness's seq2seq models)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from t2t.metrics import METRICS
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sources import load_split
from t2t.templates import Rendered, Task

SCORINGS = {
    "t0": {"input_eos": False, "choice_eos": True},
    "harness": {"input_eos": True, "choice_eos": False},
}
NORMALISATIONS = ("sum", "mean", "char", "byte")


@dataclass(frozen=True)
class EvalConfig:
    split: str = "validation"
    max_examples: int | None = None  # per task (a seeded sample); None: all rows
    batch_size: int = 32
    num_beams: int = 1
    max_new_tokens: int | None = None  # None: the longest reference of the task, plus 8
    scoring: str = "t0"
    generate: bool = True  # False: rank classification (and nothing else) only


def _ids(tokenizer: Any, texts: list[str], eos: bool) -> list[list[int]]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[*x, tokenizer.eos_token_id] if eos or not x else x for x in ids]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


@torch.no_grad()
def score_choices(model: Any, tokenizer: Any, inputs: list[str], choices: list[tuple[str, ...]],
                  scoring: str = "t0", batch_size: int = 32) -> list[dict[str, list[float]]]:  # fmt: skip
    """Per example and normalisation, the score of each choice (log-likelihood, normalised)."""
    convention = SCORINGS[scoring]
    device = next(model.parameters()).device
    input_ids = _ids(tokenizer, inputs, convention["input_eos"])
    results: list[dict[str, list[float]]] = [{} for _ in inputs]
    order = sorted(range(len(inputs)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        encoder_ids = _pad([input_ids[i] for i in batch], tokenizer.pad_token_id).to(device)
        mask = (encoder_ids != tokenizer.pad_token_id).long()
        mask[:, 0] = 1
        hidden = model.get_encoder()(input_ids=encoder_ids, attention_mask=mask).last_hidden_state
        owners, targets, texts = [], [], []
        for row, i in enumerate(batch):
            for choice, ids in zip(
                choices[i], _ids(tokenizer, list(choices[i]), convention["choice_eos"]), strict=True
            ):
                owners.append(row)
                targets.append(ids)
                texts.append(choice)
        owner = torch.tensor(owners, device=device)
        labels = _pad(targets, -100).to(device)
        decoder_input = torch.cat([torch.full_like(labels[:, :1], model.config.decoder_start_token_id),
                                   labels[:, :-1].clamp(min=0)], dim=1)  # fmt: skip
        logits = model(encoder_outputs=(hidden.index_select(0, owner),), attention_mask=mask.index_select(0, owner),
                       decoder_input_ids=decoder_input, use_cache=False).logits  # fmt: skip
        token_logp = -F.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        totals = token_logp.sum(dim=1).tolist()
        for row, total, ids, text in zip(owners, totals, targets, texts, strict=True):
            scores = results[batch[row]]
            for name, value in (("sum", total), ("mean", total / len(ids)), ("char", total / max(len(text), 1)),
                                ("byte", total / max(len(text.encode()), 1))):  # fmt: skip
                scores.setdefault(name, []).append(value)
    return results


@torch.no_grad()
def generate(model: Any, tokenizer: Any, inputs: list[str], max_new_tokens: int, batch_size: int = 32,
             num_beams: int = 1) -> list[str]:  # fmt: skip
    """Greedy (or beam) generation in batches sorted by input length; outputs in the input order."""
    device = next(model.parameters()).device
    input_ids = _ids(tokenizer, inputs, eos=True)
    outputs: list[str] = [""] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids = _pad([input_ids[i] for i in batch], tokenizer.pad_token_id).to(device)
        generated = model.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(),
                                   max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)  # fmt: skip
        for i, text in zip(batch, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
            outputs[i] = text.strip()
    return outputs


def evaluate_task(model: Any, tokenizer: Any, task: Task, config: EvalConfig) -> tuple[dict, list[dict]]:
    """Metrics per template, and one record per example and template (for auditing)."""
    data = load_split(task, config.split)
    picks = np.arange(len(data))
    if config.max_examples is not None and len(data) > config.max_examples:
        picks = np.sort(
            keyed_rng("eval", task.name, config.split).permutation(len(data))[: config.max_examples]
        )
    rows = data.rows.select(picks.tolist())[:]
    rows = [{f: rows[f][j] for f in rows} for j in range(len(picks))]
    source_rows = [int(data.source_rows[i]) for i in picks]
    per_template, records = {}, []
    for template in task.template_names:
        rendered = [task.render(r, template, config.split, s) for r, s in zip(rows, source_rows, strict=True)]
        references = [task.references(r, x) for r, x in zip(rows, rendered, strict=True)]
        scores, predictions = _template_scores(model, tokenizer, task, rendered, references, config)
        per_template[template] = scores
        records.extend(_records(rendered, references, predictions))
    return per_template, records


def _template_scores(
    model, tokenizer, task, rendered: list[Rendered], references, config
) -> tuple[dict, list]:
    inputs = [r.inputs for r in rendered]
    scores: dict[str, float] = {}
    predictions: list[dict] = [{} for _ in rendered]
    if config.generate:
        longest = max(
            len(tokenizer(x, add_special_tokens=False)["input_ids"]) for refs in references for x in refs
        )
        generated = generate(model, tokenizer, inputs, config.max_new_tokens or min(longest + 8, 512),
                             config.batch_size, config.num_beams)  # fmt: skip
        for metric in task.spec.metrics:
            scores[metric] = METRICS[metric](generated, references)
        for p, text in zip(predictions, generated, strict=True):
            p["prediction"] = text
    if rendered[0].choices is not None:
        choice_scores = score_choices(model, tokenizer, inputs, [r.choices for r in rendered], config.scoring,
                                      config.batch_size)  # fmt: skip
        for name in NORMALISATIONS:
            picked = [
                r.choices[int(np.argmax(s[name]))] for r, s in zip(rendered, choice_scores, strict=True)
            ]
            scores[f"rank_{name}"] = 100.0 * float(
                np.mean([p == r.targets for p, r in zip(picked, rendered, strict=True)])
            )
        for p, s, r in zip(predictions, choice_scores, rendered, strict=True):
            p["choice_scores"] = s
            p["ranked"] = r.choices[int(np.argmax(s["sum"]))]
    return scores, predictions


def _records(rendered: list[Rendered], references: list[list[str]], predictions: list[dict]) -> list[dict]:
    return [{"task": r.provenance.task, "template": r.provenance.template, "split": r.provenance.split,
             "row": r.provenance.row, "input": r.inputs, "target": r.targets, "references": refs,
             "choices": list(r.choices) if r.choices else None, **p}
            for r, refs, p in zip(rendered, references, predictions, strict=True)]  # fmt: skip


def primary_metric(task: Task, template_scores: dict[str, dict[str, float]]) -> str:
    """The metric a task is reported by: rank accuracy (sum) with answer choices, else its first metric."""
    first = next(iter(template_scores.values()))
    return "rank_sum" if "rank_sum" in first else task.spec.metrics[0]


def summarise(values: list[float]) -> dict[str, float]:
    """Median and inter-quartile range over templates (how T0 reports held-out results), and the mean."""
    q1, median, q3 = (float(np.percentile(values, q)) for q in (25, 50, 75))
    return {
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mean": float(np.mean(values)),
        "n_templates": len(values),
    }


def evaluate(model: Any, tokenizer: Any, registry: Registry, tasks: list[str], held_out: set[str],
             config: EvalConfig) -> tuple[dict, list[dict]]:  # fmt: skip
    """The full report (per task, template, cluster, seen / held-out) and the per-example records."""
    model.eval()
    report: dict[str, Any] = {"split": config.split, "scoring": config.scoring, "tasks": {}}
    all_records: list[dict] = []
    for name in tasks:
        task = registry.task(name)
        per_template, records = evaluate_task(model, tokenizer, task, config)
        metric = primary_metric(task, per_template)
        report["tasks"][name] = {
            "cluster": task.spec.cluster, "held_out": name in held_out, "metric": metric,
            "templates": per_template, "summary": summarise([s[metric] for s in per_template.values()]),
            "summary_by_metric": {m: summarise([s[m] for s in per_template.values()]) for m in next(iter(per_template.values()))},
        }  # fmt: skip
        all_records.extend(records)
    report["clusters"] = _group_means(report["tasks"], lambda t: t["cluster"])
    report["groups"] = _group_means(report["tasks"], lambda t: "held_out" if t["held_out"] else "seen")
    return report, all_records


def _group_means(tasks: dict, key) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for info in tasks.values():
        groups.setdefault(key(info), []).append(info["summary"]["median"])
    return {g: {"mean_of_medians": float(np.mean(v)), "tasks": len(v)} for g, v in sorted(groups.items())}
