"""FLAN-style variants of a training example: exemplars before it (few-shot) and an options suffix.

For the example of task t at its running index j (t2t.sampler: the same on every rank and every resume), a
generator keyed by (mixture seed, t, j) decides:

- few-shot, with probability `few_shot_share` when `few_shot` = k > 0: k distinct rows of the training split,
  never the example's own row and never a row the template skips (a split of up to 4,096 rows is searched whole;
  a larger one by 64k + 64 seeded draws, so fewer than k is possible only where nearly every row is skipped),
  rendered with the example's template. They come
  first, oldest first, each as `input <answer_separator> target`, joined by the separator (the mixture's, else the
  task's `few_shot_separator`, else a blank line), then the example's own input. Training keeps as many exemplars
  as fit the input budget, dropping the oldest first; the example itself is never cut for them.
- options, with probability `options`: where the template has answer choices and does not already list them
  (`choices_in_prompt: false`), "OPTIONS:" and one "- choice" line per choice follow the input, after a blank
  line (exemplars get them too, so the format stays one).

The target is never changed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from t2t.mixtures import PromptingSpec
from t2t.rng import keyed_rng
from t2t.sampler import StreamItem
from t2t.sources import SplitRows
from t2t.templates import Rendered, Task

DEFAULT_SEPARATOR = "\n\n"
RENDER_CACHE = 50_000  # rendered (row, template) pairs kept per task
SCAN_ROWS = 4096  # splits up to this size are searched whole for exemplars


def options_suffix(choices: tuple[str, ...]) -> str:
    return "\n\nOPTIONS:\n" + "\n".join(f"- {c}" for c in choices)


@dataclass(frozen=True)
class Prompted:
    """An example's prompt in pieces: the exemplars (oldest first, formatted) and its own input."""

    exemplars: tuple[str, ...]
    inputs: str
    targets: str
    separator: str

    def text(self, keep: int | None = None) -> str:
        """The input with the newest `keep` exemplars (all by default)."""
        kept = self.exemplars if keep is None else self.exemplars[len(self.exemplars) - keep :]
        return self.separator.join([*kept, self.inputs])


class Prompter:
    """Renders the prompted examples of one task of a mixture."""

    def __init__(self, task: Task, rows: SplitRows, split: str, prompting: PromptingSpec, seed: int) -> None:
        self.task, self.rows, self.split, self.prompting, self.seed = task, rows, split, prompting, seed
        self.separator = prompting.separator
        if self.separator is None:
            self.separator = task.spec.few_shot_separator or DEFAULT_SEPARATOR
        self._rendered: OrderedDict[tuple[int, str], Rendered | None] = OrderedDict()

    @property
    def active(self) -> bool:
        return bool(self.prompting.few_shot and self.prompting.few_shot_share) or bool(self.prompting.options)

    def render(self, row: int, template: str) -> Rendered | None:
        key = (row, template)
        if key in self._rendered:
            self._rendered.move_to_end(key)
            return self._rendered[key]
        index = int(self.rows.source_rows[row])
        rendered = self._rendered[key] = self.task.try_render(
            self.rows.rows[row], template, self.split, index
        )
        if len(self._rendered) > RENDER_CACHE:
            self._rendered.popitem(last=False)
        return rendered

    def choices(self, item: StreamItem) -> tuple[bool, list[int]]:
        """(options suffix or not, the exemplar rows oldest first) for a stream item."""
        rng = keyed_rng("prompting", self.seed, self.task.name, item.occurrence)
        shot_draw, options_draw = rng.random(2)
        options = bool(options_draw < self.prompting.options) and self._takes_options(item.template)
        k = self.prompting.few_shot
        if not k or shot_draw >= self.prompting.few_shot_share:
            return options, []
        n_rows = len(self.rows)
        chosen: list[int] = []
        # a small split is scanned whole, in a seeded order; a large one by a bounded number of seeded draws
        candidates = rng.permutation(n_rows) if n_rows <= SCAN_ROWS else rng.integers(0, n_rows, 64 * k + 64)
        for row in candidates.tolist():
            if row != item.row and row not in chosen and self.render(row, item.template) is not None:
                chosen.append(row)
                if len(chosen) == k:
                    break
        return options, chosen

    def prompted(self, item: StreamItem, choices: tuple[bool, list[int]] | None = None) -> Prompted | None:
        """The item's prompt (with `choices`, its `self.choices(item)` already drawn), or None where its template
        skips the row."""
        example = self.render(item.row, item.template)
        if example is None:
            return None
        options, exemplar_rows = choices if choices is not None else self.choices(item)
        exemplars = []
        for row in exemplar_rows:
            shot = self.render(row, item.template)
            assert shot is not None  # chosen only among rendered rows
            exemplars.append(self._input(shot, item.template, options) + self.prompting.answer_separator
                             + shot.targets)  # fmt: skip
        return Prompted(tuple(exemplars), self._input(example, item.template, options), example.targets,
                        self.separator)  # fmt: skip

    def _takes_options(self, template: str) -> bool:
        """Whether the template has answer choices it does not already list (else the suffix never applies, and
        training keeps the cached input)."""
        compiled = self.task.templates[template]
        has_choices = compiled.choices is not None or compiled.choices_template is not None
        return has_choices and not compiled.spec.choices_in_prompt

    def _input(self, rendered: Rendered, template: str, options: bool) -> str:
        if options and rendered.choices is not None:  # `options` is only drawn for templates that take them
            return rendered.inputs + options_suffix(rendered.choices)
        return rendered.inputs


def fit_input(prompted: Prompted, tokenizer: Any, max_tokens: int) -> list[int]:
    """Token ids of the prompted input under t2t's EOS policy, with as many exemplars as fit in `max_tokens`
    (the oldest dropped first); with none left, the input alone, cut as any input is."""
    from t2t.encoding import encode_texts

    for keep in range(len(prompted.exemplars), 0, -1):
        ids = tokenizer(prompted.text(keep), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens - 1:
            return [*ids, tokenizer.eos_token_id]
    return encode_texts(tokenizer, [prompted.text(0)], max_tokens)[0][0]
