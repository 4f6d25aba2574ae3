"""Every bad input is one clear line naming where it is, with exit code 2 (or 1 for lint findings)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import golden_rows, qa_task, write_jsonl, write_task


def tmpl(input_text="Q: {{ question }}", target="{{ answer }}", name="plain", **extra):
    return [{"name": name, "input": input_text, "target": target, **extra}]


# (case id, how to break the task folder, command, expected exit code, regex the one stderr/stdout line matches)
CASES = [
    (
        "malformed_yaml",
        lambda d: (d / "toy_qa.yaml").write_text("name: toy_qa\nversion: [1\n"),
        "render",
        2,
        r"toy_qa\.yaml:3: malformed YAML",
    ),
    (
        "unknown_key",
        lambda d: write_task(d, qa_task(colour="red")),
        "render",
        2,
        r"toy_qa\.yaml:\d+, task 'toy_qa': unknown key 'colour'",
    ),
    (
        "unknown_nested_key",
        lambda d: write_task(d, qa_task(templates=tmpl(inptu="x"))),
        "render",
        2,
        r"toy_qa\.yaml:\d+, task 'toy_qa': unknown key 'templates\.0\.inptu'",
    ),
    (
        "missing_key",
        lambda d: write_task(d, {k: v for k, v in qa_task().items() if k != "cluster"}),
        "render",
        2,
        r"task 'toy_qa': missing key 'cluster'",
    ),
    (
        "bad_task_name",
        lambda d: (d / "Toy.yaml").write_text("name: Toy\n"),
        "tasks",
        2,
        r"Toy\.yaml:\d+, task 'Toy': name: task name 'Toy' must be lowercase",
    ),
    (
        "name_mismatch",
        lambda d: (
            (d / "other.yaml").write_text((d / "toy_qa.yaml").read_text()) or (d / "toy_qa.yaml").unlink()
        ),
        "tasks",
        2,
        r"other\.yaml:1: task name 'toy_qa' must match the file name 'other'",
    ),
    (
        "unknown_metric",
        lambda d: write_task(d, qa_task(metrics=["acuracy"])),
        "render",
        2,
        r"toy_qa\.yaml:\d+, task 'toy_qa': metrics: unknown metric 'acuracy'; known: accuracy",
    ),
    (
        "jinja_syntax",
        lambda d: write_task(d, qa_task(templates=tmpl("Q: {{ question }"))),
        "render",
        2,
        r"task 'toy_qa', template 'plain': Jinja syntax error in input: unexpected '}'",
    ),
    (
        "misspelled_field",
        lambda d: write_task(d, qa_task(templates=tmpl("Q: {{ questoin }}"))),
        "render",
        2,
        r"template 'plain': input uses undeclared field 'questoin' \(did you mean 'question'\?\)",
    ),
    (
        "sandbox",
        lambda d: write_task(d, qa_task(templates=tmpl("{{ ''.__class__.__mro__ }}"))),
        "render",
        2,
        r"template 'plain': input reaches for '__class__': refused by the sandbox",
    ),
    (
        "empty_template",
        lambda d: write_task(d, qa_task(templates=tmpl(target="  "))),
        "render",
        2,
        r"templates\.0\.target: must not be empty",
    ),
    (
        "duplicate_templates",
        lambda d: write_task(d, qa_task(templates=tmpl() + tmpl())),
        "render",
        2,
        r"template names must be unique; repeated: plain",
    ),
    (
        "missing_data_file",
        lambda d: (d / "data.jsonl").unlink(),
        "render",
        2,
        r"data\.jsonl, task 'toy_qa', split 'train': data file not found",
    ),
    (
        "non_utf8_row",
        lambda d: (d / "data.jsonl").write_bytes(
            b'{"question": "a", "answer": "b"}\n{"question": "caf\xe9", "answer": "c"}\n'
        ),
        "render",
        2,
        r"data\.jsonl:2, task 'toy_qa', split 'train': not valid UTF-8",
    ),
    (
        "broken_json_row",
        lambda d: (d / "data.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": \n'),
        "render",
        2,
        r"data\.jsonl:2, task 'toy_qa', split 'train': not valid JSON",
    ),
    (
        "empty_row",
        lambda d: (d / "data.jsonl").write_text('{"question": "a", "answer": "b"}\n\n'),
        "render",
        2,
        r"data\.jsonl:2, task 'toy_qa', split 'train': empty line",
    ),
    (
        "missing_column",
        lambda d: write_jsonl(d / "data.jsonl", [{"question": "a", "anwser": "b"}]),
        "render",
        2,
        r"split 'train': the data has no column 'answer' \(did you mean 'anwser'\?\)",
    ),
    (
        "empty_target_in_data",
        lambda d: write_jsonl(
            d / "data.jsonl", [{"question": "a", "answer": "b"}, {"question": "c", "answer": ""}]
        ),
        "render",
        2,
        r"task 'toy_qa', template 'plain', split 'train', row 1: target renders empty",
    ),
    (
        "unknown_generator",
        lambda d: write_task(
            d, qa_task(source={"kind": "generator", "generator": "add_number", "sizes": {"train": 5}})
        ),
        "render",
        2,
        r"unknown generator 'add_number' \(did you mean 'add_numbers'",
    ),
    (
        "bad_source_kind",
        lambda d: write_task(d, qa_task(source={"kind": "ftp", "path": "x"})),
        "render",
        2,
        r"source: kind must be one of hub, files, generator",
    ),
    (
        "bad_generator_size",
        lambda d: write_task(
            d, qa_task(source={"kind": "generator", "generator": "add_numbers", "sizes": {"train": 0}})
        ),
        "render",
        2,
        r"source\.sizes: Value error|split 'train' must have a positive size",
    ),
    (
        "unknown_template",
        lambda d: None,
        "render --template plian",
        2,
        r"task 'toy_qa': unknown template 'plian' \(did you mean 'plain'\?\)",
    ),
    (
        "unknown_split",
        lambda d: None,
        "render --split dev",
        2,
        r"split 'dev': no split 'dev'; the task has train",
    ),
    (
        "target_not_in_choices",
        lambda d: write_task(
            d,
            qa_task(
                answer_choices=["4", "5"],
                templates=tmpl(target="{{ answer }}"),
                golden=golden_rows(),
            ),
        ),
        "lint",
        1,
        r"template 'plain', split 'train', row 1: target 'lima' is not one of the answer choices \['4', '5'\]",
    ),
    (
        "golden_mismatch",
        lambda d: write_task(
            d,
            qa_task(golden=golden_rows("Q: 2 + 2?")),
        ),
        "lint",
        1,
        r"template 'plain', split 'golden', row 0: golden input differs: expected 'Q: 2 \+ 2\?', rendered 'Q: 2\+2\?'",
    ),
    (
        "unused_field",
        lambda d: (
            write_task(
                d,
                qa_task(
                    fields={"question": "", "answer": "", "topic": ""},
                    golden=golden_rows(topic="m"),
                ),
            )
            and write_jsonl(d / "data.jsonl", [{"question": "2+2?", "answer": "4", "topic": "math"}])
        ),
        "lint",
        1,
        r"task 'toy_qa': field 'topic' is declared but no template",
    ),
]


@pytest.mark.parametrize(("case", "breaker", "command", "code", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(task_dir, run_bounded, case, breaker, command, code, pattern):
    write_task(task_dir, qa_task())
    breaker(task_dir)
    verb, *options = command.split()
    args = [verb, "toy_qa", *options] if verb in ("render", "lint") else [verb]
    # within 20 s and 300 MB of Python allocations, and nothing written
    exit_code, out, err = run_bounded(task_dir, "--templates-dir", task_dir, *args)
    assert exit_code == code, (out, err)
    lines = (err if code == 2 else out).strip().splitlines()
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    if code == 2:
        assert lines[0].startswith("t2t: error: ")


def test_unknown_task_suggests_a_name(run_cli):
    code, _, err = run_cli("render", "add_number")
    assert code == 2
    assert err.strip().startswith("t2t: error: unknown task 'add_number' (did you mean 'add_numbers', ")


def test_same_task_name_in_two_folders_is_an_error(tmp_path, run_cli):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_task(tmp_path / folder, qa_task())
    code, _, err = run_cli("--templates-dir", tmp_path / "a", "--templates-dir", tmp_path / "b", "tasks")
    assert code == 2
    assert re.fullmatch(
        r"t2t: error: .*b/toy_qa\.yaml: task 'toy_qa' is defined twice: here and in .*a/toy_qa\.yaml\n", err
    )


def test_user_task_clashing_with_a_shipped_one(tmp_path, run_cli):
    write_task(tmp_path, qa_task(name="add_numbers"))
    code, _, err = run_cli("--templates-dir", tmp_path, "tasks")
    assert code == 2 and "task 'add_numbers' is defined twice" in err


def test_missing_templates_dir(tmp_path, run_cli):
    code, _, err = run_cli("--templates-dir", tmp_path / "nope", "tasks")
    assert code == 2 and err.strip().endswith("nope: task folder not found")


def test_a_dir_that_is_not_a_model_says_where_the_model_is(
    tmp_path, run_cli, tiny_tokenizer, monkeypatch, capsys
):
    """`--model` given a run dir, a checkpoint, an empty dir or a name that is neither a dir nor on the (offline)
    hub: one line saying what it is and where its model is, exit 2, for every command that loads a model."""
    from t2t.modeling import build_tiny_t5
    from t2t.train_config import TinyModelSpec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny_t5(TinyModelSpec(d_model=16, num_layers=1, num_heads=2, d_ff=32), tiny_tokenizer)
    run_dir, unfinished = tmp_path / "run", tmp_path / "unfinished"
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    for where in (run_dir / "model", checkpoint / "model", unfinished / "checkpoints" / "step_00000002" / "model",
                  unfinished / "checkpoints" / "step_00000010" / "model"):  # fmt: skip
        model.save_pretrained(str(where))
        tiny_tokenizer.save_pretrained(str(where))
    (tmp_path / "empty").mkdir()
    capsys.readouterr()  # the saves' progress bars
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"text": "a plum"}])
    cases = [
        (run_dir, f"a run dir or checkpoint, not a model dir: its model is {run_dir / 'model'}"),
        (checkpoint, f"a run dir or checkpoint, not a model dir: its model is {checkpoint / 'model'}"),
        (unfinished, "a run dir with no final model yet, not a model dir: its newest checkpoint's model is "
                     f"{unfinished / 'checkpoints' / 'step_00000010' / 'model'}"),
        (tmp_path / "empty", "the dir holds no config.json: not a model dir (a plain HF dir, or a run dir's model/)"),
        (tmp_path / "nope", "no such local dir, and as a hub name: "),
    ]  # fmt: skip
    for path, said in cases:
        for command in (["eval", "--tasks", "sentiment", "--out", str(tmp_path / "out")],
                        ["predict", "--task", "sentiment", "--input", str(rows), "--out", str(tmp_path / "p.jsonl")]):  # fmt: skip
            code, _, err = run_cli(command[0], "--model", path, *command[1:])
            assert code == 2, (command, err)
            assert err.startswith(f"t2t: error: {path}: cannot load model: {said}"), (command, err)
            assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.jsonl").exists()
    # the model dir itself loads: these are the paths the lines point to
    code, _, err = run_cli("eval", "--model", run_dir / "model", "--tasks", "sentiment", "--out", tmp_path / "out",
                           "--max-examples", "2")  # fmt: skip
    assert code == 0, err


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory):
    """A tiny T5 saved as t2t exports one: weights, tokenizer, t2t_encoding.json."""
    from t2t.modeling import build_tiny_t5
    from t2t.train_config import TinyModelSpec

    folder = tmp_path_factory.mktemp("model") / "model"
    build_tiny_t5(
        TinyModelSpec(d_model=16, num_layers=2, num_heads=2, d_ff=32), tiny_tokenizer
    ).save_pretrained(str(folder))
    tiny_tokenizer.save_pretrained(str(folder))
    (folder / "t2t_encoding.json").write_text('{"max_input_tokens": 32, "max_target_tokens": 8}\n')
    return folder


def _drop_a_layer(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "encoder.block.1." not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip


def _as_pickle(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _edit_json(name: str, **changes):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        data.update(changes)
        (folder / name).write_text(json.dumps(data))

    return edit


@pytest.mark.parametrize(("damage", "said"), [
    # each was an unexpected error (SafetensorError, RuntimeError, AttributeError, TypeError, JSONDecodeError) or,
    # worse, a model or tokenizer that loaded and answered: random weights, or a tokenizer of special tokens alone
    (lambda d: os.truncate(d / "model.safetensors", 100), "MODEL: cannot load model: a weights file is not "
     "readable as safetensors (Error while deserializing header: invalid header length): a torn or partial copy?"),
    (_drop_a_layer, "MODEL: cannot load model: the weights lack 9 of the 51 parameters config.json's model has "
     "(encoder.block.1.layer.0.SelfAttention.k.weight, encoder.block.1.layer.0.SelfAttention.o.weight, ...): a "
     "partial or torn copy, or a config.json that is not these weights'? (transformers would fill them with "
     "random values)"),
    (_edit_json("config.json", d_model=10**6, vocab_size=10**6), "MODEL: cannot load model: decoder.block.0.layer.0."
     "SelfAttention.k.weight is [16, 16] in model.safetensors, [16, 1000000] in the model config.json describes: "
     "a config.json that is not these weights'?"),
    (_as_pickle, "MODEL: cannot load model: the dir holds pytorch_model.bin (a pickle, which can run code as it "
     "loads) and no model.safetensors: t2t loads weights only from safetensors; convert it once where you trust "
     "the file (AutoModelForSeq2SeqLM.from_pretrained(DIR).save_pretrained(DIR) writes model.safetensors)"),
    (lambda d: [(d / n).unlink() for n in ("tokenizer.json", "spiece.model") if (d / n).exists()],
     "MODEL: cannot load tokenizer: the dir holds no vocabulary (none of spiece.model, tokenizer.json): a partial "
     "copy?"),
    # an AttributeError or a TypeError inside transformers, by its version
    (lambda d: (d / "tokenizer_config.json").write_text("[1, 2]"), "MODEL/tokenizer_config.json: cannot load "
     "tokenizer: a JSON list, where the object the library writes belongs"),
    (lambda d: (d / "config.json").write_text('{"d_model": 16,\n'), "MODEL/config.json:2: cannot load model: not "
     "valid JSON (Expecting property name enclosed in double quotes)"),
    (lambda d: (d / "t2t_encoding.json").write_text('{"max_input_tokens": "x"}'), "MODEL/t2t_encoding.json: not "
     "the encoding limits t2t writes (a JSON object whose max_input_tokens and max_target_tokens are positive "
     "integers)"),
    (lambda d: (d / "t2t_encoding.json").write_text('{"max_input'), "MODEL/t2t_encoding.json:1: unreadable "
     "encoding limits (Unterminated string starting at)"),
], ids=["torn_weights", "missing_weights", "config_not_the_weights", "pickle_weights", "tokenizer_no_vocabulary",
        "tokenizer_config_a_list", "config_torn", "encoding_limits_bad", "encoding_limits_torn"])  # fmt: skip
def test_a_model_dir_with_torn_or_foreign_files_is_one_line(model_dir, tmp_path, run_bounded, damage, said):
    """`--model` whose files are torn, partial, a pickle, or do not describe each other: one line naming the dir
    (and file), exit 2, nothing written, before any row is answered; the config's model is built on the meta
    device for the message, so a config of a 10^12-parameter model costs no memory."""
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    damage(folder)
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"text": "a plum"}])
    for command in (["predict", "--task", "sentiment", "--input", str(rows), "--out", str(tmp_path / "p.jsonl")],
                    ["eval", "--tasks", "sentiment", "--out", str(tmp_path / "out"), "--max-examples", "2"]):  # fmt: skip
        code, _, err = run_bounded(tmp_path, command[0], "--model", folder, *command[1:], megabytes=150)
        assert code == 2, err
        # transformers' "Loading weights" bar comes first where the weights were read
        lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "Loading weights" not in line]
        assert lines == [f"t2t: error: {said.replace('MODEL', str(folder))}"]


def test_a_hub_model_from_the_offline_cache_loads_from_safetensors_only(model_dir, tmp_path):
    """The hub path as a user offline meets it: `t2t predict --model org/name` read from the local hub cache
    (HF_HUB_CACHE, HF_HUB_OFFLINE=1; a process of its own, as the libraries read both at import). A cached model
    with safetensors answers; one cached with only pytorch_model.bin is one line saying t2t loads safetensors only
    (transformers' own line advised not to ask for them)."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "hub"
    for name, pickle in (("tiny-t5", False), ("tiny-t5-pickle", True)):
        snapshot = cache / f"models--someorg--{name}" / "snapshots" / "abc123"
        shutil.copytree(model_dir, snapshot)
        (cache / f"models--someorg--{name}" / "refs").mkdir()
        (cache / f"models--someorg--{name}" / "refs" / "main").write_text("abc123")
        if pickle:
            torch.save(load_file(str(snapshot / "model.safetensors")), snapshot / "pytorch_model.bin")
            (snapshot / "model.safetensors").unlink()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"text": "a plum"}])
    results = {}
    for name in ("tiny-t5", "tiny-t5-pickle"):
        command = [sys.executable, "-m", "t2t", "predict", "--model", f"someorg/{name}", "--task", "sentiment",
                   "--input", str(rows), "--out", str(tmp_path / f"{name}.jsonl")]  # fmt: skip
        results[name] = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert results["tiny-t5"].returncode == 0, results["tiny-t5"].stderr[-2000:]
    assert json.loads((tmp_path / "tiny-t5.jsonl").read_text())["answer"] in ("negative", "positive")
    refused = results["tiny-t5-pickle"]
    assert refused.returncode == 2 and not (tmp_path / "tiny-t5-pickle.jsonl").exists()
    assert refused.stderr == (
        "t2t: error: someorg/tiny-t5-pickle: cannot load model: no such local dir, and as a hub name: "
        "someorg/tiny-t5-pickle does not appear to have a file named model.safetensors or "
        "model.safetensors.index.json and thus cannot be loaded with `safetensors`. t2t loads weights only from "
        "safetensors (a pickle can run code as it loads); HF_HUB_OFFLINE is set, so only the local cache was read\n"
    )


def test_weights_the_model_does_not_use_are_said(model_dir, tmp_path, run_cli):
    """A tensor beyond what config.json's model has (here a third encoder block: a config that says fewer layers
    than the weights hold loses them) is said on stderr; the model still loads and answers."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    extra = {
        k.replace("block.1.", "block.2."): v.clone() for k, v in weights.items() if "encoder.block.1." in k
    }
    save_file({**weights, **extra}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"text": "a plum"}])
    code, _, err = run_cli("predict", "--model", folder, "--task", "sentiment", "--input", rows,
                           "--out", tmp_path / "p.jsonl")  # fmt: skip
    assert code == 0, err
    assert (f"warning: {folder}: the weights hold 9 tensors the model does not use (encoder.block.2.layer.0."
            "SelfAttention.k.weight, encoder.block.2.layer.0.SelfAttention.o.weight, ...): does config.json "
            "describe these weights?") in err  # fmt: skip
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(("args", "said"), [
    # both were found only after the model loaded: --device tpu as an unexpected RuntimeError from torch
    (["eval", "--tasks", "sentiment", "--split", "dev", "--out", "OUT"],
     "sentiment.yaml, task 'sentiment', split 'dev': no split 'dev'; the task has train, validation"),
    (["eval", "--tasks", "sentiment", "--device", "tpu", "--out", "OUT"], "--device tpu: use auto, cpu, cuda or cuda:N"),
    (["predict", "--task", "sentiment", "--input", "ROWS", "--out", "OUT", "--device", "cuda:x"],
     "--device cuda:x: use auto, cpu, cuda or cuda:N"),
    (["serve", "--tasks", "sentiment", "--device", "mps"], "--device mps: use auto, cpu, cuda or cuda:N"),
])  # fmt: skip
def test_a_split_or_device_that_cannot_be_is_refused_before_the_model_loads(
    tmp_path, run_bounded, args, said
):
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n')
    args = [{"OUT": str(tmp_path / "out"), "ROWS": str(tmp_path / "rows.jsonl")}.get(a, a) for a in args]
    # no model at all: the refusal must come first
    code, out, err = run_bounded(tmp_path, *args, "--model", str(tmp_path / "no-model"), seconds=30)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("t2t: error: ") and said in err, err


@pytest.mark.parametrize(("args", "said"), [
    (["demo", "--steps", "2", "--out", "FILE/x"], "FILE/x: FILE is a file, where a folder is needed"),
    (["import", "promptsource", "PS", "--out", "FILE/x/y"], "FILE/x/y: FILE is a file, where a folder is needed"),
    (["new-task", "mine", "--from", "ROWS", "--out", "FILE/x"], "FILE/x: FILE is a file, where a folder is needed"),
    (["tokenizer", "train", "demo", "--vocab-size", "60", "--rows-per-task", "5", "--out", "FILE/x"],
     "FILE/x: FILE is a file, where a folder is needed"),
    (["tokenizer", "train", "demo", "--vocab-size", "60", "--rows-per-task", "5", "--out", "FILE"],
     "FILE: a file, where a folder is needed"),
    # eval and predict wrote their --out after the model's work (no model dir here: the --out line must come first)
    (["eval", "--model", "NOMODEL", "--tasks", "sentiment", "--out", "FILE/x"],
     "FILE/x: FILE is a file, where a folder is needed"),
    (["eval", "--model", "NOMODEL", "--tasks", "sentiment", "--out", "FILE"], "FILE: a file, where a folder is needed"),
    (["predict", "--model", "NOMODEL", "--task", "sentiment", "--input", "ROWS", "--out", "FILE/p.jsonl"],
     "FILE/p.jsonl: FILE is a file, where a folder is needed"),
    (["predict", "--model", "NOMODEL", "--task", "sentiment", "--input", "ROWS", "--out", "DIR"],
     "DIR: a folder, where a file is needed"),
    (["export", "merged", "--model", "NOMODEL", "--adapter", "x", "--out", "FILE/m"],
     "FILE/m: FILE is a file, where a folder is needed"),
    # found when the logs started, after the tokenizer had trained
    (["train", "CONFIG", "run_dir=FILE/x", "steps=1"], "run_dir FILE/x: FILE is a file, where a folder is needed"),
])  # fmt: skip
def test_an_output_path_that_cannot_be_made_is_one_line(tmp_path, run_cli, args, said):
    # an --out under a file was an "unexpected NotADirectoryError / FileExistsError" with a traceback file; and
    # eval and predict found it only when they wrote their results, after the model's work: every --out is
    # checked before the command starts
    from pathlib import Path

    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n')
    (tmp_path / "dir").mkdir()
    named = {
        "PS": str(Path(__file__).parent / "fixtures" / "promptsource"),
        "ROWS": str(tmp_path / "rows.jsonl"),
        "NOMODEL": str(tmp_path / "no-model"),
        "DIR": str(tmp_path / "dir"),
        "CONFIG": str(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml"),
    }
    args = [named.get(a, a.replace("FILE", str(tmp_path / "file"))) for a in args]
    code, _, err = run_cli(*args)
    said = said.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "dir"))
    assert code == 2 and err.strip().splitlines() == [f"t2t: error: {said}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "rows.jsonl"]
    assert list((tmp_path / "dir").iterdir()) == []


def test_a_mixture_with_nothing_to_score_is_refused_before_the_model_loads(tmp_path, run_cli):
    # eval and export wrote a report (and lm-eval tasks) of no task at all, exit 0
    (tmp_path / "plain.yaml").write_text("name: plain\nmembers: {sentiment: 1.0}\n")
    (tmp_path / "text_only.yaml").write_text("name: text_only\nmembers: {world_text: 1.0}\n")
    dirs = ["--mixtures-dir", str(tmp_path)]
    cases = [
        (["eval", "--model", str(tmp_path / "no-model"), "--mixture", "plain", "--held-out", "--out", "OUT"],
         "plain.yaml: mixture plain holds out no task (its file has no held_out list)"),
        (["export", "lm-eval", "--mixture", "plain", "--held-out", "--out", "OUT"],
         "plain.yaml: mixture plain holds out no task (its file has no held_out list)"),
        (["eval", "--model", str(tmp_path / "no-model"), "--mixture", "text_only", "--out", "OUT"],
         "text_only.yaml: mixture text_only has no task with answers to score (span corruption trains, it answers "
         "nothing)"),
    ]  # fmt: skip
    for args, said in cases:
        code, out, err = run_cli(*dirs, *[str(tmp_path / "out") if a == "OUT" else a for a in args])
        assert code == 2 and out == "" and err.strip().splitlines() == [f"t2t: error: {tmp_path / said}"], err
        assert not (tmp_path / "out").exists()


def test_serve_on_a_port_in_use_or_a_host_that_does_not_resolve_is_one_line_before_the_model_loads(
    tmp_path, run_cli
):
    # uvicorn logged the bind error and exited with 3, after t2t had printed that it served there
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(
            "serve", "--model", tmp_path / "no-model", "--tasks", "sentiment", "--port", str(port)
        )
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"t2t: error: --host 127.0.0.1 --port {port}: cannot listen there: Address already in use"
    ]
    code, out, err = run_cli(
        "serve", "--model", tmp_path / "no-model", "--tasks", "sentiment", "--host", "t2t.invalid"
    )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("t2t: error: --host t2t.invalid: "), err
