"""Encoding: the EOS and truncation policy, truncation counts, the disk cache, other tokenizers."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from t2t.encoding import LazyPairs, Limits, encode_task, encode_texts, truncation_warnings, with_eos
from t2t.registry import Registry
from t2t.sources import load_split
from t2t.templates import Task


def test_eos_policy_golden():
    assert with_eos([5, 6, 7], eos_id=1, max_tokens=8) == ([5, 6, 7, 1], False)
    assert with_eos([5, 6, 7], eos_id=1, max_tokens=4) == ([5, 6, 7, 1], False)  # exactly fits
    assert with_eos([5, 6, 7, 8, 9], eos_id=1, max_tokens=4) == ([5, 6, 7, 1], True)
    assert with_eos([], eos_id=1, max_tokens=4) == ([1], False)


def test_encode_texts_with_the_trained_tokenizer(tiny_tokenizer):
    ids, cut = encode_texts(tiny_tokenizer, ["the cat is red.", "the cat is red. " * 20], max_tokens=12)
    assert ids[0] == tiny_tokenizer("the cat is red.").input_ids  # T5 adds one EOS too: same ids
    assert len(ids[1]) == 12 and ids[1][-1] == 1 and cut == [False, True]


def test_encode_task_counts_truncation_and_caches(tiny_tokenizer, tmp_path, monkeypatch):
    task = Registry.default().task("color_lookup")
    limits = Limits(max_input_tokens=16, max_target_tokens=8)
    encoded = encode_task(task, "validation", tiny_tokenizer, limits, cache_dir=tmp_path)
    assert encoded.n_rows == 100 and set(encoded.templates) == set(task.template_names)
    template = encoded.templates["what_color"]
    assert all(len(x) <= 16 and x[-1] == 1 for x in template.input_ids)
    assert template.inputs_truncated > 0 and template.targets_truncated == 0
    # A second run reads the cache: it neither renders nor tokenises.
    monkeypatch.setattr(Task, "render", lambda *a, **k: pytest.fail("rendered again"))
    again = encode_task(task, "validation", tiny_tokenizer, limits, cache_dir=tmp_path)
    assert again.templates["what_color"].input_ids == template.input_ids
    # Other limits are another cache entry.
    monkeypatch.undo()
    longer = encode_task(task, "validation", tiny_tokenizer, Limits(64, 8), cache_dir=tmp_path)
    assert longer.templates["what_color"].inputs_truncated == 0


def test_lazy_pairs_encode_what_is_drawn_the_same_way_and_cache_it(tiny_tokenizer, tmp_path, monkeypatch):
    task = Registry.default().task("color_lookup")
    rows = load_split(task, "validation")
    limits = Limits(max_input_tokens=16, max_target_tokens=8)
    full = encode_task(task, "validation", tiny_tokenizer, limits, cache_dir=tmp_path / "full").templates[
        "what_color"
    ]

    def lazy() -> LazyPairs:
        return LazyPairs(
            task, "what_color", "validation", rows, tiny_tokenizer, limits, tmp_path / "lazy", "tok"
        )

    pairs = lazy()
    pairs.fill([5, 2, 5, 40])  # what a window draws: only those rows are encoded
    assert sorted(pairs.pairs) == [2, 5, 40]
    assert len([line for line in pairs.path.read_text().splitlines() if line]) == 3
    assert [pairs.pairs[r][:2] for r in (2, 5, 40)] == [
        (full.input_ids[r], full.labels[r]) for r in (2, 5, 40)
    ]
    assert [pairs.get(r)[1] for r in range(100)] == full.labels  # a miss encodes the row: the same ids
    assert pairs.counts() == (100, full.inputs_truncated, full.targets_truncated, 0)
    (warning,) = truncation_warnings({"color_lookup": [pairs]}, limits)
    share = full.inputs_truncated / 100
    assert (
        warning
        == f"task color_lookup: {share:.1%} of inputs cut at 16 tokens (of the 100 examples encoded so far)"
    )
    # a later run reads the cache file and renders nothing
    with monkeypatch.context() as patched:
        patched.setattr(Task, "render", lambda *a, **k: pytest.fail("rendered again"))
        again = lazy()
        assert len(again.pairs) == 100 and again.get(7)[0] == full.input_ids[7]
    # a line torn by a killed run is skipped, and its row encoded again when drawn
    lines = [line for line in pairs.path.read_text().splitlines() if not line.startswith("[7,")]
    pairs.path.write_text("".join(line + "\n" for line in lines) + "[7,[[5,6")
    torn = lazy()
    assert len(torn.pairs) == 99 and 7 not in torn.pairs
    assert torn.get(7)[0] == full.input_ids[7] and len(lazy().pairs) == 100


def test_any_hf_tokenizer_works_and_gets_one_eos(tmp_path):
    # A word-level tokenizer that adds no EOS of its own: the policy appends it.
    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2} | {
        w: i + 3
        for i, w in enumerate(["what", "is", "plus", "?", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0"])
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )
    tokenizer.save_pretrained(str(tmp_path / "word_tok"))
    from t2t.tokenizer import load_tokenizer

    reloaded = load_tokenizer(tmp_path / "word_tok")
    encoded = encode_task(
        Registry.default().task("add_numbers"), "validation", reloaded, Limits(32, 8), tmp_path
    )
    template = encoded.templates["plus"]
    assert all(ids[-1] == 1 and ids.count(1) == 1 for ids in template.input_ids + template.labels)
