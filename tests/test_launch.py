"""Launch files: each starts with its command and is valid. The CPU ones run in tests/test_paths.py."""

import json
from pathlib import Path

import pytest
import yaml

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
