"""promptsource-style templates (`jinja:` rendered whole, then split on `|||`) against promptsource's own output.

tests/fixtures/promptsource holds four templates.yaml files of promptsource 0.2.3 (Apache-2.0, its LICENSE
beside them), hand-written rows in each dataset's schema (rows.json) and what promptsource's own
`Template.apply` made of them (expected.json; make_expected.py says how). Every template that does not use the
random `choice` filter must render exactly as promptsource did, rows promptsource skips included; the others
must be deterministic; no template may change the row it renders.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from t2t.config import TaskSpec
from t2t.promptsource import import_promptsource
from t2t.registry import shipped_dir
from t2t.templates import RowSkipped, Task

FIXTURES = Path(__file__).parent / "fixtures" / "promptsource"
ROWS = json.loads((FIXTURES / "rows.json").read_text())
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


class _Loader(yaml.SafeLoader):
    """Reads promptsource's files as plain data: its two tags become mappings."""


for _tag in ("!Template", "!TemplateMetadata"):
    _Loader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node, deep=True))


def slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "template"
    base = base if base[0].isalpha() else f"t_{base}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def task_for(dataset: str) -> tuple[Task, dict[str, str]]:
    """A t2t task holding the dataset's promptsource templates as they are; promptsource name -> t2t name."""
    data = yaml.load((FIXTURES / "templates" / dataset / "templates.yaml").read_text(), Loader=_Loader)
    taken: set[str] = set()
    names, templates = {}, []
    for template in data["templates"].values():
        names[template["name"]] = slug(template["name"], taken)
        templates.append({"name": names[template["name"]], "jinja": template["jinja"],
                          "answer_choices": template["answer_choices"]})  # fmt: skip
    spec = TaskSpec.model_validate({
        "name": re.sub(r"[^a-z0-9]+", "_", dataset), "version": 1, "cluster": "promptsource",
        "source": {"kind": "generator", "generator": "add_numbers", "sizes": {"train": 1}},
        "fields": {field: field for field in ROWS[dataset][0]}, "templates": templates,
    })  # fmt: skip
    return Task(spec), names


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_promptsource_templates_render_as_promptsource_does(dataset):
    task, names = task_for(dataset)
    compared = skipped = 0
    for name, outputs in EXPECTED[dataset].items():
        for index, (row, expected) in enumerate(zip(ROWS[dataset], outputs, strict=True)):
            before = copy.deepcopy(row)
            if expected == "skipped":
                with pytest.raises(RowSkipped, match="row skipped for this template"):
                    task.render(row, names[name], "train", index)
                skipped += 1
            elif expected == "random":
                first = task.render(row, names[name], "train", index)
                again = task.render(row, names[name], "train", index)
                assert first == again  # the choice filter is seeded by (task, template, row)
            else:
                rendered = task.render(row, names[name], "train", index)
                assert [rendered.inputs, rendered.targets] == expected[:2], (name, index)
                assert (list(rendered.choices) if rendered.choices else None) == expected[2], (name, index)
                compared += 1
            assert row == before  # never mutated, though templates may .append to lists
    assert compared > 0 or dataset == "asset/simplification"
    if dataset in ("super_glue/rte", "super_glue/copa", "commonsense_qa"):
        assert skipped > 0  # promptsource's in-template row filters are exercised


def test_pipes_inside_a_row_do_not_split_it():
    task, names = task_for("super_glue/rte")
    rendered = task.render(ROWS["super_glue/rte"][1], names["GPT-3 style"], "train", 1)
    assert "losing their effectiveness ||| against illness" in rendered.inputs


def test_seeded_choice_differs_between_rows_and_stays_within_the_options():
    task, names = task_for("asset/simplification")
    row = ROWS["asset/simplification"][0]
    targets = {task.render(row, names["verbose-to-simplification"], "train", i).targets for i in range(40)}
    assert targets <= {
        "Nearby counties are Marin, Mendocino, Lake and Napa."
    }  # the one shorter simplification
    picks = {task.render(row, names["choose-verbose"], "train", i).targets for i in range(40)}
    assert len(picks) == 2  # the seeded choice still varies with the row index


def test_a_jinja_template_with_input_and_target_is_refused(task_dir, run_cli):
    from tests.conftest import qa_task, write_task

    write_task(task_dir, qa_task(templates=[{"name": "both", "jinja": "{{ question }} ||| {{ answer }}",
                                             "input": "x", "target": "y"}], golden=[]))  # fmt: skip
    code, _, err = run_cli("--templates-dir", task_dir, "render", "toy_qa")
    assert code == 2 and "either `jinja` (promptsource style) or `input` and `target`" in err


@pytest.fixture
def rte_folder(tmp_path):
    """A files task holding RTE's promptsource templates, on rows of which every third is unlabelled (skipped)."""
    from tests.conftest import write_jsonl

    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [
        {**ROWS["super_glue/rte"][i % 2], "idx": i, "label": -1 if i % 3 == 2 else i % 2} for i in range(30)
    ]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "validation.jsonl", rows)
    data = yaml.load(
        (FIXTURES / "templates" / "super_glue" / "rte" / "templates.yaml").read_text(), Loader=_Loader
    )
    taken: set[str] = set()
    templates = [{"name": slug(t["name"], taken), "jinja": t["jinja"], "answer_choices": t["answer_choices"]}
                 for t in list(data["templates"].values())[:3]]  # fmt: skip
    golden_row = {k: v for k, v in ROWS["super_glue/rte"][0].items() if k != "idx"}
    expected = EXPECTED["super_glue/rte"]["MNLI crowdsource"][0]
    spec = {"name": "ps_rte", "version": 1, "cluster": "nli",
            "source": {"kind": "files", "splits": {"train": "train.jsonl", "validation": "validation.jsonl"}},
            "fields": {"premise": "", "hypothesis": "", "label": "0 entailment, 1 not, -1 unlabelled"},
            "metrics": ["accuracy"], "templates": templates,
            "golden": [{"template": "mnli_crowdsource", "row": golden_row, "input": expected[0],
                        "target": expected[1], "choices": expected[2]}]}  # fmt: skip
    (folder / "ps_rte.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    (mixtures / "ps.yaml").write_text(yaml.safe_dump({"name": "ps", "members": {"ps_rte": None}}))
    return folder, mixtures


def test_a_promptsource_task_through_the_cli(rte_folder, tmp_path, run_cli, tiny_tokenizer):
    folder, mixtures = rte_folder
    dirs = ["--templates-dir", folder, "--mixtures-dir", mixtures]
    code, out, err = run_cli(*dirs, "render", "ps_rte", "-n", "30", "--template", "can_we_infer")
    assert code == 0, err
    assert out.count("skipped by the template") == 10 and out.count("input:") == 20
    code, out, err = run_cli(*dirs, "lint", "ps_rte")
    assert code == 0, out
    assert re.search(
        r"template 'can_we_infer', split '(train|validation)'.*: skips \d+ of \d+ sampled rows", err
    )
    code, out, _ = run_cli(*dirs, "mixture", "sample", "ps", "--count", "12", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert any(r.get("skipped") for r in records) and any("input" in r for r in records)
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    code, out, err = run_cli(*dirs, "train", Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml",
                           f"run_dir={tmp_path / 'run'}", "mixture=ps", f"tokenizer={{pretrained: {tmp_path / 'tok'}}}",
                           "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}", "steps=3",
                           "batching={strategy: padded, batch_size: 4, max_tokens: null, window_examples: 16}",
                           "trackers=[]", "log_every_steps=1")  # fmt: skip
    assert code == 0, err
    # the warning counts the rows of the first window (16 positions) under that template
    skipped, drawn = map(int, re.search(r"task ps_rte: template can_we_infer skips (\d+) of the (\d+) rows drawn "
                                        r"so far", " ".join(out.split())).groups())  # fmt: skip
    assert 1 <= skipped < drawn <= 16
    code, _, err = run_cli(*dirs, "eval", "--model", tmp_path / "run" / "model", "--tasks", "ps_rte", "--out",
                           tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    predictions = [
        json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(predictions) == 3 * 20  # the 10 unlabelled rows are skipped under every template
    assert all(p["choices"] == ["Yes", "No"] for p in predictions)


def test_import_lint_render_and_reimport(tmp_path, run_cli):
    from t2t.config import load_task_spec

    sdist = tmp_path / "promptsource-0.2.3"
    shutil.copytree(FIXTURES, sdist / "promptsource")  # the layout of an unpacked sdist
    (sdist / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: promptsource\nVersion: 0.2.3\n")
    out = tmp_path / "imported"
    code, stdout, err = run_cli("import", "promptsource", sdist, "--out", out)
    assert code == 0, err
    n_templates = len(EXPECTED["asset/simplification"]) + len(EXPECTED["commonsense_qa"])
    assert stdout.splitlines()[:2] == [
        f"2 task files in {out} (2 new, 0 changed, 0 unchanged), {n_templates} templates",
        "left out 2 that t2t ships already imported (templates/promptsource; a --templates-dir may not define "
        "them again): ps_super_glue_copa, ps_super_glue_rte",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["ps_asset_simplification.yaml", "ps_commonsense_qa.yaml"]
    # into a folder of its own (no shipped names to avoid), every file is written
    own = tmp_path / "own"
    assert import_promptsource(sdist, own).new == [
        "ps_asset_simplification",
        "ps_commonsense_qa",
        "ps_super_glue_copa",
        "ps_super_glue_rte",
    ]
    # the shipped file is what the importer writes from promptsource 0.2.3
    shipped = shipped_dir("templates") / "promptsource" / "ps_super_glue_rte.yaml"
    assert (own / "ps_super_glue_rte.yaml").read_text() == shipped.read_text()
    spec = load_task_spec(own / "ps_super_glue_rte.yaml")
    assert (
        spec.source.path == "aps/super_glue" and spec.source.name == "rte"
    )  # today's hub id, from the data file
    assert set(spec.fields) == {"premise", "hypothesis", "label"}  # found in the templates' syntax trees
    assert spec.origin == {"tool": "promptsource", "version": "0.2.3", "licence": "Apache-2.0",
                           "dataset": "super_glue", "subset": "rte"}  # fmt: skip
    assert spec.templates[0].metadata["promptsource_id"] == "2b52a83c-0021-41fe-b44c-5aaa076d71a2"
    code, out_lint, err = run_cli("--templates-dir", out, "lint", "ps_commonsense_qa", "ps_super_glue_copa")
    assert code == 0 and out_lint == "", out_lint
    assert "no golden examples yet (imported from promptsource)" in err
    for dataset in EXPECTED:  # the imported files render as promptsource does
        task = Task(load_task_spec(own / f"ps_{re.sub(r'[^a-z0-9]+', '_', dataset)}.yaml"))
        by_name = {t.metadata["promptsource_name"]: t.name for t in task.spec.templates}
        for name, outputs in EXPECTED[dataset].items():
            for index, (row, expected) in enumerate(zip(ROWS[dataset], outputs, strict=True)):
                rendered = task.try_render(row, by_name[name], "train", index)
                if expected == "skipped":
                    assert rendered is None
                elif expected != "random":
                    assert [rendered.inputs, rendered.targets] == expected[:2]
    code, stdout, _ = run_cli("import", "promptsource", sdist, "--out", out)
    assert "(0 new, 0 changed, 2 unchanged)" in stdout
    code, stdout, _ = run_cli("import", "promptsource", sdist, "--out", tmp_path / "only", "--datasets",
                              "super_glue/rte", "commonsense_qa")  # fmt: skip
    assert code == 0 and sorted(p.name for p in (tmp_path / "only").iterdir()) == ["ps_commonsense_qa.yaml"]
    assert "left out 1 that t2t ships already imported" in stdout
    rte = sdist / "promptsource" / "templates" / "super_glue" / "rte" / "templates.yaml"
    rte.write_text(rte.read_text().replace("Yes or no?", "Yes or no ?", 1))
    report = import_promptsource(sdist, own)
    assert report.changed == ["ps_super_glue_rte"] and len(report.unchanged) == 3


def test_a_broken_file_of_another_dataset_does_not_block_the_one_asked_for(tmp_path, run_cli):
    # every templates file was parsed before --datasets was applied: one broken file anywhere blocked every import
    collection = tmp_path / "ps"
    shutil.copytree(FIXTURES / "templates", collection / "templates")
    (collection / "templates" / "asset" / "simplification" / "templates.yaml").write_text(
        "dataset: [unclosed\n"
    )
    code, stdout, err = run_cli("import", "promptsource", collection, "--out", tmp_path / "one", "--datasets",
                                "commonsense_qa")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["ps_commonsense_qa.yaml"]
    # the broken file is refused where it is asked for, by its dataset or its subset, and where nothing is chosen
    broken = collection / "templates" / "asset" / "simplification" / "templates.yaml"
    for chosen in (["--datasets", "asset"], ["--datasets", "asset/simplification"], []):
        code, stdout, err = run_cli("import", "promptsource", collection, "--out", tmp_path / "two", *chosen)
        assert code == 2 and stdout == "" and err.startswith(f"t2t: error: {broken}"), err
        assert "not a promptsource templates file" in err and len(err.splitlines()) == 1
    # a name found nowhere says a file could not be read (it might have held it)
    code, _, err = run_cli(
        "import", "promptsource", collection, "--out", tmp_path / "two", "--datasets", "glue"
    )
    assert code == 2 and "none of glue is in this promptsource collection (and a file that cannot" in err, err
    assert not (tmp_path / "two").exists()


def test_a_promptsource_file_with_a_yaml_alias_bomb_is_one_line_in_bounded_memory(tmp_path, run_bounded):
    """Nine levels of aliases over a list of ten 30-character strings, the answer choices of one template: 10^9
    strings once expanded. The import read promptsource's files with aliases allowed (t2t's own files refuse
    them): a MemoryError under a 6 GB limit after 17 s, and without a limit, the machine's memory."""
    collection = tmp_path / "ps"
    shutil.copytree(FIXTURES / "templates", collection / "templates")
    path = collection / "templates" / "commonsense_qa" / "templates.yaml"
    text = path.read_text()
    levels = ["a0: &a0 [" + ", ".join(["x" * 30] * 10) + "]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    first = text.index("    answer_choices:")
    end = text.index("\n", first)
    path.write_text("\n".join(levels) + "\n" + text[:first] + "    answer_choices: *a8" + text[end:])
    code, out, err = run_bounded(tmp_path, "import", "promptsource", collection, "--out", tmp_path / "out",
                                 "--datasets", "commonsense_qa", megabytes=100)  # fmt: skip
    assert code == 2 and out == ""
    assert err == (f"t2t: error: {path}:2: YAML alias *a0 is not allowed in promptsource files read by t2t "
                   "(aliases can expand without bound): write the value out\n")  # fmt: skip


def test_import_refuses_a_folder_without_templates(tmp_path, run_cli):
    code, out, err = run_cli("import", "promptsource", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and out == "" and "no promptsource templates here" in err
    assert not (tmp_path / "out").exists()


def test_truncate_fields_cuts_each_output_as_promptsource_does():
    row = {"premise": "word " * 1000, "hypothesis": "h", "label": 0}
    spec = {"name": "cut", "version": 1, "cluster": "c", "fields": {"premise": "", "hypothesis": "", "label": ""},
            "source": {"kind": "generator", "generator": "add_numbers", "sizes": {"train": 1}},
            "templates": [{"name": "default", "jinja": "{{ premise }} ||| {{ hypothesis }}"},
                          {"name": "short", "jinja": "{{ premise }} ||| {{ hypothesis }}", "truncate_fields": 20},
                          {"name": "whole", "jinja": "{{ premise }} ||| {{ hypothesis }}", "truncate_fields": None}]}  # fmt: skip
    task = Task(TaskSpec.model_validate(spec))
    default, short, whole = (task.render(row, name).inputs for name in ("default", "short", "whole"))
    assert len(whole) == 4999 and 2040 < len(default) <= 2048 and default.endswith("...")  # at most 2,048
    assert short == "word word word..."  # Jinja's truncate: cut at a word boundary, then "..."
