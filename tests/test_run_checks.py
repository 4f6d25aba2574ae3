"""What a run refuses, through the real CLI: resuming into a different run (drift), a missing checkpoint, packed
rows shorter than an example. Each refusal is one line, exit 2, and leaves the run dir as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_jsonl, write_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tiny_tokenizer, tmp_path_factory):
    """A user's task folder (one file-backed task), a mixture over it and a built-in task, a tokenizer dir."""
    root = tmp_path_factory.mktemp("checks")
    tasks, mixtures = root / "tasks", root / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    write_jsonl(
        tasks / "train.jsonl", [{"word": w, "label": i % 2} for i, w in enumerate(["owl", "fox"] * 30)]
    )
    write_task(tasks, echo_task("echo {{ word }}"))
    mixture = {"name": "mine", "members": {"echo": None, "color_lookup": None}, "rate": {"rule": "uniform"}}
    (mixtures / "mine.yaml").write_text(yaml.safe_dump(mixture))
    tiny_tokenizer.save_pretrained(str(root / "tok"))
    return root


def echo_task(template: str) -> dict:
    return {"name": "echo", "version": 1, "cluster": "echo", "source": {"kind": "files", "splits": {"train": "train.jsonl"}},
            "fields": {"word": "a word", "label": "0 or 1"}, "metrics": ["accuracy"],
            "templates": [{"name": "plain", "input": template, "target": "{{ word }}"}]}  # fmt: skip


def config_file(folder: Path, world: Path, **changes) -> Path:
    data = {
        "run_dir": str(folder / "run"), "mixture": "mine", "tokenizer": {"pretrained": str(world / "tok")},
        "model": {"tiny": {"d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64}},
        "max_input_tokens": 32, "max_target_tokens": 8,
        "batching": {"strategy": "padded", "batch_size": 8, "max_tokens": None, "window_examples": 32},
        "steps": 2, "log_every_steps": 1, "trackers": [],
    }  # fmt: skip
    data.update(changes)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def trained(world, tmp_path, run_cli):
    """A finished 2-step run (its checkpoint at step 2), and the args that made it."""
    args = ["--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train"]
    config = config_file(tmp_path, world)
    code, _, err = run_cli(*args, config)
    assert code == 0, err
    return args, config, tmp_path / "run"


def refused(run_cli, args, run_dir: Path) -> str:
    before = snapshot(run_dir)
    code, out, err = run_cli(*args, "--resume", "auto")
    assert out == ""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2t: error: "), err
    assert snapshot(run_dir) == before  # nothing written
    return lines[0]


def test_resume_accepts_more_steps_and_new_intervals(trained, run_cli, world, tmp_path):
    args, config, run_dir = trained
    config_file(tmp_path, world, steps=4, log_every_steps=2, save_every_steps=3, eval_max_examples=7)
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0, err
    assert "resuming from step_00000002 at step 2 of 4" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"max_input_tokens": 24}, "the training config changed since this checkpoint (max_input_tokens: 32 -> 24)"),
        ({"batching": {"strategy": "padded", "batch_size": 4, "max_tokens": None, "window_examples": 32}},
         "the training config changed since this checkpoint (batching.batch_size: 8 -> 4)"),
        ({"model": {"tiny": {"d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 128}}},
         "the training config changed since this checkpoint (model.tiny.d_ff: 64 -> 128)"),
        ({"seed": 3}, "the training config changed since this checkpoint (seed: 0 -> 3)"),
        ({"balancing": {"method": "dwa"}}, "(balancing.method: 'equal' -> 'dwa')"),
    ],
    ids=["limits", "batching", "model", "seed", "balancing"],
)  # fmt: skip
def test_resume_refuses_a_changed_config(trained, run_cli, world, tmp_path, change, expected):
    args, _, run_dir = trained
    config = config_file(tmp_path, world, **change)
    line = refused(run_cli, [*args, config], run_dir)
    assert expected in line
    assert line.startswith(f"t2t: error: {run_dir}/checkpoints/step_00000002: cannot resume: ")


def test_resume_refuses_training_data_whose_row_count_changed(world, tmp_path, run_cli):
    # rows appended to a task's file between a stop and its resume: the run went on with a stream read against other
    # row counts (each task's share and row order), so from its stopping point it saw other examples than it would
    # have, some again and some never, without a word
    tasks = tmp_path / "tasks"
    shutil.copytree(world / "tasks", tasks)
    args = ["--templates-dir", tasks, "--mixtures-dir", world / "mixtures", "train"]
    config = config_file(tmp_path, world)
    code, _, err = run_cli(*args, config)
    assert code == 0, err
    original = (tasks / "train.jsonl").read_text()
    write_jsonl(tasks / "train.jsonl", [{"word": w, "label": 0} for w in ["owl", "fox"] * 35])
    config_file(tmp_path, world, steps=3)
    line = refused(run_cli, [*args, config], tmp_path / "run")
    assert line == (f"t2t: error: {tmp_path / 'run'}/checkpoints/step_00000002: cannot resume: task echo's training "
                    "data changed since this checkpoint (60 -> 70 rows), so the stream would not go on where the run "
                    "stopped: its positions are read against each task's row count. Restore the data the run "
                    "started with, or start a new run_dir")  # fmt: skip
    # the same count with other text: the same positions, read in the new text
    (tasks / "train.jsonl").write_text(original.replace("owl", "cat"))
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0 and "resuming from step_00000002 at step 2 of 3" in out, err
    # a checkpoint of an older t2t records no row counts: it resumes, unchecked on them
    state_file = tmp_path / "run" / "checkpoints" / "step_00000003" / "run_state.json"
    state = json.loads(state_file.read_text())
    assert state["identity"]["rows"] == {"echo": 60, "color_lookup": 4000}
    del state["identity"]["rows"]
    state_file.write_text(json.dumps(state))
    write_jsonl(tasks / "train.jsonl", [{"word": w, "label": 0} for w in ["owl", "fox"] * 35])
    config_file(tmp_path, world, steps=4)
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0 and "resuming from step_00000003 at step 3 of 4" in out, err


def test_resume_refuses_a_recorded_batching_other_than_the_configs(trained, run_cli, world, tmp_path):
    # the config (strategy padded, set) is the same, but the checkpoint records another batching: resuming would
    # change the batches of the window it stops in (under strategy auto the recorded one is kept: the test below)
    args, config, run_dir = trained
    state_file = run_dir / "checkpoints" / "step_00000002" / "run_state.json"
    original = state_file.read_text()
    state = json.loads(original)
    assert (
        state["identity"]["batching"]["batch_size"] == 8
        and state["identity"]["batching"]["strategy"] == "padded"
    )
    state["identity"]["batching"]["keep_mix"] = True
    state_file.write_text(json.dumps(state))
    line = refused(run_cli, [*args, config], run_dir)
    assert ("cannot resume: the batching chosen from the config and the data (auto's choice, or packed rows' sizes) "
            "changed since this checkpoint (batching.keep_mix: True -> False)") in line  # fmt: skip
    # a checkpoint of an older t2t records no resolved batching: it resumes, unchecked on it
    del state["identity"]["batching"]
    state_file.write_text(json.dumps(state))
    config_file(tmp_path, world, steps=3)
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0, err
    assert "resuming from step_00000002 at step 2 of 3" in out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"state": {', "run_state.json:1: unreadable run state (Expecting property name enclosed in double quotes)"),
        ("[1, 2]", "run_state.json: not a run state t2t wrote (a JSON object with state, world_size and identity)"),
        ('{"state": {}, "world_size": "1"}', "run_state.json: not a run state t2t wrote"),
        ('{"state": {}, "world_size": 1, "identity": []}', "run_state.json: not a run state t2t wrote"),
    ],
    ids=["torn", "list", "world-size", "identity"],
)  # fmt: skip
def test_resume_refuses_a_run_state_t2t_did_not_write(trained, run_cli, content, expected):
    args, config, run_dir = trained
    (run_dir / "checkpoints" / "step_00000002" / "run_state.json").write_text(content)
    line = refused(run_cli, [*args, config], run_dir)
    assert line.startswith(f"t2t: error: {run_dir}/checkpoints/step_00000002/") and expected in line
    assert line.endswith("resume from another checkpoint with --resume PATH")


def train_and_read_state(
    run_cli, world: Path, tmp_path: Path, batching: dict
) -> tuple[list, str, Path, dict]:
    """Train 2 steps with this batching; the CLI's leading arguments, its output, and the last checkpoint's run
    state (file and contents)."""
    args = ["--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train"]
    code, out, err = run_cli(*args, config_file(tmp_path, world, batching=batching))
    assert code == 0, err
    state_file = tmp_path / "run" / "checkpoints" / "step_00000002" / "run_state.json"
    return args, out, state_file, json.loads(state_file.read_text())


def resume_with_recorded_batching(run_cli, world: Path, tmp_path: Path, args: list, state_file: Path, state: dict,
                                  batching: dict, recorded: dict) -> str:  # fmt: skip
    """Make the checkpoint record `recorded` as its batching, resume the same config to step 3, check that the run
    kept it to the end; the resume's output."""
    state["identity"]["batching"] = recorded
    state_file.write_text(json.dumps(state))
    code, out, err = run_cli(
        *args, config_file(tmp_path, world, batching=batching, steps=3), "--resume", "auto"
    )
    assert code == 0, err
    assert "resuming from step_00000002 at step 2 of 3" in out
    final = json.loads((tmp_path / "run" / "checkpoints" / "step_00000003" / "run_state.json").read_text())
    assert final["identity"]["batching"] == recorded
    return out


def test_resume_under_auto_keeps_the_batching_its_checkpoint_recorded(world, run_cli, tmp_path):
    """auto's rules may change between versions (a newer t2t sizing packed rows otherwise): a run resumed under
    strategy auto keeps the batching its checkpoint recorded at the run's start, so its batches stay its own; a
    batching key the config changes is still refused."""
    auto = {"max_tokens": 256, "window_examples": 32}
    args, out, state_file, state = train_and_read_state(run_cli, world, tmp_path, auto)
    chosen = state["identity"]["batching"]
    assert chosen["strategy"] == "packed" and f"auto chose packed ({chosen['rows_per_batch']} row" in out
    # as an earlier auto would have sized them: other rows (they still hold the longest example, 32 + 8)
    other = {**chosen, "rows_per_batch": 3, "pack_input_tokens": 64, "pack_target_tokens": 16}
    assert other != chosen
    out = resume_with_recorded_batching(run_cli, world, tmp_path, args, state_file, state, auto, other)
    assert ("batching: auto chose packed (3 rows of 64+16 tokens), as this run's checkpoint recorded it at the run's "
            "start") in out  # fmt: skip
    # a key the config sets and changes: auto decides again, and the different batching is refused
    config = config_file(tmp_path, world, batching={**auto, "max_tokens": 128}, steps=4)
    line = refused(run_cli, [*args, config], tmp_path / "run")
    assert (
        "cannot resume: the training config changed since this checkpoint (batching.max_tokens: 256 -> 128)"
        in line
    )


def test_packed_rows_are_sized_to_max_tokens_and_an_older_runs_rows_are_kept(world, run_cli, tmp_path):
    """`strategy: packed` cuts `max_tokens` into rows as auto does (until 2026-12-05 it took 4 rows of 512 input
    tokens whatever max_tokens said); a run started by an older t2t resumes with the rows its checkpoint recorded."""
    packed = {"strategy": "packed", "max_tokens": 96, "window_examples": 32}
    args, out, state_file, state = train_and_read_state(run_cli, world, tmp_path, packed)
    chosen = state["identity"]["batching"]
    row = chosen["pack_input_tokens"] + chosen["pack_target_tokens"]
    # within the budget, each row still holding the longest example the limits allow (32 + 8)
    assert chosen["strategy"] == "packed" and row >= 40 and chosen["rows_per_batch"] * row <= 96
    assert (f"batching: packed, as set ({chosen['rows_per_batch']} row{'s' if chosen['rows_per_batch'] > 1 else ''}"
            f" of {chosen['pack_input_tokens']}+{chosen['pack_target_tokens']} tokens, sized to "
            "batching.max_tokens=96)") in out  # fmt: skip
    # the rows an older t2t took for the same config (4 of 512 input tokens): the run keeps them
    older = {**chosen, "rows_per_batch": 4, "pack_input_tokens": 512, "pack_target_tokens": 8}
    out = resume_with_recorded_batching(run_cli, world, tmp_path, args, state_file, state, packed, older)
    assert ("batching: packed (4 rows of 512+8 tokens), as this run's checkpoint recorded it at the run's start"
            in out)  # fmt: skip


def test_resume_refuses_a_changed_mixture_or_task_file(trained, run_cli, world):
    args, config, run_dir = trained
    mixture = world / "mixtures" / "mine.yaml"
    task = world / "tasks" / "echo.yaml"
    original_mixture, original_task = mixture.read_text(), task.read_text()
    try:
        spec = yaml.safe_load(original_mixture)
        spec["rate"] = {"rule": "examples"}
        mixture.write_text(yaml.safe_dump(spec))
        assert "cannot resume: the mixture changed since this checkpoint (rate.rule)" in refused(
            run_cli, [*args, config], run_dir
        )
        mixture.write_text(original_mixture)
        write_task(world / "tasks", echo_task("repeat {{ word }}"))
        line = refused(run_cli, [*args, config], run_dir)
        assert "the task set or a task file changed since this checkpoint (echo.templates[0].input)" in line
        task.write_text(original_task)
    finally:
        mixture.write_text(original_mixture)
        task.write_text(original_task)


def test_resume_refuses_a_tokenizer_changed_in_place(world, tmp_path, run_cli):
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path / "tok"
    shutil.copytree(world / "tok", tokenizer_dir)
    args = ["--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train",
            config_file(tmp_path, world, tokenizer={"pretrained": str(tokenizer_dir)})]  # fmt: skip
    assert run_cli(*args)[0] == 0
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.add_tokens(["zebra"])  # the same path, other contents
    tokenizer.save_pretrained(str(tokenizer_dir))
    line = refused(run_cli, args, tmp_path / "run")
    assert "cannot resume: the tokenizer changed since this checkpoint;" in line


def test_a_moved_run_dir_resumes_from_its_own_config_and_says_where_its_run_dir_points(
    world, tmp_path, run_cli
):
    """A run dir moved elsewhere (another disk, another machine's mount) is the same run. Until 2026-12-05 its
    resume was refused as "the tokenizer changed" (the fingerprint hashed the paths the tokenizer was loaded from),
    and its own config.yaml, whose run_dir still named the old folder, trained a new run there without a word."""
    first = tmp_path / "first"
    first.mkdir()
    args = ["--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train"]
    code, _, err = run_cli(*args, config_file(first, world, tokenizer={"vocab_size": 300}))
    assert code == 0, err
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    (first / "run").rename(moved)
    line = refused(run_cli, [*args, moved / "config.yaml"], moved)
    assert line == (f"t2t: error: {moved / 'config.yaml'}: this is the config of the run in {moved}, but its run_dir "
                    f"is {first / 'run'} (the run dir was moved or copied, or its relative run_dir read from another "
                    f"working dir): pass run_dir={moved} to continue that run, or run_dir=OTHER for a new one")  # fmt: skip
    assert not (first / "run").exists()
    code, out, err = run_cli(*args, moved / "config.yaml", f"run_dir={moved}", "steps=4", "--resume", "auto")
    assert code == 0, err
    assert "resuming from step_00000002 at step 2 of 4" in out
    steps = [json.loads(line)["step"] for line in (moved / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 5))


def test_a_checkpoint_with_the_older_tokenizer_fingerprint_resumes_in_place(world, tmp_path, run_cli):
    """Checkpoints written before 2026-12-05 record a fingerprint of the tokenizer object, paths included: where
    the run dir has not moved they resume as before."""
    from t2t.encoding import legacy_tokenizer_fingerprint, tokenizer_fingerprint
    from t2t.tokenizer import load_tokenizer

    args = ["--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train"]
    config = config_file(tmp_path, world, tokenizer={"pretrained": str(world / "tok")})
    assert run_cli(*args, config)[0] == 0
    state_file = tmp_path / "run" / "checkpoints" / "step_00000002" / "run_state.json"
    state = json.loads(state_file.read_text())
    tokenizer = load_tokenizer(str(world / "tok"))
    assert state["identity"]["tokenizer"] == tokenizer_fingerprint(tokenizer)
    legacy = legacy_tokenizer_fingerprint(tokenizer)
    assert legacy != tokenizer_fingerprint(tokenizer)
    state["identity"]["tokenizer"] = legacy
    state_file.write_text(json.dumps(state))
    config_file(tmp_path, world, tokenizer={"pretrained": str(world / "tok")}, steps=3)
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0, err
    assert "resuming from step_00000002 at step 2 of 3" in out


def test_a_second_train_into_a_run_dir_in_use_is_refused_while_the_first_runs(world, tmp_path, run_cli):
    """Two `t2t train` into one run dir (a job launched twice, a `--resume auto` while the first still runs) both
    trained, interleaving metrics.jsonl and overwriting each other's checkpoints and model (tried: 27 log lines
    for 300 steps logged every 20). The process training holds a lock on the run dir: the second is refused at
    once, writing nothing; once the first ends (here by `kill -9`), the resume goes through."""
    import signal
    import subprocess
    import sys
    import time

    args = ["--templates-dir", str(world / "tasks"), "--mixtures-dir", str(world / "mixtures"), "train"]
    config = config_file(tmp_path, world, steps=100_000, save_every_steps=2, log_every_steps=50)
    log = (
        tmp_path / "first.log"
    )  # a file, not a pipe: a pipe nobody reads fills with progress bars and blocks
    with log.open("w") as output:
        first = subprocess.Popen([sys.executable, "-m", "t2t", *args, str(config)], cwd=REPO, stdout=output,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    run_dir, lock = tmp_path / "run", tmp_path / "run" / ".t2t-lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text() and (run_dir / "checkpoints" / "latest").is_file()):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert lock.read_text().startswith(f"pid {first.pid} on ")
        for extra in (["--resume", "auto"], []):
            code, out, err = run_cli(*args, config, *extra)
            assert code == 2 and out == "", err
            assert err == (f"t2t: error: {run_dir}: another t2t train is writing this run dir ({lock.read_text()}): "
                           "wait for it to end, or choose another run_dir\n")  # fmt: skip
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock as it drops its files
        first.wait(timeout=120)
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    # the resume goes through now (its checkpoint is past the 1 step asked for: nothing more to train)
    config_file(tmp_path, world, steps=1, save_every_steps=2, log_every_steps=50)
    code, out, err = run_cli(*args, config, "--resume", "auto")
    assert code == 0, err
    assert "resuming from step_" in out


def test_a_missing_resume_checkpoint_is_refused_before_anything_runs(world, tmp_path, run_cli):
    config = config_file(tmp_path, world, tokenizer={"vocab_size": 300})  # would train a tokenizer first
    code, out, err = run_cli("--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train",
                             config, "--resume", tmp_path / "nowhere")  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip() == (f"t2t: error: {tmp_path / 'nowhere'}: --resume: no such t2t checkpoint (a checkpoint "
                           "folder holds run_state.json); use --resume auto for the run dir's latest")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("batching", "side", "row", "limit"),
    [
        ({"strategy": "packed", "pack_input_tokens": 16, "pack_target_tokens": 8}, "input", 16, 32),
        # auto may pack: the sides it is given are checked as well (it sizes the others from the limits)
        (
            {"strategy": "auto", "max_tokens": 2048, "batch_size": None, "pack_target_tokens": 4},
            "target",
            4,
            8,
        ),
    ],
    ids=["packed", "auto"],
)
def test_packed_rows_shorter_than_the_limits_are_refused_at_the_config(world, tmp_path, run_cli, batching, side,
                                                                       row, limit):  # fmt: skip
    config = config_file(tmp_path, world, batching=batching)
    code, out, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 2 and out == ""
    assert err.strip() == (f"t2t: error: {config}: batching.pack_{side}_tokens={row} is shorter than "
                           f"max_{side}_tokens={limit}: an example that long would fit no packed row")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_auto_sizes_the_sides_it_is_not_given_from_the_limits(world, tmp_path, run_cli):
    # inputs of up to 960 tokens, above the pack_input_tokens default (512) and the input side the data's ratio
    # gives a row of about 1,024 tokens: auto's rows take the limit, and the run is not refused
    batching = {"strategy": "auto", "max_tokens": 2048, "batch_size": None, "window_examples": 32}
    config = config_file(tmp_path, world, batching=batching, max_input_tokens=960, steps=1)
    code, out, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 0, err
    assert "batching: auto chose packed (2 rows of 960+" in out


@pytest.mark.parametrize(("budget", "warned"), [(16, True), (40, False)])
def test_a_padded_budget_below_the_longest_example_is_said(world, tmp_path, run_cli, budget, warned):
    # the run trained batches over batching.max_tokens without a word (examples here: up to 32 + 8 slots)
    batching = {"strategy": "padded", "max_tokens": budget, "batch_size": None, "window_examples": 32}
    config = config_file(tmp_path, world, batching=batching, steps=1)
    code, out, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 0, err
    said = [line for line in out.splitlines() if "is below the longest example" in line]
    assert said == ([f"warning: batching.max_tokens={budget} is below the longest example the limits allow (32+8): "
                     "an example over the budget makes a padded batch of its own, over it (raise max_tokens, or "
                     "lower the limits)"] if warned else [])  # fmt: skip


@pytest.mark.parametrize(("warmup", "warned"), [(3, True), (2, False)])
def test_a_warmup_longer_than_the_run_is_said(world, tmp_path, run_cli, warmup, warned):
    # the learning rate would never reach the one the config asks for (until 2026-12-05 without a word); a warmup
    # of exactly the run's 2 steps reaches it at the last step
    config = config_file(tmp_path, world, schedule={"name": "linear", "warmup_steps": warmup})
    code, out, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 0, err
    said = [line for line in out.splitlines() if "warmup_steps" in line]
    assert said == (["warning: schedule.warmup_steps=3 is over steps=2: the learning rate never reaches "
                     "optimizer.lr=0.001"] if warned else [])  # fmt: skip


def test_a_tracker_that_is_not_installed_is_refused_naming_its_extra(world, tmp_path, run_cli):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here (the t2t[wandb] extra): nothing to refuse")
    config = config_file(tmp_path, world, trackers=["wandb"])
    code, out, err = run_cli(
        "--templates-dir", world / "tasks", "--mixtures-dir", world / "mixtures", "train", config
    )
    assert code == 2 and out == ""
    assert err.strip() == ("t2t: error: trackers: wandb is not installed; pip install 't2t[wandb]' or drop it "
                           "from trackers")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_bad_override_is_reported_as_the_override(world, tmp_path, run_cli):
    config = config_file(tmp_path, world)
    code, out, err = run_cli("--mixtures-dir", world / "mixtures", "train", config, "optimizer.lr=-1")
    assert code == 2 and out == ""
    assert (
        err.strip() == "t2t: error: override 'optimizer.lr=-1': optimizer.lr: Input should be greater than 0"
    )
    code, _, err = run_cli("--mixtures-dir", world / "mixtures", "train", config, "model.tiny.width=3")
    assert err.strip() == "t2t: error: override 'model.tiny.width=3': unknown key 'model.tiny.width'"
    # a key given twice: the last word counts, and the line names it (it named the first, a valid one)
    code, _, err = run_cli("--mixtures-dir", world / "mixtures", "train", config, "steps=2", "steps=abc")
    assert code == 2 and err.strip() == (
        "t2t: error: override 'steps=abc': steps: Input should be a valid integer, unable to parse string as an integer"
    )
    # the config's tokenizer size is checked as the config's, not as `t2t tokenizer train`'s --vocab-size
    code, _, err = run_cli("--mixtures-dir", world / "mixtures", "train", config, "tokenizer={vocab_size: 5}")
    assert code == 2 and err.strip() == (
        "t2t: error: override 'tokenizer={vocab_size: 5}': tokenizer.vocab_size: Input should be greater than or "
        "equal to 8")  # fmt: skip
    # a key repeated inside one override's flow mapping (YAML kept the last silently, as in a file)
    code, _, err = run_cli(
        "--mixtures-dir", world / "mixtures", "train", config, "optimizer={lr: 1e-3, lr: 5}"
    )
    assert code == 2 and err.strip() == (
        "t2t: error: override 'optimizer={lr: 1e-3, lr: 5}': key 'lr' appears twice in one mapping"
    )
    # values the model or optimizer would refuse only after the tokenizer trained (an unexpected ValueError or
    # ZeroDivisionError until 2026-12-05), or train with to a non-finite loss (an infinite learning rate)
    for override, message in [
        ("optimizer.lr=inf", "optimizer.lr: Input should be a finite number"),
        ("optimizer.betas=[2, 0.9]", "optimizer.betas.0: Input should be less than 1"),
        ("model.tiny.num_heads=200", "model.tiny: num_heads (200) must be at most d_model (32): each head attends "
                                     "in d_model // num_heads dimensions"),
        # torch's generators take 64-bit seeds: an unexpected ValueError after the tokenizer trained
        ("seed=100000000000000000000000", "seed: Input should be less than 9223372036854775807"),
    ]:  # fmt: skip
        code, _, err = run_cli("--mixtures-dir", world / "mixtures", "train", config, override)
        assert code == 2 and err.strip() == f"t2t: error: override '{override}': {message}"
    assert not (tmp_path / "run").exists()


def test_a_null_field_deep_in_the_data_is_refused_before_training_and_lint_all_rows_finds_it(
    tmp_path, tiny_tokenizer, run_cli
):
    # pairs are encoded when the stream first draws them, so such a row ended a run when drawn (a 400-step run
    # died at step 196, its checkpoints written); now every training row's fields are checked at the start
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    rows = [{"word": w, "label": i % 2} for i, w in enumerate(["owl", "fox", "elk"] * 100)]
    for i in (237, *range(250, 275)):
        rows[i]["word"] = None  # 26 bad rows: the first at 237
    write_jsonl(tasks / "train.jsonl", rows)
    write_task(tasks, echo_task("echo {{ word }}"))
    (mixtures / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", "members": {"echo": None}}))
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    config = config_file(tmp_path, tmp_path, steps=400)
    dirs = ["--templates-dir", tasks, "--mixtures-dir", mixtures]
    code, out, err = run_cli(*dirs, "train", config)
    assert code == 2 and not (tmp_path / "run").exists()
    assert err.strip().splitlines() == [
        f"t2t: error: {tasks / 'echo.yaml'}, task 'echo', template 'plain', split 'train', row 237: field 'word' is "
        "null in this row, and the template reads it (give the task a default for it under defaults:, or filter such "
        "rows out; found before training: every training row's fields are checked at the start)"
    ]
    # lint's sample of 16 rows may miss them; --all-rows names the first 20 and counts the rest
    code, out, _ = run_cli(*dirs, "lint", "echo", "--all-rows")
    named = [line for line in out.splitlines() if "is null in this row" in line]
    assert code == 1 and len(named) == 20 and "row 237: field 'word' is null" in named[0]
    assert (
        f"{tasks / 'echo.yaml'}, task 'echo', split 'train': 6 more rows with problems (the first 20 are named)"
        in out
    )
    # a default for the field: the rows render with it, and the run trains
    spec = echo_task("echo {{ word }}")
    write_task(tasks, {**spec, "defaults": {"word": "none"}})
    code, _, err = run_cli(*dirs, "train", config_file(tmp_path, tmp_path, steps=2))
    assert code == 0, err


def test_bad_rows_skip_passes_rows_that_fail_to_render_over_and_stop_ends_the_run_at_them(
    tmp_path, tiny_tokenizer, run_cli, capsys
):
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    rows = [{"word": w, "label": i % 2} for i, w in enumerate(["owl", "fox", "elk"] * 20)]
    rows[40]["word"] = rows[41]["word"] = ""  # the target renders empty: found only when rendered
    write_jsonl(tasks / "train.jsonl", rows)
    write_task(tasks, echo_task("echo {{ label }}"))
    (mixtures / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", "members": {"echo": None}}))
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    dirs = ["--templates-dir", tasks, "--mixtures-dir", mixtures]
    # 10 steps of 8 examples: every one of the 60 rows is drawn
    code, out, err = run_cli(*dirs, "train", config_file(tmp_path, tmp_path, steps=10, bad_rows="skip"))
    assert code == 0, err
    said = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert said == [
        f"warning: {tasks / 'echo.yaml'}, task 'echo', template 'plain', split 'train', row {row}: target renders "
        "empty; skipped (bad_rows: skip)"
        for row in (40, 41)
    ] + [
        "warning: 2 rows that failed to render were skipped (bad_rows: skip; `t2t lint --all-rows` names them)"
    ]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 10
    # the bad rows were not cached as passed over: a run under stop (the default) meets them, and ends there
    config = config_file(tmp_path, tmp_path, steps=10, run_dir=str(tmp_path / "run2"), save_every_steps=2)
    code, out, err = run_cli(*dirs, "train", config)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"t2t: error: {tasks / 'echo.yaml'}, task 'echo', template 'plain', split 'train', row 40: target renders "
        "empty"
    )
    # ... and resumes under skip (bad_rows may change on a resume: the stop run passed no row over)
    code, out, err = run_cli(*dirs, "train", config, "bad_rows=skip", "--resume", "auto")
    assert code == 0, err
    assert "warning: 2 rows that failed to render were skipped (bad_rows: skip" in out


@pytest.mark.slow
def test_bad_rows_skip_counts_the_rows_of_every_process_once(tmp_path, tiny_tokenizer):
    # under DDP the count after `done:` was the main process's own: a row only rank 1 met was not in it, and a row
    # both met would count twice in a plain sum
    import subprocess
    import sys

    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    # every third row's target renders empty (found only when rendered): 20 bad rows of 60
    rows = [
        {"word": "" if i % 3 == 2 else w, "label": i % 2} for i, w in enumerate(["owl", "fox", "elk"] * 20)
    ]
    write_jsonl(tasks / "train.jsonl", rows)
    write_task(tasks, echo_task("echo {{ label }}"))
    (mixtures / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", "members": {"echo": None}}))
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    # 5 steps of 8 examples on each of 2 ranks: 80 draws of the 60 rows, so some rows are met by both ranks
    config = config_file(tmp_path, tmp_path, steps=5, bad_rows="skip")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / "cpu_ddp.yaml"),
               "--main_process_port", "29671", "-m", "t2t", "--templates-dir", str(tasks), "--mixtures-dir",
               str(mixtures), "train", str(config)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # each rank warns of the bad rows it meets (fewer than 20 each: all named)
    warned = [int(line.split(", row ")[1].split(":")[0]) for line in result.stdout.splitlines()
              if line.startswith("warning: ") and ", row " in line]  # fmt: skip
    assert set(warned) <= set(range(2, 60, 3))
    assert len(warned) > len(set(warned)) > 0  # some rows were met by both ranks (28 lines, 20 rows: the main
    # process met 18 of them, the count it gave before)
    assert result.stdout.count("rows that failed to render were skipped") == 1  # the main process says it
    assert (
        f"warning: {len(set(warned))} rows that failed to render were skipped (bad_rows: skip"
        in result.stdout
    )


def test_a_bad_eval_row_is_refused_at_the_start_not_at_the_first_evaluation(
    tmp_path, tiny_tokenizer, run_cli
):
    tasks, mixtures = tmp_path / "tasks", tmp_path / "mixtures"
    tasks.mkdir(), mixtures.mkdir()
    rows = [{"word": w, "label": i % 2} for i, w in enumerate(["owl", "fox", "elk"] * 10)]
    write_jsonl(tasks / "train.jsonl", rows)
    write_jsonl(tasks / "validation.jsonl", [*rows[:3], {"word": "", "label": 1}, *rows[4:8]])
    spec = echo_task("echo {{ label }}")
    spec["source"]["splits"]["validation"] = "validation.jsonl"
    write_task(tasks, spec)
    (mixtures / "mine.yaml").write_text(yaml.safe_dump({"name": "mine", "members": {"echo": None}}))
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    config = config_file(tmp_path, tmp_path, steps=10, eval_every_steps=5, bad_rows="skip")
    code, _, err = run_cli("--templates-dir", tasks, "--mixtures-dir", mixtures, "train", config)
    # it ended the run at step 5, its first evaluation, with the run dir written
    assert code == 2 and not (tmp_path / "run").exists()
    assert err.strip().splitlines() == [
        f"t2t: error: {tasks / 'echo.yaml'}, task 'echo', template 'plain', split 'validation', row 3: target renders "
        "empty"
    ]
