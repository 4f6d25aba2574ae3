"""Segment attention for packed rows (t2t.segment_attention): its layout on literal ids, its exactness (loss and
every gradient, the relative position bias's included, against each example alone), what it computes (matmul
FLOPs of the order of the segments, not the rows), and that the model stays a plain HF T5."""

import random

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from t2t import segment_attention
from t2t.batching import Example, pack, packed_batch, packed_batches, pad_batch
from t2t.modeling import loss_sums


def test_layout_golden():
    # Row 0 packs segments of 3, 2 (then padding) tokens; row 1 of 1 and 4. Lengths within a factor 2 share a
    # block: buckets ceil(log2 n): 1 -> 0, 2 -> 1, 3 -> 2, 4 -> 2. Flat positions: row 1 starts at 6.
    enc = np.array([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 2, 0]])
    dec = np.array([[1, 1, 2, 0], [1, 2, 2, 2]])  # decoder lengths 2, 1 | 1, 3; flat row 1 starts at 4
    arrays = segment_attention.layout_arrays(enc, dec)
    assert arrays["segments.enc.0.q"].tolist() == [[6]]
    assert arrays["segments.enc.1.q"].tolist() == [[3, 4]]
    assert arrays["segments.enc.2.q"].tolist() == [[0, 1, 2, -1], [7, 8, 9, 10]]
    assert arrays["segments.enc.gather_q"].tolist() == [6, 3, 4, 0, 1, 2, 0, 7, 8, 9, 10]
    assert arrays["segments.enc.real"].tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]  # slot 6 is padding
    assert arrays["segments.enc.targets"].tolist() == [6, 3, 4, 0, 1, 2, 7, 8, 9, 10]
    assert arrays["segments.dec.0.q"].tolist() == [[2], [4]]
    assert arrays["segments.dec.1.q"].tolist() == [[0, 1]]
    assert arrays["segments.dec.2.q"].tolist() == [[5, 6, 7]]
    # cross blocks by the encoder segment's length: (row 1, seg 1) has 1 encoder token; (row 0, seg 2) 2;
    # (row 0, seg 1) 3 and (row 1, seg 2) 4 share a block, their decoder slots padded to the longer (3)
    assert arrays["segments.cross.0.q"].tolist() == [[4]] and arrays["segments.cross.0.k"].tolist() == [[6]]
    assert arrays["segments.cross.1.q"].tolist() == [[2]] and arrays["segments.cross.1.k"].tolist() == [
        [3, 4]
    ]
    assert arrays["segments.cross.2.q"].tolist() == [[0, 1, -1], [5, 6, 7]]
    assert arrays["segments.cross.2.k"].tolist() == [[0, 1, 2, -1], [7, 8, 9, 10]]
    assert arrays["segments.cross.targets"].tolist() == [4, 2, 0, 1, 5, 6, 7]


def reference_layout(enc: np.ndarray, dec: np.ndarray) -> dict[str, list]:
    """The layout written out segment by segment: blocks by ceil(log2 length) ascending, segments in row then
    position order within a block, slots padded with -1 to the block's longest; cross blocks by the encoder side."""

    def segments(ids):  # (row, id) -> flat positions
        found = {}
        for r, row in enumerate(ids.tolist()):
            for c, s in enumerate(row):
                if s:
                    found.setdefault((r, s), []).append(r * ids.shape[1] + c)
        return found

    def bucket(n):
        return int(np.ceil(np.log2(max(n, 1))))

    def kind(name, pairs):  # pairs: (query positions, key positions, blocking length) in order
        out, flat_q, flat_k = {}, [], []
        for block, b in enumerate(sorted({bucket(n) for _, _, n in pairs})):
            chosen = [(q, k) for q, k, n in pairs if bucket(n) == b]
            wq, wk = max(len(q) for q, _ in chosen), max(len(k) for _, k in chosen)
            out[f"segments.{name}.{block}.q"] = [q + [-1] * (wq - len(q)) for q, _ in chosen]
            out[f"segments.{name}.{block}.k"] = [k + [-1] * (wk - len(k)) for _, k in chosen]
            flat_q += [x for row in out[f"segments.{name}.{block}.q"] for x in row]
            flat_k += [x for row in out[f"segments.{name}.{block}.k"] for x in row]
        out[f"segments.{name}.gather_q"] = [max(x, 0) for x in flat_q]
        out[f"segments.{name}.gather_k"] = [max(x, 0) for x in flat_k]
        out[f"segments.{name}.real"] = [i for i, x in enumerate(flat_q) if x >= 0]
        out[f"segments.{name}.targets"] = [x for x in flat_q if x >= 0]
        return out

    e, d = segments(enc), segments(dec)
    return (kind("enc", [(p, p, len(p)) for p in e.values()]) | kind("dec", [(p, p, len(p)) for p in d.values()])
            | kind("cross", [(p, e[key], len(e[key])) for key, p in d.items()]))  # fmt: skip


def test_layout_equals_the_segment_by_segment_reference_on_random_rows():
    rng = random.Random(0)
    for trial in range(200):
        rows, width_in, width_out = rng.randint(1, 4), rng.randint(8, 80), rng.randint(4, 40)
        enc, dec = np.zeros((rows, width_in), dtype=np.int64), np.zeros((rows, width_out), dtype=np.int64)
        for r in range(rows):
            at_in = at_out = 0
            for s in range(1, 30):
                n_in, n_out = rng.choice([1, 2, 3, 5, 9, 17, 33]), rng.randint(1, 9)
                if at_in + n_in > width_in or at_out + n_out > width_out:
                    break
                enc[r, at_in : at_in + n_in] = s
                at_in += n_in
                # one trial in four leaves some encoder segments without a decoder side (not what packing makes,
                # but the layout pairs by (row, id), not by order)
                if trial % 4 or rng.random() < 0.7:
                    dec[r, at_out : at_out + n_out] = s
                    at_out += n_out
        arrays = segment_attention.layout_arrays(enc, dec)
        assert {k: v.tolist() for k, v in arrays.items()} == reference_layout(enc, dec), trial


def test_packed_batches_carry_the_layout_of_their_segment_ids():
    # packed_batch builds the layout from the segments as it places them (layouts_from_runs); it must be the layout
    # that the batch's own segment ids give, for rows of every fill
    for seed in range(20):
        examples = varied_examples(60, seed)
        for width_in, width_out in ((80, 16), (160, 30), (400, 90)):
            rows = pack(examples, width_in, width_out)
            for chunk in (rows[:1], rows[:3], rows):
                batch = packed_batch(examples, chunk, width_in, width_out)
                expected = segment_attention.layout_arrays(
                    batch.tensors["encoder_segment_ids"].numpy(), batch.tensors["decoder_segment_ids"].numpy()
                )
                got = {k: v for k, v in batch.tensors.items() if k.startswith(segment_attention.PREFIX)}
                assert got.keys() == expected.keys()
                for name, array in expected.items():
                    assert got[name].dtype == torch.int64, name
                    assert got[name].tolist() == array.tolist(), (seed, name)
            # a window's batches built together (layouts computed for all at once) equal each built alone
            for per_batch in (1, 2, 3):
                chunks = [rows[i : i + per_batch] for i in range(0, len(rows), per_batch)]
                together = packed_batches(examples, chunks, width_in, width_out, 0, 1)
                assert len(together) == len(chunks)
                for chunk, batch in zip(chunks, together, strict=True):
                    alone = packed_batch(examples, chunk, width_in, width_out, 0, 1)
                    assert (batch.n_examples, batch.real_tokens, batch.total_tokens) == (
                        alone.n_examples, alone.real_tokens, alone.total_tokens)  # fmt: skip
                    assert batch.tensors.keys() == alone.tensors.keys()
                    for name, tensor in alone.tensors.items():
                        assert torch.equal(batch.tensors[name], tensor), (seed, per_batch, name)


def varied_examples(n: int = 40, seed: int = 0) -> list[Example]:
    """Inputs of 1 to 70 tokens (relative distances past T5's exact buckets), targets of 1 to 12, three tasks."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        n_in = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 70])
        n_out = rng.randint(1, 12)
        examples.append(
            Example(
                [rng.randint(3, 99) for _ in range(n_in)], [rng.randint(3, 99) for _ in range(n_out)], i % 3
            )
        )
    return examples


def tiny_model(**overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    config = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                  feed_forward_proj="gated-gelu", relative_attention_max_distance=32, pad_token_id=0,
                  decoder_start_token_id=0)  # fmt: skip
    config.update(overrides)
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**config))


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# the equality tests run on the GPU too where there is one (fp32 there as here)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU case runs where there is one"))]  # fmt: skip


def on(device: str, batch) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.tensors.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_packed_rows_through_segments_equal_each_example_alone(device):
    examples = varied_examples()
    model = tiny_model().to(device)
    rows = pack(examples, max_input_tokens=160, max_target_tokens=32)
    batch = packed_batch(examples, rows, 160, 32)
    assert max(len(r) for r in rows) >= 4 and segment_attention.has_layout(batch.tensors)

    packed = loss_sums(model, on(device, batch), n_tasks=3)
    packed.loss.backward()
    assert model.config._attn_implementation == segment_attention.NAME
    packed_grads = grads(model)
    model.zero_grad()
    singles = [loss_sums(model, on(device, pad_batch([e])), n_tasks=3) for e in examples]
    total = sum(s.loss for s in singles)
    total.backward()
    single_grads = grads(model)

    assert packed.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert torch.allclose(packed.task_loss, sum(s.task_loss for s in singles), rtol=1e-5)
    assert packed_grads.keys() == single_grads.keys()
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, single_grads[name], atol=2e-5), name
    for stack in ("encoder", "decoder"):  # the position bias's gradient: there, and the same
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        assert packed_grads[bias].abs().sum() > 0
        assert torch.allclose(packed_grads[bias], single_grads[bias], atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_segments_and_dense_masks_give_the_same_loss_and_gradients(device):
    examples = varied_examples(seed=1)
    model = tiny_model().to(device)
    batch = on(device, packed_batch(examples, pack(examples, 160, 32), 160, 32))
    dense = {k: v for k, v in batch.items() if not k.startswith(segment_attention.PREFIX)}
    a = loss_sums(model, batch, 3)
    a.loss.backward()
    via_segments = grads(model)
    model.zero_grad()
    b = loss_sums(model, dense, 3)
    b.loss.backward()
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-5)
    for name, grad in grads(model).items():
        assert torch.allclose(via_segments[name], grad, atol=2e-5), name


def test_enable_reaches_the_stacks_copies_of_the_config():
    # transformers 5.17's set_attn_implementation leaves the encoder's and decoder's copies of the config as they
    # were, and each attention reads its stack's copy: the packed forward then met SDPA with a row-wide mask
    examples = varied_examples(n=12, seed=3)
    model = tiny_model()
    segment_attention.enable(model)
    model.encoder.config._attn_implementation = "sdpa"  # the stacks as that version leaves them
    model.decoder.config._attn_implementation = "sdpa"
    model._t2t_segments = False
    batch = packed_batch(examples, pack(examples, 160, 32), 160, 32)
    packed = loss_sums(model, batch, 3).loss.item()
    attentions = [m for m in model.modules() if type(m).__name__ == "T5Attention"]
    assert len(attentions) == 6 and {m.config._attn_implementation for m in attentions} == {
        segment_attention.NAME
    }
    singles = sum(loss_sums(model, pad_batch([e]), 3).loss.item() for e in examples)
    assert packed == pytest.approx(singles, rel=1e-5)


def test_a_wrong_layout_changes_the_loss():
    # negative control: pairing decoder segments with the wrong encoder segments is seen in the loss
    examples = varied_examples(seed=2)
    model = tiny_model()
    batch = packed_batch(examples, pack(examples, 160, 32), 160, 32)
    exact = loss_sums(model, batch, 3).loss.item()
    tensors = dict(batch.tensors)
    tensors["segments.cross.gather_k"] = tensors["segments.cross.gather_k"].flip(0)
    assert abs(loss_sums(model, tensors, 3).loss.item() - exact) > 1e-3 * exact


def attention_flops(model, tensors) -> int:
    """Matmul FLOPs of batched matmuls (attention: scores and weighted values) in one forward."""
    with FlopCounterMode(display=False) as counter:
        loss_sums(model, tensors, 3)
    counts = counter.get_flop_counts()["Global"]
    return int(sum(v for op, v in counts.items() if "bmm" in str(op) or "baddbmm" in str(op)))


def test_attention_costs_the_segments_not_the_rows():
    # 1,024-token rows of short examples: the dense route computes row x row scores, segments what they hold
    examples = varied_examples(n=200, seed=3)
    examples = [Example(e.input_ids[:20], e.labels, e.task) for e in examples]
    model = tiny_model()
    batch = packed_batch(examples, pack(examples, 1024, 256), 1024, 256)
    dense = {k: v for k, v in batch.tensors.items() if not k.startswith(segment_attention.PREFIX)}
    segments_flops, dense_flops = attention_flops(model, batch.tensors), attention_flops(model, dense)
    # the exact sum over examples of (query length x key length), per attention kind, per layer, QK and PV
    per_pair = 2 * 2 * 4 * 8  # 2 FLOPs per multiply-add, 2 matmuls, 4 heads, d_kv 8
    exact = sum(
        len(e.input_ids) ** 2 + len(e.labels) ** 2 + len(e.labels) * len(e.input_ids) for e in examples
    )
    # 2 layers; a block pads its segments to its longest (at most 4x by construction, 1.3x on these lengths)
    assert exact * per_pair * 2 <= segments_flops <= 2 * exact * per_pair * 2
    assert segments_flops * 20 < dense_flops


def test_the_model_stays_a_plain_t5(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    examples = varied_examples(n=12, seed=4)
    model = tiny_model()
    reference = tiny_model()  # the same weights, never switched
    loss_sums(model, packed_batch(examples, pack(examples, 160, 32), 160, 32), 3)
    assert model.config._attn_implementation == segment_attention.NAME
    # a padded batch (no layout) goes to SDPA: the same logits as the untouched model
    padded = pad_batch(examples)
    assert torch.allclose(loss_sums(model, padded, 3).loss, loss_sums(reference, padded, 3).loss, rtol=1e-6)
    ids = torch.tensor([examples[0].input_ids])
    assert torch.equal(model.generate(ids, max_new_tokens=5), reference.generate(ids, max_new_tokens=5))
    model.save_pretrained(tmp_path)
    assert segment_attention.NAME not in (tmp_path / "config.json").read_text()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert torch.allclose(
        loss_sums(reloaded, padded, 3).loss, loss_sums(reference, padded, 3).loss, rtol=1e-6
    )


def test_an_example_without_input_tokens_is_refused_in_one_line():
    # t2t's encoding always ends an input with EOS; an example built by hand with no input tokens would leave a
    # decoder segment with nothing to attend to
    examples = varied_examples(6)
    examples[3] = Example([], [5, 6], 0)
    with pytest.raises(ValueError, match=r"^packed row 0: segment 4 has target tokens but no input tokens"):
        packed_batch(examples, pack(examples, 200, 40), 200, 40)
