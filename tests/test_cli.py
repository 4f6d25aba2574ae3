"""The commands people read: tasks, render, lint, new-task; and the shipped files inside a wheel."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import qa_task, write_task

REPO = Path(__file__).resolve().parents[1]


def test_tasks_lists_every_shipped_task(run_cli):
    code, out, _ = run_cli("tasks")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1] == f"{len(lines) - 1} tasks"
    row = next(line.split() for line in lines if line.startswith("add_numbers "))
    assert row == ["add_numbers", "arithmetic", "generator:add_numbers", "3", "templates"]


def test_user_tasks_join_the_shipped_ones(task_dir, run_cli, monkeypatch):
    write_task(task_dir, qa_task())
    code, out, _ = run_cli("--templates-dir", task_dir, "tasks")
    assert code == 0 and "toy_qa" in out and "add_numbers" in out
    monkeypatch.setenv("T2T_TEMPLATES_PATH", str(task_dir))
    code, out, _ = run_cli("tasks")
    assert code == 0 and "toy_qa " in out


def test_render_prints_examples_exactly(task_dir, run_cli):
    write_task(task_dir, qa_task())
    code, out, _ = run_cli("--templates-dir", task_dir, "render", "toy_qa", "-n", "2", "--template", "polite")
    assert code == 0
    assert out == (
        "── toy_qa · template 'polite' · train row 0 " + "─" * 20 + "\n"
        "input:   Please answer: 2+2?\n"
        "target:  4\n"
        "── toy_qa · template 'polite' · train row 1 " + "─" * 20 + "\n"
        "input:   Please answer: capital of peru?\n"
        "target:  lima\n"
    )


def test_render_builtin_task_shows_choices(run_cli):
    code, out, _ = run_cli("render", "sentiment", "-n", "4", "--split", "validation", "--seed", "1")
    assert code == 0
    assert out.count("── sentiment · template ") == 4
    for line in (line for line in out.splitlines() if line.startswith("choices: ")):
        assert line in ("choices: negative | positive", "choices: bad | good")


def test_lint_everything_shipped_passes(run_cli):
    code, out, err = run_cli("lint")
    assert code == 0, out
    assert out == "" and err.strip().endswith("tasks checked, 0 problems")


def test_new_task_from_a_file_lints_clean_and_renders(tmp_path, run_cli):
    data = tmp_path / "reviews.parquet"
    pd.DataFrame(
        {"review": ["great film", "dull plot"], "rating": ["5", "1"], "label": ["pos", "neg"]}
    ).to_parquet(data)
    out_dir = tmp_path / "mine"
    code, out, _ = run_cli("new-task", "my_reviews", "--from", data, "--out", out_dir)
    assert code == 0 and "my_reviews.yaml" in out
    text = (out_dir / "my_reviews.yaml").read_text()
    assert 'train: "../reviews.parquet"' in text
    assert 'input: "review: {{ review }}\\nrating: {{ rating }}"' in text and 'target: "{{ label }}"' in text
    assert run_cli("--templates-dir", out_dir, "lint", "my_reviews")[0] == 0
    code, out, err = run_cli("--templates-dir", out_dir, "render", "my_reviews", "-n", "2")
    assert "input:   review: great film\n         rating: 5\ntarget:  pos\n" in out
    assert "input:   review: dull plot\n         rating: 1\ntarget:  neg\n" in out
    assert err.startswith("my_reviews: 2 of 2 train rows, the ones `t2t eval --max-examples 2` takes")
    # Refuses to overwrite without --force; nothing is half-written on bad input.
    assert run_cli("new-task", "my_reviews", "--from", data, "--out", out_dir)[0] == 2
    assert run_cli("new-task", "Bad-Name", "--from", data, "--out", out_dir)[0] == 2
    assert run_cli("new-task", "other", "--from", tmp_path / "missing.jsonl", "--out", out_dir)[0] == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["my_reviews.yaml"]
    # a column no template can read by its name: one line (`loop` was an unexpected ValidationError)
    for column, why in (("first name", "is not a valid field name"), ("loop", "is a name templates reserve"),
                        ("none", "is a name templates reserve")):  # fmt: skip
        pd.DataFrame({column: ["a"], "label": ["b"]}).to_csv(tmp_path / "odd.csv", index=False)
        code, _, err = run_cli("new-task", "odd", "--from", tmp_path / "odd.csv", "--out", out_dir)
        assert code == 2 and err.strip().splitlines() == [
            f"t2t: error: {tmp_path / 'odd.csv'}: column {column!r} {why}" + (
                ": rename it" if column == "first name" else ", so no template could read it: rename it")
        ]  # fmt: skip
    assert sorted(p.name for p in out_dir.iterdir()) == ["my_reviews.yaml"]


@pytest.mark.slow
def test_wheel_carries_the_shipped_templates_and_mixtures(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), repo],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("t2t-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "t2t/_data/templates/builtin/add_numbers.yaml" in names
    assert "t2t/_data/templates/catalog/super_glue_rte.yaml" in names
    # Installed from the wheel, away from the checkout, t2t finds its shipped tasks.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", "import t2t.registry as r; print(r.shipped_dir('templates')); "
         "print(len(r.Registry.default().task_names))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    folder, count = result.stdout.split()
    assert folder == str(target / "t2t" / "_data" / "templates")
    assert int(count) >= 25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--steps", "0"], "argument --steps: must be a positive integer, not '0'"),
        (["render", "add_numbers", "-n", "-2"], "argument -n: must be a positive integer, not '-2'"),
        (
            ["mixture", "sample", "demo", "--start", "-1"],
            "argument --start: must be an integer >= 0, not '-1'",
        ),
        (
            ["eval", "--model", "m", "--tasks", "x", "--out", "o", "--batch-size", "many"],
            "must be a positive integer",
        ),
        (["serve", "--model", "m", "--tasks", "x", "--port", "70000"], "must be a port number in 1..65535"),
        (
            ["serve", "--model", "m", "--tasks", "x", "--wait-ms", "-5"],
            "must be a finite number >= 0, not '-5'",
        ),
        (
            ["serve", "--model", "m", "--tasks", "x", "--wait-ms", "nan"],
            "must be a finite number >= 0, not 'nan'",
        ),
        (["affinity", "run", "--lookahead", "--lookahead-lr", "0"], "must be a finite number > 0, not '0'"),
        (
            ["affinity", "run", "--threshold", "nan"],
            "argument --threshold: must be a finite number, not 'nan'",
        ),
        (["compare", "demo", "--margin", "-1"], "argument --margin: must be a finite number >= 0, not '-1'"),
        (
            ["affinity", "run", "--lookahead", "--lookahead-batch", "-3"],
            "must be a positive integer, not '-3'",
        ),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(run_cli, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        run_cli(*args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_output_piped_into_head_ends_quietly(tmp_path):
    result = subprocess.run(f"{sys.executable} -m t2t render add_numbers -n 400 | head -1", shell=True,
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.stdout.startswith("── add_numbers") and "Traceback" not in result.stderr


def test_thread_settings_from_the_environment():
    import os

    from t2t.cli import configure_threads

    allowed = len(os.sched_getaffinity(0))
    env = {}
    assert configure_threads(env, torch_loaded=False, busy=0.2) is None
    assert env["OMP_NUM_THREADS"] == str(allowed)  # a quiet machine: every CPU this process may use
    env = {}
    configure_threads(env, torch_loaded=False, busy=allowed + 3.0)
    assert env["OMP_NUM_THREADS"] == "1"  # all busy elsewhere: one thread, not threads waiting on each other
    env = {"OMP_NUM_THREADS": "8"}  # the user's (or torchrun's) choice stays
    configure_threads(env, torch_loaded=False, busy=0.0)
    assert env == {"OMP_NUM_THREADS": "8"}
    env = {"T2T_NUM_THREADS": "3", "OMP_NUM_THREADS": "8"}  # ... unless T2T_NUM_THREADS says otherwise
    assert configure_threads(env, torch_loaded=False, busy=0.0) is None and env["OMP_NUM_THREADS"] == "3"
    for bad in ("0", "two", "-1", ""):
        problem = configure_threads({"T2T_NUM_THREADS": bad}, torch_loaded=False, busy=0.0)
        assert problem == f"T2T_NUM_THREADS must be a positive integer, not {bad!r}"
    untouched = {"T2T_NUM_THREADS": "1"}
    assert configure_threads(untouched, torch_loaded=True) is None and untouched == {"T2T_NUM_THREADS": "1"}


def train_two_tasks(run_cli, tmp_path, tokenizer_dir, mixture_dir, *overrides):
    """`t2t train` of a tiny T5 for 2 steps on add_numbers and color_lookup (limits 48 + 8), batching left to auto
    unless `overrides` say otherwise; (exit code, stdout, stderr)."""
    return run_cli(
        "--mixtures-dir", mixture_dir, "train", "configs/tiny_cpu.yaml", f"run_dir={tmp_path / 'run'}",
        "mixture=two_tasks", "tokenizer={pretrained: " + str(tokenizer_dir) + "}", "steps=2", "trackers=[]",
        "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}", "max_input_tokens=48",
        "max_target_tokens=8", "save_every_steps=null", *overrides,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "why", "keep_mix"),
    [
        # rows whose target side (200) dwarfs these examples' (at most 8): 8 of them fill the 2,048 budget but hold
        # a fifth of real tokens, padded batches keeping the mix two thirds, and keep the mix as well: auto pads
        (["batching.pack_input_tokens=48", "batching.pack_target_tokens=200"], "padded, keeping each batch's task "
         "mix: its batches hold more real tokens than packed rows (8 rows of 48+200 tokens); on the stream's first "
         "2048 examples", True),
        # a budget of 40 slots, below the longest example the limits allow (48 + 8), and keep_mix: false: length-
        # bucketed batches of at most 40 hold more real tokens than packed rows of 56 slots
        (["batching.max_tokens=40", "batching.keep_mix=false"], "padded, bucketed by length (batching.keep_mix: "
         "false): its batches hold more real tokens than packed rows (1 row of 48+8 tokens); ", False),
        (["batching.batch_size=4", "batching.max_tokens=null"], "padded, keeping each batch's task mix: "
         "batching.batch_size counts examples per padded batch (give max_tokens to let auto pack)", True),
    ],
    ids=["sides", "keep_mix-false", "batch_size"],
)  # fmt: skip
def test_train_with_auto_batching_pads_where_packed_rows_would_not_do(run_cli, tmp_path, tokenizer_dir,
                                                                      mixture_dir, overrides, why, keep_mix):  # fmt: skip
    code, out, err = train_two_tasks(run_cli, tmp_path, tokenizer_dir, mixture_dir, *overrides)
    assert code == 0, err
    assert f"batching: auto chose {why}" in out
    assert "not distributed, precision fp32, batching padded, balancing equal" in out
    # the batching the run used, as its checkpoint records it
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "run_state.json").read_text())
    assert (state["identity"]["batching"]["strategy"], state["identity"]["batching"]["keep_mix"]) == (
        "padded", keep_mix)  # fmt: skip
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_train_with_auto_batching_packs_where_padded_batches_would_not_keep_the_mix(run_cli, tmp_path, tokenizer_dir,
                                                                                   mixture_dir):  # fmt: skip
    # 40 slots: padded batches meant to keep the mix hold two or three examples, of one task mostly (0.5 from the
    # mixture's mix); packed rows of 56 slots (the longest example allowed) mix both tasks: auto packs, over budget
    code, out, err = train_two_tasks(run_cli, tmp_path, tokenizer_dir, mixture_dir, "batching.max_tokens=40")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("batching: auto chose "))
    packed_mix, padded_mix = (float(x) for x in re.findall(r"packed [\d.]+% / ([\d.]+), padded keeping the mix [\d.]+% "
                                                            r"/ ([\d.]+),", line)[0])  # fmt: skip
    assert padded_mix > max(0.3, 2 * packed_mix, packed_mix + 0.1)
    assert line.startswith("batching: auto chose packed (1 row of 48+8 tokens): t5 attends within each packed "
                           f"example, and its rows keep the task mix far better ({packed_mix:.2f} from the mixture's, "
                           f"against {padded_mix:.2f} for padded batches meant to keep it); ")  # fmt: skip
    assert line.endswith("; its batches take 56 token slots, over batching.max_tokens=40: a row holds the longest "
                         "example the limits allow (48+8)")  # fmt: skip
    assert "not distributed, precision fp32, batching packed, balancing equal" in out
    assert "precision bf16 on a CPU" not in out  # said only where bf16 is asked for on a CPU
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "run_state.json").read_text())
    assert state["identity"]["batching"]["strategy"] == "packed"


def test_a_run_dirs_config_trains_the_batches_of_the_run(run_cli, tmp_path, tokenizer_dir, mixture_dir):
    """config.yaml in the run dir is the run's config: trained again from it, auto makes the same choice. (It once
    wrote every batching default out, rows_per_batch and keep_mix among them, which auto then read as set: a
    `t2t compare` single-task run, retrained from its config.yaml, got length-bucketed batches instead of the
    run's batches keeping the mix.)"""
    code, out, _ = train_two_tasks(run_cli, tmp_path, tokenizer_dir, mixture_dir)
    assert code == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["batching"] == {
        "strategy": "auto",
        "max_tokens": 2048,
        "batch_size": None,
        "window_examples": 2048,
    }
    code, again, _ = run_cli("--mixtures-dir", mixture_dir, "train", str(tmp_path / "run" / "config.yaml"),
                             f"run_dir={tmp_path / 'again'}")  # fmt: skip
    assert code == 0
    chose = [line for line in out.splitlines() if line.startswith("batching: auto chose")]
    assert len(chose) == 1 and chose == [
        line for line in again.splitlines() if line.startswith("batching: auto")
    ]
    first, second = (
        json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
        for name in ("run", "again")
    )
    assert first["tokens_seen"] == second["tokens_seen"] and first["loss"] == second["loss"]


def test_t2t_num_threads_reaches_torch_through_the_command(tmp_path, tokenizer_dir, mixture_dir):
    env = {**os.environ, "T2T_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "t2t", "--mixtures-dir", str(mixture_dir), "train", "configs/tiny_cpu.yaml",
               f"run_dir={tmp_path / 'run'}", "mixture=two_tasks", "tokenizer={pretrained: " + str(tokenizer_dir) + "}",
               "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}", "steps=1", "trackers=[]",
               "max_input_tokens=48", "max_target_tokens=8"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 process(es) of 1 thread(s)" in result.stdout
    # configs/tiny_cpu.yaml leaves the strategy to auto: packed rows for this T5, said with its reasons
    assert "batching: auto chose packed (2 rows of " in result.stdout and "batching packed," in result.stdout
    # none of the libraries' notices about what t2t does on purpose (tied embeddings left out of the safetensors
    # state, DeepSpeed on the CPU, a progress bar per model written)
    for chatter in ("Removed shared tensor", "Setting accelerator to CPU", "Writing model shards"):
        assert chatter not in result.stdout + result.stderr, chatter
    bad = subprocess.run(
        command, cwd=REPO, env={**env, "T2T_NUM_THREADS": "many"}, capture_output=True, text=True
    )
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "t2t: error: T2T_NUM_THREADS must be a positive integer, not 'many'"
    )


def test_train_in_bf16_on_a_cpu_says_what_it_costs(tmp_path, tokenizer_dir, mixture_dir):
    # in a process of its own: accelerate keeps one precision per process
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CPU case: here bf16 runs on the GPU")
    result = subprocess.run(
        [sys.executable, "-m", "t2t", "--mixtures-dir", str(mixture_dir), "train", "configs/tiny_cpu.yaml",
         f"run_dir={tmp_path / 'run'}", "mixture=two_tasks", "tokenizer={pretrained: " + str(tokenizer_dir) + "}",
         "steps=1", "trackers=[]", "model.tiny={d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}",
         "max_input_tokens=48", "max_target_tokens=8", "precision=bf16"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ("warning: precision bf16 on a CPU: 4-13x slower than fp32 without bf16 instructions (precision: auto "
            "takes fp32 on a CPU and bf16 on a GPU)") in result.stdout.splitlines()  # fmt: skip
    assert "not distributed, precision bf16, batching" in result.stdout
