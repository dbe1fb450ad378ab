"""Real torch models built from ldsim's architecture specs, with random weights (no downloads).

Each runner owns one model instance on one device and runs a step the way the spec's
operators describe it, one torch call per ldsim operator wherever torch has one (the per-op
functions below are also what :mod:`simulator.executor.profile` times, so a profile of this
machine prices exactly this code):

* :class:`CNNRunner` -- channels-last convolutions with folded batch norm (a bias), in-place
  ReLUs, residual adds, global average pool, classifier; ``run(samples)`` classifies a batch.
* :class:`EncoderRunner` -- a BERT-style encoder over a batch padded to its longest sequence
  (keys beyond a sequence's length masked); ``run(lengths)``.
* :class:`RecommendationRunner` -- a DLRM: bottom MLP, one fused embedding bag over all
  tables, pairwise-dot interaction, top MLP; ``run(samples)``.
* :class:`DecoderRunner` -- a Llama-style decoder with a real KV cache: every token of an
  iteration (prompt chunks and one token per decoding sequence) goes through the dense layers
  together; attention runs per sequence over that sequence's cached keys and values;
  ``step(items, release)`` returns the token each emitting sequence produced (greedy argmax),
  which becomes its next input.

KV cache: one tensor per layer of ``slots x context`` token rows (``[rows, 2, kv_heads,
head_dim]``), a sequence occupying one slot of ``max_context_tokens`` rows from its first
step until it finishes or is preempted; the pool doubles when more sequences run at once than
it has slots. Appending an iteration's keys and values is one ``index_copy_`` per layer.
Block accounting (how many blocks, admission, preemption) is the simulator's, done by the
coordinator; this is where the keys and values physically live.

Weights are drawn from a ``torch.Generator`` seeded by the caller, scaled by ``1/sqrt(fan_in)``
so activations stay finite; inputs (images, token ids, dense features, lookups) are random,
drawn once at build time for the largest batch and sliced per step, as a server hands its
model a batch already in memory. This module imports torch; it is imported only by executor
workers and the profiler.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from simulator.models import CNN, Architecture, Decoder, Encoder, Recommendation

__all__ = [
    "CNNRunner",
    "DecoderRunner",
    "EncoderRunner",
    "RecommendationRunner",
    "StepItem",
    "build_runner",
    "torch_dtype",
]

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of an ldsim dtype name (fp32, bf16, fp16)."""
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"the executor runs fp32, bf16 or fp16, not '{dtype}'") from None


class _Init:
    """Random parameters from one seeded generator (on the CPU, then moved)."""

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device
        self.dtype = dtype

    def weight(self, *shape: int, fan_in: int | None = None) -> torch.Tensor:
        fan = fan_in if fan_in is not None else shape[-1]
        w = torch.randn(shape, generator=self.gen) * fan**-0.5
        return w.to(device=self.device, dtype=self.dtype)

    def ones(self, n: int) -> torch.Tensor:
        return torch.ones(n, device=self.device, dtype=self.dtype)

    def zeros(self, n: int) -> torch.Tensor:
        return torch.zeros(n, device=self.device, dtype=self.dtype)

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.gen).to(self.device)


# ---- CNN ------------------------------------------------------------------------------------


class CNNRunner:
    """A ResNet-style CNN from a :class:`~simulator.models.CNN` spec.

    The convolutions are grouped into blocks by name (``stem``; ``<block>.conv1``,
    ``.conv2``, ``.conv3``, ``.downsample``): a block's convolutions run in order with a ReLU
    after each but the last, then the shortcut (projected by ``downsample`` when present) is
    added and a ReLU follows. A spec that is not a :class:`~simulator.small_models.SmallCNN`
    (ResNet-50) runs the same way.
    """

    def __init__(self, arch: CNN, dtype: str, device: torch.device, seed: int, max_samples: int) -> None:
        dt = torch_dtype(dtype)
        init = _Init(seed, device, dt)
        cl = torch.channels_last
        self.convs: dict[str, tuple[torch.Tensor, torch.Tensor, int, int]] = {}
        for c in arch.convs:
            w = init.weight(c.cout, c.cin, c.k, c.k, fan_in=c.cin * c.k * c.k).contiguous(memory_format=cl)
            self.convs[c.name] = (w, init.zeros(c.cout), c.stride, c.k // 2)
        self.blocks: list[str] = []
        for c in arch.convs:
            block = c.name.rsplit(".", 1)[0] if "." in c.name else c.name
            if block not in self.blocks:
                self.blocks.append(block)
        self.fc_w = init.weight(arch.fc_out, arch.fc_in)
        self.fc_b = init.zeros(arch.fc_out)
        first = arch.convs[0]
        self.inputs = (
            torch.randn((max_samples, first.cin, first.h, first.w), generator=init.gen)
            .to(device=device, dtype=dt)
            .contiguous(memory_format=cl)
        )
        self.max_samples = max_samples
        self.first_h: dict[str, int] = {}
        for c in arch.convs:
            block = c.name.rsplit(".", 1)[0] if "." in c.name else c.name
            self.first_h.setdefault(block, c.w)
        self.blocks_with_adds = [b for b in self.blocks if b not in self.convs]
        self.pools = len(arch.pools)
        self.pool_index = 0
        self.relu_ops = bool(getattr(arch, "activations", None))
        #: When set, called with each ldsim operator's name right after the operator ran (the
        #: profiler times operators inside the real forward pass this way).
        self.mark: Callable[[str], None] | None = None

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, b, stride, pad = self.convs[name]
        return F.conv2d(x, w, b, stride=stride, padding=pad)

    def run(self, samples: int) -> list[int]:
        """Classify ``samples`` images; return each one's class."""
        mark = self.mark
        x = self.inputs[:samples]
        relu = 0
        for block in self.blocks:
            if block in self.convs:  # a lone convolution (the stem)
                x = self._conv(block, x)
                if mark:
                    mark(block)
                x = x.relu_()
                if mark and self.relu_ops:
                    mark(f"relu{relu}")
                relu += 1
                continue
            if x.shape[-1] != self.first_h[block]:  # ResNet-50's max pool between the stem and the blocks
                x = F.max_pool2d(x, 3, 2, 1)
                if mark:
                    mark(f"pool{self.pool_index}")
            out = x
            convs = [f"{block}.conv{i}" for i in range(1, 4) if f"{block}.conv{i}" in self.convs]
            for i, name in enumerate(convs):
                out = self._conv(name, out)
                if mark:
                    mark(name)
                if i < len(convs) - 1:
                    out = out.relu_()
                    if mark and self.relu_ops:
                        mark(f"relu{relu}")
                    relu += 1
            if f"{block}.downsample" in self.convs:
                shortcut = self._conv(f"{block}.downsample", x)
                if mark:
                    mark(f"{block}.downsample")
            else:
                shortcut = x
            x = torch.add(out, shortcut)
            if mark:
                mark(f"add{self.blocks_with_adds.index(block)}")
            x = x.relu_()
            if mark and self.relu_ops:
                mark(f"relu{relu}")
            relu += 1
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if mark:
            mark(f"pool{self.pools - 1}")
        out_classes: list[int] = F.linear(pooled, self.fc_w, self.fc_b).argmax(1).tolist()
        if mark:
            mark("fc")
        return out_classes


# ---- encoder --------------------------------------------------------------------------------


def encoder_attention(
    qkv: torch.Tensor, batch: int, seq: int, heads: int, head_dim: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Bidirectional attention of a padded batch from its fused QKV projection ``[batch*seq,
    3*heads*head_dim]``; returns ``[batch*seq, heads*head_dim]``. ``mask`` (``[batch, 1, 1,
    seq]``, True = attend) hides the padding keys."""
    q, k, v = qkv.view(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch * seq, heads * head_dim)


def padding_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor | None:
    """The key mask of a batch padded to ``seq`` (``None`` when no sequence is shorter)."""
    if int(lengths.min()) == seq:
        return None
    positions = torch.arange(seq, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).view(-1, 1, 1, seq)


def add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Residual add then LayerNorm (post-norm BERT): ``norm`` variant ``add_layer_norm``."""
    return F.layer_norm(torch.add(x, residual), (x.shape[-1],), weight, bias, eps)


class EncoderRunner:
    """A BERT-style encoder from an :class:`~simulator.models.Encoder` spec (post-norm, GELU,
    learned positions, the pooler on the first token)."""

    def __init__(self, arch: Encoder, dtype: str, device: torch.device, seed: int, max_samples: int) -> None:
        dt = torch_dtype(dtype)
        init = _Init(seed, device, dt)
        h, f = arch.hidden, arch.ffn
        self.h, self.heads, self.hd = h, arch.heads, h // arch.heads
        self.word = init.weight(arch.vocab, h, fan_in=1)
        self.positions = init.weight(arch.max_positions, h, fan_in=1) + init.weight(1, h, fan_in=1)  # + token type 0
        self.layers = [
            {
                "qkv": init.weight(3 * h, h),
                "qkv_b": init.zeros(3 * h),
                "o": init.weight(h, h),
                "o_b": init.zeros(h),
                "ln1_w": init.ones(h),
                "ln1_b": init.zeros(h),
                "up": init.weight(f, h),
                "up_b": init.zeros(f),
                "down": init.weight(h, f),
                "down_b": init.zeros(h),
                "ln2_w": init.ones(h),
                "ln2_b": init.zeros(h),
            }
            for _ in range(arch.layers)
        ]
        self.pool_w = init.weight(h, h)
        self.pool_b = init.zeros(h)
        self.ids = init.randint(arch.vocab, (max_samples, arch.max_positions))
        self.max_samples = max_samples
        self.device = device
        self.mark: Callable[[str], None] | None = None  # see CNNRunner.mark

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings plus position (and token type) embeddings: ``embedding`` variant
        ``bert_embeddings``; ``ids`` is ``[batch, seq]``."""
        b, s = ids.shape
        x = F.embedding(ids, self.word)
        return torch.add(x, self.positions[:s]).view(b * s, self.h)

    def run(self, lengths: Sequence[int]) -> list[float]:
        """Encode a batch of sequences of ``lengths`` tokens padded to the longest; return the
        first value of each pooled output."""
        mark = self.mark
        b, s = len(lengths), max(lengths)
        x = self.embed(self.ids[:b, :s])
        mask = padding_mask(torch.tensor(lengths, device=self.device), s)
        if mark:
            mark("embeddings")
        for p in self.layers:
            qkv = F.linear(x, p["qkv"], p["qkv_b"])
            if mark:
                mark("qkv_proj")
            attn = encoder_attention(qkv, b, s, self.heads, self.hd, mask)
            if mark:
                mark("attention")
            out = F.linear(attn, p["o"], p["o_b"])
            if mark:
                mark("out_proj")
            x = add_layer_norm(out, x, p["ln1_w"], p["ln1_b"])
            if mark:
                mark("add_norm")
            up = F.linear(x, p["up"], p["up_b"])
            if mark:
                mark("ffn_up")
            up = F.gelu(up)
            if mark:
                mark("gelu")
            down = F.linear(up, p["down"], p["down_b"])
            if mark:
                mark("ffn_down")
            x = add_layer_norm(down, x, p["ln2_w"], p["ln2_b"])
            if mark:
                mark("add_norm")
        pooled = F.linear(x.view(b, s, self.h)[:, 0], self.pool_w, self.pool_b)
        first: list[float] = pooled[:, 0].tolist()
        if mark:
            mark("pooler")
        return first


# ---- DLRM -----------------------------------------------------------------------------------


class RecommendationRunner:
    """A DLRM from a :class:`~simulator.models.Recommendation` spec (ReLU MLPs, one fused
    embedding bag whose table ``t`` starts at row ``sum(rows[:t])``, pairwise dots of the
    dense vector and the embeddings, lower triangle gathered, sigmoid output)."""

    def __init__(self, arch: Recommendation, dtype: str, device: torch.device, seed: int, max_samples: int) -> None:
        dt = torch_dtype(dtype)
        init = _Init(seed, device, dt)
        d = arch.embedding_dim
        self.d = d
        self.tables = len(arch.table_rows)
        self.weight = torch.empty((sum(arch.table_rows), d), device=device, dtype=dt).uniform_(
            -0.05, 0.05, generator=init.gen if device.type == "cpu" else None
        )
        dims = [arch.dense_features, *arch.bottom_mlp]
        self.bottom = [(init.weight(o, i), init.zeros(o)) for i, o in itertools.pairwise(dims)]
        dims = [arch.interaction_width, *arch.top_mlp]
        self.top = [(init.weight(o, i), init.zeros(o)) for i, o in itertools.pairwise(dims)]
        n = self.tables + 1
        rows, cols = torch.tril_indices(n, n, offset=-1, device=device)
        self.triangle = rows * n + cols
        self.dense = torch.randn((max_samples, arch.dense_features), generator=init.gen).to(device=device, dtype=dt)
        base = torch.tensor([0, *itertools.accumulate(arch.table_rows)][:-1])
        lookups = arch.lookups_per_table
        cols_idx = [
            torch.randint(0, rows_t, (max_samples, lookups), generator=init.gen) + b_t
            for rows_t, b_t in zip(arch.table_rows, base.tolist(), strict=True)
        ]
        self.indices = torch.stack(cols_idx, dim=1).reshape(-1).to(device)  # query-major bags
        self.lookups = lookups
        self.offsets = (torch.arange(max_samples * self.tables) * lookups).to(device)
        self.max_samples = max_samples
        self.mark: Callable[[str], None] | None = None  # see CNNRunner.mark

    def run(self, samples: int) -> list[float]:
        """Score ``samples`` queries; return each one's click probability."""
        mark = self.mark
        b, n = samples, self.tables + 1
        x = self.dense[:b]
        for i, (w, bias) in enumerate(self.bottom):
            x = F.linear(x, w, bias).relu_()
            if mark:
                mark(f"mlp{i}")
        per = self.tables * self.lookups
        emb = F.embedding_bag(self.indices[: b * per], self.weight, self.offsets[: b * self.tables], mode="sum")
        if mark:
            mark("embedding_bag")
        t = torch.cat([x.unsqueeze(1), emb.view(b, self.tables, self.d)], dim=1)
        z = torch.bmm(t, t.transpose(1, 2)).view(b, n * n).index_select(1, self.triangle)
        y = torch.cat([x, z], dim=1)
        if mark:
            mark("interaction")
        for i, (w, bias) in enumerate(self.top):
            y = F.linear(y, w, bias)
            if i < len(self.top) - 1:
                y = y.relu_()
                if mark:
                    mark(f"mlp{len(self.bottom) + i}")
        out: list[float] = torch.sigmoid(y[:, 0]).tolist()
        if mark:
            mark(f"mlp{len(self.bottom) + len(self.top) - 1}")
        return out


# ---- decoder --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepItem:
    """One sequence's share of a decoder iteration.

    ``request_id`` names the sequence; ``prompt_tokens`` its prompt length (random prompt
    token ids are drawn for it on first sight); ``start`` the first position this step
    computes (its cached tokens); ``tokens`` how many positions it computes (a prompt chunk, or
    1 for a decode step); ``emit`` whether the step samples its next token (its prefill ends
    here, or it is decoding).
    """

    request_id: int
    prompt_tokens: int
    start: int
    tokens: int
    emit: bool


def rope_(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, freqs: torch.Tensor) -> None:
    """Rotary position embedding applied in place to the Q and K parts of a fused QKV
    projection ``[tokens, (heads + 2*kv_heads)*head_dim]``; ``freqs`` holds each token's
    complex rotations ``[tokens, 1, head_dim/2]``: ``elementwise`` variant ``rope``."""
    t = qkv.shape[0]
    qk = qkv.view(t, heads + 2 * kv_heads, head_dim // 2, 2)[:, : heads + kv_heads]
    if qkv.dtype == torch.float32:
        torch.view_as_complex(qk).mul_(freqs)
    else:  # no complex half type: rotate a float32 copy
        qk.copy_(torch.view_as_real(torch.view_as_complex(qk.float()) * freqs))


def silu_mul(gate_up: torch.Tensor, ffn: int) -> torch.Tensor:
    """SwiGLU's activation on a fused gate/up projection: ``elementwise`` variant ``act``."""
    return F.silu(gate_up[:, :ffn]) * gate_up[:, ffn:]


def decode_attention(
    qkv: torch.Tensor,
    cache: torch.Tensor,
    rows: Sequence[tuple[int, int]],
    heads: int,
    head_dim: int,
) -> list[torch.Tensor]:
    """Attention of decoding sequences, one query each, over their cached keys and values.

    ``qkv`` holds the decoding sequences' rows first (row ``i`` for sequence ``i``); ``rows[i]``
    is ``(first cache row, keys)`` of sequence ``i`` in ``cache`` (``[rows, 2, kv_heads,
    head_dim]``). Returns each sequence's output as ``[1, heads*head_dim]``."""
    n = len(rows)
    q_all = qkv[:n, : heads * head_dim].view(n, heads, 1, head_dim)
    outs = []
    for i, (first, keys) in enumerate(rows):
        kv = cache[first : first + keys].permute(1, 2, 0, 3)  # [2, kv_heads, keys, head_dim]
        out = F.scaled_dot_product_attention(q_all[i : i + 1], kv[0:1], kv[1:2])
        outs.append(out.view(1, heads * head_dim))
    return outs


def prefill_attention(
    q: torch.Tensor, cache: torch.Tensor, first: int, past: int, heads: int, head_dim: int, mask_fn: Any
) -> torch.Tensor:
    """Causal attention of one sequence's ``q`` (``[tokens, heads*head_dim]``, a view of the
    QKV projection) over its ``past`` cached tokens and its new ones (already appended at cache
    row ``first + past`` on); returns ``[tokens, heads*head_dim]``."""
    tokens = q.shape[0]
    keys = past + tokens
    kv = cache[first : first + keys].permute(1, 2, 0, 3)
    qh = q.view(tokens, heads, head_dim).transpose(0, 1).unsqueeze(0)
    if past == 0:
        out = F.scaled_dot_product_attention(qh, kv[0:1], kv[1:2], is_causal=True)
    else:
        out = F.scaled_dot_product_attention(qh, kv[0:1], kv[1:2], attn_mask=mask_fn(tokens, keys, q.device))
    return out[0].transpose(0, 1).reshape(tokens, heads * head_dim)


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """Boolean mask letting query ``i`` of ``q_len`` new tokens see keys ``0 .. kv_len - q_len
    + i`` (aligned bottom-right)."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


class DecoderRunner:
    """A Llama-style decoder with a real KV cache (see the module docstring)."""

    def __init__(self, arch: Decoder, dtype: str, device: torch.device, seed: int, slots: int = 8) -> None:
        dt = torch_dtype(dtype)
        init = _Init(seed, device, dt)
        h, f = arch.hidden, arch.ffn
        self.arch = arch
        self.h, self.f = h, f
        self.heads, self.kv_heads, self.hd = arch.heads, arch.kv_heads, arch.head_dim
        self.vocab = arch.vocab
        self.context = arch.max_context_tokens
        qkv = (self.heads + 2 * self.kv_heads) * self.hd
        self.embedding = init.weight(arch.vocab, h, fan_in=1)
        self.layers = [
            {
                "in_norm": init.ones(h),
                "qkv": init.weight(qkv, h),
                "o": init.weight(h, self.heads * self.hd),
                "post_norm": init.ones(h),
                "gate_up": init.weight(2 * f, h),
                "down": init.weight(h, f),
            }
            for _ in range(arch.layers)
        ]
        self.final_norm = init.ones(h)
        self.lm_head = init.weight(arch.vocab, h)
        angles = torch.outer(
            torch.arange(self.context, dtype=torch.float32),
            10000.0 ** (-torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd),
        )
        self.freqs = torch.polar(torch.ones_like(angles), angles).to(device)
        self.device = device
        self.dtype = dt
        self._gen = init.gen
        self.cache = [self._new_cache(slots) for _ in self.layers]
        self.slots = slots
        self.free = list(range(slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}
        self.tokens: dict[int, list[int]] = {}
        self.mark: Callable[[str], None] | None = None  # see CNNRunner.mark

    def _new_cache(self, slots: int) -> torch.Tensor:
        return torch.zeros((slots * self.context, 2, self.kv_heads, self.hd), device=self.device, dtype=self.dtype)

    def _grow(self) -> None:
        """Double the slots of every layer's cache (keeping what is stored)."""
        old = self.slots
        for i, cache in enumerate(self.cache):
            bigger = self._new_cache(2 * old)
            bigger[: old * self.context].copy_(cache)
            self.cache[i] = bigger
        self.free = list(range(2 * old - 1, old - 1, -1)) + self.free
        self.slots = 2 * old

    def release(self, request_id: int, forget: bool) -> None:
        """Free a sequence's KV slot; ``forget`` also drops its tokens (it finished), otherwise
        they are kept for its recomputation after a preemption."""
        slot = self.slot_of.pop(request_id, None)
        if slot is not None:
            self.free.append(slot)
        if forget:
            self.tokens.pop(request_id, None)

    def _slot(self, request_id: int) -> int:
        slot = self.slot_of.get(request_id)
        if slot is None:
            if not self.free:
                self._grow()
            slot = self.slot_of[request_id] = self.free.pop()
        return slot

    def step(self, items: Sequence[StepItem], n_decode: int) -> list[int]:
        """Run one iteration; return the token sampled for each emitting item, in order.

        The first ``n_decode`` items are decoding sequences (one token each, attended by
        :func:`decode_attention`); the others prefill a chunk of their prompt."""
        if not items:
            return []
        ids: list[int] = []
        positions: list[int] = []
        dest: list[int] = []
        firsts: list[int] = []
        for item in items:
            toks = self.tokens.get(item.request_id)
            if toks is None:
                toks = self.tokens[item.request_id] = torch.randint(
                    0, self.vocab, (item.prompt_tokens,), generator=self._gen
                ).tolist()
            first = self._slot(item.request_id) * self.context
            firsts.append(first)
            end = item.start + item.tokens
            ids.extend(toks[item.start : end])
            positions.extend(range(item.start, end))
            dest.extend(range(first + item.start, first + end))
        t = len(ids)
        dev = self.device
        ids_t = torch.tensor(ids, device=dev)
        pos_t = torch.tensor(positions, device=dev)
        dest_t = torch.tensor(dest, device=dev)
        freqs = self.freqs.index_select(0, pos_t).view(t, 1, self.hd // 2)
        n_dec = n_decode
        dec_rows = [(firsts[i], items[i].start + 1) for i in range(n_dec)]
        emit_rows: list[int] = []
        row = 0
        for item in items:
            row += item.tokens
            if item.emit:
                emit_rows.append(row - 1)
        h, heads, kvh, hd, f = self.h, self.heads, self.kv_heads, self.hd, self.f
        mark = self.mark
        x = F.embedding(ids_t, self.embedding)
        if mark:
            mark("embedding")
        for p, cache in zip(self.layers, self.cache, strict=True):
            x_norm = F.rms_norm(x, (h,), p["in_norm"], 1e-6)
            if mark:
                mark("input_norm")
            qkv = F.linear(x_norm, p["qkv"])
            if mark:
                mark("qkv_proj")
            rope_(qkv, heads, kvh, hd, freqs)
            if mark:
                mark("rope")
            cache.index_copy_(0, dest_t, qkv[:, heads * hd :].view(t, 2, kvh, hd))
            if mark:
                mark("kv_cache_append")
            parts = decode_attention(qkv, cache, dec_rows, heads, hd) if n_dec else []
            if mark and n_dec:
                mark("decode_attention")
            row = n_dec
            for i in range(n_dec, len(items)):
                item = items[i]
                q = qkv[row : row + item.tokens, : heads * hd]
                parts.append(prefill_attention(q, cache, firsts[i], item.start, heads, hd, causal_mask))
                row += item.tokens
                if mark:
                    mark("attention_prefill")
            attn = parts[0] if len(parts) == 1 else torch.cat(parts)
            o = F.linear(attn, p["o"])
            if mark:
                mark("o_proj")
            x = torch.add(x, o)
            if mark:
                mark("residual_add")
            x_norm = F.rms_norm(x, (h,), p["post_norm"], 1e-6)
            if mark:
                mark("post_norm")
            gate_up = F.linear(x_norm, p["gate_up"])
            if mark:
                mark("mlp_up_gate")
            act = silu_mul(gate_up, f)
            if mark:
                mark("mlp_act")
            down = F.linear(act, p["down"])
            if mark:
                mark("mlp_down")
            x = torch.add(x, down)
            if mark:
                mark("residual_add")
        if not emit_rows:
            return []
        last = x.index_select(0, torch.tensor(emit_rows, device=dev)) if len(emit_rows) < t else x
        last = F.rms_norm(last, (h,), self.final_norm, 1e-6)
        if mark:
            mark("final_norm")
        logits = F.linear(last, self.lm_head)
        out: list[int] = logits.argmax(1).tolist()
        if mark:
            mark("lm_head")
        k = 0
        for item in items:
            if item.emit:
                toks = self.tokens[item.request_id]
                if len(toks) == item.start + item.tokens:  # not a recomputed position: a new token
                    toks.append(out[k])
                k += 1
        return out


def build_runner(arch: Architecture, dtype: str, device: torch.device, seed: int, max_samples: int) -> Any:
    """The runner of ``arch`` (CNN, encoder, DLRM or decoder); ``max_samples`` sizes the batch
    inputs (and the decoder's initial KV slots)."""
    if isinstance(arch, Decoder):
        if arch.experts > 1:
            raise ValueError(f"the executor runs dense decoders; {arch.name} is a mixture of experts")
        return DecoderRunner(arch, dtype, device, seed, slots=max(1, min(max_samples, 64)))
    if isinstance(arch, Encoder):
        return EncoderRunner(arch, dtype, device, seed, max_samples)
    if isinstance(arch, CNN):
        return CNNRunner(arch, dtype, device, seed, max_samples)
    if isinstance(arch, Recommendation):
        return RecommendationRunner(arch, dtype, device, seed, max_samples)
    raise ValueError(f"the executor has no torch implementation of {type(arch).__name__} ({arch.name})")
