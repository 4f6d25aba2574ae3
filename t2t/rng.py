"""Keyed randomness: every random choice in t2t is a pure function of a seed and a few keys."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_int(*keys: object) -> int:
    """A 64-bit integer that depends only on the keys (not on the process, the platform or PYTHONHASHSEED)."""
    digest = hashlib.blake2b("\x1f".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_rng(*keys: object) -> np.random.Generator:
    """A numpy Generator seeded from the keys alone."""
    return np.random.Generator(np.random.Philox(key=stable_int(*keys)))


def choose_template(seed: int, task: str, index: int, n_templates: int) -> int:
    """The template used for example `index` of `task`: seeded, outside Jinja, stable across runs."""
    return stable_int("template", seed, task, index) % n_templates
