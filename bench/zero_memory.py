"""Peak memory per process of a ~60M-parameter T5 over a few steps, 2 CPU processes: DDP vs ZeRO-2 vs ZeRO-3.

    python bench/zero_memory.py [--steps 3] [--tokenizer DIR]

Each setting runs `accelerate launch` on this script's worker, which trains a T5 of d_model 512, 6 + 6 layers
(~56M parameters with the demo vocabulary), AdamW, fp32, and prints each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"DDP": "launch/cpu_ddp.yaml", "ZeRO-2": "launch/cpu_deepspeed_zero2.yaml",
            "ZeRO-3": "launch/cpu_deepspeed_zero3.yaml"}  # fmt: skip
SIZE = {"d_model": 512, "num_layers": 6, "num_heads": 8, "d_ff": 2048}


def worker(run_dir: str, tokenizer_dir: str, steps: int) -> None:
    from t2t.registry import Registry
    from t2t.train import Run
    from t2t.train_config import TrainConfig

    config = TrainConfig.model_validate({
        "run_dir": run_dir, "mixture": "demo", "model": {"tiny": SIZE}, "tokenizer": {"pretrained": tokenizer_dir},
        "max_input_tokens": 64, "max_target_tokens": 16,
        "batching": {"strategy": "padded", "max_tokens": 512, "batch_size": None, "window_examples": 256},
        "steps": steps, "log_every_steps": 1000, "trackers": [],
    })  # fmt: skip
    run = Run(config, Registry.default())
    run.data.prepare(run.data.stream.items(0, 2 * 256 * (steps + 1)))  # the pairs the run draws, both ranks
    n_params = sum(p.numel() for p in run.accelerator.unwrap_model(run.model).model.parameters())
    before = _rss_mb()  # imports, data, and the model as prepared (sharded or not)
    peak = {}
    real_finish = run.finish

    def finish() -> dict:  # the peak of the training steps, before the final save gathers full weights
        peak["mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return real_finish()

    run.finish = finish
    run.fit()
    print(f"RESULT rank={run.accelerator.process_index} params={n_params} before_mb={before:.0f} "
          f"peak_mb={peak['mb']:.0f}", flush=True)  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokenizer", help="a tokenizer dir (default: train one on the demo mixture)")
    parser.add_argument("--worker", nargs=2, metavar=("RUN_DIR", "TOKENIZER_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.steps)
        return
    from _common import demo_tokenizer_dir

    tmp = Path(tempfile.mkdtemp())
    tokenizer_dir = str(demo_tokenizer_dir(args.tokenizer))
    rows = []
    for name, launch in SETTINGS.items():
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launch, __file__,
                   "--steps", str(args.steps), "--worker", str(tmp / name), tokenizer_dir]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ)
        found = re.findall(r"RESULT rank=(\d) params=(\d+) before_mb=(\d+) peak_mb=(\d+)", result.stdout)
        if result.returncode != 0 or len(found) != 2:
            print(f"{name} failed:\n{result.stderr[-2000:]}")
            continue
        peaks = [int(f[3]) for f in found]
        growth = [int(f[3]) - int(f[2]) for f in found]
        rows.append((name, int(found[0][1]), max(peaks), max(growth)))
    print(f"T5 d_model {SIZE['d_model']}, {SIZE['num_layers']}+{SIZE['num_layers']} layers, "
          f"{rows[0][1] / 1e6:.1f}M parameters, AdamW fp32, 2 CPU processes, {args.steps} steps\n")  # fmt: skip
    print(
        f"{'setting':<8} {'peak MB / process':>18} {'vs DDP':>7} {'growth in training MB':>22} {'vs DDP':>7}"
    )
    base_peak, base_growth = rows[0][2], rows[0][3]
    for name, _, peak, growth in rows:
        print(f"{name:<8} {peak:>18} {peak / base_peak:>6.2f}x {growth:>22} {growth / base_growth:>6.2f}x")


if __name__ == "__main__":
    main()
