"""`t2t export lm-eval` and parity with lm-evaluation-harness on the same checkpoint.

A tiny T5 is trained in the session on a choice task and a generation task; its tasks are exported, lm-eval's own
CLI (`lm_eval --model hf --model_args pretrained=DIR,backend=seq2seq`) runs them, and `t2t eval --scoring
harness` evaluates the same rows. Accuracy agrees exactly, every choice's log-likelihood within 1e-4, and every
generation to the letter. Needs the `lmeval` extra (`pip install -e ".[lmeval]"`; .ci/run installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip(
    "lm_eval", reason="the lmeval extra is not installed: pip install -e '.[lmeval]'"
)

from t2t.metrics import METRICS, PER_EXAMPLE  # noqa: E402
from tests.conftest import qa_task, train_checkpoint, write_jsonl, write_task  # noqa: E402

TASKS = ["word_in_list", "color_lookup"]  # answer choices (rank classification), and generation


@pytest.fixture(scope="module")
def checkpoint(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return train_checkpoint(root, tiny_tokenizer, "pair", dict.fromkeys(TASKS), 80, 64, 16)


def test_export_writes_tasks_that_lm_eval_loads_and_refuses_a_used_folder(checkpoint, tmp_path, run_cli):
    out = tmp_path / "lm"
    code, stdout, err = run_cli("export", "lm-eval", "--tasks", *TASKS, "--max-examples", "12", "--tokenizer",
                                checkpoint, "--out", out)  # fmt: skip
    assert code == 0, err
    assert "wrote 6 lm-eval tasks in 2 groups" in stdout
    mc = yaml.safe_load((out / "t2t_word_in_list__contains.yaml").read_text())
    assert (
        mc["output_type"] == "multiple_choice"
        and mc["doc_to_choice"] == "choices"
        and mc["target_delimiter"] == ""
    )
    docs = [json.loads(line) for line in (out / "t2t_word_in_list__contains.jsonl").read_text().splitlines()]
    assert len(docs) == 12 and all(d["choices"][d["label"]] == d["target"] for d in docs)
    generation = (out / "t2t_color_lookup__what_color.yaml").read_text()
    assert "output_type: generate_until" in generation and "!function utils.process_results" in generation
    code, stdout, err = run_cli("export", "lm-eval", "--mixture", "demo", "--held-out", "--max-examples", "5",
                                "--out", tmp_path / "held_out")  # fmt: skip
    assert code == 0, err
    # the demo's held-out tasks, ready to run
    assert "--tasks t2t_color_check,t2t_sum_check,t2t_alphabet_first" in stdout
    code, _, err = run_cli("export", "lm-eval", "--tasks", "word_in_list", "--out", out)
    assert code == 2 and "--out must be a new or empty folder" in err


@pytest.mark.slow
def test_lm_eval_and_t2t_eval_agree_on_the_same_checkpoint(checkpoint, tmp_path, run_cli):
    # color_lookup's rows and templates again, scored by every generation metric (corpus BLEU and chrF included)
    folder = tmp_path / "tasks"
    folder.mkdir()
    spec = yaml.safe_load(
        (Path(__file__).parents[1] / "templates" / "builtin" / "color_lookup.yaml").read_text()
    )
    write_task(
        folder, {**spec, "name": "color_words", "metrics": ["exact_match", "f1", "rouge_l", "bleu", "chrf"]}
    )
    tasks = [*TASKS, "color_words"]
    exported = tmp_path / "lm"
    assert run_cli("--templates-dir", folder, "export", "lm-eval", "--tasks", *tasks, "--max-examples", "12",
                   "--tokenizer", checkpoint, "--out", exported)[0] == 0  # fmt: skip
    groups = ",".join(f"t2t_{t}" for t in tasks)
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={checkpoint},backend=seq2seq,dtype=float32", "--include_path", str(exported), "--tasks", groups,
         "--batch_size", "1", "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / "lm_out")],
        capture_output=True, text=True, env=os.environ, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    theirs: dict[tuple[str, str, int], dict] = {}
    for path in (tmp_path / "lm_out").rglob("samples_*.jsonl"):
        template = path.name.removeprefix("samples_t2t_").split("__")[1].rsplit("_20", 1)[0]
        task = path.name.removeprefix("samples_t2t_").split("__")[0]
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            theirs[(task, template, sample["doc"]["row"])] = sample
    code, _, err = run_cli("--templates-dir", folder, "eval", "--model", checkpoint, "--tasks", *tasks,
                           "--max-examples", "12", "--scoring", "harness", "--out", tmp_path / "t2t_out")  # fmt: skip
    assert code == 0, err
    ours = [
        json.loads(line) for line in (tmp_path / "t2t_out" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(ours) == len(theirs) == 3 * 3 * 12
    generated = 0
    for record in ours:
        sample = theirs[(record["task"], record["template"], record["row"])]
        if record["choices"] is not None:
            their_ll = [float(r[0]) for r in sample["filtered_resps"]]
            assert record["choice_scores"]["sum"] == pytest.approx(their_ll, abs=1e-4)
            assert (record["ranked"] == record["target"]) == bool(sample["acc"])
        else:
            assert record["prediction"] == sample["filtered_resps"][0].strip()
            for metric in sample["doc"]["metrics"]:  # lm-eval scored it with t2t's metric, through utils.py
                if metric in PER_EXAMPLE:
                    assert sample[metric] == METRICS[metric]([record["prediction"]], [record["references"]])
                else:  # a corpus metric keeps the prediction and references for its aggregation
                    assert sample[metric] == [record["prediction"], record["references"]]
            generated += bool(record["prediction"])
    assert generated > 0  # the model does generate text, so the comparison is not of empty strings
    report = json.loads((tmp_path / "t2t_out" / "results.json").read_text())
    lm_results = json.loads(next((tmp_path / "lm_out").rglob("results_*.json")).read_text())["results"]
    for template, scores in report["tasks"]["word_in_list"]["templates"].items():
        assert scores["rank_sum"] == pytest.approx(
            100 * lm_results[f"t2t_word_in_list__{template}"]["acc,none"]
        )
    # every generation metric of every template, the corpus ones aggregated over the whole set by lm-eval
    for task in ("color_lookup", "color_words"):
        for template, scores in report["tasks"][task]["templates"].items():
            theirs = lm_results[f"t2t_{task}__{template}"]
            for metric in (
                ("exact_match", "f1") if task == "color_lookup" else ("f1", "rouge_l", "bleu", "chrf")
            ):
                assert scores[metric] == pytest.approx(theirs[f"{metric},none"]), (task, template, metric)
    assert any(s["chrf"] > 0 for s in report["tasks"]["color_words"]["templates"].values())


def test_corpus_metrics_are_aggregated_over_the_whole_set_by_lm_eval(tmp_path, run_cli):
    """BLEU and chrF are corpus metrics: lm-eval's mean of per-example scores is another number (until 2026-12-05
    the export aggregated them so). lm-eval's own task objects load the export, score hand-made predictions and
    aggregate; the task-level numbers are t2t's corpus scores."""
    from lm_eval.tasks import TaskManager

    folder = tmp_path / "tasks"
    folder.mkdir()
    answers = [
        "the cat sat on the mat today",
        "a dog ran in the park at noon",
        "two birds sang in the old tree",
    ]
    write_jsonl(folder / "data.jsonl", [{"question": str(i), "answer": a} for i, a in enumerate(answers)])
    metrics = ["exact_match", "rouge_l", "bleu", "chrf"]
    write_task(folder, qa_task("toy_summary", metrics=metrics, golden=[]))
    out = tmp_path / "lm"
    code, _, err = run_cli("--templates-dir", folder, "export", "lm-eval", "--tasks", "toy_summary", "--split",
                           "train", "--out", out)  # fmt: skip
    assert code == 0, err
    task = TaskManager(include_path=str(out), include_defaults=False).load(["t2t_toy_summary__plain"])
    task = task["tasks"]["t2t_toy_summary__plain"]
    docs = list(task.test_docs())
    predictions = ["the cat sat on the mat today", "a dog ran", "two birds sang in the old tree"]
    scored = [task.process_results(doc, [p]) for doc, p in zip(docs, predictions, strict=True)]
    references = [[a] for a in answers]
    for metric in metrics:
        theirs = task.aggregation()[metric]([s[metric] for s in scored])
        assert theirs == pytest.approx(METRICS[metric](predictions, references)), metric
    # by hand: two of three are exact; "a dog ran" has no 4-gram, so its own BLEU is 0 and the mean of per-example
    # BLEU is 200 / 3, while the corpus's n-gram counts give about 74.5
    assert task.aggregation()["exact_match"]([s["exact_match"] for s in scored]) == pytest.approx(200 / 3)
    per_example = sum(METRICS["bleu"]([p], [r]) for p, r in zip(predictions, references, strict=True)) / 3
    assert per_example == pytest.approx(200 / 3)
    assert task.aggregation()["bleu"]([s["bleu"] for s in scored]) == pytest.approx(74.52, abs=0.01)


def test_export_refuses_an_unknown_task_before_writing(tmp_path, run_cli):
    code, out, err = run_cli("export", "lm-eval", "--tasks", "word_in_lst", "--out", tmp_path / "lm")
    assert code == 2 and out == ""
    assert err.strip() == "t2t: error: unknown task 'word_in_lst' (did you mean 'word_in_list'?)"
    assert not (tmp_path / "lm").exists()
