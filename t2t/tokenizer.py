"""Tokenizers: train a SentencePiece model on a mixture's rendered text in T5's layout, or load any HF tokenizer.

The trained directory loads with `transformers.AutoTokenizer.from_pretrained(DIR)`. Layout as T5: pad 0, eos 1,
unk 2, then the pieces, then 100 sentinels with `<extra_id_0>` as the last id. Like every T5 tokenizer, it
normalises newlines to spaces.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from t2t.errors import T2TError, Where, load_pretrained
from t2t.fileio import peft_base
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sources import load_split

N_SENTINELS = 100
SAMPLE_ROWS_PER_TASK = 2000  # rows per task whose renderings (every template) train the tokenizer
SENTENCE_SAMPLE = 2_000_000  # texts SentencePiece trains on at most (a uniform sample of those rendered)


def mixture_texts(
    registry: Registry, tasks: list[str], split: str, rows_per_task: int = SAMPLE_ROWS_PER_TASK
) -> Iterator[str]:
    """Inputs, targets and answer choices of a seeded sample of each task's rows, under every template."""
    for name in tasks:
        task = registry.task(name)
        data = load_split(task, split)
        picks = sorted(keyed_rng("tokenizer", name).permutation(len(data))[:rows_per_task].tolist())
        columns = data.rows.select(picks).select_columns(list(task.spec.fields))[
            :
        ]  # one read, not one per row
        for j, i in enumerate(picks):
            row, source_row = {f: values[j] for f, values in columns.items()}, int(data.source_rows[i])
            for template in task.template_names:
                example = task.try_render(row, template, split, source_row)
                if example is None:  # a promptsource-style template skips this row
                    continue
                yield example.inputs
                yield example.targets
                yield from example.choices or ()


def train_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: Path) -> Path:
    """Train a unigram SentencePiece model (at most `vocab_size` pieces) and save an HF T5 tokenizer dir."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    if vocab_size < 8:
        raise T2TError(f"--vocab-size must be at least 8, not {vocab_size}")
    raised: list[T2TError] = []

    def kept(texts: Iterator[str]) -> Iterator[str]:
        # a bad row's T2TError reaches SentencePiece's C++ side, which reports it as "INTERNAL: T2TError: ...":
        # kept here to be raised as it was
        try:
            yield from texts
        except T2TError as exc:
            raised.append(exc)
            raise

    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "spiece"
        # the sample of a mixture over SENTENCE_SAMPLE texts, the same in every run (SentencePiece seeds it from
        # the clock otherwise)
        spm.set_random_generator_seed(0)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=kept(texts), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
                hard_vocab_limit=False,  # a small corpus may hold fewer pieces than asked for
                # a mixture of many tasks renders millions of texts: SentencePiece keeps a uniform sample of this
                # many (all of them below it, as for the demo's 112,000) and its memory stays bounded
                input_sentence_size=SENTENCE_SAMPLE, shuffle_input_sentence=True,
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
                character_coverage=1.0, num_threads=2, minloglevel=2,
            )  # fmt: skip
        except RuntimeError as exc:
            if raised:
                raise raised[0] from None
            small = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", str(exc))
            # every character of the text is a piece (character_coverage 1.0), and so is each special one
            if small:
                raise T2TError(f"a vocabulary of {vocab_size} pieces is too small for this text: its distinct "
                               f"characters and the special pieces take {small.group(1)}; give a vocab size of at "
                               f"least {small.group(1)}") from None  # fmt: skip
            raise T2TError(f"SentencePiece training failed: {str(exc).splitlines()[0]}") from None
        staging = Path(tmp) / "tokenizer"
        staging.mkdir()
        shutil.copy(prefix.with_suffix(".model"), staging / "spiece.model")
        tokenizer = T5Tokenizer.from_pretrained(str(staging), extra_ids=N_SENTINELS)
        tokenizer.save_pretrained(str(staging))
        _replace_dir(staging, out_dir)
    return out_dir


def _replace_dir(staging: Path, out_dir: Path) -> None:
    """Move a finished directory into place, so that a failure never leaves half a tokenizer."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    final = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    shutil.copytree(staging, final, dirs_exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    final.rename(out_dir)


def load_tokenizer(name_or_dir: str | Path):
    """Any HF tokenizer: a hub name or a local directory. A local dir must hold the tokenizer's vocabulary (for
    T5's, tokenizer.json or spiece.model): without one, transformers builds a tokenizer that knows only its
    special tokens, and every text becomes unknown tokens."""
    from transformers import AutoTokenizer

    base = peft_base(name_or_dir)
    if base is not None and not (Path(name_or_dir) / "tokenizer_config.json").is_file():
        name_or_dir = base  # a PEFT adapter saved without a tokenizer: its base model's
    tokenizer = load_pretrained(AutoTokenizer, name_or_dir, "tokenizer")
    path = Path(name_or_dir)
    files = sorted(set(getattr(type(tokenizer), "vocab_files_names", {}).values()))
    if path.is_dir() and files and not any((path / name).is_file() for name in files):
        raise T2TError(f"cannot load tokenizer: the dir holds no vocabulary (none of {', '.join(files)}): "
                       "a partial copy?", Where(file=name_or_dir))  # fmt: skip
    # every sequence ends with the end-of-sequence token, and batches are padded with the pad token: without them
    # the first batch failed deep in the library
    missing = [name for name in ("eos_token", "pad_token") if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise T2TError(f"cannot load tokenizer: it names no {' and no '.join(missing)} (tokenizer_config.json): t2t "
                       "ends every sequence with the eos_token and pads batches with the pad_token; set "
                       f"{'them' if len(missing) > 1 else 'it'} to the model's (T5's: eos '</s>', pad '<pad>')",
                       Where(file=name_or_dir))  # fmt: skip
    return tokenizer
