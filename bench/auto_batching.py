"""What `batching.strategy: auto` chooses on five length profiles, and what the size and split of a packed row are worth.

    python bench/auto_batching.py [--max-tokens N]

For each profile, on the stream's first window (2,048 examples), as a run's start computes it: the share of real
tokens in packed rows of about 1,024 slots split by the target / input token ratio alone, in the same rows at the
split that packs the window into the fewest rows (`t2t.data.densest_split`), and in the rows `auto` takes (the row
count and split that hold the most real tokens, `t2t.data.densest_rows`), then auto's choice and its reasons (real
tokens and task-mix distance of packed rows, of padded batches keeping the mix and of length-bucketed padding).
Profiles: `demo` (short examples), `long-tail` (bench/train_throughput.py's: one example in ten of 150-400 input
and 20-60 target words) and `two-sided` (three short tasks, and one in six examples either a long input of 200-500
words with a one-word answer or a short input with a 40-120-word target), each under a 2,048-slot budget, and
`long-docs` (two short tasks and one of 150-300-word inputs with 20-40-word targets, about one example in eight)
under 512 slots, where a long example fills a padded batch alone, and `many-long` (a third of the examples
400-900-word documents with 100-200-word summaries, cut at 512 + 128 tokens, beside classification and short QA),
where most rows of about 1,024 slots can hold one long example only. `--max-tokens` sets one budget for all. No
timing: the figures are counts, the same on every machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import local_mixture
from train_throughput import long_tail_mixture, many_long_mixture

from t2t.batching import pack
from t2t.data import (
    PACK_ROW_TOKENS,
    MixtureData,
    densest_split,
    first_examples,
    ratio_split,
    resolve_batching,
    target_ratio,
    target_side,
)
from t2t.encoding import Limits
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer
from t2t.train_config import BatchingSpec


def two_sided_mixture(folder: Path) -> Registry:
    """Three short tasks, a long-input one and a long-target one (a twelfth of the stream each), as jsonl files."""
    tasks = {f"short_{k}": (8, 40, 1, 2) for k in range(3)} | {"long_input": (200, 500, 1, 1),
                                                                "long_target": (3, 6, 40, 120)}  # fmt: skip
    members = {name: 1.0 if name.startswith("long") else 10 / 3 for name in tasks}  # long ones: 1 in 12 each
    return local_mixture(folder, "two_sided", "short tasks, and a few long inputs and long targets", tasks,
                         members, rows=1000)  # fmt: skip


def long_docs_mixture(folder: Path) -> Registry:
    """Two short tasks and one with long inputs (150-300 words) and 20-40-word targets, at 0.3 of a short one's rate."""
    tasks = {"short_a": (3, 12, 1, 1), "short_b": (3, 15, 1, 2), "doc": (150, 300, 20, 40)}
    return local_mixture(folder, "long_docs", "short tasks and long documents", tasks,
                         {"short_a": 1.0, "short_b": 1.0, "doc": 0.3}, rows=1000)  # fmt: skip


# token limits and budget
PROFILES = {"demo": ((96, 24), 2048), "long-tail": ((512, 64), 2048), "two-sided": ((512, 128), 2048),
            "long-docs": ((512, 64), 512), "many-long": ((512, 128), 2048)}  # fmt: skip
BUILDERS = {"long-tail": (long_tail_mixture, "long_tail"), "two-sided": (two_sided_mixture, "two_sided"),
            "long-docs": (long_docs_mixture, "long_docs"), "many-long": (many_long_mixture, "many_long")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=None, help="one budget for every profile")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for profile, (limits, budget) in PROFILES.items():
        budget = args.max_tokens or budget
        if profile == "demo":
            registry, name = Registry.default(), "demo"
        else:
            build, name = BUILDERS[profile]
            registry = build(tmp / profile)
        tasks = load_mixture(registry, name).task_names
        tokenizer_dir = train_tokenizer(
            mixture_texts(registry, tasks, "train", 500), 2000, tmp / profile / "tok"
        )
        data = MixtureData(load_mixture(registry, name), registry, load_tokenizer(tokenizer_dir), Limits(*limits),
                           cache_dir=tmp / profile / "cache")  # fmt: skip
        config = BatchingSpec(max_tokens=budget)
        chosen, why = resolve_batching(data, config, "t5")
        examples = first_examples(data, config)
        real = sum(len(e.input_ids) + len(e.labels) for e in examples)
        # the ratio's split, as auto computed it before it looked for the densest
        rows_per_batch = max(1, round(budget / PACK_ROW_TOKENS))
        row_input, target = ratio_split(target_ratio(examples), budget / rows_per_batch, data.limits)
        print(f"\n{profile}: limits {limits[0]} + {limits[1]} tokens, budget {budget} slots")
        share = real / (len(pack(examples, row_input, target)) * (row_input + target))
        print(f"  {rows_per_batch} row(s) split by the ratio, {row_input}+{target}: {share:.1%} real tokens")
        n_rows, *densest = densest_split(
            examples, row_input, target_side(target_ratio(examples), row_input, data.limits), data.limits
        )
        share = real / (n_rows * sum(densest))
        print(
            f"  {rows_per_batch} row(s) at their densest split, {densest[0]}+{densest[1]}: {share:.1%} real tokens"
        )
        if chosen.strategy == "packed":
            row = chosen.pack_input_tokens + chosen.pack_target_tokens
            share = real / (len(pack(examples, chosen.pack_input_tokens, chosen.pack_target_tokens)) * row)
            print(f"  auto's rows, {chosen.rows_per_batch} of {chosen.pack_input_tokens}+{chosen.pack_target_tokens}: "
                  f"{share:.1%} real tokens")  # fmt: skip
        print(f"  auto chose {why}")


if __name__ == "__main__":
    main()
