"""The training data of a process: resumable loader state, disjoint ranks, padded and packed batches."""

import pytest
import torch

from t2t.data import BatchLoader, LoaderState
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
