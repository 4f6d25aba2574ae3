"""Metrics on hand-computed cases, normalisation and max over references included."""

import pytest

from t2t.config import METRIC_NAMES
from t2t.metrics import METRICS, accuracy, bleu, exact_match, f1, normalize_answer, rouge_l, token_f1


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


def test_bleu_perfect_and_multi_reference():
    text = "the quick brown fox jumps over the lazy dog"
    assert bleu([text], [[text]]) == pytest.approx(100.0)
    assert bleu(["completely different words here now"], [[text]]) < 5
    # a second reference that matches lifts the score to 100
    assert bleu([text], [["another sentence entirely", text]]) == pytest.approx(100.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        accuracy(["a", "b"], [["a"]])
