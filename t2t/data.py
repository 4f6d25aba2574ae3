"""The training data of one process: mixture stream -> encoded examples -> batches, with a resumable state.

Each process reads its own slice of the global stream (positions k = i * world_size + rank) in windows of
`window_examples` examples. A window is bucketed by length (padded) or packed, and its batches come in a seeded
order. The loader's state is (window, batches of it already used): resuming recomputes one window, never the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from t2t.batching import (
    Batch,
    Example,
    bucket_by_length,
    bucket_keeping_mix,
    groups_mix_distance,
    pack,
    packed_batches,
    pad_batch,
)
from t2t.encoding import LazyPairs, Limits, default_cache_dir, tokenizer_fingerprint
from t2t.errors import T2TError, Where
from t2t.mixtures import Mixture, stream_for
from t2t.prompting import Prompter, fit_input
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sampler import StreamItem
from t2t.segment_attention import PACKABLE, unpackable_reason
from t2t.sources import SplitRows, load_split
from t2t.span_corruption import corrupt, sentinel_ids
from t2t.templates import null_field
from t2t.train_config import BatchingSpec, packed_rows_problem


@dataclass
class LoaderState:
    window: int = 0
    batch: int = 0  # batches of `window` already consumed


BAD_ROWS_SAID = 20  # rows skipped under bad_rows: skip that get a warning line each
NULL_CHECK_ROWS = 100_000  # rows of a split read at a time for `check_null_fields` (memory bounded)


def check_null_fields(mixture: Mixture, registry: Registry) -> None:
    """Refuse, before training starts, a training row whose field is null where a template the mixture uses reads
    it and the task gives no default: the error that row's rendering would raise, with its row number, but now and
    not when the stream first draws the row (pairs are encoded lazily, so it came mid-run, after hours perhaps).
    A column at a time with Arrow's null counts: milliseconds per million rows. Other bad rows (a render limit, an
    empty target) show only when rendered: `t2t lint --all-rows` renders every row."""
    import pyarrow.compute as pc

    split = mixture.spec.splits.train
    for name in mixture.task_names:
        task = registry.task(name)
        # each field a used template reads without a default, and the first template reading it
        readers: dict[str, str] = {}
        for template in mixture.templates_of(name):
            for field in sorted(task.templates[template].used_fields - set(task.spec.defaults)):
                readers.setdefault(field, template)
        if not readers:
            continue
        rows = load_split(task, split)
        columns = rows.rows.select_columns(sorted(readers)).with_format("arrow")
        for start in range(0, len(rows), NULL_CHECK_ROWS):
            table = columns[start : start + NULL_CHECK_ROWS]
            for field, template in readers.items():
                column = table.column(field)
                if column.null_count:
                    first = start + int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])
                    where = Where(file=task.spec.path, task=name, template=template, split=split,
                                  row=int(rows.source_rows[first]))  # fmt: skip
                    note = "; found before training: every training row's fields are checked at the start"
                    raise T2TError(null_field(field, note), where)


class MixtureData:
    """Examples of a mixture's training stream, each (row, template) encoded (and cached) when first drawn."""

    def __init__(
        self,
        mixture: Mixture,
        registry: Registry,
        tokenizer: Any,
        limits: Limits,
        cache_dir: Path | None = None,
        bad_rows: str = "stop",
    ) -> None:
        """`bad_rows`: "stop" raises a row's render error where the stream first draws it; "skip" passes the row
        over, prints a warning for each of the first BAD_ROWS_SAID, and counts them (`skipped_bad`)."""
        self.mixture, self.registry, self.tokenizer, self.limits = mixture, registry, tokenizer, limits
        self.cache_dir, self.bad_rows = cache_dir, bad_rows
        self.skipped_bad = 0
        self.stream = stream_for(mixture, registry)
        self.task_names = mixture.task_names
        self.task_index = {name: i for i, name in enumerate(self.task_names)}
        self.members = {m.task: m for m in mixture.members}
        self._pairs: dict[tuple[str, str], LazyPairs] = {}
        self._rows: dict[str, SplitRows] = {}
        self._prompters: dict[str, Prompter] = {}
        self._as_cached: dict[str, int | None] = {}  # task -> its index where the cached ids are its examples
        self.tokenizer_key = tokenizer_fingerprint(tokenizer)
        self._sentinels: list[int] | None = None  # the tokenizer's, for span-corruption tasks

    def pairs(self, task: str, template: str) -> LazyPairs:
        """The (task, template)'s encoded rows: encoded when first drawn, cached on disk."""
        if (task, template) not in self._pairs:
            found, split = self.registry.task(task), self.mixture.spec.splits.train
            if task not in self._rows:
                self._rows[task] = load_split(found, split)
            self._pairs[(task, template)] = LazyPairs(
                found, template, split, self._rows[task], self.tokenizer, self.limits,
                self.cache_dir or default_cache_dir(), self.tokenizer_key,
                self._skip_bad if self.bad_rows == "skip" else None,
            )  # fmt: skip
        return self._pairs[(task, template)]

    def skipped_rows(self) -> list[tuple[str, str, int]]:
        """The (task, template, row) pairs this process passed over under `bad_rows: skip`."""
        return [(task, template, row) for (task, template), pairs in self._pairs.items() for row in pairs.bad]

    def _skip_bad(self, error: T2TError) -> None:
        self.skipped_bad += 1
        if self.skipped_bad <= BAD_ROWS_SAID:
            more = "; later ones are counted, not shown" if self.skipped_bad == BAD_ROWS_SAID else ""
            tqdm.write(f"warning: {error}; skipped (bad_rows: skip){more}")  # above a running progress bar

    def prepare(self, items: Iterable[StreamItem]) -> None:
        """Encode the pairs of these stream items not encoded yet: one batch per (task, template)."""
        wanted: dict[tuple[str, str], list[int]] = {}
        for item in items:
            wanted.setdefault((item.task, item.template), []).append(item.row)
        for (task, template), rows in wanted.items():
            self.pairs(task, template).fill(rows)

    def examples(self, items: Sequence[StreamItem]) -> list[Example]:
        """`example` at each of these stream positions, the positions a template skips left out, with the new pairs
        encoded first in one batch per (task, template)."""
        self.prepare(items)
        # (task, template) -> (its encoded pairs, the task's _plain_index)
        found: dict[tuple[str, str], tuple[dict, int | None]] = {}
        out = []
        for item in items:
            key = (item.task, item.template)
            entry = found.get(key)
            if entry is None:
                entry = found[key] = (self.pairs(*key).pairs, self._plain_index(item.task))
            pairs, index = entry
            if index is None:  # span corruption or prompting variants: `example` transforms the cached ids
                example = self.example(item)
            else:  # the cached ids as they are (every row is encoded: prepare filled them)
                value = pairs[item.row]
                example = None if value is None else Example(value[0], value[1], index, item.position)
            if example is not None:
                out.append(example)
        return out

    def encoded_pairs(self) -> dict[str, list[LazyPairs]]:
        """Per task, its templates' pairs encoded so far."""
        by_task: dict[str, list[LazyPairs]] = {}
        for (task, _), pairs in self._pairs.items():
            by_task.setdefault(task, []).append(pairs)
        return by_task

    def prompter(self, task: str) -> Prompter:
        if task not in self._prompters:
            found, split = self.registry.task(task), self.mixture.spec.splits.train
            self._prompters[task] = Prompter(found, load_split(found, split), split,
                                             self.members[task].prompting, self.mixture.spec.seed)  # fmt: skip
        return self._prompters[task]

    def _plain_index(self, task: str) -> int | None:
        """The task's index if its cached ids are its examples as they are (no span corruption, no prompting
        variants), else None; decided once per task."""
        index = self._as_cached.get(task, -1)
        if index == -1:
            plain = self.registry.task(task).spec.objective != "span_corruption"
            index = self.task_index[task] if plain and not self.prompter(task).active else None
            self._as_cached[task] = index
        return index

    def example(self, item: StreamItem) -> Example | None:
        """The encoded example at a stream position, or None where its template skips the row (promptsource
        style): the position is passed over, deterministically, on every run and resume."""
        value = self.pairs(item.task, item.template).get(item.row)
        if value is None:
            return None
        input_ids, labels = value[0], value[1]
        index = self._plain_index(item.task)
        if index is not None:  # the hot path: no span corruption, no prompting variants
            return Example(input_ids, labels, index, item.position)
        task = self.registry.task(item.task)
        if task.spec.objective == "span_corruption":  # the cached text, corrupted as this position draws it
            noise = task.spec.noise
            if self._sentinels is None:
                self._sentinels = sentinel_ids(self.tokenizer, item.task)
            rng = keyed_rng("span_corruption", self.mixture.spec.seed, item.position)
            input_ids, labels = corrupt(input_ids, self._sentinels, self.tokenizer.eos_token_id, rng,
                                        noise.noise_density, noise.mean_span_length)  # fmt: skip
            return Example(input_ids, labels, self.task_index[item.task], item.position)
        prompter = self.prompter(item.task)
        if prompter.active:  # FLAN-style variants (t2t.prompting); the target is the cached one
            options, exemplars = choices = prompter.choices(item)
            if options or exemplars:
                prompted = prompter.prompted(item, choices)
                assert prompted is not None  # the cached ids say the template renders this row
                input_ids = fit_input(prompted, self.tokenizer, self.limits.max_input_tokens)
        return Example(input_ids, labels, self.task_index[item.task], item.position)


def target_ratio(examples: Sequence[Example]) -> float:
    """Target tokens per input token of these examples."""
    return sum(len(e.labels) for e in examples) / max(sum(len(e.input_ids) for e in examples), 1)


def target_side(ratio: float, input_tokens: int, limits: Limits, multiple: int = 8) -> int:
    """Decoder row length that fills as fully as an encoder row of `input_tokens`: the target / input ratio, 5%
    headroom, rounded up to a multiple of 8, never below the longest target allowed."""
    return max(math.ceil(input_tokens * ratio * 1.05 / multiple) * multiple, limits.max_target_tokens)


def ratio_split(ratio: float, row_tokens: float, limits: Limits) -> tuple[int, int]:
    """A packed row of about `row_tokens` split into input and target sides by the target / input ratio (the input
    side a multiple of 8, never below the longest input allowed; the target side as `target_side` sizes it). Where
    the target side's floor (the longest target allowed) would take the row past `row_tokens`, the input side
    gives way, down to its own floor: a row passes `row_tokens` only to hold the longest example allowed."""
    row_input = max(int(row_tokens / (1 + ratio * 1.05)) // 8 * 8, limits.max_input_tokens)
    target = target_side(ratio, row_input, limits)
    if row_input + target > row_tokens:
        row_input = max(int(row_tokens - target) // 8 * 8, limits.max_input_tokens)
        target = target_side(ratio, row_input, limits)
    return row_input, target


def auto_target_tokens(data: MixtureData, config: BatchingSpec) -> int:
    """`target_side` for the config's input side, from the stream's first window (so every process and every
    resume computes the same)."""
    return target_side(target_ratio(first_examples(data, config)), config.pack_input_tokens, data.limits)


PACK_ROW_TOKENS = 1024  # auto: about this many tokens (input + target) per packed row ...
ROW_FILL_GAIN = 0.01  # ... unless rows of another size hold this much more of their slots in real tokens
SPLIT_CANDIDATES = 32  # target sides densest_split packs a window with, at most (and the given one)
# auto keeps the task mix first: where one batching's mean task-mix distance is over MIX_KEPT (it does not keep the
# mix) and at least twice the other's and MIX_GAP more, the other is taken, whichever holds more real tokens;
# otherwise the one holding more
MIX_KEPT, MIX_GAP = 0.3, 0.1


def densest_split(
    examples: Sequence[Example], input_tokens: int, target_tokens: int, limits: Limits
) -> tuple[int, int, int]:
    """(rows, input side, target side): the split of a packed row of `input_tokens + target_tokens` slots into its
    input and target sides that packs `examples` into the fewest rows, and that number. Tried: the given split and
    every target side in multiples of 8 from half to twice the given one (neither side below its token limit; in
    steps of a larger multiple of 8 where that range holds over SPLIT_CANDIDATES of them: long rows), ties going to
    the split nearest the given one. The target / input ratio alone misjudges mixed profiles (a few long inputs and
    a few long targets: rows fill on one side and close on the other)."""
    row = input_tokens + target_tokens
    low = math.ceil(max(limits.max_target_tokens, target_tokens / 2) / 8) * 8
    high = min(row - limits.max_input_tokens, 2 * target_tokens)
    step = 8 * max(1, math.ceil((high - low) / 8 / SPLIT_CANDIDATES))
    candidates = sorted(
        {target_tokens, *range(low, high + 1, step)}, key=lambda t: (abs(t - target_tokens), t)
    )
    # the fewest rows; of equals, the side nearest the given one
    rows, _, best = min((len(pack(examples, row - t, t)), i, t) for i, t in enumerate(candidates))
    return rows, row - best, best


def densest_rows(
    examples: Sequence[Example], max_tokens: int, limits: Limits, rows_per_batch: int | None = None
) -> tuple[int, int, int]:
    """(rows per batch, input side, target side) of packed rows that fill `max_tokens` and hold the most real
    tokens of `examples`: for each row count (the given one, or rows of about PACK_ROW_TOKENS and every count from 1
    to 8 whose rows still hold the longest example allowed), rows of `max_tokens / count` split by the target /
    input ratio, then at their densest split. Another count replaces rows of about PACK_ROW_TOKENS only where it
    holds at least ROW_FILL_GAIN more of its slots in real tokens: a row fits whole examples only, so where many
    examples take more than half a row, rows close a third empty (a third of a window at 512 + 128 tokens, in rows
    of 832 + 192: 75 % real tokens, against 97 % in one row of 1,640 + 408)."""
    ratio = target_ratio(examples)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    usual = rows_per_batch or max(1, round(max_tokens / PACK_ROW_TOKENS))
    fit = max_tokens // (limits.max_input_tokens + limits.max_target_tokens)
    counts = [usual] if rows_per_batch else [usual, *(n for n in range(1, min(fit, 8) + 1) if n != usual)]
    options = {}
    for count in counts:
        row_input, _ = ratio_split(ratio, max_tokens / count, limits)
        rows, row_in, row_out = densest_split(
            examples, row_input, target_side(ratio, row_input, limits), limits
        )
        options[count] = (real / max(rows * (row_in + row_out), 1), row_in, row_out)
    best = max(counts, key=lambda n: options[n][0])  # max keeps the first of equals: rows of the usual size
    chosen = best if options[best][0] >= options[usual][0] + ROW_FILL_GAIN else usual
    return chosen, options[chosen][1], options[chosen][2]


def _padded_slots(groups: Sequence[Sequence[Example]]) -> int:
    return sum(len(g) * (max(len(e.input_ids) for e in g) + max(len(e.labels) for e in g)) for g in groups)


def rows_said(spec: BatchingSpec) -> str:
    rows = spec.rows_per_batch
    return f"{rows} row{'s' if rows > 1 else ''} of {spec.pack_input_tokens}+{spec.pack_target_tokens} tokens"


def recorded_choice(config: BatchingSpec, recorded: Any) -> BatchingSpec | None:
    """On a resume under `strategy: auto` (or `packed`): the batching chosen at the run's start, as its checkpoint
    recorded it, where every batching key the config sets still says the same. The rules may have changed since (a
    newer t2t sizing rows otherwise): the run keeps its batches. None otherwise (t2t decides again, and the resume
    check refuses a different outcome, naming it)."""
    if not isinstance(recorded, dict) or recorded.get("strategy") not in ("packed", "padded"):
        return None
    given = config.model_dump(mode="json", exclude_unset=True)
    given.pop("strategy", None)
    if any(recorded.get(key) != value for key, value in given.items()):
        return None
    try:
        return BatchingSpec(**recorded)
    except ValueError:  # pydantic's ValidationError: not a batching this t2t can run
        return None


def packed_rows(
    data: MixtureData, config: BatchingSpec, examples: Sequence[Example]
) -> tuple[BatchingSpec, str]:
    """Packed rows for the config's budget (`max_tokens`), from the stream's first window: `resolve_batching`'s
    rules for the row count and each row's split, any of them set in the config kept; and, where its batches pass
    `max_tokens`, a clause saying by how much and why."""
    fields = config.model_fields_set
    # keep_mix is for padded batches only
    packed = config.model_copy(update={"strategy": "packed", "keep_mix": False})
    if "pack_input_tokens" not in fields and packed.pack_target_tokens is None:
        # neither side given: the row count (unless given) and the split that hold the most real tokens
        given = packed.rows_per_batch if "rows_per_batch" in fields else None
        rows_per_batch, row_in, row_out = densest_rows(examples, config.max_tokens, data.limits, given)
        packed = packed.model_copy(update={"rows_per_batch": rows_per_batch, "pack_input_tokens": row_in,
                                           "pack_target_tokens": row_out})  # fmt: skip
    else:
        ratio = target_ratio(examples)
        if "rows_per_batch" not in fields and "pack_input_tokens" not in fields:
            # rows of about PACK_ROW_TOKENS that fill the budget ...
            rows_per_batch = max(1, round(config.max_tokens / PACK_ROW_TOKENS))
            packed = packed.model_copy(update={"rows_per_batch": rows_per_batch})
        if "pack_input_tokens" not in fields:  # ... the input side from the ratio (the target side is given)
            row_input, _ = ratio_split(ratio, config.max_tokens / packed.rows_per_batch, data.limits)
            packed = packed.model_copy(update={"pack_input_tokens": row_input})
        if packed.pack_target_tokens is None:  # the input side given: the target side from the ratio
            target = target_side(ratio, packed.pack_input_tokens, data.limits)
            packed = packed.model_copy(update={"pack_target_tokens": target})
    row = packed.pack_input_tokens + packed.pack_target_tokens
    if "rows_per_batch" not in fields and "pack_input_tokens" in fields:
        # rows the config sizes and does not count: as many as fit the budget
        packed = packed.model_copy(update={"rows_per_batch": max(1, config.max_tokens // row)})
    over = ""
    if row * packed.rows_per_batch > config.max_tokens:
        # the user's budget is a memory bound: say where it is passed, and why
        given = sorted(fields & {"rows_per_batch", "pack_input_tokens", "pack_target_tokens"})
        because = (f"as batching.{', '.join(given)} set" if given else "a row holds the longest example the limits "
                   f"allow ({data.limits.max_input_tokens}+{data.limits.max_target_tokens})")  # fmt: skip
        over = (f"; its batches take {row * packed.rows_per_batch} token slots, over batching.max_tokens="
                f"{config.max_tokens}: {because}")  # fmt: skip
    return packed, over


def resolve_batching(
    data: MixtureData, config: BatchingSpec, model_kind: str | None, recorded: Any = None
) -> tuple[BatchingSpec, str]:
    """`strategy: auto` made concrete, and why, from the model and the first window of the stream (the same on
    every process and resume). auto keeps each step's task mix: of the two strategies that do, packed rows (for
    models that can pack: T5 family, relative positions, attention per segment) and padded batches that keep the
    mix (`keep_mix`), it takes the one whose batches hold more real tokens on the first window, unless that one
    does not keep the mix there and the other keeps it far better (MIX_KEPT, MIX_GAP: padded batches meant to keep
    it fail where long examples fill a batch alone). Packed rows are `max_tokens` cut into rows of about 1,024
    tokens, each row's input and target sides split where the window's examples fill the fewest rows
    (`densest_split`; the input side never below `max_input_tokens`); any of these set in the config is kept (rows
    sized there and not counted: as many as fit `max_tokens`). Models that cannot pack get padded batches keeping
    the mix. `keep_mix: false` in the config makes auto's padded batches length-bucketed, compared with packed rows
    as such. `model_kind`: the model's type (None: a tiny T5). `recorded`: a resumed run's batching as its
    checkpoint recorded it (`recorded_choice`)."""
    if config.strategy == "padded":
        return config, "padded, as set"
    kept = recorded_choice(config, recorded)
    if kept is not None and config.strategy in ("auto", kept.strategy):
        said = f"packed ({rows_said(kept)})" if kept.strategy == "packed" else (
            "padded, keeping each batch's task mix" if kept.keep_mix else "padded, bucketed by length")  # fmt: skip
        return kept, f"{said}, as this run's checkpoint recorded it at the run's start"
    if config.strategy == "packed":
        if config.max_tokens is None:  # rows as the config's row keys (or their defaults) give them
            return (
                config,
                "packed, as set (batching.max_tokens: null: rows_per_batch rows of pack_input_tokens)",
            )
        packed, over = packed_rows(data, config, first_examples(data, config))
        return (
            packed,
            f"packed, as set ({rows_said(packed)}, sized to batching.max_tokens={config.max_tokens}){over}",
        )
    kind = model_kind or "t5"
    fields = config.model_fields_set
    # auto's padded batches keep the mix, unless the config says keep_mix: false (then they are bucketed by length)
    keep = config.keep_mix if "keep_mix" in fields else True
    padded = config.model_copy(update={"strategy": "padded", "keep_mix": keep})
    padded_said = ("padded, keeping each batch's task mix" if keep
                   else "padded, bucketed by length (batching.keep_mix: false)")  # fmt: skip
    if config.batch_size is not None:
        return (padded, f"{padded_said}: batching.batch_size counts examples per padded batch (give max_tokens to "
                        "let auto pack)")  # fmt: skip
    if kind not in PACKABLE:
        return padded, f"{padded_said}: {kind} models cannot pack ({unpackable_reason(kind)})"
    examples = first_examples(data, config)
    packed, over = packed_rows(data, config, examples)
    row = packed.pack_input_tokens + packed.pack_target_tokens
    n_tasks = len(data.task_names)
    rows = pack(examples, packed.pack_input_tokens, packed.pack_target_tokens)
    batches = [[examples[i] for r in rows[j : j + packed.rows_per_batch] for i in r]
               for j in range(0, len(rows), packed.rows_per_batch)]  # fmt: skip
    mixed = bucket_keeping_mix(examples, None, config.max_tokens)
    bucketed = bucket_by_length(examples, None, config.max_tokens)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    densities = {  # real tokens over token slots, and the task mix distance
        "packed": (real / max(len(rows) * row, 1), groups_mix_distance(batches, n_tasks)),
        "mix": (real / max(_padded_slots(mixed), 1), groups_mix_distance(mixed, n_tasks)),
        "bucketed": (real / max(_padded_slots(bucketed), 1), groups_mix_distance(bucketed, n_tasks)),
    }
    shape = rows_said(packed)
    figures = (f"on the stream's first {len(examples)} examples, real tokens / task mix distance from the mixture's "
               "(total variation): packed {:.1%} / {:.2f}, padded keeping the mix {:.1%} / {:.2f}, length-bucketed "
               "padding (batching.strategy: padded) {:.1%} / {:.2f}").format(*densities["packed"], *densities["mix"],
                                                                           *densities["bucketed"])  # fmt: skip
    (packed_real, packed_mix), (padded_real, padded_mix) = (
        densities["packed"],
        densities["mix" if keep else "bucketed"],
    )
    packs = f"packed ({shape}): {kind} attends within each packed example, and its rows"
    kept, lost = sorted((packed_mix, padded_mix))
    if keep and lost > MIX_KEPT and lost >= 2 * kept and lost - kept >= MIX_GAP and (
        (padded_mix < packed_mix) != (padded_real > packed_real)
    ):  # fmt: skip
        # the denser one does not keep the task mix and the other keeps it far better (padded batches meant to keep
        # it fail where long examples fill a batch alone): the mix first
        if padded_mix < packed_mix:
            return padded, (f"{padded_said}: its batches keep the task mix far better ({padded_mix:.2f} from the "
                            f"mixture's, against {packed_mix:.2f} for packed rows, {shape}); {figures}")  # fmt: skip
        return packed, (f"{packs} keep the task mix far better ({packed_mix:.2f} from the mixture's, against "
                        f"{padded_mix:.2f} for padded batches meant to keep it); {figures}{over}")  # fmt: skip
    if padded_real > packed_real:
        said = f"{padded_said}: its batches hold more real tokens than packed rows ({shape}); {figures}"
        return padded, said
    rival = "padded batches keeping the task mix" if keep else "length-bucketed padding"
    return packed, f"{packs} hold more real tokens than {rival}; {figures}{over}"


def first_examples(data: MixtureData, config: BatchingSpec) -> list[Example]:
    """The examples at the stream's first positions (one window, at most 4,096): what auto choices look at."""
    return data.examples(data.stream.items(0, min(config.window_examples, 4096)))


class BatchLoader:
    """Batches of one process, from its state on; `state` always names the next batch."""

    def __init__(
        self, data: MixtureData, config: BatchingSpec, rank: int = 0, world_size: int = 1,
        state: LoaderState | None = None, decoder_start_id: int | None = None, model_kind: str | None = None,
        recorded: Any = None,
    ) -> None:  # fmt: skip
        self.data, self.rank, self.world_size = data, rank, world_size
        config, self.why = resolve_batching(data, config, model_kind, recorded)
        self.config = config
        if config.strategy == "packed":
            if config.pack_target_tokens is None:
                target = auto_target_tokens(data, config)
                self.config = config = config.model_copy(update={"pack_target_tokens": target})
            problem = packed_rows_problem(config, data.limits.max_input_tokens, data.limits.max_target_tokens)
            if problem is not None:
                raise T2TError(problem)
        self.state = state or LoaderState()
        self.pad_id = data.tokenizer.pad_token_id
        # The model's decoder start token (t2t.encoding.decoder_start_id); T5's is the pad id.
        self.start_id = self.pad_id if decoder_start_id is None else decoder_start_id

    def window_examples(self, window: int) -> list[Example]:
        size = self.config.window_examples
        start = window * size * self.world_size + self.rank  # then every world_size-th position
        return self.data.examples(self.data.stream.items(start, size, self.world_size))

    def window_batches(self, window: int) -> list[Batch]:
        examples, cfg = self.window_examples(window), self.config
        order = keyed_rng("batches", self.data.mixture.spec.seed, self.rank, window)
        if cfg.strategy == "padded":
            bucket = bucket_keeping_mix if cfg.keep_mix else bucket_by_length
            groups = bucket(examples, cfg.batch_size, None if cfg.batch_size else cfg.max_tokens)
            groups = [groups[i] for i in order.permutation(len(groups))]
            return [pad_batch(g, self.pad_id, self.start_id) for g in groups]
        rows = pack(examples, cfg.pack_input_tokens, cfg.pack_target_tokens)
        rows = [rows[i] for i in order.permutation(len(rows))]
        chunks = [rows[i : i + cfg.rows_per_batch] for i in range(0, len(rows), cfg.rows_per_batch)]
        return packed_batches(
            examples, chunks, cfg.pack_input_tokens, cfg.pack_target_tokens, self.pad_id, self.start_id
        )

    def __iter__(self) -> Iterator[Batch]:
        while True:
            window, start = self.state.window, self.state.batch
            batches = self.window_batches(window)
            for i in range(start, len(batches)):
                done = i + 1 == len(batches)
                self.state = LoaderState(window + 1, 0) if done else LoaderState(window, i + 1)
                yield batches[i]
            if start >= len(batches):
                self.state = LoaderState(window + 1, 0)

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = LoaderState(**state)
