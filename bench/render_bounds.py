"""What the render bounds cost: rows rendered per second through t2t's bounded sandbox against Jinja's plain
immutable sandbox, on the demo mixture's tasks (every template), side by side in one run.

    python bench/render_bounds.py [--rows 2000] [--repeats 3]

Both render the same compiled templates on the same rows; the bounded path adds the per-render budget, the timer
signal, the checked operators and the output count. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.sandbox import bounded_call
from t2t.sources import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows per task")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    registry = Registry.default()
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    work = []  # (bounded render function, plain compiled template, limits, context) per row and template
    for name in load_mixture(registry, "demo").task_names:
        task = registry.task(name)
        data = load_split(task, "train")
        rows = data.rows.select(range(min(args.rows, len(data))))
        for row in rows:
            context = {f: row[f] for f in task.spec.fields}
            for template in task.templates.values():
                if template.choices is not None and isinstance(template.choices, tuple):
                    context = {**context, "answer_choices": list(template.choices)}
                source = template.spec.input
                work.append((template.input.render, plain.from_string(source).render, task.limits, context))
    print(
        f"{len(work):,} renders (demo tasks x templates x up to {args.rows} rows); "
        f"{platform.machine()}, {platform.python_version()}"
    )
    results = {"plain sandbox": [], "t2t bounded": []}
    for _ in range(args.repeats):
        for label, run in (("plain sandbox", lambda w: w[1](w[3])),
                           ("t2t bounded", lambda w: bounded_call(w[0], w[3], w[2]))):  # fmt: skip
            started = time.perf_counter()
            for item in work:
                run(item)
            results[label].append(len(work) / (time.perf_counter() - started))
    for label, rates in results.items():
        print(f"{label:14}  {max(rates):>10,.0f} renders/s (best of {args.repeats})")
    ratio = max(results["plain sandbox"]) / max(results["t2t bounded"])
    print(f"bounded / plain time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
