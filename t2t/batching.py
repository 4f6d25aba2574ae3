"""From encoded examples to model batches: padded (length-bucketed, to a token budget) or packed (T5 exact).

Both keep the task of every label token (`task_ids`, -1 on padding) so the trainer can report per-task losses.

Packed rows follow seqio's layout: several examples share an encoder row and a decoder row; `*_segment_ids`
number them from 1 (0 is padding); the decoder input is the labels shifted right *within each segment*, each
segment starting with the decoder start token. A packed batch also carries its segments' attention layout
(`t2t.segment_attention`): T5-family models attend within each segment at the cost of the segments, not the rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from t2t.segment_attention import layouts_from_runs

IGNORE = -100  # label value the loss skips


class Example(NamedTuple):
    """One encoded example; a tuple, three times cheaper to make than a frozen dataclass (a window makes 2,048)."""

    input_ids: Sequence[int]
    labels: Sequence[int]
    task: int  # index of the task in the mixture
    position: int = -1  # stream position, for audits


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    n_examples: int
    real_tokens: int  # non-pad input + target tokens
    total_tokens: int  # input + target slots processed, padding included

    @property
    def packed(self) -> bool:
        return "encoder_segment_ids" in self.tensors


# -------------------------------------------------------------------------------------------- padded


def bucket_by_length(
    examples: Sequence[Example], batch_size: int | None, max_tokens: int | None
) -> list[list[Example]]:
    """Sort by length and cut into batches of `batch_size` examples, or of at most `max_tokens` padded tokens."""
    if (batch_size is None) == (max_tokens is None):
        raise ValueError("give exactly one of batch_size and max_tokens")
    ordered = sorted(examples, key=lambda e: (len(e.input_ids), len(e.labels)))
    if batch_size is not None:
        return [list(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size)]
    batches, current, longest_in, longest_out = [], [], 0, 0
    for example in ordered:
        new_in, new_out = max(longest_in, len(example.input_ids)), max(longest_out, len(example.labels))
        if current and (len(current) + 1) * (new_in + new_out) > max_tokens:
            batches.append(current)
            current, new_in, new_out = [], len(example.input_ids), len(example.labels)
        current.append(example)
        longest_in, longest_out = new_in, new_out
    if current:
        batches.append(current)
    return batches


def bucket_keeping_mix(
    examples: Sequence[Example], batch_size: int | None, max_tokens: int | None
) -> list[list[Example]]:
    """As many batches as `bucket_by_length` makes, each holding every task's share of the window: each task's
    examples, sorted by length, are cut into that many contiguous runs, and batch b takes run b of every task. A
    batch keeps the window's task mix (so each optimizer step sees the mixture's rates) and tasks of similar length
    rank pad together. A batch over `max_tokens` padded slots is halved, each task's examples dealt alternately to
    the halves so that both keep the mix, until it fits."""
    n_batches = len(bucket_by_length(examples, batch_size, max_tokens))
    by_task: dict[int, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
    batches: list[list[Example]] = [[] for _ in range(n_batches)]
    for task in sorted(by_task):
        ordered = sorted(by_task[task], key=lambda e: (len(e.input_ids), len(e.labels)))
        for b, run in enumerate(np.array_split(np.arange(len(ordered)), n_batches)):
            batches[b].extend(ordered[i] for i in run)
    fitted: list[list[Example]] = []
    pending = [b for b in batches if b]
    while pending:
        batch = pending.pop(0)
        slots = len(batch) * (max(len(e.input_ids) for e in batch) + max(len(e.labels) for e in batch))
        if max_tokens is None or slots <= max_tokens or len(batch) == 1:
            fitted.append(batch)
            continue
        halves: list[list[Example]] = [[], []]  # every task's examples dealt alternately: both keep the mix
        for i, example in enumerate(sorted(batch, key=lambda e: (e.task, len(e.input_ids), len(e.labels)))):
            halves[i % 2].append(example)
        pending[:0] = halves
    return fitted


def task_mix_distance(batches: Sequence[Batch], n_tasks: int) -> float:
    """Mean over batches of the total-variation distance between the batch's label-token share per task and that
    of all the batches together: 0 when every batch holds the overall task mix, 1 at most."""
    counts = np.zeros((len(batches), n_tasks))
    for b, batch in enumerate(batches):
        ids = batch.tensors["task_ids"]
        counts[b] = np.bincount(ids[ids >= 0].numpy(), minlength=n_tasks)[:n_tasks]
    return _mean_tv(counts)


def groups_mix_distance(groups: Sequence[Sequence[Example]], n_tasks: int) -> float:
    """`task_mix_distance` of batches not built yet: groups of examples, label tokens counted per task."""
    counts = np.zeros((len(groups), n_tasks))
    for b, group in enumerate(groups):
        for example in group:
            counts[b, example.task] += len(example.labels)
    return _mean_tv(counts)


def _mean_tv(counts: np.ndarray) -> float:
    overall = counts.sum(0) / max(counts.sum(), 1)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(np.mean(0.5 * np.abs(shares - overall).sum(1)))


def pad_batch(examples: Sequence[Example], pad_id: int = 0, decoder_start_id: int = 0) -> Batch:
    n = len(examples)
    in_lens = np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=n)
    out_lens = np.fromiter((len(e.labels) for e in examples), dtype=np.int64, count=n)
    in_len, out_len = int(in_lens.max()), int(out_lens.max())
    input_ids = np.full((n, in_len), pad_id, dtype=np.int64)
    labels = np.full((n, out_len), IGNORE, dtype=np.int64)
    decoder_input_ids = np.full((n, out_len), pad_id, dtype=np.int64)
    for i, e in enumerate(examples):  # one slice copy per row; no tensor per example
        input_ids[i, : in_lens[i]] = e.input_ids
        labels[i, : out_lens[i]] = e.labels
        decoder_input_ids[i, 0] = decoder_start_id
        decoder_input_ids[i, 1 : out_lens[i]] = e.labels[:-1]
    attention_mask = (np.arange(in_len)[None, :] < in_lens[:, None]).astype(np.int64)
    tasks = np.fromiter((e.task for e in examples), dtype=np.int64, count=n)
    task_ids = np.where(np.arange(out_len)[None, :] < out_lens[:, None], tasks[:, None], -1)
    tensors = {name: torch.from_numpy(array) for name, array in (
        ("input_ids", input_ids), ("attention_mask", attention_mask), ("decoder_input_ids", decoder_input_ids),
        ("labels", labels), ("task_ids", task_ids))}  # fmt: skip
    return Batch(tensors, n, int(in_lens.sum() + out_lens.sum()), n * (in_len + out_len))


# -------------------------------------------------------------------------------------------- packed


def pack(examples: Sequence[Example], max_input_tokens: int, max_target_tokens: int) -> list[list[int]]:
    """Indices of the examples in each packed row: first fit, in the given (stream) order.

    Examples come from a shuffled mixture, so input-heavy and target-heavy ones alternate and rows fill on both
    sides; sorting by length (first fit decreasing) would group look-alike examples and leave rows one-sided.
    A row closes once even the shortest example of the window no longer fits.
    """
    if not examples:
        return []
    need_in = [len(e.input_ids) for e in examples]
    need_out = [len(e.labels) for e in examples]
    shortest_in, shortest_out = min(need_in), min(need_out)
    if max(need_in) > max_input_tokens or max(need_out) > max_target_tokens:
        i = next(i for i, (a, b) in enumerate(zip(need_in, need_out, strict=True))
                 if a > max_input_tokens or b > max_target_tokens)  # fmt: skip
        raise ValueError(f"example of {need_in[i]} + {need_out[i]} tokens does not fit a packed row")
    # plain lists and a for-else: this loop runs once per example of every window (half the time of a generator
    # over the open rows and [input, target] room pairs)
    rows: list[list[int]] = []
    room_in: list[int] = []
    room_out: list[int] = []
    open_rows: list[int] = []
    for i, (need_i, need_o) in enumerate(zip(need_in, need_out, strict=True)):
        for row in open_rows:
            if room_in[row] >= need_i and room_out[row] >= need_o:
                break
        else:
            row = len(rows)
            rows.append([])
            room_in.append(max_input_tokens)
            room_out.append(max_target_tokens)
            open_rows.append(row)
        rows[row].append(i)
        left_in, left_out = room_in[row] - need_i, room_out[row] - need_o
        room_in[row], room_out[row] = left_in, left_out
        if left_in < shortest_in or left_out < shortest_out:
            open_rows.remove(row)
    return rows


def packed_batch(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], max_input_tokens: int, max_target_tokens: int,
    pad_id: int = 0, decoder_start_id: int = 0,
) -> Batch:  # fmt: skip
    """Tensors for packed rows: ids, segment ids, per-segment shifted decoder inputs, labels, task ids, and the
    segment layout (t2t.segment_attention)."""
    return packed_batches(examples, [rows], max_input_tokens, max_target_tokens, pad_id, decoder_start_id)[0]


def packed_batches(
    examples: Sequence[Example], chunks: Sequence[Sequence[Sequence[int]]], max_input_tokens: int,
    max_target_tokens: int, pad_id: int = 0, decoder_start_id: int = 0,
) -> list[Batch]:  # fmt: skip
    """`packed_batch` for each chunk of rows (a window's batches), all built at once: each side's ids of every
    example are read in one pass and placed with one scatter per field, the segment layouts of all batches are
    computed together, and each batch's tensors are its rows of the window's arrays (views: the batches of a window
    share its arrays, each owning its own rows)."""
    rows = [members for chunk in chunks for members in chunk]
    n, n_batches = len(rows), len(chunks)
    rows_per_batch = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=n_batches)
    first_row = np.cumsum(rows_per_batch) - rows_per_batch  # each batch's first row
    batch_of_row = np.repeat(np.arange(n_batches), rows_per_batch)
    chosen = [examples[i] for members in rows for i in members]
    count = len(chosen)
    per_row = np.fromiter((len(m) for m in rows), dtype=np.int64, count=n)
    row_of = np.repeat(np.arange(n), per_row)  # each example's row
    segments = np.arange(count) - (np.cumsum(per_row) - per_row)[row_of] + 1  # numbered from 1 within a row
    tasks = np.fromiter((e.task for e in chosen), dtype=np.int64, count=count)
    batch_of = batch_of_row[row_of]  # each example's batch

    def place(
        side: list, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
        """One side's tokens of every example in order, each one's flat index in an (n, width) array, the example
        it belongs to, each example's first token's place in the tokens, each example's token count, and the
        side's segments as `segment_attention._runs` lists them (row, segment id, flat start within its batch,
        length)."""
        lengths = np.fromiter(map(len, side), dtype=np.int64, count=count)
        total = int(lengths.sum())
        values = np.fromiter(itertools.chain.from_iterable(side), dtype=np.int64, count=total)
        owner = np.repeat(np.arange(count), lengths)
        firsts = np.cumsum(lengths) - lengths
        in_row = np.bincount(row_of, weights=lengths, minlength=n).astype(np.int64)  # each row's tokens
        if n and in_row.max() > width:
            raise ValueError(f"a packed row holds {in_row.max()} tokens, over its {width}")
        row_first = np.cumsum(in_row) - in_row
        flat = row_of[owner] * width + np.arange(total) - row_first[row_of[owner]]
        present = lengths > 0
        firsts = firsts[present]
        in_batch = flat[firsts] - first_row[batch_of[present]] * width
        runs = (row_of[present], segments[present], in_batch, lengths[present])
        return values, flat, owner, firsts, lengths, runs

    input_ids = np.full((n, max_input_tokens), pad_id, dtype=np.int64)
    encoder_segment_ids = np.zeros((n, max_input_tokens), dtype=np.int64)
    values, flat, owner, _, input_lengths, encoder_runs = place(
        [e.input_ids for e in chosen], max_input_tokens
    )
    input_ids.reshape(-1)[flat] = values
    encoder_segment_ids.reshape(-1)[flat] = segments[owner]
    decoder_input_ids = np.full((n, max_target_tokens), pad_id, dtype=np.int64)
    labels = np.full((n, max_target_tokens), IGNORE, dtype=np.int64)
    decoder_segment_ids = np.zeros((n, max_target_tokens), dtype=np.int64)
    task_ids = np.full((n, max_target_tokens), -1, dtype=np.int64)
    values, flat, owner, firsts, target_lengths, decoder_runs = place(
        [e.labels for e in chosen], max_target_tokens
    )
    labels.reshape(-1)[flat] = values
    decoder_segment_ids.reshape(-1)[flat] = segments[owner]
    task_ids.reshape(-1)[flat] = tasks[owner]
    # the labels shifted right within each segment: every segment starts with the decoder start token
    shifted = np.empty_like(values)
    shifted[1:] = values[:-1]
    shifted[firsts] = decoder_start_id
    decoder_input_ids.reshape(-1)[flat] = shifted
    # where each segment's tokens go for attention (t2t.segment_attention), computed here on the host from the
    # segments just placed, for every batch at once
    layouts = layouts_from_runs(encoder_runs, decoder_runs, batch_of[input_lengths > 0],
                                batch_of[target_lengths > 0], n_batches)  # fmt: skip
    examples_per_batch = np.bincount(batch_of, minlength=n_batches).tolist()
    real_per_batch = np.bincount(batch_of, weights=input_lengths + target_lengths, minlength=n_batches)
    fields = (("input_ids", input_ids), ("encoder_segment_ids", encoder_segment_ids),
              ("decoder_input_ids", decoder_input_ids), ("labels", labels),
              ("decoder_segment_ids", decoder_segment_ids), ("task_ids", task_ids))  # fmt: skip
    batches = []
    for b, (first, size) in enumerate(zip(first_row.tolist(), rows_per_batch.tolist(), strict=True)):
        tensors = {name: torch.from_numpy(array[first : first + size]) for name, array in fields}
        tensors.update(
            (name, torch.from_numpy(array.astype(np.int64, copy=False))) for name, array in layouts[b].items()
        )
        batches.append(Batch(tensors, examples_per_batch[b], int(real_per_batch[b]),
                             size * (max_input_tokens + max_target_tokens)))  # fmt: skip
    return batches
