"""Loading rows: local files of each format, the hub code path through a local dir, generators, filters."""

import json
from pathlib import Path

import pandas as pd
import pytest

from t2t.config import load_task_spec
from t2t.generators import GENERATORS, generate
from t2t.registry import Registry
from t2t.sources import available_offline, load_split
from t2t.templates import Task
from tests.conftest import qa_task, write_task

ROWS = [
    {"question": "2+2?", "answer": "4"},
    {"question": "3+3?", "answer": "6"},
    {"question": "1+0?", "answer": "1"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_format(tmp_path, suffix):
    frame = pd.DataFrame(ROWS)
    data = tmp_path / f"rows{suffix}"
    {".jsonl": lambda: data.write_text("".join(json.dumps(r) + "\n" for r in ROWS)),
     ".csv": lambda: frame.to_csv(data, index=False),
     ".parquet": lambda: frame.to_parquet(data)}[suffix]()  # fmt: skip
    path = write_task(tmp_path, qa_task(source={"kind": "files", "splits": {"train": data.name}}))
    task = Task(load_task_spec(path))
    rows = load_split(task, "train")
    # csv columns get datasets' inferred types ("4" reads as 4); every format renders the same text.
    assert [task.render(r, "plain").targets for r in rows.rows] == ["4", "6", "1"]
    assert rows.rows.column_names == ["question", "answer"]
    assert rows.source_rows.tolist() == [0, 1, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_text_files_saved_with_a_byte_order_mark_and_crlf_load_as_the_same_rows(tmp_path, suffix):
    # Windows editors save UTF-8 with a byte order mark: t2t's own check of a jsonl file refused its first line
    # ("not valid JSON: Unexpected UTF-8 BOM") although the loader reads it
    text = {".jsonl": "".join(json.dumps(r) + "\r\n" for r in ROWS), ".json": json.dumps(ROWS),
            ".csv": "question,answer\r\n" + "".join(f"{r['question']},{r['answer']}\r\n" for r in ROWS)}[suffix]  # fmt: skip
    data = tmp_path / f"rows{suffix}"
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    path = write_task(tmp_path, qa_task(source={"kind": "files", "splits": {"train": data.name}}))
    task = Task(load_task_spec(path))
    rows = load_split(task, "train")
    assert rows.rows.column_names == ["question", "answer"]
    assert [task.render(r, "plain").inputs for r in rows.rows] == ["Q: 2+2?", "Q: 3+3?", "Q: 1+0?"]
    assert [task.render(r, "plain").targets for r in rows.rows] == ["4", "6", "1"]


def test_a_csv_field_longer_than_pythons_csv_limit_is_data(tmp_path, run_cli):
    """A 200,000-character document in a CSV field: t2t's check read it with Python's csv module, which refuses
    fields over 131,072 characters by default, and called the file malformed, although datasets (pandas) reads
    it. `t2t render` renders it (the task raises its output limit)."""
    document = "word " * 40_000
    data = tmp_path / "rows.csv"
    data.write_text(f'question,answer\nshort,a\n"{document}",b\n')
    write_task(tmp_path, qa_task(source={"kind": "files", "splits": {"train": data.name}}, golden=[],
                                 limits={"max_output_chars": 300_000}))  # fmt: skip
    code, out, err = run_cli("--templates-dir", tmp_path, "render", "toy_qa", "-n", "2", "--template", "plain",
                             "--json")  # fmt: skip
    assert code == 0, err
    inputs = sorted(json.loads(line)["input"] for line in out.splitlines())
    assert inputs == ["Q: short", f"Q: {document.strip()}"]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is put back


def test_relative_paths_resolve_from_the_task_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "tasks").mkdir()
    path = write_task(
        tmp_path / "tasks", qa_task(source={"kind": "files", "splits": {"train": "../data/qa.jsonl"}})
    )
    assert len(load_split(Task(load_task_spec(path)), "train")) == 3


def test_hub_code_path_with_a_local_dataset_dir(tmp_path):
    # datasets.load_dataset(path) is the same call for a hub id and a local dir; HF_*_OFFLINE is set in conftest.
    repo = tmp_path / "my_dataset" / "data"
    repo.mkdir(parents=True)
    pd.DataFrame(ROWS[:2]).to_parquet(repo / "train-00000-of-00001.parquet")
    pd.DataFrame(ROWS[2:]).to_parquet(repo / "dev-00000-of-00001.parquet")
    spec = qa_task(
        source={"kind": "hub", "path": "my_dataset", "splits": {"train": "train", "validation": "dev"}}
    )
    task = Task(load_task_spec(write_task(tmp_path, spec)))
    assert available_offline(task.spec)
    assert [r["answer"] for r in load_split(task, "train").rows] == ["4", "6"]
    assert [r["answer"] for r in load_split(task, "validation").rows] == ["1"]


def test_hub_dataset_unreachable_offline_is_a_clear_error(tmp_path):
    task = Task(
        load_task_spec(write_task(tmp_path, qa_task(source={"kind": "hub", "path": "someone/not_here"})))
    )
    assert not available_offline(task.spec)
    with pytest.raises(
        Exception, match=r"task 'toy_qa', split 'train': cannot load hub dataset 'someone/not_here'"
    ):
        load_split(task, "train")


@pytest.mark.parametrize(("command", "said"), [
    (["render", "toy_qa"], "task 'toy_qa', split 'train': cannot load hub dataset 'someone/not_here': "),
    (["eval", "--model", "someone/no_model", "--tasks", "toy_qa", "--split", "train", "--out", "OUT"],
     "someone/no_model: cannot load model: no such local dir, and as a hub name: "),
    (["train", "CONFIG", "RUN_DIR", "tokenizer={pretrained: someone/no_tokenizer}"],
     "someone/no_tokenizer: cannot load tokenizer: no such local dir, and as a hub name: "),
])  # fmt: skip
def test_where_the_hub_cannot_be_reached_a_hub_name_is_one_line_at_once(tmp_path, command, said):
    # a machine without a network and without HF_HUB_OFFLINE: the libraries retried for about 23 s per file,
    # printing a log line per try before t2t's line; now the hub is asked once (a TCP connection) and the local
    # cache read at once
    import os
    import subprocess
    import sys

    write_task(tmp_path, qa_task(source={"kind": "hub", "path": "someone/not_here"}))
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    named = {"OUT": str(tmp_path / "out"), "CONFIG": str(config), "RUN_DIR": f"run_dir={tmp_path / 'run'}"}
    command = [named.get(a, a) for a in command]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(
        HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "ds")
    )
    result = subprocess.run([sys.executable, "-m", "t2t", "--templates-dir", str(tmp_path), *command],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert said in result.stderr, result.stderr
    assert result.stderr.strip().endswith(
        "the hub at http://127.0.0.1:9 cannot be reached from here (Connection refused), so only the local "
        + ("datasets cache was read" if command[0] == "render" else "cache was read")
    ), result.stderr


def test_filter_drops_rows_and_keeps_source_indices(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i % 3)} for i in range(9)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = Task(load_task_spec(write_task(tmp_path, qa_task(filter="answer != '0'"))))
    split = load_split(task, "train")
    assert split.source_rows.tolist() == [1, 2, 4, 5, 7, 8]
    assert [r["question"] for r in split.rows] == ["q1", "q2", "q4", "q5", "q7", "q8"]


def test_generators_are_deterministic_and_splits_disjoint():
    sizes = {"train": 200, "validation": 30, "test": 30}
    for name in GENERATORS:
        first, again = generate(name, sizes, seed=3), generate(name, sizes, seed=3)
        assert first == again, name
        assert {s: len(r) for s, r in first.items()} == sizes
        keys = [json.dumps(r, sort_keys=True) for rows in first.values() for r in rows]
        assert len(keys) == len(set(keys)), f"{name}: a row repeats within or across splits"
    assert generate("add_numbers", sizes, seed=3) != generate("add_numbers", sizes, seed=4)


def test_generated_rows_are_correct():
    rows = (
        generate("add_numbers", {"train": 50}, 0)["train"] + generate("sum_check", {"train": 50}, 0)["train"]
    )
    for row in rows:
        if "answer" in row:
            assert int(row["answer"]) == row["a"] + row["b"]
        else:
            assert (row["total"] == row["a"] + row["b"]) == bool(row["label"]) and row["total"] >= 0
    for row in generate("dedupe_words", {"train": 50}, 0)["train"]:
        assert row["answer"].split() == list(dict.fromkeys(row["words"].split()))
    for row in generate("count_word", {"train": 50}, 0)["train"]:
        assert row["words"].split().count(row["word"]) == int(row["answer"])
    for row in generate("alphabet_first", {"train": 50}, 0)["train"]:
        words = row["words"].split()
        assert 2 <= len(words) == len(set(words)) <= 5 and row["answer"] == sorted(words)[0]
    # pinned: the demo's held-out rows (and so its README figures) move if the generator's draws do
    assert generate("alphabet_first", {"train": 1}, 0)["train"] == [{"words": "white lime", "answer": "lime"}]


def test_generator_too_small_for_the_sizes_asked():
    with pytest.raises(Exception, match="generator 'add_numbers' ran out of distinct rows"):
        generate("add_numbers", {"train": 10_001}, 0)


def test_shipped_builtin_split_is_loaded_with_its_declared_size():
    task = Registry.default().task("owner_lookup")
    assert len(load_split(task, "train")) == task.spec.source.sizes["train"]
