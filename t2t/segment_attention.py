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

The layout (which packed position goes to which block slot) is computed on the host when the batches are built
(`layouts_from_runs`, for a window's batches at once), travels with each batch's tensors, and is turned into
gather indices and masks once per forward (`SegmentLayout`), shared by every layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NAME = "t2t_segments"
PACKABLE = {"t5", "mt5", "umt5"}  # relative positions: packed segments need no position reset
PREFIX = "segments."  # keys of the layout tensors in a batch's tensors
# why a kind t2t does not pack cannot be packed (absolute positions, unless said here)
NOT_PACKABLE = {"longt5": "their local and transient-global attention is computed over fixed blocks of the whole "
                          "row, which a mask cannot confine to one packed example"}  # fmt: skip


def unpackable_reason(kind: str) -> str:
    """Why a model kind outside PACKABLE cannot train on packed rows."""
    return NOT_PACKABLE.get(kind, "they use absolute positions, which packing would shift")


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
    demo's batches, blocks within a factor of sqrt 2 made the training loop slower). k = ceil(log2 n), read off
    the float exponent of n - 1 (exact for integers; 0 for n <= 1)."""
    return np.frexp(np.maximum(lengths, 1) - 1)[1].astype(np.int64)


def _flat_slots(starts: np.ndarray, lengths: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment i's flat positions `starts[i] + 0 .. lengths[i] - 1`, then -1 up to `widths[i]`, every segment's
    run one after the other in one array (each block's (segments, width) slots are a slice of it); and where each
    segment's run begins."""
    ends = widths.cumsum()
    bases = ends - widths
    owner = np.arange(len(widths)).repeat(widths)
    offsets = np.arange(int(ends[-1]) if len(ends) else 0) - bases[owner]
    return np.where(offsets < lengths[owner], starts[owner] + offsets, -1), bases


KINDS = ("enc", "dec", "cross")


def layouts_from_runs(
    enc_runs: tuple, dec_runs: tuple, enc_batch: np.ndarray, dec_batch: np.ndarray, n_batches: int
) -> list[dict[str, np.ndarray]]:
    """The layouts of several batches at once (a window's), each as `layout_arrays` gives it, from each side's
    segments as `_runs` lists them: (row, segment id, flat start, length) arrays, in row then position order (a
    packed batch knows them as it places its examples). The rows are numbered across the batches, the flat
    starts within their batch; `enc_batch` / `dec_batch` name each segment's batch. Per batch, arrays cut from
    arrays built for all batches in a fixed number of operations."""
    enc_row, enc_id, enc_start, enc_len = enc_runs
    dec_row, dec_id, dec_start, dec_len = dec_runs
    # the encoder segment of each decoder segment: the same (row, id); packing numbers both sides alike, so the
    # runs line up one to one unless a segment is missing on one side
    if np.array_equal(enc_row, dec_row) and np.array_equal(enc_id, dec_id):
        pair = np.arange(len(dec_row))
    else:
        enc_of = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(enc_row, enc_id, strict=True))}
        missing = [
            (int(r), int(s)) for r, s in zip(dec_row, dec_id, strict=True) if (int(r), int(s)) not in enc_of
        ]
        if missing:
            row, segment = missing[0]
            raise ValueError(f"packed row {row}: segment {segment} has target tokens but no input tokens (an "
                             "example needs at least one input token, its EOS, to be packed)")  # fmt: skip
        pair = np.array(
            [enc_of[(int(r), int(s))] for r, s in zip(dec_row, dec_id, strict=True)], dtype=np.int64
        )
    # every segment of the three kinds in one list, blocked by (batch, kind, bucket of its key side's length):
    # the encoder's segments (queries and keys alike), the decoder's, and each decoder segment against its
    # encoder segment (cross blocks go by the encoder side, the longer one)
    counts = np.array([len(enc_len), len(dec_len), len(dec_len)])
    group = np.concatenate([enc_batch, dec_batch, dec_batch]) * 3 + np.arange(3).repeat(counts)
    q_start = np.concatenate([enc_start, dec_start, dec_start])
    q_len = np.concatenate([enc_len, dec_len, dec_len])
    k_start = np.concatenate([enc_start, dec_start, enc_start[pair]])
    k_len = np.concatenate([enc_len, dec_len, enc_len[pair]])
    key = group * 64 + _bucket(k_len)
    order = key.argsort(kind="stable")  # blocks ascending; segments in their order within one
    key, q_start, q_len, k_start, k_len = (a[order] for a in (key, q_start, q_len, k_start, k_len))
    change = np.ones(len(key), dtype=bool)
    change[1:] = key[1:] != key[:-1]
    firsts = change.nonzero()[0]  # each block's first segment
    per_block = np.diff(firsts, append=len(key))
    width_q, width_k = np.maximum.reduceat(q_len, firsts), np.maximum.reduceat(k_len, firsts)
    flat_q, bases_q = _flat_slots(q_start, q_len, width_q.repeat(per_block))
    flat_k, bases_k = _flat_slots(k_start, k_len, width_k.repeat(per_block))
    gather_q, gather_k = np.maximum(flat_q, 0), np.maximum(flat_k, 0)
    real = (flat_q >= 0).nonzero()[0]
    targets = flat_q[real]
    layouts: list[dict[str, np.ndarray]] = [{} for _ in range(n_batches)]
    groups = 3 * n_batches
    numbered = [0] * groups  # blocks so far per (batch, kind)
    # each (batch, kind)'s slots: [edges[g], edges[g + 1]); a group without segments ends where the one before does
    edges_q, edges_k = [0] * (groups + 1), [0] * (groups + 1)
    block_group = (key[firsts] // 64).tolist()
    sizes = zip(per_block.tolist(), width_q.tolist(), width_k.tolist(), strict=True)
    for g, bq, bk, (n, wq, wk) in zip(block_group, bases_q[firsts].tolist(), bases_k[firsts].tolist(), sizes,
                                      strict=True):  # fmt: skip
        batch, kind = divmod(g, 3)
        name = f"{PREFIX}{KINDS[kind]}.{numbered[g]}"
        layouts[batch][f"{name}.q"] = flat_q[bq : bq + n * wq].reshape(n, wq)
        layouts[batch][f"{name}.k"] = flat_k[bk : bk + n * wk].reshape(n, wk)
        numbered[g] += 1
        edges_q[g + 1], edges_k[g + 1] = bq + n * wq, bk + n * wk
    for g in range(1, groups + 1):
        edges_q[g], edges_k[g] = max(edges_q[g], edges_q[g - 1]), max(edges_k[g], edges_k[g - 1])
    real_edges = np.searchsorted(real, edges_q).tolist()  # each group's share of the real query slots
    for g in range(groups):
        batch, kind = divmod(g, 3)
        arrays, prefix = layouts[batch], f"{PREFIX}{KINDS[kind]}."
        arrays[f"{prefix}gather_q"] = gather_q[edges_q[g] : edges_q[g + 1]]
        arrays[f"{prefix}gather_k"] = gather_k[edges_k[g] : edges_k[g + 1]]
        arrays[f"{prefix}real"] = real[real_edges[g] : real_edges[g + 1]] - edges_q[g]
        arrays[f"{prefix}targets"] = targets[real_edges[g] : real_edges[g + 1]]
    return layouts


def layout_arrays(encoder_segment_ids: np.ndarray, decoder_segment_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The blocks of a packed batch, as int64 arrays named `segments.<kind>.<block>.<q|k>` (per block its query
    and key slots, (segments, width), -1 past a segment's end) and `segments.<kind>.<field>` (the gather indices
    of all blocks' queries and keys in one, so one gather serves every block; `real`, the query slots that hold a
    token; `targets`, their packed positions, where the outputs go, each exactly once). Kinds: `enc` and `dec`
    (self-attention: queries and keys are the same tokens) and `cross` (a decoder segment attends to the encoder
    segment of the same row and id; its blocks are formed by the encoder segment's length, the longer side).
    Every block of every kind is cut from one array built in a fixed number of operations, however many segments
    and blocks the batch has."""
    enc_runs, dec_runs = _runs(encoder_segment_ids), _runs(decoder_segment_ids)
    no_batch = np.zeros(len(enc_runs[0]), dtype=np.int64), np.zeros(len(dec_runs[0]), dtype=np.int64)
    return layouts_from_runs(enc_runs, dec_runs, *no_batch, 1)[0]


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
    # the encoder and decoder stacks hold copies of the config, which some transformers versions (5.17) leave at
    # the implementation they had: each attention reads its stack's copy
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", NAME) != NAME:
            config._attn_implementation = NAME
    model._t2t_segments = True
    from transformers.models.mt5.modeling_mt5 import MT5Attention
    from transformers.models.t5.modeling_t5 import T5Attention

    for module in model.modules():
        if isinstance(module, T5Attention | MT5Attention) and not getattr(module, "_t2t_segment_bias", False):
            module.register_forward_pre_hook(_bias_for_blocks, with_kwargs=True)
            module._t2t_segment_bias = True
