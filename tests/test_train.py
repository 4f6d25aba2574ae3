"""The trainer: accumulation and resume equivalence, learning, balancing, logging, checkpoints, errors."""

import gc
import json
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM

from t2t.checkpoint import latest_checkpoint
from t2t.errors import T2TError
from t2t.modeling import build_tiny_t5, fuse_activations
from t2t.registry import Registry
from t2t.tokenizer import load_tokenizer
from t2t.train import FAULT_ENV, GC_FULL_EVERY, GC_YOUNG_EVERY, Run, paced_collection, schedule_factor, train
from t2t.train_config import TinyModelSpec, TrainConfig, load_train_config
from tests.conftest import same_threads

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path, tokenizer_dir, **changes) -> TrainConfig:
    data = {
        "run_dir": str(tmp_path / "run"), "mixture": "two_tasks",
        "model": {"tiny": {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64}},
        "tokenizer": {"pretrained": str(tokenizer_dir)},
        "max_input_tokens": 48, "max_target_tokens": 8,
        "batching": {"strategy": "padded", "batch_size": 8, "max_tokens": None, "window_examples": 64},
        "steps": 6, "optimizer": {"name": "adamw", "lr": 3e-3}, "schedule": {"name": "linear", "warmup_steps": 2},
        "log_every_steps": 2, "trackers": [], "seed": 0, "balancing": {"method": "equal"},
    }  # fmt: skip
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return TrainConfig.model_validate(data)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def registry_with(mixture_dir):
    return Registry.default(mixtures_dirs=[mixture_dir])


def weights(run_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(str(run_dir / "model"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), key


def captured_gradients(config, registry):
    """The gradients each optimizer step applies, captured inside the real training loop."""
    run, captured = Run(config, registry), []
    inner = run.optimizer.optimizer  # accelerate calls it only when the accumulation window is complete
    real_step = inner.step

    def step(*args, **kwargs):
        captured.append(
            torch.cat([p.grad.flatten().clone() for p in run.model.parameters() if p.grad is not None])
        )
        return real_step(*args, **kwargs)

    inner.step = step
    run.fit()
    return captured


@pytest.mark.parametrize(
    "sharing", [None, {"mode": "adapters", "r": 4, "pull": 1000.0}], ids=["hard", "adapters"]
)
def test_accumulation_equivalence(tmp_path, tokenizer_dir, mixture_dir, sharing):
    # The same 8 examples per step: one batch of 8, or 4 batches of 2 accumulated. The loss is token-weighted
    # over the window, so every step applies the same gradient (to float32 rounding). With adapters and a
    # strong pull (zero at the first step, where every B is 0; dominant after), the pull counts once per step.
    registry = registry_with(mixture_dir)
    extra = {"sharing": sharing} if sharing else {}
    big = make_config(
        tmp_path / "a", tokenizer_dir, **{"batching.batch_size": 8, "batching.window_examples": 8}, **extra
    )
    small = make_config(tmp_path / "b", tokenizer_dir, gradient_accumulation_steps=4,
                        **{"batching.batch_size": 2, "batching.window_examples": 8}, **extra)  # fmt: skip
    grads_big, grads_small = captured_gradients(big, registry), captured_gradients(small, registry)
    assert len(grads_big) == len(grads_small) == 6
    first_big, first_small = grads_big[0], grads_small[0]  # same weights, same examples: the same gradient
    assert torch.allclose(first_big, first_small, atol=1e-6 * first_big.abs().max().item(), rtol=0)
    for a, b in zip(grads_big[1:], grads_small[1:], strict=True):  # weights now differ by float rounding
        assert torch.allclose(a, b, atol=1e-3 * a.abs().max().item(), rtol=0)
    # Weights agree too; Adam divides by sqrt(v), which magnifies float rounding where v is tiny, so the
    # tolerance is 1/60 of one step's largest update (lr 3e-3).
    assert_same_weights(weights(big.run_dir), weights(small.run_dir), atol=5e-5)
    losses = [[r["loss"] for r in metrics(c.run_dir)] for c in (big, small)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def cli_run(tmp_path, tokenizer_dir, mixture_dir, **changes) -> tuple[TrainConfig, list[str]]:
    """A config written to a file, and the `python -m t2t train` command that runs it (for kill tests)."""
    config = make_config(tmp_path / "killed", tokenizer_dir, log_every_steps=1, **changes)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return config, [sys.executable, "-m", "t2t", "--mixtures-dir", str(mixture_dir), "train", str(path)]


def test_resume_after_kill_9_gives_the_weights_of_an_uninterrupted_run(tmp_path, tokenizer_dir, mixture_dir):
    straight = make_config(tmp_path / "straight", tokenizer_dir, steps=8)
    train(straight, registry_with(mixture_dir))

    interrupted, command = cli_run(tmp_path, tokenizer_dir, mixture_dir, steps=8, save_every_steps=4)
    env = {
        **os.environ,
        FAULT_ENV: "5",
    }  # SIGKILL once 5 steps are done: checkpoint at 4, step 5 logged but lost
    killed = subprocess.run(
        command, env={**same_threads(), **env}, capture_output=True, text=True, cwd=tmp_path
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert latest_checkpoint(interrupted.run_dir).name == "step_00000004"
    assert [r["step"] for r in metrics(interrupted.run_dir)] == [1, 2, 3, 4, 5]
    resumed = subprocess.run([*command, "--resume", "auto"], env=same_threads(), capture_output=True, text=True,
                             cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step_00000004 at step 4 of 8" in resumed.stdout
    assert [r["step"] for r in metrics(interrupted.run_dir)] == list(range(1, 9))  # step 5 logged once, anew
    assert_same_weights(weights(straight.run_dir), weights(interrupted.run_dir))


def test_loss_goes_down_and_every_task_is_logged(tmp_path, tokenizer_dir, mixture_dir):
    config = make_config(tmp_path, tokenizer_dir, steps=80, log_every_steps=20,
                         **{"batching.batch_size": 16, "optimizer.lr": 1e-2})  # fmt: skip
    train(config, registry_with(mixture_dir))
    records = metrics(config.run_dir)
    assert [r["step"] for r in records] == [20, 40, 60, 80]
    losses = [r["loss"] for r in records]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.7 * losses[0]
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    assert losses[-1] < 0.5 * math.log(vocab)  # well below a uniform guess over the vocabulary
    for record in records:
        for task in ("add_numbers", "color_lookup"):
            assert record[f"task_tokens/{task}"] > 0 and record[f"task_loss/{task}"] > 0
            assert record[f"weight/{task}"] == 1.0
    assert (config.run_dir / "loss_curves.png").stat().st_size > 10_000
    assert gc.isenabled()  # the loop paces collection itself and hands the collector back


def test_paced_collection_frees_cycles_at_its_steps_and_restores_the_collector():
    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    for before in (True, False):
        (gc.enable if before else gc.disable)()
        with paced_collection() as collect:
            assert not gc.isenabled()
            dead = cycle()
            for step in range(1, GC_YOUNG_EVERY):
                collect(step)
                assert dead() is not None, step  # nothing collects it between the paced steps
            collect(GC_YOUNG_EVERY)
            assert dead() is None
            held = Node()
            held.itself = held
            old = weakref.ref(held)
            gc.collect(
                1
            )  # still held: it moves to the oldest generation, which young collections leave alone
            del held
            for step in range(GC_YOUNG_EVERY, GC_FULL_EVERY, GC_YOUNG_EVERY):
                collect(step)
            assert old() is not None
            collect(GC_FULL_EVERY)
            assert old() is None
        assert gc.isenabled() == before
    gc.enable()


def test_uncertainty_weights_move_and_dwa_weights_are_logged(tmp_path, tokenizer_dir, mixture_dir):
    registry = registry_with(mixture_dir)
    uncertainty = make_config(tmp_path / "u", tokenizer_dir, steps=10, **{"balancing.method": "uncertainty"})
    run = Run(uncertainty, registry)
    run.fit()
    log_vars = run.accelerator.unwrap_model(run.model).log_vars.detach()
    assert log_vars.abs().min() > 1e-3  # learnt from zero
    last = metrics(uncertainty.run_dir)[-1]
    # the logged weight is the one the last step applied: exp(-s) before that step's update (Adam moves s by ~lr)
    assert last["weight/add_numbers"] == pytest.approx(float(torch.exp(-log_vars[0])), abs=3e-3)
    assert last["weight/add_numbers"] != last["weight/color_lookup"]

    dwa = make_config(tmp_path / "d", tokenizer_dir, steps=8,
                      **{"balancing.method": "dwa", "balancing.dwa_window_steps": 2})  # fmt: skip
    train(dwa, registry)
    records = metrics(dwa.run_dir)
    first, last = records[0], records[-1]
    assert first["weight/add_numbers"] == 1.0  # fewer than two windows seen
    assert last["weight/add_numbers"] != 1.0
    assert last["weight/add_numbers"] + last["weight/color_lookup"] == pytest.approx(2.0)


def test_exported_model_reloads_with_auto_model(tmp_path, tokenizer_dir, mixture_dir):
    """The trained model trains with GELU in one kernel (fuse_activations) and saves as the plain HF T5 it was
    built as: reloaded, it has transformers' own activation, and computes what the live model computes."""
    config = make_config(tmp_path, tokenizer_dir, steps=3)
    run = Run(config, registry_with(mixture_dir))
    run.fit()
    batch = next(iter(run.loader)).tensors
    live = run.accelerator.unwrap_model(run.model).model.eval()
    acts = [type(m).__name__ for m in live.modules() if "GELU" in type(m).__name__.upper()]
    assert acts == ["GeluTanh"] * 4

    def logits(model):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"]).logits  # fmt: skip

    for folder in (config.run_dir / "model", latest_checkpoint(config.run_dir) / "model"):
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
        assert json.loads((folder / "config.json").read_text())["dense_act_fn"] == "gelu_new"
        acts = [type(m).__name__ for m in reloaded.modules() if "GELU" in type(m).__name__.upper()]
        assert acts == ["NewGELUActivation"] * 4
        with torch.no_grad():
            a, b = logits(live), logits(reloaded)
            assert (a - b).abs().max() < 1e-5 and not torch.equal(a, b)  # float rounding apart, no more
            assert fuse_activations(reloaded) == 4 and torch.equal(logits(reloaded), a)
        assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()


def test_fused_gelu_gives_the_gradients_of_transformers_gelu(tokenizer_dir):
    """GeluTanh against NewGELUActivation inside a tiny T5: the same loss and the same gradient of every weight,
    within float rounding (values in the tails, where tanh saturates, included)."""
    from transformers.activations import NewGELUActivation

    from t2t.modeling import GeluTanh

    x = torch.linspace(-12, 12, 4001, dtype=torch.float64, requires_grad=True)
    fused, composed = GeluTanh()(x), NewGELUActivation()(x)
    assert torch.allclose(fused, composed, atol=1e-12, rtol=0)
    (g_fused,) = torch.autograd.grad(fused.sum(), x)
    (g_composed,) = torch.autograd.grad(composed.sum(), x)
    assert torch.allclose(g_fused, g_composed, atol=1e-12, rtol=0)
    tokenizer = load_tokenizer(tokenizer_dir)
    size = TinyModelSpec(d_model=32, num_layers=2, num_heads=2, d_ff=64)
    models = [build_tiny_t5(size, tokenizer) for _ in "ab"]  # the same weights: seed 0
    assert fuse_activations(models[1]) == 4 and fuse_activations(models[1]) == 0
    ids = torch.randint(3, len(tokenizer), (4, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in models:
        loss = model(input_ids=ids, labels=ids[:, :5].contiguous()).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=0)
    for name, grad in grad_a.items():
        assert torch.allclose(grad, grad_b[name], atol=1e-6, rtol=1e-4), name


def test_kill_9_halfway_through_a_save_then_resume_gives_the_weights_of_an_uninterrupted_run(
    tmp_path, tokenizer_dir, mixture_dir
):
    straight = make_config(tmp_path / "straight", tokenizer_dir, steps=6)
    train(straight, registry_with(mixture_dir))
    interrupted, command = cli_run(tmp_path, tokenizer_dir, mixture_dir, steps=6, save_every_steps=2)
    killed = subprocess.run(command, env={**same_threads(), "T2T_FAULT_KILL_IN_SAVE": "4"}, capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = interrupted.run_dir / "checkpoints"
    assert latest_checkpoint(interrupted.run_dir).name == "step_00000002"  # the torn save never became latest
    assert (folder / ".tmp-step_00000004" / "accelerate").is_dir() and not (folder / "step_00000004").exists()
    resumed = subprocess.run([*command, "--resume", "auto"], env=same_threads(), capture_output=True, text=True,
                             cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step_00000002 at step 2 of 6" in resumed.stdout
    assert not (folder / ".tmp-step_00000004").exists()  # the leftover is pruned by the next save
    assert [r["step"] for r in metrics(interrupted.run_dir)] == list(range(1, 7))
    assert_same_weights(weights(straight.run_dir), weights(interrupted.run_dir))  # bit-identical


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(
    tmp_path, tokenizer_dir, mixture_dir, monkeypatch
):
    config = make_config(tmp_path, tokenizer_dir, steps=4, save_every_steps=2)
    run = Run(config, registry_with(mixture_dir))
    import t2t.checkpoint as checkpoint

    real_export, calls = checkpoint.export_model, []

    def crash_on_second_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut while writing the checkpoint")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "export_model", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        run.fit()  # saves at step 2, crashes while saving the final step 4
    folder = config.run_dir / "checkpoints"
    assert (folder / "latest").read_text().strip() == "step_00000002"
    assert (folder / ".tmp-step_00000004").is_dir() and not (folder / "step_00000004").exists()
    AutoModelForSeq2SeqLM.from_pretrained(str(folder / "step_00000002" / "model"))
    monkeypatch.undo()
    resumed = Run(config, registry_with(mixture_dir), resume="auto")
    assert resumed.state.step == 2
    resumed.fit()
    assert (folder / "latest").read_text().strip() == "step_00000004"
    assert not (folder / ".tmp-step_00000004").exists()


def test_refusals(tmp_path, tokenizer_dir, mixture_dir):
    registry = registry_with(mixture_dir)
    with pytest.raises(T2TError, match="precision fp16 is refused for T5-family models"):
        Run(make_config(tmp_path / "a", tokenizer_dir, precision="fp16"), registry)
    config = make_config(tmp_path / "b", tokenizer_dir, steps=2)
    train(config, registry)
    with pytest.raises(T2TError, match="the run dir holds checkpoints already: pass --resume auto"):
        Run(config, registry)


def test_config_file_errors_and_overrides(tmp_path, run_cli):
    path = tmp_path / "c.yaml"
    path.write_text((REPO / "configs" / "tiny_cpu.yaml").read_text())
    config = load_train_config(path, ["optimizer.lr=3e-4", "steps=7", "batching.strategy=packed"])
    assert (config.optimizer.lr, config.steps, config.batching.strategy) == (3e-4, 7, "packed")
    code, _, err = run_cli("train", path, "optimizer.lrr=1")
    assert code == 2 and "unknown key 'optimizer.lrr'" in err
    code, _, err = run_cli("train", path, "steps=-3")
    assert code == 2 and "steps: Input should be greater than 0" in err
    code, _, err = run_cli("train", path, "steps")
    assert code == 2 and "override 'steps' is not of the form key=value" in err
    code, _, err = run_cli("train", path, "model.pretrained=x")
    assert code == 2 and "give exactly one of model.pretrained and model.tiny" in err


@pytest.mark.parametrize(
    ("name", "factors"),
    [
        ("constant", [0.5, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 0.5]),
        ("cosine", [0.5, 1.0, 1.0, 0.5]),
        ("inverse_sqrt", [0.5, 1.0, 1.0, (2 / 3) ** 0.5]),
    ],
)
def test_schedules_with_warmup(name, factors):
    # warmup 2 of 4 steps: steps 0, 1 warm up linearly; from step 2 each schedule's own shape, starting at 1
    assert [schedule_factor(name, s, 2, 4) for s in range(4)] == pytest.approx(factors)


def test_adafactor_and_cosine_run(tmp_path, tokenizer_dir, mixture_dir):
    config = make_config(
        tmp_path, tokenizer_dir, steps=4, **{"optimizer.name": "adafactor", "schedule.name": "cosine"}
    )
    result = train(config, registry_with(mixture_dir))
    assert result["step"] == 4 and metrics(config.run_dir)[-1]["loss"] > 0


@pytest.mark.parametrize("accumulation", [1, 2])
def test_non_finite_loss_stops_naming_the_tasks(
    tmp_path, tokenizer_dir, mixture_dir, monkeypatch, accumulation
):
    # checked once per optimizer step: with accumulation, a poisoned first micro-batch still stops the step
    import t2t.balancing as balancing_module

    config = make_config(tmp_path, tokenizer_dir, steps=6, save_every_steps=2,
                         gradient_accumulation_steps=accumulation)  # fmt: skip
    run = Run(config, registry_with(mixture_dir))
    real = balancing_module.loss_sums
    calls = []

    def poisoned(model, batch, n_tasks):
        sums = real(model, batch, n_tasks)
        if run.state.step == 3:
            calls.append(1)
            if len(calls) == 1:  # the step's first micro-batch only
                sums.task_loss = sums.task_loss * float("nan")
        return sums

    monkeypatch.setattr(balancing_module, "loss_sums", poisoned)
    with pytest.raises(
        T2TError,
        match=r"non-finite loss at step 4 \(this process's batch holds tasks (add_numbers|color_lookup)",
    ):
        run.fit()
    assert latest_checkpoint(config.run_dir).name == "step_00000002"  # the last good checkpoint is untouched


def test_in_training_evaluation_between_generation_rounds(tmp_path, tokenizer_dir, mixture_dir):
    # The default eval_generate_every is 2: the first evaluation scores rank classification only, which a
    # generation task (no answer choices) does not have; it still gets its validation loss, and no score.
    config = make_config(tmp_path, tokenizer_dir, steps=4, eval_every_steps=2, eval_max_examples=4)
    assert config.eval_generate_every == 2
    train(config, registry_with(mixture_dir))
    first, second = [json.loads(line) for line in (config.run_dir / "eval.jsonl").read_text().splitlines()]
    assert (
        first["generation"] is False and "eval_loss/add_numbers" in first and "eval/add_numbers" not in first
    )
    assert second["generation"] is True and 0.0 <= second["eval/add_numbers"] <= 100.0
    assert (config.run_dir / "best").is_dir()  # the one selection round chose step 4


def test_selection_against_a_reference_results_file(tmp_path, tokenizer_dir, mixture_dir):
    # A reference no checkpoint of a 4-step run can reach: every evaluation regresses, none is selected.
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"tasks": {t: {"summary": {"median": 100.0, "ci_half_width": 0.0}}
                                               for t in ("add_numbers", "color_lookup")}}))  # fmt: skip
    config = make_config(tmp_path, tokenizer_dir, steps=4, eval_every_steps=2, eval_generate_every=1,
                         eval_max_examples=4, selection={"margin": 1.0, "reference": str(reference)})  # fmt: skip
    result = train(config, registry_with(mixture_dir))
    assert result["best"] is None and not (config.run_dir / "best").exists()
    report = (config.run_dir / "selection.md").read_text()
    assert "No evaluated checkpoint was eligible" in report and f"results file {reference}" in report
    assert "| 2 |" in report and "regressed: add_numbers:" in report
    bad = make_config(tmp_path / "bad", tokenizer_dir, steps=2, eval_every_steps=1,
                      selection={"reference": str(tmp_path / "missing.json")})  # fmt: skip
    with pytest.raises(T2TError, match=r"selection\.reference: no such file"):
        Run(bad, registry_with(mixture_dir))


def test_texts_that_encode_to_unknown_or_end_of_sequence_tokens_are_warned_of(
    tmp_path, run_cli, tiny_tokenizer
):
    # HF reads the text `</s>` (HTML's closing strikethrough tag) as the end-of-sequence token, and a tokenizer has
    # no piece for characters it never saw (T5's for `{`): a run said nothing of either
    folder, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    folder.mkdir()
    mixtures.mkdir()
    rows = [{"question": f"what is {i} and 5", "answer": str(i + 5)} for i in range(40)]
    rows[3]["answer"] = "8 </s> and more"
    rows[7]["question"] = "what is жук"
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "odd.yaml").write_text(yaml.safe_dump({
        "name": "odd", "version": 1, "cluster": "qa", "source": {"kind": "files", "splits": {"train": "rows.jsonl"}},
        "fields": {"question": "q", "answer": "a"}, "metrics": ["exact_match"],
        "templates": [{"name": "plain", "input": "{{ question }}", "target": "{{ answer }}"}]}))  # fmt: skip
    (mixtures / "odd_mix.yaml").write_text(yaml.safe_dump({"name": "odd_mix", "members": {"odd": None}}))
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    code, out, err = run_cli("--templates-dir", folder, "--mixtures-dir", mixtures, "train",
                             Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml", f"run_dir={tmp_path / 'run'}",
                             "mixture=odd_mix", f"tokenizer={{pretrained: {tmp_path / 'tok'}}}",
                             "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}", "steps=2",
                             "trackers=[]", "log_every_steps=1")  # fmt: skip
    assert code == 0, err
    warnings = [" ".join(line.split()) for line in out.splitlines() if line.startswith("warning: task odd")]
    assert warnings == [
        "warning: task odd: 1 of the 40 targets encoded so far hold the end-of-sequence or padding token inside the "
        "text (the text '</s>' or '<pad>', which the tokenizer reads as that token: the model learns to stop there, "
        "and generation stops at it); the first: template 'plain', row 3",
        "warning: task odd: 1 of the 40 inputs encoded so far hold the unknown token '<unk>' (characters the "
        "tokenizer has no piece for: they all read the same to the model); the first: template 'plain', row 7",
    ], out
