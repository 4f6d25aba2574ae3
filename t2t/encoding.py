"""From rendered text to token ids: one EOS and truncation policy, per-task truncation counts, a disk cache.

Policy (the one place it lives, used by training, the validation loss, generation and rank scoring): text is
tokenised without special tokens; a sequence longer than its limit keeps its first `limit - 1` tokens; then
exactly one EOS is appended. The same holds for every tokenizer, T5's or not. The decoder starts from the model
config's `decoder_start_token_id` (T5: the pad id; BART: its own). Rank scoring may leave the EOS off the input or
the choice (the `t0` and `harness` conventions of t2t.evaluation); truncation is the same.
Each (task, template, split) is encoded once in batches through `datasets.map` (the text's ids from t2t.pieces:
SentencePiece's own processor where it provably gives the tokenizer's ids), and the result is cached on disk under a
key of the task spec, template, data, tokenizer and limits: a second run over the same mixture does not tokenise
again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.fingerprint import Hasher

from t2t.config import FilesSource, GeneratorSource
from t2t.errors import T2TError
from t2t.pieces import text_ids
from t2t.sandbox import alarm_handler
from t2t.sources import SplitRows, load_split
from t2t.span_corruption import max_text_tokens, sentinel_ids
from t2t.templates import Task

CACHE_VERSION = "2"  # bump when the encoding policy changes
ENCODE_BATCH = 1000


def default_cache_dir() -> Path:
    return Path(os.environ.get("T2T_CACHE", Path.home() / ".cache" / "t2t")) / "encoded"


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int = 256
    max_target_tokens: int = 128


def with_eos(ids: list[int], eos_id: int, max_tokens: int) -> tuple[list[int], bool]:
    """The policy: at most max_tokens - 1 content tokens, then one EOS. Returns (ids, truncated)."""
    truncated = len(ids) > max_tokens - 1
    return [*ids[: max_tokens - 1], eos_id], truncated


def encode_texts(
    tokenizer: Any, texts: list[str], max_tokens: int | None, eos: bool = True
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text under the policy, and whether it was cut. `eos=False` leaves the EOS off (an empty
    text still gets one, so no sequence is empty); `max_tokens=None` cuts nothing."""
    ids = text_ids(tokenizer, texts)  # SentencePiece's own processor where it gives the tokenizer's ids
    limit = max_tokens if max_tokens is not None else max((len(x) for x in ids), default=0) + 1
    eos_id = tokenizer.eos_token_id  # once: an attribute of HF tokenizers costs a microsecond a lookup
    if eos:
        pairs = [with_eos(x, eos_id, limit) for x in ids]
    else:
        pairs = [(list(x[:limit]), len(x) > limit) if x else ([eos_id], False) for x in ids]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def decoder_start_id(model_config: Any) -> int:
    """The first decoder input: the model config's decoder start token, else its pad token (T5's convention)."""
    start = getattr(model_config, "decoder_start_token_id", None)
    if start is None:
        start = model_config.pad_token_id
    return int(start)


@dataclass
class EncodedTemplate:
    input_ids: list[list[int]]
    labels: list[list[int]]
    inputs_truncated: int
    targets_truncated: int
    skipped: int = 0  # rows a promptsource-style template skips (their ids are empty; the stream skips them)


@dataclass
class EncodedTask:
    """A task's split encoded under each of its templates; rows are indices into the (filtered) split."""

    task: str
    split: str
    templates: dict[str, EncodedTemplate] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.templates.values())).input_ids)

    def truncation(self) -> dict[str, float]:
        """Fractions of encoded inputs and targets that were cut, over all templates."""
        total = self.n_rows * len(self.templates)
        return {
            "inputs": sum(t.inputs_truncated for t in self.templates.values()) / total,
            "targets": sum(t.targets_truncated for t in self.templates.values()) / total,
        }


# Where a tokenizer was read from, not what it does: kept out of its fingerprint, so that a run dir copied or moved
# elsewhere resumes (and finds its encoding cache) as it would where it was made; and state a tokenizer changes as
# it is used (which deprecation warnings it gave).
_NOT_FINGERPRINTED = frozenset({"name_or_path", "_name_or_path", "vocab_file", "merges_file", "tokenizer_file",
                                "files_loaded", "is_local", "local_files_only", "cache_dir", "deprecation_warnings",
                                "_in_target_context_manager"})  # fmt: skip


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what the tokenizer does: its class, its whole serialized model (a fast tokenizer's tokenizer.json,
    a slow one's SentencePiece proto) and its Python-side settings (special tokens, sides, flags), but not the
    paths it was loaded from."""
    state = {key: value for key, value in vars(tokenizer).items()
             if key not in _NOT_FINGERPRINTED and key not in ("_tokenizer", "sp_model", "init_kwargs")}  # fmt: skip
    state["init_kwargs"] = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _NOT_FINGERPRINTED}
    state["class"] = type(tokenizer).__qualname__
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state["backend"] = backend.to_str()
    sp_model = getattr(tokenizer, "sp_model", None)
    if sp_model is not None:
        state["sp_model"] = sp_model.serialized_model_proto()
    return Hasher.hash(state)


def legacy_tokenizer_fingerprint(tokenizer: Any) -> str:
    """The fingerprint t2t recorded in checkpoints until 2026-12-05 (it hashed the paths too): a checkpoint that
    holds it resumes where it was made."""
    return Hasher.hash(tokenizer)


def _data_key(task: Task, rows: SplitRows) -> str:
    src = task.spec.source
    if isinstance(src, GeneratorSource):
        return "generator"  # the spec, hashed with it, fixes the rows
    if isinstance(src, FilesSource) and task.spec.path is not None:
        files = [(task.spec.path.parent / p).resolve() for p in src.splits.values()]
        return json.dumps([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()])
    return rows.rows._fingerprint  # datasets' own fingerprint of what it loaded


def cache_key(
    task: Task, template: str, split: str, data_key: str, tokenizer_key: str, limits: Limits
) -> str:
    parts = [CACHE_VERSION, task.spec.model_dump_json(), template, split, data_key, tokenizer_key,
             limits.max_input_tokens, limits.max_target_tokens]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def encode_task(
    task: Task,
    split: str,
    tokenizer: Any,
    limits: Limits,
    cache_dir: Path | None = None,
    tokenizer_key: str | None = None,
    templates: Sequence[str] | None = None,
) -> EncodedTask:
    """Encode every row of a split under each of `templates` (default: all the task's), cached on disk."""
    rows = load_split(task, split)
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_key = tokenizer_key or tokenizer_fingerprint(tokenizer)
    data_key = _data_key(task, rows)
    encoded = EncodedTask(task.name, split)
    for template in templates or task.template_names:
        key = cache_key(task, template, split, data_key, tokenizer_key, limits)

        def encode_batch(batch: dict, indices: list[int], template: str = template) -> dict:
            pairs = encode_rows(task, template, split, batch, [int(rows.source_rows[i]) for i in indices],
                                tokenizer, limits)  # fmt: skip
            kept = [(p if p is not None else ([], [], False, False)) for p in pairs]  # skipped: empty ids
            return {"input_ids": [p[0] for p in kept], "labels": [p[1] for p in kept],
                    "input_cut": [p[2] for p in kept], "target_cut": [p[3] for p in kept],
                    "skipped": [p is None for p in pairs]}  # fmt: skip

        fields = rows.rows.select_columns(list(task.spec.fields))
        data = fields.map(
            encode_batch, batched=True, batch_size=ENCODE_BATCH, with_indices=True,
            remove_columns=fields.column_names, cache_file_name=str(cache_dir / f"{task.name}-{key}.arrow"),
            new_fingerprint=key, load_from_cache_file=True, desc=f"encode {task.name}/{template}",
        )  # fmt: skip
        columns = data[:]
        encoded.templates[template] = EncodedTemplate(
            columns["input_ids"],
            columns["labels"],
            sum(columns["input_cut"]),
            sum(columns["target_cut"]),
            sum(columns["skipped"]),
        )
    return encoded


def encode_rows(task: Task, template: str, split: str, columns: dict[str, list], source_rows: Sequence[int],
                tokenizer: Any, limits: Limits,
                bad: list[tuple[int, T2TError]] | None = None) -> list[tuple[list[int], list[int], bool, bool] | None]:  # fmt: skip
    """Render a batch of rows (`columns`: field -> values) under one template and encode them under the policy:
    per row (input ids, labels, input cut, target cut), or None where the template skips the row. `bad`: where
    given, a row that fails to render is None too, and (its index in the batch, the error) appended there;
    otherwise its error is raised."""

    def render(j: int, source: int):
        try:
            return task.try_render({f: columns[f][j] for f in columns}, template, split, source)
        except T2TError as exc:
            if bad is None:
                raise
            bad.append((j, exc))
            return None

    with alarm_handler():  # one handler for the batch; each render still has its own timer
        rendered = [render(j, source) for j, source in enumerate(source_rows)]
    kept = [e for e in rendered if e is not None]
    if task.spec.objective == "span_corruption":
        # the text's ids (no EOS), cut to what corrupts within the limits; corrupted per stream position
        texts = [f"{e.inputs} {e.targets}".strip() for e in kept]
        input_ids, inputs_cut = encode_texts(
            tokenizer, texts, span_text_limit(task, tokenizer, limits), eos=False
        )
        labels, targets_cut = [[] for _ in kept], [False] * len(kept)
    else:
        input_ids, inputs_cut = encode_texts(tokenizer, [e.inputs for e in kept], limits.max_input_tokens)
        labels, targets_cut = encode_texts(tokenizer, [e.targets for e in kept], limits.max_target_tokens)
    encoded = iter(zip(input_ids, labels, inputs_cut, targets_cut, strict=True))
    return [None if e is None else next(encoded) for e in rendered]


def span_text_limit(task: Task, tokenizer: Any, limits: Limits) -> int:
    """The most text tokens a span-corruption task keeps: its corrupted input and target fit the limits."""
    noise = task.spec.noise
    n_sentinels = len(sentinel_ids(tokenizer, task.name))
    length = max_text_tokens(limits.max_input_tokens, limits.max_target_tokens, noise.noise_density,
                             noise.mean_span_length, n_sentinels)  # fmt: skip
    if length < 1:
        raise T2TError(f"task {task.name}: span corruption cannot fit a text into {limits.max_input_tokens} input "
                       f"and {limits.max_target_tokens} target tokens (raise max_target_tokens)")  # fmt: skip
    return length


_CACHE_LINE = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


class LazyPairs:
    """One (task, template) of a training split, encoded a row at a time as the stream draws it: a first run pays
    for the pairs it uses, not for the whole split. Encoded pairs are appended to a cache file (one JSON line per
    row, written in one call per batch, so processes sharing the cache never interleave within a line); a later
    run with the same task, template, data, tokenizer and limits reads them back instead of encoding again. A torn
    last line (a killed run) is ignored and encoded again."""

    def __init__(self, task: Task, template: str, split: str, rows: SplitRows, tokenizer: Any, limits: Limits,
                 cache_dir: Path, tokenizer_key: str,
                 skip_bad: Callable[[T2TError], None] | None = None) -> None:  # fmt: skip
        """`skip_bad`: where given, a row that fails to render is passed over like one the template skips (kept out
        of the cache: a later run meets it again) and its error handed to `skip_bad`; otherwise the error is
        raised."""
        self.task, self.template, self.split, self.rows = task, template, split, rows
        self.tokenizer, self.limits, self.skip_bad = tokenizer, limits, skip_bad
        key = cache_key(task, template, split, _data_key(task, rows), tokenizer_key, limits)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / f"{task.name}-{key}.pairs.jsonl"
        # row -> (input ids, labels, input cut, target cut), or None where the template skips the row
        self.pairs: dict[int, tuple[list[int], list[int], bool, bool] | None] = {}
        # rows that failed to render, passed over under `skip_bad` (None in `pairs`, not cached)
        self.bad: set[int] = set()
        # the template's fields, selected once: indexing it with a list of rows is a plain Arrow take (`select`
        # per batch would fingerprint a new dataset each time, ten times the cost of the take on the demo)
        self._fields = rows.rows.select_columns(list(task.spec.fields))
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if not line:
                    continue
                try:
                    row, value = json.loads(line)
                except ValueError:
                    continue  # a line torn by a killed run: encoded again when drawn
                self.pairs[int(row)] = None if value is None else tuple(value)  # type: ignore[assignment]

    def fill(self, wanted: Sequence[int]) -> None:
        """Encode the rows among `wanted` not encoded yet, in one batch, and append them to the cache."""
        # (`set - dict.keys()` would walk every cached key: look each wanted row up instead)
        pairs = self.pairs
        missing = sorted({row for row in map(int, wanted) if row not in pairs})
        if not missing:
            return
        columns = self._fields[missing]
        sources = [int(self.rows.source_rows[row]) for row in missing]
        bad: list[tuple[int, T2TError]] | None = [] if self.skip_bad is not None else None
        values = encode_rows(
            self.task, self.template, self.split, columns, sources, self.tokenizer, self.limits, bad
        )
        failed = {j for j, _ in bad or []}
        for _, error in bad or []:
            self.skip_bad(error)  # type: ignore[misc]
        lines = []
        for j, (row, value) in enumerate(zip(missing, values, strict=True)):
            self.pairs[row] = value
            if j in failed:
                self.bad.add(row)
            else:
                lines.append(_CACHE_LINE.encode([row, value]) + "\n")
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as f:  # O_APPEND: one write per batch
            f.write("\n" + "".join(lines))  # a leading newline ends a line torn by a killed run

    def get(self, row: int) -> tuple[list[int], list[int], bool, bool] | None:
        if row not in self.pairs:
            self.fill([row])
        return self.pairs[row]

    def counts(self) -> tuple[int, int, int, int]:
        """Pairs encoded so far: (encoded, inputs cut, targets cut, skipped by the template); rows that failed to
        render (`bad`) are in none of these."""
        values = list(self.pairs.values())
        kept = [v for v in values if v is not None]
        return (len(values) - len(self.bad), sum(v[2] for v in kept), sum(v[3] for v in kept),
                len(values) - len(kept) - len(self.bad))  # fmt: skip


def truncation_warnings(
    pairs: dict[str, list[LazyPairs]], limits: Limits, threshold: float = 0.01
) -> list[str]:
    """One line per task whose targets (or inputs) are cut more often than `threshold`, and one per template that
    skips rows (promptsource style: training passes those positions over), over the pairs a run has encoded so far
    (at its start: the first window)."""
    lines = []
    for name, templates in pairs.items():
        counts = [p.counts() for p in templates]
        n = sum(c[0] for c in counts)
        for p, (encoded, _, _, skipped) in zip(templates, counts, strict=True):
            if skipped:
                lines.append(f"task {name}: template {p.template} skips {skipped} of the {encoded} rows drawn so "
                             "far (no input ||| target for them); training passes those positions over")  # fmt: skip
        if not n:
            continue
        for side, index, limit in (
            ("targets", 2, limits.max_target_tokens),
            ("inputs", 1, limits.max_input_tokens),
        ):
            cut = sum(c[index] for c in counts)  # counts: (encoded, inputs cut, targets cut, skipped)
            if cut / n > threshold:
                lines.append(f"task {name}: {cut / n:.1%} of {side} cut at {limit} tokens (of the {n} examples "
                             "encoded so far)")  # fmt: skip
    return lines


def token_warnings(pairs: dict[str, list[LazyPairs]], tokenizer: Any) -> list[str]:
    """One line per task whose encoded pairs (so far: at a run's start, the first window) hold tokens no text
    should: the unknown token (characters the tokenizer has no piece for: T5's vocabulary has none for `{`, `}` or
    `<`, so JSON and code come out as unknowns), or the end-of-sequence or padding token inside a text (HF reads
    the text `</s>`, HTML's closing strikethrough tag, as the end of sequence: a target holding it teaches the model
    to stop there, and generation stops at it). Each names the count and the first template and row."""
    unk, eos, pad = tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    lines = []
    for name, templates in pairs.items():
        found: dict[tuple[str, str], list] = {}  # (what, side) -> [count, first template, first row]
        total = 0
        for lazy in templates:
            for row, value in lazy.pairs.items():
                if value is None or row in lazy.bad:
                    continue
                total += 1
                for side, ids in (("inputs", value[0]), ("targets", value[1])):
                    kinds = []
                    if unk is not None and unk in ids:
                        kinds.append("unknown")
                    if (eos is not None and ids.count(eos) > (1 if ids and ids[-1] == eos else 0)) or (
                        pad is not None and pad != eos and pad in ids
                    ):
                        kinds.append("special")
                    for kind in kinds:
                        entry = found.setdefault(
                            (kind, side), [0, lazy.template, int(lazy.rows.source_rows[row])]
                        )
                        entry[0] += 1
        for (kind, side), (count, template, row) in sorted(found.items()):
            if kind == "unknown":
                what = (f"hold the unknown token {tokenizer.unk_token!r} (characters the tokenizer has no piece "
                        "for: they all read the same to the model)")  # fmt: skip
            else:
                what = (f"hold the end-of-sequence or padding token inside the text (the text {tokenizer.eos_token!r} "
                        f"or {tokenizer.pad_token!r}, which the tokenizer reads as that token: "
                        + ("the model learns to stop there, and generation stops at it)" if side == "targets"
                           else "the encoder reads an end of sequence there)"))  # fmt: skip
            lines.append(f"task {name}: {count} of the {total} {side} encoded so far {what}; the first: template "
                         f"{template!r}, row {row}")  # fmt: skip
    return lines


datasets.disable_progress_bars()
