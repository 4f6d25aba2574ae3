"""A non-T5 seq2seq model (a tiny BART built from a config with the t2t tokenizer) trains and evaluates under the
one encoding policy: its own decoder start token (BART's is EOS, T5's is the pad id), the same EOS and truncation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

from t2t.batching import IGNORE
from t2t.modeling import token_losses
from t2t.registry import Registry
from t2t.train import Run
from t2t.train_config import load_train_config

from .test_paths import REPO


@pytest.fixture(scope="module")
def bart_dir(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("bart") / "bart"
    config = BartConfig(
        vocab_size=len(tiny_tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.eos_token_id, decoder_start_token_id=tiny_tokenizer.eos_token_id,
        forced_bos_token_id=None, forced_eos_token_id=None, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


def bart_overrides(run_dir, bart_dir) -> list[str]:
    return [f"run_dir={run_dir}", "mixture=one_task", f"model={{pretrained: {bart_dir}}}",
            f"tokenizer={{pretrained: {bart_dir}}}", "max_input_tokens=48", "max_target_tokens=8",
            "batching={strategy: padded, batch_size: 16, max_tokens: null, window_examples: 64}",
            "optimizer={name: adamw, lr: 0.003}", "schedule={name: constant, warmup_steps: 0}",
            "log_every_steps=10", "trackers=[]", "steps=60"]  # fmt: skip


@pytest.fixture(scope="module")
def mixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bart_mixtures")
    spec = {"name": "one_task", "members": {"color_lookup": None}}
    (folder / "one_task.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_bart_batches_start_with_its_own_decoder_token_and_match_its_own_loss(tmp_path, bart_dir, mixtures):
    config = load_train_config(REPO / "configs" / "tiny_cpu.yaml", bart_overrides(tmp_path / "run", bart_dir))
    run = Run(config, Registry.default(mixtures_dirs=[mixtures]))
    eos, pad = run.tokenizer.eos_token_id, run.tokenizer.pad_token_id
    assert eos != pad
    batch = next(iter(run.loader))
    tensors = batch.tensors
    assert (tensors["decoder_input_ids"][:, 0] == eos).all()  # BART's start token, from its config
    model = run.accelerator.unwrap_model(run.model).model
    labels = tensors["labels"]
    with torch.no_grad():
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                       decoder_input_ids=tensors["decoder_input_ids"]).logits  # fmt: skip
        ours = token_losses(logits, labels)
        # BART's own loss shifts the labels right with its decoder_start_token_id: the sequence t2t builds.
        theirs = model(
            input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], labels=labels
        ).loss
    assert float(ours.sum() / (labels != IGNORE).sum()) == pytest.approx(theirs.item(), rel=1e-5)


def test_bart_trains_and_evaluates_through_the_cli(tmp_path, bart_dir, mixtures, run_cli):
    run_dir = tmp_path / "run"
    config = REPO / "configs" / "tiny_cpu.yaml"
    code, _, err = run_cli("--mixtures-dir", mixtures, "train", config, *bart_overrides(run_dir, bart_dir))
    assert code == 0, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]  # it learns
    model_dir = run_dir / "model"
    assert AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).config.model_type == "bart"
    assert json.loads((model_dir / "t2t_encoding.json").read_text()) == {"max_input_tokens": 48,
                                                                         "max_target_tokens": 8}  # fmt: skip
    code, _, err = run_cli("eval", "--model", model_dir, "--tasks", "color_lookup", "--max-examples", "20",
                           "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["max_input_tokens"] == 48 and report["device"] == "cpu" and report["scoring"] == "t2t"
    summary = report["tasks"]["color_lookup"]["summary"]
    assert summary["n_templates"] == 3 and 0.0 <= summary["median"] <= 100.0


def test_packed_batching_is_refused_for_a_model_with_absolute_positions(
    tmp_path, bart_dir, mixtures, run_cli
):
    code, out, err = run_cli(
        "--mixtures-dir", mixtures, "train", REPO / "configs" / "tiny_cpu.yaml", f"run_dir={tmp_path / 'r'}",
        "mixture=one_task", f"model={{pretrained: {bart_dir}}}", f"tokenizer={{pretrained: {bart_dir}}}",
        "max_input_tokens=48", "max_target_tokens=8", "batching.strategy=packed", "steps=2", "trackers=[]",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip() == ("t2t: error: batching.strategy=packed needs a model t2t can pack (T5, mT5, umT5: "
                           "relative positions); bart models cannot pack (they use absolute positions, which packing "
                           "would shift): use batching.strategy=padded")  # fmt: skip
    assert len(err.strip().splitlines()) == 1


def test_bart_with_adapters_takes_its_own_projections_and_loads_in_peft(
    tmp_path, bart_dir, mixtures, run_cli
):
    from peft import PeftModel

    from t2t.adapters import load_adapters, route_task

    run_dir = tmp_path / "run"
    overrides = [*bart_overrides(run_dir, bart_dir), "steps=5", "sharing.mode=adapters"]
    code, out, err = run_cli(
        "--mixtures-dir", mixtures, "train", REPO / "configs" / "tiny_cpu.yaml", *overrides
    )
    assert code == 0, err
    assert "adapters per task (1, r 8)" in out
    model_dir = run_dir / "model"
    routing = json.loads((model_dir / "adapters" / "routing.json").read_text())
    assert routing["targets"] == ["q_proj", "v_proj"]  # BART's query and value projections, as peft's default
    routed = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    load_adapters(routed, model_dir)
    single = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)),
                                       str(model_dir / "adapters" / "color_lookup")).eval()  # fmt: skip
    ids = torch.tensor([[5, 9, 12, 7, 2], [8, 3, 3, 2, 1]])
    decoder = torch.tensor([[2, 4], [2, 6]])
    with torch.no_grad(), route_task(routed, "color_lookup"):
        ours = routed(input_ids=ids, attention_mask=(ids != 1).long(), decoder_input_ids=decoder).logits
    with torch.no_grad():
        theirs = single(input_ids=ids, attention_mask=(ids != 1).long(), decoder_input_ids=decoder).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
