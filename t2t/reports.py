"""Tables for people: the mixture dry run (and, later, evaluation reports)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def print_mixture_report(result: dict, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 132)
    rate = result["rate"]
    rule = rate["rule"] + (f", scale {rate['scale']:g}" if rate["scale"] != 1 else "")
    rule += f", cap K={rate['cap']:g}" if rate["cap"] is not None else ""
    rule += f", temperature T={rate['temperature']:g}" if rate["temperature"] != 1 else ""
    title = (f"mixture {result['mixture']}: {result['training_tasks']} training tasks, "
             f"{result['held_out_tasks']} held out; rate {rule}; "
             f"{result['steps']} steps x {result['batch_size']} = {result['examples_drawn']:,} examples")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for column, justify in (("task", "left"), ("cluster", "left"), ("weight", "right"), ("prob", "right"),
                            ("examples", "right"), ("drawn", "right"), ("epochs", "right"), ("via", "left"), ("note", "left")):  # fmt: skip
        table.add_column(column, justify=justify)
    for row in result["tasks"]:
        if row["held_out"]:
            table.add_row(
                row["task"], row["cluster"], "-", "-", f"{row['examples']:,}", "-", "-", "", "held out (eval)"
            )
            continue
        note = "capped" if row["capped"] else ""
        via = row["via"] if row["via"] != row["task"] else ""
        weight = f"{row['weight']:g}" if row["weight"] is not None else "rule"
        table.add_row(row["task"], row["cluster"], weight, f"{row['probability']:.4f}", f"{row['examples']:,}",
                      f"{row['expected_drawn']:,.0f}", f"{row['expected_epochs']:.2f}", via, note)  # fmt: skip
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        "1.0000",
        f"{result['training_examples']:,}",
        f"{result['examples_drawn']:,}",
        "",
        "",
        "",
    )
    console.print(table)
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", style="yellow")
