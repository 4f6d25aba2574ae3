"""The demo's training loop alone and beside a busy process: torch's default threads against t2t's choice.

    python bench/threads.py [--steps 60] [--repeats 2] [--tokenizer DIR]

`t2t train configs/tiny_cpu.yaml` (the demo's model and data) runs `--steps` steps alone and beside a competing
process (a torch matmul loop with torch's default settings, as another user's job would be), each time with
T2T_NUM_THREADS set to every CPU (what torch does by itself) and with t2t's own choice (t2t.cli.configure_threads:
the CPUs this process may use less those busy at start). Each busy case runs `--repeats` times: its speed
depends on how the scheduler interleaves the two processes. Printed: the loop's real tokens per second (from the
run's log lines after the first window) and the threads each run used. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import demo_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]
BUSY = "import torch\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def tokens_per_second(run_dir: Path, env: dict, steps: int, tokenizer: Path) -> tuple[float, int]:
    """Real (non-pad) tokens per second of the training loop after its first log window, and its threads."""
    command = [sys.executable, "-m", "t2t", "train", "configs/tiny_cpu.yaml", f"run_dir={run_dir}", f"steps={steps}",
               "tokenizer={pretrained: " + str(tokenizer) + "}", "log_every_steps=10", "save_every_steps=null",
               "trackers=[]", "schedule.warmup_steps=5"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    threads = int(re.search(r"process\(es\) of (\d+) thread", result.stdout).group(1))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = records[1:]
    return sum(r["tokens_per_s"] for r in later) / len(later), threads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    if args.steps < 20:  # the rate is read from the log windows (10 steps each) after the first
        parser.error(
            "--steps must be at least 20: the rate is that of the log windows after the first (10 steps each)"
        )
    tokenizer = demo_tokenizer_dir(args.tokenizer)
    root = Path(tempfile.mkdtemp())
    every_cpu = str(len(os.sched_getaffinity(0)))
    variants = {f"torch's default ({every_cpu} threads)": {"T2T_NUM_THREADS": every_cpu}, "t2t's choice": {}}
    rows: dict[str, dict] = {name: {"alone": [], "busy": []} for name in variants}
    runs = 0
    for busy in (False, True):
        for _ in range(args.repeats if busy else 1):
            for name, env in variants.items():
                competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
                try:
                    if competitor is not None:
                        time.sleep(2)  # the competitor's threads are up
                    rate, threads = tokens_per_second(root / str(runs), env, args.steps, tokenizer)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                runs += 1
                rows[name]["busy" if busy else "alone"].append((rate, threads))
                print(
                    f"{'busy' if busy else 'alone'}, {name}: {rate:,.0f} tokens/s, {threads} thread(s)",
                    flush=True,
                )
    print("\n| threads | alone (tokens/s) | beside a busy process (tokens/s, each run) |")
    print("|---|---:|---|")
    for name, row in rows.items():
        alone = row["alone"][0]
        busy = ", ".join(f"{rate:,.0f} ({threads} thr.)" for rate, threads in row["busy"])
        print(f"| {name} | {alone[0]:,.0f} ({alone[1]} thr.) | {busy} |")


if __name__ == "__main__":
    main()
