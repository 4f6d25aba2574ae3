"""The `t2t` command line. Every bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from t2t.errors import T2TError, Terminated, Where
from t2t.registry import Registry

EXIT_PROBLEMS = 1  # lint found problems
EXIT_BAD_INPUT = 2  # the input cannot be used


def positive_int(text: str) -> int:
    """argparse type: bad values become argparse's one-line `error:` and exit code 2."""
    if not text.lstrip("+").isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.lstrip("+").isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return int(text)


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, not {text!r}")
    return int(text)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = finite_float(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    return value


def _registry(args: argparse.Namespace) -> Registry:
    return Registry.default(args.templates_dir, args.mixtures_dir)


# ------------------------------------------------------------------------------------------ commands


def cmd_tasks(args: argparse.Namespace) -> int:
    from t2t.sources import outside_paths

    registry = _registry(args)
    rows = []
    for task in registry.tasks():
        src = task.spec.source
        detail = {"hub": getattr(src, "path", ""), "generator": getattr(src, "generator", "")}.get(
            src.kind, ""
        )
        rows.append(
            (
                task.name,
                task.spec.cluster,
                f"{src.kind}:{detail}" if detail else src.kind,
                task.template_names,
            )
        )
    width = max(len(r[0]) for r in rows)
    cluster_width = max(len(r[1]) for r in rows)
    source_width = max(len(r[2]) for r in rows)
    for name, cluster, source, templates in rows:
        print(
            f"{name:<{width}}  {cluster:<{cluster_width}}  {source:<{source_width}}  {len(templates)} templates"
        )
        if args.verbose:
            spec = registry.task(name).spec
            print(f"    file {spec.path}; templates {', '.join(templates)}")
            for split, path in outside_paths(spec):
                print(f"    warning: split {split!r} reads {path}, outside the task's folder")
    print(f"{len(rows)} tasks")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from t2t.sources import load_split, select_rows

    task = _registry(args).task(args.task)
    if args.template is not None:
        task.spec.template(args.template)  # unknown template: a clear error before any data is read
    data = load_split(task, args.split)
    picks = select_rows(task.name, args.split, len(data), args.n)
    examples = []  # all rendered before anything is printed: a bad row is the only output
    for i in picks.tolist():
        index = int(data.source_rows[i])
        template = args.template or task.choose(args.seed, index)
        examples.append((index, template, task.try_render(data.rows[i], template, args.split, index)))
    print(f"{task.name}: {len(picks)} of {len(data)} {args.split} rows, the ones `t2t eval --max-examples {args.n}` "
          "takes (a sample seeded by task and split, in row order)", file=sys.stderr)  # fmt: skip
    for index, template, example in examples:
        if example is None:  # a promptsource-style template gives no input ||| target for this row
            if args.json:
                print(json.dumps({"task": task.name, "template": template, "split": args.split, "row": index,
                                  "skipped": True}))  # fmt: skip
            else:
                print(
                    f"── {task.name} · template {template!r} · {args.split} row {index}: skipped by the template"
                )
            continue
        if args.json:
            print(json.dumps({"task": task.name, "template": template, "split": args.split, "row": index,
                              "input": example.inputs, "target": example.targets,
                              "choices": list(example.choices) if example.choices is not None else None}))  # fmt: skip
            continue
        print(f"── {task.name} · template {template!r} · {args.split} row {index} " + "─" * 20)
        print("input:   " + example.inputs.replace("\n", "\n         "))
        print("target:  " + example.targets.replace("\n", "\n         "))
        if example.choices is not None:
            print(f"choices: {' | '.join(example.choices)}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from t2t.lint import lint

    registry = _registry(args)
    for name in args.tasks:
        registry.task(name)  # unknown names are bad input (exit 2), not lint problems
    problems, warnings = lint(registry, args.tasks or None, args.all_rows)
    for line in problems:
        print(line)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    checked = len(args.tasks) if args.tasks else len(registry.task_names)
    print(
        f"{checked} tasks checked, {len(problems)} problem{'s' if len(problems) != 1 else ''}",
        file=sys.stderr,
    )
    return EXIT_PROBLEMS if problems else 0


def cmd_new_task(args: argparse.Namespace) -> int:
    from t2t.newtask import write_new_task

    out_dir = args.out or (args.templates_dir[-1] if args.templates_dir else Path("templates"))
    path = write_new_task(args.name, args.data_file, out_dir, force=args.force)
    print(f"wrote {path}: edit its template, then run `t2t --templates-dir {out_dir} lint {args.name}`")
    return 0


def cmd_mixtures(args: argparse.Namespace) -> int:
    from t2t.mixtures import load_mixture_spec

    registry = _registry(args)
    for name, path in sorted(registry.mixture_files.items()):
        spec = load_mixture_spec(path)
        print(
            f"{name:<16} {len(spec.members):>3} members  {len(spec.held_out):>3} held out  {spec.description}"
        )
    return 0


def cmd_mixture_show(args: argparse.Namespace) -> int:
    from t2t.mixtures import load_mixture, report
    from t2t.reports import print_mixture_report

    registry = _registry(args)
    mixture = load_mixture(registry, args.mixture, sizes="try")
    result = report(mixture, registry, args.steps, args.batch_size, args.skip_sample)
    result["batching"] = _auto_batching(args, mixture, registry)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_mixture_report(result)
    return 0


def _auto_batching(args: argparse.Namespace, mixture: object, registry: Registry) -> dict:
    """What `batching.strategy: auto` picks for this mixture and a model (its tokenizer and type), and why."""
    given = [flag for flag, value in (("--max-input-tokens", args.max_input_tokens),
                                      ("--max-target-tokens", args.max_target_tokens),
                                      ("--max-tokens", args.max_tokens)) if value is not None]  # fmt: skip
    if args.model is None and given:
        raise T2TError(f"{given[0]} is for --model (which batching auto picks for a model); give --model too")
    if args.model is None:
        return {"model": None, "strategy": None,
                "why": "auto packs rows for T5-family models (padding, keeping each batch's task mix, where that "
                       "holds more real tokens) and pads, keeping the mix, for others; "
                       "--model NAME_OR_DIR shows the choice for a model, with its figures"}  # fmt: skip
    from transformers import AutoConfig

    from t2t.data import MixtureData, resolve_batching
    from t2t.encoding import Limits
    from t2t.errors import load_pretrained
    from t2t.tokenizer import load_tokenizer
    from t2t.train import check_whole_model
    from t2t.train_config import BatchingSpec

    check_whole_model(args.model, "--model")  # what training would take
    kind = getattr(load_pretrained(AutoConfig, args.model, "model config"), "model_type", None)
    limits = Limits(args.max_input_tokens or 256, args.max_target_tokens or 128)
    data = MixtureData(mixture, registry, load_tokenizer(args.model), limits)
    chosen, why = resolve_batching(data, BatchingSpec(max_tokens=args.max_tokens or 2048), kind)
    return {"model": args.model, "strategy": chosen.strategy, "why": why}


def cmd_mixture_sample(args: argparse.Namespace) -> int:
    from t2t.mixtures import load_mixture, stream_for

    registry = _registry(args)
    mixture = load_mixture(registry, args.mixture)
    split = mixture.spec.splits.train
    stream, prompters = stream_for(mixture, registry), {}
    members = {m.task: m for m in mixture.members}
    # the first position, then the last, refused before anything prints
    for position in (args.start, args.start + args.count - 1):
        stream.items(position, 1)
    for chunk in range(args.start, args.start + args.count, SAMPLE_CHUNK):  # memory bounded for any --count
        count = min(SAMPLE_CHUNK, args.start + args.count - chunk)
        _print_samples(_sample_records(stream.items(chunk, count), registry, mixture, prompters, members), split,
                       args.json)  # fmt: skip
    return 0


SAMPLE_CHUNK = 10_000  # stream positions `t2t mixture sample` works out and prints at a time


def _sample_records(items: list, registry, mixture, prompters: dict, members: dict) -> list[dict]:
    from t2t.prompting import Prompter
    from t2t.sources import load_split

    split = mixture.spec.splits.train
    records = []
    for item in items:
        if item.task not in prompters:
            task = registry.task(item.task)
            prompters[item.task] = Prompter(task, load_split(task, split), split, members[item.task].prompting,
                                            mixture.spec.seed)  # fmt: skip
        prompter = prompters[item.task]
        source_row = int(prompter.rows.source_rows[item.row])
        record = {"position": item.position, "task": item.task, "split": split, "row": source_row,
                  "template": item.template, "epoch": item.epoch}  # fmt: skip
        prompted = prompter.prompted(item)
        if prompted is None:  # passed over by training, as here
            records.append({**record, "skipped": True})
            continue
        record.update(input=prompted.text(), target=prompted.targets, exemplars=len(prompted.exemplars))
        records.append(record)
    return records


def _print_samples(records: list[dict], split: str, as_json: bool) -> None:
    for record in records:
        if as_json:
            print(json.dumps(record))
        else:
            shots = f" · {record['exemplars']}-shot" if record.get("exemplars") else ""
            print(
                f"{record['position']:>8}  {record['task']} · {record['template']} · {split} row {record['row']}"
                f" · epoch {record['epoch']}{shots}"
            )
            if record.get("skipped"):
                print("          skipped by the template (training passes this position over)")
                continue
            print("          input:  " + record["input"].replace("\n", "\n                  "))
            print("          target: " + record["target"].replace("\n", "\n                  "))


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from t2t.mixtures import load_mixture
    from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer

    registry = _registry(args)
    mixture = load_mixture(registry, args.mixture)
    texts = mixture_texts(registry, mixture.task_names, mixture.spec.splits.train, args.rows_per_task)
    out = train_tokenizer(texts, args.vocab_size, args.out)
    tokenizer = load_tokenizer(out)
    pieces = len(tokenizer) - 100
    fewer = (
        f"; the text holds fewer than the {args.vocab_size:,} asked for" if pieces < args.vocab_size else ""
    )
    print(f"wrote {out}: {len(tokenizer)} tokens ({pieces} pieces + 100 sentinels{fewer})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from t2t.fileio import check_out_path
    from t2t.train import train
    from t2t.train_config import load_train_config

    config = load_train_config(args.config, args.overrides)
    problem = check_out_path(config.run_dir, folder=True)  # before the tokenizer trains, not when logs start
    if problem is not None:
        raise T2TError(f"run_dir {problem}")
    result = train(config, _registry(args), resume=args.resume)
    if result["main_process"]:
        print(f"done: step {result['step']}, model in {result['model']}, checkpoint {result['checkpoint']}")
        if result["skipped_bad"]:
            print(f"warning: {result['skipped_bad']} rows that failed to render were skipped (bad_rows: skip; "
                  "`t2t lint --all-rows` names them)")  # fmt: skip
        if result["best"] is not None:
            print(f"selected: step {result['best_step']}, exported to {result['best']} (why: selection.md)")
    return 0


def selected_tasks(
    args: argparse.Namespace, registry: Registry
) -> tuple[list[str], set[str], dict[str, tuple[str, ...]] | None]:
    """The tasks of `--mixture M [--held-out]` or `--tasks ...` (each checked to exist), the held-out ones, and
    the templates the mixture uses for each (its template filter), None for `--tasks`. Span-corruption tasks (a
    training objective, nothing to answer) are left out of a mixture's and refused by name."""
    from t2t.evaluation import scored_tasks
    from t2t.mixtures import load_mixture

    if args.mixture:
        mixture = load_mixture(registry, args.mixture, sizes="skip")
        tasks = list(mixture.held_out) if args.held_out else [*mixture.task_names, *mixture.held_out]
        tasks = scored_tasks(registry, tasks)
        if not tasks:  # the command would write an empty report, or serve nothing
            why = "has no task with answers to score (span corruption trains, it answers nothing)"
            if args.held_out and not mixture.held_out:
                why = "holds out no task (its file has no held_out list)"
            raise T2TError(f"mixture {args.mixture} {why}", Where(file=mixture.path))
        _check_split(registry, tasks, getattr(args, "split", None))
        return tasks, set(mixture.held_out), {t: mixture.templates_of(t) for t in tasks}
    for name in args.tasks:
        refuse_span_corruption(registry, name)
    _check_split(registry, args.tasks, getattr(args, "split", None))
    repeated = sorted({name for name in args.tasks if args.tasks.count(name) > 1})
    if repeated:
        print(
            f"warning: --tasks names {', '.join(repeated)} more than once: each is taken once",
            file=sys.stderr,
        )
    return list(dict.fromkeys(args.tasks)), set(), None


def _check_split(registry: Registry, tasks: list[str], split: str) -> None:
    """Each task offers `split` (None: a command without --split): refused before a model loads."""
    from t2t.sources import splits_of

    for name in tasks if split is not None else []:
        spec = registry.task(name).spec
        if split not in splits_of(spec):
            raise T2TError(f"no split {split!r}; the task has {', '.join(splits_of(spec))}",
                           Where(file=spec.path, task=name, split=split))  # fmt: skip


def refuse_span_corruption(registry: Registry, name: str) -> None:
    task = registry.task(name)
    if task.spec.objective == "span_corruption":
        raise T2TError(f"task {name} is a span-corruption task: it trains a model, there is nothing to answer, "
                       "evaluate, serve or export", Where(file=task.spec.path, task=name))  # fmt: skip


def add_task_selection(p: argparse.ArgumentParser) -> None:
    """--mixture M [--held-out] | --tasks T ..., and --split, for commands that take tasks to evaluate."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mixture", help="the mixture's training and held-out tasks")
    which.add_argument("--tasks", nargs="+", metavar="TASK")
    p.add_argument("--held-out", action="store_true", help="with --mixture: only its held-out tasks")
    p.add_argument("--split", default="validation")


def eval_device(name: str) -> tuple[str, str]:
    """(device, dtype) for `t2t eval --device`: auto takes the GPU when there is one (in bf16 there)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise T2TError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise T2TError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise T2TError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    return name, "bf16" if name.startswith("cuda") else "fp32"


def cmd_eval(args: argparse.Namespace) -> int:
    from t2t.evaluation import EvalConfig, evaluate
    from t2t.modeling import load_for_inference
    from t2t.reports import print_evaluation, save_evaluation

    registry = _registry(args)
    tasks, held_out, templates = selected_tasks(args, registry)
    if args.template is not None:
        for name in tasks:
            registry.task(name).spec.template(args.template)  # each task must have it: refused before loading
    device, dtype = eval_device(args.device)
    # the limits a t2t-trained model was trained under; else the model's own (T5 from the hub: 512; BART: 1024)
    model, tokenizer, max_input, max_target = load_for_inference(args.model, device, dtype)
    config = EvalConfig(split=args.split, max_examples=args.max_examples, batch_size=args.batch_size,
                        num_beams=args.num_beams, scoring=args.scoring, generate=not args.no_generate,
                        max_new_tokens=args.max_new_tokens,
                        max_input_tokens=args.max_input_tokens or max_input,
                        max_target_tokens=args.max_target_tokens or max_target, template=args.template)  # fmt: skip
    report, records = evaluate(model, tokenizer, registry, tasks, held_out, config, templates)
    report.update(model=str(args.model), device=device, dtype=dtype, max_input_tokens=config.max_input_tokens,
                  max_target_tokens=config.max_target_tokens)  # fmt: skip
    paths = save_evaluation(report, records, args.out)
    print_evaluation(report)
    for line in report["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from t2t.serving import InputRows, choose_template

    registry = _registry(args)
    refuse_span_corruption(registry, args.task)
    task = registry.task(args.task)
    template = choose_template(task, args.template)
    source = InputRows(args.input)
    try:
        return _predict(args, registry, task, template, source)
    finally:
        source.close()


def _predict(args: argparse.Namespace, registry: Registry, task: Any, template: str, source: Any) -> int:
    """Two passes over the input, a chunk of `--chunk-rows` rows at a time: every row checked and rendered before
    the model loads (a bad row refuses the file, nothing written), then each chunk answered in length-sorted
    batches and its lines written, in input order, to a file that appears at `--out` whole at the end."""
    from tqdm.auto import tqdm

    from t2t.fileio import atomic_writer
    from t2t.serving import BadRow, Predictor, Prepared, ServeLimits, render_rows, result_record

    limits = ServeLimits(max_field_chars=args.max_field_chars)
    total, bad, first_bad = 0, 0, None
    for chunk in source.chunks(args.chunk_rows):
        for result in render_rows(task, template, chunk, limits, start=total):
            if isinstance(result, BadRow):
                bad += 1
                first_bad = first_bad or result
        total += len(chunk)
    if not total:
        raise T2TError(f"{source.where} holds no rows (one JSON object per line)")

    def refuse(problem: BadRow, more: int) -> T2TError:
        extra = f" ({more} more bad rows; --skip-bad-rows answers the rest)" if more else ""
        return T2TError(f"{problem.message}{extra}", Where(file=args.input, task=task.name, template=template,
                                                            row=problem.where.row))  # fmt: skip

    if bad and not args.skip_bad_rows:  # refused before the model loads
        raise refuse(first_bad, bad - 1)
    device, dtype = eval_device(args.device)
    predictor = Predictor.load(args.model, registry, [task.name], device, dtype, limits)
    answered = refused = cut = 0
    first_cut = None
    with (atomic_writer(args.out) as out,
          tqdm(total=total - bad, desc=f"predict {task.name}", unit="row", disable=args.quiet) as bar):  # fmt: skip
        start = 0
        for chunk in source.chunks(args.chunk_rows):
            prepared = predictor.prepare(
                task, template, render_rows(task, template, chunk, limits, start=start)
            )
            failed = [p for p in prepared if isinstance(p, BadRow)]
            if failed and not args.skip_bad_rows:  # a row that rendered in the first pass and not now
                raise refuse(failed[0], 0)
            results: list = list(prepared)
            # length-bucketed: the chunk's rows in order of input length, answered `--batch-size` at a time
            order = sorted((i for i, p in enumerate(prepared) if isinstance(p, Prepared)),
                           key=lambda i: prepared[i].tokens)  # fmt: skip
            for first in range(0, len(order), args.batch_size):
                batch = order[first : first + args.batch_size]
                for i, answer in zip(batch, predictor.answer([prepared[i] for i in batch]), strict=True):
                    results[i] = answer
                bar.update(len(batch))
            out.write("".join(json.dumps({"row": start + i, **result_record(r, args.scores, args.with_input)}) + "\n"
                              for i, r in enumerate(results)))  # fmt: skip
            answered += len(order)
            refused += len(failed)
            long_rows = [i for i in order if prepared[i].cut]
            cut += len(long_rows)
            if long_rows and first_cut is None:
                first = min(long_rows)
                first_cut = (start + first, prepared[first].full_tokens)
            start += len(chunk)
    if first_cut is not None:
        print(f"warning: {source.where}: {cut} of the {answered} rows answered have inputs longer than "
              f"{predictor.max_input_tokens} tokens (the model's max_input_tokens), cut there as in training: the "
              f"model read their first {predictor.max_input_tokens} tokens only; the first, row {first_cut[0]} "
              f"({first_cut[1]} tokens); their lines say \"input_cut\": true", file=sys.stderr)  # fmt: skip
    said = f", {refused} refused (their lines say why)" if refused else ""
    print(f"wrote {args.out}: {answered} rows answered with template {template}{said}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from t2t.server import bind, serve
    from t2t.serving import Predictor, ServeLimits

    registry = _registry(args)
    tasks, _, _ = selected_tasks(args, registry)
    device, dtype = eval_device(args.device)
    limits = ServeLimits(max_rows=args.max_rows, max_concurrent=args.max_concurrent, max_choices=args.max_choices,
                         max_field_chars=args.max_field_chars,
                         max_body_bytes=args.max_body_bytes, max_body_seconds=args.max_body_seconds,
                         batch_rows=args.batch_rows,
                         batch_tokens=args.batch_tokens, wait_ms=args.wait_ms)  # fmt: skip
    # a host that does not resolve, a port in use: refused before the model loads
    sock = bind(args.host, args.port)
    predictor = Predictor.load(args.model, registry, tasks, device, dtype, limits)
    serve(predictor, args.host, args.port, batching=not args.no_batching, sock=sock)
    return 0


def cmd_export_lm_eval(args: argparse.Namespace) -> int:
    from t2t.export import export_lm_eval

    registry = _registry(args)
    tasks, _, templates = selected_tasks(args, registry)
    tokenizer = None
    if args.tokenizer is not None:
        from t2t.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    groups = export_lm_eval(registry, tasks, args.split, args.out, args.max_examples, tokenizer, templates)
    members = sum(len(m) for m in groups.values())
    print(f"wrote {members} lm-eval tasks in {len(groups)} groups to {args.out}; run them with")
    print(
        f"  lm_eval --model hf --model_args pretrained=MODEL_DIR,backend=seq2seq --include_path {args.out} "
        f"--tasks {','.join(groups)}"
    )
    return 0


def cmd_export_merged(args: argparse.Namespace) -> int:
    from t2t.adapters import merged

    adapter, out = merged(args.model, args.adapter, args.out)
    print(
        f"wrote {out}: the backbone of {args.model} with adapter {adapter} merged in (a plain HF model dir)"
    )
    return 0


def cmd_import_promptsource(args: argparse.Namespace) -> int:
    from t2t.promptsource import import_promptsource
    from t2t.registry import scan, shipped_dir

    shipped_templates = shipped_dir("templates").resolve()
    into_shipped = args.out.resolve().is_relative_to(shipped_templates)  # t2t's own folder: regenerating it
    shipped = set() if into_shipped else set(scan([shipped_templates], "task"))
    report = import_promptsource(args.path, args.out, args.datasets, shipped)
    print(f"{len(report.new) + len(report.changed) + len(report.unchanged)} task files in {args.out} "
          f"({len(report.new)} new, {len(report.changed)} changed, {len(report.unchanged)} unchanged), "
          f"{report.templates} templates")  # fmt: skip
    for name in report.changed:
        print(f"changed: {name}")
    if report.shipped:
        print(f"left out {len(report.shipped)} that t2t ships already imported (templates/promptsource; a "
              f"--templates-dir may not define them again): {', '.join(report.shipped)}")  # fmt: skip
    if report.failed:
        print(f"{len(report.failed)} templates could not be imported:")
        for line in report.failed:
            print(f"  {line}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from t2t.demo import run_demo

    if args.out.exists() and any(args.out.iterdir()):
        raise T2TError(f"{args.out} exists and is not empty: choose another --out or remove it")
    run_demo(args.out, args.steps, args.max_examples, _registry(args))
    return 0


def cmd_affinity(args: argparse.Namespace) -> int:
    from t2t.affinity import affinity_report

    out = args.out or args.run_dir / "affinity"
    lookahead = None
    if args.lookahead:
        lookahead = {"registry": _registry(args), "batch_size": args.lookahead_batch, "lr": args.lookahead_lr}
    result = affinity_report(args.run_dir, out, args.threshold, lookahead)
    tasks = result["tasks"]
    width = max(len(t) for t in tasks)
    if "cosine" in result:
        print(
            f"mean gradient cosine over {result['log_lines']} log lines (rows and columns: {', '.join(tasks)})"
        )
        for name, row in zip(tasks, result["cosine"], strict=True):
            print(f"  {name:<{width}}  " + " ".join("   .  " if x is None else f"{x:+.2f} " for x in row))
    if lookahead is not None:
        print(f"lookahead affinity over {len(result['lookahead_checkpoints'])} checkpoint(s), row helps column "
              "(1 - L_col after one step on the row's loss / L_col before):")  # fmt: skip
        for name, row in zip(tasks, result["lookahead"], strict=True):
            print(f"  {name:<{width}}  " + " ".join(f"{x:+.1e}" for x in row))
    basis = "the symmetrised lookahead affinity" if lookahead is not None else "the mean cosine"
    print(f"suggested groups (average linkage, merged while {basis} > {args.threshold:g}):")
    for group in result["groups"]:
        print("  " + ", ".join(group))
    written = [out / "affinity.json"] + [out / n for n, key in (("affinity.png", "cosine"),
                                                                 ("lookahead.png", "lookahead")) if key in result]  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from t2t.compare import compare

    if args.out.exists() and any(args.out.iterdir()):
        raise T2TError(f"{args.out} exists and is not empty: choose another --out or remove it")
    result = compare(
        args.mixture, args.out, args.steps, args.max_examples, args.margin, _registry(args), args.seeds
    )
    print((args.out / "compare.md").read_text())
    print(
        f"wrote {args.out / 'compare.md'} and {args.out / 'compare.png'}; mean delta {result['mean_delta']:+.1f} "
        f"[{result['mean_ci_low']:+.1f}, {result['mean_ci_high']:+.1f}]"
    )
    return 0


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2t", description="Multi-task instruction tuning of T5-style models."
    )
    parser.add_argument(
        "--templates-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of task files (repeatable; also $T2T_TEMPLATES_PATH)",
    )
    parser.add_argument(
        "--mixtures-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of mixture files (repeatable; also $T2T_MIXTURES_PATH)",
    )
    parser.add_argument(
        "--strict-paths",
        action="store_true",
        help="refuse data files outside their task's folder (also $T2T_STRICT_PATHS=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(fn=fn)
        return p

    p = command("tasks", cmd_tasks, "list every task: name, cluster, source, templates")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also each task's file, templates and data files outside its folder",
    )

    p = command("render", cmd_render, "print rendered examples of a task")
    p.add_argument("task")
    p.add_argument(
        "-n",
        type=positive_int,
        default=3,
        help="how many examples (default 3): the rows `t2t eval --max-examples N` takes",
    )
    p.add_argument("--template", help="render with this template (default: the seeded choice per row)")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per example")

    p = command("lint", cmd_lint, "check task files: fields, golden rows, choices, real rows")
    p.add_argument("tasks", nargs="*", help="tasks to check (default: all)")
    p.add_argument("--all-rows", action="store_true",
                   help="render every real row under every template, not a sample of 16 per split: "
                        "what a long training run will meet")  # fmt: skip

    command("mixtures", cmd_mixtures, "list the mixtures")
    mixture = sub.add_parser("mixture", help="inspect a mixture", description="inspect a mixture")
    mixture_sub = mixture.add_subparsers(dest="mixture_command", required=True, metavar="COMMAND")
    p = mixture_sub.add_parser("show", help="the dry-run report: how often each task is drawn")
    p.set_defaults(fn=cmd_mixture_show)
    p.add_argument("mixture")
    p.add_argument(
        "--steps", type=positive_int, default=1000, help="training steps to plan for (default 1000)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="examples per step, all processes (default 32)"
    )
    p.add_argument(
        "--skip-sample", type=non_negative_int, default=200, metavar="N",
        help="count, per template, the rows it skips among N sampled rows of each task that is readable "
             "offline (default 200; 0: don't)",
    )  # fmt: skip
    p.add_argument("--model", help="a model (hub name or dir, with its tokenizer): say which batching "
                                   "`strategy: auto` picks for it on this mixture, and why")  # fmt: skip
    p.add_argument("--max-input-tokens", type=positive_int, default=None, help="with --model (default 256)")
    p.add_argument("--max-target-tokens", type=positive_int, default=None, help="with --model (default 128)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="with --model: token slots per micro-batch (batching.max_tokens, default 2048)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p = mixture_sub.add_parser("sample", help="the exact examples at stream positions K..K+N-1")
    p.set_defaults(fn=cmd_mixture_sample)
    p.add_argument("mixture")
    p.add_argument("--start", type=non_negative_int, default=0, metavar="K")
    p.add_argument("--count", type=positive_int, default=10, metavar="N")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    tokenizer = sub.add_parser("tokenizer", help="train a tokenizer", description="train a tokenizer")
    tokenizer_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    p = tokenizer_sub.add_parser(
        "train", help="train a SentencePiece tokenizer (T5 layout) on a mixture's text"
    )
    p.set_defaults(fn=cmd_tokenizer_train)
    p.add_argument("mixture")
    p.add_argument(
        "--vocab-size", type=positive_int, required=True, help="at most this many pieces (before sentinels)"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write (replaced if it exists)")
    p.add_argument(
        "--rows-per-task", type=positive_int, default=2000, help="rows of each task rendered for training"
    )

    p = command("train", cmd_train, "train a model on a mixture (plain, or under `accelerate launch`)")
    p.add_argument("config", type=Path, help="training config YAML")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optimizer.lr=3e-4"
    )
    p.add_argument(
        "--resume", metavar="auto|CHECKPOINT", help="continue from the latest (auto) or a given checkpoint"
    )

    p = command("eval", cmd_eval, "evaluate a seq2seq checkpoint on tasks, every template, with reports")
    p.add_argument(
        "--model", type=Path, required=True, help="an HF seq2seq dir (a t2t run's model/, a flan-t5 dir)"
    )
    add_task_selection(p)
    p.add_argument(
        "--max-examples",
        type=positive_int,
        help="per task: the rows `t2t render -n N` shows (a sample seeded by task and split)",
    )
    p.add_argument("--template", metavar="NAME", help="only this template (every task named must have it)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--num-beams", type=positive_int, default=1)
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="generation budget per answer (default: the template's longest reference plus 8, at most 512)",
    )
    p.add_argument(
        "--scoring",
        choices=["t2t", "t0", "harness"],
        default="t2t",
        help="rank-classification EOS convention: t2t (as trained: input and choice with EOS), "
        "t0 (input without EOS), harness (choice without EOS)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one, in bf16), cpu, cuda, cuda:N"
    )
    p.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="truncate inputs as in training (default: the model's t2t_encoding.json, else none)",
    )
    p.add_argument(
        "--max-target-tokens",
        type=positive_int,
        help="truncate scored choices as in training (default: as --max-input-tokens)",
    )
    p.add_argument("--no-generate", action="store_true", help="rank classification only (tasks with choices)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json / .md, predictions, plot")

    p = command(
        "affinity", cmd_affinity, "which tasks help each other: a task x task map from a run's gradients"
    )
    p.add_argument(
        "run_dir",
        type=Path,
        help="a run trained with a gradient method (balancing.method=pcgrad ...), or any run "
        "with --lookahead",
    )
    p.add_argument(
        "--out", type=Path, help="folder for affinity.json and the maps' PNGs (default RUN_DIR/affinity)"
    )
    p.add_argument(
        "--threshold",
        type=finite_float,
        default=0.0,
        help="merge groups while their mean affinity is above it",
    )
    p.add_argument("--lookahead", action="store_true",
                   help="also TAG's lookahead affinity on the run's checkpoints (one backward per task, one forward "
                        "per pair and checkpoint: for small mixtures)")  # fmt: skip
    p.add_argument(
        "--lookahead-batch", type=positive_int, default=32, metavar="N", help="training rows per task"
    )
    p.add_argument(
        "--lookahead-lr", type=positive_float, metavar="LR", help="the lookahead step (default: the run's lr)"
    )

    p = command(
        "predict", cmd_predict, "answer a file of raw rows with one task's template (offline batches)"
    )
    p.add_argument("--model", type=Path, required=True, help="an HF seq2seq dir (a t2t run's model/)")
    p.add_argument("--task", required=True)
    p.add_argument("--template", help="default: the task's serve_template, else its first template")
    p.add_argument(
        "--input", type=Path, required=True, help="rows.jsonl, .csv or .parquet; - for jsonl on stdin"
    )
    p.add_argument("--out", type=Path, required=True, help="preds.jsonl: one line per input row, in order")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--chunk-rows", type=positive_int, default=8192,
                   help="rows read, answered and written at a time: memory holds one chunk, never the whole file "
                        "(rows are length-sorted within it)")  # fmt: skip
    p.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one, in bf16), cpu, cuda, cuda:N"
    )
    p.add_argument("--scores", action="store_true", help="also every answer choice's log-likelihood")
    p.add_argument("--with-input", action="store_true", help="also the rendered input")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="answer the good rows and write why each bad one is refused (default: refuse the file)")  # fmt: skip
    p.add_argument("--max-field-chars", type=positive_int, default=20_000, help="characters per field value")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command(
        "serve", cmd_serve, "an HTTP JSON API over a model: tasks routed, requests batched, health, metrics"
    )
    p.add_argument("--model", type=Path, required=True, help="an HF seq2seq dir (a t2t run's model/)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mixture", help="serve the mixture's training and held-out tasks")
    which.add_argument("--tasks", nargs="+", metavar="TASK")
    p.set_defaults(held_out=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one, in bf16), cpu, cuda, cuda:N"
    )
    p.add_argument("--no-batching", action="store_true", help="one model call per request")
    p.add_argument("--batch-rows", type=positive_int, default=64, help="rows per model call (default 64)")
    p.add_argument("--batch-tokens", type=positive_int, default=16_384, help="input tokens per model call")
    p.add_argument(
        "--wait-ms",
        type=non_negative_float,
        default=5.0,
        help="how long a batch waits for more requests (ms)",
    )
    p.add_argument("--max-rows", type=positive_int, default=256, help="rows per request (over: 413)")
    p.add_argument("--max-concurrent", type=positive_int, default=64,
                   help="predict requests in progress at once (read, queued or answered); one more gets 503 with "
                        "Retry-After, so a flood holds at most this many bodies in memory")  # fmt: skip
    p.add_argument(
        "--max-choices", type=positive_int, default=4096,
        help="answer choices of a request's rows together (over: 413)",
    )  # fmt: skip
    p.add_argument(
        "--max-field-chars", type=positive_int, default=20_000, help="characters per field (over: 422)"
    )
    p.add_argument(
        "--max-body-bytes", type=positive_int, default=4_000_000, help="request body bytes (over: 413)"
    )
    p.add_argument(
        "--max-body-seconds", type=positive_float, default=30.0,
        help="seconds for a request's body to arrive whole (over: 408; default 30)",
    )  # fmt: skip

    imports = sub.add_parser("import", help="import tasks from other tools", description="import tasks")
    imports_sub = imports.add_subparsers(dest="import_command", required=True, metavar="COMMAND")
    p = imports_sub.add_parser("promptsource", help="promptsource's templates as t2t task files, as they are")
    p.set_defaults(fn=cmd_import_promptsource)
    p.add_argument("path", type=Path, help="an unpacked promptsource sdist or a git clone")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for the task files (use it with --templates-dir)"
    )
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="only these (dataset or dataset/subset)")

    export = sub.add_parser(
        "export",
        help="export tasks to other tools, or a single-task model",
        description="export tasks to other tools (lm-eval), or one adapter merged into a plain HF model",
    )
    export_sub = export.add_subparsers(dest="export_command", required=True, metavar="COMMAND")
    p = export_sub.add_parser("lm-eval", help="lm-evaluation-harness tasks rendered by t2t's templates")
    p.set_defaults(fn=cmd_export_lm_eval)
    add_task_selection(p)
    p.add_argument(
        "--max-examples", type=positive_int, help="per task: the rows `t2t eval --max-examples N` takes"
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="the model's tokenizer: sizes generation budgets as t2t eval does (default 128 tokens)",
    )
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")

    p = export_sub.add_parser(
        "merged", help="one adapter of a model trained with adapters, merged into a plain HF dir"
    )
    p.set_defaults(fn=cmd_export_merged)
    p.add_argument(
        "--model", type=Path, required=True, help="an exported model dir with adapters/ (RUN_DIR/model)"
    )
    p.add_argument("--adapter", required=True, metavar="NAME", help="an adapter, or a task (its adapter)")
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")

    p = command("demo", cmd_demo, "train and evaluate a tiny T5 on the demo mixture, offline, in minutes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run dir (default runs/demo)")
    p.add_argument("--steps", type=positive_int, default=4000, help="training steps (default 4000)")
    p.add_argument(
        "--max-examples", type=positive_int, default=200, help="evaluation examples per task (default 200)"
    )

    p = command("compare", cmd_compare, "a mixture model against single-task baselines (negative transfer)")
    p.add_argument("mixture")
    p.add_argument(
        "--steps", type=positive_int, default=2000, help="mixture training steps (the budget; default 2000)"
    )
    p.add_argument("--max-examples", type=positive_int, default=100, help="evaluation examples per task")
    p.add_argument(
        "--margin", type=non_negative_float, default=0.0,
        help="negative transfer: the delta's whole 95%% interval below -MARGIN points (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=positive_int, default=1, help="mixture and single-task runs per seed (default 1)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"))

    p = command("new-task", cmd_new_task, "write a starter task file for a local jsonl/csv/parquet file")
    p.add_argument("name")
    p.add_argument("--from", dest="data_file", type=Path, required=True, metavar="FILE")
    p.add_argument(
        "--out",
        type=Path,
        help="folder to write NAME.yaml in (default: the last --templates-dir, else ./templates)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing task file")
    return parser


# file-system errors that name a path the user gave or can fix (not a bug): one line, the path and the reason
PATH_ERRORS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                         errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTEMPTY})  # fmt: skip


def _unexpected(exc: BaseException) -> int:
    """Anything unforeseen: one line on the terminal, the traceback in a log file."""
    from t2t.errors import first_line

    log = write_traceback(exc)
    print(
        f"t2t: error: unexpected {type(exc).__name__}: {first_line(exc)} (traceback in {log})",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    from t2t.sources import STRICT_PATHS_ENV

    previous = os.environ.get(STRICT_PATHS_ENV)
    if args.strict_paths:
        os.environ[STRICT_PATHS_ENV] = "1"  # read where data files load (and by child processes)
    # SIGTERM as Ctrl-C (t2t.errors.Terminated), in the main thread, where Python runs signal handlers; not for
    # `t2t serve`, which ends by the signal as process managers expect of a server (uvicorn drains the requests in
    # flight, then raises it again; an exit of 143 counts as a failure to systemd)
    handles_sigterm = threading.current_thread() is threading.main_thread() and args.fn is not cmd_serve
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if handles_sigterm else None
    try:
        out = getattr(args, "out", None)
        if isinstance(out, Path):  # refused before the command's work, not when its results are written
            from t2t.fileio import check_out_path

            problem = check_out_path(out, folder=args.fn is not cmd_predict)
            if problem is not None:
                raise T2TError(problem)
        if args.fn in COMPUTING:
            problem = configure_threads()
            if problem is not None:
                raise T2TError(problem)
        return args.fn(args)
    except T2TError as exc:
        print(f"t2t: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        where = f" {exc}" if str(exc) else ""  # t2t.train.Interrupted says where the run stands
        if isinstance(exc, Terminated) or getattr(exc, "terminated", False):
            print(f"t2t: terminated (SIGTERM){where}", file=sys.stderr)
            return 143
        print(f"t2t: interrupted{where}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.filename is None or exc.errno not in PATH_ERRORS:
            return _unexpected(exc)
        # a path the command was given that cannot be used (an --out under a file, a full disk): as `cp` says it
        is_file = exc.errno == errno.EEXIST and Path(exc.filename).is_file()  # mkdir(parents=True) met a file
        why = "a file, where a folder is needed" if is_file else exc.strerror
        print(f"t2t: error: {exc.filename}: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # anything unforeseen: one line on the terminal, the traceback in a log file
        return _unexpected(exc)
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if args.strict_paths:  # main() may run in-process (tests, notebooks): leave the environment as it was
            if previous is None:
                os.environ.pop(STRICT_PATHS_ENV, None)
            else:
                os.environ[STRICT_PATHS_ENV] = previous


# commands that run a model: their torch threads are chosen before torch loads (configure_threads)
COMPUTING = {
    cmd_train,
    cmd_eval,
    cmd_predict,
    cmd_serve,
    cmd_demo,
    cmd_compare,
    cmd_affinity,
    cmd_export_merged,
}


def write_traceback(exc: BaseException) -> Path:
    """Write the exception's traceback to $T2T_LOG_DIR (default ~/.cache/t2t/logs); return the file's path."""
    import datetime
    import traceback

    folder = Path(os.environ.get("T2T_LOG_DIR", Path.home() / ".cache" / "t2t" / "logs"))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"error-{stamp}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"t2t {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)))
    except OSError:
        path = Path(os.devnull)
    return path


THREADS_ENV = "T2T_NUM_THREADS"


def busy_cpus(seconds: float = 0.2) -> float:
    """How many CPUs other processes keep busy right now (from /proc/stat over `seconds`; 0 where unreadable)."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def configure_threads(environ: dict | None = None, torch_loaded: bool | None = None,
                      busy: float | None = None) -> str | None:  # fmt: skip
    """Torch's thread count for a process about to import it, through OMP_NUM_THREADS (read when OpenMP starts):
    `T2T_NUM_THREADS`, else the CPUs this process may run on (`os.sched_getaffinity`) less those other processes
    keep busy at start (at least 1). OpenMP threads that share a core with another busy process wait for each
    other and the loop slows many times over (bench/threads.py); one thread per free core does not. A user's
    OMP_NUM_THREADS (or a launcher's: torchrun sets 1 per process) stays. Returns a problem, or None. Too late
    once torch is imported (t2t used as a library): then nothing changes."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules if torch_loaded is None else torch_loaded:
        return None
    wanted = environ.get(THREADS_ENV)
    if wanted is not None:
        if not wanted.strip().isdigit() or int(wanted) <= 0:
            return f"{THREADS_ENV} must be a positive integer, not {wanted!r}"
        environ["OMP_NUM_THREADS"] = str(int(wanted))
        return None
    if "OMP_NUM_THREADS" in environ:
        return None
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cpus() if busy is None else busy
    environ["OMP_NUM_THREADS"] = str(max(1, allowed - round(busy)))
    return None


def run() -> None:
    """The `t2t` command (and `python -m t2t`). A process of a multi-process run ends with `os._exit` once its
    output is flushed: the interpreter's teardown of gloo's and DeepSpeed's communication threads (or an explicit
    `destroy_process_group`, which accelerate's `end_training` does: Run.fit ends the trackers itself) now and then
    aborts one rank of a finished ZeRO-3 run with "terminate called without an active exception", and the launcher
    then reports the whole run as failed. Every rank has passed the
    run's last barrier (Run.close) and every file is written and closed by then."""
    code = main()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
