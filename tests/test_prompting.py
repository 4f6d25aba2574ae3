"""FLAN-style prompt variants (few-shot exemplars, an options suffix) and a mixture's template filter: what they
render, that they are keyed by stream position, and that training sees exactly what `t2t mixture sample` shows."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from t2t.config import load_task_spec
from t2t.data import MixtureData
from t2t.encoding import Limits
from t2t.errors import T2TError
from t2t.mixtures import PromptingSpec, load_mixture, stream_for
from t2t.prompting import Prompter, fit_input
from t2t.registry import Registry
from t2t.sampler import StreamItem
from t2t.sources import load_split
from t2t.templates import Task
from tests.conftest import write_jsonl, write_task

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    {"text": "the soup was cold", "label": 0},
    {"text": "a lovely evening", "label": 1},
    {"text": "the film dragged on", "label": 0},
]


def review_task(folder: Path, **overrides) -> Task:
    spec = {
        "name": "reviews", "version": 1, "cluster": "sentiment",
        "source": {"kind": "files", "splits": {"train": "reviews.jsonl", "validation": "reviews.jsonl"}},
        "fields": {"text": "a review", "label": "0 negative, 1 positive"},
        "metrics": ["accuracy"],
        "templates": [
            {"name": "feel", "input": "{{ text }}\nHow was it?", "target": "{{ answer_choices[label] }}",
             "answer_choices": ["bad", "good"], "metadata": {"original_task": True}},
            {"name": "listed", "input": "{{ text }}\nGood or bad?", "target": "{{ answer_choices[label] }}",
             "answer_choices": ["bad", "good"], "choices_in_prompt": True, "metadata": {"original_task": True}},
            {"name": "echo", "input": "Repeat: {{ text }}", "target": "{{ text }}",
             "metadata": {"original_task": False}},
        ],
    }  # fmt: skip
    spec.update(overrides)
    write_jsonl(folder / "reviews.jsonl", ROWS)
    return Task(load_task_spec(write_task(folder, spec)))


def item(row: int, template: str, occurrence: int = 0) -> StreamItem:
    return StreamItem(occurrence, "reviews", row, 0, occurrence, template)


def test_two_shot_with_options_renders_exactly_this(tmp_path):
    task = review_task(tmp_path)
    prompter = Prompter(task, load_split(task, "train"), "train", PromptingSpec(few_shot=2, options=1.0), 0)
    prompted = prompter.prompted(item(0, "feel"))
    options = "\n\nOPTIONS:\n- bad\n- good"
    shot1 = f"a lovely evening\nHow was it?{options}\ngood"
    shot2 = f"the film dragged on\nHow was it?{options}\nbad"
    own = f"the soup was cold\nHow was it?{options}"
    # three rows, two shots, never the row itself: the exemplars are rows 1 and 2, in a seeded order
    assert prompted.text() in (f"{shot1}\n\n{shot2}\n\n{own}", f"{shot2}\n\n{shot1}\n\n{own}")
    assert prompted.targets == "bad"
    assert prompted.text(1) == f"{prompted.exemplars[-1]}\n\n{own}" and prompted.text(0) == own


def test_options_are_not_added_where_the_template_lists_the_choices_or_has_none(tmp_path):
    task = review_task(tmp_path)
    prompter = Prompter(task, load_split(task, "train"), "train", PromptingSpec(options=True), 0)
    assert prompter.prompted(item(1, "listed")).text() == "a lovely evening\nGood or bad?"
    assert prompter.prompted(item(1, "echo")).text() == "Repeat: a lovely evening"


def test_a_task_separator_and_answer_separator_are_used(tmp_path):
    task = review_task(tmp_path, few_shot_separator="\n###\n")
    rows = load_split(task, "train")
    prompted = Prompter(task, rows, "train", PromptingSpec(few_shot=1, answer_separator=" => "), 0).prompted(
        item(2, "echo")
    )
    assert prompted.text() in ("Repeat: the soup was cold => the soup was cold\n###\nRepeat: the film dragged on",
                               "Repeat: a lovely evening => a lovely evening\n###\nRepeat: the film dragged on")  # fmt: skip
    # the mixture's separator wins over the task's
    spec = PromptingSpec(few_shot=1, separator=" | ", answer_separator=" => ")
    assert (
        " | Repeat: the film dragged on"
        in Prompter(task, rows, "train", spec, 0).prompted(item(2, "echo")).text()
    )


def test_choices_are_keyed_by_stream_position_and_follow_the_shares(tmp_path):
    write_jsonl(tmp_path / "many.jsonl", [{"text": f"review {i}", "label": i % 2} for i in range(50)])
    task = review_task(tmp_path, source={"kind": "files", "splits": {"train": "many.jsonl"}})
    rows = load_split(task, "train")
    spec = PromptingSpec(few_shot=3, few_shot_share=0.5, options=0.25)
    first, again = (Prompter(task, rows, "train", spec, seed=7) for _ in range(2))
    draws = [first.choices(item(i % 50, "feel", occurrence=i)) for i in range(400)]
    assert draws == [again.choices(item(i % 50, "feel", occurrence=i)) for i in range(400)]
    assert draws != [
        Prompter(task, rows, "train", spec, seed=8).choices(item(i % 50, "feel", i)) for i in range(400)
    ]
    few = [exemplars for _, exemplars in draws if exemplars]
    assert 0.4 < len(few) / 400 < 0.6 and 0.15 < sum(o for o, _ in draws) / 400 < 0.35
    for i, (_, exemplars) in enumerate(draws):
        assert i % 50 not in exemplars and len(set(exemplars)) == len(exemplars)
        assert len(exemplars) in (0, 3)


def test_rows_a_template_skips_are_never_exemplars(tmp_path):
    task = review_task(tmp_path, templates=[
        {"name": "positive_only", "jinja": "{% if label == 1 %}{{ text }} ||| yes{% endif %}"}])  # fmt: skip
    write_jsonl(tmp_path / "reviews.jsonl", [{"text": f"r{i}", "label": int(i < 3)} for i in range(12)])
    prompter = Prompter(task, load_split(task, "train"), "train", PromptingSpec(few_shot=4), 0)
    for occurrence in range(30):
        _, exemplars = prompter.choices(item(0, "positive_only", occurrence))
        assert sorted(exemplars) == [1, 2]  # the only other rows it renders: a small task gives fewer shots
    assert prompter.prompted(item(5, "positive_only")) is None


def test_the_input_budget_drops_the_oldest_exemplars_first(tmp_path, tiny_tokenizer):
    task = review_task(tmp_path)
    prompted = Prompter(task, load_split(task, "train"), "train", PromptingSpec(few_shot=2), 0).prompted(
        item(0, "feel")
    )

    def ids(text):
        return tiny_tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tiny_tokenizer.eos_token_id
    whole, newest, alone = (ids(prompted.text(k)) for k in (2, 1, 0))
    assert len(whole) > len(newest) > len(alone)
    assert fit_input(prompted, tiny_tokenizer, len(whole) + 1) == [*whole, eos]
    assert fit_input(prompted, tiny_tokenizer, len(whole)) == [
        *newest,
        eos,
    ]  # one token short: oldest dropped
    assert fit_input(prompted, tiny_tokenizer, len(alone) + 1) == [*alone, eos]
    assert fit_input(prompted, tiny_tokenizer, 4) == [*alone[:3], eos]  # no exemplar left: cut as any input


@pytest.fixture
def prompted_mixture(tmp_path):
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir()
    mixtures.mkdir()
    review_task(tasks)
    spec = {"name": "prompted", "members": {
                "reviews": {"weight": 1, "templates": {"original_task": True},
                            "prompting": {"few_shot": 2, "few_shot_share": 0.5}},
                "sentiment": 1},
            "prompting": {"options": 0.5}, "held_out": ["color_check"], "rate": {"rule": "uniform"}}  # fmt: skip
    (mixtures / "prompted.yaml").write_text(yaml.safe_dump(spec))
    return tasks, mixtures


def test_member_settings_overlay_the_mixture_and_filter_templates(prompted_mixture):
    tasks, mixtures = prompted_mixture
    mixture = load_mixture(Registry.default([tasks], [mixtures]), "prompted")
    reviews, sentiment = mixture.members
    assert reviews.templates == ("feel", "listed")  # echo is not the original task
    assert reviews.prompting == PromptingSpec(few_shot=2, few_shot_share=0.5, options=0.5)
    assert sentiment.templates == ("review", "feeling", "good_or_bad")
    assert sentiment.prompting == PromptingSpec(options=0.5)
    assert mixture.held_out_templates == {"color_check": ("is_it_true", "verify", "true_false")}
    assert {item.template for item in stream_for(mixture, Registry.default([tasks], [mixtures])).items(0, 200)
            if item.task == "reviews"} == {"feel", "listed"}  # fmt: skip


def test_training_sees_what_mixture_sample_shows(prompted_mixture, tiny_tokenizer, run_cli):
    tasks, mixtures = prompted_mixture
    registry = Registry.default([tasks], [mixtures])
    code, out, err = run_cli("--templates-dir", tasks, "--mixtures-dir", mixtures, "mixture", "sample", "prompted",
                             "--count", "60", "--json")  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert any(r["exemplars"] for r in records) and any("OPTIONS:" in r["input"] for r in records)
    assert any(not r["exemplars"] and "OPTIONS:" not in r["input"] for r in records)
    data = MixtureData(load_mixture(registry, "prompted"), registry, tiny_tokenizer, Limits(256, 16))
    for record in records:
        example = data.example(data.stream.item(record["position"]))
        expected = tiny_tokenizer(record["input"], add_special_tokens=False)["input_ids"]
        assert example.input_ids == [*expected, tiny_tokenizer.eos_token_id], record
        assert tiny_tokenizer.decode(example.labels, skip_special_tokens=True) == record["target"]


def test_a_filter_that_leaves_a_task_no_template_is_refused(prompted_mixture):
    tasks, mixtures = prompted_mixture
    spec = {"name": "empty", "members": {"reviews": {"templates": {"original_task": "yes"}}}, "held_out": []}
    (mixtures / "empty.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(T2TError, match=r"task 'reviews': no template has metadata original_task = 'yes'"):
        load_mixture(Registry.default([tasks], [mixtures]), "empty")


@pytest.mark.parametrize(("member", "message"), [
    ({"prompting": {"few_shot": -1}}, "few_shot"),
    ({"prompting": {"options": 2}}, "options"),
    ({"prompting": {"shots": 2}}, "shots"),
    ({"weight": "heavy"}, "weight"),
])  # fmt: skip
def test_bad_member_settings_are_one_line_naming_the_file(prompted_mixture, run_cli, member, message):
    tasks, mixtures = prompted_mixture
    (mixtures / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", "members": {"reviews": member}}))
    code, _, err = run_cli("--templates-dir", tasks, "--mixtures-dir", mixtures, "mixture", "show", "bad")
    assert code == 2 and err.count("\n") == 1 and "bad.yaml" in err and message in err, err


@pytest.mark.slow
def test_t2t_train_runs_a_prompted_mixture(prompted_mixture, tiny_tokenizer, tmp_path):
    tasks, mixtures = prompted_mixture
    tokenizer = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(str(tokenizer))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "t2t", "--templates-dir", str(tasks), "--mixtures-dir", str(mixtures), "train",
               "configs/tiny_cpu.yaml", f"run_dir={run}", "mixture=prompted",
               f"tokenizer={{pretrained: {tokenizer}}}", "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}",
               "max_input_tokens=96", "max_target_tokens=8", "steps=3", "eval_every_steps=3", "eval_max_examples=3",
               "trackers=[]"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert {"eval/reviews", "eval/sentiment"} <= evaluation[-1].keys()
    assert (run / "model" / "config.json").is_file()


def test_mixture_show_counts_skipped_rows_per_template_and_rates_per_template(tmp_path, run_cli):
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    write_jsonl(tasks / "rows.jsonl", [{"text": f"r{i}", "label": int(i < 3)} for i in range(10)])
    write_task(tasks, {
        "name": "picky", "version": 1, "cluster": "c", "source": {"kind": "files", "splits": {"train": "rows.jsonl"}},
        "fields": {"text": "", "label": ""}, "metrics": ["exact_match"],
        "templates": [{"name": "positives", "jinja": "{% if label == 1 %}{{ text }} ||| yes{% endif %}"},
                      {"name": "all", "jinja": "{{ text }} ||| {{ label }}"}],
    })  # fmt: skip
    spec = {
        "name": "m",
        "members": {"picky": None, "sentiment": None},
        "rate": {"rule": "examples", "per_template": True},
    }
    (mixtures / "m.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(
        "--templates-dir", tasks, "--mixtures-dir", mixtures, "mixture", "show", "m", "--json"
    )
    assert code == 0, err
    rows = {r["task"]: r for r in json.loads(out)["tasks"]}
    # 7 of the 10 rows are not positive: the first template skips them, the second none
    assert rows["picky"]["skipped"] == {"positives": 7, "all": 0} and rows["picky"]["sampled_rows"] == 10
    assert "task picky: template positives skips 7 of 10 sampled rows" in " ".join(
        json.loads(out)["warnings"]
    )
    # per_template: N counts (row, template) pairs, 10 x 2 and 60 x 3
    assert rows["picky"]["rate"] == 20 and rows["sentiment"]["rate"] == rows["sentiment"]["examples"] * 3
    code, out, _ = run_cli("--templates-dir", tasks, "--mixtures-dir", mixtures, "mixture", "show", "m",
                           "--skip-sample", "0", "--json")  # fmt: skip
    assert json.loads(out)["tasks"][0]["skipped"] is None
