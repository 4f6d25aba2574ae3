"""The mixture stream: example k is a pure function of (seed, k), and jumping to any k costs no replay.

The stream is cut into blocks of about B examples. Task t gets C_t(b) = floor(b * B * p_t + phase_t) examples in
blocks [0, b), with a seeded phase per task; block b therefore starts at S(b) = sum_t C_t(b), holds
C_t(b + 1) - C_t(b) examples of task t, and lays them out in a seeded permutation. For position k we find its
block by binary search on S (O(T log k) arithmetic, no replay), and the task's own running index j there. The
task's rows are visited in a seeded permutation per task epoch (epoch = j // N_t), so no row repeats before all
have been seen; the template is chosen from (seed, task, j). Proportions are stratified: after k examples every
task has been drawn within one of k * p_t times.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from hashlib import blake2b
from typing import NamedTuple

import numpy as np

from t2t.errors import T2TError
from t2t.rng import keyed_rng, stable_int

DEFAULT_BLOCK = 4096
ROW_CACHE_ELEMENTS = 20_000_000  # row permutations kept (8 bytes each)


class StreamItem(NamedTuple):  # a tuple: cheaper to make than a frozen dataclass, one per example drawn
    position: int  # k, in the global stream
    task: str
    row: int  # index into the task's training rows (after its filter)
    epoch: int  # how many full passes over the task's rows came before this example
    occurrence: int  # j: this task's own running example index
    template: str


class _LRU(OrderedDict):
    """A small least-recently-used cache, bounded by the summed weight of its values."""

    def __init__(self, max_weight: int, weight=lambda value: 1) -> None:
        super().__init__()
        self.max_weight, self.weight, self.total = max_weight, weight, 0

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        self.total += self.weight(value)
        while self.total > self.max_weight and len(self) > 1:
            self.total -= self.weight(self.popitem(last=False)[1])
        return value


MAX_POSITION = 2**50  # float64 block arithmetic is exact far beyond; a run of 10^15 examples is not in sight


def _check_position(position: int) -> None:
    if not 0 <= position < MAX_POSITION:
        raise T2TError(f"stream position {position} is outside [0, 2^50): positions start at 0, and the "
                       "stream's block arithmetic is exact below 2^50")  # fmt: skip


class MixtureStream:
    def __init__(
        self,
        tasks: Sequence[str],
        probabilities: Sequence[float],
        sizes: Sequence[int],
        templates: Sequence[Sequence[str]],
        seed: int = 0,
        block_size: int = DEFAULT_BLOCK,
    ) -> None:
        if not (len(tasks) == len(probabilities) == len(sizes) == len(templates)) or not tasks:
            raise ValueError("tasks, probabilities, sizes and templates must be non-empty and of one length")
        p = np.asarray(probabilities, dtype=np.float64)
        if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError("probabilities must be non-negative and sum to 1")
        if min(sizes) <= 0:
            raise ValueError("every task needs at least one row")
        self.tasks = list(tasks)
        self.sizes = [int(n) for n in sizes]
        self.templates = [tuple(t) for t in templates]
        self.seed = seed
        self.block_size = block_size
        self.per_block = p * block_size
        self.phase = np.array([stable_int("phase", seed, t) / 2.0**64 for t in tasks])
        # choose_template's hash input for each task, up to the occurrence (its bytes, built once)
        self._template_keys = [f"template\x1f{seed}\x1f{t}\x1f".encode() for t in self.tasks]
        self._blocks = _LRU(4)
        self._rows = _LRU(ROW_CACHE_ELEMENTS, weight=len)
        self._last_block = 0

    # ------------------------------------------------------------------------------------ the blocks

    def _before(self, block: int) -> np.ndarray:
        """Examples of each task in blocks [0, block)."""
        return np.floor(block * self.per_block + self.phase).astype(np.int64)

    def _start(self, block: int) -> int:
        return int(self._before(block).sum())

    def _block_of(self, position: int) -> int:
        """The block holding `position`: S(b) <= position < S(b + 1), found by binary search."""
        n_tasks, size = len(self.tasks), self.block_size
        lo, hi = max(0, (position - n_tasks) // size - 1), (position + n_tasks) // size + 2
        while hi - lo > 1:  # invariant: S(lo) <= position < S(hi)
            mid = (lo + hi) // 2
            if self._start(mid) <= position:
                lo = mid
            else:
                hi = mid
        return lo

    def _block(self, block: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(start position, task index per slot, the task's running index j per slot) of one block."""

        def make() -> tuple[int, np.ndarray, np.ndarray]:
            before, after = self._before(block), self._before(block + 1)
            counts = after - before
            slots = np.repeat(np.arange(len(self.tasks)), counts)
            slots = slots[keyed_rng("block", self.seed, block).permutation(len(slots))]
            order = np.argsort(slots, kind="stable")
            firsts = np.cumsum(counts) - counts  # where each task's run starts in the sorted order
            occurrence = np.empty(len(slots), dtype=np.int64)
            occurrence[order] = np.arange(len(slots)) - firsts[slots[order]] + before[slots[order]]
            return int(before.sum()), slots, occurrence

        return self._blocks.get_or(block, make)

    def _row_order(self, task: int, epoch: int) -> np.ndarray:
        key = (task, epoch)
        return self._rows.get_or(
            key, lambda: keyed_rng("rows", self.seed, self.tasks[task], epoch).permutation(self.sizes[task])
        )

    # -------------------------------------------------------------------------------------- the API

    def item(self, position: int) -> StreamItem:
        _check_position(position)
        block = self._last_block
        start, slots, occurrences = self._block(block)
        if not start <= position < start + len(slots):  # sequential reads stay in one block: no search
            block = self._last_block = self._block_of(position)
            start, slots, occurrences = self._block(block)
        task, occurrence = int(slots[position - start]), int(occurrences[position - start])
        epoch, index = divmod(occurrence, self.sizes[task])
        templates = self.templates[task]
        choice = 0
        if len(templates) > 1:  # choose_template(seed, task, occurrence, n), with the key's prefix built once
            digest = blake2b(self._template_keys[task] + str(occurrence).encode(), digest_size=8).digest()
            choice = int.from_bytes(digest, "little") % len(templates)
        row = int(self._row_order(task, epoch)[index])
        return StreamItem(position, self.tasks[task], row, epoch, occurrence, templates[choice])

    def items(self, start: int, count: int, stride: int = 1) -> list[StreamItem]:
        """`item` at positions start, start + stride, ... (`count` of them), worked out a block at a time with
        array operations: the same items as calling `item` at each position, at a fraction of the cost."""
        if count <= 0:
            return []
        if stride < 1:
            raise ValueError(f"stride {stride} is not positive")
        _check_position(start)
        _check_position(start + (count - 1) * stride)
        positions = np.arange(count, dtype=np.int64) * stride + start
        tasks = np.empty(count, dtype=np.int64)
        occurrences = np.empty(count, dtype=np.int64)
        block, done = self._block_of(start), 0
        while done < count:  # the blocks the positions fall in, in order
            begin, slots, block_occurrences = self._block(block)
            end = begin + len(slots)
            upto = done + int(np.searchsorted(positions[done:], end))
            offsets = positions[done:upto] - begin
            tasks[done:upto], occurrences[done:upto] = slots[offsets], block_occurrences[offsets]
            done, block = upto, block + 1
        self._last_block = block - 1
        sizes = np.asarray(self.sizes, dtype=np.int64)[tasks]
        epochs, indices = np.divmod(occurrences, sizes)
        rows = np.empty(count, dtype=np.int64)
        keys = tasks * (int(epochs.max()) + 1) + epochs  # one row permutation per (task, epoch)
        order = keys.argsort(kind="stable")
        for at in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
            rows[at] = self._row_order(int(tasks[at[0]]), int(epochs[at[0]]))[indices[at]]
        task_list, occurrence_list = tasks.tolist(), occurrences.tolist()
        templates = [self.templates[t][0] for t in task_list]
        for i, task in enumerate(task_list):
            options = self.templates[task]
            if len(options) > 1:  # as in `item`
                key = self._template_keys[task] + str(occurrence_list[i]).encode()
                digest = blake2b(key, digest_size=8).digest()
                templates[i] = options[int.from_bytes(digest, "little") % len(options)]
        names = [self.tasks[t] for t in task_list]
        return list(map(StreamItem, positions.tolist(), names, rows.tolist(), epochs.tolist(), occurrence_list,
                        templates))  # fmt: skip

    def iterate(self, start: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[StreamItem]:
        """This rank's slice of the global stream from `start` on: positions start + rank + i * world_size."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        position = start + rank
        while True:
            yield self.item(position)
            position += world_size
