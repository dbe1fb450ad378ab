"""End-to-end layer blocks at small scale, to check operator sums against whole-block times.

Each :class:`Block` is a small model of one family, built from an ldsim spec
(:mod:`simulator.models`), so that its prediction is ldsim's own operator decomposition priced
by :mod:`simulator.cost`, and its torch code runs those operators in order, one torch call per
ldsim operator wherever torch has one:

* ``decoder``: a one-layer Llama-style forward (embedding, RMSNorm, fused QKV linear, RoPE
  applied in place to Q and K, KV-cache append, SDPA, o-proj, residual, RMSNorm, gate+up
  linear, SiLU-mul, down linear, residual, final RMSNorm and LM head on the last token of each
  sequence), as a prefill of one sequence (with or without a cached past) or a decode step of
  several sequences; priced by :meth:`simulator.cost.ModelCost.iteration_s`;
* ``resnet``: bottleneck blocks of ResNet-50 (channels-last convolutions with folded batch
  norm, in-place ReLU, projection shortcut, residual adds); priced by the ``CNN`` operators;
* ``dlrm``: a DLRM forward (bottom MLP, one fused embedding bag over capped Criteo tables,
  pairwise-dot interaction, top MLP); priced by the ``Recommendation`` operators.

Operators the real code runs but ldsim's decomposition omits are listed in
:attr:`Block.omitted` (in-place ReLUs, the interaction's concatenations and triangle gather):
they are part of the measured time and not of the prediction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from simulator.calibrate.operators import FusedEmbeddingBag, causal_mask, dlrm_tables
from simulator.calibrate.records import row
from simulator.models import CNN, ConvLayer, Decoder, Recommendation, dlrm_criteo_kaggle, resnet50

if TYPE_CHECKING:
    from simulator.calibrate.device import Target
    from simulator.calibrate.harness import Session
    from simulator.hardware import HardwareProfile

__all__ = ["Block", "block_specs", "measure_blocks", "predict_block"]


@dataclass(frozen=True)
class Block:
    """One end-to-end block: ``family`` (decoder, resnet, dlrm), a readable ``name``, the
    dtype, the shape parameters and the ldsim operators the real code runs beyond the
    prediction (``omitted``)."""

    family: str
    name: str
    dtype: str
    params: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    omitted: str = ""


def _ffn(hidden: int) -> int:
    """Llama's MLP width: 8/3 of the hidden size, rounded up to a multiple of 256."""
    return 256 * math.ceil(8 * hidden / 3 / 256)


def decoder_spec(hidden: int, heads: int = 8, vocab: int = 4096) -> Decoder:
    """The one-layer Llama-style decoder of the blocks."""
    return Decoder(
        f"block-h{hidden}",
        "ldsim calibrate block",
        layers=1,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        ffn=_ffn(hidden),
        vocab=vocab,
        max_context_tokens=1 << 16,
    )


def resnet_stage(stage: str) -> list[ConvLayer]:
    """The convolutions of ResNet-50's ``stage`` (``layer1``: three blocks at 56x56;
    ``layer2.0``: the first block of stage 2, with a stride-2 projection)."""
    return [c for c in resnet50().convs if c.name.startswith(stage + ".") or c.name == stage]


def dlrm_spec() -> Recommendation:
    """DLRM on Criteo Kaggle with each table capped as in the calibration."""
    base = dlrm_criteo_kaggle()
    return Recommendation(
        "block-dlrm",
        "ldsim calibrate block",
        dense_features=base.dense_features,
        table_rows=dlrm_tables(base),
        embedding_dim=base.embedding_dim,
        bottom_mlp=list(base.bottom_mlp),
        top_mlp=list(base.top_mlp),
    )


def block_specs(device_kind: str, quick: bool) -> list[Block]:
    """The blocks measured on a ``cpu`` or ``cuda`` device, quick or full."""
    dtype = "bf16" if device_kind == "cuda" else "fp32"
    scale = 8 if device_kind == "cuda" else 1
    blocks = [
        Block("decoder", f"decoder h1024 prefill {128 * scale}", dtype, {"hidden": 1024, "q": 128 * scale, "past": 0}),
        Block(
            "decoder",
            f"decoder h1024 decode {8 * scale}x{256 * scale}",
            dtype,
            {"hidden": 1024, "n": 8 * scale, "kv": 256 * scale},
        ),
        Block(
            "resnet", f"resnet layer2.0 batch {2 * scale}", dtype, {"stage": 2, "batch": 2 * scale}, "4 in-place ReLUs"
        ),
        Block(
            "dlrm",
            f"dlrm batch {256 * scale}",
            dtype,
            {"batch": 256 * scale},
            "6 ReLUs (taken as fused into the GEMMs)",
        ),
    ]
    if not quick:
        blocks += [
            Block(
                "decoder", f"decoder h512 prefill {512 * scale}", dtype, {"hidden": 512, "q": 512 * scale, "past": 0}
            ),
            Block(
                "decoder", f"decoder h1024 prefill {32 * scale}", dtype, {"hidden": 1024, "q": 32 * scale, "past": 0}
            ),
            Block(
                "decoder",
                f"decoder h1024 chunk {128 * scale} after {384 * scale}",
                dtype,
                {"hidden": 1024, "q": 128 * scale, "past": 384 * scale},
            ),
            Block(
                "decoder",
                f"decoder h1024 decode {1}x{1024 * scale}",
                dtype,
                {"hidden": 1024, "n": 1, "kv": 1024 * scale},
            ),
            Block(
                "decoder",
                f"decoder h1024 decode {32 * scale}x{128 * scale}",
                dtype,
                {"hidden": 1024, "n": 32 * scale, "kv": 128 * scale},
            ),
            Block(
                "resnet",
                f"resnet layer1 batch {1 * scale}",
                dtype,
                {"stage": 1, "batch": 1 * scale},
                "9 in-place ReLUs",
            ),
            Block(
                "dlrm",
                f"dlrm batch {1024 * scale}",
                dtype,
                {"batch": 1024 * scale},
                "6 ReLUs (taken as fused into the GEMMs)",
            ),
        ]
    # a prefill's attention output is copied back from heads-major to tokens-major (decode's
    # one-token output is reshaped without a copy)
    return [
        replace(b, omitted="the attention output's transpose copy") if b.family == "decoder" and "q" in b.params else b
        for b in blocks
    ]


# ---- predictions ------------------------------------------------------------------------------


def predict_block(block: Block, profile: HardwareProfile) -> tuple[float, list[tuple[str, float]]]:
    """Seconds ldsim predicts for ``block`` on ``profile``, and the per-operator breakdown."""
    from simulator.cost import Deployment, ModelCost, operator_cost

    p = block.params
    parts: list[tuple[str, float]] = []
    if block.family == "decoder":
        spec = decoder_spec(p["hidden"])
        cost = ModelCost(Deployment(spec, block.dtype), profile)
        if "q" in p:
            q, past = p["q"], p["past"]
            total = cost.iteration_s([(q, past + q)], 0, 0)
            ops = [*spec.dense_operators(q, 1, block.dtype), spec.prefill_attention(q, past + q, block.dtype)]
            parts = [(op.name, operator_cost(op, profile, block.dtype)[0]) for op in ops]
        else:
            import numpy as np

            n, kv = p["n"], p["kv"]
            kv_total = float(n * (kv + 1))
            total = cost.iteration_s([], n, int(kv_total))
            parts = [
                (op.name, operator_cost(op, profile, block.dtype)[0]) for op in spec.dense_operators(n, n, block.dtype)
            ]
            parts.append(("decode_attention", float(cost.decode_attention_s(n, np.array([kv_total]))[0])))
        return total, parts
    if block.family == "resnet":
        ops = _resnet_operators(p["stage"], p["batch"], block.dtype)
    else:
        ops = dlrm_spec().operators(p["batch"], block.dtype)
    parts = [(op.name, operator_cost(op, profile, block.dtype)[0]) for op in ops]
    return sum(s for _, s in parts), parts


def _resnet_operators(stage: int, batch: int, dtype: str) -> list[Any]:
    convs = resnet_stage("layer2.0" if stage == 2 else "layer1")
    adds = [(c.out_hw[0], c.out_hw[1], c.cout) for c in convs if c.name.endswith("conv3")]
    spec = CNN("block-resnet", "ldsim calibrate block", convs, adds, 1, 1)
    return [op for op in spec.operators(batch, dtype) if op.name != "fc"]


# ---- torch code -------------------------------------------------------------------------------


def build_block(block: Block, target: Target) -> Callable[[], Any]:
    """A zero-argument callable running ``block`` once on ``target``."""
    if block.family == "decoder":
        return _decoder_block(block, target)
    if block.family == "resnet":
        return _resnet_block(block, target)
    return _dlrm_block(block, target)


def _decoder_block(block: Block, target: Target) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    p = block.params
    spec = decoder_spec(p["hidden"])
    dev, dt = target.torch_device, target.torch_dtype(block.dtype)
    h, heads, hd, f = spec.hidden, spec.heads, spec.head_dim, spec.ffn

    def weight(rows: int, cols: int) -> Any:
        return (torch.randn(rows, cols, device=dev) * cols**-0.5).to(dt)

    emb = weight(spec.vocab, h)
    w_qkv, w_o = weight(3 * h, h), weight(h, h)
    w_up_gate, w_down, w_lm = weight(2 * f, h), weight(h, f), weight(spec.vocab, h)
    norm_in, norm_post, norm_final = (torch.ones(h, device=dev, dtype=dt) for _ in range(3))
    max_len = p.get("past", 0) + p.get("q", 0) + p.get("kv", 0) + 8
    angles = torch.outer(torch.arange(max_len, device=dev, dtype=torch.float32), torch.rand(hd // 2, device=dev))
    freqs = torch.polar(torch.ones_like(angles), angles)
    if "q" in p:
        seqs, tokens, past = 1, p["q"], p["past"]
        positions = torch.arange(past, past + tokens, device=dev)
        rope_freqs = freqs[past : past + tokens].view(tokens, 1, hd // 2)
        kv_len = past + tokens
        mask = causal_mask(tokens, kv_len, dev) if past else None
    else:
        seqs, tokens, past = p["n"], p["n"], p["kv"]
        positions = torch.tensor([past], device=dev)
        rope_freqs = freqs[past : past + 1].view(1, 1, hd // 2).expand(tokens, 1, hd // 2)
        kv_len = past + 1
        mask = None
    cache = torch.randn(seqs, 2, heads, max_len, hd, device=dev).to(dt)
    ids = torch.randint(0, spec.vocab, (tokens,), device=dev)
    prefill = "q" in p

    def rope_(qkv: Any) -> None:
        qk = qkv[:, : 2 * h].view(tokens, 2 * heads, hd // 2, 2)
        if dt == torch.float32:
            torch.view_as_complex(qk).mul_(rope_freqs)
        else:  # no complex type for half precision: rotate a float32 copy
            qk.copy_(torch.view_as_real(torch.view_as_complex(qk.float()) * rope_freqs))

    def run() -> Any:
        x = F.embedding(ids, emb)
        qkv = F.linear(F.rms_norm(x, (h,), norm_in, 1e-6), w_qkv)
        rope_(qkv)
        if prefill:
            new_kv = qkv[:, h:].view(tokens, 2, heads, hd).permute(1, 2, 0, 3).unsqueeze(0)
            q = qkv[:, :h].view(tokens, heads, hd).transpose(0, 1).unsqueeze(0)
        else:
            new_kv = qkv[:, h:].view(tokens, 2, heads, 1, hd)
            q = qkv[:, :h].view(tokens, heads, 1, hd)
        cache.index_copy_(3, positions, new_kv)
        k, v = cache[:, 0, :, :kv_len], cache[:, 1, :, :kv_len]
        if prefill:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=mask is None, attn_mask=mask)
            attn = attn.transpose(1, 2).reshape(tokens, h)
        else:
            attn = F.scaled_dot_product_attention(q, k, v).reshape(tokens, h)
        x = x + F.linear(attn, w_o)
        gate_up = F.linear(F.rms_norm(x, (h,), norm_post, 1e-6), w_up_gate)
        act = F.silu(gate_up[:, :f]) * gate_up[:, f:]
        x = x + F.linear(act, w_down)
        last = x[-1:] if prefill else x
        return F.linear(F.rms_norm(last, (h,), norm_final, 1e-6), w_lm)

    return run


def _resnet_block(block: Block, target: Target) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    p = block.params
    dev, dt = target.torch_device, target.torch_dtype(block.dtype)
    cl = torch.channels_last
    convs = resnet_stage("layer2.0" if p["stage"] == 2 else "layer1")
    params = {}
    for c in convs:
        w = (torch.randn(c.cout, c.cin, c.k, c.k, device=dev) * (c.cin * c.k * c.k) ** -0.5).to(dt)
        params[c.name] = (w.contiguous(memory_format=cl), torch.zeros(c.cout, device=dev, dtype=dt), c)
    first = convs[0]
    x0 = torch.randn(p["batch"], first.cin, first.h, first.w, device=dev).to(dt).contiguous(memory_format=cl)
    names = sorted({c.name.rsplit(".", 1)[0] for c in convs}, key=lambda s: int(s.split(".")[1]))

    def conv(name: str, x: Any) -> Any:
        w, b, c = params[name]
        return F.conv2d(x, w, b, stride=c.stride, padding=c.k // 2)

    def run() -> Any:
        x = x0
        for blk in names:
            out = conv(f"{blk}.conv1", x).relu_()
            out = conv(f"{blk}.conv2", out).relu_()
            out = conv(f"{blk}.conv3", out)
            shortcut = conv(f"{blk}.downsample", x) if f"{blk}.downsample" in params else x
            x = (out + shortcut).relu_()
        return x

    return run


def _dlrm_block(block: Block, target: Target) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    spec = dlrm_spec()
    dev, dt = target.torch_device, target.torch_dtype(block.dtype)
    batch = block.params["batch"]
    bag = FusedEmbeddingBag(spec.table_rows, spec.embedding_dim, dt, dev)
    indices, offsets = bag.random_batch(batch, spec.lookups_per_table)
    dims = [spec.dense_features, *spec.bottom_mlp]
    bottom = [(torch.randn(o, i, device=dev) * i**-0.5).to(dt) for i, o in itertools.pairwise(dims)]
    dims = [spec.interaction_width, *spec.top_mlp]
    top = [(torch.randn(o, i, device=dev) * i**-0.5).to(dt) for i, o in itertools.pairwise(dims)]
    dense = torch.randn(batch, spec.dense_features, device=dev).to(dt)
    n = len(spec.table_rows) + 1
    rows, cols = torch.tril_indices(n, n, offset=-1, device=dev)
    # the lower triangle as positions in the flattened n x n products: one index_select, several
    # times faster on a CPU than the reference implementation's z[:, rows, cols]
    triangle = rows * n + cols
    d = spec.embedding_dim

    def run() -> Any:
        x = dense
        for w in bottom:
            x = F.linear(x, w).relu_()
        emb = F.embedding_bag(indices, bag.weight, offsets, mode="sum").view(batch, n - 1, d)
        t = torch.cat([x.unsqueeze(1), emb], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))
        y = torch.cat([x, z.view(batch, n * n).index_select(1, triangle)], dim=1)
        for i, w in enumerate(top):
            y = F.linear(y, w)
            if i < len(top) - 1:
                y = y.relu_()
        return y

    return run


def block_work(block: Block) -> tuple[float, float]:
    """FLOPs and bytes of ``block`` by ldsim's operators (for the raw table)."""
    p = block.params
    if block.family == "decoder":
        spec = decoder_spec(p["hidden"])
        if "q" in p:
            ops = [
                *spec.dense_operators(p["q"], 1, block.dtype),
                spec.prefill_attention(p["q"], p["past"] + p["q"], block.dtype),
            ]
        else:
            ops = spec.dense_operators(p["n"], p["n"], block.dtype)
            a, b, c, d = spec.decode_attention_terms(block.dtype)
            kv = p["n"] * (p["kv"] + 1)
            return sum(o.flops * o.count for o in ops) + a * kv + c * p["n"], sum(
                o.bytes * o.count for o in ops
            ) + b * kv + d * p["n"]
    elif block.family == "resnet":
        ops = _resnet_operators(p["stage"], p["batch"], block.dtype)
    else:
        ops = dlrm_spec().operators(p["batch"], block.dtype)
    return sum(o.flops * o.count for o in ops), sum(o.bytes * o.count for o in ops)


def block_row(block: Block, m: Any) -> dict[str, Any]:
    """The raw row of a measured block (family ``block``, held out from every table)."""
    flops, nbytes = block_work(block)
    coords = tuple(float(v) for v in block.params.values())
    names = tuple(block.params)
    return row("block", block.family, block.dtype, block.name, "torch", coords, names, flops, flops, nbytes, m, True)


def measure_blocks(session: Session) -> None:
    """Time every block of the session's device and mode; record them as raw rows."""
    for block in block_specs(session.target.kind, session.quick):
        if block.dtype not in session.target.dtypes:
            session.notes.append(f"block {block.name} not measured: {block.dtype} is not among the dtypes measured")
            continue
        try:
            m = session.time(build_block(block, session.target))
        except (RuntimeError, NotImplementedError) as exc:
            session.notes.append(
                f"block {block.name} not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            )
            continue
        session.rows.append(block_row(block, m))
