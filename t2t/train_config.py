"""The training configuration: one typed YAML file, dotted `key=value` overrides, unknown keys refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from t2t.config import SafeLoader, Spec, load_yaml, refuse_aliases, validation_error
from t2t.errors import T2TError, Where
from t2t.gradients import GRADIENT_METHODS

Positive = Annotated[int, Field(gt=0)]


def exactly_one(spec: Any, section: str, first: str, second: str) -> Any:
    if (getattr(spec, first) is None) == (getattr(spec, second) is None):
        raise ValueError(f"give exactly one of {section}.{first} and {section}.{second}")
    return spec


Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]


class TinyModelSpec(Spec):
    d_model: Positive = 128
    num_layers: Positive = 2
    num_heads: Positive = 4
    d_ff: Positive = 256
    dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _heads_fit(self) -> TinyModelSpec:
        if self.num_heads > self.d_model:  # each head has d_model // num_heads dimensions
            raise ValueError(f"num_heads ({self.num_heads}) must be at most d_model ({self.d_model}): each head "
                             "attends in d_model // num_heads dimensions")  # fmt: skip
        return self


class ModelSpec(Spec):
    """Either a pretrained checkpoint (hub name or local dir) or a tiny T5 built from a config."""

    pretrained: str | None = None
    tiny: TinyModelSpec | None = None

    _one_of = model_validator(mode="after")(lambda self: exactly_one(self, "model", "pretrained", "tiny"))


class TokenizerSpec(Spec):
    """A pretrained tokenizer (hub name or dir), or one trained on the mixture (saved in the run dir)."""

    pretrained: str | None = None
    vocab_size: Annotated[int, Field(ge=8)] | None = None  # train one with at most this many pieces
    rows_per_task: Positive = 2000

    _one_of = model_validator(mode="after")(
        lambda self: exactly_one(self, "tokenizer", "pretrained", "vocab_size")
    )


class BatchingSpec(Spec):
    # auto: packed rows for models that can pack (T5 family), sized to max_tokens, or padded batches keeping each
    # batch's task mix where those hold more real tokens and for other models (t2t.data.resolve_batching says which
    # and why, at the run's start)
    strategy: Literal["auto", "padded", "packed"] = "auto"
    batch_size: Positive | None = None  # padded: examples per micro-batch ...
    max_tokens: Positive | None = 2048  # ... or padded token slots per micro-batch (auto: the budget of both)
    # padded: batches keep the window's task mix (bucketed within each task's share) instead of grouping the
    # window's examples by length alone, which often leaves one task per batch (auto's padded batches: true unless
    # the config sets it)
    keep_mix: bool = False
    # packed (and auto's packed rows): max_tokens cut into rows as t2t.data.packed_rows does; each of these set here
    # is kept. With max_tokens: null, rows_per_batch rows of pack_input_tokens (these defaults)
    rows_per_batch: Positive = 4
    pack_input_tokens: Positive = 512
    pack_target_tokens: Positive | None = None  # None: sized from the data
    window_examples: Positive = 2048

    @model_validator(mode="after")
    def _budget(self) -> BatchingSpec:
        if self.strategy != "packed" and (self.batch_size is None) == (self.max_tokens is None):
            raise ValueError(
                f"{self.strategy} batching takes exactly one of batch_size and max_tokens (set the other to null)"
            )
        if self.keep_mix and self.strategy == "packed":
            raise ValueError("batching.keep_mix is for padded batches (packed rows mix the tasks already)")
        return self


class OptimizerSpec(Spec):
    name: Literal["adamw", "adafactor"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8


class ScheduleSpec(Spec):
    name: Literal["constant", "linear", "cosine", "inverse_sqrt"] = "linear"
    warmup_steps: Annotated[int, Field(ge=0)] = 0


class BalancingSpec(Spec):
    method: Literal[
        "equal", "uncertainty", "dwa", "pcgrad", "cagrad", "mgda", "gradnorm", "rlw", "gls", "famo"
    ] = "equal"
    dwa_temperature: Annotated[float, Field(gt=0)] = 2.0
    dwa_window_steps: Positive = (
        20  # DWA compares mean task losses of the last two windows of this many steps
    )
    # pcgrad / cagrad / mgda / gradnorm: the parameters whose per-task gradients are compared (globs over the
    # model's parameter names); default: the last decoder block and the decoder's final layer norm
    gradient_params: list[str] | None = None
    # ... or every trainable parameter, the tied embeddings included: the method's own update, exactly (one
    # process, no accumulation; memory: one full gradient per task)
    exact: bool = False
    cagrad_c: Annotated[float, Field(ge=0)] = 0.5
    gradnorm_alpha: Annotated[float, Field(ge=0)] = 1.5
    gradnorm_lr: Annotated[float, Field(gt=0)] = 0.025

    @model_validator(mode="after")
    def _exact(self) -> BalancingSpec:
        if self.exact and self.method not in GRADIENT_METHODS:
            raise ValueError(f"balancing.exact applies to the gradient methods ({', '.join(GRADIENT_METHODS)}), "
                             f"not to {self.method}")  # fmt: skip
        if self.exact and self.gradient_params is not None:
            raise ValueError(
                "give balancing.exact or balancing.gradient_params, not both: exact takes every parameter"
            )
        return self


class SharingSpec(Spec):
    """hard: one model for every task. adapters: LoRA adapters per task or per cluster on the shared backbone
    (t2t.adapters), trained with it or on a frozen one, optionally pulled toward their mean."""

    mode: Literal["hard", "adapters"] = "hard"
    per: Literal["task", "cluster"] = "task"
    r: Positive = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # linear layers, by name or name suffix; None: the model's attention query and value projections
    # (T5: q, v; BART and the like: q_proj, v_proj), as peft's defaults
    targets: list[str] | None = Field(default=None, min_length=1)
    train_backbone: bool = True
    pull: Annotated[float, Field(ge=0)] = 0.0  # weight of sum_k ||dW_k - mean dW||^2 in the loss


class SelectionSpec(Spec):
    """Checkpoint selection (t2t.selection): no task may fall below a fixed reference by more than
    max(margin, its bootstrap noise)."""

    margin: Annotated[float, Field(ge=0)] = 1.0  # the smallest tolerance, in points
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )  # task -> weight (default 1)
    reference: Path | None = None  # a `t2t eval` results.json; None: the run's first evaluation


def packed_rows_problem(batching: BatchingSpec, max_input_tokens: int, max_target_tokens: int) -> str | None:
    """Why packed rows could not hold the longest example the token limits allow, or None. Under `auto`, which
    may pack, the sides the config gives (the others auto sizes from the limits)."""
    if batching.strategy == "padded":
        return None
    for side, row, limit in (("input", batching.pack_input_tokens, max_input_tokens),
                             ("target", batching.pack_target_tokens, max_target_tokens)):  # fmt: skip
        if batching.strategy == "auto" and f"pack_{side}_tokens" not in batching.model_fields_set:
            continue
        if row is not None and row < limit:
            return (f"batching.pack_{side}_tokens={row} is shorter than max_{side}_tokens={limit}: an example "
                    "that long would fit no packed row")  # fmt: skip
    return None


class TrainConfig(Spec):
    run_dir: Path
    mixture: str
    model: ModelSpec
    tokenizer: TokenizerSpec
    max_input_tokens: Positive = 256
    max_target_tokens: Positive = 64
    batching: BatchingSpec = BatchingSpec()
    gradient_accumulation_steps: Positive = 1
    steps: Positive
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch's generators take 64-bit seeds (a larger one was an unexpected ValueError); adapters seed with seed + 1
    seed: Annotated[int, Field(ge=0, lt=2**63 - 1)] = 0
    log_every_steps: Positive = 10
    save_every_steps: Positive | None = None  # None: only at the end
    keep_checkpoints: Positive = 2
    balancing: BalancingSpec = BalancingSpec()
    sharing: SharingSpec = SharingSpec()
    eval_every_steps: Positive | None = None  # validation loss and rank classification of the training tasks
    eval_generate_every: Positive = (
        2  # ... and generation (and checkpoint selection) every this many evaluations
    )
    eval_max_examples: Positive = 50  # per task
    selection: SelectionSpec = SelectionSpec()
    trackers: list[Tracker] = Field(default_factory=lambda: ["tensorboard"])  # accelerate trackers
    cache_dir: Path | None = None  # encoded-data cache; default $T2T_CACHE or ~/.cache/t2t
    # a training row that fails to render when the stream first draws it (a render limit, an empty target): stop
    # the run there with its one line, or skip it (a warning each, up to 20; the stream passes its positions over)
    bad_rows: Literal["stop", "skip"] = "stop"

    @model_validator(mode="after")
    def _packed_rows_hold_the_longest_example(self) -> TrainConfig:
        problem = packed_rows_problem(self.batching, self.max_input_tokens, self.max_target_tokens)
        if problem is not None:
            raise ValueError(problem)
        return self


# Keys a resumed run may change: they alter neither the data stream nor the model.
RESUMABLE_KEYS = frozenset({"steps", "log_every_steps", "save_every_steps", "keep_checkpoints", "eval_every_steps",
                            "eval_generate_every", "eval_max_examples", "selection", "trackers", "cache_dir",
                            "run_dir", "bad_rows"})  # fmt: skip
# (bad_rows: a run under stop passed no row over, so resuming it under skip replays the same stream up to there)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` sets data['a']['b'] to the YAML value of `value`."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise T2TError(f"override {override!r} is not of the form key=value (e.g. optimizer.lr=3e-4)")
        try:
            refuse_aliases(raw, Where())
            value = yaml.load(raw, Loader=SafeLoader)  # a flow mapping may not repeat a key either
        except T2TError as exc:
            raise T2TError(f"override {override!r}: {exc.message}") from None
        except yaml.constructor.ConstructorError as exc:
            raise T2TError(f"override {override!r}: {exc.problem}") from None
        except yaml.YAMLError:
            raise T2TError(f"override {override!r}: the value is not valid YAML") from None
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise T2TError(f"override {override!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return data


def load_train_config(path: Path, overrides: list[str] = ()) -> TrainConfig:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise T2TError("a training config must be a YAML mapping", Where(file=path))
    data = apply_overrides(data, list(overrides))
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        error = validation_error(exc, path)
        loc = ".".join(str(p) for p in exc.errors()[0]["loc"])
        # the bad value came from the command line, not from the file: the override with the last word on the key
        for override in reversed(overrides):
            key = override.partition("=")[0]
            if loc and (loc == key or loc.startswith(key + ".") or key.startswith(loc + ".")):
                raise T2TError(f"override {override!r}: {error.message}") from None
        raise error from None
    if not config.run_dir.is_absolute():  # relative run dirs are relative to where t2t runs
        config = config.model_copy(update={"run_dir": Path.cwd() / config.run_dir})
    check_own_run_dir(Path(path), config.run_dir, overrides)
    return config


def check_own_run_dir(path: Path, run_dir: Path, overrides: Sequence[str]) -> None:
    """A run dir's own config.yaml whose run_dir names another folder (the run dir was moved or copied, or the
    file's relative run_dir is read from another working dir) would train there, not in the folder it came from:
    refused unless an override sets run_dir."""
    folder = path.parent
    is_run_config = path.name == "config.yaml" and ((folder / "checkpoints").is_dir()
                                                    or (folder / "metrics.jsonl").is_file())  # fmt: skip
    if not is_run_config or any(o.partition("=")[0] == "run_dir" for o in overrides):
        return
    if folder.resolve() != run_dir.resolve():
        raise T2TError(f"this is the config of the run in {folder.resolve()}, but its run_dir is {run_dir} (the run "
                       f"dir was moved or copied, or its relative run_dir read from another working dir): pass "
                       f"run_dir={folder.resolve()} to continue that run, or run_dir=OTHER for a new one",
                       Where(file=path))  # fmt: skip


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")
