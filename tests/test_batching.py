"""Batching specified by hand-written integer lists, as seqio specifies its packer."""

from pathlib import Path

import pytest
import torch

from t2t.batching import (
    IGNORE,
    Example,
    bucket_by_length,
    bucket_keeping_mix,
    pack,
    packed_batch,
    pad_batch,
    task_mix_distance,
)
from t2t.modeling import packed_attention_masks

E0 = Example(input_ids=[3, 9, 1], labels=[4, 1], task=0)
E1 = Example(input_ids=[5, 1], labels=[6, 7, 1], task=1)
E2 = Example(input_ids=[8, 8, 8, 1], labels=[2, 1], task=0)


def as_lists(batch):
    """The batch's tensors as lists, without the packed attention layout (tests/test_segment_attention.py)."""
    return {k: v.tolist() for k, v in batch.tensors.items() if not k.startswith("segments.")}


def test_pack_first_fit_in_stream_order():
    # E0 opens row 0; E1 (in 2, out 3) fits its remaining 3 + 3 slots; E2 (in 4) needs a new row.
    assert pack([E0, E1, E2], max_input_tokens=6, max_target_tokens=5) == [[0, 1], [2]]


def test_pack_first_fit_closes_full_rows_and_refuses_an_oversized_example():
    a, b, c, d, e = (
        Example([5] * n_in, [6] * n_out, 0) for n_in, n_out in [(4, 1), (3, 1), (2, 1), (2, 2), (2, 1)]
    )
    # a opens row 0 (2 + 3 slots left); b (3 inputs) needs row 1; c fits row 0 first, leaving 0 inputs: row 0 closes
    # (the shortest input is 2); d goes to row 1, leaving 1 + 1: it closes; e opens row 2
    assert pack([a, b, c, d, e], max_input_tokens=6, max_target_tokens=4) == [[0, 2], [1, 3], [4]]
    with pytest.raises(ValueError, match=r"example of 7 \+ 1 tokens does not fit a packed row"):
        pack([a, Example([5] * 7, [6], 0), Example([5] * 9, [6], 0)], max_input_tokens=6, max_target_tokens=4)


def test_packed_batch_golden():
    batch = packed_batch([E0, E1, E2], [[0, 1], [2]], max_input_tokens=6, max_target_tokens=5)
    assert as_lists(batch) == {
        "input_ids":           [[3, 9, 1, 5, 1, 0], [8, 8, 8, 1, 0, 0]],
        "encoder_segment_ids": [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]],
        "labels":              [[4, 1, 6, 7, 1], [2, 1, IGNORE, IGNORE, IGNORE]],
        "decoder_segment_ids": [[1, 1, 2, 2, 2], [1, 1, 0, 0, 0]],
        # shifted right within each segment: every segment starts again with the decoder start token 0
        "decoder_input_ids":   [[0, 4, 0, 6, 7], [0, 2, 0, 0, 0]],
        "task_ids":            [[0, 0, 1, 1, 1], [0, 0, -1, -1, -1]],
    }  # fmt: skip
    assert (batch.n_examples, batch.real_tokens, batch.total_tokens) == (3, 16, 22)
    # and the layout of its segments: encoder lengths 3, 2 | 4, blocks [2] and [3 (padded), 4]; decoder 2, 3 | 2
    assert batch.tensors["segments.enc.gather_q"].tolist() == [
        3,
        4,
        0,
        1,
        2,
        0,
        6,
        7,
        8,
        9,
    ]  # padding reads 0
    assert batch.tensors["segments.dec.0.q"].tolist() == [[0, 1], [5, 6]]


def test_decoder_shift_restarts_per_segment_seqio_example():
    a, b = Example([7, 1], [3, 9, 1], 0), Example([6, 1], [4, 1], 0)
    batch = packed_batch([a, b], [[0, 1]], max_input_tokens=4, max_target_tokens=5)
    assert batch.tensors["labels"].tolist() == [[3, 9, 1, 4, 1]]
    assert batch.tensors["decoder_segment_ids"].tolist() == [[1, 1, 1, 2, 2]]
    assert batch.tensors["decoder_input_ids"].tolist() == [[0, 3, 9, 0, 4]]


def test_packed_attention_masks_golden():
    enc = torch.tensor([[1, 1, 2, 0]])
    dec = torch.tensor([[1, 1, 2, 0]])
    enc_mask, dec_mask, cross_mask = packed_attention_masks(enc, dec, torch.float32)
    assert enc_mask.shape == (1, 1, 4, 4) and cross_mask.shape == (1, 1, 4, 4)
    allowed = [(m[0, 0] == 0).int().tolist() for m in (enc_mask, dec_mask, cross_mask)]
    assert allowed[0] == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # padding sees itself
    assert allowed[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # causal within segment
    assert allowed[2] == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]  # same example only
    assert enc_mask.min().item() == torch.finfo(torch.float32).min  # additive, not boolean


def test_pad_batch_golden():
    batch = pad_batch([E0, E1])
    assert as_lists(batch) == {
        "input_ids":         [[3, 9, 1], [5, 1, 0]],
        "attention_mask":    [[1, 1, 1], [1, 1, 0]],
        "decoder_input_ids": [[0, 4, 0], [0, 6, 7]],
        "labels":            [[4, 1, IGNORE], [6, 7, 1]],
        "task_ids":          [[0, 0, -1], [1, 1, 1]],
    }  # fmt: skip
    assert (batch.real_tokens, batch.total_tokens) == (10, 12)


def test_bucket_to_a_token_budget():
    a, b, c, d = (Example([1] * n_in, [1] * n_out, 0) for n_in, n_out in ((2, 1), (3, 1), (3, 2), (6, 2)))
    # sorted by length; a batch grows while (examples) x (longest input + longest target) <= 12
    assert bucket_by_length([d, c, b, a], batch_size=None, max_tokens=12) == [[a, b], [c], [d]]
    assert bucket_by_length([d, c, b, a], batch_size=3, max_tokens=None) == [[a, b, c], [d]]


def test_pack_keeps_every_example_once_and_within_limits():
    import random

    rng = random.Random(0)
    examples = [Example([5] * rng.randint(2, 30), [6] * rng.randint(2, 9), i % 4) for i in range(500)]
    rows = pack(examples, max_input_tokens=64, max_target_tokens=16)
    assert sorted(i for row in rows for i in row) == list(range(500))
    for row in rows:
        assert sum(len(examples[i].input_ids) for i in row) <= 64
        assert sum(len(examples[i].labels) for i in row) <= 16
    batch = packed_batch(examples, rows, 64, 16)
    assert batch.real_tokens == sum(len(e.input_ids) + len(e.labels) for e in examples)


def test_bucketing_that_keeps_the_task_mix_by_hand():
    def ex(task, n_in, n_out=1):
        return Example(list(range(2, 2 + n_in)), [1] * n_out, task)

    t0 = [ex(0, n) for n in (4, 1, 3, 2)]
    t1 = [ex(1, 20), ex(1, 10)]
    plain = bucket_by_length([*t0, *t1], 3, None)  # by length alone: one batch of task 0 only
    assert [[(e.task, len(e.input_ids)) for e in b] for b in plain] == [[(0, 1), (0, 2), (0, 3)],
                                                                       [(0, 4), (1, 10), (1, 20)]]  # fmt: skip
    kept = bucket_keeping_mix(
        [*t0, *t1], 3, None
    )  # as many batches, each task's length runs spread over them
    assert [[(e.task, len(e.input_ids)) for e in b] for b in kept] == [[(0, 1), (0, 2), (1, 10)],
                                                                      [(0, 3), (0, 4), (1, 20)]]  # fmt: skip
    # a budget of 40 slots: by length, [1, 2, 3, 4], [10], [20]; keeping the mix, 3 runs per task give
    # [1, 2, 10] (3 x 11 = 33 slots, fits), [3, 20] (2 x 21 = 42, halved by length into [3] and [20]), [4]
    assert len(bucket_by_length([*t0, *t1], None, 40)) == 3
    budget = bucket_keeping_mix([*t0, *t1], None, 40)
    assert [[len(e.input_ids) for e in b] for b in budget] == [[1, 2, 10], [3], [20], [4]]


def test_task_mix_distance_by_hand():
    one_each = [pad_batch([Example([5], [1, 1], 0), Example([5], [1, 1], 1)])] * 2
    assert task_mix_distance(one_each, 2) == 0.0
    apart = [pad_batch([Example([5], [1, 1], 0)]), pad_batch([Example([5], [1, 1], 1)])]
    assert task_mix_distance(apart, 2) == 0.5  # each batch: (1, 0) against (0.5, 0.5)
    skewed = [
        pad_batch([Example([5], [1, 1, 1], 0), Example([5], [1], 1)]),
        pad_batch([Example([5], [1, 1], 2)]),
    ]
    # overall label tokens (3, 1, 2) / 6; batch 1 (3, 1, 0) / 4: TV 1/3; batch 2 (0, 0, 1): TV 2/3
    assert task_mix_distance(skewed, 3) == pytest.approx(0.5)


def test_keep_mix_is_for_padded_batches():
    from t2t.errors import T2TError
    from t2t.train_config import load_train_config

    config = load_train_config(Path("configs/tiny_cpu.yaml"), ["batching.keep_mix=true"])
    assert config.batching.keep_mix and config.batching.strategy == "auto"  # applies where auto pads
    with pytest.raises(T2TError, match=r"batching\.keep_mix is for padded batches"):
        load_train_config(
            Path("configs/tiny_cpu.yaml"), ["batching.strategy=packed", "batching.keep_mix=true"]
        )
