"""Models: a pretrained seq2seq checkpoint or a tiny T5 from a config; the forward pass for padded and packed
batches; token-summed losses with per-task sums.

Packed batches keep their examples apart in attention. T5 and mT5 attend within each segment through
`t2t.segment_attention` (the cost of the segments, not of the rows). Other models, or a packed batch without its
layout, get three 4-D additive masks: encoder self-attention within a segment, decoder self-attention within a
segment and causal, cross-attention from a decoder segment to the encoder segment of the same example. T5's
forward hands one `attention_mask` to both the encoder and cross-attention, so the encoder is run on its own first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from t2t import segment_attention
from t2t.batching import IGNORE, Batch
from t2t.errors import T2TError, Where, load_pretrained
from t2t.memory import check_model_loads
from t2t.train_config import TinyModelSpec


def build_tiny_t5(size: TinyModelSpec, tokenizer: Any, seed: int = 0):
    """A T5 v1.1-style model (gated GELU) of the given size, its vocabulary and special ids from the tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer), d_model=size.d_model, d_kv=size.d_model // size.num_heads, d_ff=size.d_ff,
        num_layers=size.num_layers, num_decoder_layers=size.num_layers, num_heads=size.num_heads,
        feed_forward_proj="gated-gelu", dropout_rate=size.dropout_rate, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


class GeluTanh(torch.nn.Module):
    """GELU's tanh approximation, `F.gelu(x, approximate="tanh")`: one kernel forward and one backward. The same
    function as transformers' `NewGELUActivation` (`gelu_new`: T5 v1.1, flan-t5, mT5), which composes it from
    eight elementwise operations and their backward; equal to it within float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_activations(model: Any) -> int:
    """Swap every `NewGELUActivation` in `model` for `GeluTanh`, the same function in one kernel (the composed
    one, forward and backward, takes about 8 % of a training step of the demo's T5 on a CPU in a profile, the fused
    one under half of that; over the whole loop the difference is within this machine's drift, docs/benchmarks.md).
    An activation holds no weights and the config is unchanged, so a saved checkpoint is the same
    plain HF model. Returns the count."""
    from transformers.activations import NewGELUActivation

    found = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is NewGELUActivation
    ]
    for parent, name in found:
        setattr(parent, name, GeluTanh())
    return len(found)


def load_model(name_or_dir: str | Path):
    """Any HF seq2seq checkpoint: a hub name or a local directory (e.g. a flan-t5 dir or a t2t checkpoint).

    Weights load from safetensors only (a pickle, `pytorch_model.bin`, can run code as it loads), and they must be
    the model config.json describes: a weight of another shape, or one the model has and the files lack (which
    transformers would fill with random values, scoring a model nobody trained), is refused in one line; tensors
    the model does not use are said on stderr. The model is in fp32, whatever dtype its files hold."""
    import sys

    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    path = Path(name_or_dir)
    # a whole model's dir, or a PEFT adapter's
    has_config = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    if path.is_dir() and has_config and not any(path.glob("*.safetensors*")):
        pickles = sorted(
            p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(pattern)
        )
        adapter = not (path / "config.json").is_file()
        convert = ("peft's PeftModel.from_pretrained(BASE_MODEL, DIR).save_pretrained(DIR) writes "
                   "adapter_model.safetensors" if adapter else
                   "AutoModelForSeq2SeqLM.from_pretrained(DIR).save_pretrained(DIR) writes model.safetensors")  # fmt: skip
        if pickles:
            raise T2TError(f"cannot load model: the dir holds {pickles[0]} (a pickle, which can run code as it "
                           f"loads) and no {'adapter_' if adapter else ''}model.safetensors: t2t loads weights only "
                           f"from safetensors; convert it once where you trust the file ({convert})",
                           Where(file=name_or_dir))  # fmt: skip
    if path.is_dir():
        check_model_loads(path)  # weights that cannot fit: one line, not the kernel's kill
    with _no_safetensors_conversion():
        try:
            # in fp32 whatever the files hold: transformers 5 keeps the saved dtype, so a bf16 or fp16 checkpoint
            # would be scored in it on a CPU (fp16 overflows in T5) and trained with half-precision weights and
            # optimizer states; bf16 on a GPU is the caller's cast, over fp32 weights
            model, info = load_pretrained(AutoModelForSeq2SeqLM, name_or_dir, "model", use_safetensors=True,
                                          output_loading_info=True, dtype=torch.float32)  # fmt: skip
        except T2TError as exc:
            if "Unrecognized configuration class" in exc.message:
                kind = getattr(load_pretrained(AutoConfig, name_or_dir, "model config"), "model_type", "?")
                raise T2TError(f"cannot load model: t2t trains and scores encoder-decoder (seq2seq) models, as T5, "
                               f"flan-t5, mT5 or BART; this config.json is a {kind} model's, which is not one",
                               exc.where) from None  # fmt: skip
            # a hub model without safetensors: transformers' own advice (not to ask for them) is not t2t's
            advice = "Please do not set `use_safetensors=True`"
            if advice not in exc.message:
                raise
            raise T2TError(exc.message.replace(advice, "t2t loads weights only from safetensors (a pickle can run "
                                               "code as it loads)"), exc.where) from None  # fmt: skip
        except RuntimeError as exc:
            if "mismatched" not in str(exc) and "size mismatch" not in str(exc):
                raise
            raise T2TError(
                f"cannot load model: {_first_mismatch(name_or_dir)}", Where(file=name_or_dir)
            ) from None
    params = dict(model.named_parameters())
    missing = sorted(key for key in info["missing_keys"] if key in params)
    if missing:
        raise T2TError(f"cannot load model: the weights lack {len(missing)} of the {len(params)} parameters "
                       f"config.json's model has ({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}): "
                       "a partial or torn copy, or a config.json that is not these weights'? (transformers would "
                       "fill them with random values)", Where(file=name_or_dir))  # fmt: skip
    unused = sorted(info["unexpected_keys"])
    if unused:
        print(f"warning: {name_or_dir}: the weights hold {len(unused)} tensors the model does not use "
              f"({', '.join(unused[:2])}{', ...' if len(unused) > 2 else ''}): does config.json describe these "
              "weights?", file=sys.stderr)  # fmt: skip
    if getattr(model.config, "decoder_start_token_id", None) is None and model.config.pad_token_id is None:
        # the decoder's first input: without either, every decoder pass would fail on it
        raise T2TError("cannot load model: config.json names no decoder_start_token_id and no pad_token_id, so the "
                       "decoder has no first token: set decoder_start_token_id (T5's is its pad id, 0; BART's its "
                       "end-of-sequence id, 2)", Where(file=name_or_dir))  # fmt: skip
    return model


def load_for_inference(
    model_dir: str | Path, device: str = "cpu", dtype: str = "fp32"
) -> tuple[Any, Any, int, int | None]:
    """A model dir as `t2t eval`, `predict` and `serve` take it: (model on `device` in `dtype`, its tokenizer, and the
    limits to encode with: those a t2t model was trained under, else the model's own, `checkpoint.model_limits`).
    The pair must match (`check_pairing`); a model trained with `sharing.mode=adapters` gets each task's adapter."""
    from t2t.adapters import load_adapters
    from t2t.checkpoint import model_limits
    from t2t.tokenizer import load_tokenizer

    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    check_pairing(model, tokenizer, model_dir, model_dir)
    load_adapters(model, Path(model_dir))
    max_input, max_target = model_limits(Path(model_dir), model, tokenizer)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model.to(device).eval(), tokenizer, max_input, max_target


def check_pairing(model: Any, tokenizer: Any, model_name: str | Path, tokenizer_name: str | Path) -> None:
    """Another model's tokenizer, refused before anything runs, naming both: one whose end-of-sequence id is not the
    model's (answers would run to the length budget), or with more tokens than the model has embedding rows (the
    first text holding an extra id fails deep in the embedding lookup, "index out of range in self")."""
    rows = model.get_input_embeddings().num_embeddings
    whose = "its tokenizer" if str(tokenizer_name) == str(model_name) else f"the tokenizer {tokenizer_name}"
    # generation stops at the model's end-of-sequence id, and t2t ends every sequence it trains on and scores with
    # the tokenizer's: another id and answers never end
    ends = getattr(model.generation_config, "eos_token_id", None)
    ends = getattr(model.config, "eos_token_id", None) if ends is None else ends
    ends = [ends] if isinstance(ends, int) else list(ends or [])
    if ends and tokenizer.eos_token_id not in ends:
        raise T2TError(f"{whose} ends sequences with {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) and the "
                       f"model with id {', '.join(map(str, ends))} (eos_token_id in its config): answers would not end "
                       "where training ends them; is the tokenizer another model's?", Where(file=str(model_name)))  # fmt: skip
    if len(tokenizer) <= rows:
        return
    raise T2TError(f"{whose} has {len(tokenizer):,} tokens but the model embeds {rows:,}: a text holding any of the "
                   f"{len(tokenizer) - rows:,} ids from {rows:,} up would fail inside the model; is the tokenizer "
                   "another model's?", Where(file=str(model_name)))  # fmt: skip


@contextlib.contextmanager
def _no_safetensors_conversion():
    """transformers, asked for safetensors of a hub model that has only a pickle, would start the hub's conversion
    service (and open a pull request on the model's repo): not something loading a model should do."""
    saved = os.environ.get("DISABLE_SAFETENSORS_CONVERSION")
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["DISABLE_SAFETENSORS_CONVERSION"]
        else:
            os.environ["DISABLE_SAFETENSORS_CONVERSION"] = saved


def _first_mismatch(name_or_dir: str | Path) -> str:
    """Which weight's shape differs between the safetensors files and the model config.json describes (built on
    the meta device: no memory, whatever the config says)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    generic = "the weights' shapes differ from those of the model config.json describes"
    try:
        config = AutoConfig.from_pretrained(str(name_or_dir))
        with torch.device("meta"):
            expected = {
                k: tuple(v.shape) for k, v in AutoModelForSeq2SeqLM.from_config(config).state_dict().items()
            }
        for file in sorted(Path(name_or_dir).glob("*.safetensors")):
            with safe_open(str(file), "pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    shape = tuple(weights.get_slice(key).get_shape())
                    if key in expected and shape != expected[key]:
                        return (f"{key} is {list(shape)} in {file.name}, {list(expected[key])} in the model "
                                f"config.json describes: a config.json that is not these weights'?")  # fmt: skip
    except Exception:
        # a detail for the message; the refusal stands without it
        return generic
    return generic


def packed_attention_masks(
    encoder_segment_ids: torch.Tensor, decoder_segment_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Additive (0 / most negative) masks of shape (batch, 1, queries, keys): encoder, decoder, cross."""
    enc, dec = encoder_segment_ids, decoder_segment_ids
    same_enc = enc[:, :, None] == enc[:, None, :]
    same_dec = dec[:, :, None] == dec[:, None, :]
    causal = torch.ones(dec.shape[1], dec.shape[1], dtype=torch.bool, device=dec.device).tril()
    cross = dec[:, :, None] == enc[:, None, :]
    # Padding (segment 0) sees only itself (or, across, the first encoder slot): no row without any key, no NaN.
    eye_enc = torch.eye(enc.shape[1], dtype=torch.bool, device=enc.device)
    eye_dec = torch.eye(dec.shape[1], dtype=torch.bool, device=dec.device)
    enc_allowed = torch.where((enc == 0)[:, :, None], eye_enc, same_enc & (enc != 0)[:, None, :])
    dec_allowed = torch.where((dec == 0)[:, :, None], eye_dec, same_dec & causal)
    first_key = torch.zeros_like(cross)
    first_key[:, :, 0] = True
    cross_allowed = torch.where((dec == 0)[:, :, None], first_key, cross & (enc != 0)[:, None, :])
    blocked = torch.finfo(dtype).min

    def additive(allowed: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zeros, torch.full((), blocked, dtype=dtype, device=allowed.device))[
            :, None
        ]

    return additive(enc_allowed), additive(dec_allowed), additive(cross_allowed)


def forward_logits(model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Decoder logits (batch, target length, vocab) for a padded or a packed batch."""
    if "encoder_segment_ids" not in tensors:
        return model(
            input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
            decoder_input_ids=tensors["decoder_input_ids"], use_cache=False,
        ).logits  # fmt: skip
    dtype = next(model.parameters()).dtype
    if segment_attention.has_layout(tensors) and segment_attention.supports(model):
        segment_attention.enable(model)
        layout = {segment_attention.NAME: segment_attention.SegmentLayout(tensors, dtype)}
        encoder = model.get_encoder()(input_ids=tensors["input_ids"], **layout)
        return model(
            encoder_outputs=encoder, decoder_input_ids=tensors["decoder_input_ids"], use_cache=False, **layout
        ).logits
    enc_mask, dec_mask, cross_mask = packed_attention_masks(
        tensors["encoder_segment_ids"], tensors["decoder_segment_ids"], dtype
    )
    encoder = model.get_encoder()(input_ids=tensors["input_ids"], attention_mask=enc_mask)
    return model(
        encoder_outputs=encoder, attention_mask=cross_mask, decoder_input_ids=tensors["decoder_input_ids"],
        decoder_attention_mask=dec_mask, use_cache=False,
    ).logits  # fmt: skip


@dataclass
class LossSums:
    """Summed token losses of a batch: total, and per task (losses and label-token counts)."""

    loss: torch.Tensor  # scalar, differentiable: the sum of task_loss
    tokens: torch.Tensor  # scalar count
    task_loss: torch.Tensor  # (n_tasks,), differentiable
    task_tokens: torch.Tensor  # (n_tasks,)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every label position (0 where the label is ignored), in float32."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).reshape(labels.shape)


def loss_sums(model: Any, batch: Batch | dict[str, torch.Tensor], n_tasks: int) -> LossSums:
    tensors = batch.tensors if isinstance(batch, Batch) else batch
    per_token = token_losses(forward_logits(model, tensors), tensors["labels"])
    task_ids = tensors["task_ids"]
    real = task_ids >= 0
    index = task_ids.clamp(min=0)[real]
    task_loss = torch.zeros(n_tasks, device=per_token.device).index_add(0, index, per_token[real])
    task_tokens = torch.zeros(n_tasks, device=per_token.device).index_add_(
        0, index, torch.ones_like(index, dtype=torch.float)
    )
    return LossSums(task_loss.sum(), real.sum(), task_loss, task_tokens)
