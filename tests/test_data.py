"""The training data of a process: resumable loader state, disjoint ranks, padded and packed batches."""

import math

import pytest
import torch

from t2t.batching import bucket_by_length, groups_mix_distance, pack
from t2t.data import BatchLoader, LoaderState, resolve_batching
from t2t.errors import T2TError
from t2t.train_config import BatchingSpec


def take(loader, n):
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def same(a, b):
    return a.tensors.keys() == b.tensors.keys() and all(
        torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors
    )


@pytest.mark.parametrize(
    "config",
    [
        BatchingSpec(strategy="packed", rows_per_batch=4, pack_input_tokens=64, window_examples=64),
        BatchingSpec(strategy="padded", max_tokens=400, batch_size=None, window_examples=64),
    ],
    ids=["packed", "padded"],
)
def test_resume_from_a_saved_state_continues_exactly(demo_data, config):
    loader = BatchLoader(demo_data, config)
    first = take(loader, 3)
    saved = loader.state_dict()
    rest = take(loader, 6)  # crosses into the next windows
    resumed = BatchLoader(demo_data, config, state=LoaderState(**saved))
    assert all(same(a, b) for a, b in zip(rest, take(resumed, 6), strict=True))
    assert not same(first[0], rest[0])


def test_window_holds_exactly_the_stream_slice_of_each_rank(demo_data):
    config = BatchingSpec(strategy="padded", batch_size=8, max_tokens=None, window_examples=32)
    one = BatchLoader(demo_data, config).window_examples(1)
    ranks = [BatchLoader(demo_data, config, rank=r, world_size=2).window_examples(0) for r in (0, 1)]
    assert [e.position for e in ranks[0]] == list(range(0, 64, 2))
    assert [e.position for e in ranks[1]] == list(range(1, 64, 2))
    assert [e.position for e in one] == list(range(32, 64))
    stream = demo_data.stream
    for example in ranks[1]:
        item = stream.item(example.position)
        assert example.task == demo_data.task_index[item.task]


def test_packed_batches_are_nearly_free_of_padding(demo_data):
    config = BatchingSpec(strategy="packed", rows_per_batch=8, pack_input_tokens=512, window_examples=2048)
    loader = BatchLoader(demo_data, config)
    # demo targets are about 1/6 of the inputs: the decoder row is sized from the data, rounded up to 8
    assert 64 <= loader.config.pack_target_tokens <= 104 and loader.config.pack_target_tokens % 8 == 0
    batches = loader.window_batches(0)
    real = sum(b.real_tokens for b in batches)
    assert sum(b.n_examples for b in batches) == 2048
    assert real / sum(b.total_tokens for b in batches) > 0.95


def test_packed_rows_shorter_than_the_limits_are_refused(demo_data):
    with pytest.raises(T2TError, match=r"batching\.pack_input_tokens=32 is shorter than max_input_tokens=64"):
        BatchLoader(demo_data, BatchingSpec(strategy="packed", pack_input_tokens=32, pack_target_tokens=24))


def test_padded_batches_respect_the_token_budget(demo_data):
    config = BatchingSpec(strategy="padded", max_tokens=300, batch_size=None, window_examples=256)
    batches = BatchLoader(demo_data, config).window_batches(0)
    assert sum(b.n_examples for b in batches) == 256
    assert all(b.total_tokens <= 300 or b.n_examples == 1 for b in batches)


# ------------------------------------------------------------------------------------ strategy: auto


def test_auto_packs_for_t5_with_rows_sized_to_the_budget_and_says_why(demo_data):
    config = BatchingSpec(max_tokens=2048, window_examples=2048)
    assert config.strategy == "auto"
    chosen, why = resolve_batching(demo_data, config, "t5")
    examples = BatchLoader(demo_data, BatchingSpec(strategy="padded", window_examples=2048)).window_examples(
        0
    )
    ratio = sum(len(e.labels) for e in examples) / sum(len(e.input_ids) for e in examples)
    # 2,048 slots in two rows of about 1,024, split by the data's target / input ratio (5% headroom, multiples of 8)
    row_input = int(1024 / (1 + ratio * 1.05)) // 8 * 8
    target = math.ceil(row_input * ratio * 1.05 / 8) * 8
    assert (chosen.strategy, chosen.rows_per_batch, chosen.pack_input_tokens, chosen.pack_target_tokens) == (
        "packed", 2, row_input, target)  # fmt: skip
    assert 1000 <= row_input + target <= 1032
    # the figures it gives are those of the first window, recomputed here
    rows = pack(examples, row_input, target)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    assert f"rows are {real / (len(rows) * (row_input + target)):.1%} real tokens" in why
    padded = bucket_by_length(examples, None, 2048)
    assert f"(padding: {groups_mix_distance(padded, 11):.2f}, total variation)" in why
    assert groups_mix_distance(padded, 11) > 0.5  # bucketing by length groups the tasks apart
    # a small budget: one short row, never shorter than the longest input allowed (64)
    small, _ = resolve_batching(demo_data, BatchingSpec(max_tokens=100), "t5")
    assert (small.rows_per_batch, small.pack_input_tokens) == (1, int(100 / (1 + ratio * 1.05)) // 8 * 8)
    tiny, _ = resolve_batching(demo_data, BatchingSpec(max_tokens=40), "t5")
    assert (tiny.rows_per_batch, tiny.pack_input_tokens) == (1, 64)
    # a row size given in the config is kept
    kept, _ = resolve_batching(demo_data, BatchingSpec(pack_input_tokens=256, rows_per_batch=3), "t5")
    assert (kept.strategy, kept.pack_input_tokens, kept.rows_per_batch) == ("packed", 256, 3)


def test_auto_pads_keeping_the_mix_for_models_with_absolute_positions(demo_data):
    chosen, why = resolve_batching(demo_data, BatchingSpec(), "bart")
    assert (chosen.strategy, chosen.keep_mix, chosen.max_tokens) == ("padded", True, 2048)
    assert (
        why
        == "padded, keeping each batch's task mix: bart models have absolute positions, which packing would shift"
    )
    by_examples, why = resolve_batching(demo_data, BatchingSpec(batch_size=8, max_tokens=None), "t5")
    assert (by_examples.strategy, by_examples.batch_size, by_examples.keep_mix) == ("padded", 8, False)
    set_padded, why = resolve_batching(demo_data, BatchingSpec(strategy="padded"), "t5")
    assert (set_padded.strategy, why) == ("padded", "padded, as set")
