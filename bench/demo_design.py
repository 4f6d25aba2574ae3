"""Demo design experiments: which levers give measurable zero-shot transfer to the held-out tasks within the
demo's budget (docs/demo-design.md has the results).

    python bench/demo_design.py --variants span templates span+templates [--steps 2000] [--out runs/demo_design]

Each variant is the demo (`t2t demo`'s training config and tokenizer recipe) with one change:
  baseline        the demo as shipped
  span            + `world_text` (T5 span corruption over paragraphs of the demo world) as a mixture member
  templates       + more templates per classification task, in the yes/no formats the held-out tasks use
                    ("Is it true that ...?", "True or false: ...", "Does ... support the statement?")
  span+templates  both
  wide            d_model 256, d_ff 512 (about 3x the parameters), half the steps
  temperature1    the mixture's temperature 1 instead of 2 (rates follow the capped sizes)
  no_sort         the ablation: sort_words left out of the training mixture (does alphabet_first need it?)
  lr3e-3          the learning rate the demo had until 2026-11-25 (3e-3 instead of 1e-3)
`--seed` changes the model's initialisation (the mixture's stream keeps its own seed); `--lr` overrides the rate.
Per variant: the held-out tasks' medians over templates with their 95% bootstrap interval and chance, the mean
over the training tasks, training minutes. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from t2t.demo import demo_config
from t2t.evaluation import evaluate
from t2t.mixtures import load_mixture
from t2t.registry import Registry, shipped_dir
from t2t.train import Run

YES_NO = ["no", "yes"]
# Templates in the held-out tasks' answer formats, for training tasks whose skill the held-out tasks need.
EXTRA_TEMPLATES = {
    "word_in_list": [
        {"name": "is_it_true", "input": "{{ words }}\nIs it true that {{ word }} is in the list?",
         "target": "{{ answer_choices[label] }}"},
        {"name": "supports", "input": "List: {{ words }}\nStatement: {{ word }} is in the list\n"
         "Does the list support the statement? yes or no", "target": "{{ answer_choices[label] }}",
         "choices_in_prompt": True},
    ],
    "larger_number": [
        {"name": "is_it_true", "input": "Is it true that {{ b }} is larger than {{ a }}?",
         "target": "{{ answer_choices[label] }}", "answer_choices": YES_NO},
        {"name": "true_false", "input": "True or false: {{ b }} > {{ a }}.", "target": "{{ answer_choices[label] }}",
         "answer_choices": ["false", "true"], "choices_in_prompt": True},
    ],
    "sentiment": [
        {"name": "is_it_true", "input": "{{ text }}\nIs it true that this is positive?",
         "target": "{{ answer_choices[label] }}", "answer_choices": YES_NO},
        {"name": "true_false", "input": "True or false: \"{{ text }}\" is a positive review.",
         "target": "{{ answer_choices[label] }}", "answer_choices": ["false", "true"], "choices_in_prompt": True},
    ],
}  # fmt: skip
VARIANTS = ["baseline", "span", "templates", "span+templates", "wide", "temperature1", "no_sort", "lr3e-3"]


def variant_registry(name: str, root: Path) -> Registry:
    """The shipped tasks and the demo mixture with the variant's change, in folders of their own."""
    templates, mixtures = root / "templates", root / "mixtures"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(shipped_dir("templates") / "builtin", templates)
    mixtures.mkdir(parents=True)
    spec = yaml.safe_load((shipped_dir("mixtures") / "demo.yaml").read_text())
    if "span" in name:
        spec["members"]["world_text"] = None
    if name == "temperature1":
        spec["rate"]["temperature"] = 1.0
    if name == "no_sort":
        del spec["members"]["cluster:word_ops"]
        spec["members"] = {"reverse_words": None, "dedupe_words": None, **spec["members"]}
    # the members' order decides task ids, the tokenizer's corpus order and so the run: keep the shipped order
    (mixtures / "demo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if "templates" in name:
        for task, extra in EXTRA_TEMPLATES.items():
            path = templates / f"{task}.yaml"
            task_spec = yaml.safe_load(path.read_text())
            task_spec["templates"] += extra
            path.write_text(yaml.safe_dump(task_spec, sort_keys=False))
    return Registry([templates], [mixtures])


def run_variant(name: str, out: Path, steps: int, max_examples: int, seed: int, lr: float | None) -> dict:
    registry = variant_registry(name, out / name / "registry")
    config = demo_config(out / name / "run", steps if name != "wide" else steps // 2)
    update: dict = {"trackers": [], "seed": seed}
    if lr is not None or name == "lr3e-3":
        update["optimizer"] = config.optimizer.model_copy(update={"lr": 3e-3 if lr is None else lr})
    if name == "wide":
        tiny = config.model.tiny.model_copy(update={"d_model": 256, "d_ff": 512})
        update["model"] = config.model.model_copy(update={"tiny": tiny})
    config = config.model_copy(update=update)
    started = time.perf_counter()
    run = Run(config, registry)
    run.fit()
    minutes = (time.perf_counter() - started) / 60
    mixture = load_mixture(registry, "demo")
    model = run.accelerator.unwrap_model(run.model).model
    results, _ = evaluate(model, run.tokenizer, registry, [*mixture.task_names, *mixture.held_out],
                          set(mixture.held_out), run.eval_config(max_examples))  # fmt: skip
    tasks = results["tasks"]
    held = {t: {k: tasks[t]["summary"][k] for k in ("median", "ci_low", "ci_high", "chance", "vs_chance")}
            for t in mixture.held_out}  # fmt: skip
    seen = [tasks[t]["summary"]["median"] for t in tasks if not tasks[t]["held_out"]]
    row = {"variant": name, "steps": config.steps, "seed": seed, "lr": config.optimizer.lr,
           "train_minutes": round(minutes, 2),
           "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "held_out": held, "seen_mean": round(sum(seen) / len(seen), 1),
           "seen": {t: tasks[t]["summary"]["median"] for t in tasks if not tasks[t]["held_out"]}}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/demo_design"))
    args = parser.parse_args()
    rows = [
        run_variant(v, args.out, args.steps, args.max_examples, args.seed, args.lr) for v in args.variants
    ]
    with open(args.out / "results.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
