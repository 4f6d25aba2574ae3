"""Rank classification, generation and reports on real tiny models; checkpoint selection."""

import json

import pytest
import torch
import yaml

from t2t.evaluation import EvalConfig, evaluate, score_choices, summarise
from t2t.modeling import TinyT5, build_tiny_t5
from t2t.registry import Registry
from t2t.selection import Selector
from t2t.train import Run
from t2t.train_config import TrainConfig
from tests.conftest import write_jsonl, write_task


def test_four_normalisations_by_hand(tiny_tokenizer):
    model = build_tiny_t5(
        TinyT5(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer, seed=1
    ).eval()
    choice = "café au lait"  # 12 characters, 13 bytes
    scores = score_choices(model, tiny_tokenizer, ["what is it?"], [(choice, "tea")], scoring="t0")[0]
    # Independent check through the model's own loss: T0 scoring puts no EOS on the input, one on the choice.
    inputs = torch.tensor([tiny_tokenizer("what is it?", add_special_tokens=False).input_ids])
    labels = torch.tensor([tiny_tokenizer(choice).input_ids])  # T5's tokenizer appends EOS
    with torch.no_grad():
        mean_loss = model(input_ids=inputs, labels=labels).loss.item()
    n_tokens = labels.shape[1]
    expected_sum = -mean_loss * n_tokens
    assert scores["sum"][0] == pytest.approx(expected_sum, rel=1e-5)
    assert scores["mean"][0] == pytest.approx(expected_sum / n_tokens, rel=1e-5)
    assert scores["char"][0] == pytest.approx(expected_sum / 12, rel=1e-5)
    assert scores["byte"][0] == pytest.approx(expected_sum / 13, rel=1e-5)
    assert len(scores["sum"]) == 2
    # The harness convention scores the same choice without its EOS: a different (larger) log-likelihood.
    harness = score_choices(model, tiny_tokenizer, ["what is it?"], [(choice, "tea")], scoring="harness")[0]
    assert harness["sum"][0] != pytest.approx(scores["sum"][0])


@pytest.fixture(scope="module")
def trained_yes_no(tmp_path_factory, tiny_tokenizer):
    """A tiny model trained until it solves a trivial choice task: 'say yes' -> yes, 'say no' -> no."""
    root = tmp_path_factory.mktemp("yes_no")
    tasks, mixtures = root / "tasks", root / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    rows = [{"word": w, "label": int(w == "yes")} for w in ["yes", "no"] * 40]
    write_jsonl(tasks / "train.jsonl", rows)
    write_jsonl(tasks / "validation.jsonl", rows[:20])
    write_task(tasks, {
        "name": "say_it", "version": 1, "cluster": "echo",
        "source": {"kind": "files", "splits": {"train": "train.jsonl", "validation": "validation.jsonl"}},
        "fields": {"word": "yes or no", "label": "1 yes"}, "answer_choices": ["no", "yes"], "metrics": ["accuracy"],
        "templates": [{"name": "say", "input": "say {{ word }}", "target": "{{ answer_choices[label] }}"},
                      {"name": "repeat", "input": "repeat the word {{ word }}", "target": "{{ answer_choices[label] }}"}],
    })  # fmt: skip
    (mixtures / "echo.yaml").write_text(yaml.safe_dump({"name": "echo", "members": {"say_it": None}}))
    tokenizer_dir = root / "tok"
    tiny_tokenizer.save_pretrained(str(tokenizer_dir))
    config = TrainConfig.model_validate({
        "run_dir": str(root / "run"), "mixture": "echo", "tokenizer": {"pretrained": str(tokenizer_dir)},
        "model": {"tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64}},
        "batching": {"strategy": "padded", "batch_size": 16, "max_tokens": None, "window_examples": 64},
        "steps": 60, "optimizer": {"lr": 1e-2}, "trackers": [], "log_every_steps": 60,
        "eval_every_steps": 30, "eval_generate_every": 1, "eval_max_examples": 10,
    })  # fmt: skip
    registry = Registry([tasks], [mixtures])
    Run(config, registry).fit()
    return registry, root / "run"


def test_rank_classification_picks_the_gold_label_after_training(trained_yes_no, tmp_path, run_cli):
    registry, run_dir = trained_yes_no
    from t2t.modeling import load_model
    from t2t.tokenizer import load_tokenizer

    model, tokenizer = load_model(run_dir / "model"), load_tokenizer(run_dir / "model")
    report, records = evaluate(model, tokenizer, registry, ["say_it"], set(), EvalConfig(max_examples=20))
    info = report["tasks"]["say_it"]
    assert info["metric"] == "rank_sum"
    for template in ("say", "repeat"):
        assert info["templates"][template]["rank_sum"] == 100.0
        assert info["templates"][template]["accuracy"] == 100.0  # generation too
    assert all(r["ranked"] == r["target"] for r in records)
    # In-training evaluation wrote its decisions; the first became best.
    decisions = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [d["step"] for d in decisions] == [30, 60] and decisions[0]["best"] is True
    assert (run_dir / "checkpoints" / "best").read_text().strip() in ("step_00000030", "step_00000060")


def test_t2t_eval_writes_reports_with_median_and_iqr(trained_yes_no, tmp_path, run_cli):
    registry, run_dir = trained_yes_no
    out = tmp_path / "eval"
    code, stdout, _ = run_cli("--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1],
                              "eval", "--model", run_dir / "model", "--tasks", "say_it", "add_numbers", "--max-examples",
                              "8", "--out", out)  # fmt: skip
    assert code == 0, stdout
    report = json.loads((out / "results.json").read_text())
    add = report["tasks"]["add_numbers"]
    assert add["metric"] == "exact_match" and set(add["templates"]) == {"plus", "sum", "equation"}
    assert set(add["summary"]) == {"median", "q1", "q3", "iqr", "mean", "n_templates"}
    markdown = (out / "results.md").read_text()
    assert "| task | cluster | metric | median | IQR (q1-q3) | mean | per template |" in markdown
    assert (out / "scores.png").stat().st_size > 5000
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8 * 2 + 8 * 3


def test_mixture_eval_reports_held_out_separately(tmp_path, run_cli, tiny_tokenizer):
    model = build_tiny_t5(TinyT5(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer)
    model.save_pretrained(str(tmp_path / "m"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "m"))
    code, _, _ = run_cli("eval", "--model", tmp_path / "m", "--mixture", "demo", "--held-out", "--max-examples", "4",
                         "--no-generate", "--out", tmp_path / "out")  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["tasks"]) == {"color_check", "sum_check"}
    assert all(t["held_out"] and t["metric"] == "rank_sum" for t in report["tasks"].values())
    assert "## Held-out tasks (zero-shot)" in (tmp_path / "out" / "results.md").read_text()
    assert set(report["groups"]) == {"held_out"}


def test_summary_over_templates_by_hand():
    assert summarise([10.0, 20.0, 40.0, 50.0]) == {
        "median": 30.0, "q1": 17.5, "q3": 42.5, "iqr": 25.0, "mean": 30.0, "n_templates": 4,
    }  # fmt: skip


def test_selection_refuses_a_mean_gain_that_regresses_one_task():
    selector = Selector(margin=2.0)
    assert selector.decide({"a": 50.0, "b": 50.0}).accepted
    # mean rises from 50 to 55, but task b falls 5 points below its best (50) with a margin of 2: refused
    decision = selector.decide({"a": 65.0, "b": 45.0})
    assert not decision.accepted and decision.score == 55.0
    assert decision.blocked_by == ["b: 45.0 < floor 50.0 - margin 2"]
    assert "not best (score 55.00): b: 45.0 < floor 50.0" in decision.describe()
    # within the margin: accepted
    assert selector.decide({"a": 66.0, "b": 48.5}).accepted
    # a baseline sets the floor instead of the best so far
    strict = Selector(margin=0.0, baseline={"a": 70.0})
    assert strict.decide({"a": 69.0}).blocked_by == ["a: 69.0 < floor 70.0 - margin 0"]
    weighted = Selector(weights={"a": 3.0})
    assert weighted.score({"a": 80.0, "b": 40.0}) == 70.0
