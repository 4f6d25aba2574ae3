"""`t2t export lm-eval`: t2t's tasks as lm-evaluation-harness tasks, rendered by t2t's own templates.

For every task and template the evaluation rows are rendered by t2t (the rows `t2t eval --max-examples N` takes)
into a jsonl file, and one lm-eval task YAML reads it (`dataset_path: json`, absolute `data_files`):

- a task with answer choices becomes `multiple_choice`: `doc_to_text` is the rendered input, `doc_to_choice` the
  rendered choices, `doc_to_target` the index of the target, `target_delimiter: ""` (the choice is scored as
  written) and metric `acc`: the same log-likelihoods `t2t eval --scoring harness` computes (lm-eval's seq2seq
  backend puts the tokenizer's EOS on the context and none on the continuation);
- a task without becomes `generate_until` with greedy decoding of at most the task's longest reference plus 8
  tokens (t2t eval's budget), scored per example by `utils.py`, which calls t2t's own metric functions (lm-eval
  has no SQuAD F1 and no ROUGE-L with t2t's options).

A group per task averages its templates. lm-eval skips a YAML it cannot load without a visible error, so the
exporter loads its own output through lm-eval's TaskManager and fails if any task is missing.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from t2t.errors import T2TError, Where, first_line
from t2t.fileio import atomic_write_text
from t2t.metrics import METRICS, PER_EXAMPLE
from t2t.registry import Registry
from t2t.sources import load_split, select_rows

PREFIX = "t2t"
UTILS = (
    '''"""Scoring for t2t's generation tasks with t2t's own metric functions (written by t2t export). A metric that
is a mean over examples is scored per example; a corpus metric (BLEU, chrF) keeps each example's prediction and
references, and its aggregation scores the whole set at once, as `t2t eval` does (a mean of per-example BLEU is
another number)."""

from t2t.metrics import METRICS, PER_EXAMPLE


def process_results(doc, results):
    prediction = results[0].strip()
    return {
        metric: METRICS[metric]([prediction], [doc["references"]]) if metric in PER_EXAMPLE
        else (prediction, doc["references"])
        for metric in doc["metrics"]
    }


def _corpus(metric):
    def aggregate(items):
        return METRICS[metric]([prediction for prediction, _ in items], [refs for _, refs in items])

    return aggregate
'''
    + "\n\n"
    + "".join(f"corpus_{m} = _corpus({m!r})\n" for m in METRICS if m not in PER_EXAMPLE)
)


def task_name(task: str, template: str | None = None) -> str:
    return f"{PREFIX}_{task}" if template is None else f"{PREFIX}_{task}__{template}"


def export_lm_eval(registry: Registry, tasks: list[str], split: str, out: Path, max_examples: int | None,
                   tokenizer: Any | None = None,
                   templates: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[str]]:  # fmt: skip
    """Write the lm-eval tasks of `tasks` into `out` (a new or empty folder), one per template (`templates[task]`
    where a mixture filters them, else all); returns group -> its task names.
    Nothing is left behind when the export fails."""
    try:
        import lm_eval  # noqa: F401  (checked before anything is written)
    except ImportError:
        raise T2TError("t2t export lm-eval needs lm-eval: pip install 't2t[lmeval]'") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise T2TError("--out must be a new or empty folder: choose another or remove it", Where(file=out))
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[str]] = {}
    try:
        for name in tasks:
            chosen = (templates or {}).get(name)
            groups[task_name(name)] = _export_task(
                registry, name, split, out, max_examples, tokenizer, chosen
            )
        (out / "utils.py").write_text(UTILS)
        check_loads(out, groups)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return groups


def _export_task(registry: Registry, name: str, split: str, out: Path, max_examples: int | None,
                 tokenizer: Any | None, templates: tuple[str, ...] | None = None) -> list[str]:  # fmt: skip
    task = registry.task(name)
    data = load_split(task, split)
    picks = select_rows(task.name, split, len(data), max_examples)
    rows = data.rows.select(picks.tolist())
    members = []
    for template in templates or task.template_names:
        docs = []
        for i, row in zip(picks.tolist(), rows, strict=True):
            index = int(data.source_rows[i])
            rendered = task.try_render(row, template, split, index)
            if rendered is None:  # a promptsource-style template skips this row
                continue
            doc = {"row": index, "input": rendered.inputs, "target": rendered.targets,
                   "references": task.references(row, rendered), "metrics": list(task.spec.metrics)}  # fmt: skip
            if rendered.choices is not None:
                doc.update(
                    choices=list(rendered.choices), label=list(rendered.choices).index(rendered.targets)
                )
            docs.append(doc)
        if not docs:  # every row skipped by this (promptsource-style) template
            continue
        member = task_name(name, template)
        data_file = f"{member}.jsonl"
        atomic_write_text(out / data_file, "".join(json.dumps(d) + "\n" for d in docs))
        config: dict[str, Any] = {
            "task": member, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str((out / data_file).resolve())}},
            "test_split": "test", "doc_to_text": "input", "metadata": {"version": 1, "t2t_template": template},
        }  # fmt: skip
        has_choices = "choices" in docs[0]
        if has_choices:
            config.update({"output_type": "multiple_choice", "doc_to_choice": "choices", "doc_to_target": "label",
                           "target_delimiter": "", "metric_list": [{"metric": "acc", "aggregation": "mean",
                                                                    "higher_is_better": True}]})  # fmt: skip
        else:
            budget = _generation_budget(docs, tokenizer)
            config.update({
                "output_type": "generate_until", "doc_to_target": "target", "target_delimiter": "",
                # max_length counts the decoder start token: at most `budget` new tokens, as in t2t eval
                "generation_kwargs": {"until": [], "do_sample": False, "max_length": budget + 1},
                "process_results": "!function utils.process_results",
                "metric_list": [{"metric": m, "higher_is_better": True,
                                 "aggregation": "mean" if m in PER_EXAMPLE else f"!function utils.corpus_{m}"}
                                for m in task.spec.metrics],
            })  # fmt: skip
        text = yaml.safe_dump(config, sort_keys=False)
        text = re.sub(r"'(!function utils\.\w+)'", r"\1", text)  # a tag, not a quoted string
        atomic_write_text(out / f"{member}.yaml", text)
        members.append(member)
    if not members:
        raise T2TError(f"no {split} row renders under any template", Where(file=task.spec.path, task=name))
    group = {"group": task_name(name), "task": members,
             "aggregate_metric_list": [{"metric": "acc" if has_choices else task.spec.metrics[0],
                                        "aggregation": "mean", "weight_by_size": False}],
             "metadata": {"version": 1}}  # fmt: skip
    atomic_write_text(out / f"{task_name(name)}.yaml", yaml.safe_dump(group, sort_keys=False))
    return members


def _generation_budget(docs: list[dict], tokenizer: Any | None) -> int:
    """t2t eval's default generation budget: the longest reference in tokens, plus 8 (at most GENERATE_CAP)."""
    from t2t.evaluation import GENERATE_CAP

    if tokenizer is None:
        return 128
    longest = max(
        len(tokenizer(r, add_special_tokens=False)["input_ids"]) for d in docs for r in d["references"]
    )
    return min(longest + 8, GENERATE_CAP)


def check_loads(folder: Path, groups: dict[str, list[str]]) -> None:
    """Load every exported group (and so every task) through lm-eval's own task manager: a task it drops is an
    error here."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    names = [*groups, *(t for members in groups.values() for t in members)]
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        raise T2TError(f"lm-eval did not load the exported task {missing[0]!r}", Where(file=folder))
    try:
        loaded = manager.load(list(groups))
    except Exception as exc:
        raise T2TError(
            f"lm-eval cannot load the exported tasks: {first_line(exc)}", Where(file=folder)
        ) from None
    absent = [t for members in groups.values() for t in members if t not in loaded.get("tasks", {})]
    if absent:
        raise T2TError(f"lm-eval loaded the groups without task {absent[0]!r}", Where(file=folder))
