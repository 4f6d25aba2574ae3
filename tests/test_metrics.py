"""Metrics on hand-computed cases, normalisation and max over references included."""

import pytest

from t2t.config import METRIC_NAMES
from t2t.metrics import (
    METRICS,
    RougeTokenizer,
    accuracy,
    bleu,
    chrf,
    exact_match,
    f1,
    normalize_answer,
    rouge_l,
    token_f1,
)


def test_every_declarable_metric_is_implemented():
    assert set(METRICS) == set(METRIC_NAMES)


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # only whole-word articles go


def test_exact_match_and_accuracy():
    predictions = ["The Nile", "paris", "42 "]
    references = [["nile"], ["Paris", "City of Light"], ["41"]]
    assert exact_match(predictions, references) == pytest.approx(200 / 3)  # normalised: 2 of 3
    assert accuracy(predictions, references) == pytest.approx(
        0.0
    )  # strict: "The Nile" != "nile", "paris" != "Paris"
    assert accuracy(["yes", " no "], [["yes"], ["no"]]) == 100.0


def test_token_f1_by_hand():
    # prediction "the big red dog" -> [big, red, dog]; reference "a red dog barked" -> [red, dog, barked]
    # common 2: precision 2/3, recall 2/3, F1 2/3
    assert token_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # max over references: the second reference matches exactly
    assert f1(["red dog"], [["a blue cat", "the red dog"]]) == pytest.approx(100.0)


def test_rouge_l_by_hand():
    # LCS of "the cat sat" and "the cat sat down" is 3 tokens: P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7
    assert rouge_l(["the cat sat"], [["the cat sat down"]]) == pytest.approx(600 / 7)
    assert rouge_l(["the cat sat"], [["dogs run", "the cat sat down"]]) == pytest.approx(
        600 / 7
    )  # max over refs


def test_rouge_l_tokens_are_rouge_scores_own_for_ascii_text():
    from rouge_score import tokenizers

    theirs = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = RougeTokenizer()
    for text in [
        "The cats were running!! quickly_now, 42nd-street",
        "  Hello\tWORLD  foo_bar -- baz's  ",
        "it's 3.14 (approx.) & more; e-mail: a@b.com",
        "",
        "!!!",
    ]:
        assert ours.tokenize(text) == theirs.tokenize(text)
    assert ours.tokenize("The cats were running") == ["the", "cat", "were", "run"]


def test_rouge_l_scores_text_in_any_script():
    # rouge-score's own tokenizer keeps a-z and 0-9 only: each of these scored 0, a perfect prediction included
    assert rouge_l(["Привет, мир"], [["привет мир"]]) == pytest.approx(100.0)
    # Cyrillic: LCS 2 of prediction 3 / reference 2 words: P 2/3, R 1, F = 0.8
    assert rouge_l(["кошка сидит дома"], [["кошка сидит"]]) == pytest.approx(80.0)
    # Japanese has no spaces: each character is a word. LCS of 猫が好き (4) and 猫が大好きです (7) is 猫,が,好,き:
    # P 4/4, R 4/7, F = 2 * 4/7 / (1 + 4/7) = 8/11
    assert rouge_l(["猫が好き"], [["猫が大好きです"]]) == pytest.approx(800 / 11)
    # combining marks stay inside their word (Devanagari's vowel signs and virama)
    assert RougeTokenizer().tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    # accented letters stay (rouge-score's tokenizer made "café" "caf"); only ASCII words are stemmed
    assert RougeTokenizer().tokenize("Café crème, running") == ["café", "crème", "run"]


def test_chrf_by_sacrebleu_and_in_any_script():
    import sacrebleu

    assert chrf(["the cat sat"], [["the cat sat"]]) == pytest.approx(100.0)
    assert chrf(["猫が好きです"], [["猫が好きです"]]) == pytest.approx(100.0)
    predictions, references = ["the cat sat", "a dog"], [["the cat sat down"], ["a dog ran", "the dog"]]
    expected = sacrebleu.corpus_chrf(
        predictions, [["the cat sat down", "a dog ran"], ["the cat sat down", "the dog"]]
    )
    assert chrf(predictions, references) == pytest.approx(expected.score)
    assert chrf(["completely unrelated"], [["zzz"]]) < 5


def test_bleu_perfect_and_multi_reference():
    text = "the quick brown fox jumps over the lazy dog"
    assert bleu([text], [[text]]) == pytest.approx(100.0)
    assert bleu(["completely different words here now"], [[text]]) < 5
    # a second reference that matches lifts the score to 100
    assert bleu([text], [["another sentence entirely", text]]) == pytest.approx(100.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        accuracy(["a", "b"], [["a"]])
