"""Mixtures: seqio's rate formula on hand-computed cases, nesting, held-out rules, the stream's guarantees."""

import json
import math
import zlib
from collections import Counter

import pytest
import yaml

from t2t.errors import T2TError
from t2t.mixtures import RateSpec, load_mixture, report, rule_rate, stream_for
from t2t.registry import Registry, shipped_dir
from t2t.rng import choose_template
from t2t.sampler import MixtureStream
from tests.conftest import write_task


def gen_task(name, n, cluster="c1", generator="reverse_words", seed=None):
    return {
        "name": name, "version": 1, "cluster": cluster,
        "source": {"kind": "generator", "generator": generator, "sizes": {"train": n, "validation": 5},
                   "seed": seed if seed is not None else zlib.crc32(name.encode()) % 1000},  # stable across runs
        "fields": {"words": "", "answer": ""},
        "templates": [{"name": "a", "input": "r {{ words }}", "target": "{{ answer }}"},
                      {"name": "b", "input": "s {{ words }}", "target": "{{ answer }}"}],
        "golden": [],
    }  # fmt: skip


@pytest.fixture
def world(tmp_path):
    """Tasks a (100 rows), b (400), c (1600) in cluster c1, d (25) in c2; mixtures go in tmp_path/mixtures."""
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    for name, n, cluster in (("ta", 100, "c1"), ("tb", 400, "c1"), ("tc", 1600, "c1"), ("td", 25, "c2")):
        write_task(tasks, gen_task(name, n, cluster))

    def mixture(name, **spec):
        (mixtures / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **spec}, sort_keys=False))
        return Registry([tasks], [mixtures])

    return mixture


def probabilities(mixture):
    return {m.task: m.probability for m in mixture.members}


@pytest.mark.parametrize(
    ("n", "scale", "cap", "temperature", "expected"),
    [
        (1000, 1.0, None, 1.0, 1000.0),
        (1000, 0.5, 300, 1.0, 300.0),  # min(0.5 * 1000, 300)
        (100, 2.0, None, 2.0, math.sqrt(200)),  # (2 * 100) ** (1 / 2)
        (5000, 1.0, 2000, 2.0, math.sqrt(2000)),  # the cap applies before the temperature
        (64, 1.0, None, 3.0, 4.0),  # 64 ** (1 / 3)
        (10, 1.0, 0, 1.0, 0.0),
    ],
)
def test_rule_rate_matches_the_formula(n, scale, cap, temperature, expected):
    rate = RateSpec(rule="examples", scale=scale, cap=cap, temperature=temperature)
    assert rule_rate(n, rate) == pytest.approx(expected, rel=1e-12)
    assert rule_rate(n, RateSpec(rule="uniform", cap=cap)) == 1.0


def test_examples_proportional_with_temperature(world):
    # rates sqrt(100), sqrt(400), sqrt(1600) = 10, 20, 40 -> 1/7, 2/7, 4/7
    registry = world(
        "m", members={"ta": None, "tb": None, "tc": None}, rate={"rule": "temperature", "temperature": 2}
    )
    assert probabilities(load_mixture(registry, "m")) == pytest.approx(
        {"ta": 1 / 7, "tb": 2 / 7, "tc": 4 / 7}
    )


def test_cap_and_explicit_weights(world):
    # K = 400: rates 100, 400, 400 (tc capped); td has an explicit weight of 100 -> 0.1, 0.4, 0.4, 0.1
    registry = world("m", members={"cluster:c1": None, "td": 100}, rate={"rule": "examples", "cap": 400})
    mixture = load_mixture(registry, "m")
    assert probabilities(mixture) == pytest.approx({"ta": 0.1, "tb": 0.4, "tc": 0.4, "td": 0.1})
    assert [m.capped for m in mixture.members] == [False, False, True, False]
    assert [m.via for m in mixture.members] == ["cluster:c1"] * 3 + ["td"]


def test_nested_mixture_shares_its_weight_in_proportion(world):
    world("child", members={"ta": 1, "tb": 3})
    registry = world("parent", members={"child": 3.0, "tc": 1.0})
    # child's 3.0 is shared 1:3 -> ta 0.75, tb 2.25; tc 1.0; total 4
    assert probabilities(load_mixture(registry, "parent")) == pytest.approx(
        {"ta": 0.1875, "tb": 0.5625, "tc": 0.25}
    )


def test_nested_mixture_without_weight_counts_its_tasks_under_the_parent_rule(world):
    world("child", members={"ta": 1, "tb": 1}, rate={"rule": "uniform"})
    registry = world("parent", members={"child": None, "tc": None}, rate={"rule": "examples"})
    # child's rate = 100 + 400 = 500, shared 1:1 -> 250 each; tc 1600; total 2100
    expected = {"ta": 250 / 2100, "tb": 250 / 2100, "tc": 1600 / 2100}
    assert probabilities(load_mixture(registry, "parent")) == pytest.approx(expected)


def test_globs_and_clusters_skip_held_out_tasks(world):
    registry = world("m", members={"t*": None}, held_out=["tb", "cluster:c2"], rate={"rule": "uniform"})
    mixture = load_mixture(registry, "m")
    assert mixture.task_names == ["ta", "tc"] and mixture.held_out == ("tb", "td")


BAD_MIXTURES = [
    (
        "unknown_task",
        {"members": {"taa": None, "ta": None}},
        r"unknown task or mixture 'taa' \(did you mean 'ta'",
    ),
    ("negative", {"members": {"ta": -1.0}}, r"members\.ta: a weight must be a finite number >= 0, got -1\.0"),
    (
        "nan",
        {"members": {"ta": float("nan")}},
        r"members\.ta: a weight must be a finite number >= 0, got nan",
    ),
    ("string", {"members": {"ta": "1.5"}}, r"members\.ta: a weight must be a number, got '1\.5'"),
    ("boolean", {"members": {"ta": True}}, r"members\.ta: a weight must be a number, got True"),
    ("zero_sum", {"members": {"ta": 0, "tb": 0.0}}, r"the members' weights sum to zero"),
    ("cap_zero", {"members": {"ta": None}, "rate": {"cap": 0}}, r"the members' weights sum to zero"),
    (
        "negative_cap",
        {"members": {"ta": None}, "rate": {"cap": -5}},
        r"rate\.cap: Input should be greater than or equal to 0",
    ),
    (
        "zero_temperature",
        {"members": {"ta": None}, "rate": {"temperature": 0}},
        r"rate\.temperature: Input should be greater than 0",
    ),
    (
        "negative_temperature",
        {"members": {"ta": None}, "rate": {"temperature": -1}},
        r"rate\.temperature: Input should be greater than 0",
    ),
    (
        "unknown_rule",
        {"members": {"ta": None}, "rate": {"rule": "proportional"}},
        r"rate\.rule: Input should be 'uniform', 'examples' or 'temperature'",
    ),
    ("empty", {"members": {}}, r"members: Dictionary should have at least 1 item"),
    ("unknown_key", {"members": {"ta": None}, "heldout": ["tb"]}, r"unknown key 'heldout'"),
    (
        "held_out_trained",
        {"members": {"ta": None, "tb": None}, "held_out": ["tb"]},
        r"task 'tb' is held out but also listed as a training member",
    ),
    (
        "twice",
        {"members": {"ta": None, "cluster:c1": None}},
        r"task 'ta' is selected twice: by 'ta' and by 'cluster:c1'",
    ),
    ("unknown_cluster", {"members": {"cluster:c11": None}}, r"unknown cluster 'c11' \(did you mean 'c1'"),
    ("empty_glob", {"members": {"zz*": None}}, r"the pattern 'zz\*' matches no task"),
]


@pytest.mark.parametrize(("case", "spec", "pattern"), BAD_MIXTURES, ids=[c[0] for c in BAD_MIXTURES])
def test_bad_mixture_is_one_clear_line(world, run_cli, case, spec, pattern):
    registry = world("m", **spec)
    with pytest.raises(T2TError, match=pattern) as info:
        load_mixture(registry, "m")
    assert "m.yaml" in str(info.value) and "\n" not in str(info.value)
    code, out, err = run_cli("--templates-dir", registry.template_dirs[-1], "--mixtures-dir",
                             registry.mixture_dirs[-1], "mixture", "show", "m")  # fmt: skip
    assert code == 2 and out == "" and err.startswith("t2t: error: ") and err.count("\n") == 1


def test_held_out_task_without_the_eval_split(world):
    registry = world("m", members={"ta": None}, held_out=["tb"], splits={"train": "train", "eval": "dev"})
    with pytest.raises(
        T2TError, match=r"held-out task 'tb' has no 'dev' split to evaluate on \(it has train, validation\)"
    ):
        load_mixture(registry, "m")


def test_cycle_of_nested_mixtures(world):
    world("one", members={"two": 1.0})
    registry = world("two", members={"one": 1.0, "ta": 1.0})
    with pytest.raises(T2TError, match=r"mixtures nest in a cycle: one -> two -> one"):
        load_mixture(registry, "one")


def test_unknown_mixture_suggests(world):
    registry = world("demo_mix", members={"ta": None})
    with pytest.raises(T2TError, match=r"unknown mixture 'demo_mx' \(did you mean 'demo_mix'\?\)"):
        load_mixture(registry, "demo_mx")


def test_held_out_task_sharing_data_with_a_training_task(tmp_path):
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    write_task(tasks, gen_task("rte_a", 50, seed=7))
    write_task(tasks, gen_task("rte_b", 50, seed=7))  # same generator and seed: the same rows
    (mixtures / "m.yaml").write_text(
        yaml.safe_dump({"name": "m", "members": {"rte_a": None}, "held_out": ["rte_b"]})
    )
    with pytest.raises(
        T2TError, match=r"held-out task 'rte_b' and training task 'rte_a' are built on the same data"
    ):
        load_mixture(Registry([tasks], [mixtures]), "m")


# ------------------------------------------------------------------------------------------ stream

NAMES, PROBS, SIZES = ["a", "b", "c", "d"], [0.55, 0.3, 0.1, 0.05], [300, 120, 17, 4]


def make_stream(seed=5, block_size=512):
    return MixtureStream(NAMES, PROBS, SIZES, [("x", "y", "z")] * 4, seed=seed, block_size=block_size)


def test_empirical_proportions_match_the_probabilities():
    counts = Counter(item.task for item in make_stream().items(0, 100_000))
    for name, p in zip(NAMES, PROBS, strict=True):
        # Stratified blocks keep every task within a block's rounding of k * p: far tighter than i.i.d. sampling.
        assert abs(counts[name] / 100_000 - p) < 0.001, (name, counts[name])


def test_stream_started_at_k_equals_the_full_stream_from_k():
    full = make_stream().items(0, 6000)
    for k in (0, 1, 511, 512, 2047, 5000):
        assert make_stream().items(k, 1000) == full[k : k + 1000]
    far = make_stream().item(10**9)
    assert far == make_stream().items(10**9 - 3, 4)[-1] and far.position == 10**9


@pytest.mark.parametrize("block_size", [7, 512])
@pytest.mark.parametrize("start, stride", [(0, 1), (505, 1), (3, 2), (10**12 + 1, 3), (0, 8)])
def test_items_equal_item_at_every_position(block_size, start, stride):
    # `items` works a block at a time with arrays; `item` is one position at a time: across block boundaries,
    # task epochs (task d has 4 rows), templates, strides and far positions they must agree
    def build():
        templates = [("x", "y", "z"), ("x", "y"), ("x",), tuple("pqrstu")]
        return MixtureStream(NAMES, PROBS, SIZES, templates, seed=3, block_size=block_size)

    stream, reference = build(), build()  # separate caches: `item` must not read what `items` left behind
    got = stream.items(start, 2500, stride)
    assert got == [reference.item(start + i * stride) for i in range(2500)]
    assert {type(v) for item in got for v in item} == {int, str}  # plain ints, as `item` gives
    assert len({item.epoch for item in got if item.task == "d"}) > 10
    assert stream.items(start, 0, stride) == []


def test_two_ranks_together_give_the_one_rank_stream():
    one = make_stream().items(100, 4000)
    rank0 = make_stream().iterate(start=100, rank=0, world_size=2)
    rank1 = make_stream().iterate(start=100, rank=1, world_size=2)
    interleaved = [item for _ in range(2000) for item in (next(rank0), next(rank1))]
    assert interleaved == one


def test_no_row_repeats_inside_a_task_epoch():
    items = make_stream().items(0, 30_000)
    for name, size in zip(NAMES, SIZES, strict=True):
        mine = [i for i in items if i.task == name]
        assert [i.occurrence for i in mine] == list(range(len(mine)))
        epochs = {}
        for item in mine:
            epochs.setdefault(item.epoch, []).append(item.row)
        for epoch, rows in epochs.items():
            assert len(rows) == len(set(rows)), (name, epoch)
            if epoch < max(epochs):
                assert sorted(rows) == list(range(size))
        assert epochs[0] != epochs[1], "each epoch has its own order"


def test_stream_depends_on_the_seed_and_templates_vary_per_epoch():
    assert make_stream(seed=1).items(0, 200) != make_stream(seed=2).items(0, 200)
    item_templates = Counter(i.template for i in make_stream().items(0, 3000))
    assert set(item_templates) == {"x", "y", "z"}


def test_the_stream_chooses_templates_as_choose_template_does():
    # the stream hashes with the key's prefix built once; `t2t render` and Task.choose call choose_template
    stream = MixtureStream(
        NAMES, PROBS, SIZES, [("x", "y", "z"), ("x", "y"), ("x",), tuple("pqrstu")], seed=5
    )
    for item in stream.items(0, 5000):
        options = stream.templates[NAMES.index(item.task)]
        assert item.template == options[choose_template(5, item.task, item.occurrence, len(options))]
        assert stream.item(item.position) == item


# ----------------------------------------------------------------------------------- shipped and CLI


@pytest.mark.parametrize("name", sorted(Registry.default().mixture_files))
def test_shipped_mixtures_resolve_and_report(name):
    registry = Registry.default()
    mixture = load_mixture(registry, name, sizes="try")  # the tests run with the hub switched off
    result = report(mixture, registry, steps=100, batch_size=8)
    assert mixture.held_out
    assert set(mixture.task_names).isdisjoint(mixture.held_out)
    if name.startswith("t0_train"):  # over promptsource's hub datasets: planned without row counts
        assert set(result["needs_hub"]) == {*mixture.task_names, *mixture.held_out}
        assert all(row["probability"] is None for row in result["tasks"] if not row["held_out"])
    else:
        assert not result["needs_hub"]
        assert sum(row["probability"] for row in result["tasks"]) == pytest.approx(1.0)


T0_HELD_OUT = {"ps_anli_r1", "ps_anli_r2", "ps_anli_r3", "ps_super_glue_cb", "ps_super_glue_rte",
               "ps_super_glue_copa", "ps_hellaswag", "ps_story_cloze_2016", "ps_winogrande_winogrande_xl",
               "ps_super_glue_wsc_fixed", "ps_super_glue_wic"}  # fmt: skip


def _original(registry, task):
    return tuple(
        t.name for t in registry.task(task).spec.templates if t.metadata.get("original_task") is True
    )


def test_t0_train_trains_every_template_and_scores_the_held_out_set_with_original_task_templates():
    registry = Registry.default()
    mixture = load_mixture(registry, "t0_train", sizes="skip")
    assert len(mixture.members) == 38 and set(mixture.held_out) == T0_HELD_OUT
    assert mixture.spec.rate.per_template and mixture.spec.rate.cap == 500_000
    for m in mixture.members:
        assert m.templates == registry.task(m.task).template_names
    # ANLI's rounds are tasks of their own, on the dataset's round splits
    assert registry.task("ps_anli_r2").spec.source.splits == {"train": "train_r2", "validation": "dev_r2",
                                                              "test": "test_r2"}  # fmt: skip
    hellaswag = mixture.held_out_templates["ps_hellaswag"]
    assert hellaswag == _original(registry, "ps_hellaswag") and len(hellaswag) == 4
    assert len(registry.task("ps_hellaswag").template_names) == 11  # 7 of them generate, not complete


def test_t0_train_original_filters_training_and_held_out_templates():
    registry = Registry.default()
    mixture = load_mixture(registry, "t0_train_original", sizes="skip")
    assert len(mixture.members) == 35  # App Reviews, Hotpot QA and QuaRel have no original-task template
    for m in mixture.members:
        assert m.templates == _original(registry, m.task) and m.templates
    assert mixture.held_out_templates["ps_hellaswag"] == _original(registry, "ps_hellaswag")


def test_a_mixture_that_needs_hub_counts_refuses_to_train_and_plans_offline(tmp_path, run_cli):
    registry = Registry.default()
    with pytest.raises(T2TError, match="cannot load hub dataset"):
        load_mixture(registry, "t0_train")  # training needs every count
    with pytest.raises(T2TError, match="need the hub"):
        stream_for(load_mixture(registry, "t0_train", sizes="skip"), registry)
    code, out, _ = run_cli("mixture", "show", "t0_train")
    assert code == 0
    assert "the row counts of 49 tasks need the hub" in out
    assert "ps_super_glue_wsc_fixed" in out


def test_demo_mixture_holds_out_a_whole_untrained_cluster():
    registry = Registry.default()
    mixture = load_mixture(registry, "demo")
    trained = {registry.task(t).spec.cluster for t in mixture.task_names}
    held = {registry.task(t).spec.cluster for t in mixture.held_out}
    assert len(mixture.held_out) >= 2 and held.isdisjoint(trained)


def test_t0_style_mixture_holds_out_t0_task_types():
    registry = Registry.default()
    mixture = load_mixture(registry, "t0_style")
    held = {registry.task(t).spec.cluster for t in mixture.held_out}
    assert held == {"nli", "coreference", "sentence_completion", "word_sense"}


def test_mixture_show_json(run_cli):
    code, out, _ = run_cli("mixture", "show", "demo", "--steps", "2000", "--batch-size", "32", "--json")
    assert code == 0
    result = json.loads(out)
    rows = {row["task"]: row for row in result["tasks"]}
    assert {t for t, r in rows.items() if r["held_out"]} == {"color_check", "sum_check", "alphabet_first"}
    # demo: K = 2000, T = 2 -> reverse_words (6000 rows) is capped at sqrt(2000); sentiment has sqrt(60)
    assert rows["reverse_words"]["rate"] == pytest.approx(math.sqrt(2000)) and rows["reverse_words"]["capped"]
    assert rows["sentiment"]["rate"] == pytest.approx(math.sqrt(60)) and not rows["sentiment"]["capped"]
    for row in rows.values():
        assert row["expected_drawn"] == pytest.approx(row["probability"] * 64_000)
    assert any(w.startswith("task sentiment repeats 21x") for w in result["warnings"])


def test_mixture_sample_is_the_stream(run_cli):
    code, out, _ = run_cli("mixture", "sample", "demo", "--start", "123456", "--count", "5", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    registry = Registry.default()
    items = stream_for(load_mixture(registry, "demo"), registry).items(123456, 5)
    assert [(r["position"], r["task"], r["template"]) for r in records] == [
        (i.position, i.task, i.template) for i in items
    ]
    assert all(r["input"] and r["target"] and r["split"] == "train" for r in records)


def test_mixture_sample_prints_a_long_count_in_chunks_and_refuses_a_last_position_past_the_stream(
    run_cli, monkeypatch
):
    # --count 10^8 held every record before printing (killed for memory); now SAMPLE_CHUNK positions at a time
    import t2t.cli

    monkeypatch.setattr(t2t.cli, "SAMPLE_CHUNK", 7)
    code, out, _ = run_cli("mixture", "sample", "demo", "--start", "995", "--count", "17", "--json")
    assert code == 0
    registry = Registry.default()
    items = stream_for(load_mixture(registry, "demo"), registry).items(995, 17)
    assert [(r["position"], r["task"], r["row"] >= 0) for r in map(json.loads, out.splitlines())] == [
        (i.position, i.task, True) for i in items
    ]
    # the last position is checked before the first chunk prints
    code, out, err = run_cli("mixture", "sample", "demo", "--start", str(2**50 - 10), "--count", "20")
    assert code == 2 and out == "" and f"stream position {2**50 + 9} is outside [0, 2^50)" in err


def test_mixtures_lists_shipped(run_cli):
    code, out, _ = run_cli("mixtures")
    assert code == 0 and out.startswith("demo ") and "t0_style" in out


def test_name_both_task_and_mixture(tmp_path, run_cli):
    (tmp_path / "add_numbers.yaml").write_text("name: add_numbers\nmembers: {sort_words: 1}\n")
    code, _, err = run_cli("--mixtures-dir", tmp_path, "mixtures")
    assert code == 2 and "'add_numbers' names both a mixture and the task" in err


def test_shipped_dir_is_the_checkout_here():
    assert shipped_dir("mixtures").name == "mixtures"


def test_mixture_show_says_which_batching_auto_picks_for_a_model(run_cli, tiny_tokenizer, tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    from t2t.modeling import build_tiny_t5
    from t2t.train_config import TinyModelSpec

    t5_dir, bart_dir = tmp_path / "t5", tmp_path / "bart"
    build_tiny_t5(
        TinyModelSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64), tiny_tokenizer
    ).save_pretrained(t5_dir)
    bart = BartConfig(vocab_size=len(tiny_tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)  # fmt: skip
    BartForConditionalGeneration(bart).save_pretrained(bart_dir)
    for folder in (t5_dir, bart_dir):
        tiny_tokenizer.save_pretrained(folder)

    code, out, _ = run_cli("mixture", "show", "demo", "--model", t5_dir, "--max-input-tokens", "64", "--json")
    # in-process, DeepSpeed's import-time notice lands on the captured stdout (the console script sends it to
    # stderr); the JSON is the rest
    batching = json.loads(out[out.index("{") :])["batching"]
    assert code == 0 and (batching["model"], batching["strategy"]) == (str(t5_dir), "packed")
    assert (
        batching["why"].startswith("packed (2 rows of ")
        and "t5 attends within each packed example" in batching["why"]
    )
    code, out, _ = run_cli("mixture", "show", "demo", "--model", bart_dir)
    assert code == 0 and (
        f"batching (strategy: auto) for {bart_dir}: padded, keeping each batch's task mix: bart models cannot pack "
        "(they use absolute positions, which packing would shift)" in " ".join(out.split())
    )
    code, out, _ = run_cli("mixture", "show", "demo")
    assert "--model NAME_OR_DIR shows the choice for a model" in " ".join(out.split())
    code, out, err = run_cli("mixture", "show", "demo", "--max-tokens", "100")
    assert (code, out) == (2, "") and err.strip() == (
        "t2t: error: --max-tokens is for --model (which batching auto picks for a model); give --model too"
    )
