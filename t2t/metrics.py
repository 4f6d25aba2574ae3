"""Pure metric functions: (predictions, references) -> score in [0, 100]. Each prediction has one or more
references; per-example scores take the max over them, as SQuAD does.

ROUGE-L comes from `rouge-score`, BLEU and chrF from `sacrebleu`. SQuAD's answer normalisation (lowercase, no
punctuation, no articles, single spaces) is the official script's, written out here because `evaluate.load("squad")`
fetches its code from the hub at run time.

ROUGE-L's words: rouge-score's default tokenizer keeps only the characters a-z and 0-9, so any text in another script
scores 0 (a Russian prediction equal to its reference included) and an accented word loses its letters ("café" ->
"caf"). t2t's tokenizer gives rouge-score's tokens for ASCII text, to the token (stemmed with the same Porter stemmer),
keeps letters, digits and combining marks of every script, and makes each character of the scripts written without
spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar) a token of its own.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

References = Sequence[Sequence[str]]
PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _best(predictions: Sequence[str], references: References, score: Callable[[str, str], float]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        return 0.0
    return (
        100.0
        * sum(max(score(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True))
        / len(predictions)
    )


def accuracy(predictions: Sequence[str], references: References) -> float:
    """Exact string match after stripping surrounding whitespace."""
    return _best(predictions, references, lambda p, r: float(p.strip() == r.strip()))


def exact_match(predictions: Sequence[str], references: References) -> float:
    """SQuAD exact match: equal after normalize_answer."""
    return _best(predictions, references, lambda p, r: float(normalize_answer(p) == normalize_answer(r)))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(predictions: Sequence[str], references: References) -> float:
    """SQuAD token F1 over normalised answers."""
    return _best(predictions, references, token_f1)


# scripts written without spaces between words: each character is a word
UNSPACED = re.compile(
    "([\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002fa1f])"
)
ASCII_WORD_BREAKS = re.compile(r"[^a-z0-9]+")


def _word_character(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"


class RougeTokenizer:
    """rouge-score's tokenizer for ASCII text, every script's letters kept (the module's docstring)."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        text = text.lower()
        if text.isascii():
            text = ASCII_WORD_BREAKS.sub(" ", text)
        else:
            text = UNSPACED.sub(r" \1 ", "".join(ch if _word_character(ch) else " " for ch in text))
        # rouge-score stems words of more than 3 characters; Porter's rules are for English, so ASCII words only
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in text.split()]


@functools.cache
def _rouge_scorer() -> Any:
    """One scorer for the process (making one, its stemmer included, costs about ten times scoring a pair)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokenizer())


def rouge_l(predictions: Sequence[str], references: References) -> float:
    """ROUGE-L F-measure (rouge-score's LCS, with stemming; words as `RougeTokenizer` cuts them)."""
    scorer = _rouge_scorer()
    return _best(predictions, references, lambda p, r: scorer.score(r, p)["rougeL"].fmeasure)


def bleu(predictions: Sequence[str], references: References) -> float:
    """Corpus BLEU (sacrebleu); examples may have different numbers of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), _streams(references)).score)


def chrf(predictions: Sequence[str], references: References) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2): character n-grams need no word boundaries,
    so it suits every script."""
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(predictions), _streams(references)).score)


def _streams(references: References) -> list[list[str]]:
    """sacrebleu's reference streams (stream i holds every example's i-th reference). An example with fewer
    references repeats its first, which changes neither BLEU's clipped counts nor chrF's best reference."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


# Metrics that are a mean of per-example scores (corpus BLEU and chrF are not).
PER_EXAMPLE = frozenset({"accuracy", "exact_match", "f1", "rouge_l"})

METRICS: dict[str, Callable[[Sequence[str], References], float]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "f1": f1,
    "rouge_l": rouge_l,
    "bleu": bleu,
    "chrf": chrf,
}
