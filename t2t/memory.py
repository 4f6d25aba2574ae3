"""Whether a model can fit at all, checked before anything runs.

A model size typed one digit too long (`model.tiny.d_model=81920`), or an 11B checkpoint on a laptop, otherwise
builds tensor after tensor until the kernel kills the process (or swaps the machine to a halt), minutes in and
after the tokenizer has trained. The check compares a lower bound on what the model takes (its weights; for
training also their gradients and AdamW's two states) with what the machine has (available memory and free swap,
within the process's cgroup limit), and refuses in one line only where even that bound does not fit: activations
and buffers come on top, so passing the check is no promise, but failing it is certain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2t.errors import T2TError, Where

GB = 1e9
# a cgroup's (limit, memory.stat, the key there of memory no reclaim frees): v2, then v1. Its usage counts the page
# cache too (a dataset read once), which the kernel reclaims before it kills anything: what a process could still
# take is the limit less the anonymous memory alone
_CGROUPS = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.stat"), "anon"),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.stat"),
        "total_rss",
    ),
)


def host_available(meminfo: Path = Path("/proc/meminfo"), cgroups: tuple = _CGROUPS) -> int | None:
    """Bytes this process could still take on the host: available memory plus free swap, at most what its cgroup
    leaves (its limit less the anonymous memory in it); None where the system does not say (not Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        available = (
            int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
        ) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit_file, stat_file, key in cgroups:
        try:
            limit = limit_file.read_text().strip()
            stat = dict(line.split() for line in stat_file.read_text().splitlines() if len(line.split()) == 2)
            used = int(stat[key])
        except (OSError, ValueError, KeyError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" (v2) or a near-2^63 number (v1): no limit
            available = min(available, max(0, int(limit) - used))
        break
    return available


# (encoder, decoder) layer counts of the seq2seq configs transformers has: T5's family, then BART's
LAYER_COUNTS = (("num_layers", "num_decoder_layers"), ("encoder_layers", "decoder_layers"))


def count_parameters(model_config: Any) -> int | None:
    """The parameters of the seq2seq model `model_config` describes, counted on the meta device (no memory); None
    for a config no seq2seq class takes (the loader says so). Where the config says how many layers each stack has,
    the model is built with one and two layers per stack and extended to its counts (every layer after the first
    has the same size), so a config of any depth costs three small builds, not one module per layer."""
    import copy

    for encoder, decoder in LAYER_COUNTS:
        layers = (getattr(model_config, encoder, None), getattr(model_config, decoder, None))
        if all(isinstance(n, int) and n > 0 for n in layers):
            break
    else:
        return _count_on_meta(model_config)

    def with_layers(n_encoder: int, n_decoder: int) -> int | None:
        shallow = copy.deepcopy(model_config)
        setattr(shallow, encoder, n_encoder)
        setattr(shallow, decoder, n_decoder)
        return _count_on_meta(shallow)

    one, deeper_encoder, deeper_decoder = with_layers(1, 1), with_layers(2, 1), with_layers(1, 2)
    if one is None or deeper_encoder is None or deeper_decoder is None:
        return None
    return one + (layers[0] - 1) * (deeper_encoder - one) + (layers[1] - 1) * (deeper_decoder - one)


def _count_on_meta(model_config: Any) -> int | None:
    import torch
    from transformers import AutoModelForSeq2SeqLM

    try:
        with torch.device("meta"):
            model = AutoModelForSeq2SeqLM.from_config(model_config)
    except ValueError:
        return None
    return sum(p.numel() for p in model.parameters())


def tiny_parameters(spec: Any) -> int:
    """The parameters of `model.tiny` with a vocabulary of 2 (the tokenizer is not trained yet)."""
    from transformers import T5Config

    return count_parameters(T5Config(vocab_size=2, d_model=spec.d_model, d_kv=spec.d_model // spec.num_heads,
                                     d_ff=spec.d_ff, num_layers=spec.num_layers, num_decoder_layers=spec.num_layers,
                                     num_heads=spec.num_heads, feed_forward_proj="gated-gelu"))  # fmt: skip


def training_bytes(
    params: int, trainable: int, optimizer: str, zero_stage: int | None, processes: int
) -> dict:
    """Per process, the least memory of fp32 weights, their gradients and the optimizer's state (AdamW: two fp32
    moments; Adafactor's factored moments are left out), each divided over the processes where ZeRO partitions
    it (stage 1: the optimizer state, 2: and the gradients, 3: and the weights)."""
    stage = zero_stage or 0
    share = {part: 1 / processes if stage >= level else 1.0 for part, level in
             (("optimizer states", 1), ("gradients", 2), ("weights", 3))}  # fmt: skip
    return {
        "weights": 4 * params * share["weights"],
        "gradients": 4 * trainable * share["gradients"],
        "optimizer states": (8 * trainable if optimizer == "adamw" else 0) * share["optimizer states"],
    }


def on_gpu(parts: dict, zero: dict) -> dict:
    """The parts of `training_bytes` a GPU holds under the DeepSpeed `zero_optimization` section `zero`: its offload
    keeps the optimizer's side (the states and the gradients it steps on) or the weights in host memory or on NVMe."""
    offloaded = set()
    if (zero.get("offload_optimizer") or {}).get("device", "none") != "none":
        offloaded |= {"optimizer states", "gradients"}
    if (zero.get("offload_param") or {}).get("device", "none") != "none":
        offloaded.add("weights")
    return {part: size for part, size in parts.items() if part not in offloaded}


SPREAD = "use a smaller model, or spread it over more devices (ZeRO-3, launch/)"


def check_fits(what: str, params: int, parts: dict, processes: int, available: int | None,
               place: str = "this machine", where: Where | None = None, advice: str = SPREAD) -> None:  # fmt: skip
    """Refuse, naming the sizes, where `processes` processes each holding `parts` (bytes) exceed `available`
    (None: unknown, nothing is refused)."""
    need = processes * sum(parts.values())
    if available is None or need <= available:
        return
    detail = ", ".join(f"{name} {size / GB:,.1f}" for name, size in parts.items() if size)
    per = f" in each of {processes} processes" if processes > 1 else ""
    free = "memory and free swap" if place == "this machine" else "its memory"
    raise T2TError(f"{what}: {params / 1e9:,.2f}B parameters need at least {need / GB:,.1f} GB ({detail} GB{per}), "
                   f"and {place} has {available / GB:,.1f} GB available ({free}): {advice}", where)  # fmt: skip


def local_processes(accelerator: Any) -> int:
    """The processes of this run on this host (each holds its own share of the model)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def safetensors_parameters(folder: Path) -> int | None:
    """The values the top-level safetensors files of `folder` hold, from their headers alone (a few KB read per
    file); None where a file is not readable as safetensors (the loader then says why)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with file.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if not 2 <= size <= 100_000_000:  # safetensors caps its header at 100 MB
                    return None
                header = json.loads(handle.read(size))
            for name, entry in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in entry["shape"]:
                        count *= int(dim)
                    total += count
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
    return total


# transformers builds the model config.json describes, one module per layer, before it reads a weight: a config
# deeper than this (no published seq2seq model comes near) would stall the load itself
MAX_LAYERS = 1000


def check_model_loads(folder: Path) -> None:
    """A local model dir whose weights, in fp32 as t2t loads them, exceed what this machine has, or whose config.json
    describes a model deeper than MAX_LAYERS that its weights do not hold: refused before anything is built. Other
    disagreements between config and weights are the loader's to name, tensor by tensor."""
    weights = safetensors_parameters(folder)
    if weights:
        check_fits("cannot load model", weights, {"weights in fp32": 4 * weights}, 1, host_available(),
                   where=Where(file=str(folder)), advice="use a machine with more memory")  # fmt: skip
    try:  # the file as written first: a config of ordinary depth needs nothing more
        written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, or not JSON: the loader names the problem
        return
    if not isinstance(written, dict) or _layers(written.get) <= MAX_LAYERS:
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception:  # a config transformers cannot read: the loader names the problem
        return
    layers = _layers(lambda attr: getattr(config, attr, None))
    described = count_parameters(config)
    if described is not None and described > (weights or 0):
        raise T2TError(f"cannot load model: config.json describes a model of {layers:,} layers ({described / 1e9:,.2f}B "
                       f"parameters) and the weights hold {(weights or 0) / 1e6:,.2f}M: a config.json that is not "
                       "these weights'?", Where(file=str(folder)))  # fmt: skip


def _layers(get: Any) -> int:
    """The layers of every stack LAYER_COUNTS names, read with `get(attribute)`."""
    return sum(n for pair in LAYER_COUNTS for n in map(get, pair) if isinstance(n, int))
