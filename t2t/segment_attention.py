"""Attention for packed rows that costs what the examples cost: sum of segment length squared, not row length squared.

A packed row holds several examples; the dense route (`t2t.modeling.packed_attention_masks`) computes the full
L x L scores of every row and masks all pairs across examples away. Here the projections and the feed-forward layers
still run on the packed tokens (no padding there), but attention runs on the segments regrouped: the queries, keys
and values of every segment are gathered into blocks of segments of similar length (lengths within a factor of
2 share a block, padded to the block's longest), attended there with T5's relative position bias, and the outputs
scattered back to their packed positions.

It is exact: inside a segment the relative distances are those of the example alone, so the position bias is the
top-left corner of the row's bias (its gradient flows there), and a block's padding keys are masked out. The model
stays a plain HF T5: the function is registered through transformers' attention interface under the name
`t2t_segments` and used only when a forward passes a `t2t_segments` layout; every other call (generation, padded
batches) goes to transformers' SDPA attention, and the name is not written to a saved config.

The layout (which packed position goes to which block slot) is computed on the host when the batch is built
(`layout_tensors`), travels with the batch's tensors, and is turned into gather indices and masks once per forward
(`SegmentLayout`), shared by every layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NAME = "t2t_segments"
PACKABLE = {"t5", "mt5", "umt5"}  # relative positions: packed segments need no position reset
PREFIX = "segments."  # keys of the layout tensors in a batch's tensors


def _runs(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every segment of every row: (row, segment id, flat start, length), in row then position order."""
    cols = segment_ids.shape[1]
    flat = segment_ids.reshape(-1)
    change = np.ones(flat.shape[0], dtype=bool)
    change[1:] = flat[1:] != flat[:-1]
    change[::cols] = True  # a row starts a run even if the previous row ended with the same id
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, flat.shape[0]))
    keep = flat[starts] != 0  # padding runs
    starts, lengths = starts[keep], lengths[keep]
    return starts // cols, flat[starts], starts, lengths


def _bucket(lengths: np.ndarray) -> np.ndarray:
    """Lengths in (2^(k-1), 2^k] share bucket k: a block's padding at most quadruples a segment's attention, and
    a batch has few blocks (on a CPU each block's small matmuls cost more in overhead than its padding: on the
    demo's batches, blocks within a factor of sqrt 2 made the training loop slower)."""
    return np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)


def _flat_slots(starts: np.ndarray, lengths: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment i's flat positions `starts[i] + 0 .. lengths[i] - 1`, then -1 up to `widths[i]`, every segment's
    run one after the other in one array (each block's (segments, width) slots are a slice of it); and where each
    segment's run begins."""
    ends = np.cumsum(widths)
    bases = ends - widths
    owner = np.repeat(np.arange(len(widths)), widths)
    offsets = np.arange(int(ends[-1]) if len(ends) else 0) - bases[owner]
    return np.where(offsets < lengths[owner], starts[owner] + offsets, -1), bases


def _store(arrays: dict[str, np.ndarray], kind: str, blocks: np.ndarray, queries: tuple, keys: tuple) -> None:
    """One attention kind's arrays, segments given in block order (`blocks`: each segment's block, ascending):
    per block its query and key slots (segments, width), -1 past a segment's end; for the kind, the gather
    indices of all blocks' queries and keys in one (so one gather serves every block), the query slots that hold
    a token and their packed positions (where the outputs go, each exactly once). `queries` and `keys`: the
    `_flat_slots` runs and their begins, with each segment's width; the same tuple for self-attention."""
    (flat_q, bases_q, widths_q), (flat_k, bases_k, widths_k) = queries, keys
    firsts = np.flatnonzero(np.diff(blocks, prepend=-1))  # each block's first segment
    counts = np.diff(np.append(firsts, len(blocks)))
    for block, (first, count) in enumerate(zip(firsts.tolist(), counts.tolist(), strict=True)):
        for name, flat, bases, widths in (("q", flat_q, bases_q, widths_q), ("k", flat_k, bases_k, widths_k)):
            width = int(widths[first])
            arrays[f"{PREFIX}{kind}.{block}.{name}"] = flat[
                bases[first] : bases[first] + count * width
            ].reshape(count, width)
    real = np.flatnonzero(flat_q >= 0)
    arrays[f"{PREFIX}{kind}.gather_q"] = np.maximum(flat_q, 0)
    arrays[f"{PREFIX}{kind}.gather_k"] = (
        arrays[f"{PREFIX}{kind}.gather_q"] if keys is queries else np.maximum(flat_k, 0)
    )
    arrays[f"{PREFIX}{kind}.real"] = real
    arrays[f"{PREFIX}{kind}.targets"] = flat_q[real]


def _block_order(by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments in block order (blocks by `_bucket` of `by`, ascending; segments in their order within one) and
    each one's block."""
    buckets = _bucket(by)
    order = np.argsort(buckets, kind="stable")
    ordered = buckets[order]
    return order, np.cumsum(np.diff(ordered, prepend=ordered[:1]) != 0)


def _block_widths(lengths: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Each segment's block width: the longest of `lengths` in its block."""
    longest = np.zeros(int(blocks[-1]) + 1 if len(blocks) else 0, dtype=np.int64)
    np.maximum.at(longest, blocks, lengths)
    return longest[blocks]


def layout_arrays(encoder_segment_ids: np.ndarray, decoder_segment_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The blocks of a packed batch, as int64 arrays named `segments.<kind>.<field>` and
    `segments.<kind>.<block>.<q|k>` (see `_store`). Kinds: `enc` and `dec` (self-attention: queries and keys are
    the same tokens) and `cross` (a decoder segment attends to the encoder segment of the same row and id; its
    blocks are formed by the encoder segment's length, the longer side). Every block of a kind is cut from one
    array built in a fixed number of operations, however many segments and blocks the batch has."""
    arrays: dict[str, np.ndarray] = {}
    enc_row, enc_id, enc_start, enc_len = _runs(encoder_segment_ids)
    dec_row, dec_id, dec_start, dec_len = _runs(decoder_segment_ids)
    for kind, starts, lengths in (("enc", enc_start, enc_len), ("dec", dec_start, dec_len)):
        order, blocks = _block_order(lengths)
        widths = _block_widths(lengths[order], blocks)
        slots = (*_flat_slots(starts[order], lengths[order], widths), widths)
        _store(arrays, kind, blocks, slots, slots)
    # the encoder segment of each decoder segment: the same (row, id); packing numbers both sides alike, so the
    # runs line up one to one unless a segment is missing on one side
    if np.array_equal(enc_row, dec_row) and np.array_equal(enc_id, dec_id):
        pair = np.arange(len(dec_row))
    else:
        enc_of = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(enc_row, enc_id, strict=True))}
        pair = np.array(
            [enc_of[(int(r), int(s))] for r, s in zip(dec_row, dec_id, strict=True)], dtype=np.int64
        )
    order, blocks = _block_order(enc_len[pair])
    q_len, k_len = dec_len[order], enc_len[pair[order]]
    widths_q, widths_k = _block_widths(q_len, blocks), _block_widths(k_len, blocks)
    queries = (*_flat_slots(dec_start[order], q_len, widths_q), widths_q)
    keys = (*_flat_slots(enc_start[pair[order]], k_len, widths_k), widths_k)
    _store(arrays, "cross", blocks, queries, keys)
    return arrays


def layout_tensors(
    encoder_segment_ids: torch.Tensor, decoder_segment_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    arrays = layout_arrays(encoder_segment_ids.numpy(), decoder_segment_ids.numpy())
    return {
        name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)) for name, array in arrays.items()
    }


def has_layout(tensors: dict[str, torch.Tensor]) -> bool:
    return any(name.startswith(PREFIX) for name in tensors)


class _Blocks:
    """One attention kind of a batch: its blocks' shapes and masks, the gathers and the scatter of all blocks."""

    def __init__(self, fields: dict[str, torch.Tensor], causal: bool, dtype: torch.dtype) -> None:
        n_blocks = sum(1 for name in fields if name.endswith(".q"))
        self.shapes: list[tuple[int, int, int]] = []  # (segments, query width, key width) per block
        self.masks: list[torch.Tensor] = []  # additive, (segments, 1, 1 or query width, key width)
        for block in range(n_blocks):
            queries, keys = fields[f"{block}.q"], fields[f"{block}.k"]
            self.shapes.append((queries.shape[0], queries.shape[1], keys.shape[1]))
            allowed = (keys >= 0)[:, None, None, :]
            if causal:
                square = torch.ones(queries.shape[1], keys.shape[1], dtype=torch.bool, device=keys.device)
                allowed = allowed & square.tril()
            zero = torch.zeros((), dtype=dtype, device=keys.device)
            self.masks.append(torch.where(allowed, zero, torch.finfo(dtype).min))
        self.gather_q, self.gather_k = fields["gather_q"], fields["gather_k"]
        self.real, self.targets = fields["real"], fields["targets"]
        self.width = max((shape[2] for shape in self.shapes), default=1)  # the widest block's keys


class SegmentLayout:
    """A batch's blocks ready for the attention function: built once per forward, used by every layer."""

    def __init__(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        fields: dict[str, dict[str, torch.Tensor]] = {"enc": {}, "dec": {}, "cross": {}}
        for name, tensor in tensors.items():
            if name.startswith(PREFIX):
                kind, field = name[len(PREFIX) :].split(".", 1)
                fields[kind][field] = tensor
        self.enc = _Blocks(fields["enc"], False, dtype)
        self.dec = _Blocks(fields["dec"], True, dtype)
        self.cross = _Blocks(fields["cross"], False, dtype)

    def blocks_for(self, module: Any) -> _Blocks:
        if not module.is_decoder:
            return self.enc
        return self.dec if module.is_causal else self.cross


def segment_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, position_bias: torch.Tensor | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # fmt: skip
    """transformers' attention interface: query (batch, heads, Lq, d), key and value (batch, heads, Lk, d); returns
    (batch, Lq, heads, d). Without a `t2t_segments` layout, transformers' SDPA attention answers."""
    layout: SegmentLayout | None = kwargs.pop(NAME, None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            position_bias=position_bias, **kwargs,
        )  # fmt: skip
    batch, heads, q_len, dim = query.shape
    scaling = dim**-0.5 if scaling is None else scaling
    blocks = layout.blocks_for(module)
    sizes_q = [n * width_q for n, width_q, _ in blocks.shapes]
    sizes_k = [n * width_k for n, _, width_k in blocks.shapes]
    # one gather per projection serves every block (and its backward is one scatter)
    all_q = query.transpose(1, 2).reshape(-1, heads, dim).index_select(0, blocks.gather_q).split(sizes_q)
    all_k = key.transpose(1, 2).reshape(-1, heads, dim).index_select(0, blocks.gather_k).split(sizes_k)
    all_v = value.transpose(1, 2).reshape(-1, heads, dim).index_select(0, blocks.gather_k).split(sizes_k)
    cross = module.is_decoder and not module.is_causal  # T5 adds no position bias to cross-attention
    attended = []
    for (n, width_q, width_k), mask, q, k, v in zip(
        blocks.shapes, blocks.masks, all_q, all_k, all_v, strict=True
    ):
        q = q.view(n, width_q, heads, dim).transpose(1, 2)
        k = k.view(n, width_k, heads, dim).transpose(1, 2)
        v = v.view(n, width_k, heads, dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3))
        if scaling != 1.0:
            scores = scores * scaling
        if position_bias is not None and not cross:  # relative: the bias's top-left corner is the segment's
            scores = scores + position_bias[:, :, :width_q, :width_k]
        weights = F.softmax((scores + mask).float(), dim=-1).to(query.dtype)
        weights = F.dropout(weights, p=dropout, training=module.training)
        attended.append(torch.matmul(weights, v).transpose(1, 2).reshape(n * width_q, heads, dim))
    out = query.new_zeros(batch * q_len, heads, dim)  # padding positions keep 0: no real token reads them
    if attended:
        out.index_copy_(0, blocks.targets, torch.cat(attended).index_select(0, blocks.real))
    return out.view(batch, q_len, heads, dim), None


_registered = False


def register() -> None:
    """Make `t2t_segments` known to transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def supports(model: Any) -> bool:
    """T5 and mT5 attend through transformers' interface and share one relative position bias, computed in the first
    layer (umT5 computes one per layer, inside its attention: it keeps the dense masks)."""
    return getattr(getattr(model, "config", None), "model_type", None) in {"t5", "mt5"}


def _bias_for_blocks(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Before a T5 attention layer runs on a layout: hand it a position bias as wide as the widest block, not the
    row (T5 would compute a row x row bias in the first layer and pass it on to the others). Cross-attention has
    no bias; it gets a (1, heads, 1, 1) zero one instead of a row x row tensor of zeros."""
    layout = kwargs.get(NAME)
    if layout is None or kwargs.get("position_bias") is not None:
        return None
    device = module.q.weight.device
    if module.has_relative_attention_bias:
        width = layout.blocks_for(module).width
        bias = module.compute_bias(width, width, device=device)
    else:
        bias = torch.zeros((1, module.n_heads, 1, 1), dtype=module.q.weight.dtype, device=device)
    return args, {**kwargs, "position_bias": bias}


def enable(model: Any) -> None:
    """Route the model's attention through `segment_attention` (idempotent; the saved config is unchanged)."""
    if getattr(model, "_t2t_segments", False) and model.config._attn_implementation == NAME:
        return
    register()
    if model.config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    model._t2t_segments = True
    from transformers.models.mt5.modeling_mt5 import MT5Attention
    from transformers.models.t5.modeling_t5 import T5Attention

    for module in model.modules():
        if isinstance(module, T5Attention | MT5Attention) and not getattr(module, "_t2t_segment_bias", False):
            module.register_forward_pre_hook(_bias_for_blocks, with_kwargs=True)
            module._t2t_segment_bias = True
