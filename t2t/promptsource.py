"""`t2t import promptsource PATH --out DIR`: promptsource's templates as t2t task files, as they are.

PATH is an unpacked promptsource sdist or a git clone. Each `templates.yaml` (dataset, optional subset, and
templates tagged `!Template` with `!TemplateMetadata`) becomes one task file `ps_DATASET[_SUBSET].yaml`:

- a hub source: the dataset name mapped to the id it has on the hub today where it moved
  (t2t/promptsource_hub.yaml), the subset as the config name;
- the fields the templates read, found in their syntax trees;
- every template as a promptsource-style `jinja` template (rendered whole, split on `|||`; rows that give no
  input ||| target are skipped), its `answer_choices` in promptsource's form, its name slugged without
  collision, and its metadata (promptsource id, original_task, choices_in_prompt, metrics, reference);
- the task's metrics from the templates' (Accuracy, BLEU, ROUGE, Squad), and an `origin` naming promptsource,
  its version and licence.

A template that does not compile in t2t's sandbox is left out and reported with the reason. Files are written
only when their content changes, so a re-import reports what changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateSyntaxError, meta

from t2t.config import RESERVED_FIELDS, TaskSpec, TemplateSpec, read_text, refuse_aliases
from t2t.errors import T2TError, Where, first_line
from t2t.fileio import atomic_write_text
from t2t.sandbox import PROMPTSOURCE_ENV
from t2t.templates import compile_template, task_limits

METRICS = {"Accuracy": ["accuracy"], "BLEU": ["bleu"], "ROUGE": ["rouge_l"], "Squad": ["exact_match", "f1"]}
NOT_FIELDS = {"answer_choices"}


class _Loader(yaml.SafeLoader):
    """promptsource's files as plain data: its two tags read as mappings, nothing else executes."""


for _tag in ("!Template", "!TemplateMetadata"):
    _Loader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node, deep=True))


class _Dumper(yaml.SafeDumper):
    """Plain YAML without anchors or aliases (t2t refuses aliases in task files)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass
class ImportReport:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    templates: int = 0
    failed: list[str] = field(default_factory=list)  # "task: template: reason"
    shipped: list[str] = field(default_factory=list)  # left out: t2t ships a task of that name


def templates_dir(path: Path) -> Path:
    for candidate in (path / "promptsource" / "templates", path / "templates", path):
        if candidate.is_dir() and any(candidate.rglob("templates.yaml")):
            return candidate
    raise T2TError("no promptsource templates here (looked for promptsource/templates/**/templates.yaml)",
                   Where(file=path))  # fmt: skip


def slug(text: str, taken: set[str] | None = None) -> str:
    """A t2t name: lowercase letters, digits and _, starting with a letter; `_2`, `_3` ... against collisions."""
    base = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "template"
    base = base if base[0].isalpha() else f"t_{base}"
    if taken is None:
        return base
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def read_file(path: Path) -> dict:
    """One templates.yaml as plain data: bounded in size (16 MiB) and without YAML aliases, which can expand a
    small file into gigabytes (promptsource's own files use none)."""
    text = read_text(path)
    try:
        refuse_aliases(text, Where(file=path), "promptsource files read by t2t")
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise T2TError(f"not a promptsource templates file: {first_line(exc)}", Where(file=path)) from None
    if not isinstance(data, dict) or "dataset" not in data or not isinstance(data.get("templates"), dict):
        raise T2TError("not a promptsource templates file (no dataset or templates)", Where(file=path))
    return data


def template_fields(sources: list[str]) -> set[str]:
    """The row fields a set of Jinja sources read."""
    found: set[str] = set()
    for source in sources:
        try:
            found |= meta.find_undeclared_variables(PROMPTSOURCE_ENV.parse(source))
        except TemplateSyntaxError:
            continue  # reported when the template is compiled

    return {f for f in found - NOT_FIELDS - set(PROMPTSOURCE_ENV.globals)
            if f.isidentifier() and not f.startswith("_") and f not in RESERVED_FIELDS}  # fmt: skip


def task_specs(data: dict, hub: dict, version: str) -> tuple[list[dict], list[str]]:
    """The task files of one promptsource file: one, or one per split variant (t2t/promptsource_hub.yaml)."""
    spec, failed = task_spec(data, hub["hub_ids"], version)
    variants = hub["split_variants"].get(data["dataset"]) if not data.get("subset") else None
    if not variants:
        return [spec], failed
    specs = []
    for variant, splits in variants.items():
        source = {**spec["source"], "splits": dict(splits)}
        specs.append({**spec, "name": f"{spec['name']}_{slug(variant)}", "source": source,
                      "description": f"{spec['description']}, {variant} (splits {', '.join(splits.values())})"})  # fmt: skip
    return specs, failed


def task_spec(data: dict, hub_ids: dict[str, str], version: str) -> tuple[dict, list[str]]:
    """The t2t task file's content for one promptsource file, and the templates left out (with reasons)."""
    dataset, subset = data["dataset"], data.get("subset")
    name = "ps_" + slug(f"{dataset}_{subset}" if subset else dataset)
    taken: set[str] = set()
    templates, failed, metrics = [], [], []
    for key, template in data["templates"].items():
        metadata = template.get("metadata") or {}
        spec = {"name": slug(str(template.get("name", key)), taken), "jinja": template.get("jinja"),
                "answer_choices": template.get("answer_choices"),
                "choices_in_prompt": bool(metadata.get("choices_in_prompt")),
                "metadata": {"promptsource_name": template.get("name"), "promptsource_id": template.get("id", key),
                             "original_task": metadata.get("original_task"), "metrics": metadata.get("metrics") or [],
                             "reference": template.get("reference") or ""}}  # fmt: skip
        templates.append(spec)
        for metric in metadata.get("metrics") or []:
            metrics.extend(m for m in METRICS.get(metric, []) if m not in metrics)
    fields = sorted(template_fields([t["jinja"] or "" for t in templates] +
                                    [t["answer_choices"] for t in templates if t["answer_choices"]]))  # fmt: skip
    spec = {
        "name": name, "version": 1, "cluster": "promptsource",
        "description": f"promptsource's templates for {dataset}" + (f" ({subset})" if subset else ""),
        "source": {"kind": "hub", "path": hub_ids.get(dataset, dataset), **({"name": subset} if subset else {})},
        "fields": {f: "a field of the dataset (read by the templates)" for f in fields},
        "metrics": metrics or ["accuracy"],
        "templates": [],
        "origin": {"tool": "promptsource", "version": version, "licence": "Apache-2.0",
                   "dataset": dataset, "subset": subset},
    }  # fmt: skip
    kept = []
    for template in templates:
        reason = _compile_problem(spec, template)
        if reason is None:
            kept.append(template)
        else:
            failed.append(f"{name}: {template['metadata']['promptsource_name']}: {reason}")
    spec["templates"] = kept
    return spec, failed


def _compile_problem(task: dict, template: dict) -> str | None:
    """Why a template does not compile in t2t's sandbox, or None."""
    try:
        spec = TaskSpec.model_validate({**task, "templates": [template]})
        compile_template(spec, TemplateSpec.model_validate(template), task_limits(spec))
    except T2TError as exc:
        return exc.message
    except Exception as exc:  # pydantic: the template's own fields
        return first_line(exc)
    return None


def import_promptsource(path: Path, out: Path, datasets: list[str] | None = None,
                        shipped: set[str] | None = None) -> ImportReport:  # fmt: skip
    """Import into `out`, leaving out the task names in `shipped` (t2t ships T0's datasets already imported, and
    a folder given with --templates-dir may not define a shipped task again)."""
    if out.exists() and not out.is_dir():
        raise T2TError("--out must be a folder", Where(file=out))
    root = templates_dir(path)
    version = _version(path)
    hub = yaml.safe_load((Path(__file__).parent / "promptsource_hub.yaml").read_text())
    files = sorted(root.rglob("templates.yaml"))
    report = ImportReport()
    specs = []
    unread: T2TError | None = None
    for file in files:
        try:
            data = read_file(file)
        except T2TError as exc:
            # with --datasets, a broken file of another dataset does not block the ones asked for (promptsource
            # keeps DATASET[/SUBSET]/templates.yaml: a file under a name asked for is refused as before)
            where = file.parent.relative_to(root).as_posix()
            if not datasets or any(where == d or where.startswith(f"{d}/") for d in datasets):
                raise
            unread = unread or exc
            continue
        label = data["dataset"] + (f"/{data['subset']}" if data.get("subset") else "")
        if datasets and label not in datasets and data["dataset"] not in datasets:
            continue
        found, failed = task_specs(data, hub, version)
        report.shipped.extend(spec["name"] for spec in found if spec["name"] in (shipped or ()))
        found = [spec for spec in found if spec["name"] not in (shipped or ())]
        report.failed.extend(f for f in failed if f.split(":")[0] not in (shipped or ()))
        specs.extend(spec for spec in found if spec["templates"])
    if datasets and not specs and not report.shipped:
        also = f" (and a file that cannot be read may hold one: {unread})" if unread else ""
        raise T2TError(
            f"none of {', '.join(datasets)} is in this promptsource collection{also}", Where(file=path)
        )
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise T2TError(f"two datasets slug to the task name {clash!r}", Where(file=path))
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        target = out / f"{spec['name']}.yaml"
        text = "# Imported by `t2t import promptsource` (promptsource is Apache-2.0); re-import to update.\n"
        text += yaml.dump(spec, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
        report.templates += len(spec["templates"])
        if not target.exists():
            report.new.append(spec["name"])
        elif target.read_text(encoding="utf-8") != text:
            report.changed.append(spec["name"])
        else:
            report.unchanged.append(spec["name"])
            continue
        atomic_write_text(target, text)
    return report


def _version(path: Path) -> str:
    for candidate in (path / "PKG-INFO", path / "setup.py"):
        if candidate.is_file():
            match = re.search(r"(?m)^Version:\s*(\S+)|version=['\"]([^'\"]+)", candidate.read_text())
            if match:
                return match.group(1) or match.group(2)
    return "unknown"
