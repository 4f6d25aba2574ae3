"""Pure metric functions: (predictions, references) -> score in [0, 100]. Each prediction has one or more
references; per-example scores take the max over them, as SQuAD does.

ROUGE-L comes from `rouge-score`, BLEU from `sacrebleu`. SQuAD's answer normalisation (lowercase, no punctuation,
no articles, single spaces) is the official script's, written out here because `evaluate.load("squad")` fetches
its code from the hub at run time.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

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


def rouge_l(predictions: Sequence[str], references: References) -> float:
    """ROUGE-L F-measure (rouge-score, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _best(predictions, references, lambda p, r: scorer.score(r, p)["rougeL"].fmeasure)


def bleu(predictions: Sequence[str], references: References) -> float:
    """Corpus BLEU (sacrebleu); examples may have different numbers of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


# Metrics that are a mean of per-example scores (corpus BLEU is not).
PER_EXAMPLE = frozenset({"accuracy", "exact_match", "f1", "rouge_l"})

METRICS: dict[str, Callable[[Sequence[str], References], float]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "f1": f1,
    "rouge_l": rouge_l,
    "bleu": bleu,
}
