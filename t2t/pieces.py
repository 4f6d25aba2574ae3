"""Token ids of plain text, as the HF tokenizer gives them, at sentencepiece's speed where that is provably the same.

Every T5-family tokenizer is a SentencePiece model wrapped by HF `tokenizers`; on short texts the wrapper's
encoding costs several times what SentencePiece's own processor does (bench/pipeline.py: 20.7 against 2.3 µs per
training input of the demo), and a first run encodes every (row, template) pair it draws. `text_ids` encodes
through the processor only where the two agree, checked, never assumed:

- the tokenizer has its `.model` file (`vocab_file`), the processor loads it, and every piece has the same id on
  both sides; the HF side adds no prefix space and has no truncation or padding set;
- a probe of hard texts (whitespace runs, tabs and newlines, leading spaces, NFKC-folded characters, scripts
  outside the vocabulary, control characters) encodes identically both ways; a tokenizer whose conversion differs
  from its model (an older converter's pre-tokenizer, another normaliser) fails here;
- the first `VERIFY_TEXTS` real texts are encoded both ways too: one difference and the processor is dropped for
  good, and the HF ids are the ones returned;
- a text holding an added token (`</s>`, `<extra_id_0>`, ...), which HF splits out as one id and SentencePiece
  would spell in pieces, always goes through HF.

Anything else (no model file, a BPE or WordPiece tokenizer, an added token HF matches after normalising) takes HF
`tokenizers`' batch encoding, or the tokenizer's own call where there is no fast backend.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VERIFY_TEXTS = 2000  # real texts encoded both ways before the processor is trusted alone

PROBES = (
    "",
    " ",
    "a",
    "Hello, world!",
    "  two  spaces  between  ",
    "tab\tand\nnewline\r\nand\x0bmore",
    "a \n b",
    " leading space",
    "trailing space ",
    "no\u00a0break and ideographic\u3000space and zero\u200bwidth",
    "\ufb01 ligature, \u2126 ohm, \u212b angstrom, \uff21\uff22\uff23 fullwidth, \u2460 circled, \u00bd",
    "caf\u00e9 na\u00efve e\u0301 \u00c5ngstr\u00f6m",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u043a\u0438\u0440\u0438\u043b\u043b\u0438\u0446\u0430 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "emoji \U0001f600\U0001f44d and unknown \u2603 \u16a0\u16a2",
    "numbers 1234567890 3.14 -7 1,000,000",
    "a...b---c___d!!!??",
    "\u201cquotes\u201d \u2018and\u2019 \u2014 dashes \u2013",
    "\x00\x01\x7f control",
    "x" * 300,
    "Sort these words: pear apple fig. Answer:",
)


class _Encoder:
    """The processor for one tokenizer, with the checks above; `processor` None: HF encodes everything."""

    def __init__(self, tokenizer: Any, use_processor: bool = True) -> None:
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is not None and getattr(tokenizer, "add_prefix_space", False):
            self.backend = None  # the tokenizer's call adds the prefix space; its backend alone would not
        self.tokenizer = tokenizer
        self.size = len(tokenizer) if use_processor else -1
        self.processor = None
        self.verified = 0
        self.lock = threading.Lock()
        self.added = None  # a pattern matching any added token's text; `marks`: their first characters
        self.marks: frozenset[str] = frozenset()
        processor = self._processor() if use_processor else None
        if processor is None:
            return
        added = self.backend.get_added_tokens_decoder().values()
        if any(token.normalized for token in added):
            return  # HF would match such a token in the normalised text, which a plain search cannot see
        contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
        if contents:
            self.added = re.compile("|".join(map(re.escape, contents)))
            self.marks = frozenset(c[0] for c in contents)
        if self._hf(list(PROBES)) == self._pieces(processor, list(PROBES)):
            self.processor = processor

    def _processor(self) -> Any:
        """SentencePiece's processor for the tokenizer's model file, when the ids line up; else None."""
        if self.backend is None or self.backend.truncation is not None or self.backend.padding is not None:
            return None
        path = getattr(self.tokenizer, "vocab_file", None)
        if not isinstance(path, str | Path) or not Path(path).is_file():
            return None
        try:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (ImportError, OSError, RuntimeError):
            return None  # not a SentencePiece model
        pieces = processor.get_piece_size()
        if any(processor.id_to_piece(i) != self.backend.id_to_token(i) for i in range(pieces)):
            return None
        return processor

    @staticmethod
    def _pieces(processor: Any, texts: list[str]) -> list[list[int]]:
        """The processor's ids: a batch call starts a thread pool (about 75 µs), worth it only for many texts."""
        if len(texts) < 200:
            return [processor.encode(text) for text in texts]
        return processor.encode(texts, num_threads=1)

    def _hf(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def _has_added(self, text: str) -> bool:
        return self.added is not None and any(m in text for m in self.marks) and bool(self.added.search(text))

    def __call__(self, texts: list[str]) -> list[list[int]]:
        processor = self.processor  # once: another thread may drop it meanwhile
        if processor is None or not texts:
            return self._hf(texts)
        ids = self._pieces(processor, texts)
        special = [i for i, text in enumerate(texts) if self._has_added(text)]
        if special:
            for i, value in zip(special, self._hf([texts[i] for i in special]), strict=True):
                ids[i] = value
        if self.verified < VERIFY_TEXTS:
            with self.lock:
                hf = self._hf(texts)
                if hf != ids:
                    self.processor = None  # they disagree on real text: HF from now on
                    return hf
                self.verified += len(texts)
        return ids


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _encoder(tokenizer: Any) -> _Encoder:
    try:
        encoder, size = _ENCODERS.get(tokenizer), len(tokenizer)
    except TypeError:  # no weak reference to cache it under, or no length to see tokens added: HF alone
        return _Encoder(tokenizer, use_processor=False)
    if encoder is None or encoder.size != size:  # new, or tokens were added since
        encoder = _ENCODERS[tokenizer] = _Encoder(tokenizer)
    return encoder


def text_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids, no special tokens added, exactly as `tokenizer(texts, add_special_tokens=False)`."""
    return _encoder(tokenizer)(list(texts))


def uses_sentencepiece(tokenizer: Any) -> bool:
    """Whether `text_ids` currently encodes this tokenizer's plain text with SentencePiece's processor."""
    return _encoder(tokenizer).processor is not None
