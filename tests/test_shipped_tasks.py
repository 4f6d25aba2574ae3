"""One validator run over every shipped task file, and what the shipped suite must offer."""

from collections import Counter

import pytest

from t2t.generators import GENERATORS
from t2t.lint import lint_task
from t2t.registry import Registry, shipped_dir
from t2t.sources import available_offline

REGISTRY = Registry([shipped_dir("templates")])
TASK_FILES = sorted(REGISTRY.task_files.items())


@pytest.mark.parametrize(("name", "path"), TASK_FILES, ids=[n for n, _ in TASK_FILES])
def test_shipped_task_lints_clean(name, path):
    task = REGISTRY.task(name)
    assert task.spec.path == path
    if (
        task.spec.origin.get("tool") != "promptsource"
    ):  # imported as they are; rendering parity: test_promptsource*
        assert task.spec.golden, "every hand-written shipped task documents itself with golden rows"
    assert lint_task(task) == []


def builtin():
    return [t for t in REGISTRY.tasks() if t.spec.source.kind == "generator"]


def test_builtin_suite_is_broad_enough():
    tasks = builtin()
    assert len(tasks) >= 10
    assert len({t.spec.cluster for t in tasks}) >= 4
    assert all(len(t.template_names) >= 3 for t in tasks if t.spec.objective == "prompted")
    assert [t.name for t in tasks if t.spec.objective == "span_corruption"] == ["world_text"]
    assert {t.spec.source.generator for t in tasks} == set(GENERATORS)
    assert all(available_offline(t.spec) for t in tasks)
    kinds = Counter("choices" if t.spec.answer_choices else "generation" for t in tasks)
    assert kinds["choices"] >= 3 and kinds["generation"] >= 3


def test_builtin_train_sizes_span_100x():
    sizes = [t.spec.source.sizes["train"] for t in builtin()]
    assert max(sizes) / min(sizes) >= 100


def test_builtin_templates_are_worded_differently():
    for task in builtin():
        inputs = [t.input for t in task.spec.templates]
        assert len(set(inputs)) == len(inputs), task.name


def test_catalog_covers_public_datasets():
    catalog = [t for t in REGISTRY.tasks() if t.spec.source.kind == "hub"]
    assert len(catalog) >= 15
    assert all(len(t.template_names) >= 2 for t in catalog)
    # T0's held-out task types are all represented, so a T0-style mixture can hold them out.
    assert {"nli", "coreference", "sentence_completion", "word_sense"} <= {t.spec.cluster for t in catalog}
