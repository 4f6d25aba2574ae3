"""Gradient-conflict and loss-only task weighting: hand-worked weights, PCGrad against LibMTL's published loop,
the update through the trainer equal to the method's on the gradient subset, resume, refusal under ZeRO-3."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from t2t.balancing import ModelWithBalancing, gradient_parameters
from t2t.gradients import FAMO, GradNorm, cagrad, gls, mgda, min_norm_simplex, pcgrad, rlw
from t2t.train import FAULT_ENV, train
from tests.conftest import same_threads
from tests.test_train import assert_same_weights, cli_run, make_config, metrics, registry_with, weights

REPO = Path(__file__).resolve().parents[1]
# packed rows mix the tasks within a micro-batch, which is where these methods weigh them
PACKED = "batching={strategy: packed, rows_per_batch: 4, pack_input_tokens: 96, pack_target_tokens: 16, window_examples: 64}"


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0)  # fmt: skip
    return T5ForConditionalGeneration(config)


def gram(*vectors):
    g = np.array(vectors, dtype=float)
    return g @ g.T, g


# ---------------------------------------------------------------------------------------- by hand


def test_pcgrad_by_hand():
    # g1 = (1, 0), g2 = (-1, 1) conflict (g1.g2 = -1): g1' = g1 - (-1/2) g2 = (0.5, 0.5) = g1 + 0.5 g2,
    # g2' = g2 - (-1/1) g1 = (0, 1) = g1 + g2; the update g1' + g2' = 2 g1 + 1.5 g2, whatever the order.
    k, _ = gram((1, 0), (-1, 1))
    for seed in range(4):
        assert pcgrad(k, np.random.default_rng(seed)) == pytest.approx([2.0, 1.5])
    aligned, _ = gram((1, 0), (1, 1))
    orthogonal, _ = gram((1, 0), (0, 2))
    assert pcgrad(aligned, np.random.default_rng(0)) == pytest.approx([1, 1])
    assert pcgrad(orthogonal, np.random.default_rng(0)) == pytest.approx([1, 1])


def libmtl_pcgrad(grads: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """LibMTL's PCGrad (LibMTL/weighting/PCGrad.py, median-research-group/LibMTL), its loop as published, with the
    shuffles given: for each task i, over all tasks j in a shuffled order, pc_i -= (pc_i . g_j) / |g_j|^2 g_j
    where the dot is negative; the update is the sum of the pc_i."""
    pc = grads.copy()
    for i in range(len(grads)):
        for j in orders[i]:
            dot = pc[i] @ grads[j]
            if dot < 0:
                pc[i] -= dot * grads[j] / (grads[j] @ grads[j])
    return pc.sum(axis=0)


def test_pcgrad_equals_libmtls_loop_on_random_gradients():
    rng = np.random.default_rng(7)
    for trial in range(20):
        grads = rng.standard_normal((4, 12))
        seed_rng = np.random.default_rng(trial)
        replay = np.random.default_rng(trial)  # pcgrad draws one permutation per task, in task order
        orders = [replay.permutation(4).tolist() for _ in range(4)]
        coefficients = pcgrad(grads @ grads.T, seed_rng)
        assert coefficients @ grads == pytest.approx(libmtl_pcgrad(grads, orders), abs=1e-12)


def test_mgda_by_hand():
    k, _ = gram((1, 0), (0, 1))
    assert mgda(k) == pytest.approx([1, 1])  # orthogonal unit gradients: the midpoint
    k, _ = gram((1, 0), (3, 0))
    assert mgda(k) == pytest.approx([2, 0])  # aligned: all on the shorter one
    k, _ = gram((2, 0), (0, 1))
    # |a(2,0) + (1-a)(0,1)|^2 = 4a^2 + (1-a)^2, least at a = 1/5: weights 2 * (0.2, 0.8)
    assert mgda(k) == pytest.approx([0.4, 1.6])
    k, _ = gram((1, 0, 0), (0, 1, 0), (0, 0, 1))
    assert mgda(k) == pytest.approx([1, 1, 1], abs=1e-6)
    k, g = gram((1, 0, 0), (0, 2, 0), (-1, 1, 1))
    alpha = min_norm_simplex(k)
    grid = [(a, b, 1 - a - b) for a in np.linspace(0, 1, 201) for b in np.linspace(0, 1, 201) if a + b <= 1]
    best = min(grid, key=lambda w: float(np.linalg.norm(np.array(w) @ g)))
    assert np.linalg.norm(alpha @ g) <= np.linalg.norm(np.array(best) @ g) + 1e-6


def test_cagrad_by_hand():
    k, _ = gram((1, 0), (-1, 1))
    assert cagrad(k, c=0.0) == pytest.approx([1, 1])  # c = 0: the plain (summed) gradient
    # identical gradients: g0 = g, lambda = c |g0| / |g_w| = c, d = (1 + c) g / (1 + c^2); coefficient
    # T * (1/T + c w_t) / (1 + c^2) with w = (1/2, 1/2): 2 * 0.75 / 1.25 = 1.2 each
    same, _ = gram((1, 0), (1, 0))
    assert cagrad(same, c=0.5) == pytest.approx([1.2, 1.2])
    # conflicting: the inner problem checked against a grid over the simplex
    k, g = gram((1, 0), (-1, 1))
    g0 = g.mean(axis=0)
    radius = 0.5 * np.linalg.norm(g0)
    xs = np.linspace(0, 1, 100001)
    values = [np.array([x, 1 - x]) @ g @ g0 + radius * np.linalg.norm(np.array([x, 1 - x]) @ g) for x in xs]
    w = np.array([xs[int(np.argmin(values))], 1 - xs[int(np.argmin(values))]])
    expected = 2 * (0.5 + radius / np.linalg.norm(w @ g) * w) / 1.25
    assert cagrad(k, c=0.5) == pytest.approx(expected, abs=1e-3)


def test_gradnorm_by_hand():
    norm = GradNorm(2, alpha=1.5, lr=0.025)
    k = np.diag([1.0, 9.0])  # |g1| = 1, |g2| = 3
    norm.observe_first([2.0, 2.0], [1.0, 1.0])
    returned = norm.coefficients(k, np.array([2.0, 2.0]), np.array([0, 1]))
    assert returned == pytest.approx([1, 1])  # this step's weights
    # equal loss ratios: target = mean weighted norm = 2; |g1| below it (w1 += lr * 1), |g2| above (w2 -= lr * 3)
    raw = np.array([1.025, 0.925])
    assert norm.weights == pytest.approx(2 * raw / raw.sum())
    state = norm.state_dict()
    again = GradNorm(2)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.weights == pytest.approx(norm.weights) and again.first_loss == pytest.approx(norm.first_loss)


def test_loss_only_methods():
    assert gls(np.array([1.0, 4.0])) == pytest.approx([1.6, 0.4])  # a ~ 1 / L, summing to T
    a, b = rlw(3, seed=0, step=5, micro=0), rlw(3, seed=0, step=5, micro=0)
    assert a == pytest.approx(b) and a.sum() == pytest.approx(3) and (a > 0).all()
    assert rlw(3, seed=0, step=6, micro=0) != pytest.approx(a)


def test_famo_by_hand():
    famo = FAMO(2, lr=0.025, weight_decay=0.0)
    # uniform logits: a ~ 1 / L (as GLS); losses 1 and 4: 2 * (1, 0.25) / 1.25
    assert famo.coefficients(np.array([1.0, 4.0]), np.array([0, 1])) == pytest.approx([1.6, 0.4])
    famo.observe(np.array([2.0, 2.0]))  # the first step: nothing to compare with yet
    assert famo.logits == pytest.approx([0, 0]) and famo.t == 0
    # task 0's loss fell (delta = log 2 - log 1), task 1's did not: J' delta = z (delta - z.delta) = (+c, -c);
    # Adam's first step moves each logit by lr against the sign: task 0 loses weight, task 1 gains it
    famo.observe(np.array([1.0, 2.0]))
    assert famo.logits == pytest.approx([-0.025, 0.025], abs=1e-6)
    a = famo.coefficients(np.array([1.0, 1.0]), np.array([0, 1]))
    assert a[1] > 1 > a[0] and a.sum() == pytest.approx(2)
    famo.observe(
        np.array([np.nan, 1.5])
    )  # a task not drawn keeps its last loss and gets no update of its own
    assert famo.previous == pytest.approx([1.0, 1.5])
    again = FAMO(2)
    again.load_state_dict(json.loads(json.dumps(famo.state_dict())))
    assert again.logits == pytest.approx(famo.logits) and again.t == famo.t


# ------------------------------------------------------------------------------- through the model


def test_default_subset_is_the_last_decoder_block_and_final_norm():
    model = tiny_t5()
    names = [n for n, _ in gradient_parameters(model, None)]
    assert names and all(n.startswith(("decoder.block.1.", "decoder.final_layer_norm.")) for n in names)
    assert any(n.startswith("decoder.final_layer_norm.") for n in names)
    assert not any("shared" in n or "embed" in n for n in names)


@pytest.mark.parametrize(("method", "exact"), [("pcgrad", False), ("mgda", False), ("cagrad", False),
                                               ("pcgrad", True), ("cagrad", True)])  # fmt: skip
def test_the_update_on_the_subset_is_the_methods(method, exact):
    """One micro-batch of three tasks: the gradient left on the subset by the one backward of the weighted loss
    equals the method's combination of the per-task gradients, computed here apart. With `exact` the subset is
    every parameter, the tied embeddings included: the method's update on the whole model."""
    torch.manual_seed(0)
    model = tiny_t5()
    named = gradient_parameters(model, None, exact)
    subset = [p for _, p in named]
    if exact:
        assert [n for n, _ in named] == [n for n, _ in model.named_parameters()]
        assert any(n == "shared.weight" for n, _ in named)
    wrapped = ModelWithBalancing(model, 3, learn_log_vars=False, gradient_params=subset)
    ids = torch.randint(2, 64, (6, 7))
    labels = torch.randint(2, 64, (6, 3))
    tensors = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
               "decoder_input_ids": torch.cat([torch.zeros(6, 1, dtype=torch.long), labels[:, :-1]], 1),
               "task_ids": torch.tensor([0, 0, 1, 1, 2, 2])[:, None].expand(6, 3)}  # fmt: skip
    seen = {}

    def weigh(k, losses, tasks):
        seen["gram"], seen["tasks"] = k, tasks
        return {"pcgrad": lambda: pcgrad(k, np.random.default_rng(3)), "mgda": lambda: mgda(k),
                "cagrad": lambda: cagrad(k)}[method]()  # fmt: skip

    objective, _, task_tokens, used, penalty = wrapped(tensors, torch.ones(3), weigh)
    assert float(penalty) == 0.0  # no adapters
    objective.backward()
    update = torch.cat([p.grad.flatten() for p in subset]).double()
    # the per-task gradients of the mean task losses, apart
    per_task = []
    for t in range(3):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(**{k: v for k, v in tensors.items() if k != "task_ids"})
            .logits[2 * t : 2 * t + 2]
            .reshape(-1, 64),
            labels[2 * t : 2 * t + 2].reshape(-1),
        )
        grads = torch.autograd.grad(loss, subset)
        per_task.append(torch.cat([g.flatten() for g in grads]).double())
    g = torch.stack(per_task)
    assert seen["tasks"].tolist() == [0, 1, 2]
    assert np.allclose(seen["gram"], (g @ g.T).numpy(), rtol=1e-5, atol=1e-9)
    share = float(task_tokens.sum()) / 3  # (n / T') of t2t.balancing
    expected = share * (used.double() @ g)
    # float32 gradients summed in another order: rounding of the order of 1e-6 of the largest component
    assert torch.allclose(update, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


# ---------------------------------------------------------------------------------- the trainer


@pytest.mark.parametrize("method", ["pcgrad", "cagrad", "mgda", "gradnorm", "rlw", "gls", "famo"])
def test_methods_train_and_log_through_t2t_train(method, tmp_path, tokenizer_dir, mixture_dir, run_cli):
    config = make_config(tmp_path, tokenizer_dir, steps=4, log_every_steps=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code, out, err = run_cli(
        "--mixtures-dir", mixture_dir, "train", path, f"balancing.method={method}", PACKED
    )
    assert code == 0, err
    assert f"balancing {method}" in out
    code, out, _ = run_cli("--mixtures-dir", mixture_dir, "train", path, f"balancing.method={method}",
                           f"run_dir={tmp_path / 'padded'}")  # fmt: skip
    assert code == 0  # padded: warned that a one-task micro-batch leaves nothing to weigh
    assert f"warning: balancing.method={method} weighs the tasks within each micro-batch" in out
    records = metrics(config.run_dir)
    assert [r["step"] for r in records] == [2, 4]
    last = records[-1]
    assert set(k for k in last if k.startswith("weight/")) == {"weight/add_numbers", "weight/color_lookup"}
    if method in ("rlw", "gls", "famo"):
        assert "grad_cosine" not in last
    else:
        assert {"grad_norm/add_numbers", "grad_norm/color_lookup"} <= last.keys()
        cosine = np.array(last["grad_cosine"], dtype=float)
        assert cosine.shape == (2, 2) and np.allclose(np.diag(cosine), 1.0) and np.allclose(cosine, cosine.T)


def test_exact_gradient_methods_through_t2t_train(tmp_path, tokenizer_dir, mixture_dir, run_cli):
    config = make_config(tmp_path, tokenizer_dir, steps=2, log_every_steps=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code, out, err = run_cli("--mixtures-dir", mixture_dir, "train", path, "balancing={method: pcgrad, exact: true}",
                             PACKED)  # fmt: skip
    assert code == 0, err
    assert "balancing pcgrad" in out and "grad_cosine" in metrics(config.run_dir)[-1]
    code, _, err = run_cli("--mixtures-dir", mixture_dir, "train", path, "balancing={method: pcgrad, exact: true}",
                           PACKED, "gradient_accumulation_steps=2", f"run_dir={tmp_path / 'acc'}")  # fmt: skip
    assert code == 2 and "balancing.exact" in err and "one process without accumulation" in err
    assert not (tmp_path / "acc" / "checkpoints").exists()
    code, _, err = run_cli("--mixtures-dir", mixture_dir, "train", path, "balancing={method: rlw, exact: true}",
                           f"run_dir={tmp_path / 'rlw'}")  # fmt: skip
    assert code == 2 and "balancing.exact applies to the gradient methods" in err


@pytest.mark.parametrize("method", ["pcgrad", "gradnorm", "famo"])
def test_resume_after_kill_with_a_gradient_method_is_exact(method, tmp_path, tokenizer_dir, mixture_dir):
    packed = {"strategy": "packed", "rows_per_batch": 4, "pack_input_tokens": 96, "pack_target_tokens": 16,
              "window_examples": 64}  # fmt: skip
    changes = {"steps": 6, "batching": packed, "balancing.method": method}
    straight = make_config(tmp_path / "straight", tokenizer_dir, **changes)
    train(straight, registry_with(mixture_dir))
    interrupted, command = cli_run(tmp_path, tokenizer_dir, mixture_dir, save_every_steps=3, **changes)
    killed = subprocess.run(
        command, env={**same_threads(), FAULT_ENV: "4"}, capture_output=True, text=True, cwd=tmp_path
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = subprocess.run([*command, "--resume", "auto"], env=same_threads(), capture_output=True, text=True,
                             cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step_00000003 at step 3 of 6" in resumed.stdout
    assert_same_weights(weights(straight.run_dir), weights(interrupted.run_dir))


@pytest.mark.slow
def test_gradient_methods_are_refused_under_zero3_and_run_under_ddp(tmp_path, tokenizer_dir, mixture_dir):
    def launch(config_file, method, port, run):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"launch/{config_file}.yaml",
                   "--main_process_port", str(port), "-m", "t2t", "--mixtures-dir", str(mixture_dir), "train",
                   "configs/tiny_cpu.yaml", f"run_dir={run}", "mixture=two_tasks",
                   f"tokenizer={{pretrained: {tokenizer_dir}}}", "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}",
                   "max_input_tokens=48", "max_target_tokens=8", "steps=2", "trackers=[]", f"balancing.method={method}", PACKED]  # fmt: skip
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    refused = launch("cpu_deepspeed_zero3", "pcgrad", 29661, tmp_path / "zero3")
    assert refused.returncode != 0
    assert (
        "balancing.method=pcgrad needs per-task gradients, which ZeRO-3 keeps partitioned" in refused.stderr
    )
    assert "t2t/train.py" not in refused.stderr  # one line from each rank; the launcher's own report follows
    ddp = launch("cpu_ddp", "pcgrad", 29663, tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    records = metrics(tmp_path / "ddp")
    assert "grad_cosine" in records[-1]


# ---------------------------------------------------------------------------------------- affinity


def write_metrics(run_dir: Path, matrices: list) -> None:
    run_dir.mkdir(parents=True)
    lines = [{"step": 1, "loss": 1.0}]  # a line without cosines is passed over
    lines += [
        {"step": i + 2, "grad_tasks": ["a", "b", "c"], "grad_cosine": m} for i, m in enumerate(matrices)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_affinity_by_hand(tmp_path, run_cli):
    # a-b agree (0.9 then 0.7: mean 0.8), a-c conflict (-0.5), b-c conflict (-0.2, then unknown: mean -0.2)
    write_metrics(tmp_path / "run", [
        [[1, 0.9, -0.5], [0.9, 1, -0.2], [-0.5, -0.2, 1]],
        [[1, 0.7, -0.5], [0.7, 1, None], [-0.5, None, 1]],
    ])  # fmt: skip
    code, out, err = run_cli("affinity", tmp_path / "run")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "affinity" / "affinity.json").read_text())
    assert result["cosine"] == [[1, 0.8, -0.5], [0.8, 1, -0.2], [-0.5, -0.2, 1]]
    assert result["negative_share"][0][2] == 1.0 and result["negative_share"][0][1] == 0.0
    assert result["groups"] == [["a", "b"], ["c"]] and result["log_lines"] == 2
    assert (tmp_path / "run" / "affinity" / "affinity.png").stat().st_size > 0
    assert "  a, b\n  c\n" in out
    # a threshold above 0.8 keeps every task apart; below -0.5 merges all (mean of a-b group to c: -0.35)
    code, _, _ = run_cli("affinity", tmp_path / "run", "--threshold", "0.85", "--out", tmp_path / "t1")
    assert json.loads((tmp_path / "t1" / "affinity.json").read_text())["groups"] == [["a"], ["b"], ["c"]]
    code, _, _ = run_cli("affinity", tmp_path / "run", "--threshold", "-0.4", "--out", tmp_path / "t2")
    assert json.loads((tmp_path / "t2" / "affinity.json").read_text())["groups"] == [["a", "b", "c"]]


def test_affinity_refuses_a_run_without_cosines(tmp_path, run_cli):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    code, _, err = run_cli("affinity", tmp_path / "run")
    assert code == 2 and "logged no gradient cosines: train it with a gradient method" in err
    code, _, err = run_cli("affinity", tmp_path / "nowhere")
    assert code == 2 and "no metrics.jsonl here" in err
    bad = {"grad_tasks": ["a", "b"], "grad_cosine": [[1, "x"], [0.5]]}
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n' + json.dumps(bad) + "\n")
    code, _, err = run_cli("affinity", tmp_path / "run")
    assert code == 2 and "metrics.jsonl:2: grad_cosine is not a 2 x 2 matrix of numbers" in err
    assert not (tmp_path / "run" / "affinity").exists()


def test_affinity_from_a_trained_run(tmp_path, tokenizer_dir, mixture_dir, run_cli):
    config = make_config(tmp_path, tokenizer_dir, steps=4, log_every_steps=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code, _, err = run_cli("--mixtures-dir", mixture_dir, "train", path, "balancing.method=mgda", PACKED)
    assert code == 0, err
    code, out, err = run_cli("affinity", config.run_dir)
    assert "suggested groups" in out
    assert code == 0, err
    result = json.loads((config.run_dir / "affinity" / "affinity.json").read_text())
    assert result["tasks"] == ["add_numbers", "color_lookup"] and result["log_lines"] == 2
    assert result["cosine"][0][0] == pytest.approx(1.0) and -1 <= result["cosine"][0][1] <= 1


def test_lookahead_equals_an_sgd_step_taken_apart_and_sees_conflict():
    """_lookahead's Z against torch's SGD on a copy of the model; two tasks with the same inputs and opposite
    targets: a step for one lowers its own loss (Z[i, i] > 0) and raises the other's (Z[i, j] < 0)."""
    import copy

    from t2t.affinity import _lookahead
    from t2t.batching import Example, pad_batch
    from t2t.modeling import loss_sums

    torch.manual_seed(0)
    model = tiny_t5().eval()
    inputs = [[5, 9, 12, 1], [7, 7, 3, 1], [20, 4, 1]]
    batches = {"yes": {"examples": [Example(i, [30], 0) for i in inputs], "pad": 0},
               "no": {"examples": [Example(i, [31], 0) for i in inputs], "pad": 0}}  # fmt: skip
    tensors = {t: pad_batch(b["examples"]).tensors for t, b in batches.items()}

    def mean_loss(m, task):
        sums = loss_sums(m, tensors[task], 1)
        return sums.loss / sums.tokens

    before = [p.detach().clone() for p in model.parameters()]
    z = _lookahead(model, ["yes", "no"], batches, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # left as it was

    for i, task in enumerate(["yes", "no"]):
        stepped = copy.deepcopy(model)
        optimizer = torch.optim.SGD(stepped.parameters(), lr=0.05)
        mean_loss(stepped, task).backward()
        optimizer.step()
        with torch.no_grad():
            expected = [1 - float(mean_loss(stepped, t)) / float(mean_loss(model, t)) for t in ["yes", "no"]]
        assert z[i] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert z[0, 0] > 0 and z[1, 1] > 0 and z[0, 1] < 0 and z[1, 0] < 0


def test_affinity_lookahead_from_a_run_without_a_gradient_method(
    tmp_path, tokenizer_dir, mixture_dir, run_cli
):
    config = make_config(tmp_path, tokenizer_dir, steps=4, log_every_steps=2, save_every_steps=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code, _, err = run_cli("--mixtures-dir", mixture_dir, "train", path)
    assert code == 0, err
    code, _, err = run_cli("affinity", config.run_dir)
    assert code == 2 and "logged no gradient cosines" in err
    code, out, err = run_cli("--mixtures-dir", mixture_dir, "affinity", config.run_dir, "--lookahead",
                             "--lookahead-batch", "8", "--lookahead-lr", "0.01")  # fmt: skip
    assert code == 0, err
    assert "lookahead affinity over 2 checkpoint(s)" in out and "suggested groups" in out
    result = json.loads((config.run_dir / "affinity" / "affinity.json").read_text())
    assert result["tasks"] == ["add_numbers", "color_lookup"]
    assert result["lookahead_checkpoints"] == ["step_00000002", "step_00000004"]
    z = np.array(result["lookahead"])
    assert z.shape == (2, 2) and (np.diag(z) > 0).all()  # a step on a task's own loss lowers it
    assert "cosine" not in result and (config.run_dir / "affinity" / "lookahead.png").is_file()
    with (config.run_dir / "metrics.jsonl").open("a") as log:  # a torn log line is refused, lookahead or not
        log.write("{not json\n")
    code, _, err = run_cli("--mixtures-dir", mixture_dir, "affinity", config.run_dir, "--lookahead")
    assert code == 2 and "not a JSON line" in err and "metrics.jsonl" in err
