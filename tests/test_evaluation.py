"""Rank classification, generation and reports on real tiny models; checkpoint selection."""

import json
import shutil

import pytest
import torch
import yaml

from t2t.evaluation import EvalConfig, chance_level, evaluate, score_choices, summarise, versus_chance
from t2t.modeling import build_tiny_t5
from t2t.registry import Registry
from t2t.selection import Score, Selector
from t2t.templates import Provenance, Rendered
from t2t.train import Run
from t2t.train_config import TinyModelSpec, TrainConfig
from tests.conftest import write_jsonl, write_task


def test_four_normalisations_by_hand(tiny_tokenizer):
    model = build_tiny_t5(
        TinyModelSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer, seed=1
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
    # The default (t2t) is how t2t trains: EOS on the input and on the choice.
    default = score_choices(model, tiny_tokenizer, ["what is it?"], [(choice, "tea")])[0]
    with_eos = torch.tensor([tiny_tokenizer("what is it?").input_ids])
    assert with_eos[0, -1] == tiny_tokenizer.eos_token_id
    with torch.no_grad():
        trained_way = -model(input_ids=with_eos, labels=labels).loss.item() * n_tokens
    assert default["sum"][0] == pytest.approx(trained_way, rel=1e-5)
    assert default["sum"][0] != pytest.approx(scores["sum"][0])
    # Inputs are truncated as in training: the first max - 1 tokens, then EOS.
    cut = score_choices(model, tiny_tokenizer, ["what is it?"], [(choice,)], max_input_tokens=3)[0]
    with torch.no_grad():
        short = torch.tensor([[*with_eos[0, :2].tolist(), tiny_tokenizer.eos_token_id]])
        expected_cut = -model(input_ids=short, labels=labels).loss.item() * n_tokens
    assert cut["sum"][0] == pytest.approx(expected_cut, rel=1e-5)


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


def one_step_config(folder, model, tokenizer):
    """A one-step training config over the `echo` mixture of trained_yes_no, from `model` and `tokenizer`."""
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(folder / "run"), "mixture": "echo", "tokenizer": {"pretrained": str(tokenizer)},
        "model": {"pretrained": str(model)}, "steps": 1, "trackers": [],
        "batching": {"strategy": "padded", "batch_size": 4, "max_tokens": None, "window_examples": 8},
    }))  # fmt: skip
    return config


def edited_copy(model_dir, folder, files, **changes):
    """A copy of `model_dir` in `folder` with `changes` set in each of its JSON `files` (None as null)."""
    shutil.copytree(model_dir, folder)
    for name in files:
        settings = json.loads((folder / name).read_text())
        settings.update(changes)
        (folder / name).write_text(json.dumps(settings))
    return folder


def refused_lines(run_cli, dirs, tmp_path, model, train_model, train_tokenizer) -> list[list[str]]:
    """stderr's lines of `t2t eval` and `t2t predict` on `model` and of a one-step `t2t train` from `train_model` and
    `train_tokenizer`, each asserted to exit 2 and write nothing."""
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": "yes"}])
    runs = (["eval", "--model", model, "--tasks", "say_it", "--out", tmp_path / "out"],
            ["predict", "--model", model, "--task", "say_it", "--input", rows, "--out", tmp_path / "p.jsonl"],
            ["train", one_step_config(tmp_path, train_model, train_tokenizer)])  # fmt: skip
    lines = []
    for args in runs:
        code, _, err = run_cli(*dirs, *args)
        assert code == 2, (args[0], err)
        lines.append(err.strip().splitlines())
    assert not any((tmp_path / name).exists() for name in ("out", "p.jsonl", "run"))
    return lines


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
    best = (run_dir / "checkpoints" / "best").read_text().strip()
    assert best in ("step_00000030", "step_00000060")
    # The selected checkpoint is exported as a plain HF dir beside model/, and the report says why.
    exported = load_model(run_dir / "best").state_dict()
    selected = load_model(run_dir / "checkpoints" / best / "model").state_dict()
    assert all(torch.equal(exported[k], selected[k]) for k in selected)
    report_md = (run_dir / "selection.md").read_text()
    assert f"Selected: step {int(best.removeprefix('step_'))} " in report_md
    assert "Reference: first evaluation" in report_md and report_md.count("\n| ") == 3  # header + 2 steps


def test_choice_chunks_keep_each_decoder_pass_within_its_budget(monkeypatch):
    """Consecutive (row, choice) pairs, padded to the longest choice of their pass plus the input, within the slot
    budget and the logits budget; a pair longer than the budget alone still gets a pass."""
    import t2t.evaluation as evaluation

    monkeypatch.setattr(evaluation, "CHOICE_SLOTS", 40)
    # input 10: three pairs of 3 fill 39 slots, a fourth would pad to 52; then 2 x 15 = 30, a third 45
    assert evaluation.choice_chunks([3, 3, 3, 3, 5, 1], 10, 427) == [(0, 3), (3, 5), (5, 6)]
    assert evaluation.choice_chunks([50, 3], 10, 427) == [(0, 1), (1, 2)]
    assert evaluation.choice_chunks([], 10, 427) == []
    # the logits budget: 2**26 logits of a 2**22-token vocabulary are 16 slots, two pairs of 3 after an input of 2
    assert evaluation.choice_chunks([3, 3, 3], 2, 2**22) == [(0, 3)]
    assert evaluation.choice_chunks([3, 3, 3, 3], 2, 2**22) == [(0, 3), (3, 4)]


def test_thousands_of_answer_choices_are_scored_in_bounded_passes_with_the_same_scores(
    trained_yes_no, tmp_path, run_cli, monkeypatch
):
    """A row whose field holds 1,500 answer choices: all the choices of a batch of rows went through one decoder
    pass (2 rows of 20,000 choices held 2.4 GB with the demo's model; many more, any memory). Scored in passes of at
    most 64 slots here, `t2t eval` gives every choice the score of one pass, and the same pick."""
    import t2t.evaluation as evaluation

    _, run_dir = trained_yes_no
    folder = tmp_path / "tasks"
    folder.mkdir()
    words = [f"{a}{b}" for a in ("yes", "no", "owl", "fox", "plum") for b in range(300)]
    write_jsonl(folder / "rows.jsonl", [{"word": w, "options": words} for w in ("yes", "no", "owl")])
    write_task(folder, {
        "name": "pick_one", "version": 1, "cluster": "echo", "source": {"kind": "files", "splits": {"validation": "rows.jsonl"}},
        "fields": {"word": "a word", "options": "the choices"}, "metrics": ["accuracy"],
        "templates": [{"name": "say", "input": "say {{ word }}", "target": "{{ word }}0", "answer_choices": "options"}],
    })  # fmt: skip
    from transformers.models.t5.modeling_t5 import T5Stack

    passes = []  # (rows, input slots, choice slots) of each decoder pass
    forward = T5Stack.forward

    def recorded(self, input_ids=None, encoder_hidden_states=None, **kwargs):
        if encoder_hidden_states is not None:
            passes.append((input_ids.shape[0], encoder_hidden_states.shape[1], input_ids.shape[1]))
        return forward(self, input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, **kwargs)

    monkeypatch.setattr(T5Stack, "forward", recorded)
    runs = {}
    for name, slots in (("one_pass", 10**9), ("passes", 64)):
        monkeypatch.setattr(evaluation, "CHOICE_SLOTS", slots)
        passes.clear()
        code, _, err = run_cli("--templates-dir", folder, "eval", "--model", run_dir / "model", "--tasks", "pick_one",
                               "--out", tmp_path / name, "--no-generate")  # fmt: skip
        assert code == 0, err
        runs[name] = [
            json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        ]
    # the second run: the 4,500 (row, choice) pairs in passes of at most 64 slots (the first run: one pass of 4,500)
    assert sum(rows for rows, _, _ in passes) == 4500
    assert all(rows * (inputs + choices) <= 64 for rows, inputs, choices in passes)
    assert [len(r["choice_scores"]["sum"]) for r in runs["passes"]] == [1500] * 3
    for one, chunked in zip(runs["one_pass"], runs["passes"], strict=True):
        assert chunked["ranked"] == one["ranked"]
        for name in ("sum", "mean", "char", "byte"):
            assert chunked["choice_scores"][name] == pytest.approx(one["choice_scores"][name], abs=1e-4)


def test_input_batches_hold_a_bounded_number_of_input_slots(monkeypatch):
    import t2t.evaluation as evaluation

    # 3 x 4,000 = 12,000 slots fit 16,384; a fourth row of 5,000 would pad to 20,000; a row over the budget alone
    assert evaluation.input_batches([0, 1, 2, 3, 4], [10, 10, 4000, 5000, 20000], 32) == [[0, 1, 2], [3], [4]]
    assert evaluation.input_batches([2, 0, 1], [1, 1, 1], 2) == [[2, 0], [1]]
    monkeypatch.setattr(evaluation, "INPUT_SLOTS", 12)
    assert evaluation.input_batches([3, 2, 1, 0], [5, 4, 3, 2], 32) == [[3, 2, 1], [0]]


def test_long_inputs_are_evaluated_in_batches_of_bounded_slots_with_the_same_answers(
    trained_yes_no, tmp_path, run_cli, monkeypatch
):
    """Rows of long inputs were one encoder pass however long (20 rows of 2,048 tokens: 2.2 GB with a 4-head tiny
    T5); batches now hold at most INPUT_SLOTS input tokens, and every score and answer is that of one pass."""
    from transformers.models.t5.modeling_t5 import T5Stack

    import t2t.evaluation as evaluation

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    passes = []  # (rows, input tokens) of each encoder pass
    forward = T5Stack.forward

    def recorded(self, input_ids=None, encoder_hidden_states=None, inputs_embeds=None, **kwargs):
        if encoder_hidden_states is None and input_ids is not None:
            passes.append(tuple(input_ids.shape))
        return forward(self, input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                       inputs_embeds=inputs_embeds, **kwargs)  # fmt: skip

    monkeypatch.setattr(T5Stack, "forward", recorded)
    runs = {}
    for name, slots in (("one_pass", 10**9), ("bounded", 40)):
        monkeypatch.setattr(evaluation, "INPUT_SLOTS", slots)
        passes.clear()
        code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--template",
                               "repeat", "--max-examples", "12", "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
        runs[name] = [
            json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        ]
        if name == "bounded":
            assert all(rows * length <= 40 or rows == 1 for rows, length in passes) and len(passes) > 2, (
                passes
            )
    assert [r["prediction"] for r in runs["bounded"]] == [r["prediction"] for r in runs["one_pass"]]
    for one, bounded in zip(runs["one_pass"], runs["bounded"], strict=True):
        assert bounded["ranked"] == one["ranked"]
        assert bounded["choice_scores"]["sum"] == pytest.approx(one["choice_scores"]["sum"], abs=1e-4)


def test_many_beams_generate_a_few_rows_a_call_with_the_same_answers(
    trained_yes_no, tmp_path, run_cli, monkeypatch
):
    """`--num-beams 300` on batches of 32 rows asked for 9,600 sequences in one call (`--num-beams 5000` ran the
    demo's model out of memory); a call now holds at most 1,024 beams, 3 rows here, and answers as one call does."""
    from transformers import T5ForConditionalGeneration

    import t2t.evaluation as evaluation

    _, run_dir = trained_yes_no
    calls = []
    generate = T5ForConditionalGeneration.generate

    def recorded(self, input_ids=None, **kwargs):
        calls.append((input_ids.shape[0], kwargs["num_beams"]))
        return generate(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(T5ForConditionalGeneration, "generate", recorded)
    answers = {}
    for name, sequences in (("one_call", 10**9), ("bounded", evaluation.GENERATE_SEQUENCES)):
        monkeypatch.setattr(evaluation, "GENERATE_SEQUENCES", sequences)
        calls.clear()
        code, _, err = run_cli("--templates-dir", run_dir.parent / "tasks", "eval", "--model", run_dir / "model",
                               "--tasks", "say_it", "--out", tmp_path / name, "--num-beams", "300",
                               "--max-examples", "20")  # fmt: skip
        assert code == 0, err
        answers[name] = [
            json.loads(line)["prediction"]
            for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        ]
    assert calls == [(3, 300)] * 6 + [(2, 300)] + [(3, 300)] * 6 + [
        (2, 300)
    ]  # 20 rows under each of 2 templates
    assert answers["bounded"] == answers["one_call"] and len(answers["one_call"]) == 40


def test_every_generation_metric_through_t2t_eval_is_its_function_on_the_predictions(
    trained_yes_no, tmp_path, run_cli
):
    """ROUGE-L, BLEU and chrF declared by a task and scored by `t2t eval`: each template's score is the metric
    function on that template's predictions and references (the corpus ones over the whole set)."""
    from t2t.metrics import METRICS

    _, run_dir = trained_yes_no
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", [{"word": w} for w in ["yes", "no"] * 6])
    metrics = ["exact_match", "rouge_l", "bleu", "chrf"]
    write_task(folder, {
        "name": "say_twice", "version": 1, "cluster": "echo", "source": {"kind": "files", "splits": {"validation": "rows.jsonl"}},
        "fields": {"word": "yes or no"}, "metrics": metrics,
        "templates": [{"name": "say", "input": "say {{ word }}", "target": "{{ word }}, {{ word }} and {{ word }}"}],
    })  # fmt: skip
    out = tmp_path / "eval"
    code, _, err = run_cli("--templates-dir", folder, "eval", "--model", run_dir / "model", "--tasks", "say_twice",
                           "--out", out)  # fmt: skip
    assert code == 0, err
    scores = json.loads((out / "results.json").read_text())["tasks"]["say_twice"]["templates"]["say"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    predictions, references = [r["prediction"] for r in records], [r["references"] for r in records]
    assert len(records) == 12 and set(scores) == set(metrics)
    for metric in metrics:
        assert scores[metric] == pytest.approx(METRICS[metric](predictions, references)), metric
    # the model answers "yes" / "no": a word of the three in each reference, so ROUGE-L and chrF are above 0
    assert scores["rouge_l"] > 0 and scores["chrf"] > 0


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
    assert set(add["summary"]) == {
        "median",
        "q1",
        "q3",
        "iqr",
        "mean",
        "n_templates",
        "ci_low",
        "ci_high",
        "ci_half_width",
    }
    assert add["summary"]["ci_low"] <= add["summary"]["median"] <= add["summary"]["ci_high"]
    say = report["tasks"]["say_it"]["summary"]  # yes / no: 50 by guessing, or the majority answer's share
    targets = [json.loads(line)["target"] for line in (out / "predictions.jsonl").read_text().splitlines()
               if json.loads(line)["task"] == "say_it" and json.loads(line)["template"] == "say"]  # fmt: skip
    chance = max(50.0, 100 * max(targets.count(t) for t in set(targets)) / len(targets))
    where = "above" if say["ci_low"] > chance else "below" if say["ci_high"] < chance else "at"
    assert (say["chance"], say["vs_chance"]) == (chance, where) and "chance" not in add["summary"]
    markdown = (out / "results.md").read_text()
    assert (
        "| task | cluster | metric | median | 95% CI | chance | IQR (q1-q3) | mean | per template |"
        in markdown
    )
    assert f"| {say['ci_low']:.1f}-{say['ci_high']:.1f} | {chance:.1f}, {where} |" in markdown
    assert (out / "scores.png").stat().st_size > 5000
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8 * 2 + 8 * 3


def test_chance_is_the_better_of_guessing_and_the_majority_answer():
    def rows(targets, choices):
        return [
            Rendered("x", t, c, Provenance("t", "p", "validation", i))
            for i, (t, c) in enumerate(zip(targets, choices, strict=True))
        ]

    yes_no = ("no", "yes")
    assert chance_level(rows(["yes", "no", "yes", "no"], [yes_no] * 4)) == 50.0  # balanced: guessing
    assert chance_level(rows(["no", "no", "yes", "no"], [yes_no] * 4)) == 75.0  # always "no" scores 3 of 4
    # four choices, gold spread over positions: guessing's 25 beats always-the-same-position's 2 of 8
    four = ("a", "b", "c", "d")
    assert chance_level(rows(list("aabbccdd"), [four] * 8)) == 25.0
    # per-row choices (as larger_number's numbers): the position is what a blind model can fix; gold is second 3 of 4
    pairs = [("3", "9"), ("5", "1"), ("2", "8"), ("4", "7")]
    assert chance_level(rows(["9", "5", "8", "7"], pairs)) == 75.0


def test_above_or_below_chance_only_where_the_interval_excludes_it():
    assert versus_chance({"ci_low": 50.5, "ci_high": 60.0}, 50.0) == {"chance": 50.0, "vs_chance": "above"}
    assert versus_chance({"ci_low": 50.0, "ci_high": 60.0}, 50.0)["vs_chance"] == "at"  # touches chance
    assert versus_chance({"ci_low": 41.0, "ci_high": 55.0}, 50.0)["vs_chance"] == "at"
    assert versus_chance({"ci_low": 20.0, "ci_high": 24.9}, 25.0)["vs_chance"] == "below"


def test_mixture_eval_reports_held_out_separately(tmp_path, run_cli, tiny_tokenizer):
    model = build_tiny_t5(TinyModelSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer)
    model.save_pretrained(str(tmp_path / "m"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "m"))
    code, _, _ = run_cli("eval", "--model", tmp_path / "m", "--mixture", "demo", "--held-out", "--max-examples", "4",
                         "--no-generate", "--out", tmp_path / "out")  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["tasks"]) == {"color_check", "sum_check", "alphabet_first"}
    assert all(t["held_out"] and t["metric"] == "rank_sum" for t in report["tasks"].values())
    # the 4 rows' labels: color_check yes yes yes no, sum_check no yes no no -> always the majority answer: 75;
    # alphabet_first's answers are at positions 1, 3, 3, 1 of 3, 5, 3, 3 words: guessing 30, a position 50
    assert [t["summary"]["chance"] for t in report["tasks"].values()] == [75.0, 75.0, 50.0]
    assert "## Held-out tasks (zero-shot)" in (tmp_path / "out" / "results.md").read_text()
    assert set(report["groups"]) == {"held_out"}


def test_summary_over_templates_by_hand():
    assert summarise([10.0, 20.0, 40.0, 50.0]) == {
        "median": 30.0, "q1": 17.5, "q3": 42.5, "iqr": 25.0, "mean": 30.0, "n_templates": 4,
    }  # fmt: skip


def test_selection_refuses_a_mean_gain_that_regresses_one_task():
    selector = Selector(margin=2.0)
    # the first evaluation is the fixed reference: a=50 (+-1), b=50 (+-3)
    assert selector.decide(100, {"a": Score(50.0, 1.0), "b": Score(50.0, 3.0)}).accepted
    # mean rises to 55, but b falls 10 points; tolerance = max(2, hypot(3, 4)) = 5: refused
    decision = selector.decide(200, {"a": Score(65.0, 1.0), "b": Score(40.0, 4.0)})
    assert not decision.accepted and decision.score == 52.5
    assert decision.blocked_by == ["b: 40.0 < reference 50.0 - 5.0"]
    assert decision.describe() == "step 200: not selected (score 52.50): b: 40.0 < reference 50.0 - 5.0"
    # b 4.5 points down is within its noise (tolerance 5): accepted
    assert selector.decide(300, {"a": Score(66.0, 1.0), "b": Score(45.5, 4.0)}).accepted
    # the floor does not ratchet: a lucky a=90 at step 400 does not block a=60 later
    assert selector.decide(400, {"a": Score(90.0, 0.0), "b": Score(50.0, 0.0)}).accepted
    assert selector.decide(500, {"a": Score(60.0, 0.0), "b": Score(50.0, 0.0)}).blocked_by == []
    assert selector.best_step == 400
    report = selector.report()
    assert "Selected: step 400 (weighted score 70.00)." in report
    assert "| 200 | 52.50 | regressed: b: 40.0 < reference 50.0 - 5.0 |" in report
    assert "| 500 | 55.00 | score not above step 400's |" in report
    # a given reference replaces the first evaluation; the margin is the smallest tolerance
    strict = Selector(margin=0.5, reference={"a": Score(70.0, 0.0)})
    assert strict.decide(1, {"a": Score(69.0, 0.0)}).blocked_by == ["a: 69.0 < reference 70.0 - 0.5"]
    weighted = Selector(weights={"a": 3.0})
    assert weighted.score({"a": Score(80.0), "b": Score(40.0)}) == 70.0
    restored = Selector(margin=2.0)
    restored.load_state_dict(selector.state_dict())
    assert restored.decide(600, {"a": Score(100.0), "b": Score(30.0)}).blocked_by == [
        "b: 30.0 < reference 50.0 - 3.0"
    ]


def test_eval_template_device_and_rows_match_render(trained_yes_no, tmp_path, run_cli):
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    out = tmp_path / "eval"
    # a task named twice is evaluated once, and the command says so (until 2026-12-05 without a word)
    code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "say_it", "--template",
                           "repeat", "--max-examples", "5", "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    assert "warning: --tasks names say_it more than once: each is taken once" in err
    report = json.loads((out / "results.json").read_text())
    assert set(report["tasks"]["say_it"]["templates"]) == {"repeat"}
    assert report["device"] == "cpu" and report["dtype"] == "fp32"
    assert report["max_input_tokens"] == 256  # read from the model's t2t_encoding.json (the config's default)
    code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--max-examples", "5",
                           "--scoring", "t0", "--max-input-tokens", "3", "--max-target-tokens", "2",
                           "--no-generate", "--out", tmp_path / "e_t0")  # fmt: skip
    assert code == 0, err
    cut = json.loads((tmp_path / "e_t0" / "results.json").read_text())
    assert (cut["scoring"], cut["max_input_tokens"], cut["max_target_tokens"]) == ("t0", 3, 2)
    evaluated = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # `t2t render -n 5 --json` shows exactly the rows `t2t eval --max-examples 5` took
    code, stdout, err = run_cli(*dirs, "render", "say_it", "-n", "5", "--split", "validation", "--template",
                                "repeat", "--json")  # fmt: skip
    assert code == 0, err
    rendered = [json.loads(line) for line in stdout.splitlines()]
    assert [r["row"] for r in rendered] == [r["row"] for r in evaluated] and len(rendered) == 5
    assert [r["input"] for r in rendered] == [r["input"] for r in evaluated]
    assert rendered[0]["choices"] == ["no", "yes"] and rendered[0]["template"] == "repeat"
    # a template a task lacks, and a device that is not there: one line each, exit 2, nothing written
    code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--template", "nope",
                           "--out", tmp_path / "e2")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'nope'" in err
    assert not (tmp_path / "e2").exists()
    if not torch.cuda.is_available():
        code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--device", "cuda",
                               "--out", tmp_path / "e3")  # fmt: skip
        assert code == 2 and err.strip() == (
            "t2t: error: --device cuda: no CUDA device is available here (use --device cpu or auto)"
        )
        assert not (tmp_path / "e3").exists()


def test_no_generate_reports_only_the_tasks_with_answer_choices(trained_yes_no, tmp_path, run_cli):
    registry, run_dir = trained_yes_no
    code, _, err = run_cli("--templates-dir", registry.template_dirs[-1], "eval", "--model", run_dir / "model",
                           "--tasks", "say_it", "add_numbers", "--max-examples", "4", "--no-generate",
                           "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(report["tasks"]) == {"say_it"} and report["tasks"]["say_it"]["metric"] == "rank_sum"


def test_selection_against_the_first_evaluation_is_paired_by_rows():
    """Two templates over the same 20 rows. One row lost (100 -> 95) is within the paired noise; five lost
    (-> 75) is a regression whose whole interval lies below -margin. The unpaired rule with zero half-widths
    would have blocked the first; the rows travel with the selector's state."""

    def rows(correct: int) -> dict:
        values = [100.0] * correct + [0.0] * (20 - correct)
        return {
            "n": 20,
            "templates": {t: {"metric": "rank_sum", "values": values, "kept": None} for t in ("a", "b")},
        }

    selector = Selector(margin=1.0)
    assert selector.decide(1, {"x": Score(100.0, 0.0)}, {"x": rows(20)}).accepted
    assert selector.decide(2, {"x": Score(95.0, 0.0)}, {"x": rows(19)}).blocked_by == []
    assert (
        Selector(margin=1.0, reference={"x": Score(100.0, 0.0)}).decide(2, {"x": Score(95.0, 0.0)}).blocked_by
    )
    restored = Selector(margin=1.0)
    restored.load_state_dict(json.loads(json.dumps(selector.state_dict())))
    for judge in (selector, restored):
        blocked = judge.decide(3, {"x": Score(75.0, 0.0)}, {"x": rows(15)}).blocked_by
        assert len(blocked) == 1 and blocked[0].startswith("x: 75.0 vs reference 100.0, delta -25.0 [")
        low, high = (float(v) for v in blocked[0].split("[")[1].split("]")[0].split(", "))
        assert low < -25.0 < high < -1.0
    assert "paired bootstrap interval" in selector.report()


def test_a_model_from_elsewhere_is_cut_where_its_config_or_tokenizer_says(trained_yes_no, tmp_path, run_cli):
    # lm-evaluation-harness's order: the config's n_positions (512 in the hub's T5 and flan-t5 configs), else the
    # tokenizer's model_max_length, else 2,048; until 2026-12-05 a hub T5 was not cut at all
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = tmp_path / "foreign"
    shutil.copytree(run_dir / "model", model)
    (model / "t2t_encoding.json").unlink()

    def limits(name: str) -> tuple[int, int]:
        code, _, err = run_cli(*dirs, "eval", "--model", model, "--tasks", "say_it", "--max-examples", "3",
                               "--no-generate", "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
        report = json.loads((tmp_path / name / "results.json").read_text())
        return report["max_input_tokens"], report["max_target_tokens"]

    def edit(name: str, **values) -> None:
        data = json.loads((model / name).read_text())
        data.update(values)
        data = {k: v for k, v in data.items() if v is not None}
        (model / name).write_text(json.dumps(data))

    edit("config.json", n_positions=7)
    edit("tokenizer_config.json", model_max_length=9)
    assert limits("config") == (7, 7)
    edit("config.json", n_positions=None)
    assert limits("tokenizer") == (9, 9)
    edit("tokenizer_config.json", model_max_length=None)
    assert limits("default") == (2048, None)


def test_eval_warns_of_inputs_the_tokenizer_reads_as_unknown(trained_yes_no, tmp_path, run_cli):
    # a pretrained tokenizer has no piece for characters it never saw (T5's for `{`): they all read the same, and
    # `t2t eval` scored such inputs without a word
    _, run_dir = trained_yes_no
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", [{"word": w} for w in ("yes", "жук", "no", "ёж")])
    write_task(folder, {
        "name": "echo_word", "version": 1, "cluster": "echo", "source": {"kind": "files", "splits": {"validation": "rows.jsonl"}},
        "fields": {"word": "a word"}, "metrics": ["accuracy"],
        "templates": [{"name": "say", "input": "say {{ word }}", "target": "{{ word }}"},
                      {"name": "again", "input": "again {{ word }}", "target": "{{ word }}"}],
    })  # fmt: skip
    code, _, err = run_cli("--templates-dir", folder, "eval", "--model", run_dir / "model", "--tasks", "echo_word",
                           "--out", tmp_path / "out")  # fmt: skip
    assert code == 0, err
    line = ("task echo_word: 4 inputs (over its templates) hold the tokenizer's unknown token '<unk>': characters it "
            "has no piece for, which all read the same to the model; the first: template 'say', validation row 1")  # fmt: skip
    assert f"warning: {line}" in err.splitlines(), err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["warnings"] == [line]
    assert f"## Warnings\n\n- {line}\n" in (tmp_path / "out" / "results.md").read_text()


def test_a_model_saved_in_half_precision_is_scored_and_trained_in_fp32(trained_yes_no, tmp_path, run_cli):
    # transformers 5 loads weights in the dtype they were saved in: a bf16 or fp16 checkpoint (many hub models)
    # was scored in that dtype on a CPU (the report said fp32; fp16 overflows in T5's activations) and trained with
    # half-precision weights and AdamW states. t2t now loads every model in fp32 (bf16 on a GPU is its own cast)
    from transformers import AutoModelForSeq2SeqLM

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": w} for w in ("yes", "no", "no", "yes")])

    def scores(model_dir) -> list:
        out = tmp_path / f"{model_dir.name}.jsonl"
        code, _, err = run_cli(*dirs, "predict", "--model", model_dir, "--task", "say_it", "--input", rows,
                               "--out", out, "--scores")  # fmt: skip
        assert code == 0, err
        return [json.loads(line)["scores"] for line in out.read_text().splitlines()]

    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        half, upcast = tmp_path / name, tmp_path / f"{name}_as_fp32"
        model = AutoModelForSeq2SeqLM.from_pretrained(str(run_dir / "model"), dtype=torch.float32)
        model.to(dtype).save_pretrained(str(half))
        model.to(dtype).float().save_pretrained(str(upcast))  # the same values, saved in fp32
        for folder in (half, upcast):
            for file in ("tokenizer.json", "tokenizer_config.json", "t2t_encoding.json"):
                shutil.copy(run_dir / "model" / file, folder / file)
        assert json.loads((half / "config.json").read_text())["dtype"] == name
        assert scores(half) == scores(upcast), name

        config = TrainConfig.model_validate({
            "run_dir": str(tmp_path / f"train_{name}"), "mixture": "echo", "tokenizer": {"pretrained": str(half)},
            "model": {"pretrained": str(half)}, "steps": 1, "trackers": [],
            "batching": {"strategy": "padded", "batch_size": 4, "max_tokens": None, "window_examples": 8},
        })  # fmt: skip
        run = Run(config, registry)
        weights = run.accelerator.unwrap_model(run.model).model
        assert {p.dtype for p in weights.parameters()} == {torch.float32}, name


def test_a_tokenizer_with_more_tokens_than_the_model_embeds_is_refused_naming_both(trained_yes_no, tmp_path,
                                                                                   run_cli, tiny_tokenizer, capsys):  # fmt: skip
    # another model's tokenizer: until 2026-12-05 a text holding one of the ids past the embedding (the sentinel in
    # predict's row here) failed with "unexpected IndexError: index out of range in self", training after writing
    # its run dir, and texts without one ran through the mismatched pair without a word
    from transformers import AutoModelForSeq2SeqLM

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = tmp_path / "short"
    rows = len(tiny_tokenizer) - 40
    weights = AutoModelForSeq2SeqLM.from_pretrained(str(run_dir / "model"))
    weights.resize_token_embeddings(rows)
    weights.save_pretrained(str(model))
    for file in ("tokenizer.json", "tokenizer_config.json", "t2t_encoding.json"):
        shutil.copy(run_dir / "model" / file, model / file)
    rows_file = tmp_path / "rows.jsonl"
    write_jsonl(rows_file, [{"word": "<extra_id_0>"}])
    capsys.readouterr()  # the test's own loading and saving
    what = (f"has {len(tiny_tokenizer):,} tokens but the model embeds {rows:,}: a text holding any of the 40 ids from "
            f"{rows:,} up would fail inside the model; is the tokenizer another model's?")  # fmt: skip
    for args in (["eval", "--model", model, "--tasks", "say_it", "--out", tmp_path / "out"],
                 ["predict", "--model", model, "--task", "say_it", "--input", rows_file, "--out", tmp_path / "p.jsonl"]):  # fmt: skip
        code, _, err = run_cli(*dirs, *args)
        assert code == 2
        # (transformers' bar of the weights' loading is off: the one line stands alone)
        assert err.strip().splitlines() == [f"t2t: error: {model}: its tokenizer {what}"], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.jsonl").exists()

    tokenizer = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(str(tokenizer))
    config = one_step_config(tmp_path, model, tokenizer)
    code, _, err = run_cli(*dirs, "train", config)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"t2t: error: {model}: the tokenizer {tokenizer} {what}", err
    assert not (tmp_path / "run").exists()


def test_a_model_that_is_not_encoder_decoder_is_refused_by_its_kind(
    trained_yes_no, tmp_path, run_cli, capsys
):
    # a decoder-only checkpoint (GPT-2 here): transformers said "Unrecognized configuration class <class
    # 'transformers.models.gpt2.configuration_gpt2.GPT2Config'> for this kind of AutoModel: AutoModelForSeq2SeqLM."
    from transformers import GPT2Config, GPT2LMHeadModel

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = tmp_path / "gpt"
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(model))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(run_dir / "model" / file, model / file)
    line = (f"t2t: error: {model}: cannot load model: t2t trains and scores encoder-decoder (seq2seq) models, as T5, "
            "flan-t5, mT5 or BART; this config.json is a gpt2 model's, which is not one")  # fmt: skip
    capsys.readouterr()  # the test's own save bar, read out
    code, _, err = run_cli(*dirs, "eval", "--model", model, "--tasks", "say_it", "--out", tmp_path / "out")
    assert code == 2 and err.strip().splitlines() == [line], err
    config = one_step_config(tmp_path, model, model)
    code, _, err = run_cli(*dirs, "train", config)
    assert code == 2 and err.strip().splitlines()[-1] == line, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_models_own_generation_settings_do_not_change_t2ts_greedy_answers(
    trained_yes_no, tmp_path, run_cli
):
    # hub models ship generation_config.json files with search settings (BART-large-CNN: min_length 56,
    # no_repeat_ngram_size 3, length_penalty 2, 4 beams) that transformers applies on every generate() call; until
    # 2026-12-05 they changed t2t's documented greedy decoding without a word
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = edited_copy(run_dir / "model", tmp_path / "settings", ("generation_config.json",),
                        min_new_tokens=12, no_repeat_ngram_size=1, repetition_penalty=3.0)  # fmt: skip
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"words": "owl cat bird"}, {"words": "plum fig"}])
    line = ("the model's generation config sets min_new_tokens=12, no_repeat_ngram_size=1, repetition_penalty=3.0: "
            "t2t generates greedily (or with --num-beams) without them, the same way for every model")  # fmt: skip

    answers = {}
    for name in ("model", "settings"):
        folder = run_dir / "model" if name == "model" else model
        code, _, err = run_cli(
            *dirs, "eval", "--model", folder, "--tasks", "say_it", "--out", tmp_path / name
        )
        assert code == 0, err
        warnings = json.loads((tmp_path / name / "results.json").read_text())["warnings"]
        assert warnings == ([line] if name == "settings" else []), warnings
        assert (f"warning: {line}" in err.splitlines()) == (name == "settings")
        code, _, err = run_cli("predict", "--model", folder, "--task", "sort_words", "--input", rows,
                               "--out", tmp_path / f"{name}.jsonl")  # fmt: skip
        assert code == 0, err
        assert (f"warning: {folder}: {line}" in err.splitlines()) == (name == "settings")
        predictions = [
            json.loads(x)["prediction"]
            for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        ]
        answers[name] = predictions, (tmp_path / f"{name}.jsonl").read_text()
    assert answers["settings"] == answers["model"]
    # the settings were real: transformers applies them where t2t does not step in
    from t2t.modeling import load_model
    from t2t.tokenizer import load_tokenizer

    with_settings, tokenizer = load_model(model), load_tokenizer(model)
    ids = tokenizer("say yes", return_tensors="pt").input_ids
    assert with_settings.generate(ids, max_new_tokens=16).shape[1] >= 13


def test_a_peft_adapter_dir_is_scored_as_its_base_with_the_adapter(trained_yes_no, tmp_path, run_cli):
    # a LoRA fine-tune saved by peft holds adapter_config.json and the adapter's weights, no tokenizer: transformers
    # loads its base with the adapter on it, and until 2026-12-05 t2t then failed on the tokenizer ("not a model
    # dir"); the tokenizer and the encoding limits now come from the base
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    base = AutoModelForSeq2SeqLM.from_pretrained(str(run_dir / "model"))
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]))
    torch.manual_seed(3)
    with torch.no_grad():  # a trained adapter's B is not zero: the answers must show it
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    tuned.save_pretrained(str(adapter))
    assert not (adapter / "tokenizer_config.json").exists()
    tuned.merge_and_unload().save_pretrained(str(merged))
    for file in ("tokenizer.json", "tokenizer_config.json", "t2t_encoding.json"):
        shutil.copy(run_dir / "model" / file, merged / file)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": w} for w in ("yes", "no", "no", "yes", "maybe")])

    results = {}
    for folder in (adapter, merged, run_dir / "model"):
        out = tmp_path / f"{folder.name}.jsonl"
        code, _, err = run_cli(*dirs, "predict", "--model", folder, "--task", "say_it", "--input", rows,
                               "--out", out, "--scores")  # fmt: skip
        assert code == 0, err
        results[folder.name] = [json.loads(line)["scores"] for line in out.read_text().splitlines()]
    for got, want in zip(results["adapter"], results["merged"], strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    changed = [
        abs(got["yes"] - base["yes"]) for got, base in zip(results["adapter"], results["model"], strict=True)
    ]
    assert max(changed) > 0.01  # the adapter is on
    code, _, err = run_cli(*dirs, "eval", "--model", adapter, "--tasks", "say_it", "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    trained = json.loads((run_dir / "model" / "t2t_encoding.json").read_text())
    assert (report["max_input_tokens"], report["max_target_tokens"]) == (
        trained["max_input_tokens"], trained["max_target_tokens"])  # fmt: skip

    # training starts from a whole model: an adapter is refused naming its base, before anything is written
    config = one_step_config(tmp_path, adapter, run_dir / "model")
    code, _, err = run_cli(*dirs, "train", config)
    assert code == 2 and not (tmp_path / "run").exists()
    over = f"is a PEFT adapter over {run_dir / 'model'}, not a whole model"
    assert err.strip().splitlines()[-1].startswith(f"t2t: error: {adapter}: model.pretrained {over}")
    # ... and so does `t2t mixture show --model`, which says what training it would choose
    code, _, err = run_cli(*dirs, "mixture", "show", "echo", "--model", adapter)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"t2t: error: {adapter}: --model {over}")

    # `t2t export merged` is for t2t's own adapters: a PEFT dir is told how peft merges it (it read "a plain HF dir")
    code, _, err = run_cli(
        "export", "merged", "--model", adapter, "--adapter", "say_it", "--out", tmp_path / "m"
    )
    assert code == 2 and not (tmp_path / "m").exists()
    assert err.strip().splitlines()[-1].startswith(
        f"t2t: error: {adapter}: a PEFT adapter dir (over {run_dir / 'model'}), not a t2t model with adapters: merge it "
        "with peft (PeftModel.from_pretrained(BASE, DIR).merge_and_unload().save_pretrained(OUT))")  # fmt: skip

    # an adapter saved as a pickle is refused as a model's is (torch.load can run code)
    from safetensors.torch import load_file

    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    code, _, err = run_cli(
        *dirs, "eval", "--model", adapter, "--tasks", "say_it", "--out", tmp_path / "eval2"
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"t2t: error: {adapter}: cannot load model: the dir holds adapter_model.bin (a pickle, which can run code as "
        "it loads) and no adapter_model.safetensors: t2t loads weights only from safetensors; convert it once where "
        "you trust the file (peft's PeftModel.from_pretrained(BASE_MODEL, DIR).save_pretrained(DIR) writes "
        "adapter_model.safetensors)"), err  # fmt: skip


def test_generation_cut_short_of_the_references_is_said_and_max_new_tokens_sets_the_budget(trained_yes_no, tmp_path,
                                                                                          run_cli, tiny_tokenizer):  # fmt: skip
    # generation stops at the longest reference plus 8 tokens, at most 512: until 2026-12-05 a task with longer
    # references (long-form summaries) was scored on cut answers without a word, and the budget could not be set
    _, run_dir = trained_yes_no
    folder = tmp_path / "tasks"
    folder.mkdir()
    story = " ".join(["yes no"] * 400)
    write_jsonl(folder / "rows.jsonl", [{"word": "yes", "story": story}, {"word": "no", "story": "yes"}])
    write_task(folder, {
        "name": "tell", "version": 1, "cluster": "echo", "source": {"kind": "files", "splits": {"validation": "rows.jsonl"}},
        "fields": {"word": "a word", "story": "a long text"}, "metrics": ["rouge_l"],
        "templates": [{"name": "tell", "input": "say {{ word }}", "target": "{{ story }}"}],
    })  # fmt: skip
    longest = len(tiny_tokenizer(story, add_special_tokens=False).input_ids)
    assert longest > 512
    for extra, budget, why in (([], 512, "at most 512 unless --max-new-tokens"),
                               (["--max-new-tokens", "5"], 5, "--max-new-tokens")):  # fmt: skip
        out = tmp_path / f"out{budget}"
        code, _, err = run_cli("--templates-dir", folder, "eval", "--model", run_dir / "model", "--tasks", "tell",
                               "--out", out, *extra)  # fmt: skip
        assert code == 0, err
        line = (f"task tell: references of up to {longest} tokens (template 'tell'), and generation stops at {budget} "
                f"new tokens ({why}): longer answers are cut, and scored as cut")  # fmt: skip
        assert f"warning: {line}" in err.splitlines(), err
        assert json.loads((out / "results.json").read_text())["warnings"] == [line]
        predictions = [
            json.loads(x)["prediction"] for x in (out / "predictions.jsonl").read_text().splitlines()
        ]
        assert max(len(tiny_tokenizer(p, add_special_tokens=False).input_ids) for p in predictions) <= budget
    # references within the budget: no warning
    code, _, err = run_cli("--templates-dir", folder, "eval", "--model", run_dir / "model", "--tasks", "tell",
                           "--out", tmp_path / "enough", "--max-new-tokens", str(longest))  # fmt: skip
    assert code == 0 and "warning" not in err, err


def test_a_model_that_brings_its_own_code_is_refused_without_running_or_asking(trained_yes_no, tmp_path, run_cli,
                                                                              monkeypatch):  # fmt: skip
    # a config.json with an auto_map names Python files of the model dir to run; transformers asked on the terminal
    # "Do you wish to run the custom code? [y/N]", and until 2026-12-05 a "y" there ran the dir's code
    import io

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    auto_map = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForSeq2SeqLM": "modeling_custom.CustomModel",
    }
    model = edited_copy(run_dir / "model", tmp_path / "custom", ("config.json",), model_type="custom_t5",
                        auto_map=auto_map)  # fmt: skip
    ran = tmp_path / "ran"
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (model / name).write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": "yes"}])
    train = one_step_config(tmp_path, model, run_dir / "model")
    refused = ("it comes with code of its own to run (auto_map in its config), and t2t runs no model's code: use a "
               "model transformers implements (T5, mT5, BART, ...), or load it yourself where you trust its code")  # fmt: skip
    for args, what in ((["eval", "--model", model, "--tasks", "say_it", "--out", tmp_path / "out"], "model"),
                       (["predict", "--model", model, "--task", "say_it", "--input", rows, "--out", tmp_path / "p"],
                        "model"),
                       (["train", train], "model config")):  # fmt: skip
        monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))  # someone answering yes
        code, out, err = run_cli(*dirs, *args)
        assert code == 2, (args[0], err)
        assert err.strip().splitlines()[-1] == f"t2t: error: {model}: cannot load {what}: {refused}", err
        assert "custom code" not in out + err  # no question asked
        assert not ran.exists(), args[0]


def test_a_model_config_without_a_decoder_start_is_refused_at_load(trained_yes_no, tmp_path, run_cli):
    # no decoder_start_token_id and no pad_token_id to start from: until 2026-12-05 "unexpected TypeError: int()
    # argument must be ... not 'NoneType'" at the first decoder pass
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = edited_copy(run_dir / "model", tmp_path / "no_start", ("config.json", "generation_config.json"),
                        decoder_start_token_id=None, pad_token_id=None)  # fmt: skip
    line = (f"t2t: error: {model}: cannot load model: config.json names no decoder_start_token_id and no "
            "pad_token_id, so the decoder has no first token: set decoder_start_token_id (T5's is its pad id, 0; "
            "BART's its end-of-sequence id, 2)")  # fmt: skip
    eval_lines, predict_lines, train_lines = refused_lines(
        run_cli, dirs, tmp_path, model, model, run_dir / "model"
    )
    assert eval_lines == predict_lines == [line] and train_lines[-1] == line


def test_a_tokenizer_without_a_pad_token_is_refused_at_load(trained_yes_no, tmp_path, run_cli):
    # a tokenizer config with no pad token (a generic tokenizers-backed class): until 2026-12-05 eval, predict and
    # train failed at the first batch ("Could not infer dtype of NoneType", "'bool' object has no attribute 'long'",
    # "int() argument must be ... not 'NoneType'")
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = edited_copy(run_dir / "model", tmp_path / "no_pad", ("tokenizer_config.json",),
                        tokenizer_class="PreTrainedTokenizerFast", pad_token=None, extra_special_tokens=None)  # fmt: skip
    line = (f"t2t: error: {model}: cannot load tokenizer: it names no pad_token (tokenizer_config.json): t2t ends "
            "every sequence with the eos_token and pads batches with the pad_token; set it to the model's (T5's: eos "
            "'</s>', pad '<pad>')")  # fmt: skip
    eval_lines, predict_lines, train_lines = refused_lines(
        run_cli, dirs, tmp_path, model, run_dir / "model", model
    )
    assert eval_lines == predict_lines == [line] and train_lines[-1] == line


def test_a_tokenizer_whose_end_is_not_the_models_is_refused_naming_both(trained_yes_no, tmp_path, run_cli):
    # generation stops at the model's eos_token_id; t2t ends every training and scoring sequence with the
    # tokenizer's. Until 2026-12-05 another id let answers run on to the budget ("green pig yellow yellow yellow"
    # for "green pig yellow" on the demo's model) without a word
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    model = edited_copy(run_dir / "model", tmp_path / "other_end", ("config.json", "generation_config.json"),
                        eos_token_id=5)  # fmt: skip
    what = ("ends sequences with '</s>' (id 1) and the model with id 5 (eos_token_id in its config): answers would "
            "not end where training ends them; is the tokenizer another model's?")  # fmt: skip
    eval_lines, predict_lines, train_lines = refused_lines(
        run_cli, dirs, tmp_path, model, model, run_dir / "model"
    )
    assert eval_lines == predict_lines == [f"t2t: error: {model}: its tokenizer {what}"]
    assert train_lines[-1] == f"t2t: error: {model}: the tokenizer {run_dir / 'model'} {what}"


def test_predict_reads_answers_and_writes_a_file_a_chunk_at_a_time(trained_yes_no, tmp_path, run_cli, run_bounded,
                                                                    monkeypatch):  # fmt: skip
    # `t2t predict` read the whole input, rendered, answered and held every row before writing (100k short rows
    # of the demo's sentiment task: 649 MB at peak; a file of tens of millions, the machine's memory); it now reads
    # `--chunk-rows` rows at a time, twice (the check before the model loads, then the answers)
    import io

    import t2t.serving

    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    words = ["yes", "no", "no", "yes", "yes", "no", "yes", "no", "no", "no", "yes", "no"] * 2
    rows = [{"word": w} for w in words]
    for bad in (4, 12, 21):
        rows[bad] = {"wrd": "yes"}
    text = "".join(json.dumps(row) + "\n" + ("\n" if i == 7 else "") for i, row in enumerate(rows))
    (tmp_path / "rows.jsonl").write_text(text)
    sizes: list[int] = []
    render_rows = t2t.serving.render_rows

    def counted(task, template, chunk, limits, start=0):
        sizes.append(len(chunk))
        return render_rows(task, template, chunk, limits, start)

    monkeypatch.setattr(t2t.serving, "render_rows", counted)

    def predict(*extra) -> list[dict]:
        out = tmp_path / "p.jsonl"
        out.unlink(missing_ok=True)
        code, stdout, err = run_cli(*dirs, "predict", "--model", run_dir / "model", "--task", "say_it", "--out", out,
                                    "--skip-bad-rows", "--scores", "--quiet", *extra)  # fmt: skip
        assert code == 0, err
        assert "21 rows answered with template say, 3 refused" in stdout
        return [json.loads(line) for line in out.read_text().splitlines()]

    def assert_same(lines: list[dict], expected: list[dict]) -> None:
        """The same lines, the scores within float rounding (other batches pad and sum in another order)."""
        assert [{k: v for k, v in line.items() if k != "scores"} for line in lines] == [
            {k: v for k, v in line.items() if k != "scores"} for line in expected
        ]
        for a, b in zip(lines, expected, strict=True):
            assert a.keys() == b.keys()
            assert all(abs(a["scores"][c] - b["scores"][c]) < 1e-4 for c in a.get("scores", {}))

    whole = predict("--input", tmp_path / "rows.jsonl")
    assert sizes == [24, 24]
    assert [line["row"] for line in whole] == list(range(24))
    assert [line.get("answer") for line in whole] == [
        None if i in (4, 12, 21) else w for i, w in enumerate(words)
    ]
    assert "row 12" in whole[12]["error"] and "unknown field 'wrd'" in whole[12]["error"]
    sizes.clear()
    chunked = predict("--input", tmp_path / "rows.jsonl", "--chunk-rows", "5", "--batch-size", "2")
    assert sizes == [5, 5, 5, 5, 4] * 2
    assert_same(chunked, whole)
    # jsonl on a text stream put in stdin's place is copied aside, so that it can be read twice (a process's
    # stdin, through its binary buffer: tests/test_serve.py)
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    sizes.clear()
    assert_same(predict("--input", "-", "--chunk-rows", "7"), whole)
    assert sizes == [7, 7, 7, 3] * 2
    # without --skip-bad-rows, the first bad row of any chunk refuses the file, with the count of the others
    code, _, err = run_cli(*dirs, "predict", "--model", run_dir / "model", "--task", "say_it", "--input",
                           tmp_path / "rows.jsonl", "--out", tmp_path / "none.jsonl", "--chunk-rows", "5")  # fmt: skip
    assert code == 2 and not (tmp_path / "none.jsonl").exists()
    assert (
        "row 4" in err
        and "unknown field 'wrd'" in err
        and "(2 more bad rows;" in err
        and err.count("\n") == 1
    )
    # a file of 50,000 rows whose last row is bad is refused within a bounded memory: a chunk's rows (the file was
    # held whole, 22 MB of Python objects for these rows; 5 MB now, over the imports of the runs above)
    monkeypatch.setattr(t2t.serving, "render_rows", render_rows)
    big = tmp_path / "big" / "rows.jsonl"
    big.parent.mkdir()
    with big.open("w") as f:
        f.writelines(f'{{"word": "yes {i}"}}\n' for i in range(49_999))
        f.write('{"wrd": "no"}\n')
    code, _, err = run_bounded(big.parent, *dirs, "predict", "--model", run_dir / "model", "--task", "say_it",
                               "--input", big, "--out", big.parent / "p.jsonl", seconds=60, megabytes=15)  # fmt: skip
    assert code == 2 and "row 49999" in err and "unknown field 'wrd'" in err


def test_inputs_longer_than_the_model_reads_are_said_by_eval_and_predict(trained_yes_no, tmp_path, run_cli):
    # inputs past max_input_tokens are cut before the model reads them, as in training; `t2t train` says so at its
    # start, while `t2t eval` and `t2t predict` scored and answered the cut inputs without a word
    registry, run_dir = trained_yes_no
    dirs = ["--templates-dir", registry.template_dirs[-1], "--mixtures-dir", registry.mixture_dirs[-1]]
    # with the end-of-sequence token, "say yes" is 5 tokens of this tokenizer and "repeat the word yes" 9
    code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--max-input-tokens",
                           "6", "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    warning = ("task say_it: 20 of its 40 inputs (over its templates) are longer than 6 tokens (max_input_tokens) "
               "and are cut there, as in training: the model does not read the rest; the first: template 'repeat', "
               "validation row ")  # fmt: skip
    warnings = json.loads((tmp_path / "eval" / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(warning) and warnings[0].endswith(" (9 tokens)")
    assert warning in err
    code, _, err = run_cli(*dirs, "eval", "--model", run_dir / "model", "--tasks", "say_it", "--max-input-tokens",
                           "9", "--out", tmp_path / "eval9")  # fmt: skip
    assert code == 0 and "cut there" not in err
    assert json.loads((tmp_path / "eval9" / "results.json").read_text())["warnings"] == []

    model = edited_copy(run_dir / "model", tmp_path / "model6", ["t2t_encoding.json"], max_input_tokens=6)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": "yes"}, {"word": " ".join(["yes"] * 10)}, {"word": "no"}])
    code, _, err = run_cli(*dirs, "predict", "--model", model, "--task", "say_it", "--input", rows, "--out",
                           tmp_path / "p.jsonl", "--quiet")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line.get("input_cut", False) for line in lines] == [False, True, False]
    assert err.strip() == (f"warning: {rows}: 1 of the 3 rows answered have inputs longer than 6 tokens (the "
                           "model's max_input_tokens), cut there as in training: the model read their first 6 "
                           'tokens only; the first, row 1 (14 tokens); their lines say "input_cut": true')  # fmt: skip


def test_predict_stopped_by_sigterm_leaves_nothing_behind(trained_yes_no, tmp_path):
    # `t2t predict` writes its lines as it answers, to a temporary file beside --out that appears whole at the end;
    # SIGTERM (a scheduler's time limit) ended the process at once and left that partial file behind
    import signal
    import subprocess
    import sys
    import time

    registry, run_dir = trained_yes_no
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"word": ["yes", "no"][i % 2]} for i in range(200_000)])
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "t2t", "--templates-dir", str(registry.template_dirs[-1]), "predict", "--model",
               str(run_dir / "model"), "--task", "say_it", "--input", str(rows), "--out", str(out / "p.jsonl"),
               "--quiet", "--chunk-rows", "1000"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out.iterdir()):  # answering: its lines are being written
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "t2t: terminated (SIGTERM)"
    assert list(out.iterdir()) == []
