"""The training data of one process: mixture stream -> encoded examples -> batches, with a resumable state.

Each process reads its own slice of the global stream (positions k = i * world_size + rank) in windows of
`window_examples` examples. A window is bucketed by length (padded) or packed, and its batches come in a seeded
order. The loader's state is (window, batches of it already used): resuming recomputes one window, never the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from t2t.batching import Batch, Example, bucket_by_length, bucket_keeping_mix, pack, packed_batch, pad_batch
from t2t.encoding import EncodedTask, Limits, encode_task, tokenizer_fingerprint
from t2t.errors import T2TError
from t2t.mixtures import Mixture, stream_for
from t2t.prompting import Prompter, fit_input
from t2t.registry import Registry
from t2t.rng import keyed_rng
from t2t.sampler import StreamItem
from t2t.sources import load_split
from t2t.train_config import BatchingSpec, packed_rows_problem


@dataclass
class LoaderState:
    window: int = 0
    batch: int = 0  # batches of `window` already consumed


class MixtureData:
    """Examples of a mixture's training stream, tasks encoded (and cached) the first time they are drawn."""

    def __init__(
        self,
        mixture: Mixture,
        registry: Registry,
        tokenizer: Any,
        limits: Limits,
        cache_dir: Path | None = None,
    ) -> None:
        self.mixture, self.registry, self.tokenizer, self.limits = mixture, registry, tokenizer, limits
        self.cache_dir = cache_dir
        self.stream = stream_for(mixture, registry)
        self.task_names = mixture.task_names
        self.task_index = {name: i for i, name in enumerate(self.task_names)}
        self.members = {m.task: m for m in mixture.members}
        self._encoded: dict[str, EncodedTask] = {}
        self._prompters: dict[str, Prompter] = {}
        self.tokenizer_key = tokenizer_fingerprint(tokenizer)

    def encoded(self, task: str) -> EncodedTask:
        if task not in self._encoded:
            self._encoded[task] = encode_task(
                self.registry.task(task), self.mixture.spec.splits.train, self.tokenizer, self.limits,
                self.cache_dir, self.tokenizer_key, self.members[task].templates,
            )  # fmt: skip
        return self._encoded[task]

    def prompter(self, task: str) -> Prompter:
        if task not in self._prompters:
            found, split = self.registry.task(task), self.mixture.spec.splits.train
            self._prompters[task] = Prompter(found, load_split(found, split), split,
                                             self.members[task].prompting, self.mixture.spec.seed)  # fmt: skip
        return self._prompters[task]

    def encode_all(self) -> dict[str, EncodedTask]:
        return {name: self.encoded(name) for name in self.task_names}

    def example(self, item: StreamItem) -> Example | None:
        """The encoded example at a stream position, or None where its template skips the row (promptsource
        style): the position is passed over, deterministically, on every run and resume."""
        encoded = self.encoded(item.task).templates[item.template]
        if not encoded.input_ids[item.row]:
            return None
        input_ids = encoded.input_ids[item.row]
        prompter = self.prompter(item.task)
        if prompter.active:  # FLAN-style variants (t2t.prompting); the target is the cached one
            options, exemplars = choices = prompter.choices(item)
            if options or exemplars:
                prompted = prompter.prompted(item, choices)
                assert prompted is not None  # the cached ids say the template renders this row
                input_ids = fit_input(prompted, self.tokenizer, self.limits.max_input_tokens)
        return Example(input_ids, encoded.labels[item.row], self.task_index[item.task], item.position)


def auto_target_tokens(data: MixtureData, config: BatchingSpec, multiple: int = 8) -> int:
    """Decoder row length that fills as fully as the encoder row: the stream's target/input token ratio (from its
    first window, so every process and every resume computes the same), 5% headroom, rounded up."""
    positions = range(min(config.window_examples, 4096))
    examples = [e for e in (data.example(data.stream.item(k)) for k in positions) if e is not None]
    ratio = sum(len(e.labels) for e in examples) / sum(len(e.input_ids) for e in examples)
    tokens = math.ceil(config.pack_input_tokens * ratio * 1.05 / multiple) * multiple
    return max(tokens, data.limits.max_target_tokens)


class BatchLoader:
    """Batches of one process, from its state on; `state` always names the next batch."""

    def __init__(
        self, data: MixtureData, config: BatchingSpec, rank: int = 0, world_size: int = 1,
        state: LoaderState | None = None, decoder_start_id: int | None = None,
    ) -> None:  # fmt: skip
        self.data, self.config, self.rank, self.world_size = data, config, rank, world_size
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
        positions = ((window * size + i) * self.world_size + self.rank for i in range(size))
        examples = (self.data.example(self.data.stream.item(k)) for k in positions)
        return [e for e in examples if e is not None]

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
        return [
            packed_batch(
                examples, chunk, cfg.pack_input_tokens, cfg.pack_target_tokens, self.pad_id, self.start_id
            )
            for chunk in chunks
        ]

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
