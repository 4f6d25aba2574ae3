"""T5's span-corruption objective on token ids: random spans of a text are dropped from the input, each replaced
by one sentinel, and the target lists the dropped spans, each after its sentinel.

The noise mask follows the T5 paper (section 3.1.4) and seqio's `random_spans_noise_mask`: of a text of L tokens,
round(L * noise_density) tokens are noise (at least 1, at most L - 1), in round(noise / mean_span_length) spans
(at least 1); the noise and non-noise token counts are each split into that many non-empty spans uniformly at
random, and the text alternates non-noise, noise, non-noise, ... so it always starts with kept tokens. Example
(T5 paper): "Thank you for inviting me to your party last week." -> input "Thank you <X> me to your party <Y>
week." and target "<X> for inviting <Y> last <Z>". The sentinels are the tokenizer's `<extra_id_0>`, `<extra_id_1>`,
... in order of the spans. Randomness comes from a caller's generator (t2t keys it by the stream position, so a
resumed run corrupts every example exactly as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from t2t.errors import T2TError


def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a text of `length` tokens (length >= 2)."""
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span_length), 1)
    return noise, min(spans, noise, length - noise)  # each span and each gap holds at least one token


def corrupted_lengths(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Token counts of the corrupted (input, target) of a text of `length` tokens, each with its EOS."""
    if length < 2:
        return length + 1, 2  # nothing to hide: the text, and the target "<extra_id_0> EOS"
    noise, spans = noise_counts(length, noise_density, mean_span_length)
    return (
        length - noise + spans + 1,
        noise + spans + 1,
    )  # one sentinel per noise span (input) and per kept span


def max_text_tokens(max_input_tokens: int, max_target_tokens: int, noise_density: float,
                    mean_span_length: float, n_sentinels: int) -> int:  # fmt: skip
    """The longest text whose corruption fits both limits and needs at most `n_sentinels` sentinels (a longer
    text is cut to it before corruption, as T5 sizes its inputs). Both lengths grow with the text's."""
    best = 0
    for length in range(1, max_input_tokens + max_target_tokens + 1):
        inputs, targets = corrupted_lengths(length, noise_density, mean_span_length)
        spans = noise_counts(length, noise_density, mean_span_length)[1] if length >= 2 else 0
        if inputs > max_input_tokens or targets > max_target_tokens or spans + 1 > n_sentinels:
            break
        best = length
    return best


def _segment(rng: np.random.Generator, n_items: int, n_segments: int) -> np.ndarray:
    """Lengths of `n_segments` non-empty segments that together hold `n_items` items, uniformly at random."""
    starts = np.zeros(n_items, dtype=bool)  # starts[i]: a new segment begins at item i
    cuts = rng.choice(np.arange(1, n_items), size=n_segments - 1, replace=False) if n_segments > 1 else []
    starts[0] = True
    starts[np.asarray(cuts, dtype=np.int64)] = True
    return np.diff(np.flatnonzero(np.append(starts, True)))


def noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """A boolean mask over `length` tokens: True where a token is noise (hidden from the input)."""
    if length < 2:
        return np.zeros(length, dtype=bool)
    noise, spans = noise_counts(length, noise_density, mean_span_length)
    noise_lengths = _segment(rng, noise, spans)
    kept_lengths = _segment(rng, length - noise, spans)
    mask = np.zeros(length, dtype=bool)
    position = 0
    for kept, hidden in zip(kept_lengths, noise_lengths, strict=True):
        position += int(kept)
        mask[position : position + int(hidden)] = True
        position += int(hidden)
    return mask


def apply_mask(
    ids: Sequence[int], mask: np.ndarray, sentinels: Sequence[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of a text under a noise mask: each noise span becomes the next sentinel in the
    input; the target holds each noise span after its sentinel, and one more sentinel for the kept span after the
    last noise span (as T5's targets end "<Z>"). Both end with EOS."""
    inputs: list[int] = []
    targets: list[int] = []
    sentinel = 0
    previous = False
    for token, hidden in zip(ids, mask, strict=True):
        if hidden:
            if not previous:
                inputs.append(sentinels[sentinel])
                targets.append(sentinels[sentinel])
                sentinel += 1
            targets.append(int(token))
        else:
            inputs.append(int(token))
        previous = bool(hidden)
    if not previous:  # the text ends with kept tokens: the target closes with the next sentinel
        targets.append(sentinels[sentinel])
    return [*inputs, eos_id], [*targets, eos_id]


def corrupt(ids: Sequence[int], sentinels: Sequence[int], eos_id: int, rng: np.random.Generator,
            noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[list[int], list[int]]:  # fmt: skip
    """Span corruption of one text's token ids (no EOS): (input ids, target ids), each ending with EOS."""
    mask = noise_mask(len(ids), noise_density, mean_span_length, rng)
    return apply_mask(ids, mask, sentinels, eos_id)


def sentinel_ids(tokenizer: Any, task: str) -> list[int]:
    """The tokenizer's sentinel ids `<extra_id_0>`, `<extra_id_1>`, ... in order (T5 tokenizers have 100)."""
    ids: list[int] = []
    while True:  # one lookup per sentinel (not the whole vocabulary); an unknown token maps to unk or None
        token_id = tokenizer.convert_tokens_to_ids(f"<extra_id_{len(ids)}>")
        if token_id is None or token_id == tokenizer.unk_token_id:
            break
        ids.append(int(token_id))
    if not ids:
        raise T2TError(f"task {task}: span corruption needs the tokenizer's sentinel tokens <extra_id_0>, "
                       f"<extra_id_1>, ... and {type(tokenizer).__name__} has none (T5 tokenizers and t2t's "
                       "trained ones do)")  # fmt: skip
    return ids
