"""The operators the harness times: each as an ldsim :class:`~simulator.models.Operator` and as torch code.

A :class:`Case` is one operator at one shape: the table it belongs to (kind, dtype, variant and
grid coordinates, :data:`simulator.tables.DIMS`), the ldsim ``Operator`` that the cost model
would price at that shape -- built with the same formulas, and where possible by the same
functions, as :mod:`simulator.models` builds it, so that a table's ``work`` is exactly the
``work`` the cost model will ask about -- and the torch implementation (``impl``) with its
parameters. :func:`build` turns a case into a zero-argument callable that runs the operator
once on the target device.

Implementations are the ones a small eager-mode serving engine uses: ``F.linear`` for GEMMs;
``F.scaled_dot_product_attention`` (causal, with a bottom-right-aligned mask when there is a
past; non-causal for encoders; one query per sequence over a KV cache for decode); one kernel
per memory-bound operator where torch has one. GEMM weights and decode KV caches smaller than
a few times the last-level cache are rotated through several copies, so they stream from
memory as they do in a model too large to sit in cache.

Memory-bound implementations have a table of their own (a ``variant`` of their kind) beside
the kind's default table, since one eager kernel moves bytes at a different rate from
another: ``elementwise`` is the two-tensor add, with variants ``act`` (SiLU-mul), ``rope``,
``kv_append`` and ``softmax``; ``norm`` is RMS norm, with variant ``layer_norm``. The variant
names are those :mod:`simulator.models` tags its operators with; the cost model prices an
operator whose variant has no table from its kind's default table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from simulator.calibrate.device import Target
from simulator.models import CNN, ConvLayer, Decoder, Encoder, Operator, Recommendation, dtype_bytes
from simulator.tables import DIMS

__all__ = [
    "MEMORY_IMPLS",
    "Case",
    "attention_decode_case",
    "attention_encoder_case",
    "attention_prefill_case",
    "build",
    "conv_case",
    "embedding_bag_case",
    "gemm_case",
    "gemm_operator",
    "memory_case",
    "memory_operator",
]

#: Memory-bound implementations: name -> (table kind, table variant, tensors moved, FLOPs per
#: element, the decoder operator of :mod:`simulator.models` it implements or ``None``).
MEMORY_IMPLS: dict[str, tuple[str, str, int, float, str | None]] = {
    "add": ("elementwise", "", 3, 1.0, "residual_add"),
    "silu_mul": ("elementwise", "act", 3, 5.0, "mlp_act"),
    "kv_append": ("elementwise", "kv_append", 2, 0.0, "kv_cache_append"),
    "rope": ("elementwise", "rope", 2, 6.0, "rope"),
    "softmax": ("elementwise", "softmax", 2, 5.0, None),
    "rms_norm": ("norm", "", 2, 4.0, "input_norm"),
    "layer_norm": ("norm", "layer_norm", 2, 8.0, None),
    "embedding": ("embedding", "", 2, 0.0, "embedding"),
}

#: Row length of the memory-bound operators' 2-D tensors (a model's hidden size).
MEMORY_ROW = 1024


@dataclass(frozen=True)
class Case:
    """One operator at one shape, as a table point and as torch code.

    ``family`` groups cases for reporting (gemm, attention, memory, conv, embedding);
    ``kind``/``dtype``/``variant``/``coords`` locate the point in the tables; ``op`` is the ldsim
    operator (its ``flops`` and ``bytes`` per instance); ``impl`` and ``params`` say what
    torch runs.
    """

    family: str
    kind: str
    dtype: str
    variant: str
    coords: tuple[int, ...]
    op: Operator
    impl: str
    params: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def work(self) -> float:
        """The table's work at this point: FLOPs or bytes, as ``DIMS[kind]`` says."""
        return self.op.bytes if DIMS[self.kind][1] == "bytes" else self.op.flops

    @property
    def key(self) -> tuple[str, str, str]:
        """The table this point belongs to: ``(kind, dtype, variant)``."""
        return (self.kind, self.dtype, self.variant)

    def label(self) -> str:
        """A short human-readable name: ``gemm fp32 M=4 N=512 K=512``."""
        names = DIMS[self.kind][0]
        coords = " ".join(f"{n}={c}" for n, c in zip(names, self.coords, strict=True))
        tag = f"/{self.variant}" if self.variant else ""
        return f"{self.kind}{tag} {self.dtype} {coords}"

    def as_tagged(self) -> Operator | None:
        """The operator with the variant :mod:`simulator.models` gives the decoder operator this
        implementation runs (``None`` for an implementation no ldsim operator uses)."""
        if self.family != "memory":
            return self.op
        op_name = MEMORY_IMPLS[self.impl][4]
        if op_name is None:
            return None
        return replace(self.op, variant=_decoder_variants().get(op_name, ""), fallback=None)


# ---- ldsim operators, built as simulator.models builds them --------------------------------


def gemm_operator(name: str, m: int, n: int, k: int, dtype: str, count: int = 1) -> Operator:
    """A GEMM ``[m,k] x [k,n]`` exactly as :mod:`simulator.models` builds one.

    2mnk FLOPs; reads both inputs and writes the output once.
    """
    b = dtype_bytes(dtype)
    return Operator(name, "gemm", 2.0 * m * n * k, float(m * k + k * n + m * n) * b, count, (m, n, k))


def memory_operator(
    name: str, kind: str, elements: float, dtype: str, tensors: int, flops_per_element: float = 1.0, count: int = 1
) -> Operator:
    """A memory-bound operator touching ``tensors`` tensors of ``elements`` elements, exactly as
    :mod:`simulator.models` builds one (coordinate: its bytes)."""
    nbytes = tensors * elements * dtype_bytes(dtype)
    return Operator(name, kind, flops_per_element * elements, nbytes, count, (max(1, int(nbytes)),))


def _decoder_variants() -> dict[str, str]:
    """The table variant :mod:`simulator.models` gives each decoder operator, by operator name."""
    spec = _decoder_spec(1, 64)
    return {op.name: op.variant for op in spec.dense_operators(1, 1, "fp32")}


def _decoder_spec(heads: int, head_dim: int) -> Decoder:
    """A one-layer multi-head decoder with ``heads`` heads (only its attention formulas are used)."""
    return Decoder(
        "calibration",
        "ldsim calibrate",
        layers=1,
        hidden=heads * head_dim,
        heads=heads,
        kv_heads=heads,
        ffn=4 * heads * head_dim,
        vocab=1,
        max_context_tokens=1 << 30,
    )


# ---- cases -------------------------------------------------------------------------------------


def gemm_case(m: int, n: int, k: int, dtype: str) -> Case:
    """``F.linear(x[m,k], w[n,k])``: table ``gemm`` at ``(M, N, K)``."""
    op = gemm_operator("linear", m, n, k, dtype)
    return Case("gemm", "gemm", dtype, "", (m, n, k), op, "linear", {"m": m, "n": n, "k": k})


def _split_heads(batch_x_heads: int) -> tuple[int, int]:
    """``(batch, heads)`` with ``batch * heads == batch_x_heads`` and heads <= 16."""
    heads = math.gcd(batch_x_heads, 16)
    return batch_x_heads // heads, heads


def attention_prefill_case(batch_x_heads: int, q_len: int, past_len: int, head_dim: int, dtype: str) -> Case:
    """Causal SDPA of ``q_len`` queries over ``past_len + q_len`` keys: table ``attention_prefill``.

    The table cannot hold a zero coordinate and the cost model reads a past of 0 as 1, so the
    grid's ``past_len = 1`` row holds the measurement *without* a past (plain causal attention,
    the common case); ``past_len`` here is the real past, ``coords`` the table's.
    """
    batch, heads = _split_heads(batch_x_heads)
    op = _decoder_spec(batch_x_heads, head_dim).prefill_attention(q_len, past_len + q_len, dtype)
    op = replace(op, count=1)
    coords = (batch_x_heads, q_len, max(1, past_len))
    params = {"batch": batch, "heads": heads, "q_len": q_len, "past_len": past_len, "head_dim": head_dim}
    return Case("attention", "attention_prefill", dtype, f"hd{head_dim}", coords, op, "sdpa_causal", params)


def attention_encoder_case(batch_x_heads: int, seq_len: int, head_dim: int, dtype: str) -> Case:
    """Non-causal SDPA over ``seq_len`` tokens: table ``attention_encoder`` at ``(batch x heads, seq_len)``."""
    batch, heads = _split_heads(batch_x_heads)
    spec = Encoder("calibration", "ldsim calibrate", 1, heads * head_dim, heads, 4 * heads * head_dim, 1)
    op = next(o for o in spec.operators(batch, seq_len, dtype) if o.kind == "attention_encoder")
    op = replace(op, count=1)
    params = {"batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim}
    return Case("attention", "attention_encoder", dtype, f"hd{head_dim}", op.shape, op, "sdpa", params)


def attention_decode_case(batch_x_kv_heads: int, kv_len: int, head_dim: int, dtype: str) -> Case:
    """One query per sequence over ``kv_len`` cached keys: table ``attention_decode``.

    Work is the bytes :meth:`simulator.cost.ModelCost.decode_attention_s` prices: K and V read
    (``b * kv_tokens``) plus the query and output (``d * n_seqs``).
    """
    batch, heads = _split_heads(batch_x_kv_heads)
    spec = _decoder_spec(heads, head_dim)
    a, b, c, d = spec.decode_attention_terms(dtype)
    kv_tokens = batch * kv_len
    op = Operator(
        "decode_attention",
        "attention_decode",
        a * kv_tokens + c * batch,
        b * kv_tokens + d * batch,
        1,
        (batch_x_kv_heads, kv_len),
        f"hd{head_dim}",
    )
    params = {"batch": batch, "heads": heads, "kv_len": kv_len, "head_dim": head_dim}
    return Case("attention", "attention_decode", dtype, f"hd{head_dim}", op.shape, op, "sdpa_decode", params)


def memory_case(impl: str, elements: int, dtype: str, row: int = MEMORY_ROW) -> Case:
    """A memory-bound implementation over ``elements`` elements per tensor (rows of ``row``)."""
    kind, variant, tensors, fpe, _ = MEMORY_IMPLS[impl]
    width = min(row, elements)
    rows = max(1, round(elements / width))
    elements = rows * width
    op = memory_operator(impl, kind, elements, dtype, tensors, fpe)
    if variant:
        op = replace(op, variant=variant, fallback=(kind, op.shape))
    return Case("memory", kind, dtype, variant, op.shape, op, impl, {"rows": rows, "row": width})


#: The DLRM row count above which tables are capped when calibrating (they stay far larger
#: than any cache, so lookups still miss it as they do in the full-size tables).
EMBEDDING_ROWS_CAP = 1 << 18


def dlrm_tables(spec: Recommendation) -> list[int]:
    """Rows of each embedding table of ``spec``, capped at :data:`EMBEDDING_ROWS_CAP`."""
    return [min(rows, EMBEDDING_ROWS_CAP) for rows in spec.table_rows]


def embedding_bag_case(spec: Recommendation, batch: int, dtype: str) -> Case:
    """One fused ``F.embedding_bag`` over every table of ``spec`` for ``batch`` queries.

    Table ``embedding_bag`` at its bytes, priced by the operator ``spec.operators`` emits.
    """
    op = next(o for o in spec.operators(batch, dtype) if o.kind == "embedding_bag")
    params = {"batch": batch, "dim": spec.embedding_dim, "lookups": spec.lookups_per_table}
    return Case("embedding", "embedding_bag", dtype, "", op.shape, op, "embedding_bag", params)


def conv_case(layer: ConvLayer, batch: int, dtype: str) -> Case:
    """``F.conv2d`` of ``layer``'s geometry (channels-last, folded-BN bias) on ``batch`` images."""
    spec = CNN("calibration", "ldsim calibrate", [layer], [], 1, 1)
    op = next(o for o in spec.operators(batch, dtype) if o.kind == "conv")
    params = {"batch": batch, "cin": layer.cin, "cout": layer.cout, "k": layer.k, "stride": layer.stride, "h": layer.h}
    return Case("conv", "conv", dtype, layer.variant, (batch,), op, "conv2d", params)


# ---- torch implementations ---------------------------------------------------------------


def _rotating(make: Callable[[], Any], one_bytes: float, target: Target) -> Callable[[], Any]:
    """A function returning one of several copies of a buffer in turn, so that successive
    calls read memory the previous ones did not leave in cache (``one_bytes`` per copy)."""
    footprint = 3 * target.cache_bytes
    copies = 1 if one_bytes >= footprint else min(64, math.ceil(footprint / max(one_bytes, 1.0)))
    first = make()
    buffers = [first] + [first.clone() for _ in range(copies - 1)]  # distinct memory, same values
    if copies == 1:
        only = buffers[0]
        return lambda: only
    cycle = itertools.cycle(buffers)
    return lambda: next(cycle)


def _randn(shape: tuple[int, ...], dtype: Any, device: Any, scale: float = 1.0) -> Any:
    import torch

    out = torch.randn(shape, device=device, dtype=torch.float32)
    if scale != 1.0:
        out.mul_(scale)
    return out.to(dtype)


def build(case: Case, target: Target, cache: dict[Any, Any] | None = None) -> Callable[[], Any]:
    """A zero-argument callable running ``case`` once on ``target``.

    ``cache`` (optional) shares big buffers (weights, embedding tables) between cases of one
    run, keyed by what they depend on.
    """
    builder = _BUILDERS[case.impl]
    return builder(case, target, {} if cache is None else cache)


def _build_linear(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    key = ("linear", case.dtype, p["n"], p["k"])
    if key not in cache:
        cache.clear()  # one (N, K) at a time: the grid is walked with M innermost
        one = p["n"] * p["k"] * dtype_bytes(case.dtype)
        cache[key] = _rotating(lambda: _randn((p["n"], p["k"]), dt, dev, 0.05), one, target)
    weight = cache[key]
    x = _randn((p["m"], p["k"]), dt, dev)
    return lambda: F.linear(x, weight())


def _build_sdpa_causal(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    b, h, q, past, hd = p["batch"], p["heads"], p["q_len"], p["past_len"], p["head_dim"]
    query = _randn((b, h, q, hd), dt, dev)
    key = _randn((b, h, past + q, hd), dt, dev)
    value = _randn((b, h, past + q, hd), dt, dev)
    if past == 0:
        return lambda: F.scaled_dot_product_attention(query, key, value, is_causal=True)
    mask = causal_mask(q, past + q, dev)
    return lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def causal_mask(q_len: int, kv_len: int, device: Any) -> Any:
    """The attention mask of ``q_len`` new tokens over ``kv_len`` keys, aligned bottom-right
    (query ``i`` sees keys ``0 .. kv_len - q_len + i``), as the SDPA ``attn_mask`` argument."""
    from torch.nn.attention.bias import causal_lower_right

    mask = causal_lower_right(q_len, kv_len)
    if device.type == "cpu":
        return mask._materialize(device)  # the CPU kernels take a dense mask in any case
    return mask


def _build_sdpa(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    shape = (p["batch"], p["heads"], p["seq_len"], p["head_dim"])
    q, k, v = (_randn(shape, dt, dev) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v)


def _build_sdpa_decode(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    b, h, kv, hd = p["batch"], p["heads"], p["kv_len"], p["head_dim"]
    query = _randn((b, h, 1, hd), dt, dev)
    one = 2 * b * h * kv * hd * dtype_bytes(case.dtype)
    kv_cache = _rotating(lambda: _randn((b, 2, h, kv, hd), dt, dev), one, target)

    def run() -> Any:
        cache_kv = kv_cache()
        return F.scaled_dot_product_attention(query, cache_kv[:, 0], cache_kv[:, 1])

    return run


def _build_memory(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    rows, row = p["rows"], p["row"]
    x = _randn((rows, row), dt, dev)
    impl = case.impl
    if impl == "add":
        y = _randn((rows, row), dt, dev)
        return lambda: torch.add(x, y)
    if impl == "silu_mul":
        y = _randn((rows, row), dt, dev)
        return lambda: F.silu(x) * y
    if impl == "kv_append":
        # the append of `rows` new tokens' K and V into a cache with room for twice as many
        kv_cache = torch.zeros((2 * rows + 8, row), device=dev, dtype=dt)
        index = torch.arange(rows, device=dev) + 3
        return lambda: kv_cache.index_copy_(0, index, x)
    if impl == "rope":
        return rope_function(rows, row, dt, dev)
    if impl == "softmax":
        return lambda: torch.softmax(x, dim=-1)
    weight = torch.ones(row, device=dev, dtype=dt)
    if impl == "rms_norm":
        return lambda: F.rms_norm(x, (row,), weight, 1e-6)
    if impl == "layer_norm":
        bias = torch.zeros(row, device=dev, dtype=dt)
        return lambda: F.layer_norm(x, (row,), weight, bias, 1e-6)
    if impl == "embedding":
        vocab = 8192
        key = ("embedding", case.dtype, row)
        if key not in cache:
            cache[key] = _randn((vocab, row), dt, dev, 0.02)
        table = cache[key]
        ids = torch.randint(0, vocab, (rows,), device=dev)
        return lambda: F.embedding(ids, table)
    raise KeyError(impl)


def rope_function(rows: int, row: int, dtype: Any, device: Any) -> Callable[[], Any]:
    """In-place rotary embedding of ``rows`` rows of ``row`` values, as one kernel.

    Pairs of values are rotated by a complex multiplication (Llama's reference
    ``apply_rotary_emb``): one pass reading and writing the tensor, which is what ldsim's
    ``rope`` operator counts. For half-precision dtypes without a complex type of their own the
    multiplication runs on a float32 view of the values (three kernels).
    """
    import torch

    x = torch.randn((rows, row // 2, 2), device=device, dtype=torch.float32).to(dtype)
    angles = torch.randn((rows, row // 2), device=device)
    freqs = torch.polar(torch.ones_like(angles), angles)
    if dtype == torch.float32:
        xc = torch.view_as_complex(x)
        return lambda: xc.mul_(freqs)

    def run() -> Any:
        xc = torch.view_as_complex(x.float())
        return x.copy_(torch.view_as_real(xc * freqs))

    return run


def _build_embedding_bag(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    spec = dlrm_by_dim(p["dim"])
    key = ("bag", case.dtype, p["dim"])
    if key not in cache:
        cache[key] = FusedEmbeddingBag(dlrm_tables(spec), spec.embedding_dim, dt, dev)
    bag = cache[key]
    indices, offsets = bag.random_batch(p["batch"], p["lookups"])
    return lambda: F.embedding_bag(indices, bag.weight, offsets, mode="sum")


class FusedEmbeddingBag:
    """All embedding tables of a DLRM in one weight, looked up by one ``embedding_bag`` call.

    Table ``t``'s row ``r`` is row ``base[t] + r`` of ``weight`` (TorchRec's table-batched
    embedding does the same); a query's lookups into each table form one bag.
    """

    def __init__(self, rows: list[int], dim: int, dtype: Any, device: Any) -> None:
        import torch

        self.rows = rows
        self.base = [0, *itertools.accumulate(rows)][:-1]
        self.weight = torch.empty((sum(rows), dim), device=device, dtype=dtype)
        self.weight.uniform_(-0.05, 0.05)  # touches every page: a fresh allocation reads as zeros, from cache
        self.device = device

    def random_batch(self, batch: int, lookups: int, seed: int = 0) -> tuple[Any, Any]:
        """Indices and offsets of ``batch`` queries with ``lookups`` lookups per table."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        cols = []
        for base, rows in zip(self.base, self.rows, strict=True):
            cols.append(torch.randint(0, rows, (batch, lookups), generator=gen) + base)
        indices = torch.stack(cols, dim=1).reshape(-1)  # query-major: bag (query, table)
        bags = batch * len(self.rows)
        offsets = torch.arange(bags, dtype=torch.int64) * lookups
        return indices.to(self.device), offsets.to(self.device)


def dlrm_by_dim(dim: int) -> Recommendation:
    """The shipped DLRM spec whose embeddings have ``dim`` values (16: Kaggle, 64: Terabyte)."""
    from simulator.models import dlrm_criteo_kaggle, dlrm_criteo_terabyte

    for spec in (dlrm_criteo_kaggle(), dlrm_criteo_terabyte()):
        if spec.embedding_dim == dim:
            return spec
    raise KeyError(f"no shipped DLRM with embedding dimension {dim}")


def _build_conv(case: Case, target: Target, cache: dict[Any, Any]) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    p, dev, dt = case.params, target.torch_device, target.torch_dtype(case.dtype)
    cl = torch.channels_last
    x = _randn((p["batch"], p["cin"], p["h"], p["h"]), dt, dev).contiguous(memory_format=cl)
    weight = _randn((p["cout"], p["cin"], p["k"], p["k"]), dt, dev, 0.05).contiguous(memory_format=cl)
    bias = torch.zeros(p["cout"], device=dev, dtype=dt)
    stride, pad = p["stride"], p["k"] // 2
    return lambda: F.conv2d(x, weight, bias, stride=stride, padding=pad)


_BUILDERS: dict[str, Callable[[Case, Target, dict[Any, Any]], Callable[[], Any]]] = {
    "linear": _build_linear,
    "sdpa_causal": _build_sdpa_causal,
    "sdpa": _build_sdpa,
    "sdpa_decode": _build_sdpa_decode,
    "embedding_bag": _build_embedding_bag,
    "conv2d": _build_conv,
    **{impl: _build_memory for impl in MEMORY_IMPLS},
}
