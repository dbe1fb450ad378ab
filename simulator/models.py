"""Model architectures, from their published numbers, as lists of operators.

Each architecture yields, for a batch shape, the operators one forward pass runs on one
device (FLOPs and bytes moved to and from device memory), and the memory it needs: weights
and, for decoders, KV-cache bytes per token. The cost model turns operators into seconds.

Families:

* :class:`CNN` -- a convolutional network (ResNet-50); a request is ``input_samples`` images.
* :class:`Encoder` -- a BERT-style encoder; a request is one sequence of ``input_tokens``.
  A batch is padded to its longest sequence.
* :class:`Decoder` -- a decoder-only LLM (Llama; Mixtral with mixture-of-experts layers);
  prefill and decode are costed separately so the engine can batch them per iteration.
* :class:`Recommendation` -- a DLRM: embedding-bag lookups, bottom and top MLPs and a
  pairwise-dot interaction; a request is ``input_samples`` queries.

Attention is costed as a fused kernel (FlashAttention-style): it reads Q, K, V and writes O
once, so the score matrix never goes to memory. Tensor parallelism (``tp``) splits heads and
MLP columns Megatron-style, with two all-reduces per transformer layer.
"""

from __future__ import annotations

import functools
import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CNN",
    "DTYPE_BYTES",
    "Architecture",
    "ConvLayer",
    "Decoder",
    "Encoder",
    "Operator",
    "Recommendation",
    "bert_base",
    "bert_large",
    "dlrm_criteo_kaggle",
    "dlrm_criteo_terabyte",
    "dtype_bytes",
    "llama2_7b",
    "llama2_70b",
    "llama3_8b",
    "mixtral_8x7b",
    "resnet50",
]

#: Bytes per element of each dtype.
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype``; ``ValueError`` for an unknown dtype."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}'; known: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class Operator:
    """One kernel of a forward pass on one device.

    ``flops`` and ``bytes`` are per instance; ``count`` identical instances run (one per layer,
    say). ``kind``, ``shape`` and ``variant`` locate the operator in a profile's measured tables
    (:data:`simulator.tables.DIMS`: ``gemm`` at ``(M, N, K)``, ``attention_prefill`` at
    ``(batch x heads, q_len, past_len)`` with variant ``hd128``, memory-bound kinds at
    ``(bytes,)``, ...); ``kind`` also selects the default efficiency of the roofline when no
    table applies. ``fallback`` names a second table to try, as ``(kind, shape)`` (a convolution
    of an unmeasured geometry is looked up as its implicit GEMM).
    """

    name: str
    kind: str
    flops: float
    bytes: float
    count: int = 1
    shape: tuple[int, ...] = ()
    variant: str = ""
    fallback: tuple[str, tuple[int, ...]] | None = None


def _gemm(name: str, m: int, n: int, k: int, b: int, count: int = 1) -> Operator:
    """A GEMM ``[m,k] x [k,n]``: 2mnk FLOPs; reads both inputs and writes the output once."""
    return Operator(name, "gemm", 2.0 * m * n * k, float(m * k + k * n + m * n) * b, count, (m, n, k))


def _elementwise(
    name: str,
    elements: float,
    b: int,
    tensors: int,
    count: int = 1,
    flops_per_element: float = 1.0,
    kind: str = "elementwise",
    variant: str = "",
) -> Operator:
    """A memory-bound operator touching ``tensors`` tensors of ``elements`` elements.

    ``variant`` names which elementwise operation it is (``add``, ``act``, ``rope``), so that a
    profile measuring them apart prices each from its own table (falling back to the kind's
    generic one)."""
    nbytes = tensors * elements * b
    return Operator(name, kind, flops_per_element * elements, nbytes, count, (max(1, int(nbytes)),), variant)


class Architecture(ABC):
    """A named model architecture with published dimensions.

    ``family`` is one of ``cnn``, ``encoder``, ``decoder``, ``recommendation``;
    ``autoregressive`` is true for decoders (requests generate ``output_tokens``).
    ``source`` names where the numbers come from.
    """

    name: str
    family: str
    source: str
    autoregressive: bool = False
    default_dtype: str = "fp16"

    @abstractmethod
    def param_count(self) -> int:
        """Number of parameters (all experts included for MoE)."""

    def weight_bytes(self, dtype: str, tp: int = 1) -> float:
        """Bytes of weights held by one of ``tp`` tensor-parallel devices."""
        return self.param_count() * dtype_bytes(dtype) / tp

    def describe(self) -> str:
        """One line for ``ldsim list models``."""
        return f"{self.family}, {self.param_count() / 1e6:,.1f}M parameters"


# --------------------------------------------------------------------------------------------
# CNN


@dataclass(frozen=True, slots=True)
class ConvLayer:
    """A 2-D convolution on one image: input ``h x w x cin``, ``k x k`` kernel, ``stride``."""

    name: str
    cin: int
    cout: int
    k: int
    stride: int
    h: int
    w: int

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width (``same`` padding)."""
        return math.ceil(self.h / self.stride), math.ceil(self.w / self.stride)

    def macs(self) -> int:
        """Multiply-accumulates for one image."""
        ho, wo = self.out_hw
        return ho * wo * self.cout * self.cin * self.k * self.k

    def params(self) -> int:
        """Weights (plus one folded batch-norm bias per output channel)."""
        return self.cout * self.cin * self.k * self.k + self.cout

    @property
    def variant(self) -> str:
        """The geometry key of this convolution in a profile's ``conv`` table."""
        return f"c{self.cin}-o{self.cout}-k{self.k}-s{self.stride}-h{self.h}-w{self.w}"

    def implicit_gemm(self, samples: int) -> tuple[int, int, int]:
        """``(M, N, K)`` of the convolution as an implicit GEMM over ``samples`` images."""
        ho, wo = self.out_hw
        return samples * ho * wo, self.cout, self.cin * self.k * self.k


@dataclass
class CNN(Architecture):
    """A convolutional classifier: conv layers (batch norm folded), residual adds, pools, FC."""

    name: str
    source: str
    convs: list[ConvLayer]
    residual_adds: list[tuple[int, int, int]]  # (h, w, channels) of each residual add
    fc_in: int
    fc_out: int
    pools: list[tuple[int, int, int]] = field(default_factory=list)  # (h, w, channels) read
    family: str = "cnn"

    def param_count(self) -> int:
        """Conv weights and folded BN biases plus the classifier."""
        return sum(c.params() for c in self.convs) + self.fc_in * self.fc_out + self.fc_out

    def macs_per_sample(self) -> int:
        """Multiply-accumulates for one image (the figure papers quote as 'FLOPs')."""
        return sum(c.macs() for c in self.convs) + self.fc_in * self.fc_out

    def operators(self, samples: int, dtype: str) -> list[Operator]:
        """Operators of one forward pass over ``samples`` images."""
        b = dtype_bytes(dtype)
        ops = []
        for c in self.convs:
            m, n, k = c.implicit_gemm(samples)
            nbytes = (samples * c.h * c.w * c.cin + k * n + m * n) * b
            ops.append(
                Operator(c.name, "conv", 2.0 * m * n * k, float(nbytes), 1, (samples,), c.variant, ("gemm", (m, n, k)))
            )
        for i, (h, w, ch) in enumerate(self.residual_adds):
            ops.append(_elementwise(f"add{i}", samples * h * w * ch, b, tensors=3))
        for i, (h, w, ch) in enumerate(self.pools):
            ops.append(_elementwise(f"pool{i}", samples * h * w * ch, b, tensors=1))
        ops.append(_gemm("fc", samples, self.fc_out, self.fc_in, b))
        return ops

    def activation_bytes(self, samples: int, dtype: str) -> float:
        """Peak activation memory of a forward pass (largest layer input + output)."""
        b = dtype_bytes(dtype)
        peak = 0
        for c in self.convs:
            ho, wo = c.out_hw
            peak = max(peak, c.h * c.w * c.cin + ho * wo * c.cout)
        return float(peak * samples * b * 2)  # x2: a residual branch kept alive


def resnet50() -> CNN:
    """ResNet-50 at 224x224 (He et al., CVPR 2016, Table 1): bottleneck stages [3, 4, 6, 3].

    4.09 G multiply-accumulates per image and 25.53 M parameters with batch norm folded into
    the convolutions (torchvision's unfolded ``resnet50`` has 25,557,032: two BN parameters
    per channel where the folded model keeps one bias).
    """
    convs = [ConvLayer("conv1", 3, 64, 7, 2, 224, 224)]
    pools = [(112, 112, 64)]  # 3x3/2 max pool reads the stem output
    adds = []
    h = 56
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        cout = width * 4
        for blk in range(blocks):
            stride = 2 if (blk == 0 and stage > 0) else 1
            tag = f"layer{stage + 1}.{blk}"
            convs.append(ConvLayer(f"{tag}.conv1", cin, width, 1, 1, h, h))
            convs.append(ConvLayer(f"{tag}.conv2", width, width, 3, stride, h, h))
            ho = math.ceil(h / stride)
            convs.append(ConvLayer(f"{tag}.conv3", width, cout, 1, 1, ho, ho))
            if blk == 0:
                convs.append(ConvLayer(f"{tag}.downsample", cin, cout, 1, stride, h, h))
            adds.append((ho, ho, cout))
            cin, h = cout, ho
    pools.append((7, 7, 2048))  # global average pool
    return CNN(
        name="resnet-50",
        source="He et al., 'Deep Residual Learning for Image Recognition', CVPR 2016, Table 1",
        convs=convs,
        residual_adds=adds,
        fc_in=2048,
        fc_out=1000,
        pools=pools,
    )


# --------------------------------------------------------------------------------------------
# Transformers


@dataclass
class Encoder(Architecture):
    """A BERT-style encoder: post-norm layers, GELU MLP, learned positions."""

    name: str
    source: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int = 512
    type_vocab: int = 2
    family: str = "encoder"

    def param_count(self) -> int:
        """Embeddings, layers (attention, MLP, two layer norms) and the pooler."""
        h, f = self.hidden, self.ffn
        emb = (self.vocab + self.max_positions + self.type_vocab) * h + 2 * h
        layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
        pooler = h * h + h
        return emb + self.layers * layer + pooler

    def operators(self, samples: int, seq_len: int, dtype: str, tp: int = 1) -> list[Operator]:
        """Operators of one forward pass over ``samples`` sequences padded to ``seq_len``."""
        b = dtype_bytes(dtype)
        h, f, n_l = self.hidden, self.ffn, self.layers
        t = samples * seq_len
        hd = h // self.heads
        heads = self.heads // tp
        ops = [
            _elementwise("embeddings", t * h, b, tensors=4, kind="embedding"),
            _gemm("qkv_proj", t, 3 * h // tp, h, b, n_l),
            Operator(
                "attention",
                "attention_encoder",
                4.0 * samples * seq_len * seq_len * heads * hd,
                float(4 * t * heads * hd * b),
                n_l,
                (samples * heads, seq_len),
                f"hd{hd}",
            ),
            _gemm("out_proj", t, h, h // tp, b, n_l),
            _elementwise("add_norm", t * h, b, tensors=3, count=2 * n_l, flops_per_element=8, kind="norm"),
            _gemm("ffn_up", t, f // tp, h, b, n_l),
            _elementwise("gelu", t * f / tp, b, tensors=2, count=n_l, flops_per_element=8),
            _gemm("ffn_down", t, h, f // tp, b, n_l),
            _gemm("pooler", samples, h, h, b),
        ]
        if tp > 1:
            ops.append(Operator("allreduce", "allreduce", 0.0, float(t * h * b), 2 * n_l, (t * h * b,)))
        return ops

    def activation_bytes(self, samples: int, seq_len: int, dtype: str) -> float:
        """Peak activation memory: the widest intermediate (MLP) plus the residual stream."""
        return float(samples * seq_len * (self.ffn + 3 * self.hidden) * dtype_bytes(dtype))


def bert_base() -> Encoder:
    """BERT-base (Devlin et al., NAACL 2019): L=12, H=768, A=12, FFN 3072, vocab 30,522."""
    return Encoder(
        "bert-base",
        "Devlin et al., 'BERT', NAACL 2019, Section 3 (BERT-BASE)",
        layers=12,
        hidden=768,
        heads=12,
        ffn=3072,
        vocab=30522,
    )


def bert_large() -> Encoder:
    """BERT-large (Devlin et al., NAACL 2019): L=24, H=1024, A=16, FFN 4096, vocab 30,522."""
    return Encoder(
        "bert-large",
        "Devlin et al., 'BERT', NAACL 2019, Section 3 (BERT-LARGE)",
        layers=24,
        hidden=1024,
        heads=16,
        ffn=4096,
        vocab=30522,
    )


@dataclass
class Decoder(Architecture):
    """A Llama-style decoder LLM: RMSNorm, RoPE, grouped-query attention, gated (SwiGLU) MLP.

    ``experts > 1`` makes every MLP a mixture of ``experts`` experts with ``top_k`` routing
    (Mixtral); expert weights read per step follow the expected number of distinct experts
    hit under uniform routing.
    """

    name: str
    source: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    max_context_tokens: int
    experts: int = 1
    top_k: int = 1
    family: str = "decoder"
    autoregressive: bool = True
    default_dtype: str = "bf16"

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head."""
        return self.hidden // self.heads

    def param_count(self) -> int:
        """Embeddings, untied LM head, and per layer attention, MLP (all experts), norms."""
        h, hd = self.hidden, self.head_dim
        attn = h * self.heads * hd + 2 * h * self.kv_heads * hd + self.heads * hd * h
        mlp = 3 * h * self.ffn * self.experts + (h * self.experts if self.experts > 1 else 0)
        layer = attn + mlp + 2 * h
        return 2 * self.vocab * h + self.layers * layer + h

    def expert_param_count(self) -> int:
        """Parameters in the experts of the MoE layers (0 for a dense model)."""
        return 3 * self.hidden * self.ffn * self.experts * self.layers if self.experts > 1 else 0

    def weight_bytes_per_device(self, dtype: str, tp: int = 1, pp: int = 1, ep: int = 1) -> float:
        """Weight bytes on one device: the layers split over ``pp`` stages and ``tp``
        tensor-parallel shards; with ``ep`` expert parallelism each device keeps the non-expert
        weights whole and ``1/ep`` of the experts."""
        b = dtype_bytes(dtype)
        experts = self.expert_param_count()
        if ep > 1:
            return ((self.param_count() - experts) + experts / ep) * b / pp
        return self.param_count() * b / (tp * pp)

    def active_param_count(self) -> int:
        """Parameters used per token (``top_k`` experts of each MoE layer)."""
        if self.experts == 1:
            return self.param_count()
        unused = 3 * self.hidden * self.ffn * (self.experts - self.top_k) * self.layers
        return self.param_count() - unused

    def kv_bytes_per_token(self, dtype: str, tp: int = 1) -> float:
        """KV-cache bytes per token on one of ``tp`` devices (K and V, every layer)."""
        kv_heads = max(1, self.kv_heads // tp)
        return float(2 * self.layers * kv_heads * self.head_dim * dtype_bytes(dtype))

    def dense_operators(
        self, n_tokens: int, n_seqs: int, dtype: str, tp: int = 1, ep: int = 1, skew: float = 0.0
    ) -> list[Operator]:
        """Every operator of one iteration except attention, on one device.

        ``n_tokens`` new tokens in the batch (prompt chunks plus one per decoding request);
        ``n_seqs`` sequences that emit a token (the LM head runs on one row per sequence).
        With expert parallelism over ``ep`` devices (MoE only), attention and the dense layers
        are data-parallel (each device takes ``1/ep`` of the tokens), each device holds
        ``experts/ep`` experts, tokens are dispatched to their experts and combined back by two
        all-to-alls per layer, and the step waits for the busiest device's experts under a
        routing distribution of Zipf skew ``skew`` (:func:`expert_loads`).
        """
        b = dtype_bytes(dtype)
        h, hd, n_l = self.hidden, self.head_dim, self.layers
        t = -(-n_tokens // ep)  # this device's share (the busiest one's)
        q_heads, kv_heads = self.heads // tp, max(1, self.kv_heads // tp)
        ops = [
            _elementwise("embedding", t * h, b, tensors=2, kind="embedding"),
            _elementwise("input_norm", t * h, b, tensors=2, count=n_l, flops_per_element=4, kind="norm"),
            _gemm("qkv_proj", t, (q_heads + 2 * kv_heads) * hd, h, b, n_l),
            _elementwise(
                "rope", t * (q_heads + kv_heads) * hd, b, tensors=2, count=n_l, flops_per_element=6, variant="rope"
            ),
            _elementwise("kv_cache_append", t * 2 * kv_heads * hd, b, tensors=2, count=n_l),
            _gemm("o_proj", t, h, q_heads * hd, b, n_l),
            _elementwise("post_norm", t * h, b, tensors=2, count=n_l, flops_per_element=4, kind="norm"),
            _elementwise("residual_add", t * h, b, tensors=3, count=2 * n_l, variant="add"),
        ]
        f = self.ffn // tp
        if self.experts == 1:
            ops += [
                _gemm("mlp_up_gate", t, 2 * f, h, b, n_l),
                _elementwise("mlp_act", t * f, b, tensors=3, count=n_l, flops_per_element=5, variant="act"),
                _gemm("mlp_down", t, h, f, b, n_l),
            ]
        else:
            ops += self._moe_operators(n_tokens, t, f, b, ep, skew)
        if tp > 1:
            ops.append(Operator("allreduce", "allreduce", 0.0, float(t * h * b), 2 * n_l, (t * h * b,)))
        return ops + self.sequence_operators(n_seqs, dtype, tp, ep)

    def sequence_operators(self, n_seqs: int, dtype: str, tp: int = 1, ep: int = 1) -> list[Operator]:
        """The operators of :meth:`dense_operators` that depend only on the number of sequences
        emitting a token (final norm and LM head); the rest depend only on the tokens."""
        if n_seqs <= 0:
            return []
        b = dtype_bytes(dtype)
        s = -(-n_seqs // ep)
        return [
            _elementwise("final_norm", s * self.hidden * 1.0, b, tensors=2, flops_per_element=4, kind="norm"),
            _gemm("lm_head", s, self.vocab // tp, self.hidden, b),
        ]

    def _moe_operators(self, tokens: int, local: int, f: int, b: int, ep: int, skew: float) -> list[Operator]:
        """Router, the busiest device's expert GEMMs and activation, and (``ep > 1``) the
        dispatch and combine all-to-alls, for ``tokens`` tokens in the batch (``local`` of them
        on this device)."""
        h, k, n_l = self.hidden, self.top_k, self.layers
        ops = [_gemm("moe_router", local, self.experts, h, b, n_l)]
        for slot, (p_hit, rows) in enumerate(expert_loads(self.experts, k, tokens, ep, skew)):
            m = max(1, round(rows))
            # an expert is run (and its weights read) only in the fraction p_hit of steps it is hit
            up = _gemm(f"moe_expert{slot}_up_gate", m, 2 * f, h, b, n_l)
            down = _gemm(f"moe_expert{slot}_down", m, h, f, b, n_l)
            act = _elementwise(f"moe_expert{slot}_act", m * f, b, tensors=3, count=n_l, flops_per_element=5)
            for op in (up, act, down):
                ops.append(Operator(op.name, op.kind, op.flops * p_hit, op.bytes * p_hit, op.count, op.shape))
        if ep > 1:
            nbytes = float(local * k * h * b)
            ops.append(Operator("moe_dispatch", "alltoall", 0.0, nbytes, n_l, (int(nbytes),)))
            ops.append(Operator("moe_combine", "alltoall", 0.0, nbytes, n_l, (int(nbytes),)))
        return ops

    def prefill_attention(self, q_len: int, kv_len: int, dtype: str, tp: int = 1) -> Operator:
        """Causal attention of ``q_len`` new tokens over ``kv_len`` keys (past + new), all layers."""
        b = dtype_bytes(dtype)
        q_heads, kv_heads, hd = self.heads // tp, max(1, self.kv_heads // tp), self.head_dim
        past = kv_len - q_len
        mean_keys = past + (q_len + 1) / 2.0  # causal mask: token i sees past + i keys
        flops = 4.0 * q_len * mean_keys * q_heads * hd
        nbytes = (2 * q_len * q_heads * hd + 2 * kv_len * kv_heads * hd) * b
        return Operator(
            "attention_prefill",
            "attention_prefill",
            flops,
            float(nbytes),
            self.layers,
            (q_heads, q_len, past),
            f"hd{hd}",
        )

    def decode_attention_terms(self, dtype: str, tp: int = 1) -> tuple[float, float, float, float]:
        """Per-layer decode attention as affine terms in the batch's total KV length.

        Returns ``(flops_per_kv_token, bytes_per_kv_token, flops_per_seq, bytes_per_seq)`` so
        that a batch of ``n`` sequences holding ``kv`` keys in total costs
        ``flops = a*kv + c*n`` and ``bytes = b*kv + d*n`` per layer (vectorisable over kv).
        """
        b = dtype_bytes(dtype)
        q_heads, kv_heads, hd = self.heads // tp, max(1, self.kv_heads // tp), self.head_dim
        return (4.0 * q_heads * hd, 2.0 * kv_heads * hd * b, 0.0, 2.0 * q_heads * hd * b)

    def activation_bytes(self, n_tokens: int, dtype: str, tp: int = 1) -> float:
        """Peak activation memory of one iteration over ``n_tokens`` (MLP intermediate + stream)."""
        per_token = (3 * self.ffn // tp) * self.top_k + 4 * self.hidden
        return float(n_tokens * per_token * dtype_bytes(dtype))

    def describe(self) -> str:
        """One line for ``ldsim list models``."""
        moe = f", {self.experts} experts top-{self.top_k}" if self.experts > 1 else ""
        return f"decoder, {self.param_count() / 1e9:.2f}B parameters{moe}, context {self.max_context_tokens}"


def llama2_7b() -> Decoder:
    """Llama-2-7B (Touvron et al. 2023; HF config): 32 layers, 4096 hidden, 32 heads, FFN 11008."""
    return Decoder(
        "llama-2-7b",
        "Touvron et al., 'Llama 2', 2023, Table 1; meta-llama/Llama-2-7b-hf config.json",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=32,
        ffn=11008,
        vocab=32000,
        max_context_tokens=4096,
    )


def llama3_8b() -> Decoder:
    """Llama-3-8B (Meta, 2024; HF config): 32 layers, 4096 hidden, 32 heads, 8 KV heads, FFN 14336."""
    return Decoder(
        "llama-3-8b",
        "Meta Llama 3 model card (2024); meta-llama/Meta-Llama-3-8B config.json",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        ffn=14336,
        vocab=128256,
        max_context_tokens=8192,
    )


def llama31_8b() -> Decoder:
    """Llama-3.1-8B (Meta, 2024; HF config): Llama-3-8B's layers with a 131,072-token context
    (RoPE scaled), for long-prompt traces such as Mooncake's."""
    return Decoder(
        "llama-3.1-8b",
        "Meta Llama 3.1 model card (2024); meta-llama/Llama-3.1-8B config.json (max_position_embeddings 131072)",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        ffn=14336,
        vocab=128256,
        max_context_tokens=131072,
    )


def llama2_70b() -> Decoder:
    """Llama-2-70B (Touvron et al. 2023; HF config): 80 layers, 8192 hidden, 64 heads, 8 KV heads."""
    return Decoder(
        "llama-2-70b",
        "Touvron et al., 'Llama 2', 2023, Table 1; meta-llama/Llama-2-70b-hf config.json",
        layers=80,
        hidden=8192,
        heads=64,
        kv_heads=8,
        ffn=28672,
        vocab=32000,
        max_context_tokens=4096,
    )


def mixtral_8x7b() -> Decoder:
    """Mixtral-8x7B (Jiang et al. 2024): 32 layers, 4096 hidden, 8 KV heads, 8 experts, top-2."""
    return Decoder(
        "mixtral-8x7b",
        "Jiang et al., 'Mixtral of Experts', 2024, Table 1; mistralai/Mixtral-8x7B-v0.1 config.json",
        layers=32,
        hidden=4096,
        heads=32,
        kv_heads=8,
        ffn=14336,
        vocab=32000,
        max_context_tokens=32768,
        experts=8,
        top_k=2,
    )


# --------------------------------------------------------------------------------------------
# Recommendation


@dataclass
class Recommendation(Architecture):
    """A DLRM (Naumov et al. 2019): bottom MLP on dense features, one embedding bag per sparse
    feature, pairwise dot-product interaction, top MLP."""

    name: str
    source: str
    dense_features: int
    table_rows: list[int]
    embedding_dim: int
    bottom_mlp: list[int]
    top_mlp: list[int]
    lookups_per_table: int = 1
    family: str = "recommendation"
    default_dtype: str = "fp32"

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input: the dense vector plus every distinct dot product."""
        n = len(self.table_rows) + 1
        return self.embedding_dim + n * (n - 1) // 2

    def _mlp_dims(self) -> list[tuple[int, int]]:
        bottom = [self.dense_features, *self.bottom_mlp]
        top = [self.interaction_width, *self.top_mlp]
        return list(itertools.pairwise(bottom)) + list(itertools.pairwise(top))

    def param_count(self) -> int:
        """Embedding tables plus the MLP weights and biases."""
        mlp = sum(i * o + o for i, o in self._mlp_dims())
        return sum(self.table_rows) * self.embedding_dim + mlp

    def operators(self, samples: int, dtype: str) -> list[Operator]:
        """Operators of one forward pass over ``samples`` queries."""
        b = dtype_bytes(dtype)
        d, n_t = self.embedding_dim, len(self.table_rows)
        dims = self._mlp_dims()
        # the ReLU after each MLP layer is taken as fused into its GEMM (an epilogue, as
        # inference runtimes run it), so it is not an operator of its own
        ops = [_gemm(f"mlp{i}", samples, o, i_, b) for i, (i_, o) in enumerate(dims)]
        gathered = samples * n_t * self.lookups_per_table * d
        ops.append(
            Operator(
                "embedding_bag",
                "embedding_bag",
                float(gathered),
                float((gathered + samples * n_t * d) * b),
                1,
                (int((gathered + samples * n_t * d) * b),),
            )
        )
        n = n_t + 1
        ops.append(
            Operator(
                "interaction",
                "gemm",
                2.0 * samples * n * n * d,
                float(samples * (n * d + self.interaction_width) * b),
                1,
                (samples * n, n, d),
            )
        )
        # the interaction's data movement: the dense vector concatenated with the embeddings
        # before the products, and the distinct products gathered and concatenated after them
        ops.append(_elementwise("interaction_concat", samples * n * d, b, tensors=2))
        ops.append(_elementwise("interaction_gather", samples * self.interaction_width, b, tensors=2))
        return ops

    def activation_bytes(self, samples: int, dtype: str) -> float:
        """Peak activation memory: the widest MLP layer plus the gathered embeddings."""
        widest = max(max(i, o) for i, o in self._mlp_dims())
        return float(samples * (2 * widest + len(self.table_rows) * self.embedding_dim) * dtype_bytes(dtype))


_CRITEO_KAGGLE_ROWS = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]

_CRITEO_TB_10M_ROWS = [
    9980333,
    36084,
    17217,
    7378,
    20134,
    3,
    7112,
    1442,
    61,
    9758201,
    1333352,
    313829,
    10,
    2208,
    11156,
    122,
    4,
    970,
    14,
    9994222,
    7267859,
    9946608,
    415421,
    12420,
    101,
    36,
]


def dlrm_criteo_kaggle() -> Recommendation:
    """DLRM for Criteo Kaggle (facebookresearch/dlrm reference configuration).

    13 dense features, 26 tables of the dataset's category counts, dimension 16, bottom MLP
    13-512-256-64-16, top MLP 367-512-256-1: about 540 M parameters (2.2 GB in fp32).
    """
    return Recommendation(
        "dlrm-criteo-kaggle",
        "Naumov et al., 'DLRM', 2019; facebookresearch/dlrm Criteo Kaggle configuration",
        dense_features=13,
        table_rows=_CRITEO_KAGGLE_ROWS,
        embedding_dim=16,
        bottom_mlp=[512, 256, 64, 16],
        top_mlp=[512, 256, 1],
    )


def dlrm_criteo_terabyte() -> Recommendation:
    """DLRM for Criteo Terabyte with 10 M-row hashing (facebookresearch/dlrm configuration).

    Dimension 64, bottom MLP 13-512-256-64, top MLP 415-512-512-256-1: about 3.1 G
    parameters (12.6 GB in fp32).
    """
    return Recommendation(
        "dlrm-criteo-terabyte",
        "Naumov et al., 'DLRM', 2019; facebookresearch/dlrm Criteo Terabyte configuration (--max-ind-range=10000000)",
        dense_features=13,
        table_rows=_CRITEO_TB_10M_ROWS,
        embedding_dim=64,
        bottom_mlp=[512, 256, 64],
        top_mlp=[512, 512, 256, 1],
    )


@functools.lru_cache(maxsize=4096)
def expert_loads(experts: int, top_k: int, tokens: int, ep: int, skew: float) -> tuple[tuple[float, float], ...]:
    """The expected load of each expert on the busiest of ``ep`` devices, for ``tokens`` tokens
    each routed to ``top_k`` experts.

    Routing draws each token's experts from a Zipf distribution over experts,
    ``p_e ~ (e + 1) ** -skew`` (``skew = 0``: uniform); experts are spread round-robin over the
    devices. For each of 256 draws (a fixed seed: the cost model stays a pure function) the
    device with the most tokens is the step's critical path; its experts, sorted by load, are
    averaged across draws. Returns, per expert slot of that device, ``(p_hit, rows)``: the
    probability the slot has any token and its mean token count when it does.
    """
    rng = np.random.default_rng(0)
    p = (np.arange(experts) + 1.0) ** -skew
    p /= p.sum()
    draws = 256
    counts = rng.multinomial(tokens * top_k, p, size=draws)  # (draws, experts)
    per_device = counts.reshape(draws, -1, ep) if experts % ep == 0 else None
    if per_device is None:
        raise ValueError(f"{experts} experts do not split evenly over {ep} devices")
    busiest = per_device.sum(axis=1).argmax(axis=1)  # experts e, e+ep, ... live on device e % ep
    loads = np.sort(per_device[np.arange(draws), :, busiest], axis=1)[:, ::-1]  # (draws, experts/ep)
    hit = loads > 0
    p_hit = hit.mean(axis=0)
    rows = np.where(hit.any(axis=0), (loads * hit).sum(axis=0) / np.maximum(hit.sum(axis=0), 1), 0.0)
    return tuple((float(a), float(r)) for a, r in zip(p_hit, rows, strict=True) if a > 0)
