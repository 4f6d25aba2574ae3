"""Training throughput of a T5 of t5-base size (random init, no hub) through t2t's own step: packed rows against
length-bucketed padding, in real tokens per second and model FLOPs utilisation; under DeepSpeed ZeRO-2 when launched
so. Written for a GPU (bf16); it runs on a CPU too (fp32, `--size tiny`), which is how it is kept working.

    python bench/gpu_throughput.py [--size base|tiny] [--profile demo|long-tail] [--max-tokens 16384] [--steps 30]
    accelerate launch --config_file launch/gpu_zero2.yaml --num_processes 1 bench/gpu_throughput.py [same options]

For each strategy (`auto`, which packs for a T5, and `padded`, bucketed by length) the script builds a `t2t.train.Run`
on the profile's mixture (`demo`: the demo mixture; `long-tail`: bench/train_throughput.py's, one example in ten
of 150-400 input and 20-60 target words), draws warm-up and timed batches from the real loader, and times
`Run.train_step` (forward, backward, clipping, optimizer, scheduler, every reduction) with the device synchronised
at both ends. The model is a T5 v1.1-base shape (d_model 768, 12 + 12 layers, 12 heads, d_ff 2,048, gated GELU,
vocabulary 32,128: 223M parameters) saved once with random weights and loaded by path; the tokenizer is trained on
the mixture (its ids are a subset of the vocabulary). Precision is the run's `auto`: bf16 autocast on a GPU.

Model FLOPs count the useful work of the real tokens only, in the standard way (Kaplan et al. 2020; PaLM, Chowdhery
et al. 2022, appendix B): 6 FLOPs per parameter per token for the dense layers, each part of the model times the
tokens it sees (the encoder's layers and the cross-attention's key and value projections the input tokens; the
decoder's other layers and the output layer the target tokens), plus 12 x layers x (heads x d_kv) FLOPs per
(query, key) pair of attention within each example (encoder, decoder and cross; the causal half not discounted).
Utilisation: model FLOPs per second over the device's dense bf16 peak (a table by device name, or `--peak-tflops`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import demo_tokenizer_dir

from t2t.batching import IGNORE
from t2t.mixtures import load_mixture
from t2t.registry import Registry
from t2t.tokenizer import load_tokenizer, mixture_texts, train_tokenizer
from t2t.train import Run
from t2t.train_config import TrainConfig

SIZES = {  # d_model, d_kv, d_ff, layers (each side), heads, vocabulary
    "base": (768, 64, 2048, 12, 12, 32128),  # T5 v1.1 base
    "tiny": (128, 32, 256, 2, 4, 2000),  # the demo's model: a CPU check of this script
}
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1),
                    ("A10G", 70.0), ("L4", 121.0))  # dense, no sparsity; first match of the device name  # fmt: skip
LIMITS = {"demo": (96, 24), "long-tail": (512, 64)}


def save_random_t5(size: str, tokenizer_dir: Path, out: Path) -> int:
    """A T5 of the given shape with random weights and the tokenizer, saved as a plain HF dir; its parameter count."""
    from transformers import T5Config, T5ForConditionalGeneration

    d_model, d_kv, d_ff, layers, heads, vocab = SIZES[size]
    tokenizer = load_tokenizer(tokenizer_dir)
    config = T5Config(vocab_size=max(vocab, len(tokenizer)), d_model=d_model, d_kv=d_kv, d_ff=d_ff,
                      num_layers=layers, num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def example_lengths(tensors: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Each example's real input and target token counts, from a padded or a packed batch."""
    labels = tensors["labels"].cpu().numpy()
    if "encoder_segment_ids" not in tensors:
        return tensors["attention_mask"].cpu().numpy().sum(1), (labels != IGNORE).sum(1)
    enc, dec = tensors["encoder_segment_ids"].cpu().numpy(), tensors["decoder_segment_ids"].cpu().numpy()
    inputs, targets = [], []
    for row in range(enc.shape[0]):
        ids = np.unique(enc[row][enc[row] > 0])
        inputs += [int((enc[row] == s).sum()) for s in ids]
        targets += [int(((dec[row] == s) & (labels[row] != IGNORE)).sum()) for s in ids]
    return np.array(inputs), np.array(targets)


def model_flops(tensors: dict[str, torch.Tensor], size: str, vocab: int) -> float:
    """Training FLOPs (forward and backward) of the batch's real tokens: see the module docstring."""
    d_model, d_kv, d_ff, layers, heads, _ = SIZES[size]
    inner = heads * d_kv
    inputs, targets = example_lengths(tensors)
    per_input_token = layers * (4 * d_model * inner + 3 * d_model * d_ff)  # encoder: attention + gated FF
    per_input_token += layers * 2 * d_model * inner  # the decoder's cross-attention keys and values
    per_target_token = (
        layers * (4 * d_model * inner + 2 * d_model * inner + 3 * d_model * d_ff) + d_model * vocab
    )
    dense = 6 * (per_input_token * inputs.sum() + per_target_token * targets.sum())
    pairs = (inputs**2).sum() + (targets**2).sum() + (inputs * targets).sum()
    return float(dense + 12 * layers * inner * pairs)


def peak_tflops(given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name()
    return next(((peak, name) for key, peak in PEAK_BF16_TFLOPS if key in name), (None, name))


def measure(args: argparse.Namespace, registry: Registry, mixture: str, model_dir: Path, strategy: str,
            out: Path) -> dict:  # fmt: skip
    """One strategy: warm-up, then the timed steps; its figures."""
    config = TrainConfig.model_validate({
        "run_dir": str(out / strategy), "mixture": mixture, "model": {"pretrained": str(model_dir)},
        "tokenizer": {"pretrained": str(model_dir)}, "max_input_tokens": LIMITS[args.profile][0],
        "max_target_tokens": LIMITS[args.profile][1], "steps": args.warmup + args.steps,
        "batching": {"strategy": strategy, "max_tokens": args.max_tokens, "batch_size": None},
        "optimizer": {"lr": 1e-4}, "trackers": [], "log_every_steps": 10_000, "save_every_steps": None,
    })  # fmt: skip
    run = Run(config, registry)
    loader = iter(run.loader)
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    vocab = run.accelerator.unwrap_model(run.model).model.config.vocab_size
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for batch in batches[: args.warmup]:
        run.train_step([batch])
        run.state.step += 1
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        run.train_step([batch])
        run.state.step += 1
    sync()
    seconds = time.perf_counter() - start
    timed = batches[args.warmup :]
    slots = sum(b.tensors["input_ids"].numel() + b.tensors["labels"].numel() for b in timed)
    real = sum(b.real_tokens for b in timed)
    flops = sum(model_flops(b.tensors, args.size, vocab) for b in timed)
    return {"strategy": strategy, "chosen": run.loader.config.strategy, "engine": run.accelerator.distributed_type.name,
            "precision": run.accelerator.mixed_precision, "steps": args.steps, "seconds": seconds,
            "real_tokens_per_s": real / seconds, "non_pad": real / slots, "model_tflops_per_s": flops / seconds / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--profile", choices=sorted(LIMITS), default="demo")
    parser.add_argument(
        "--max-tokens", type=int, default=16384, help="token slots per step (both strategies)"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--out", help="folder for the model and runs (default: a temporary one)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp())
    if args.profile == "demo":
        registry, mixture = Registry.default(), "demo"
        tokenizer_dir = demo_tokenizer_dir(None)
    else:
        from train_throughput import long_tail_mixture

        registry, mixture = long_tail_mixture(out / "long_tail"), "long_tail"
        names = load_mixture(registry, mixture).task_names
        tokenizer_dir = train_tokenizer(mixture_texts(registry, names, "train", 500), 2000, out / "tok")
    model_dir = out / f"t5-{args.size}-random"
    n_params = save_random_t5(args.size, tokenizer_dir, model_dir)
    peak, device = peak_tflops(args.peak_tflops)
    rows = [measure(args, registry, mixture, model_dir, strategy, out) for strategy in ("auto", "padded")]
    config = json.loads((model_dir / "config.json").read_text())
    print(f"\ndevice: {device}; torch {torch.__version__}; model: T5 {args.size} shape (d_model {config['d_model']}, "
          f"{config['num_layers']} + {config['num_decoder_layers']} layers, vocabulary {config['vocab_size']}, "
          f"{n_params / 1e6:.1f}M parameters); profile {args.profile}, "
          f"{args.max_tokens} token slots per step, {args.steps} timed steps after {args.warmup}")  # fmt: skip
    print(f"{'strategy':<8} {'chosen':<7} {'engine':<10} {'prec.':<5} {'non-pad':>7} {'real tok/s':>11} "
          f"{'model TFLOP/s':>13} {'MFU':>6} {'peak GiB':>8}")  # fmt: skip
    for row in rows:
        mfu = f"{row['model_tflops_per_s'] / peak:.1%}" if peak else "-"
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        print(f"{row['strategy']:<8} {row['chosen']:<7} {row['engine']:<10} {row['precision']:<5} "
              f"{row['non_pad']:>7.1%} {row['real_tokens_per_s']:>11,.0f} {row['model_tflops_per_s']:>13.2f} "
              f"{mfu:>6} {memory:>8}")  # fmt: skip
    print(
        f"packed / padded, real tokens per second: {rows[0]['real_tokens_per_s'] / rows[1]['real_tokens_per_s']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": device, "peak_tflops": peak, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
