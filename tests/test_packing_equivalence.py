"""Packed batches are exact for T5: the summed loss and the gradients equal those of the examples one by one."""

import pytest
import torch

from t2t.batching import Example, pack, packed_batch, pad_batch
from t2t.encoding import Limits, encode_task
from t2t.modeling import build_tiny_t5, loss_sums
from t2t.registry import Registry
from t2t.train_config import TinyModelSpec


def real_examples(tokenizer, tmp_path, n=24):
    registry = Registry.default()
    examples = []
    for task_index, name in enumerate(["color_lookup", "add_numbers", "reverse_words"]):
        encoded = encode_task(
            registry.task(name), "validation", tokenizer, Limits(48, 16), cache_dir=tmp_path
        )
        template = next(iter(encoded.templates.values()))
        examples += [Example(template.input_ids[i], template.labels[i], task_index) for i in range(n // 3)]
    return examples


def gradients(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_one_by_one(tiny_tokenizer, tmp_path, attention):
    examples = real_examples(tiny_tokenizer, tmp_path)
    model = build_tiny_t5(
        TinyModelSpec(d_model=32, num_layers=2, num_heads=2, d_ff=64), tiny_tokenizer, seed=0
    )
    model.set_attn_implementation(attention)
    rows = pack(examples, max_input_tokens=96, max_target_tokens=32)
    assert len(rows) < len(examples) / 2  # several examples per row: the test exercises packing

    packed = loss_sums(model, packed_batch(examples, rows, 96, 32), n_tasks=3)
    packed.loss.backward()
    packed_grad = gradients(model)

    model.zero_grad()
    singles = [loss_sums(model, pad_batch([e]), n_tasks=3) for e in examples]
    total = sum(s.loss for s in singles)
    total.backward()

    assert packed.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert packed.tokens.item() == sum(len(e.labels) for e in examples)
    assert torch.allclose(packed.task_loss, sum(s.task_loss for s in singles), rtol=1e-5)
    assert torch.allclose(packed_grad, gradients(model), atol=1e-5)


def test_without_the_masks_examples_contaminate_each_other(tiny_tokenizer, tmp_path):
    # The negative control: the same packed rows with plain padding masks give another loss.
    examples = real_examples(tiny_tokenizer, tmp_path)
    model = build_tiny_t5(
        TinyModelSpec(d_model=32, num_layers=2, num_heads=2, d_ff=64), tiny_tokenizer, seed=0
    )
    batch = packed_batch(examples, pack(examples, 96, 32), 96, 32)
    exact = loss_sums(model, batch, 3).loss.item()
    plain = dict(batch.tensors)
    plain["attention_mask"] = (plain.pop("encoder_segment_ids") > 0).long()
    plain.pop("decoder_segment_ids")
    contaminated = loss_sums(model, plain, 3).loss.item()
    assert abs(contaminated - exact) > 1e-3 * exact
