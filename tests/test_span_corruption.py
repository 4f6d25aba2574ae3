"""T5's span corruption: the mask and the rewrite on literal token lists, the length budget, a task of that kind
through the stream (deterministic in the position) and through `t2t train`, and its refusals."""

import json

import numpy as np
import pytest
import yaml

from t2t.compare import compare
from t2t.data import MixtureData
from t2t.encoding import Limits
from t2t.errors import T2TError
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.span_corruption import (
    apply_mask,
    corrupt,
    corrupted_lengths,
    max_text_tokens,
    noise_counts,
    noise_mask,
    sentinel_ids,
)

from .conftest import write_jsonl, write_task

X, Y, Z = (
    900,
    899,
    898,
)  # sentinels <extra_id_0>, <extra_id_1>, <extra_id_2> (T5 counts them down from the top)
EOS = 1


def test_the_t5_paper_example_on_literal_tokens():
    # "Thank you for inviting me to your party last week ." with "for inviting" and "last" hidden
    ids = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    inputs, targets = apply_mask(ids, mask, [X, Y, Z], EOS)
    assert inputs == [11, 12, X, 15, 16, 17, 18, Y, 20, 21, EOS]  # Thank you <X> me to your party <Y> week .
    assert targets == [X, 13, 14, Y, 19, Z, EOS]  # <X> for inviting <Y> last <Z>


def test_a_text_ending_in_noise_and_a_text_too_short_to_corrupt():
    inputs, targets = apply_mask([5, 6, 7], np.array([0, 1, 1], dtype=bool), [X, Y], EOS)
    assert (inputs, targets) == ([5, X, EOS], [X, 6, 7, EOS])  # no closing sentinel after a final noise span
    assert corrupt([5], [X, Y], EOS, keyed_rng("t")) == ([5, EOS], [X, EOS])


@pytest.mark.parametrize("length", [2, 3, 7, 20, 33, 100, 257])
def test_the_mask_has_t5s_counts_and_starts_with_kept_tokens(length):
    noise, spans = noise_counts(length, 0.15, 3.0)
    for seed in range(20):
        mask = noise_mask(length, 0.15, 3.0, keyed_rng("mask", seed))
        starts = np.flatnonzero(
            mask & ~np.concatenate([[False], mask[:-1]])
        )  # first token of each noise span
        assert mask.sum() == noise and len(starts) == spans and not mask[0]
        inputs, targets = corrupt(list(range(100, 100 + length)), list(range(900, 800, -1)), EOS,
                                  keyed_rng("mask", seed))  # fmt: skip
        assert (len(inputs), len(targets)) == corrupted_lengths(length, 0.15, 3.0)
        # the input's kept tokens and the target's spans, put back in sentinel order, give the text again
        spans_of = {}
        for token in targets[:-1]:
            if token >= 800:
                current = spans_of.setdefault(token, [])
            else:
                current.append(token)
        rebuilt = [t for token in inputs[:-1] for t in (spans_of[token] if token >= 800 else [token])]
        assert rebuilt == list(range(100, 100 + length))
    # by hand: 100 tokens -> 15 noise tokens in 5 spans; 7 tokens -> 1 in 1; 2 tokens -> 1 in 1
    assert noise_counts(100, 0.15, 3.0) == (15, 5) and noise_counts(7, 0.15, 3.0) == (1, 1)
    assert noise_counts(2, 0.15, 3.0) == (1, 1)


def test_span_lengths_vary_and_average_the_mean_span_length():
    lengths = []
    for seed in range(200):
        mask = noise_mask(100, 0.15, 3.0, keyed_rng("spans", seed))
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]]))))[::2]
        lengths.extend(runs.tolist())
    assert np.mean(lengths) == pytest.approx(3.0) and min(lengths) == 1 and max(lengths) >= 7


def test_the_longest_text_that_fits_the_limits():
    # by hand: 106 tokens -> 16 noise in 5 spans -> input 106 - 16 + 5 + 1 = 96, target 16 + 5 + 1 = 22;
    # 107 tokens -> 16 noise (16.05) -> input 97 > 96
    assert corrupted_lengths(106, 0.15, 3.0) == (96, 22)
    assert max_text_tokens(96, 24, 0.15, 3.0, 100) == 106
    # the target side binds: 36 tokens -> 5 noise (5.4) in 2 spans, target 5 + 2 + 1 = 8;
    # 37 tokens -> 6 noise (5.55) in 2 spans, target 9 > 8
    assert max_text_tokens(96, 8, 0.15, 3.0, 100) == 36
    # too few sentinels: 3 sentinels allow at most 2 noise spans
    assert max_text_tokens(512, 512, 0.15, 3.0, 3) == max(
        n for n in range(2, 200) if noise_counts(n, 0.15, 3.0)[1] <= 2
    )


SETTINGS = {
    "noise_density": 0.3,
    "mean_span_length": 2.0,
}  # not T5's defaults: the task file's settings apply


def span_registry(tmp_path, template_target=None):
    folder = tmp_path / "tasks"
    folder.mkdir()
    texts = [f"the {a} is {c}. {i} plus {i} is {2 * i}. the {a} is not {c}er than the sky. {i} is {i}." for i, (a, c) in
             enumerate([("cat", "red"), ("dog", "blue"), ("fox", "green"), ("owl", "pink")] * 2)]  # fmt: skip
    write_jsonl(folder / "text.jsonl", [{"text": t} for t in texts])
    template = {"name": "text", "input": "{{ text }}"}
    if template_target:
        template["target"] = template_target
    write_task(folder, {"name": "world_spans", "version": 1, "cluster": "pretraining",
                        "objective": "span_corruption", "span_corruption": SETTINGS, "source": {"kind": "files", "splits": {"train": "text.jsonl"}},
                        "fields": {"text": "a paragraph"}, "templates": [template]})  # fmt: skip
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    (mixtures / "with_spans.yaml").write_text(yaml.safe_dump({
        "name": "with_spans", "members": {"world_spans": 1.0, "add_numbers": 1.0}, "held_out": ["sum_check"]}))  # fmt: skip
    return Registry.default(templates_dirs=[folder], mixtures_dirs=[mixtures]), texts


def test_a_span_corruption_task_in_the_stream_is_deterministic_in_the_position(tmp_path, tiny_tokenizer):
    registry, texts = span_registry(tmp_path)
    sentinel0 = tiny_tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel0 == len(tiny_tokenizer) - 1

    def examples(cache):
        data = MixtureData(load_mixture(registry, "with_spans"), registry, tiny_tokenizer, Limits(48, 24),
                           cache_dir=tmp_path / cache)  # fmt: skip
        items = [data.stream.item(k) for k in range(60)]
        return {i.position: (i, data.example(i)) for i in items if i.task == "world_spans"}

    first, again = examples("cache_a"), examples("cache_b")  # a fresh run, as a resume rebuilds it
    assert len(first) > 15
    corruptions = set()
    for position, (item, example) in first.items():
        assert (example.input_ids, example.labels) == (
            again[position][1].input_ids,
            again[position][1].labels,
        )
        text_ids = tiny_tokenizer(texts[item.row], add_special_tokens=False)["input_ids"]
        assert example.labels[0] == sentinel0 and example.labels[-1] == EOS and example.input_ids[-1] == EOS
        assert len(example.input_ids) <= 48 and len(example.labels) <= 24
        # the task's settings, not T5's defaults: round(0.3 L) hidden tokens in round(noise / 2) spans
        noise, spans = noise_counts(len(text_ids), 0.3, 2.0)
        assert sum(t > sentinel0 - 100 for t in example.input_ids) == spans
        assert sum(t <= sentinel0 - 100 for t in example.labels[:-1]) == noise
        # put the hidden spans back: the text's ids
        spans, current = {}, None
        for token in example.labels[:-1]:
            if token > sentinel0 - 100:
                current = spans.setdefault(token, [])
            else:
                current.append(token)
        rebuilt = [
            t for tok in example.input_ids[:-1] for t in (spans[tok] if tok > sentinel0 - 100 else [tok])
        ]
        assert rebuilt == text_ids
        corruptions.add((item.row, tuple(example.labels)))
    rows = [item.row for item, _ in first.values()]
    assert len(corruptions) > len(set(rows))  # a row drawn twice is corrupted anew at its other position


def test_a_span_corruption_task_trains_through_t2t_train_and_is_not_scored(tmp_path, tokenizer_dir, run_cli):
    span_registry(tmp_path)
    config = {
        "run_dir": str(tmp_path / "run"), "mixture": "with_spans",
        "model": {"tiny": {"d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64}},
        "tokenizer": {"pretrained": str(tokenizer_dir)}, "max_input_tokens": 48, "max_target_tokens": 24,
        "batching": {"strategy": "packed", "max_tokens": 512, "window_examples": 64},
        "steps": 4, "log_every_steps": 2, "trackers": [], "eval_every_steps": 4, "eval_max_examples": 4,
        "eval_generate_every": 1,
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = run_cli("--templates-dir", tmp_path / "tasks", "--mixtures-dir", tmp_path / "mixtures",
                             "train", path)  # fmt: skip
    assert code == 0, err
    assert "starting at step 0 of 4; 2 tasks" in out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(
        r["task_tokens/world_spans"] > 0 and r["task_loss/world_spans"] > 0 for r in records if "loss" in r
    )
    evaluated = json.loads((tmp_path / "run" / "eval.jsonl").read_text().splitlines()[-1])
    assert evaluated["step"] == 4 and "eval_loss/add_numbers" in evaluated and "eval/add_numbers" in evaluated
    assert not any("world_spans" in key for key in evaluated)  # trained on, not scored
    code, _, err = run_cli("--templates-dir", tmp_path / "tasks", "--mixtures-dir", tmp_path / "mixtures",
                           "eval", "--model", tmp_path / "run" / "model", "--mixture", "with_spans",
                             "--max-examples", "4", "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]
    assert set(scored) == {"add_numbers", "sum_check"}


def test_a_tokenizer_without_sentinels_is_refused_in_one_line():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, "<unk>")),
                                    unk_token="<unk>")  # fmt: skip
    with pytest.raises(T2TError) as error:
        sentinel_ids(plain, "world_text")
    assert str(error.value).startswith(
        "task world_text: span corruption needs the tokenizer's sentinel tokens"
    )
    assert "\n" not in str(error.value)


def test_compare_refuses_a_mixture_of_span_corruption_alone_before_training(tmp_path):
    registry, _ = span_registry(tmp_path)
    (tmp_path / "mixtures" / "spans_only.yaml").write_text(yaml.safe_dump({"name": "spans_only",
                                                                           "members": {"world_spans": None}}))  # fmt: skip
    registry = Registry.default(templates_dirs=[tmp_path / "tasks"], mixtures_dirs=[tmp_path / "mixtures"])
    with pytest.raises(T2TError, match="every member is a span-corruption task; there is nothing to compare"):
        compare("spans_only", tmp_path / "out", steps=2, max_examples=2, margin=0.0, registry=registry)
    assert not (tmp_path / "out").exists()


def test_span_corruption_refusals(tmp_path, run_cli):
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_jsonl(folder / "text.jsonl", [{"text": "a b c"}])
    base = {"name": "bad", "version": 1, "cluster": "c", "source": {"kind": "files", "splits": {"train": "text.jsonl"}},
            "fields": {"text": "t"}, "templates": [{"name": "t", "input": "{{ text }}"}]}  # fmt: skip
    write_task(folder, base)
    code, _, err = run_cli("--templates-dir", folder, "lint", "bad")
    assert code == 2 and "template 't' needs a `target` (only a span-corruption task's templates" in err
    assert len(err.strip().splitlines()) == 1 and "bad.yaml" in err
    write_task(folder, {**base, "objective": "span_corruption", "span_corruption": {"noise_density": 1.5}})
    code, _, err = run_cli("--templates-dir", folder, "lint", "bad")
    assert (
        code == 2 and "noise_density" in err and "less than 1" in err and len(err.strip().splitlines()) == 1
    )
    write_task(folder, {**base, "span_corruption": {"noise_density": 0.2}})
    code, _, err = run_cli("--templates-dir", folder, "lint", "bad")
    assert code == 2 and "span_corruption settings need `objective: span_corruption`" in err


def test_span_corruption_tasks_are_refused_where_there_is_nothing_to_answer(
    tmp_path, run_cli, tiny_tokenizer
):
    from t2t.modeling import build_tiny_t5
    from t2t.train_config import TinyModelSpec

    model = build_tiny_t5(TinyModelSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer)
    model.save_pretrained(str(tmp_path / "m"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "m"))
    (tmp_path / "rows.jsonl").write_text('{"text": "the cat is red."}\n')
    refusal = "task world_text is a span-corruption task: it trains a model, there is nothing to answer"
    for command in (["eval", "--model", tmp_path / "m", "--tasks", "world_text", "--out", tmp_path / "e"],
                    ["predict", "--model", tmp_path / "m", "--task", "world_text", "--input", tmp_path / "rows.jsonl",
                     "--out", tmp_path / "p.jsonl"]):  # fmt: skip
        code, _, err = run_cli(*command)
        last = err.strip().splitlines()[-1]  # (saving the model above wrote progress bars before it)
        assert code == 2 and refusal in last and "world_text.yaml" in last and err.count(refusal) == 1
        assert not (tmp_path / "e").exists() and not (tmp_path / "p.jsonl").exists()
