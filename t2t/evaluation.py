"""Evaluation: every task under every template, by generation and (with answer choices) rank classification.

Rank classification scores each choice by its log-likelihood given the input, the choices of a batch in decoder
passes of bounded size over one encoder pass per input. The choice is picked under four normalisations: the sum
of token log-probabilities (T0's), the mean per token, per character and per byte. Three scoring conventions:

    t2t      input with EOS, choice with EOS: how t2t trains (the default)
    t0       input without EOS on the encoder, choice with EOS (T0's evaluation script, promptsource)
    harness  input with EOS on the encoder, choice without EOS (lm-evaluation-harness's seq2seq models)

Inputs and targets are encoded under the training policy (t2t.encoding): the same truncation and the model's
decoder start token.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from t2t.adapters import route_task, routed, router_of
from t2t.encoding import decoder_start_id, encode_texts
from t2t.errors import T2TError, Where
from t2t.metrics import METRICS, PER_EXAMPLE
from t2t.pieces import text_ids
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sources import load_split, select_rows
from t2t.templates import Rendered, Task

SCORINGS = {
    "t2t": {"input_eos": True, "choice_eos": True},
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
    scoring: str = "t2t"
    generate: bool = True  # False: rank classification (and nothing else) only
    max_input_tokens: int | None = None  # truncation of inputs (None: none), as in training
    max_target_tokens: int | None = None  # truncation of scored choices (None: none), as in training
    template: str | None = None  # only this template (None: every template)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


# One decoder pass scores at most this many token slots (choices x (input + choice)), and at most this many logits
# (slots x vocabulary, in fp32: 256 MB): a batch of rows with thousands of answer choices each (a field holding
# the list) is scored in several passes, in bounded memory, instead of one pass that held them all (2.4 GB for 2
# rows of 20,000 choices with the demo's 427-token vocabulary).
CHOICE_SLOTS = 16_384
CHOICE_LOGITS = 2**26


# One batch of inputs (rank classification's encoder pass, a generation call) holds at most this many input token
# slots (rows x the longest input), and at most `--batch-size` rows: attention costs the square of the input per
# row and head, and 20 rows of 2,048 tokens in one pass through a 4-head tiny T5 peaked at 2.2 GB (1.0 GB in 3).
INPUT_SLOTS = 16_384


def input_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """`order` (rows sorted by input length, shortest first) cut into batches of at most `batch_size` rows whose
    padded inputs hold at most INPUT_SLOTS tokens (at least one row each, however long)."""
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        if batch is None or len(batch) == batch_size or (len(batch) + 1) * lengths[i] > INPUT_SLOTS:
            batches.append([i])
        else:
            batch.append(i)
    return batches


def choice_chunks(lengths: Sequence[int], input_length: int, vocab_size: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi) ranges of the (row, choice) pairs whose padded decoder pass stays within the budget
    (at least one pair each, however long)."""
    budget = max(1, min(CHOICE_SLOTS, CHOICE_LOGITS // max(vocab_size, 1)))
    chunks, lo, longest = [], 0, 0
    for i, length in enumerate(lengths):
        longest_with = max(longest, length)
        if i > lo and (i + 1 - lo) * (input_length + longest_with) > budget:
            chunks.append((lo, i))
            lo, longest_with = i, length
        longest = longest_with
    if lengths:
        chunks.append((lo, len(lengths)))
    return chunks


@torch.no_grad()
def score_choices(model: Any, tokenizer: Any, inputs: list[str], choices: list[tuple[str, ...]],
                  scoring: str = "t2t", batch_size: int = 32, max_input_tokens: int | None = None,
                  max_target_tokens: int | None = None,
                  tasks: Sequence[str] | None = None) -> list[dict[str, list[float]]]:  # fmt: skip
    """Per example and normalisation, the score of each choice (log-likelihood, normalised). `tasks` (one per
    input) routes each row through its task's adapter, for a model with adapters (t2t.adapters)."""
    convention = SCORINGS[scoring]
    device = next(model.parameters()).device
    router = router_of(model) if tasks is not None else None
    start_id = decoder_start_id(model.config)
    input_ids, _ = encode_texts(tokenizer, inputs, max_input_tokens, convention["input_eos"])
    results: list[dict[str, list[float]]] = [{} for _ in inputs]
    order = sorted(range(len(inputs)), key=lambda i: len(input_ids[i]))
    for batch in input_batches(order, [len(ids) for ids in input_ids], batch_size):
        encoder_ids = _pad([input_ids[i] for i in batch], tokenizer.pad_token_id).to(device)
        mask = (encoder_ids != tokenizer.pad_token_id).long()
        mask[:, 0] = 1
        slots = router.rows([tasks[i] for i in batch], device) if router is not None else None
        with routed(router, slots):
            hidden = model.get_encoder()(input_ids=encoder_ids, attention_mask=mask).last_hidden_state
        owners, targets, texts = [], [], []
        for row, i in enumerate(batch):
            choice_ids, _ = encode_texts(
                tokenizer, list(choices[i]), max_target_tokens, convention["choice_eos"]
            )
            for choice, ids in zip(choices[i], choice_ids, strict=True):
                owners.append(row)
                targets.append(ids)
                texts.append(choice)
        totals: list[float] = []
        for lo, hi in choice_chunks([len(t) for t in targets], encoder_ids.shape[1], model.config.vocab_size):
            owner = torch.tensor(owners[lo:hi], device=device)
            labels = _pad(targets[lo:hi], -100).to(device)
            decoder_input = torch.cat([torch.full_like(labels[:, :1], start_id),
                                       labels[:, :-1].clamp(min=0)], dim=1)  # fmt: skip
            with routed(router, slots.index_select(0, owner) if slots is not None else None):
                logits = model(encoder_outputs=(hidden.index_select(0, owner),),
                               attention_mask=mask.index_select(0, owner), decoder_input_ids=decoder_input,
                               use_cache=False).logits  # fmt: skip
            token_logp = -F.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            totals.extend(token_logp.sum(dim=1).tolist())
        for row, total, ids, text in zip(owners, totals, targets, texts, strict=True):
            scores = results[batch[row]]
            for name, value in (("sum", total), ("mean", total / len(ids)), ("char", total / max(len(text), 1)),
                                ("byte", total / max(len(text.encode()), 1))):  # fmt: skip
                scores.setdefault(name, []).append(value)
    return results


GENERATE_SEQUENCES = 1024  # beams (rows x num_beams) in one generation call, where beam search is asked for
GENERATE_CAP = 512  # new tokens at most, unless EvalConfig.max_new_tokens says otherwise (the task's longest
# reference plus 8 otherwise)


# A model's generation settings (generation_config.json) that shape its sequences, kept; generate() applies none of
# the others (min_length, no_repeat_ngram_size, repetition_penalty, length_penalty, beams, sampling, ...), which
# transformers would take from the model's dir on every call: t2t decodes greedily (or with --num-beams) within its
# own length budget, the same way for every model
FORMAT_SETTINGS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                   "forced_eos_token_id")  # fmt: skip
# ... and those that change nothing in the answers or that t2t sets itself (the length)
QUIET_SETTINGS = frozenset({"transformers_version", "_from_model_config", "use_cache", "output_attentions",
                            "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
                            "max_length", "max_new_tokens", "cache_implementation"})  # fmt: skip


def generation_settings_warning(model: Any) -> str | None:
    """What generate() leaves out of the model's generation config (all but FORMAT_SETTINGS), or None."""
    own = model.generation_config.to_diff_dict()
    unapplied = {k: v for k, v in own.items() if k not in FORMAT_SETTINGS and k not in QUIET_SETTINGS}
    if not unapplied:
        return None
    listed = ", ".join(f"{k}={v!r}" for k, v in sorted(unapplied.items()))
    return (f"the model's generation config sets {listed}: t2t generates greedily (or with --num-beams) without "
            "them, the same way for every model")  # fmt: skip


@contextlib.contextmanager
def plain_decoding(model: Any):
    """The model's generation config reduced to FORMAT_SETTINGS for the duration (transformers fills whatever a
    call leaves unset from it)."""
    from transformers import GenerationConfig

    own = model.generation_config
    model.generation_config = GenerationConfig(
        **{k: getattr(own, k) for k in FORMAT_SETTINGS if getattr(own, k, None) is not None}
    )
    try:
        yield
    finally:
        model.generation_config = own


@torch.no_grad()
def generate(model: Any, tokenizer: Any, inputs: list[str], max_new_tokens: int, batch_size: int = 32,
             num_beams: int = 1, max_input_tokens: int | None = None,
             tasks: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    """Greedy (or beam) generation in batches sorted by input length; outputs in the input order. `tasks` as in
    score_choices. With beams, a call holds at most GENERATE_SEQUENCES beams in all (down to one row a call):
    `--num-beams 5000` on batches of 32 rows asked for 160,000 sequences at once (5.3 GB and an allocation
    failure with the demo's model)."""
    device = next(model.parameters()).device
    router = router_of(model) if tasks is not None else None
    input_ids, _ = encode_texts(tokenizer, inputs, max_input_tokens, eos=True)
    outputs: list[str] = [""] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(input_ids[i]))
    if num_beams > 1:
        batch_size = max(1, min(batch_size, GENERATE_SEQUENCES // num_beams))
    with plain_decoding(model):
        for batch in input_batches(order, [len(ids) for ids in input_ids], batch_size):
            ids = _pad([input_ids[i] for i in batch], tokenizer.pad_token_id).to(device)
            slots = router.rows([tasks[i] for i in batch], device) if router is not None else None
            with routed(router, slots):
                generated = model.generate(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(),
                                           max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                           decoder_start_token_id=decoder_start_id(model.config))  # fmt: skip
            for i, text in zip(
                batch, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True
            ):
                outputs[i] = text.strip()
    return outputs


@dataclass
class TaskResult:
    """One task's evaluation: scores per template, the primary metric's summary over templates with its
    bootstrap interval, and one record per example and template."""

    per_template: dict[str, dict[str, float]]
    metric: (
        str | None
    )  # None (and an empty summary) when nothing was scored: rank classification only, no choices
    summary: dict[str, float]
    records: list[dict]
    # template -> the primary metric as a function of row indices (for bootstraps over rows, as t2t compare's)
    samplers: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)  # template -> the same as JSON (metric_rows, kept)
    n_rows: int = 0  # the rows evaluated (indices of the samplers run over 0..n_rows-1)
    # inputs (over templates) the tokenizer reads with its unknown token, and the first (template, source row)
    unknown_inputs: int = 0
    first_unknown: tuple[str, int] | None = None
    # (template, its longest reference in tokens, the generation budget) where answers that long were cut
    cut_references: tuple[str, int, int] | None = None
    # inputs (over templates) longer than max_input_tokens, so cut before the model reads them, the inputs in all,
    # and the first cut (template, source row, its tokens with the end-of-sequence token)
    cut_inputs: int = 0
    all_inputs: int = 0
    first_cut_input: tuple[str, int, int] | None = None


def eval_rows(task: Task, split: str, max_examples: int | None) -> tuple[list[dict], list[int]]:
    """The rows an evaluation of `task` takes (`select_rows`), and each one's index in the source split."""
    data = load_split(task, split)
    picks = select_rows(task.name, split, len(data), max_examples)
    columns = data.rows.select(picks.tolist())[:]
    rows = [{f: columns[f][j] for f in columns} for j in range(len(picks))]
    return rows, [int(data.source_rows[i]) for i in picks]


def evaluate_task(model: Any, tokenizer: Any, task: Task, config: EvalConfig,
                  templates: Sequence[str] | None = None) -> TaskResult:  # fmt: skip
    """Metrics per template (`templates`, else all the task's), the median over templates with a bootstrap
    interval, and per-example records. `config.template` picks one. A model with adapters runs the task's own."""
    with route_task(model, task.name):
        return _evaluate_task(model, tokenizer, task, config, templates)


def _evaluate_task(model: Any, tokenizer: Any, task: Task, config: EvalConfig,
                   templates: Sequence[str] | None) -> TaskResult:  # fmt: skip
    rows, source_rows = eval_rows(task, config.split, config.max_examples)
    per_template, records, samplers, chance = {}, [], {}, {}
    unknown, first_unknown = 0, None
    longest_cut = None
    cut_inputs, all_inputs, first_cut_input = 0, 0, None
    if config.template:
        templates = [task.spec.template(config.template).name]
    elif templates is None:
        templates = task.template_names
    for template in templates:
        attempts = [
            task.try_render(r, template, config.split, s) for r, s in zip(rows, source_rows, strict=True)
        ]
        kept = np.array([a is not None for a in attempts], dtype=bool)  # promptsource-style skips
        if not kept.any():
            continue
        rendered = [a for a in attempts if a is not None]
        input_ids = text_ids(tokenizer, [r.inputs for r in rendered])
        all_inputs += len(input_ids)
        if config.max_input_tokens is not None:
            # cut as in training (with_eos): what lies past the limit never reaches the model
            cut = [i for i, ids in enumerate(input_ids) if len(ids) + 1 > config.max_input_tokens]
            cut_inputs += len(cut)
            if cut and first_cut_input is None:
                first_cut_input = (template, rendered[cut[0]].provenance.row, len(input_ids[cut[0]]) + 1)
        if tokenizer.unk_token_id is not None:
            # characters the tokenizer has no piece for (T5's vocabulary: `{`, `}`, `<`) all read the same
            with_unknown = [i for i, ids in enumerate(input_ids) if tokenizer.unk_token_id in ids]
            unknown += len(with_unknown)
            if with_unknown and first_unknown is None:
                first_unknown = (template, rendered[with_unknown[0]].provenance.row)
        if all(r.choices for r in rendered):  # rank classification: what a model blind to the input scores
            chance[template] = chance_level(rendered)
        references = [task.references(r, x) for r, x in zip(rows, attempts, strict=True) if x is not None]
        scores, predictions, template_samplers, cut = _template_scores(
            model, tokenizer, task, rendered, references, config
        )
        if cut is not None and (longest_cut is None or cut[0] > longest_cut[1]):
            longest_cut = (template, *cut)
        samplers[template] = {m: {**rows, "kept": None if kept.all() else kept.tolist()}
                              for m, rows in template_samplers.items()}  # fmt: skip
        per_template[template] = scores
        records.extend(_records(rendered, references, predictions))
    if not per_template:
        raise T2TError(f"no {config.split} row renders under any template: every template skips them",
                       Where(file=task.spec.path, task=task.name, split=config.split))  # fmt: skip
    if not any(per_template.values()):  # rank classification only, and the task has no answer choices
        return TaskResult(per_template, None, {}, records, unknown_inputs=unknown, first_unknown=first_unknown,
                          cut_references=longest_cut, cut_inputs=cut_inputs, all_inputs=all_inputs,
                          first_cut_input=first_cut_input)  # fmt: skip
    metric = primary_metric(task, per_template)
    rows_of = {t: f[metric] for t, f in samplers.items()}
    summary = summarise([s[metric] for s in per_template.values()])
    summary.update(bootstrap_interval(samplers_of(rows_of), len(rows),
                                      keyed_rng("bootstrap", task.name, config.split)))  # fmt: skip
    if metric.startswith("rank") and set(chance) == set(per_template):
        summary.update(versus_chance(summary, float(np.median(list(chance.values())))))
    return TaskResult(per_template, metric, summary, records, samplers_of(rows_of), rows_of, len(rows),
                      unknown, first_unknown, longest_cut, cut_inputs, all_inputs, first_cut_input)  # fmt: skip


def chance_level(rendered: Sequence[Rendered]) -> float:
    """The rank accuracy ([0, 100]) a model that ignores the input can reach on these rows: the better of guessing
    (the mean of 1 / choices) and always answering the same choice position (the majority class: on 100 rows with
    61 "no", always "no" scores 61, and a model at 55 has learnt nothing that beats it)."""
    guess = float(np.mean([1 / len(r.choices) for r in rendered]))
    positions = Counter(r.choices.index(r.targets) for r in rendered if r.targets in r.choices)
    constant = max(positions.values(), default=0) / len(rendered)
    return 100 * max(guess, constant)


def versus_chance(summary: dict[str, float], chance: float) -> dict[str, Any]:
    """A rank-classification score's chance level (the median over templates of `chance_level`) and where the
    score's 95% interval lies: `above` or `below` only when the interval excludes it, else `at`."""
    if summary["ci_low"] > chance:
        where = "above"
    elif summary["ci_high"] < chance:
        where = "below"
    else:
        where = "at"
    return {"chance": chance, "vs_chance": where}


def _on_kept(sampler: Any, kept: np.ndarray) -> Any:
    """A template's metric as a function of indices into all the task's rows, where the template renders only the
    `kept` ones (a promptsource-style template skips some): resampled rows it skipped are left out."""
    if kept.all():
        return sampler
    local = np.cumsum(kept) - 1

    def sample(indices: np.ndarray) -> float:
        chosen = indices[kept[indices]]
        return sampler(local[chosen]) if len(chosen) else 0.0

    return sample


BOOTSTRAP_SAMPLES = 200


def bootstrap_interval(samplers: dict[str, Any], n: int, rng: np.random.Generator,
                       samples: int = BOOTSTRAP_SAMPLES) -> dict[str, float]:  # fmt: skip
    """The 95% percentile-bootstrap interval of the median over templates: examples are resampled with
    replacement (the same resample for every template, as they share rows) and each template's metric recomputed.
    `samplers[template](indices)` gives the metric on those examples."""
    if n == 0:
        return {"ci_low": 0.0, "ci_high": 0.0, "ci_half_width": 0.0}
    medians = []
    for _ in range(samples):
        indices = rng.integers(0, n, size=n)
        medians.append(float(np.median([sample(indices) for sample in samplers.values()])))
    low, high = (float(np.percentile(medians, q)) for q in (2.5, 97.5))
    return {"ci_low": low, "ci_high": high, "ci_half_width": (high - low) / 2}


def _template_scores(
    model, tokenizer, task, rendered: list[Rendered], references, config
) -> tuple[dict, list, dict, tuple[int, int] | None]:
    """Scores of one template, per-example predictions, for each metric its `metric_rows` (to recompute it on any
    resample of the examples, for the bootstrap), and (the longest reference's tokens, the generation budget) where
    the budget is the shorter."""
    inputs = [r.inputs for r in rendered]
    scores: dict[str, float] = {}
    samplers: dict[str, dict] = {}
    predictions: list[dict] = [{} for _ in rendered]
    cut = None
    if config.generate:
        longest = max(
            len(tokenizer(x, add_special_tokens=False)["input_ids"]) for refs in references for x in refs
        )
        budget = config.max_new_tokens or min(longest + 8, GENERATE_CAP)
        if longest > budget:  # answers as long as the references would be cut: said by evaluate()
            cut = (longest, budget)
        generated = generate(model, tokenizer, inputs, budget, config.batch_size, config.num_beams,
                             config.max_input_tokens)  # fmt: skip
        for metric in task.spec.metrics:
            scores[metric] = METRICS[metric](generated, references)
            samplers[metric] = metric_rows(metric, generated, references)
        for p, text in zip(predictions, generated, strict=True):
            p["prediction"] = text
    if rendered[0].choices is not None:
        choice_scores = score_choices(model, tokenizer, inputs, [r.choices for r in rendered], config.scoring,
                                      config.batch_size, config.max_input_tokens, config.max_target_tokens)  # fmt: skip
        for name in NORMALISATIONS:
            correct = np.array([r.choices[int(np.argmax(s[name]))] == r.targets
                                for r, s in zip(rendered, choice_scores, strict=True)], dtype=float)  # fmt: skip
            scores[f"rank_{name}"] = 100.0 * float(correct.mean())
            samplers[f"rank_{name}"] = {"metric": f"rank_{name}", "values": (100.0 * correct).tolist()}
        for p, s, r in zip(predictions, choice_scores, rendered, strict=True):
            p["choice_scores"] = s
            p["ranked"] = r.choices[int(np.argmax(s["sum"]))]
    return scores, predictions, samplers, cut


def metric_rows(metric: str, predictions: list[str], references: list[list[str]]) -> dict:
    """What a metric needs to be recomputed on any resample of the examples, as JSON: per-example scores where the
    metric is a mean of them (all but corpus BLEU), else the predictions and references."""
    if metric in PER_EXAMPLE:
        return {
            "metric": metric,
            "values": [METRICS[metric]([p], [r]) for p, r in zip(predictions, references, strict=True)],
        }
    return {"metric": metric, "predictions": list(predictions), "references": [list(r) for r in references]}


def sampler_of(rows: dict) -> Any:
    """The metric of `metric_rows` as a function of example indices; with `kept` (which of the task's rows the
    template rendered), of indices into all the task's rows."""
    if "values" in rows:
        values = np.asarray(rows["values"], dtype=float)
        sample = lambda idx: float(values[idx].mean())  # noqa: E731
    else:
        metric, predictions, references = rows["metric"], rows["predictions"], rows["references"]
        sample = lambda idx: METRICS[metric]([predictions[i] for i in idx], [references[i] for i in idx])  # noqa: E731
    kept = rows.get("kept")
    return sample if kept is None else _on_kept(sample, np.asarray(kept, dtype=bool))


def samplers_of(templates: dict[str, dict]) -> dict[str, Any]:
    return {name: sampler_of(rows) for name, rows in templates.items()}


@dataclass
class Scored:
    """One model's score on one task: the median over templates, and per template the primary metric as a
    function of row indices (for the bootstrap)."""

    median: float
    samplers: dict


PAIRED_SAMPLES = 1000


def delta_interval(mixed: list[Scored], single: list[Scored], n_rows: int, rng: np.random.Generator,
                   samples: int = PAIRED_SAMPLES) -> tuple[float, float, float]:  # fmt: skip
    """(mean over seeds of the first minus the second, 95% interval low, high): the paired percentile bootstrap of
    `t2t compare` and of checkpoint selection, resampling the rows (the same rows for both) and the seeds."""
    point, deltas = delta_samples(mixed, single, n_rows, rng, samples)
    low, high = (float(np.percentile(deltas, q)) for q in (2.5, 97.5))
    return point, low, high


def delta_samples(mixed: list[Scored], single: list[Scored], n_rows: int, rng: np.random.Generator,
                  samples: int = PAIRED_SAMPLES) -> tuple[float, np.ndarray]:  # fmt: skip
    """The point delta of `delta_interval` and its `samples` bootstrap replicates."""

    def median(scored: Scored, rows: np.ndarray) -> float:
        return float(np.median([sample(rows) for sample in scored.samplers.values()]))

    point = float(np.mean([m.median - s.median for m, s in zip(mixed, single, strict=True)]))
    seeds = len(mixed)
    deltas = []
    for _ in range(samples):
        rows = rng.integers(0, n_rows, size=n_rows)
        chosen = rng.integers(0, seeds, size=seeds)
        deltas.append(float(np.mean([median(mixed[k], rows) - median(single[k], rows) for k in chosen])))
    return point, np.asarray(deltas)


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


def scored_tasks(registry: Registry, tasks: Sequence[str]) -> list[str]:
    """The tasks there is something to score on: all but span-corruption ones (a training objective only)."""
    return [name for name in tasks if registry.task(name).spec.objective != "span_corruption"]


def evaluate(model: Any, tokenizer: Any, registry: Registry, tasks: list[str], held_out: set[str],
             config: EvalConfig, templates: dict[str, Sequence[str]] | None = None) -> tuple[dict, list[dict]]:  # fmt: skip
    """The full report (per task, template, cluster, seen / held-out) and the per-example records; `templates`
    names each task's templates where a mixture filters them."""
    model.eval()
    report: dict[str, Any] = {"split": config.split, "scoring": config.scoring, "tasks": {}, "warnings": []}
    if config.generate and (warning := generation_settings_warning(model)) is not None:
        report["warnings"].append(warning)
    all_records: list[dict] = []
    for name in scored_tasks(registry, tasks):
        task = registry.task(name)
        result = evaluate_task(model, tokenizer, task, config, (templates or {}).get(name))
        per_template = result.per_template
        if result.first_unknown is not None:
            template, row = result.first_unknown
            report["warnings"].append(
                f"task {name}: {result.unknown_inputs} inputs (over its templates) hold the tokenizer's unknown "
                f"token {tokenizer.unk_token!r}: characters it has no piece for, which all read the same to the "
                f"model; the first: template {template!r}, {config.split} row {row}"
            )
        if result.first_cut_input is not None:
            template, row, tokens = result.first_cut_input
            report["warnings"].append(
                f"task {name}: {result.cut_inputs} of its {result.all_inputs} inputs (over its templates) are longer "
                f"than {config.max_input_tokens} tokens (max_input_tokens) and are cut there, as in training: the "
                f"model does not read the rest; the first: template {template!r}, {config.split} row {row} "
                f"({tokens} tokens)"
            )
        if result.cut_references is not None:
            template, longest, budget = result.cut_references
            why = (
                "--max-new-tokens"
                if config.max_new_tokens
                else f"at most {GENERATE_CAP} unless --max-new-tokens"
            )
            report["warnings"].append(
                f"task {name}: references of up to {longest} tokens (template {template!r}), and generation stops "
                f"at {budget} new tokens ({why}): longer answers are cut, and scored as cut"
            )
        if result.metric is None:  # --no-generate on a task without answer choices: nothing to report
            continue
        report["tasks"][name] = {
            "cluster": task.spec.cluster, "held_out": name in held_out, "metric": result.metric,
            "templates": per_template, "summary": result.summary,
            "summary_by_metric": {m: summarise([s[m] for s in per_template.values()]) for m in next(iter(per_template.values()))},
        }  # fmt: skip
        all_records.extend(result.records)
    report["clusters"] = _group_means(report["tasks"], lambda t: t["cluster"])
    report["groups"] = _group_means(report["tasks"], lambda t: "held_out" if t["held_out"] else "seen")
    return report, all_records


def _group_means(tasks: dict, key) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for info in tasks.values():
        groups.setdefault(key(info), []).append(info["summary"]["median"])
    return {g: {"mean_of_medians": float(np.mean(v)), "tasks": len(v)} for g, v in sorted(groups.items())}
