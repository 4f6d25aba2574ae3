"""t2t.pieces: plain text through SentencePiece's own processor gives exactly the HF tokenizer's ids, and a
tokenizer whose HF conversion differs from its model is caught (by the probe, or on real text) and served by HF."""

import random
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers

from t2t import pieces
from t2t.registry import Registry
from t2t.sources import load_split
from t2t.tokenizer import load_tokenizer


def hf_ids(tokenizer, texts):
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def shipped_texts(rows: int = 30) -> list[str]:
    """Inputs, targets and choices of every shipped generator task (the hub ones need the hub) under each of its
    templates."""
    registry, texts = Registry.default(), []
    for name in registry.task_names:
        task = registry.task(name)
        if task.spec.source.kind != "generator":
            continue
        split = load_split(task, "validation")
        columns = split.rows.select(range(rows)).select_columns(list(task.spec.fields))[:]
        for i in range(rows):
            row = {f: values[i] for f, values in columns.items()}
            for template in task.template_names:
                rendered = task.try_render(row, template, "validation", i)
                if rendered is not None:
                    texts += [rendered.inputs, rendered.targets, *(rendered.choices or ())]
    return texts


def test_sentencepiece_ids_equal_the_tokenizers_on_every_shipped_template(tiny_tokenizer):
    texts = shipped_texts()
    assert len(texts) > 1000
    assert pieces.uses_sentencepiece(tiny_tokenizer)
    assert pieces.text_ids(tiny_tokenizer, texts) == hf_ids(tiny_tokenizer, texts)
    assert pieces.uses_sentencepiece(tiny_tokenizer)  # still trusted after checking real text


def test_sentencepiece_ids_equal_the_tokenizers_on_random_text(tiny_tokenizer):
    rng = random.Random(0)
    pools = [
        [chr(c) for c in range(32, 127)] + [" "] * 10,  # ASCII, many spaces
        list(" \t\n\r\x0b\x0c\u00a0\u2003\u3000\u200b\u2028ab"),  # whitespace of every kind
        [chr(c) for c in range(0, 32)] + list("abc "),  # control characters
        [chr(c) for c in range(0xA0, 0x250)] + list("ab  "),  # Latin-1 and extensions (NFKC folds some)
        [chr(c) for c in [*range(0x370, 0x400), *range(0x4E00, 0x4E40), *range(0x1F600, 0x1F610)]]
        + [" "] * 5,
    ]
    texts = [
        "".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for pool in pools for _ in range(600)
    ]
    # fresh checks for every batch: the first real texts are compared inside text_ids too, so ask in pieces
    for start in range(0, len(texts), 500):
        chunk = texts[start : start + 500]
        assert pieces.text_ids(tiny_tokenizer, chunk) == hf_ids(tiny_tokenizer, chunk)
    assert pieces.uses_sentencepiece(tiny_tokenizer)


def test_added_tokens_in_text_are_the_tokenizers_single_ids(tiny_tokenizer):
    texts = ["a </s> b", "fill <extra_id_0> here", "<pad>", "plain text", "x<extra_id_99>y"]
    ids = pieces.text_ids(tiny_tokenizer, texts)
    assert ids == hf_ids(tiny_tokenizer, texts)
    eos, sentinel = tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert eos in ids[0] and sentinel in ids[1] and ids[2] == [tiny_tokenizer.pad_token_id]


def fresh_copy(tokenizer):
    """Another tokenizer object from the same folder (its backend can be changed without touching the fixture)."""
    return load_tokenizer(Path(tokenizer.vocab_file).parent)


def test_a_conversion_that_differs_from_the_model_fails_the_probe(tiny_tokenizer):
    # An older converter's pre-tokenizer: Metaspace alone, so runs of spaces become pieces of their own where
    # SentencePiece folds them. (transformers 5 rebuilds a T5 tokenizer's pipeline from its class, whatever its
    # tokenizer.json says, so the backend is changed in place, as another tokenizer class would have it.)
    tokenizer = fresh_copy(tiny_tokenizer)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always"
    )
    assert not pieces.uses_sentencepiece(tokenizer)
    texts = ["  two  spaces", "a \n b", "plain"]
    ids = pieces.text_ids(tokenizer, texts)
    assert ids == hf_ids(tokenizer, texts) and ids[0] != pieces.text_ids(tiny_tokenizer, texts[:1])[0]


def test_a_difference_only_real_text_shows_drops_sentencepiece_and_returns_the_tokenizers_ids(tiny_tokenizer):
    # A normaliser that rewrites one word: no probe holds it, the first real texts do.
    tokenizer = fresh_copy(tiny_tokenizer)
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Replace("zebra", "horse"), backend.normalizer])
    assert pieces.uses_sentencepiece(tokenizer)  # the probe passes
    texts = ["the red house", "a zebra is here"]
    ids = pieces.text_ids(tokenizer, texts)
    assert ids == hf_ids(tokenizer, texts) and ids[1] == hf_ids(tokenizer, ["a horse is here"])[0]
    assert not pieces.uses_sentencepiece(tokenizer)  # dropped for good


def test_a_tokenizer_without_a_sentencepiece_model_is_served_by_hf(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, "what": 3, "is": 4, "?": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]")
    assert not pieces.uses_sentencepiece(tokenizer)
    assert pieces.text_ids(tokenizer, ["what is ?", "what now"]) == [[3, 4, 5], [3, 2]]


def test_a_tokenizer_like_callable_without_weak_references_is_called_as_it_is():
    class Words:  # no __weakref__, no length: t2t cannot cache a checked processor for it
        __slots__ = ()
        eos_token_id = 1

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[len(w) for w in text.split()] for text in texts]}

    assert not pieces.uses_sentencepiece(Words())
    assert pieces.text_ids(Words(), ["a bb ccc", ""]) == [[1, 2, 3], []]
