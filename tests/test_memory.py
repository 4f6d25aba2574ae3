"""A model that cannot fit is refused in one line before anything runs (t2t.memory), through the real CLI: a
training config whose model alone exceeds the machine, and model dirs whose weights do. The sizes are far past any
machine's memory (hundreds of thousands of GB and more), so the tests hold on every machine; the weights files are
sparse (a terabyte that takes no disk). The parameter counts are checked against the models themselves."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from transformers import T5Config

from t2t.memory import (
    count_parameters,
    host_available,
    on_gpu,
    safetensors_parameters,
    tiny_parameters,
    training_bytes,
)
from t2t.modeling import build_tiny_t5
from t2t.train_config import TinyModelSpec
from tests.conftest import snapshot
from tests.test_faults import one_line
from tests.test_run_checks import config_file, world  # noqa: F401 (a fixture)


@pytest.mark.parametrize(
    "spec", [TinyModelSpec(), TinyModelSpec(d_model=64, num_layers=3, num_heads=2, d_ff=96)]
)
def test_the_tiny_count_is_the_built_models_without_its_vocabulary(spec, tiny_tokenizer):
    built = sum(p.numel() for p in build_tiny_t5(spec, tiny_tokenizer).parameters())
    # the count is made with 2 tokens; the model's embedding (tied with its output layer) holds one row per token
    assert tiny_parameters(spec) == built - (len(tiny_tokenizer) - 2) * spec.d_model


def test_a_configs_count_is_its_models():
    # counted with one and two layers per stack and extended: exact where the stacks differ in depth, for T5's
    # family (a position bias in the first layer only, or in every layer) and BART's (positions embedded)
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        T5ForConditionalGeneration,
        UMT5Config,
        UMT5ForConditionalGeneration,
    )

    t5 = dict(vocab_size=300, d_model=48, d_kv=12, d_ff=80, num_layers=2, num_decoder_layers=3, num_heads=4)
    bart = BartConfig(vocab_size=300, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=64)  # fmt: skip
    for config, model in ((T5Config(**t5, tie_word_embeddings=False), T5ForConditionalGeneration),
                          (UMT5Config(**t5), UMT5ForConditionalGeneration), (bart, BartForConditionalGeneration)):  # fmt: skip
        assert count_parameters(config) == sum(p.numel() for p in model(config).parameters()), model.__name__


def test_training_bytes_by_hand():
    # fp32 weights 4 bytes a parameter, gradients 4 per trainable one, AdamW's two moments 8; ZeRO divides the
    # optimizer state (stage 1), and the gradients (2), and the weights (3) over the processes
    def sizes(*args) -> tuple:
        parts = training_bytes(*args)
        return parts["weights"], parts["gradients"], parts["optimizer states"]

    assert sizes(1000, 1000, "adamw", None, 1) == (4000, 4000, 8000)
    assert sizes(1000, 1000, "adamw", 1, 4) == (4000, 4000, 2000)
    assert sizes(1000, 1000, "adamw", 2, 4) == (4000, 1000, 2000)
    assert sizes(1000, 1000, "adamw", 3, 4) == (1000, 1000, 2000)
    assert sizes(1000, 1000, "adafactor", None, 1) == (4000, 4000, 0)  # its factored moments: left out
    assert sizes(1000, 0, "adamw", None, 1) == (4000, 0, 0)  # adapters on a frozen backbone
    # on a GPU, ZeRO's offload keeps the optimizer's side or the weights on the host
    parts = training_bytes(1000, 1000, "adamw", None, 1)
    zero = {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "none"}}
    assert on_gpu(parts, zero) == {"weights": 4000}
    assert on_gpu(parts, {"stage": 3, "offload_param": {"device": "nvme"}}) == {
        "gradients": 4000, "optimizer states": 8000}  # fmt: skip
    assert on_gpu(parts, {"stage": 2}) == parts


def test_what_the_host_has_is_its_available_memory_and_swap_within_the_cgroups_limit_less_its_anonymous_memory(
    tmp_path,
):
    # files written as the kernel writes them; a cgroup's usage counts the page cache, which reclaim frees before
    # anything is killed: until it was subtracted (2026-12-05, the same session), a container that had read a
    # dataset looked gigabytes fuller than it was
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       32000000 kB\nMemAvailable:    8000000 kB\nSwapFree:        1000000 kB\n"
    )
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir(), v1.mkdir()
    (v2 / "memory.stat").write_text(f"anon {10**9}\nfile {2 * 10**9}\ninactive_file {10**9}\n")
    (v1 / "memory.stat").write_text(f"cache {2 * 10**9}\nrss 5\ntotal_cache {2 * 10**9}\ntotal_rss {10**9}\n")
    cgroups = (
        (v2 / "memory.max", v2 / "memory.stat", "anon"),
        (v1 / "limit", v1 / "memory.stat", "total_rss"),
    )
    host = (8000000 + 1000000) * 1024
    assert host_available(meminfo, ()) == host  # no cgroup: memory and swap
    (v2 / "memory.max").write_text(f"{4 * 10**9}\n")
    assert (
        host_available(meminfo, cgroups) == 3 * 10**9
    )  # the limit less the anonymous 1 GB, not less the cache
    (v2 / "memory.max").write_text("max\n")
    assert host_available(meminfo, cgroups) == host  # v2 without a limit
    (v2 / "memory.max").unlink()
    (v1 / "limit").write_text("9223372036854771712\n")  # v1's "no limit"
    assert host_available(meminfo, cgroups) == host
    (v1 / "limit").write_text(f"{3 * 10**9}\n")
    assert host_available(meminfo, cgroups) == 2 * 10**9
    meminfo.write_text("MemTotal: 1 kB\n")  # a kernel that does not say
    assert host_available(meminfo, cgroups) is None


def test_a_model_too_large_for_the_machine_is_refused_before_the_tokenizer_trains(
    world,  # noqa: F811
    tmp_path,
    run_cli,
    run_bounded,
):
    # d_model 65,536 over a million layers: 51.6 million B parameters. Until 2026-12-05 the tokenizer trained, then
    # the model was built tensor by tensor until the kernel killed the process (8,192 wide and 24 layers: past 24 GB)
    huge = {"d_model": 65536, "num_layers": 1000000, "num_heads": 64, "d_ff": 256}
    config = config_file(tmp_path, world, model={"tiny": huge}, tokenizer={"vocab_size": 200})
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 2
    params = tiny_parameters(TinyModelSpec(**huge))
    # by hand: an encoder layer holds 4 attention products of d x d (64 heads of 1,024), 2 layer norms and a gated
    # FFN (3 products of d x 256); a decoder layer 8, 3 and 3; then 32 x 64 position buckets per stack, the two
    # final norms and 2 embedding rows
    d, ff = 65536, 256
    encoder, decoder = 4 * d * d + 2 * d + 3 * d * ff, 8 * d * d + 3 * d + 3 * d * ff
    assert params == 1000000 * (encoder + decoder) + 2 * 32 * 64 + 2 * d + 2 * d == 51_640_598_528_266_240
    line = one_line(err)
    assert line.startswith(f"t2t: error: model.tiny (d_model 65536, d_ff 256, 1000000 + 1000000 layers): "
                           f"{params / 1e9:,.2f}B parameters need at least {16 * params / 1e9:,.1f} GB (weights "
                           f"{4 * params / 1e9:,.1f}, gradients {4 * params / 1e9:,.1f}, optimizer states "
                           f"{8 * params / 1e9:,.1f} GB), and this machine has "), line  # fmt: skip
    assert line.endswith("GB available (memory and free swap): use a smaller model, or spread it over more devices "
                         "(ZeRO-3, launch/)"), line  # fmt: skip
    assert snapshot(tmp_path) == before  # no run dir, no tokenizer

    # a pretrained model's config.json: counted on the meta device, the dir named; its weights never load
    big = tmp_path / "big_t5"
    T5Config(
        vocab_size=32128, d_model=16384, d_kv=128, d_ff=65536, num_layers=48, num_heads=128
    ).save_pretrained(big)
    config = config_file(tmp_path, world, model={"pretrained": str(big)})
    code, _, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 2
    # by hand (T5Config's defaults: a ReLU FFN of 2 products, the output layer tied to the embedding)
    d, ff = 16384, 65536
    params = (
        48 * ((4 * d * d + 2 * d + 2 * d * ff) + (8 * d * d + 3 * d + 2 * d * ff))
        + 32128 * d
        + 2 * 32 * 128
        + 2 * d
    )
    assert params == 361_307_611_136
    assert one_line(err).startswith(f"t2t: error: {big}: model.pretrained: 361.31B parameters need at least 5,780.9 "
                                    "GB (weights 1,445.2, gradients 1,445.2, optimizer states 2,890.5 GB)")  # fmt: skip

    # a config.json of a hundred million narrow layers: counted from three small builds, not one module per layer
    # (which alone would take far more memory than the bound here)
    deep = tmp_path / "deep_t5"
    T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=10**8, num_heads=4).save_pretrained(
        deep
    )
    config = config_file(tmp_path, world, model={"pretrained": str(deep)})
    code, _, err = run_bounded(tmp_path, "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures",
                               "train", config, seconds=30, megabytes=200)  # fmt: skip
    assert code == 2 and one_line(err).startswith(
        f"t2t: error: {deep}: model.pretrained: 8,224.00B parameters"
    )


def sparse_weights(folder: Path, shape: tuple[int, int]) -> None:
    """A safetensors file of one fp32 tensor of `shape`, whose data is a hole in the file (no disk taken)."""
    header = json.dumps({"shared.weight": {"dtype": "F32", "shape": list(shape),
                                           "data_offsets": [0, 4 * shape[0] * shape[1]]}}).encode()  # fmt: skip
    header += b" " * (-len(header) % 8)
    with (folder / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4 * shape[0] * shape[1])


def test_weights_too_large_for_the_machine_are_refused_before_they_load(
    tmp_path, run_cli, run_bounded, tiny_tokenizer, capsys
):
    # a terabyte of fp32 weights (a vocabulary of 2^32 rows of 64): eval, predict and serve read the headers and
    # refuse; until 2026-12-05 transformers began to load them
    model = tmp_path / "huge"
    config = T5Config(vocab_size=2**32, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4)
    config.save_pretrained(model)
    tiny_tokenizer.save_pretrained(str(model))
    sparse_weights(model, (2**32, 64))
    assert safetensors_parameters(model) == 2**38
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "the plum was sweet"}\n')
    expected = (f"t2t: error: {model}: cannot load model: 274.88B parameters need at least 1,099.5 GB (weights in fp32 "
                "1,099.5 GB), and this machine has ")  # fmt: skip
    for args in (["eval", "--model", model, "--tasks", "sentiment", "--out", tmp_path / "out"],
                 ["predict", "--model", model, "--task", "sentiment", "--input", rows, "--out", tmp_path / "p.jsonl"],
                 ["serve", "--model", model, "--tasks", "sentiment", "--port", "18765"]):  # fmt: skip
        before = snapshot(tmp_path)
        code, _, err = run_cli(*args)
        assert code == 2, (args[0], err)
        line = one_line(err)
        assert line.startswith(expected) and line.endswith(
            "(memory and free swap): use a machine with more memory"
        )
        assert snapshot(tmp_path) == before, args[0]

    # a config.json of a hundred million layers over small real weights: transformers would build every layer
    # (one module each) before reading a weight; refused from the count, in bounded time and memory
    deep = tmp_path / "deep"
    T5Config(
        vocab_size=len(tiny_tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4
    ).save_pretrained(deep)
    from transformers import T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config.from_pretrained(deep)).save_pretrained(deep)
    tiny_tokenizer.save_pretrained(str(deep))
    weights = safetensors_parameters(deep)
    config = json.loads((deep / "config.json").read_text())
    config.update(num_layers=10**8, num_decoder_layers=10**8)
    (deep / "config.json").write_text(json.dumps(config))
    capsys.readouterr()  # the save's progress bar
    code, _, err = run_bounded(tmp_path, "eval", "--model", deep, "--tasks", "sentiment", "--out", tmp_path / "o",
                               seconds=30, megabytes=200)  # fmt: skip
    assert code == 2
    assert one_line(err).startswith(f"t2t: error: {deep}: cannot load model: config.json describes a model of "
                                    "200,000,000 layers (")  # fmt: skip
    assert one_line(err).endswith(f"and the weights hold {weights / 1e6:,.2f}M: a config.json that is not these "
                                  "weights'?")  # fmt: skip

    # a file that is not safetensors is left to the loader, which names it as before
    (model / "model.safetensors").write_bytes(b"\xff" * 64)
    assert safetensors_parameters(model) is None
    code, _, err = run_cli("eval", "--model", model, "--tasks", "sentiment", "--out", tmp_path / "out")
    assert code == 2 and "not readable as safetensors" in one_line(err)
