"""Tables for people: the mixture dry run (and, later, evaluation reports)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _prompting_note(prompting: dict | None) -> str:
    if not prompting:
        return ""
    notes = []
    if prompting["few_shot"]:
        share = prompting["few_shot_share"]
        notes.append(f"{prompting['few_shot']}-shot" + (f" {share:.0%}" if share < 1 else ""))
    if prompting["options"]:
        notes.append("options" + (f" {prompting['options']:.0%}" if prompting["options"] < 1 else ""))
    return ", ".join(notes)


def _templates_cell(row: dict) -> str:
    cell = str(len(row["templates"]))
    if row["skipped"]:
        pairs = row["sampled_rows"] * len(row["templates"])
        skipped = sum(row["skipped"].values())
        cell += f" ({skipped / pairs:.0%} skip)" if skipped and pairs else ""
    return cell


def _count(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def print_mixture_report(result: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    rate = result["rate"]
    rule = rate["rule"] + (f", scale {rate['scale']:g}" if rate["scale"] != 1 else "")
    rule += f", cap K={rate['cap']:g}" if rate["cap"] is not None else ""
    rule += f", temperature T={rate['temperature']:g}" if rate["temperature"] != 1 else ""
    title = (f"mixture {result['mixture']}: {result['training_tasks']} training tasks, "
             f"{result['held_out_tasks']} held out; rate {rule}; "
             f"{result['steps']} steps x {result['batch_size']} = {result['examples_drawn']:,} examples")  # fmt: skip
    if result["templates"]:
        title += "; templates with " + ", ".join(f"{k} = {v}" for k, v in result["templates"].items())
    table = Table(title=title, title_justify="left")
    for column, justify in (("task", "left"), ("cluster", "left"), ("weight", "right"), ("prob", "right"),
                            ("examples", "right"), ("drawn", "right"), ("epochs", "right"), ("templates", "right"),
                            ("via", "left"), ("note", "left")):  # fmt: skip
        table.add_column(column, justify=justify)
    for row in result["tasks"]:
        if row["held_out"]:
            table.add_row(row["task"], row["cluster"], "-", "-", _count(row["examples"], ","), "-", "-",
                          _templates_cell(row), "", "held out (eval)")  # fmt: skip
            continue
        note = ", ".join(
            n for n in ("capped" if row["capped"] else "", _prompting_note(row["prompting"])) if n
        )
        via = row["via"] if row["via"] != row["task"] else ""
        weight = f"{row['weight']:g}" if row["weight"] is not None else "rule"
        table.add_row(row["task"], row["cluster"], weight, _count(row["probability"], ".4f"),
                      _count(row["examples"], ","), _count(row["expected_drawn"], ",.0f"),
                      _count(row["expected_epochs"], ".2f"), _templates_cell(row), via, note)  # fmt: skip
    table.add_section()
    known = result["training_examples"] is not None
    table.add_row("total", "", "", "1.0000" if known else "?", _count(result["training_examples"], ","),
                  f"{result['examples_drawn']:,}", "", "", "", "")  # fmt: skip
    console.print(table)
    if result["needs_hub"]:
        console.print(f"the row counts of {len(result['needs_hub'])} tasks need the hub (not reachable here, or "
                      "HF_DATASETS_OFFLINE is set); the rates, draws and epochs that rest on them show as ?")  # fmt: skip
    batching = result.get("batching")
    if batching is not None:
        model = f" for {batching['model']}" if batching["model"] else ""
        console.print(f"batching (strategy: auto){model}: {batching['why']}")
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", style="yellow")


# ------------------------------------------------------------------------------------------ evaluation


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _interval(summary: dict) -> str:
    return f"{_fmt(summary['ci_low'])}-{_fmt(summary['ci_high'])}" if "ci_low" in summary else ""


def _chance(summary: dict) -> str:
    """`50.0, above` where a rank-classification score's interval lies wholly above chance, `at`, or `below`."""
    return f"{_fmt(summary['chance'])}, {summary['vs_chance']}" if "chance" in summary else ""


def evaluation_markdown(report: dict) -> str:
    """Per-task tables (seen, then held out): median and IQR over templates, mean, every template's score."""
    lines = [f"# Evaluation: {report.get('model', '')}", "",
             f"Split `{report['split']}`, rank-classification scoring `{report['scoring']}`. Scores are in "
             "[0, 100]; a task with answer choices is reported by rank-classification accuracy (`rank_sum`), "
             "others by their first metric. Median and inter-quartile range are over the task's templates; the 95% "
             "CI is the percentile bootstrap over examples of that median. Chance is what a model blind to the input "
             "scores: the better of guessing (1 / number of choices) and always giving the majority answer; `above` "
             "or `below` only where the interval excludes it.", ""]  # fmt: skip
    for group, title in ((False, "Seen tasks"), (True, "Held-out tasks (zero-shot)")):
        tasks = {n: t for n, t in report["tasks"].items() if t["held_out"] == group}
        if not tasks:
            continue
        lines += [f"## {title}", "", "| task | cluster | metric | median | 95% CI | chance | IQR (q1-q3) | mean | "
                  "per template |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, info in tasks.items():
            s, metric = info["summary"], info["metric"]
            per = ", ".join(f"{t} {_fmt(v[metric])}" for t, v in info["templates"].items())
            lines.append(f"| {name} | {info['cluster']} | {metric} | {_fmt(s['median'])} | {_interval(s)} | "
                         f"{_chance(s)} | {_fmt(s['iqr'])} ({_fmt(s['q1'])}-{_fmt(s['q3'])}) | {_fmt(s['mean'])} | "
                         f"{per} |")  # fmt: skip
        lines.append("")
    lines += ["## Groups", "", "| group | tasks | mean of task medians |", "|---|---|---|"]
    for name, info in {
        **report["groups"],
        **{f"cluster {k}": v for k, v in report["clusters"].items()},
    }.items():
        lines.append(f"| {name} | {info['tasks']} | {_fmt(info['mean_of_medians'])} |")
    if report.get("warnings"):
        lines += ["", "## Warnings", "", *(f"- {line}" for line in report["warnings"])]
    return "\n".join(lines) + "\n"


def plot_evaluation(report: dict, out_path: Path) -> Path:
    """Bars of each task's median score with its 95% bootstrap interval, the chance level of rank-classification
    tasks as a dashed line across the bar; held-out tasks hatched."""
    from t2t.plots import plt

    names = list(report["tasks"])
    infos = [report["tasks"][n] for n in names]
    medians = [i["summary"]["median"] for i in infos]
    errors = [[i["summary"]["median"] - i["summary"].get("ci_low", i["summary"]["median"]) for i in infos],
              [i["summary"].get("ci_high", i["summary"]["median"]) - i["summary"]["median"] for i in infos]]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names) + 2), 4.8))
    bars = ax.bar(range(len(names)), medians, yerr=errors, capsize=3,
                  color=["#c44e52" if i["held_out"] else "#4c72b0" for i in infos])  # fmt: skip
    for bar, info in zip(bars, infos, strict=True):
        if info["held_out"]:
            bar.set_hatch("//")
        if "chance" in info["summary"]:
            x, width = bar.get_x(), bar.get_width()
            ax.plot([x - 0.1 * width, x + 1.1 * width], [info["summary"]["chance"]] * 2, "k--", linewidth=1.2)
    ax.plot([], [], "k--", linewidth=1.2, label="chance (rank classification)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("median over templates (95% bootstrap interval)")
    ax.set_ylim(0, 100)
    ax.set_title("per-task scores: seen (blue) and held out (red, hatched)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def print_evaluation(report: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 132)
    table = Table(title=f"evaluation ({report['split']})", title_justify="left")
    for column in ("task", "cluster", "held out", "metric", "median", "95% CI", "chance", "IQR", "mean"):
        table.add_column(column, justify="right" if column in ("median", "95% CI", "IQR", "mean") else "left")
    for name, info in report["tasks"].items():
        s = info["summary"]
        table.add_row(name, info["cluster"], "yes" if info["held_out"] else "", info["metric"], _fmt(s["median"]),
                      _interval(s), _chance(s), _fmt(s["iqr"]), _fmt(s["mean"]))  # fmt: skip
    console.print(table)
    for group, info in report["groups"].items():
        console.print(
            f"{group}: mean of task medians {_fmt(info['mean_of_medians'])} over {info['tasks']} tasks"
        )


def save_evaluation(report: dict, records: list[dict], out_dir: Path) -> dict[str, Path]:
    """results.json, results.md, predictions.jsonl and scores.png in out_dir (each file written atomically)."""
    import json

    from t2t.fileio import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md",
             "predictions": out_dir / "predictions.jsonl", "plot": out_dir / "scores.png"}  # fmt: skip
    atomic_write_text(paths["json"], json.dumps(report, indent=2))
    atomic_write_text(paths["markdown"], evaluation_markdown(report))
    atomic_write_text(paths["predictions"], "".join(json.dumps(r) + "\n" for r in records))
    plot_evaluation(report, paths["plot"])
    return paths
