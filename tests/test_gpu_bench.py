"""bench/gpu_throughput.py, the script a session lent a GPU runs: its FLOPs count by hand, and a run on this CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    sys.path.insert(0, str(REPO / "bench"))  # the script imports its neighbours as top-level modules
    try:
        spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "bench" / "gpu_throughput.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_model_flops_by_hand_for_a_padded_and_a_packed_batch():
    bench = bench_module()
    # two examples: 3 + 2 tokens and 2 + 1 tokens
    padded = {"input_ids": torch.zeros(2, 4, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
              "labels": torch.tensor([[5, 6, -100], [7, -100, -100]])}  # fmt: skip
    packed = {"input_ids": torch.zeros(1, 6, dtype=torch.long),
              "encoder_segment_ids": torch.tensor([[1, 1, 1, 2, 2, 0]]),
              "decoder_segment_ids": torch.tensor([[1, 1, 2, 0]]), "labels": torch.tensor([[5, 6, 7, -100]])}  # fmt: skip
    # the tiny shape: d_model 128, d_kv 32 x 4 heads = 128, d_ff 256, 2 layers a side; vocabulary 2,000
    per_input = (
        2 * (4 * 128 * 128 + 3 * 128 * 256) + 2 * 2 * 128 * 128
    )  # encoder layers, cross keys and values
    per_target = (
        2 * (6 * 128 * 128 + 3 * 128 * 256) + 128 * 2000
    )  # decoder self + cross q, o, FF; output layer
    assert (per_input, per_target) == (393_216, 649_216)
    dense = 6 * (per_input * 5 + per_target * 3)
    pairs = (3 * 3 + 2 * 2) + (2 * 2 + 1 * 1) + (3 * 2 + 2 * 1)  # encoder, decoder, cross
    expected = dense + 12 * 2 * 128 * pairs
    assert expected == 23_562_240
    assert bench.model_flops(padded, "tiny", 2000) == expected
    assert bench.model_flops(packed, "tiny", 2000) == expected


@pytest.mark.slow
def test_the_gpu_bench_runs_on_this_cpu(tmp_path):
    out = tmp_path / "figures.json"
    command = [sys.executable, "bench/gpu_throughput.py", "--size", "tiny", "--steps", "2", "--warmup", "1",
               "--max-tokens", "1024", "--out", str(tmp_path / "work"), "--json", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [(r["strategy"], r["chosen"], r["engine"]) for r in figures["rows"]] == [
        ("auto", "packed", "NO"), ("padded", "padded", "NO")]  # fmt: skip
    for row in figures["rows"]:
        assert row["real_tokens_per_s"] > 0 and 0.5 < row["non_pad"] <= 1.0 and row["model_tflops_per_s"] > 0
    assert figures["device"] == "cpu" and figures["peak_tflops"] is None
    assert "packed / padded, real tokens per second: " in result.stdout
