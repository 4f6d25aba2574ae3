"""Mixture scale: build a 1,000-task mixture, run its dry-run report, and jump the stream to position 10^9.

    python bench/mixture_scale.py [--tasks 1000]

Task files are written to a temporary folder (generator tasks of sizes from 50 to 50,000 rows, 3 templates
each), so the build includes parsing and compiling every task file, as a user's run would.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import yaml

from t2t.mixtures import load_mixture, report, stream_for
from t2t.registry import Registry


def write_tasks(folder: Path, n_tasks: int) -> None:
    for i in range(n_tasks):
        size = int(50 * 1000 ** ((i % 100) / 99))  # 50 .. 50,000 rows
        spec = {
            "name": f"task_{i:04d}", "version": 1, "cluster": f"cluster_{i % 20}",
            "source": {"kind": "generator", "generator": "reverse_words", "sizes": {"train": size, "validation": 20}, "seed": i},
            "fields": {"words": "the words", "answer": "reversed"},
            "templates": [{"name": f"t{j}", "input": f"({j}) reverse: {{{{ words }}}}", "target": "{{ answer }}"}
                          for j in range(3)],
        }  # fmt: skip
        (folder / f"task_{i:04d}.yaml").write_text(yaml.safe_dump(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tasks, mixtures = Path(tmp, "tasks"), Path(tmp, "mixtures")
        tasks.mkdir(), mixtures.mkdir()
        write_tasks(tasks, args.tasks)
        mixture_spec = {"name": "big", "members": {"task_*": None},
                        "rate": {"rule": "examples", "cap": 10_000, "temperature": 2.0}, "held_out": ["task_0000"]}  # fmt: skip
        (mixtures / "big.yaml").write_text(yaml.safe_dump(mixture_spec))

        start = time.perf_counter()
        registry = Registry([tasks], [mixtures])
        mixture = load_mixture(registry, "big")
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        result = report(mixture, registry, steps=100_000, batch_size=256)
        report_s = time.perf_counter() - start

        start = time.perf_counter()
        stream = stream_for(mixture, registry)
        far = stream.item(10**9)
        jump_s = time.perf_counter() - start

        start = time.perf_counter()
        stream.items(10**9, 10_000)
        sequential_us = (time.perf_counter() - start) / 10_000 * 1e6

    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"tasks in mixture:             {len(mixture.members)} (+{len(mixture.held_out)} held out)")
    print(f"build (scan, parse, rates):   {build_s:8.3f} s")
    print(f"dry-run report:               {report_s:8.3f} s  ({len(result['warnings'])} warnings)")
    print(
        f"jump to position 10^9:        {jump_s * 1000:8.3f} ms  -> {far.task}, row {far.row}, epoch {far.epoch}"
    )
    print(f"sequential stream read:       {sequential_us:8.2f} us per example")


if __name__ == "__main__":
    main()
