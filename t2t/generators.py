"""Built-in deterministic task generators: real multi-task data with no hub.

The tasks share a small world (animals, colours, fruits, names, small numbers) so that a tiny model can learn
skills in one task that help in another: looking a fact up in a short passage, comparing, counting, adding,
and answering yes or no. Each generator draws one row from an RNG; `generate` fills the splits. A row's split
is decided by a hash of its content, so splits never share a row, and the rows depend only on (generator,
seed, sizes).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from t2t.errors import T2TError
from t2t.rng import keyed_rng, stable_int

ANIMALS = (
    "cat",
    "dog",
    "bird",
    "fish",
    "cow",
    "pig",
    "horse",
    "sheep",
    "goat",
    "duck",
    "frog",
    "fox",
    "owl",
    "bear",
)
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
FRUITS = ("apple", "pear", "plum", "fig", "lemon", "lime", "grape", "melon", "peach", "kiwi")
NAMES = ("anna", "ben", "carl", "dora", "emma", "finn", "gina", "hugo", "ida", "jack", "kim", "leo", "mia")
POSITIVE = ("good", "great", "happy", "nice", "lovely", "fun", "fine", "sweet")
NEGATIVE = ("bad", "sad", "awful", "poor", "ugly", "dull", "boring", "sour")
NOUNS = ANIMALS + FRUITS
Row = dict[str, object]


def _pick(rng: np.random.Generator, items: tuple[str, ...], n: int, replace: bool = False) -> list[str]:
    return [items[i] for i in rng.choice(len(items), size=n, replace=replace)]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _word_list(rng: np.random.Generator, low: int = 3, high: int = 6) -> list[str]:
    return _pick(rng, NOUNS + COLORS, int(rng.integers(low, high + 1)))


# ----------------------------------------------------------------------------------- word operations


def reverse_words(rng: np.random.Generator) -> Row:
    words = _word_list(rng)
    return {"words": " ".join(words), "answer": " ".join(reversed(words))}


def sort_words(rng: np.random.Generator) -> Row:
    words = _word_list(rng)
    return {"words": " ".join(words), "answer": " ".join(sorted(words))}


def dedupe_words(rng: np.random.Generator) -> Row:
    distinct = _word_list(rng, 2, 4)
    words = distinct + _pick(rng, tuple(distinct), int(rng.integers(1, 3)), replace=True)
    words = [words[i] for i in rng.permutation(len(words))]
    return {"words": " ".join(words), "answer": " ".join(dict.fromkeys(words))}


# --------------------------------------------------------------------------------------- arithmetic


def add_numbers(rng: np.random.Generator) -> Row:
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return {"a": a, "b": b, "answer": str(a + b)}


def subtract_numbers(rng: np.random.Generator) -> Row:
    a, b = sorted(int(x) for x in rng.integers(0, 100, size=2))[::-1]
    return {"a": a, "b": b, "answer": str(a - b)}


def count_word(rng: np.random.Generator) -> Row:
    word = _pick(rng, NOUNS, 1)[0]
    others = [w for w in NOUNS if w != word]
    count = int(rng.integers(0, 5))
    words = [word] * count + _pick(rng, tuple(others), int(rng.integers(2, 6 - min(count, 3))), replace=True)
    words = [words[i] for i in rng.permutation(len(words))]
    return {"words": " ".join(words), "word": word, "answer": str(count)}


# ------------------------------------------------------------------------------------- fact lookup


def _color_passage(rng: np.random.Generator) -> tuple[list[str], list[str], str]:
    animals = _pick(rng, ANIMALS, int(rng.integers(2, 5)))
    colors = _pick(rng, COLORS, len(animals), replace=True)
    passage = " ".join(f"the {a} is {c}." for a, c in zip(animals, colors, strict=True))
    return animals, colors, passage


def color_lookup(rng: np.random.Generator) -> Row:
    animals, colors, passage = _color_passage(rng)
    i = int(rng.integers(len(animals)))
    return {"passage": passage, "animal": animals[i], "answer": colors[i]}


def owner_lookup(rng: np.random.Generator) -> Row:
    people = _pick(rng, NAMES, int(rng.integers(2, 5)))
    pets = _pick(rng, ANIMALS, len(people))
    passage = " ".join(f"{p} has {_a(a)}." for p, a in zip(people, pets, strict=True))
    i = int(rng.integers(len(people)))
    return {"passage": passage, "animal": pets[i], "answer": people[i]}


# ---------------------------------------------------------------------------------- classification


def sentiment(rng: np.random.Generator) -> Row:
    label = int(rng.integers(2))
    words = POSITIVE if label else NEGATIVE
    adjectives = _pick(rng, words, int(rng.integers(1, 3)))
    thing = _pick(rng, NOUNS, 1)[0]
    return {"text": f"the {thing} was {' and '.join(adjectives)}", "label": label}


def word_in_list(rng: np.random.Generator) -> Row:
    words = _word_list(rng)
    label = int(rng.integers(2))
    word = (
        words[int(rng.integers(len(words)))]
        if label
        else _pick(rng, tuple(w for w in NOUNS + COLORS if w not in words), 1)[0]
    )
    return {"words": " ".join(words), "word": word, "label": label}


def larger_number(rng: np.random.Generator) -> Row:
    a, b = (int(x) for x in rng.choice(100, size=2, replace=False))
    return {"a": a, "b": b, "label": int(b > a)}


# ------------------------------------------------------------------- verification (yes / no checks)


def color_check(rng: np.random.Generator) -> Row:
    animals, colors, passage = _color_passage(rng)
    i = int(rng.integers(len(animals)))
    label = int(rng.integers(2))
    color = colors[i] if label else _pick(rng, tuple(c for c in COLORS if c != colors[i]), 1)[0]
    return {"passage": passage, "statement": f"the {animals[i]} is {color}", "label": label}


def sum_check(rng: np.random.Generator) -> Row:
    a, b = (int(x) for x in rng.integers(0, 50, size=2))
    label = int(rng.integers(2))
    offset = 0 if label else int(rng.choice([-3, -2, -1, 1, 2, 3]))
    if a + b + offset < 0:
        offset = -offset  # a wrong total that is still a natural number
    return {"a": a, "b": b, "total": a + b + offset, "label": label}


# ----------------------------------------------------------------------- ordering (held out in the demo)


def alphabet_first(rng: np.random.Generator) -> Row:
    """Two to five distinct words of the world, and the one that comes first in alphabetical order."""
    words = _word_list(rng, 2, 5)
    return {"words": " ".join(words), "answer": min(words)}


# ------------------------------------------------------------------- plain text (span corruption)


def _world_sentence(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return _color_passage(rng)[2]
    if kind == 1:
        people, pets = _pick(rng, NAMES, 2), _pick(rng, ANIMALS, 2)
        return " ".join(f"{p} has {_a(a)}." for p, a in zip(people, pets, strict=True))
    if kind == 2:
        a, b = (int(x) for x in rng.integers(0, 50, size=2))
        return (
            f"{a} plus {b} is {a + b}."
            if rng.integers(2)
            else f"{max(a, b)} minus {min(a, b)} is {abs(a - b)}."
        )
    if kind == 3:
        a, b = (int(x) for x in rng.choice(100, size=2, replace=False))
        return f"{max(a, b)} is larger than {min(a, b)}."
    if kind == 4:
        words = POSITIVE if rng.integers(2) else NEGATIVE
        return f"the {_pick(rng, NOUNS, 1)[0]} was {_pick(rng, words, 1)[0]}."
    word, count = _pick(rng, NOUNS, 1)[0], int(rng.integers(0, 5))
    return f"there {'is' if count == 1 else 'are'} {count} {word}{'' if count == 1 else 's'}."


def world_text(rng: np.random.Generator) -> Row:
    """A short paragraph of facts about the demo world (colours, owners, sums, sizes, opinions, counts)."""
    return {"text": " ".join(_world_sentence(rng) for _ in range(int(rng.integers(2, 5))))}


GENERATORS: dict[str, Callable[[np.random.Generator], Row]] = {
    fn.__name__: fn
    for fn in (
        reverse_words, sort_words, dedupe_words,
        add_numbers, subtract_numbers, count_word,
        color_lookup, owner_lookup,
        sentiment, word_in_list, larger_number,
        color_check, sum_check, alphabet_first,
        world_text,
    )
}  # fmt: skip


def generate(name: str, sizes: dict[str, int], seed: int = 0) -> dict[str, list[Row]]:
    """Rows for each split: distinct within and across splits, deterministic in (name, sizes, seed)."""
    make = GENERATORS[name]
    rng = keyed_rng("generator", name, seed)
    total = sum(sizes.values())
    bounds = np.cumsum([n / total for n in sizes.values()])
    splits = {split: [] for split in sizes}
    names = list(sizes)
    seen: set[str] = set()
    filled, attempts = 0, 0
    while filled < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            got = ", ".join(f"{s} {len(r)}/{sizes[s]}" for s, r in splits.items())
            raise T2TError(f"generator {name!r} ran out of distinct rows ({got}); ask for smaller sizes")
        row = make(rng)
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        bucket = int(np.searchsorted(bounds, stable_int(name, seed, key) / 2**64, side="right"))
        split = names[min(bucket, len(names) - 1)]
        if len(splits[split]) < sizes[split]:
            splits[split].append(row)
            filled += 1
    return splits
