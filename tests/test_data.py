"""The training data of a process: resumable loader state, disjoint ranks, padded and packed batches."""

import math
import random

import pytest
import torch
import yaml

from t2t.batching import Example, bucket_by_length, bucket_keeping_mix, groups_mix_distance, pack
from t2t.data import BatchLoader, LoaderState, MixtureData, densest_rows, densest_split, resolve_batching
from t2t.encoding import Limits
from t2t.errors import T2TError
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.train_config import BatchingSpec
from tests.conftest import qa_task, write_jsonl, write_task


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


def padded_share(examples, groups) -> float:
    """Real tokens over the token slots of padded batches of these groups (each padded to its longest)."""
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    return real / sum(
        len(g) * (max(len(e.input_ids) for e in g) + max(len(e.labels) for e in g)) for g in groups
    )


def test_auto_packs_for_t5_with_rows_sized_to_the_budget_and_says_why(demo_data):
    config = BatchingSpec(max_tokens=2048, window_examples=2048)
    assert config.strategy == "auto"
    chosen, why = resolve_batching(demo_data, config, "t5")
    examples = BatchLoader(demo_data, BatchingSpec(strategy="padded", window_examples=2048)).window_examples(
        0
    )
    ratio = sum(len(e.labels) for e in examples) / sum(len(e.input_ids) for e in examples)
    # 2,048 slots in two rows of about 1,024, first split by the data's target / input ratio (5% headroom,
    # multiples of 8) ...
    row_input = int(1024 / (1 + ratio * 1.05)) // 8 * 8
    target = math.ceil(row_input * ratio * 1.05 / 8) * 8
    row = row_input + target
    assert 1000 <= row <= 1032
    assert (chosen.strategy, chosen.rows_per_batch) == ("packed", 2)
    assert chosen.pack_input_tokens + chosen.pack_target_tokens == row
    # ... then moved to the split that packs the window into the fewest rows: no target side in steps of 8 from
    # half to twice the ratio's (inputs never below 64, targets never below 24) packs it into fewer
    chosen_rows = len(pack(examples, chosen.pack_input_tokens, chosen.pack_target_tokens))
    assert chosen_rows <= len(pack(examples, row_input, target))
    for side in range(24, min(row - 64, 2 * target) + 1, 8):
        assert len(pack(examples, row - side, side)) >= chosen_rows, side
    # the figures it gives are those of the first window, recomputed here
    rows = pack(examples, chosen.pack_input_tokens, chosen.pack_target_tokens)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    padded = bucket_by_length(examples, None, 2048)
    padded_real = padded_share(examples, padded)
    assert f"packed {real / (len(rows) * row):.1%} / " in why
    assert (
        f"length-bucketed padding (batching.strategy: padded) {padded_real:.1%} / {groups_mix_distance(padded, 11):.2f}"
        in why
    )
    assert groups_mix_distance(padded, 11) > 0.5  # bucketing by length groups the tasks apart
    assert why.startswith(f"packed (2 rows of {chosen.pack_input_tokens}+{chosen.pack_target_tokens} tokens): t5 "
                          "attends within each packed example, and its rows hold more real tokens than padded "
                          "batches keeping the task mix; on the stream's first 2048 examples, ")  # fmt: skip
    assert "over batching.max_tokens" not in why
    # a small budget: one short row, never shorter than the longest input allowed (64), nor longer than the
    # budget where the longest example fits it: the target side's floor (24) takes its slots from the input side
    small, why = resolve_batching(demo_data, BatchingSpec(max_tokens=100), "t5")
    assert (small.rows_per_batch, small.pack_input_tokens, small.pack_target_tokens) == (1, 72, 24)
    assert "over batching.max_tokens" not in why
    # a budget the longest example allowed does not fit (120 slots > 100): the row holds it, and says so
    registry = Registry.default()
    longer = MixtureData(load_mixture(registry, "demo"), registry, demo_data.tokenizer, Limits(96, 24))
    over, why = resolve_batching(longer, BatchingSpec(max_tokens=100), "t5")
    assert (over.strategy, over.pack_input_tokens, over.pack_target_tokens) == ("packed", 96, 24)
    assert why.endswith("; its batches take 120 token slots, over batching.max_tokens=100: a row holds the longest "
                        "example the limits allow (96+24)")  # fmt: skip
    # ... or, with sizes given in the config, that they are the config's
    given, why = resolve_batching(demo_data, BatchingSpec(max_tokens=512, pack_input_tokens=512), "t5")
    assert given.pack_input_tokens == 512 and why.endswith(
        f"its batches take {512 + given.pack_target_tokens} token slots, over batching.max_tokens=512: as "
        "batching.pack_input_tokens set")  # fmt: skip
    # a budget below the longest example allowed: a packed row would still take 64 + 24 slots, where padded batches
    # of at most 40 slots hold more real tokens
    tiny, why = resolve_batching(demo_data, BatchingSpec(max_tokens=40), "t5")
    assert (tiny.strategy, tiny.keep_mix, tiny.max_tokens) == ("padded", True, 40)
    assert "than packed rows (1 row of 64+24 tokens)" in why
    # a row size given in the config is kept
    kept, _ = resolve_batching(demo_data, BatchingSpec(pack_input_tokens=256, rows_per_batch=3), "t5")
    assert (kept.strategy, kept.pack_input_tokens, kept.rows_per_batch) == ("packed", 256, 3)
    sides, _ = resolve_batching(demo_data, BatchingSpec(pack_input_tokens=96, pack_target_tokens=40), "t5")
    assert (sides.strategy, sides.pack_input_tokens, sides.pack_target_tokens) == ("packed", 96, 40)


def test_the_densest_split_of_a_row_by_hand():
    # four input-heavy examples (12 + 2 tokens) and four target-heavy ones (2 + 6) alternating, rows of 40 slots
    examples = [
        Example([1] * 12, [1] * 2, 0) if i % 2 == 0 else Example([1] * 2, [1] * 6, 1) for i in range(8)
    ]
    limits = Limits(max_input_tokens=12, max_target_tokens=6)
    # 32 + 8: each row takes one of each and its target side is full: 4 rows. 24 + 16: rows of (12+2, 2+6, 2+6),
    # (12+2, 12+2) and (2+6, 12+2, 2+6): 3 rows, the fewest any split can give (56 input tokens in rows of 24)
    assert [len(pack(examples, 40 - t, t)) for t in (8, 16)] == [4, 3]
    assert densest_split(examples, 32, 8, limits) == (3, 24, 16)
    # from 24 + 16 no other split (target sides 8, 16 and 24, from half to twice 16 in steps of 8) does better
    assert densest_split(examples, 24, 16, limits) == (3, 24, 16)
    assert [len(pack(examples, 40 - t, t)) for t in (8, 16, 24)] == [4, 3, 4]
    # a tie keeps the split it was given
    assert densest_split(examples[:1], 32, 8, limits) == (1, 32, 8)
    # never a side below its token limit: inputs of up to 30 tokens leave at most 10 target slots, so 8 only
    assert densest_split(examples, 32, 8, Limits(max_input_tokens=30, max_target_tokens=6)) == (4, 32, 8)


def test_the_densest_split_tries_at_most_32_target_sides_of_a_long_row(monkeypatch):
    """Rows of a large budget would have hundreds of target sides in steps of 8 (each a packing of the window):
    where the range holds over 32 of them the step grows, in multiples of 8; a row of about 1,024 keeps every
    multiple of 8."""
    import t2t.data

    tried: list[int] = []

    def counting_pack(examples, input_tokens, target_tokens):
        tried.append(target_tokens)
        return pack(examples, input_tokens, target_tokens)

    monkeypatch.setattr(t2t.data, "pack", counting_pack)
    examples = [Example([1] * 300, [1] * 90, 0), Example([1] * 40, [1] * 3, 1)] * 20
    limits = Limits(max_input_tokens=512, max_target_tokens=128)
    # target sides from 1,000 to 4,000: 376 multiples of 8, tried in steps of 96 (8 * ceil(3000 / 8 / 32))
    densest_split(examples, 6000, 2000, limits)
    assert sorted(tried) == sorted({2000, *range(1000, 4001, 96)}) and len(tried) == 33
    # 128 to 288 (row 1,024, given 144): 21 multiples of 8, all tried
    tried.clear()
    densest_split(examples, 880, 144, limits)
    assert sorted(tried) == list(range(128, 289, 8))


def test_the_densest_row_count_by_hand():
    """Six examples at the limits (512 + 128 tokens) alternating with six short ones (8 + 2) under 2,048 slots:
    rows of about 1,024 hold one long example each, a third of them empty; three rows or one hold the window far
    more densely, and the densest is taken."""
    limits = Limits(max_input_tokens=512, max_target_tokens=128)
    examples = [
        Example([1] * 512, [1] * 128, 0) if i % 2 == 0 else Example([1] * 8, [1] * 2, 1) for i in range(12)
    ]
    real = 6 * 640 + 6 * 10
    # target / input ratio 780 / 3120 = 0.25; two rows of 1,024: 1024 / 1.2625 = 811 -> 808 input slots and
    # 808 * 0.2625 = 212.1 -> 216 target slots. Two long inputs (1,024) never share a row: 6 rows
    assert len(pack(examples, 808, 216)) == 6 and real / (6 * 1024) < 0.64
    # one row of 2,048: 2048 / 1.2625 = 1622 -> 1616 + 432: three long examples per row (1,536 + 384), 2 rows
    assert len(pack(examples, 1616, 432)) == 2 and f"{real / (2 * 2048):.4f}" == "0.9521"
    # three rows of 682: 682.7 / 1.2625 = 540 -> 536 input slots, 536 * 0.2625 = 140.7 -> 144 target slots: one
    # long example and the short ones beside it, 6 rows (no split of these 680 slots needs fewer)
    assert len(pack(examples, 536, 144)) == 6 and f"{real / (6 * 680):.4f}" == "0.9559"
    assert densest_rows(examples, 2048, limits) == (3, 536, 144)
    # a row count given is kept, at its densest split
    assert densest_rows(examples, 2048, limits, rows_per_batch=2) == (
        2,
        *densest_split(examples, 808, 216, limits)[1:],
    )
    # where no other count fills ROW_FILL_GAIN (1 point) more of its slots, rows of about 1,024 stay: 400 short
    # examples fill 4 rows of 808 + 216 (97.7 %), and 6 rows of 536 + 144 only 0.3 points more (98.0 %)
    shorts = [Example([1] * 8, [1] * 2, 1)] * 400
    assert len(pack(shorts, 808, 216)) == 4 and len(pack(shorts, 536, 144)) == 6
    assert densest_rows(shorts, 2048, limits)[0] == 2


def test_auto_pads_keeping_the_mix_where_packed_rows_would_hold_fewer_real_tokens(demo_data):
    # rows whose target side (200) dwarfs what the demo's examples need: packing fills them far less than padded
    # batches that keep the task mix, so auto pads (keeping the mix), and says why with the figures of both
    config = BatchingSpec(max_tokens=2048, pack_input_tokens=64, pack_target_tokens=200)
    chosen, why = resolve_batching(demo_data, config, "t5")
    assert (chosen.strategy, chosen.keep_mix, chosen.max_tokens) == ("padded", True, 2048)
    examples = BatchLoader(demo_data, BatchingSpec(strategy="padded", window_examples=2048)).window_examples(
        0
    )
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    packed_real = real / (len(pack(examples, 64, 200)) * 264)
    mixed = bucket_keeping_mix(examples, None, 2048)
    mixed_real = padded_share(examples, mixed)
    assert packed_real < 0.35 < mixed_real
    # (sides given, rows not: as many rows as fill the budget, 2048 // 264)
    assert why.startswith("padded, keeping each batch's task mix: its batches hold more real tokens than packed "
                          "rows (7 rows of 64+200 tokens); on the stream's first 2048 examples, real tokens / task mix "
                          f"distance from the mixture's (total variation): packed {packed_real:.1%} / ")  # fmt: skip
    assert f"padded keeping the mix {mixed_real:.1%} / {groups_mix_distance(mixed, 11):.2f}, " in why
    # keep_mix: false in the config: auto's padded batches are bucketed by length, and compared with packed rows as such
    bucketed_real = padded_share(examples, bucket_by_length(examples, None, 2048))
    assert packed_real < mixed_real < bucketed_real
    unmixed, why = resolve_batching(demo_data, config.model_copy(update={"keep_mix": False}), "t5")
    assert (unmixed.strategy, unmixed.keep_mix) == ("padded", False)
    assert why.startswith("padded, bucketed by length (batching.keep_mix: false): its batches hold more real tokens "
                          "than packed rows (7 rows of 64+200 tokens); ")  # fmt: skip
    # ... where packing is denser than bucketing (the demo's own rows), it still packs, and says against what
    packs, why = resolve_batching(demo_data, BatchingSpec(max_tokens=2048, keep_mix=False), "t5")
    assert (
        packs.strategy == "packed"
        and "and its rows hold more real tokens than length-bucketed padding;" in why
    )
    bart, why = resolve_batching(demo_data, BatchingSpec(keep_mix=False), "bart")
    assert (bart.strategy, bart.keep_mix) == ("padded", False)
    assert (
        why
        == "padded, bucketed by length (batching.keep_mix: false): bart models cannot pack (they use absolute positions, which packing would shift)"
    )


def test_auto_keeps_the_mix_first_where_padded_batches_meant_to_keep_it_do_not(tiny_tokenizer, tmp_path):
    """Two short tasks and one of 150-300-word inputs (a third of their rate) under a 512-slot budget: padded
    batches keeping the mix are denser, but a long example over half the budget fills a batch alone, so they are
    0.67 from the mixture's mix; packed rows keep it (0.17). auto takes packed rows and says why."""
    rng = random.Random(0)
    words = ["plum", "cat", "owl", "pear", "red", "blue", "seven", "nine", "the", "a", "sweet", "fun"]
    lengths = {"short_a": (3, 12, 1, 1), "short_b": (3, 15, 1, 2), "doc": (150, 300, 20, 40)}
    for name, (in_lo, in_hi, out_lo, out_hi) in lengths.items():
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "data.jsonl", [
            {"question": " ".join(rng.choices(words, k=rng.randint(in_lo, in_hi))),
             "answer": " ".join(rng.choices(words, k=rng.randint(out_lo, out_hi)))} for _ in range(300)
        ])  # fmt: skip
        write_task(tmp_path / name, qa_task(name=name))
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "longs.yaml").write_text(yaml.safe_dump({"name": "longs", "members": {"short_a": 1.0, "short_b": 1.0,
                                                                                     "doc": 0.3}}))  # fmt: skip
    registry = Registry.default(
        templates_dirs=[tmp_path / n for n in lengths], mixtures_dirs=[tmp_path / "mix"]
    )
    data = MixtureData(
        load_mixture(registry, "longs"), registry, tiny_tokenizer, Limits(512, 64), tmp_path / "cache"
    )
    config = BatchingSpec(max_tokens=512, window_examples=512)
    chosen, why = resolve_batching(data, config, "t5")
    examples = BatchLoader(data, config.model_copy(update={"strategy": "padded"})).window_examples(0)
    rows = pack(examples, chosen.pack_input_tokens, chosen.pack_target_tokens)
    packed_mix = groups_mix_distance([[examples[i] for i in row] for row in rows], 3)  # one row per batch
    mixed = bucket_keeping_mix(examples, None, 512)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    packed_real = real / (len(rows) * (chosen.pack_input_tokens + chosen.pack_target_tokens))
    # padded batches keeping the mix are denser, and do not keep it
    assert packed_real < padded_share(examples, mixed)
    assert groups_mix_distance(mixed, 3) > max(0.3, 2 * packed_mix, packed_mix + 0.1)
    assert (chosen.strategy, chosen.rows_per_batch) == ("packed", 1)
    assert why.startswith(f"packed (1 row of {chosen.pack_input_tokens}+{chosen.pack_target_tokens} tokens): t5 "
                          f"attends within each packed example, and its rows keep the task mix far better "
                          f"({packed_mix:.2f} from the mixture's, against {groups_mix_distance(mixed, 3):.2f} for "
                          "padded batches meant to keep it); on the stream's first 512 examples")  # fmt: skip
    # keep_mix: false says the mix of padded batches does not matter: real tokens decide
    unmixed, why = resolve_batching(data, config.model_copy(update={"keep_mix": False}), "t5")
    bucketed_real = padded_share(examples, bucket_by_length(examples, None, 512))
    assert unmixed.strategy == ("padded" if bucketed_real > packed_real else "packed")


def test_auto_pads_keeping_the_mix_for_models_with_absolute_positions(demo_data):
    chosen, why = resolve_batching(demo_data, BatchingSpec(), "bart")
    assert (chosen.strategy, chosen.keep_mix, chosen.max_tokens) == ("padded", True, 2048)
    assert why == ("padded, keeping each batch's task mix: bart models cannot pack (they use absolute positions, "
                   "which packing would shift)")  # fmt: skip
    # LongT5 has T5's relative positions, but attends over fixed blocks of the row (until 2026-12-05 the reason
    # given was absolute positions)
    chosen, why = resolve_batching(demo_data, BatchingSpec(), "longt5")
    assert chosen.strategy == "padded"
    assert why == ("padded, keeping each batch's task mix: longt5 models cannot pack (their local and "
                   "transient-global attention is computed over fixed blocks of the whole row, which a mask cannot "
                   "confine to one packed example)")  # fmt: skip
    by_examples, why = resolve_batching(demo_data, BatchingSpec(batch_size=8, max_tokens=None), "t5")
    assert (by_examples.strategy, by_examples.batch_size, by_examples.keep_mix) == ("padded", 8, True)
    assert why == ("padded, keeping each batch's task mix: batching.batch_size counts examples per padded batch "
                   "(give max_tokens to let auto pack)")  # fmt: skip
    set_padded, why = resolve_batching(demo_data, BatchingSpec(strategy="padded"), "t5")
    assert (set_padded.strategy, why) == ("padded", "padded, as set")
