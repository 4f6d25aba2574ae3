"""Soft sharing with per-task LoRA adapters (t2t.adapters): routing per token, the pull penalty, peft's files,
and two tasks that only adapters can tell apart, trained, evaluated, served and merged through the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from t2t.adapters import Routing, attach, batch_routes, load_adapters, plan_routing, route_task, router_of
from t2t.balancing import ModelWithBalancing
from t2t.batching import Example, pack, packed_batch, pad_batch
from tests.conftest import write_jsonl, write_task


def tiny_model(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)  # fmt: skip
    return T5ForConditionalGeneration(config)


def with_adapters(n: int = 2, targets=("q", "v", "wo")) -> T5ForConditionalGeneration:
    model = tiny_model()
    router = attach(model, Routing(tuple(f"a{k}" for k in range(n)), {f"t{k}": f"a{k}" for k in range(n)}, 4, 8.0,
                                   tuple(targets)))  # fmt: skip
    torch.manual_seed(1)
    for layer in router.layers:  # B starts at 0 (a new adapter adds nothing): give every adapter an effect
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    return model


def test_default_targets_are_the_query_and_value_projections():
    from transformers import BartConfig, BartForConditionalGeneration

    from t2t.adapters import default_targets
    from t2t.errors import T2TError

    assert default_targets(tiny_model()) == ["q", "v"]
    bart = BartForConditionalGeneration(BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32))  # fmt: skip
    assert default_targets(bart) == ["q_proj", "v_proj"]
    with pytest.raises(T2TError, match="no default for this model"):
        default_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_plan_routing_per_task_and_per_cluster():
    clusters = {"a": "qa", "b": "qa", "c": "nli", "held": "qa", "lone": "sum"}
    per_task = plan_routing("task", ["a", "b", "c"], ["held", "lone"], clusters, 8, 16, ["q", "v"])
    assert per_task.adapters == ("a", "b", "c") and per_task.tasks == {"a": "a", "b": "b", "c": "c"}
    assert per_task.index("held") == -1  # a held-out task has no adapter of its own: the backbone alone
    per_cluster = plan_routing("cluster", ["a", "b", "c"], ["held", "lone"], clusters, 8, 16, ["q", "v"])
    assert per_cluster.adapters == ("qa", "nli")
    assert per_cluster.tasks == {
        "a": "qa",
        "b": "qa",
        "c": "nli",
        "held": "qa",
    }  # lone's cluster never trains
    assert [per_cluster.index(t) for t in ("a", "c", "held", "lone")] == [0, 1, 0, -1]
    assert (per_task.per, per_cluster.per) == ("task", "cluster")


@pytest.mark.parametrize(("table", "message"), [
    ({"adapters": ["../../etc"], "tasks": {}, "r": 8, "alpha": 16, "targets": ["q"]}, "adapter name '../../etc'"),
    ({"adapters": ["a"], "tasks": {"t": "b"}, "r": 8, "alpha": 16, "targets": ["q"]}, "unlisted adapters ['b']"),
    ({"adapters": ["a"], "tasks": {}, "r": 0, "alpha": 16, "targets": ["q"]}, "r < 1"),
    ({"adapters": ["a"], "tasks": {}}, "KeyError"),
])  # fmt: skip
def test_a_bad_routing_table_is_refused_naming_it(tmp_path, table, message):
    from t2t.adapters import read_routing
    from t2t.errors import T2TError

    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "routing.json").write_text(json.dumps(table))
    with pytest.raises(T2TError) as info:
        read_routing(tmp_path)
    assert "not a t2t routing table" in str(info.value) and str(
        tmp_path / "adapters" / "routing.json"
    ) in str(info.value)
    assert message in str(info.value) or message == "KeyError"


def test_batch_routes_of_packed_and_padded_batches():
    # Row 0 packs task 2 (segment 1) then task 0 (segment 2); row 1 holds task 1 alone; 0 pads.
    tensors = {
        "encoder_segment_ids": torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0]]),
        "decoder_segment_ids": torch.tensor([[1, 2, 2, 0], [1, 1, 0, 0]]),
        "task_ids": torch.tensor([[2, 0, 0, -1], [1, 1, -1, -1]]),
    }
    slots = torch.tensor([5, -1, 3])  # task 0 -> adapter 5, task 1 has none, task 2 -> adapter 3
    encoder, decoder = batch_routes(tensors, slots)
    assert encoder.tolist() == [[3, 3, 5, 5, 5, -1], [-1, -1, -1, -1, -1, -1]]
    assert decoder.tolist() == [[3, 5, 5, -1], [-1, -1, -1, -1]]
    padded = {"task_ids": torch.tensor([[2, 2, -1], [0, -1, -1]])}
    encoder, decoder = batch_routes(padded, slots)
    assert encoder.tolist() == decoder.tolist() == [3, 5]  # one adapter per row


def test_side_of_each_wrapped_layer():
    model = with_adapters()
    sides = {
        name: layer.side for name, layer in zip(model.t2t_adapter_paths, router_of(model).layers, strict=True)
    }
    assert sides["encoder.block.0.layer.0.SelfAttention.q"] == "encoder"
    assert sides["decoder.block.1.layer.0.SelfAttention.v"] == "decoder"
    assert sides["decoder.block.0.layer.1.EncDecAttention.q"] == "decoder"  # reads the decoder's states
    assert sides["decoder.block.0.layer.1.EncDecAttention.v"] == "encoder"  # reads the encoder's states
    assert sides["decoder.block.0.layer.2.DenseReluDense.wo"] == "decoder"


def test_a_wrapped_layer_adds_its_adapters_delta_per_token():
    model = with_adapters(3)
    layer = router_of(model).layers[0]
    x = torch.randn(2, 4, layer.in_features)
    route = torch.tensor([[0, 2, -1, 1], [1, 1, 0, -1]])
    with router_of(model).use(route, route):
        out = layer(x)
    for b in range(2):
        for t in range(4):
            expected = layer.base(x[b, t])
            if route[b, t] >= 0:
                expected = expected + layer.delta(int(route[b, t])) @ x[b, t]
            torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-5)


def test_pull_penalty_equals_the_spread_of_the_dense_deltas():
    model = with_adapters(3)
    for layer in router_of(model).layers[:4]:
        deltas = torch.stack([layer.delta(k) for k in range(3)])
        expected = ((deltas - deltas.mean(0)) ** 2).sum()
        torch.testing.assert_close(layer.pull_penalty(), expected, atol=1e-4, rtol=1e-4)
    same = with_adapters(2)
    for layer in router_of(same).layers:  # equal adapters: nothing to pull
        layer.lora_A.data[1], layer.lora_B.data[1] = layer.lora_A.data[0], layer.lora_B.data[0]
        assert float(layer.pull_penalty().detach()) == pytest.approx(0.0, abs=1e-6)


def _examples() -> list[Example]:
    rng = random.Random(0)
    return [Example([rng.randrange(2, 40) for _ in range(rng.randrange(3, 8))] + [1],
                    [rng.randrange(2, 40) for _ in range(rng.randrange(1, 4))] + [1], task=i % 3)
            for i in range(6)]  # fmt: skip


def test_packed_rows_mixing_tasks_match_each_example_alone_through_its_adapter():
    """The per-task loss of packed rows that mix three tasks (each with its own adapter) equals the losses of
    the examples run one by one, each through its own adapter."""
    model = with_adapters(3)
    wrapped = ModelWithBalancing(model, 3, learn_log_vars=False, task_slots=[0, 1, 2])
    examples = _examples()
    rows = pack(examples, 24, 8)
    assert any(len({examples[i].task for i in row}) > 1 for row in rows)  # rows do mix tasks
    packed = packed_batch(examples, rows, 24, 8)
    _, task_loss, task_tokens, _, penalty = wrapped(packed.tensors, torch.ones(3))
    assert float(penalty) == 0.0
    alone = torch.zeros(3)
    for example in examples:
        _, loss, _, _, _ = wrapped(pad_batch([example]).tensors, torch.ones(3))
        alone += loss
    torch.testing.assert_close(task_loss, alone, atol=1e-4, rtol=1e-5)
    # without the routing (every token through adapter 0) the losses differ: the adapters matter here
    shared = ModelWithBalancing(model, 3, learn_log_vars=False, task_slots=[0, 0, 0])
    _, other, _, _, _ = shared(packed.tensors, torch.ones(3))
    assert not torch.allclose(other, task_loss, atol=1e-3)
    assert float(task_tokens.sum()) == sum(len(e.labels) for e in examples)


def test_pull_enters_the_loss_once_and_its_gradient():
    model = with_adapters(2)
    wrapped = ModelWithBalancing(model, 2, learn_log_vars=False, task_slots=[0, 1], pull=0.5)
    batch = pad_batch(_examples()[:2])
    batch.tensors["task_ids"] = torch.where(batch.tensors["task_ids"] >= 0, torch.arange(2)[:, None], -1)
    _, _, _, _, penalty = wrapped(batch.tensors, torch.ones(2))
    expected = 0.5 * sum(float(layer.pull_penalty().detach()) for layer in router_of(model).layers)
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5) and expected > 0
    penalty.backward()
    layer = router_of(model).layers[0]
    assert layer.lora_B.grad is not None and float(layer.lora_B.grad.abs().sum()) > 0


# --------------------------------------------------------------------- through the entry points

WORDS = ["red", "blue", "green", "cat", "dog", "fish", "horse", "white", "black", "bird"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """say_yes and say_no: the same inputs, opposite answers. A hard-shared model sees identical inputs and
    cannot tell the tasks apart; per-task adapters can."""
    root = tmp_path_factory.mktemp("twins")
    tasks, mixtures = root / "tasks", root / "mixtures"
    tasks.mkdir()
    mixtures.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 200), ("validation", 20)):
        rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(3))} for _ in range(n)]
        write_jsonl(tasks / f"{split}.jsonl", rows)
    for name, label, cluster in (("say_yes", 1, "yes_cluster"), ("say_no", 0, "no_cluster")):
        write_task(tasks, {
            "name": name, "version": 1, "cluster": cluster,
            "source": {"kind": "files", "splits": {"train": "train.jsonl", "validation": "validation.jsonl"}},
            "fields": {"text": "three words"}, "answer_choices": ["no", "yes"], "metrics": ["accuracy"],
            "templates": [{"name": "ask", "input": "Answer: {{ text }}", "target": f"{{{{ answer_choices[{label}] }}}}"}],
            "golden": [{"template": "ask", "row": {"text": "red cat dog"}, "input": "Answer: red cat dog",
                        "target": ["no", "yes"][label], "choices": ["no", "yes"]}],
        })  # fmt: skip
    (mixtures / "twins.yaml").write_text(yaml.safe_dump({"name": "twins", "members": {"say_yes": None, "say_no": None},
                                                         "rate": {"rule": "uniform"}}))  # fmt: skip
    return tasks, mixtures


def _train(run_cli, twins, tokenizer_dir, run_dir, *extra):
    tasks, mixtures = twins
    code, out, err = run_cli(
        "--templates-dir", str(tasks), "--mixtures-dir", str(mixtures), "train", "configs/tiny_cpu.yaml",
        f"run_dir={run_dir}", "mixture=twins", "tokenizer={pretrained: " + str(tokenizer_dir) + "}",
        "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}", "max_input_tokens=24",
        "max_target_tokens=4", "batching={strategy: packed, rows_per_batch: 4, pack_input_tokens: 48, "
        "pack_target_tokens: 8, window_examples: 64}", "steps=60", "optimizer.lr=0.01", "schedule.warmup_steps=5",
        "trackers=[]", "log_every_steps=20", "save_every_steps=null", *extra,
    )  # fmt: skip
    assert code == 0, err
    return out


def _accuracy(run_cli, twins, model_dir, out_dir) -> dict[str, float]:
    tasks, mixtures = twins
    code, _, err = run_cli("--templates-dir", str(tasks), "--mixtures-dir", str(mixtures), "eval", "--model", str(model_dir),
                           "--tasks", "say_yes", "say_no", "--out", str(out_dir), "--no-generate")  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "results.json").read_text())
    return {t: report["tasks"][t]["summary"]["median"] for t in ("say_yes", "say_no")}


@pytest.mark.slow
def test_adapters_tell_apart_tasks_that_hard_sharing_cannot(run_cli, twins, tokenizer_dir, tmp_path):
    tasks, mixtures = twins
    run = tmp_path / "adapters"
    out = _train(run_cli, twins, tokenizer_dir, run, "sharing={mode: adapters, per: task, r: 4, alpha: 8}")
    assert "batching packed, balancing equal, adapters per task (2, r 4)" in out
    model_dir = run / "model"
    routing = json.loads((model_dir / "adapters" / "routing.json").read_text())
    assert routing["adapters"] == ["say_no", "say_yes"] and routing["tasks"] == {
        "say_yes": "say_yes",
        "say_no": "say_no",
    }
    # the backbone is a plain HF model; each adapter is a peft LoRA dir naming it as its base
    config = json.loads((model_dir / "adapters" / "say_no" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(model_dir)
    kept = json.loads(
        (
            run / "checkpoints" / "step_00000060" / "model" / "adapters" / "say_no" / "adapter_config.json"
        ).read_text()
    )
    assert kept["base_model_name_or_path"] == str(
        run / "checkpoints" / "step_00000060" / "model"
    )  # not the staging dir
    assert AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).config.d_model == 32
    scores = _accuracy(run_cli, twins, model_dir, tmp_path / "eval_adapters")
    assert scores == {"say_yes": 100.0, "say_no": 100.0}

    # the same mixture with hard sharing: one answer for both tasks, at best one task right
    hard = tmp_path / "hard"
    _train(run_cli, twins, tokenizer_dir, hard)
    hard_scores = _accuracy(run_cli, twins, hard / "model", tmp_path / "eval_hard")
    assert hard_scores["say_yes"] + hard_scores["say_no"] <= 120.0

    # a new run from this model starts from its backbone, and says so
    out = _train(
        run_cli, twins, tokenizer_dir, tmp_path / "again", f"model={{pretrained: {model_dir}}}", "steps=1"
    )
    assert f"warning: {model_dir} has adapters" in out

    # TAG's lookahead on the backbone, each task's loss through its own adapter
    code, out, err = run_cli("--templates-dir", str(tasks), "--mixtures-dir", str(mixtures), "affinity", str(run),
                             "--lookahead", "--lookahead-batch", "8")  # fmt: skip
    assert code == 0, err
    lookahead = json.loads((run / "affinity" / "affinity.json").read_text())["lookahead"]
    assert len(lookahead) == 2 and all(len(row) == 2 for row in lookahead)

    # peft loads each adapter onto the backbone and gives the routed model's logits for that task
    from peft import PeftModel

    routed = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    load_adapters(routed, model_dir)
    ids = torch.tensor([[5, 9, 12, 7, 1], [8, 3, 3, 1, 0]])
    decoder = torch.tensor([[0, 4], [0, 6]])
    for name in ("say_yes", "say_no"):
        single = PeftModel.from_pretrained(
            AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)), str(model_dir / "adapters" / name)
        ).eval()
        with torch.no_grad(), route_task(routed, name):
            ours = routed(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=decoder).logits
        with torch.no_grad():
            theirs = single(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=decoder).logits
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    # predict: each task answers with its own adapter
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"text": "red cat dog"}, {"text": "blue fish bird"}])
    answers = {}
    for name in ("say_yes", "say_no"):
        code, _, err = run_cli("--templates-dir", str(tasks), "predict", "--model", str(model_dir), "--task", name,
                               "--input", str(rows), "--out", str(tmp_path / f"{name}.jsonl"), "--quiet")  # fmt: skip
        assert code == 0, err
        answers[name] = [
            json.loads(line)["answer"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()
        ]
    assert answers == {"say_yes": ["yes", "yes"], "say_no": ["no", "no"]}

    # one batch mixing both tasks (as t2t serve batches requests): each row through its own adapter
    from t2t.registry import Registry
    from t2t.serving import Predictor

    predictor = Predictor.load(model_dir, Registry.default([tasks], [mixtures]), ["say_yes", "say_no"])
    prepared = [
        predictor.prepared(t, "ask", "Answer: red cat dog", ("no", "yes"))
        for t in ("say_no", "say_yes", "say_no")
    ]
    assert [a.answer for a in predictor.answer(prepared)] == ["no", "yes", "no"]
    generated = predictor.answer(
        [predictor.prepared(t, "ask", "Answer: red cat dog", None) for t in ("say_yes", "say_no")]
    )
    assert [a.answer for a in generated] == ["yes", "no"]
    assert predictor.describe("say_no")["adapter"] == "say_no"

    # export merged: one adapter folded into a plain HF model that answers like the routed one
    code, out, err = run_cli(
        "export", "merged", "--model", str(model_dir), "--adapter", "say_no", "--out", str(tmp_path / "no")
    )
    assert code == 0, err and "adapter say_no" in out
    merged = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "no")).eval()
    assert not (tmp_path / "no" / "adapters").exists()
    with torch.no_grad(), route_task(routed, "say_no"):
        ours = routed(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=decoder).logits
    with torch.no_grad():
        theirs = merged(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=decoder).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    code, _, err = run_cli(
        "export", "merged", "--model", str(model_dir), "--adapter", "say_maybe", "--out", str(tmp_path / "m")
    )
    assert code == 2 and "neither an adapter nor a task" in err and not (tmp_path / "m").exists()
    code, _, err = run_cli(
        "export",
        "merged",
        "--model",
        str(hard / "model"),
        "--adapter",
        "say_no",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 2 and "no adapters" in err

    # a torn adapter file: one line naming it, from eval and from export merged, nothing written
    weights = model_dir / "adapters" / "say_yes" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli("--templates-dir", str(tasks), "eval", "--model", str(model_dir), "--tasks", "say_yes",
                           "--out", str(tmp_path / "torn"), "--no-generate")  # fmt: skip
    assert code == 2 and "adapter 'say_yes': not a readable safetensors file" in err and str(weights) in err
    assert not (tmp_path / "torn").exists()
    code, _, err = run_cli("export", "merged", "--model", str(model_dir), "--adapter", "say_yes", "--out",
                           str(tmp_path / "m"))  # fmt: skip
    assert code == 2 and "adapter 'say_yes': not a readable safetensors file" in err and str(weights) in err
    assert not (tmp_path / "m").exists() and not (tmp_path / ".tmp-m").exists()
    code, _, err = run_cli("export", "merged", "--model", str(model_dir), "--adapter", "say_no", "--out",
                           str(tmp_path / "m"))  # fmt: skip
    assert code == 0, err  # merging one adapter reads only that adapter's file
    weights.unlink()
    code, _, err = run_cli("--templates-dir", str(tasks), "predict", "--model", str(model_dir), "--task", "say_yes",
                           "--input", str(rows), "--out", str(tmp_path / "p.jsonl"), "--quiet")  # fmt: skip
    assert code == 2 and "adapter 'say_yes' of the routing table has no weights" in err
    assert not (tmp_path / "p.jsonl").exists()
