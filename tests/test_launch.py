"""Launch files, and a real two-process DeepSpeed ZeRO-2 run on CPU through `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForSeq2SeqLM

REPO = Path(__file__).resolve().parents[1]
LAUNCH = sorted((REPO / "launch").glob("*.yaml"))


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_file_starts_with_its_command_and_is_valid(path):
    text = path.read_text()
    assert text.startswith("#")
    assert f"accelerate launch --config_file launch/{path.name}" in text.split("\ncompute_environment")[0]
    config = yaml.safe_load(text)
    assert config["distributed_type"] in {"NO", "MULTI_CPU", "MULTI_GPU", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        ds = json.loads((REPO / config["deepspeed_config"]["deepspeed_config_file"]).read_text())
        # The training config is the one source of truth for these.
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", key
        assert ds["bf16"]["enabled"] == "auto"
        assert ds["zero_optimization"]["stage"] in (2, 3)


def test_launch_folder_covers_every_setting():
    names = {p.stem for p in LAUNCH}
    assert {"cpu_single", "cpu_deepspeed_zero2", "gpu_single", "gpu_ddp", "gpu_zero2", "gpu_zero3",
            "gpu_zero3_offload", "multinode"} <= names  # fmt: skip


@pytest.mark.slow
def test_two_process_deepspeed_zero2_on_cpu(tmp_path, tiny_tokenizer):
    tokenizer_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(str(tokenizer_dir))
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/cpu_deepspeed_zero2.yaml",
        "--main_process_port", "29533", "-m", "t2t", "train", "configs/tiny_cpu.yaml",
        f"run_dir={run_dir}", "steps=4", "save_every_steps=2", "log_every_steps=2", "trackers=[]",
        "tokenizer.vocab_size=null", f"tokenizer.pretrained={tokenizer_dir}",
        "model.tiny={d_model: 32, num_layers: 2, num_heads: 2, d_ff: 64}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es), deepspeed" in result.stdout
    assert result.stdout.count("done: step 4") == 1  # printed by the main process only
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000004"
    assert (checkpoints / "step_00000002" / "accelerate").is_dir()
    state = json.loads((checkpoints / "step_00000004" / "run_state.json").read_text())
    assert state["world_size"] == 2 and len(state["state"]["loader"]) == 2
    assert state["state"]["loader"][0] != state["state"]["loader"][1] or state["state"]["step"] == 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    tasks = {key.split("/", 1)[1] for key in records[0] if key.startswith("task_tokens/")}
    assert len(tasks) == 11  # every demo task has its entry, gathered from both processes
    assert sum(r["task_tokens/add_numbers"] for r in records) > 0
    AutoModelForSeq2SeqLM.from_pretrained(str(run_dir / "model"))
