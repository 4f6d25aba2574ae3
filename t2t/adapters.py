"""Soft sharing: LoRA adapters per task (or per cluster) on a shared backbone, routed per token.

`sharing: {mode: adapters, per: task | cluster, r, alpha, targets, train_backbone, pull}` wraps every targeted
linear layer of the model (T5's `q` and `v` by default, peft's default for T5) in a `RoutedLoRA`: the layer's
output plus `alpha / r * B_k A_k x`, where k is the adapter of the token's task. All adapters of a layer are
two tensors, A (K, r, in) and B (K, out, r), and one forward serves a batch that mixes tasks: in packed rows
every segment takes its own task's adapter (T5's encoder tokens by their segment, decoder tokens by their label's
task, cross-attention keys and values by the encoder token they come from). A token with no adapter (padding, a
task that has none) gets the backbone alone. Every adapter takes part in every forward (masked to zero where
not routed), so DDP sees no unused parameter, and each wrapper's own forward is where ZeRO-3 gathers its A and B.

`pull` > 0 adds `pull * sum_layers sum_k ||dW_k - mean_j dW_j||_F^2` to the loss (dW_k = alpha / r * B_k A_k): the
adapters are drawn toward their common centre, soft sharing's regulariser. It is computed on the effective
weights, whatever the factorisation, from (K r) x (K r) Gram matrices, never from the dense dW.

A model exported by t2t keeps the backbone as a plain HF dir and each adapter beside it in peft's format:

    model/adapters/routing.json          adapter names, task -> adapter, r, alpha, targets
    model/adapters/NAME/                 adapter_config.json + adapter_model.safetensors (peft's LoRA files)

so `peft.PeftModel.from_pretrained(backbone, "model/adapters/NAME")` loads one adapter as a single-task model, and
`t2t export merged` writes that model merged into a plain HF dir. `t2t eval`, `predict` and `serve` attach the
adapters and route each task (or each row of a mixed batch) to its own.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2t.config import check_name
from t2t.errors import T2TError, Where
from t2t.fileio import peft_base

ROUTING_FILE = "routing.json"
ADAPTERS_DIR = "adapters"
PEFT_PREFIX = "base_model.model."
# Linear layers that read the encoder's states from inside the decoder (cross-attention keys and values).
_CROSS_KV = {("EncDecAttention", "k"), ("EncDecAttention", "v"), ("encoder_attn", "k_proj"),
             ("encoder_attn", "v_proj")}  # fmt: skip


@dataclass(frozen=True)
class Routing:
    """Adapter names in slot order, and the adapter of each task (tasks without one are absent)."""

    adapters: tuple[str, ...]
    tasks: dict[str, str]
    r: int
    alpha: float
    targets: tuple[str, ...]
    per: str = "task"

    def index(self, task: str) -> int:
        """The slot of the task's adapter, -1 for none (the backbone alone)."""
        name = self.tasks.get(task)
        return -1 if name is None else self.adapters.index(name)

    def to_json(self) -> dict:
        return {"adapters": list(self.adapters), "tasks": self.tasks, "r": self.r, "alpha": self.alpha,
                "targets": list(self.targets), "per": self.per}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> Routing:
        """A routing table as saved; a name that is not a task or cluster name (it becomes a folder name), a task
        routed to no listed adapter or a rank below 1 is refused (ValueError)."""
        routing = cls(tuple(data["adapters"]), dict(data["tasks"]), int(data["r"]), float(data["alpha"]),
                      tuple(data["targets"]), data.get("per", "task"))  # fmt: skip
        for name in routing.adapters:
            check_name(str(name), "adapter name")
        unknown = sorted(set(routing.tasks.values()) - set(routing.adapters))
        if unknown or routing.r < 1 or not routing.targets:
            raise ValueError(
                f"tasks routed to unlisted adapters {unknown}" if unknown else "r < 1 or no targets"
            )
        return routing


def plan_routing(per: str, trained: Sequence[str], held_out: Sequence[str], cluster_of: dict[str, str], r: int,
                 alpha: float, targets: Sequence[str]) -> Routing:  # fmt: skip
    """One adapter per trained task, or per cluster of the trained tasks. A held-out task gets its cluster's
    adapter when `per` is cluster and that cluster trains; otherwise none."""
    if per == "task":
        adapters = tuple(trained)
        tasks = {t: t for t in trained}
    else:
        adapters = tuple(dict.fromkeys(cluster_of[t] for t in trained))
        tasks = {t: cluster_of[t] for t in [*trained, *held_out] if cluster_of[t] in adapters}
    return Routing(adapters, tasks, r, alpha, tuple(targets), per)


class Router:
    """The current routes, read by every RoutedLoRA of one model: adapter slots for encoder-side and
    decoder-side inputs, each of shape (batch,) (one adapter per row) or (batch, length) (per token)."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.encoder: torch.Tensor | None = None
        self.decoder: torch.Tensor | None = None
        self.collect_penalty = False
        self.penalty: torch.Tensor | None = None
        self.layers: list[RoutedLoRA] = []

    @contextlib.contextmanager
    def use(self, encoder: torch.Tensor | None, decoder: torch.Tensor | None) -> Iterator[None]:
        saved = self.encoder, self.decoder
        self.encoder, self.decoder = encoder, decoder
        try:
            yield
        finally:
            self.encoder, self.decoder = saved

    def rows(self, tasks: Sequence[str], device: Any = None) -> torch.Tensor:
        return torch.tensor([self.routing.index(t) for t in tasks], dtype=torch.long, device=device)


def router_of(model: Any) -> Router | None:
    return getattr(model, "t2t_router", None)


def routed(router: Router | None, slots: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Rows through the adapters of `slots` (one per row) on both sides; nothing changes without a router."""
    return router.use(slots, slots) if router is not None else contextlib.nullcontext()


@contextlib.contextmanager
def route_task(model: Any, task: str) -> Iterator[None]:
    """Every row of the batches run inside goes through this task's adapter, whatever the batch size."""
    router = router_of(model)
    if router is None:
        yield
        return
    slot = torch.tensor(router.routing.index(task), dtype=torch.long, device=_device(model))
    with router.use(slot, slot):
        yield


def batch_routes(
    tensors: dict[str, torch.Tensor], task_slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter slots of a training batch's encoder and decoder tokens, from its task ids (per label token) and,
    in packed rows, its segment ids. `task_slots[t]` is task t's adapter (-1: none)."""
    task_ids = tensors["task_ids"]

    def slots(tasks: torch.Tensor) -> torch.Tensor:
        return torch.where(tasks >= 0, task_slots[tasks.clamp(min=0)], torch.full_like(tasks, -1))

    if "encoder_segment_ids" not in tensors:  # one example per row; every row has a label token
        row = slots(task_ids[:, 0])
        return row, row
    enc_seg, dec_seg = tensors["encoder_segment_ids"], tensors["decoder_segment_ids"]
    n_segments = (
        max(enc_seg.shape[1], dec_seg.shape[1]) + 1
    )  # a bound on the segment ids, read without a sync
    # a segment's decoder tokens all carry its task; padding (segment 0) carries -1
    segment_task = torch.full((task_ids.shape[0], n_segments), -1, dtype=torch.long, device=task_ids.device)
    segment_task.scatter_(1, dec_seg, task_ids)
    return slots(segment_task.gather(1, enc_seg)), slots(task_ids)


class RoutedLoRA(nn.Module):
    """A linear layer plus K LoRA adapters, each token through the adapter its route names."""

    def __init__(self, base: nn.Linear, n_adapters: int, r: int, alpha: float, dropout: float, side: str,
                 router: Router) -> None:  # fmt: skip
        super().__init__()
        self.base = base
        self.side, self.scale, self.r = side, alpha / r, r
        self.lora_A = nn.Parameter(torch.empty(n_adapters, r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_adapters, base.out_features, r, dtype=base.weight.dtype))
        for k in range(n_adapters):  # as peft: A ~ Kaiming-uniform per adapter, B = 0 (a new adapter adds 0)
            nn.init.kaiming_uniform_(self.lora_A.data[k], a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._router = [router]  # a list: not a submodule

    @property
    def weight(self) -> torch.Tensor:  # HF code reads e.g. `self.wo.weight.dtype`
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        router = self._router[0]
        if router.collect_penalty:
            term = self.pull_penalty()
            router.penalty = term if router.penalty is None else router.penalty + term
        route = router.encoder if self.side == "encoder" else router.decoder
        if route is None:
            return out
        k, r = self.lora_A.shape[0], self.r
        lead = x.shape[:-1]
        if route.dim() == 0:
            route = route.expand(lead[0])
        if route.shape[0] != lead[0]:  # beam search repeats each row num_beams times, in place
            route = route.repeat_interleave(lead[0] // route.shape[0], dim=0)
        onehot = torch.nn.functional.one_hot(route.clamp(min=0), k).to(x.dtype) * (route >= 0)[..., None]
        while onehot.dim() < len(lead) + 1:  # per-row routes over every position
            onehot = onehot.unsqueeze(-2)
        hidden = (
            self.dropout(x) @ self.lora_A.reshape(k * r, -1).T
        )  # (..., K r): every adapter's down-projection
        hidden = (hidden.unflatten(-1, (k, r)) * onehot[..., None]).flatten(-2)  # keep each token's own
        up = self.lora_B.transpose(1, 2).reshape(k * r, -1)  # (K r, out)
        return out + (hidden @ up) * self.scale

    def delta(self, k: int) -> torch.Tensor:
        """Adapter k's weight change, (out, in)."""
        return self.scale * self.lora_B[k] @ self.lora_A[k]

    def pull_penalty(self) -> torch.Tensor:
        """sum_k ||dW_k - mean_j dW_j||_F^2 from Gram matrices: with G_A = A A^T and G_B = B^T B over the stacked
        (K r) rows, <dW_j, dW_k> = scale^2 * sum(G_B[j, k] * G_A[k, j]^T), and the spread is the sum of the
        diagonal blocks minus the full sum over K."""
        k, r = self.lora_A.shape[0], self.r
        a = self.lora_A.float().reshape(k * r, -1)
        b = self.lora_B.float().transpose(1, 2).reshape(k * r, -1)
        inner = ((b @ b.T) * (a @ a.T).T).reshape(k, r, k, r).sum(dim=(1, 3)) * self.scale**2  # <dW_j, dW_k>
        return inner.diagonal().sum() - inner.sum() / k


DEFAULT_TARGETS = (("q", "v"), ("q_proj", "v_proj"))  # T5's, then BART's and most others' (peft's defaults)


def default_targets(model: nn.Module) -> list[str]:
    """The attention query and value projections of `model`, by the names its linear layers use."""
    names = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for targets in DEFAULT_TARGETS:
        if set(targets) <= names:
            return list(targets)
    raise T2TError("sharing.targets: no default for this model (no q/v or q_proj/v_proj layers); name its linear "
                   f"layers to adapt, among: {', '.join(sorted(names))}")  # fmt: skip


def _side(name: str) -> str:
    parts = name.split(".")
    if "decoder" not in parts:
        return "encoder"
    return "encoder" if tuple(parts[-2:]) in _CROSS_KV else "decoder"


def _targeted(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's rule for a list of names


def attach(model: nn.Module, routing: Routing, dropout: float = 0.0) -> Router:
    """Wrap the targeted linear layers of `model` (in place) and set its router; returns the router."""
    router = Router(routing)
    if router_of(model) is not None:
        raise T2TError("the model has adapters already")
    named = [(n, m) for n, m in model.named_modules() if _targeted(n, routing.targets)]
    if not named:
        raise T2TError(f"sharing.targets {list(routing.targets)} name no layer of the model")
    for name, module in named:
        if not isinstance(module, nn.Linear):
            raise T2TError(f"sharing.targets: {name} is a {type(module).__name__}, not a linear layer")
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = RoutedLoRA(
            module, len(routing.adapters), routing.r, routing.alpha, dropout, _side(name), router
        )
        setattr(parent, leaf, wrapped)
        router.layers.append(wrapped)
    model.t2t_router = router
    model.t2t_adapter_paths = [name for name, _ in named]
    return router


def _device(model: Any) -> Any:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------- files


def split_state(state: dict[str, torch.Tensor], paths: Sequence[str]) -> tuple[dict, dict]:
    """A wrapped model's state dict as (plain HF backbone state, {path: (A, B)})."""
    wrapped = set(paths)
    backbone, lora = {}, {}
    for key, value in state.items():
        path, _, leaf = key.rpartition(".")
        if path in wrapped and leaf in ("lora_A", "lora_B"):
            lora.setdefault(path, {})[leaf] = value
        elif path.endswith(".base") and path.removesuffix(".base") in wrapped:
            backbone[f"{path.removesuffix('.base')}.{leaf}"] = value
        else:
            backbone[key] = value
    return backbone, {p: (v["lora_A"], v["lora_B"]) for p, v in lora.items()}


def save_adapters(folder: Path, routing: Routing, lora: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  base_name: str) -> None:  # fmt: skip
    """Each adapter as a peft LoRA dir, and the routing table, under `folder` (model/adapters)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    for k, name in enumerate(routing.adapters):
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=routing.r, lora_alpha=routing.alpha, target_modules=list(routing.targets), lora_dropout=0.0,
                   bias="none", task_type="SEQ_2_SEQ_LM", base_model_name_or_path=base_name).save_pretrained(str(out))  # fmt: skip
        tensors = {}
        for path, (a, b) in lora.items():
            tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = a[k].detach().contiguous().cpu()
            tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = b[k].detach().contiguous().cpu()
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / ROUTING_FILE).write_text(json.dumps(routing.to_json(), indent=1) + "\n")


def read_routing(model_dir: Path) -> Routing | None:
    path = Path(model_dir) / ADAPTERS_DIR / ROUTING_FILE
    if not path.is_file():
        return None
    try:
        return Routing.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise T2TError(f"not a t2t routing table: {exc}", Where(file=path)) from None


def read_adapter(model_dir: Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights file of adapter `name` (which the routing table names) and its tensors; absent or unreadable
    is refused with one line naming the file."""
    from safetensors.torch import load_file

    file = Path(model_dir) / ADAPTERS_DIR / name / "adapter_model.safetensors"
    if not file.is_file():
        raise T2TError(f"adapter {name!r} of the routing table has no weights", Where(file=file))
    try:
        return file, load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for a torn or foreign file
        raise T2TError(
            f"adapter {name!r}: not a readable safetensors file ({exc})", Where(file=file)
        ) from None


def load_adapters(model: nn.Module, model_dir: Path) -> Router | None:
    """Attach the adapters saved beside an exported model (none: the model is returned as it is)."""
    routing = read_routing(model_dir)
    if routing is None:
        return None
    router = attach(model, routing)
    paths = dict(zip(model.t2t_adapter_paths, router.layers, strict=True))
    for k, name in enumerate(routing.adapters):
        file, tensors = read_adapter(model_dir, name)
        for path, layer in paths.items():
            for leaf, param in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                key = f"{PEFT_PREFIX}{path}.{leaf}.weight"
                if key not in tensors or tensors[key].shape != param.shape[1:]:
                    raise T2TError(
                        f"adapter {name!r}: {key} is missing or of the wrong shape", Where(file=file)
                    )
                with torch.no_grad():
                    param[k].copy_(tensors[key])
    return router


def merged(model_dir: Path, name: str, out: Path) -> tuple[str, Path]:
    """The backbone with one adapter (named, or the adapter of the named task) merged in by peft, as a plain HF
    dir with the tokenizer and encoding limits: a single-task model. Written whole or not at all."""
    import shutil

    from peft import PeftModel

    from t2t.checkpoint import ENCODING_FILE
    from t2t.modeling import load_model
    from t2t.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    routing = read_routing(model_dir)
    base = peft_base(model_dir)
    if routing is None and base is not None:
        raise T2TError(f"a PEFT adapter dir (over {base}), not a t2t model with adapters: merge it with "
                       "peft (PeftModel.from_pretrained(BASE, DIR).merge_and_unload().save_pretrained(OUT)); t2t eval, "
                       "predict and serve take it as it is", Where(file=model_dir))  # fmt: skip
    if routing is None:
        raise T2TError("the model has no adapters (no adapters/routing.json): it is a plain HF dir already",
                       Where(file=model_dir))  # fmt: skip
    adapter = name if name in routing.adapters else routing.tasks.get(name)
    if adapter is None:
        raise T2TError(f"{name!r} is neither an adapter nor a task with one; adapters: {', '.join(routing.adapters)}",
                       Where(file=model_dir / ADAPTERS_DIR / ROUTING_FILE))  # fmt: skip
    if out.exists() and any(out.iterdir()):
        raise T2TError("--out must be a new or empty folder", Where(file=out))
    read_adapter(model_dir, adapter)  # absent or torn: one line naming the file, before the model loads
    single = PeftModel.from_pretrained(load_model(model_dir), str(model_dir / ADAPTERS_DIR / adapter))
    single = single.merge_and_unload()
    staging = out.parent / f".tmp-{out.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    single.save_pretrained(str(staging), safe_serialization=True)
    load_tokenizer(model_dir).save_pretrained(str(staging))
    if (model_dir / ENCODING_FILE).is_file():
        shutil.copyfile(model_dir / ENCODING_FILE, staging / ENCODING_FILE)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return adapter, out
