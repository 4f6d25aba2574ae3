"""`t2t train`: one T5-style model over the whole mixture, with accelerate (plain, DDP or DeepSpeed ZeRO).

The loss of an optimizer step is token-weighted over the whole accumulation window and all processes: each
micro-batch contributes its summed token losses divided by G, the label tokens of the window on every process,
so batch 8 x accumulation 1 and batch 2 x accumulation 4 make the same update. Resuming restores the model,
optimizer, scheduler, RNG, balancing state and each process's data position (no replay).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import DistributedType

from t2t.adapters import attach, default_targets, plan_routing, read_routing, router_of
from t2t.balancing import Balancer, ModelWithBalancing, gradient_parameters
from t2t.checkpoint import (
    Checkpointer,
    RunDirLock,
    checkpoint_path,
    load_run_state,
    mark_best,
    run_identity,
)
from t2t.data import BatchLoader, LoaderState, MixtureData, check_null_fields
from t2t.encoding import Limits, decoder_start_id, token_warnings, truncation_warnings
from t2t.errors import T2TError, Terminated, Where, load_pretrained
from t2t.evaluation import EvalConfig
from t2t.fileio import atomic_write_text, peft_base
from t2t.mixtures import Mixture, load_mixture
from t2t.modeling import build_tiny_t5, check_pairing, fuse_activations, load_model
from t2t.registry import Registry
from t2t.segment_attention import PACKABLE, unpackable_reason
from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer
from t2t.train_config import TrainConfig, config_dict
from t2t.train_eval import InTrainingEval, training_eval_config

FAULT_ENV = "T2T_FAULT_KILL_AT_STEP"  # testing hook: SIGKILL this process once that many steps are done
FAULT_RANK_ENV = "T2T_FAULT_RANK"  # ... only the process of this rank
FAULT_SIGNAL_ENV = "T2T_FAULT_SIGNAL"  # ... with this signal instead (INT: as Ctrl-C)


@dataclass
class TrainState:
    """What the run has done, kept apart from the config."""

    step: int = 0
    tokens_seen: int = 0  # real (non-pad) input + target tokens, all processes
    examples_seen: int = 0
    loader: list[dict] = field(default_factory=list)  # each process's data position
    balancer: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # in-training evaluation and selection
    planned_steps: int = 0  # config.steps when saved (a resumed run may train longer)


# --------------------------------------------------------------------------------------- factories


EXTRAS = {
    "wandb": "t2t[wandb]",
    "mlflow": "t2t[mlflow]",
}  # trackers with a t2t extra; others: pip install NAME


def check_trackers(trackers: list[str]) -> None:
    """Every tracker's package is installed (tensorboard always is), refused before the run starts."""
    import importlib.util

    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise T2TError(f"trackers: {name} is not installed; pip install '{EXTRAS.get(name, name)}' "
                           "or drop it from trackers")  # fmt: skip


def get_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    check_trackers(config.trackers)
    kwargs: dict[str, Any] = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # Without CUDA, accelerate picks no process-group backend for several processes (DeepSpeed or DDP): every
        # rank would think it is alone. gloo is the CPU backend (see docs/launching.md).
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
            kwargs["cpu"] = True  # plain data parallelism on CPUs: accelerate's MULTI_CPU (DDP over gloo)
    return Accelerator(
        mixed_precision=resolve_precision(config.precision), gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.trackers or None, project_dir=str(config.run_dir), step_scheduler_with_optimizer=False,
        **kwargs,
    )  # fmt: skip


def resolve_precision(precision: str) -> str:
    """fp32 on a CPU, bf16 on a GPU; fp16 is refused (T5 activations overflow in fp16)."""
    if precision == "fp16":
        raise T2TError("precision fp16 is refused for T5-family models: their activations overflow in fp16; "
                       "use bf16 (GPU) or fp32")  # fmt: skip
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def get_tokenizer(config: TrainConfig, registry: Registry, mixture: Mixture, accelerator: Any):
    if config.tokenizer.pretrained:
        return load_tokenizer(config.tokenizer.pretrained)
    out = config.run_dir / "tokenizer"
    if accelerator.is_main_process and not out.is_dir():
        texts = mixture_texts(
            registry, mixture.task_names, mixture.spec.splits.train, config.tokenizer.rows_per_task
        )
        train_tokenizer(texts, config.tokenizer.vocab_size, out)
    accelerator.wait_for_everyone()
    return load_tokenizer(out)


def get_model(config: TrainConfig, tokenizer: Any):
    if config.model.pretrained:
        model = load_model(config.model.pretrained)
        if read_routing(Path(config.model.pretrained)) is not None and os.environ.get("RANK", "0") == "0":
            print(f"warning: {config.model.pretrained} has adapters (adapters/routing.json); training starts from "
                  "its backbone alone (sharing.mode=adapters adds new ones; `t2t export merged` folds one in)")  # fmt: skip
    else:
        model = build_tiny_t5(config.model.tiny, tokenizer, seed=config.seed)
    fuse_activations(model)  # training only: evaluation and serving keep the checkpoint's own modules
    return model


def check_whole_model(model: str | Path | None, what: str = "model.pretrained") -> None:
    """A model to train must be a whole model: a PEFT adapter dir (which eval and predict take) holds a part."""
    base = peft_base(model) if model else None
    if base is not None:
        raise T2TError(f"{what} is a PEFT adapter over {base}, not a whole model: train from its base (and "
                       "`sharing.mode: adapters` for t2t's own adapters), or from the adapter merged into it (peft's "
                       "merge_and_unload, then save_pretrained)", Where(file=str(model)))  # fmt: skip


def check_packing(config: TrainConfig) -> None:
    """Packed rows put several examples in one sequence; a model with absolute positions would see the later
    ones at shifted positions (and LongT5's block attention spans examples), so packing is for T5, mT5 and umT5."""
    if config.batching.strategy != "packed" or config.model.tiny is not None:
        return
    from transformers import AutoConfig

    kind = getattr(
        load_pretrained(AutoConfig, config.model.pretrained, "model config"), "model_type", "unknown"
    )
    if kind not in PACKABLE:
        raise T2TError(f"batching.strategy=packed needs a model t2t can pack (T5, mT5, umT5: relative positions); "
                       f"{kind} models cannot pack ({unpackable_reason(kind)}): use batching.strategy=padded")  # fmt: skip


def check_memory(config: TrainConfig, accelerator: Any) -> None:
    """A model whose weights, gradients and optimizer states alone exceed what this machine (or GPU) has is refused
    now, in one line, before the tokenizer trains or a tensor is made (t2t.memory), not killed minutes later."""
    from t2t import memory

    where = None
    if config.model.tiny is not None:
        tiny = config.model.tiny
        params = memory.tiny_parameters(tiny)
        what = f"model.tiny (d_model {tiny.d_model}, d_ff {tiny.d_ff}, {tiny.num_layers} + {tiny.num_layers} layers)"
    else:
        from transformers import AutoConfig

        params = memory.count_parameters(load_pretrained(AutoConfig, config.model.pretrained, "model config"))
        what, where = "model.pretrained", Where(file=config.model.pretrained)
        if params is None:  # not a seq2seq model: loading it says so
            return
    trainable = 0 if config.sharing.mode == "adapters" and not config.sharing.train_backbone else params
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin is not None else {}
    parts = memory.training_bytes(
        params, trainable, config.optimizer.name, zero.get("stage"), accelerator.num_processes
    )
    if accelerator.device.type == "cuda":
        total = torch.cuda.get_device_properties(accelerator.device).total_memory
        memory.check_fits(
            what, params, memory.on_gpu(parts, zero), 1, total, f"the GPU ({accelerator.device})", where
        )
    # every process builds or loads the whole model on the host first, unless ZeRO-3 partitions it as it is made
    # (zero3_init_flag; the whole weights are then read once)
    if zero.get("stage") == 3 and getattr(plugin, "zero3_init_flag", False):
        built = 4 * params / memory.local_processes(accelerator)
    else:
        built = 4 * params
    if accelerator.device.type == "cuda" or sum(parts.values()) < built:
        parts = {"weights": built}
    memory.check_fits(
        what, params, parts, memory.local_processes(accelerator), memory.host_available(), where=where
    )


OPTIMIZERS = {
    "adamw": lambda params, spec: torch.optim.AdamW(
        params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, fused=True
    ),  # fused: one kernel over all parameters, on CPU and GPU alike
    "adafactor": lambda params, spec: __import__("transformers").optimization.Adafactor(
        params,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
    ),
}


def schedule_factor(name: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier at `step` (0-based) for each schedule, each with linear warmup."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "inverse_sqrt":  # T5: 1 / sqrt(max(step, warmup)), normalised to 1 at the end of warmup
        return math.sqrt(max(warmup, 1)) / math.sqrt(max(step, warmup, 1))
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # cosine


def get_optimizer_and_scheduler(config: TrainConfig, wrapped: torch.nn.Module):
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[config.optimizer.name](params, config.optimizer)
    spec = config.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(spec.name, step, spec.warmup_steps, config.steps)
    )
    return optimizer, scheduler


def check_gradient_method(accelerator: Any, config: TrainConfig) -> None:
    """The gradient methods need whole per-task gradients on their subset: refused under ZeRO-3; the exact
    variant needs the step's whole batch in one micro-batch on one process."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if plugin is not None else None
    if stage == 3:
        raise T2TError(f"balancing.method={config.balancing.method} needs per-task gradients, which ZeRO-3 keeps "
                       "partitioned: use ZeRO-1/2, DDP or one process, or a loss-only method (equal, uncertainty, "
                       "dwa, rlw, gls, famo) under ZeRO-3")  # fmt: skip
    if config.balancing.exact and (accelerator.num_processes > 1 or config.gradient_accumulation_steps > 1):
        raise T2TError(f"balancing.exact makes the step's update {config.balancing.method}'s own on the step's whole "
                       "batch, so it runs on one process without accumulation; with several processes or "
                       "micro-batches each is weighed apart: drop balancing.exact (the subset version)")  # fmt: skip


def configure_deepspeed(accelerator: Any, config: TrainConfig) -> None:
    """Fill the DeepSpeed JSON's "auto" values from the training config, the one source of truth."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = 1  # t2t builds its own batches; DeepSpeed only checks the product
    ds["gradient_accumulation_steps"] = config.gradient_accumulation_steps
    ds["gradient_clipping"] = config.max_grad_norm or 0.0
    ds.pop("train_batch_size", None)


# ------------------------------------------------------------------------------------------ the run


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT, also what a launcher sends its ranks) or SIGTERM during training, saying where the run
    stands; `terminated` for SIGTERM."""

    def __init__(self, where: str, terminated: bool = False) -> None:
        super().__init__(where)
        self.terminated = terminated


class Run:
    """One training run: built from the config, then `fit()`. The loop lives here; checkpoints and resume checks
    in t2t.checkpoint.Checkpointer, in-training evaluation and selection in t2t.train_eval.InTrainingEval."""

    def __init__(self, config: TrainConfig, registry: Registry, resume: str | None = None) -> None:
        self.config, self.registry = config, registry
        self.accelerator = acc = get_accelerator(config)
        self.checkpointer = Checkpointer(acc, config.run_dir, config.keep_checkpoints)
        checkpoint = self.checkpointer.resolve(resume)  # refused before the tokenizer trains
        self.mixture = load_mixture(registry, config.mixture)
        self.tasks = self.mixture.task_names
        check_whole_model(config.model.pretrained)
        check_packing(config)  # from the model's config, before the tokenizer trains or the weights load
        check_memory(config, acc)
        if config.bad_rows == "stop":  # a null field a template reads: refused now, not when first drawn
            check_null_fields(self.mixture, registry)
        self.tokenizer = get_tokenizer(config, registry, self.mixture, acc)
        model = get_model(config, self.tokenizer)
        if config.model.pretrained:  # a tiny model is built to its tokenizer
            tokenizer_name = config.tokenizer.pretrained or config.run_dir / "tokenizer"
            check_pairing(model, self.tokenizer, config.model.pretrained, tokenizer_name)
        self.identity = run_identity(config, self.mixture, registry, self.tokenizer, model)
        task_slots = self._attach_adapters(model)
        self.balancer = Balancer(config.balancing, len(self.tasks), config.seed)
        subset = None
        if self.balancer.uses_gradients:
            check_gradient_method(acc, config)
            subset = [p for _, p in gradient_parameters(model, config.balancing.gradient_params,
                                                        config.balancing.exact)]  # fmt: skip
        wrapped = ModelWithBalancing(
            model,
            len(self.tasks),
            learn_log_vars=config.balancing.method == "uncertainty",
            gradient_params=subset,
            task_slots=task_slots,
            pull=config.sharing.pull,
        )
        optimizer, scheduler = get_optimizer_and_scheduler(config, wrapped)
        configure_deepspeed(acc, config)
        self.model, self.optimizer, self.scheduler = acc.prepare(wrapped, optimizer, scheduler)
        self.limits = Limits(config.max_input_tokens, config.max_target_tokens)
        self.data = MixtureData(
            self.mixture, registry, self.tokenizer, self.limits, config.cache_dir, config.bad_rows
        )
        # on a resume, the rows or batches auto or packed chose at the run's start (kept where the config's batching
        # keys are unchanged)
        recorded = (
            load_run_state(checkpoint).get("identity", {}).get("batching") if checkpoint is not None else None
        )
        self.loader = BatchLoader(self.data, config.batching, acc.process_index, acc.num_processes,
                                  decoder_start_id=decoder_start_id(model.config),
                                  model_kind=getattr(model.config, "model_type", None), recorded=recorded)  # fmt: skip
        self.identity["batching"] = self.loader.config.model_dump(mode="json")  # what auto resolved to
        self.evaluator = InTrainingEval(
            config, registry, self.tasks, self.mixture.spec.splits.eval, self.data
        )
        if config.eval_every_steps:  # a bad eval row: refused now, not at the first evaluation
            self.evaluator.check(self.tokenizer)
        self.state = TrainState()
        self.weights = self.balancer.weights()  # the task weights of the last step, for logging
        self.last_saved_step = -1
        self.checkpoint = checkpoint
        if checkpoint is not None:
            self._restore(checkpoint)
        self.metrics_path = config.run_dir / "metrics.jsonl"

    def _attach_adapters(self, model: Any) -> list[int] | None:
        """sharing.mode=adapters: LoRA adapters per task or cluster on `model` (t2t.adapters), the backbone
        frozen unless sharing.train_backbone; returns each training task's adapter slot."""
        spec = self.config.sharing
        if spec.mode != "adapters":
            return None
        clusters = {t: self.registry.task(t).spec.cluster for t in [*self.tasks, *self.mixture.held_out]}
        routing = plan_routing(spec.per, self.tasks, list(self.mixture.held_out), clusters, spec.r, spec.alpha,
                               spec.targets or default_targets(model))  # fmt: skip
        torch.manual_seed(self.config.seed + 1)  # the adapters' initial A: the same on every process
        router = attach(model, routing, spec.dropout)
        if not spec.train_backbone:
            adapter_params = {id(p) for layer in router.layers for p in (layer.lora_A, layer.lora_B)}
            for param in model.parameters():
                param.requires_grad_(id(param) in adapter_params)
        return [routing.index(t) for t in self.tasks]

    @property
    def encoding(self) -> dict:
        """The limits the model trains under, saved beside every exported model for `t2t eval`."""
        return {
            "max_input_tokens": self.config.max_input_tokens,
            "max_target_tokens": self.config.max_target_tokens,
        }

    def eval_config(self, max_examples: int | None) -> EvalConfig:
        """Evaluation of this run's model on its eval split, encoded under the limits it trained with."""
        return training_eval_config(self.config, self.mixture.spec.splits.eval, max_examples)

    def _restore(self, checkpoint: Path) -> None:
        state = self.checkpointer.restore(checkpoint, self.identity, self.tokenizer)
        self.state = TrainState(**state)
        self.loader.state = LoaderState(**state["loader"][self.accelerator.process_index])
        self.balancer.load_state_dict(state["balancer"])
        if state["evaluation"]:
            self.evaluator.load_state_dict(state["evaluation"])
        self.last_saved_step = self.state.step

    def _start_logs(self) -> None:
        """Write the config; drop log lines past the restart point (lost with a crash, logged anew)."""
        run_dir = self.config.run_dir
        if self.accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            saved = config_dict(self.config)
            if self.config.batching.strategy == "auto":
                # auto reads which batching keys a config sets (rows, sides, keep_mix): a default written out
                # would read as set, and the file would train with other batches than this run
                saved["batching"] = self.config.batching.model_dump(mode="json", exclude_unset=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
            for name in ("metrics.jsonl", "eval.jsonl"):
                trim_log(run_dir / name, self.state.step)
            planned, schedule = self.state.planned_steps, self.config.schedule.name
            if (
                self.checkpoint is not None
                and planned != self.config.steps
                and schedule in ("linear", "cosine")
            ):
                print(f"warning: steps changed from {planned} to {self.config.steps}: the {schedule} schedule "
                      "decays over the new total from here on")  # fmt: skip
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        config, acc = self.config, self.accelerator
        self._start_logs()
        self._log_start()
        acc.init_trackers("t2t", config=_flat(config_dict(config)))
        progress = _progress(config.steps, self.state.step, disable=not acc.is_main_process)
        batches = iter(self.loader)
        window = _LogWindow(len(self.tasks))
        try:
            with paced_collection() as collect:
                while self.state.step < config.steps:
                    _maybe_fault(self.state.step)
                    began = time.perf_counter()
                    micro = [next(batches) for _ in range(config.gradient_accumulation_steps)]
                    # waiting for batches: building them, and encoding the pairs drawn for the first time
                    window.data_seconds += time.perf_counter() - began
                    stats = self.train_step(micro)
                    self.state.step += 1
                    window.add(stats)
                    self.maybe_log(window, progress)
                    self.maybe_save()
                    self.maybe_evaluate()
                    collect(self.state.step)
        except KeyboardInterrupt as exc:
            progress.close()
            raise Interrupted(self._where_interrupted(), isinstance(exc, Terminated)) from None
        progress.close()
        final = self.finish()
        # the trackers' end (accelerate's end_training, less its destroy_process_group: a multi-process run keeps
        # its process group until t2t.cli.run ends the process, else the interpreter's teardown of gloo's and
        # DeepSpeed's threads now and then aborts a rank, and close()'s barrier would be skipped)
        for tracker in acc.trackers:
            tracker.finish()
        self.close()
        return final

    def _where_interrupted(self) -> str:
        step, total, saved = self.state.step, self.config.steps, self.last_saved_step
        if saved > 0:
            return f"at step {step} of {total}; `--resume auto` continues from the checkpoint of step {saved}"
        every = self.config.save_every_steps
        first = f" (the first comes at step {every})" if every and every < total else ""
        return f"at step {step} of {total}, before the run's first checkpoint{first}: nothing to resume from"

    def close(self) -> None:
        """Every rank leaves the run together: nothing of the run is still in flight on any rank afterwards.
        The process group itself stays up; `t2t train` then ends a multi-process run without the interpreter's
        teardown (t2t.cli.run)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.accelerator.wait_for_everyone()

    def train_step(self, micro: list) -> dict:
        """One optimizer step over the micro-batches of this process. The wrapped module's forward returns the
        balanced loss (t2t.balancing), so every engine sees every parameter it uses."""
        acc, k = self.accelerator, len(micro)
        device = acc.device
        local_tokens = sum(int((b.tensors["labels"] >= 0).sum()) for b in micro)
        global_tokens = float(acc.reduce(torch.tensor(float(local_tokens), device=device), "sum"))
        scale = k * acc.num_processes / global_tokens  # accelerate / DeepSpeed divide by k, DDP averages
        weights = self.balancer.weights().to(device)
        task_loss = torch.zeros(len(self.tasks), device=device)
        task_tokens = torch.zeros(len(self.tasks), device=device)
        objective = torch.zeros((), device=device)
        non_finite = torch.zeros(k, device=device)  # per micro-batch; checked once, before the step's update
        for index, batch in enumerate(micro):
            tensors = {name: t.to(device) for name, t in batch.tensors.items()}
            weigher = self.balancer.weigher(self.state.step, index, acc.process_index)
            with acc.accumulate(self.model):
                balanced, batch_loss, batch_tokens, used, penalty = self.model(tensors, weights, weigher)
                non_finite[index] = (~torch.isfinite(batch_loss.sum())).float()
                if index == k - 1:  # before the last backward: under DeepSpeed it steps the engine
                    self._check_finite(non_finite, micro)
                # the engines divide by k and average over processes: the penalty counts once per step
                acc.backward(balanced * scale + penalty)
                deepspeed_clips = acc.distributed_type == DistributedType.DEEPSPEED  # from its config
                if acc.sync_gradients and self.config.max_grad_norm is not None and not deepspeed_clips:
                    acc.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            task_loss += batch_loss
            task_tokens += batch_tokens
            objective += balanced.detach() / global_tokens + penalty.detach() / (k * acc.num_processes)
            self.weights = used.detach()  # stays on the device: read (and synchronised) only when logged
        self.scheduler.step()
        reduced = acc.reduce(torch.cat([task_loss, task_tokens, objective[None],
                                        torch.tensor([float(sum(b.real_tokens for b in micro)),
                                                      float(sum(b.n_examples for b in micro))], device=device)]), "sum")  # fmt: skip
        n = len(self.tasks)
        stats = {"task_loss": reduced[:n].tolist(), "task_tokens": reduced[n : 2 * n].tolist(),
                 "objective": float(reduced[2 * n]), "real_tokens": int(reduced[2 * n + 1]),
                 "examples": int(reduced[2 * n + 2])}  # fmt: skip
        self.balancer.observe(stats["task_loss"], stats["task_tokens"])
        if self.balancer.spec.method == "gradnorm" and acc.num_processes > 1:  # one state on every rank
            state = torch.tensor(self.balancer.gradnorm.weights, device=device, dtype=torch.float64)
            self.balancer.gradnorm.weights = (acc.reduce(state, "mean")).cpu().numpy()
        self.state.tokens_seen += stats["real_tokens"]
        self.state.examples_seen += stats["examples"]
        return stats

    def _check_finite(self, non_finite: torch.Tensor, micro: list) -> None:
        """One reduction and one host sync per optimizer step (not per micro-batch): stop on a non-finite loss of
        any micro-batch of any process, naming the tasks of this process's bad micro-batches."""
        if float(self.accelerator.reduce(non_finite.sum(), "sum")) == 0:
            return
        bad = [b for b, flag in zip(micro, non_finite.tolist(), strict=True) if flag]
        ids = sorted({int(t) for b in bad for t in b.tensors["task_ids"].unique().tolist() if t >= 0})
        names = ", ".join(self.tasks[i] for i in ids) or "unknown (another process's batch)"
        raise T2TError(f"non-finite loss at step {self.state.step + 1} (this process's batch holds tasks {names}); "
                       "the last checkpoint is untouched")  # fmt: skip

    # ---------------------------------------------------------------------------- side effects

    def maybe_log(self, window: _LogWindow, progress: Any) -> None:
        config, acc = self.config, self.accelerator
        progress.update(1)
        if self.state.step % config.log_every_steps and self.state.step != config.steps:
            return
        record = window.flush(self.tasks, self.weights.float().cpu().tolist())
        record.update(self.balancer.gradient_stats(self.tasks))
        record.update(
            step=self.state.step, lr=self.scheduler.get_last_lr()[0], tokens_seen=self.state.tokens_seen
        )
        acc.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=self.state.step)
        if acc.is_main_process:
            append_log(self.metrics_path, record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")

    def maybe_save(self) -> None:
        every = self.config.save_every_steps
        if every and self.state.step % every == 0 and self.state.step != self.config.steps:
            self.save()

    def save(self) -> Path:
        from accelerate.utils import gather_object

        self.state.loader = gather_object([asdict(self.loader.state)])
        self.state.balancer = self.balancer.state_dict()
        self.state.evaluation = self.evaluator.state_dict()
        self.state.planned_steps = self.config.steps
        saved = self.checkpointer.save(self.model, self.tokenizer, self.state.step, asdict(self.state),
                                       self.identity, self.encoding)  # fmt: skip
        # set once the checkpoint is whole (an interrupted save leaves `latest` where it was)
        self.last_saved_step = self.state.step
        return saved

    def finish(self) -> dict:
        from accelerate.utils import gather_object

        if self.last_saved_step != self.state.step:
            self.save()
        # rows passed over under bad_rows: skip, every process's (a row two processes met counts once)
        skipped = len(set(map(tuple, gather_object(self.data.skipped_rows()))))
        model_dir = self.checkpointer.export(self.model, self.tokenizer, self.encoding)
        selector = self.evaluator.selector
        best = None
        if selector.best_step is not None:
            best = str(self.checkpointer.export_best(selector.best_step))
        if self.accelerator.is_main_process:
            from t2t.plots import plot_loss_curves

            plot_loss_curves(self.metrics_path, self.config.run_dir / "loss_curves.png")
            if selector.history:
                atomic_write_text(self.config.run_dir / "selection.md", selector.report())
        return {"step": self.state.step, "checkpoint": str(checkpoint_path(self.config.run_dir, self.state.step)),
                "model": str(model_dir), "best": best, "best_step": selector.best_step,
                "tokens_seen": self.state.tokens_seen, "main_process": self.accelerator.is_main_process,
                "skipped_bad": skipped}  # fmt: skip

    def maybe_evaluate(self) -> None:
        acc = self.accelerator
        if not self.evaluator.due(self.state.step):
            return
        model = acc.unwrap_model(self.model).model
        record, decision = self.evaluator.run(model, self.tokenizer, self.state.step)
        if decision is not None:
            if acc.is_main_process:
                print(decision.describe())
            if decision.accepted and self.last_saved_step != self.state.step:
                self.save()  # the selected step keeps its checkpoint (never pruned once marked)
            if decision.accepted and acc.is_main_process:
                mark_best(self.config.run_dir, self.state.step)
        acc.log({k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)},
                step=self.state.step)  # fmt: skip
        if acc.is_main_process:
            append_log(self.config.run_dir / "eval.jsonl", record)

    def _log_start(self) -> None:
        acc = self.accelerator
        if not acc.is_main_process:
            return
        self.loader.window_examples(self.loader.state.window)  # the window training starts in, encoded
        pairs = self.data.encoded_pairs()
        warnings = truncation_warnings(pairs, self.data.limits) + token_warnings(pairs, self.tokenizer)
        if self.config.batching.strategy == "auto":
            print(f"batching: auto chose {self.loader.why}")
        elif self.config.batching.strategy == "packed":  # the rows it sized from the budget
            print(f"batching: {self.loader.why}")
        if self.balancer.weighs and self.loader.config.strategy == "padded":
            warnings.append(f"balancing.method={self.config.balancing.method} weighs the tasks within each "
                            "micro-batch, and length-bucketed padded batches often hold a single task (where it "
                            "changes nothing): packed batches mix tasks")  # fmt: skip
        spec, limits = self.loader.config, self.data.limits
        longest = limits.max_input_tokens + limits.max_target_tokens
        if spec.strategy == "padded" and spec.max_tokens is not None and spec.max_tokens < longest:
            warnings.append(f"batching.max_tokens={spec.max_tokens} is below the longest example the limits allow "
                            f"({limits.max_input_tokens}+{limits.max_target_tokens}): an example over the budget "
                            "makes a padded batch of its own, over it (raise max_tokens, or lower the limits)")  # fmt: skip
        schedule = self.config.schedule
        if schedule.warmup_steps > self.config.steps:  # the warmup's last step (warmup_steps) reaches lr
            warnings.append(f"schedule.warmup_steps={schedule.warmup_steps} is over steps={self.config.steps}: "
                            f"the learning rate never reaches optimizer.lr={self.config.optimizer.lr:g}")  # fmt: skip
        if acc.mixed_precision == "bf16" and acc.device.type == "cpu":
            warnings.append("precision bf16 on a CPU: 4-13x slower than fp32 without bf16 instructions "
                            "(precision: auto takes fp32 on a CPU and bf16 on a GPU)")  # fmt: skip
        for line in warnings:
            print(f"warning: {line}")
        n_params = sum(p.numel() for p in acc.unwrap_model(self.model).model.parameters())
        start = f"resuming from {self.checkpoint.name}" if self.checkpoint else "starting"
        print(f"t2t train: {start} at step {self.state.step} of {self.config.steps}; {len(self.tasks)} tasks, "
              f"{n_params / 1e6:.2f}M parameters, {acc.num_processes} process(es) of {torch.get_num_threads()} thread(s), "
              f"{'not distributed' if acc.distributed_type.name == 'NO' else acc.distributed_type.name.lower()}, "
              f"precision {'fp32' if acc.mixed_precision == 'no' else acc.mixed_precision}, "
              f"batching {self.loader.config.strategy}, "
              f"balancing {self.config.balancing.method}{self._sharing_note()}")  # fmt: skip

    def _sharing_note(self) -> str:
        spec = self.config.sharing
        if spec.mode != "adapters":
            return ""
        router = router_of(self.accelerator.unwrap_model(self.model).model)
        frozen = ", backbone frozen" if not spec.train_backbone else ""
        return f", adapters per {spec.per} ({len(router.routing.adapters)}, r {spec.r}{frozen})"


GC_YOUNG_EVERY = 50  # training steps between collections of Python's young generations
GC_FULL_EVERY = 1000  # ... and of the whole heap


@contextlib.contextmanager
def paced_collection() -> Iterator[Callable[[int], None]]:
    """Python's automatic garbage collection off while the loop runs, collected at a fixed pace instead (as
    torchtitan does): an automatic full collection walks every object the run holds, the encoded pairs' millions of
    id lists among them, at moments set by allocation counts, inside the data path or a step. Young generations
    every GC_YOUNG_EVERY steps, everything every GC_FULL_EVERY; the collector's state is restored afterwards."""
    enabled = gc.isenabled()
    gc.disable()

    def collect(step: int) -> None:
        if step % GC_FULL_EVERY == 0:
            gc.collect()
        elif step % GC_YOUNG_EVERY == 0:
            gc.collect(1)

    try:
        yield collect
    finally:
        if enabled:
            gc.enable()


class _LogWindow:
    """Sums over the steps since the last log line."""

    def __init__(self, n_tasks: int) -> None:
        self.n_tasks = n_tasks
        self.reset()

    def reset(self) -> None:
        self.task_loss, self.task_tokens = [0.0] * self.n_tasks, [0.0] * self.n_tasks
        self.objective, self.real_tokens, self.steps, self.started = 0.0, 0, 0, time.perf_counter()
        self.data_seconds = 0.0  # spent waiting for batches (this process)

    def add(self, stats: dict) -> None:
        self.task_loss = [a + b for a, b in zip(self.task_loss, stats["task_loss"], strict=True)]
        self.task_tokens = [a + b for a, b in zip(self.task_tokens, stats["task_tokens"], strict=True)]
        self.objective += stats["objective"]
        self.real_tokens += stats["real_tokens"]
        self.steps += 1

    def flush(self, tasks: list[str], weights: list[float]) -> dict:
        seconds = time.perf_counter() - self.started
        total_tokens = sum(self.task_tokens)
        record: dict[str, Any] = {
            "loss": sum(self.task_loss) / max(total_tokens, 1),  # mean token loss, unweighted
            "objective": self.objective / max(self.steps, 1),  # what was minimised (balancing included)
            "tokens_per_s": self.real_tokens / seconds if seconds > 0 else 0.0,
            "data_share": self.data_seconds / seconds if seconds > 0 else 0.0,  # of the window's wall time
        }
        for name, loss, tokens, weight in zip(tasks, self.task_loss, self.task_tokens, weights, strict=True):
            record[f"task_tokens/{name}"] = tokens
            if tokens:
                record[f"task_loss/{name}"] = loss / tokens
            record[f"weight/{name}"] = weight
        self.reset()
        return record


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=disable, desc="train", unit="step", dynamic_ncols=True)


def _maybe_fault(step: int) -> None:
    rank = os.environ.get(FAULT_RANK_ENV)  # unset: every process
    if os.environ.get(FAULT_ENV) == str(step) and rank in (None, os.environ.get("RANK", "0")):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(FAULT_SIGNAL_ENV, 'KILL')}"))


# The runs of a multi-process `t2t train`, kept referenced until the process ends with os._exit (t2t.cli.run):
# freeing a finished ZeRO-3 run's engine while the process group lives is one way its communication threads'
# teardown can abort a rank ("terminate called without an active exception") after every file is written.
_LIVE_RUNS: list[Run] = []


def train(config: TrainConfig, registry: Registry, resume: str | None = None) -> dict:
    """`t2t train`: the run, holding its run dir's lock (RunDirLock) from before it reads the dir's checkpoints (a
    dir that exists) or before it writes its logs (a new one, so that a refusal leaves no run dir) to its end."""
    lock = RunDirLock(config.run_dir) if os.environ.get("RANK", "0") == "0" else None
    try:
        if lock is not None and config.run_dir.is_dir():
            lock.acquire(announce=False)
        run = Run(config, registry, resume)
        if lock is not None:
            lock.acquire()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            _LIVE_RUNS.append(run)
        return run.fit()
    finally:
        if lock is not None:
            lock.release()


def append_log(path: Path, record: dict) -> None:
    """One JSON line, written whole and flushed: a kill can lose at most this line."""
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def trim_log(path: Path, last_step: int) -> None:
    """Keep the JSONL records of steps up to `last_step` (a resumed or restarted run logs the later ones again);
    a torn line (a kill mid-write) is dropped with a warning."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: dropped a torn log line")
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
