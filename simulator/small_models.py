"""Small models that a CPU (or one GPU) runs for real: the executor's models, specified here.

Each function returns a torch-free :class:`~simulator.models.Architecture` registered in
:data:`simulator.registry.MODELS`, so the simulator prices exactly the model that the real
executor (:mod:`simulator.executor`) builds from the same spec with random weights. They are
sized so that one forward pass on one CPU core takes milliseconds, and so that the decoder's
weights (about 80 MB in fp32) are larger than a CPU's last-level cache, as a served LLM's are.

* ``small-resnet`` -- a ResNet-style CNN on 64x64 images: a stride-2 stem, three stages of
  basic blocks (64, 128 and 256 channels), global average pool, a 10-way classifier.
* ``small-bert`` -- a BERT-style encoder: 4 layers, hidden 256, 4 heads, FFN 1024, 128
  positions.
* ``small-llama`` -- a Llama-style decoder: 4 layers, hidden 512, 8 heads, SwiGLU FFN 1536,
  vocabulary 8192, context 1024.
* ``small-dlrm`` -- a DLRM: 13 dense features, 8 embedding tables of 100,000 rows (dimension
  32), bottom MLP 13-128-64-32, top MLP 68-128-64-1.

The small models state their operators a little more finely than the generic
:class:`~simulator.models.CNN`, :class:`~simulator.models.Encoder` and
:class:`~simulator.models.Decoder`, because the executor's eager torch code runs them as
separate kernels: :class:`SmallCNN` lists the in-place ReLU after each convolution
(``elementwise`` variant ``relu``), :class:`SmallDecoder` tags its KV-cache append
(``elementwise`` variant ``kv_append``), and :class:`SmallEncoder` tags its
embeddings (``embedding`` variant ``bert_embeddings``: a gather and a position add),
residual-add-plus-LayerNorm (``norm`` variant ``add_layer_norm``) and GELU (``elementwise``
variant ``gelu``) so that a profile measured for these models prices them from their own
tables (a profile without those variants prices them from the kind's generic table, as before).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from simulator.models import CNN, ConvLayer, Decoder, Encoder, Operator, Recommendation, dtype_bytes

__all__ = [
    "SMALL_MODELS",
    "SmallCNN",
    "SmallDecoder",
    "SmallEncoder",
    "small_bert",
    "small_dlrm",
    "small_llama",
    "small_resnet",
]


@dataclass
class SmallCNN(CNN):
    """A CNN whose spec also lists its activations: ``activations`` holds ``(h, w, channels)``
    of each in-place ReLU (one pass reading and writing the tensor)."""

    activations: list[tuple[int, int, int]] = field(default_factory=list)
    default_dtype = "fp32"

    def operators(self, samples: int, dtype: str) -> list[Operator]:
        """The CNN's operators, plus one ``elementwise``/``relu`` operator per activation."""
        b = dtype_bytes(dtype)
        ops = super().operators(samples, dtype)
        fc = ops.pop()  # keep the classifier last, as the forward pass runs it
        for i, (h, w, ch) in enumerate(self.activations):
            elements = samples * h * w * ch
            nbytes = 2 * elements * b  # read and written in place
            ops.append(Operator(f"relu{i}", "elementwise", float(elements), float(nbytes), 1, (nbytes,), "relu"))
        ops.append(fc)
        return ops


@dataclass
class SmallEncoder(Encoder):
    """An encoder whose residual-add + LayerNorm and GELU carry the variants of the kernels the
    executor runs (``bert_embeddings``, ``add_layer_norm``, ``gelu``); shapes, FLOPs and bytes are
    :class:`~simulator.models.Encoder`'s."""

    default_dtype = "fp32"

    def operators(self, samples: int, seq_len: int, dtype: str, tp: int = 1) -> list[Operator]:
        """The encoder's operators with the executor's variants tagged."""
        tags = {"embeddings": "bert_embeddings", "add_norm": "add_layer_norm", "gelu": "gelu"}
        return [
            replace(op, variant=tags[op.name]) if op.name in tags else op
            for op in super().operators(samples, seq_len, dtype, tp)
        ]


@dataclass
class SmallDecoder(Decoder):
    """A decoder whose KV-cache append carries the variant of the kernel the executor runs
    (``elementwise`` variant ``kv_append``: one ``index_copy_`` per layer); everything else is
    :class:`~simulator.models.Decoder`'s."""

    def dense_operators(
        self, n_tokens: int, n_seqs: int, dtype: str, tp: int = 1, ep: int = 1, skew: float = 0.0
    ) -> list[Operator]:
        """The decoder's operators with the KV append tagged."""
        return [
            replace(op, variant="kv_append") if op.name == "kv_cache_append" else op
            for op in super().dense_operators(n_tokens, n_seqs, dtype, tp, ep, skew)
        ]


def small_resnet() -> SmallCNN:
    """A small ResNet-style CNN on 3x64x64 images (ldsim's own small-scale model).

    Stem: 3x3 convolution, stride 2, 64 channels (32x32 out). Then three stages of one basic
    block each (two 3x3 convolutions and a residual add; the first convolution of stages 2 and
    3 has stride 2, with a 1x1 stride-2 projection shortcut): 64, 128, 256 channels at 32x32,
    16x16, 8x8 (0.39 GFLOP per image). Global average pool and a 10-way linear classifier. Batch norm is folded into
    the convolutions' biases; a ReLU follows the stem, the first convolution of each block, and
    each residual add.
    """
    convs = [ConvLayer("stem", 3, 64, 3, 2, 64, 64)]
    acts = [(32, 32, 64)]
    adds = []
    h, cin = 32, 64
    for stage, width in enumerate((64, 128, 256)):
        stride = 1 if stage == 0 else 2
        ho = -(-h // stride)
        tag = f"layer{stage + 1}"
        convs.append(ConvLayer(f"{tag}.conv1", cin, width, 3, stride, h, h))
        acts.append((ho, ho, width))
        convs.append(ConvLayer(f"{tag}.conv2", width, width, 3, 1, ho, ho))
        if stride != 1 or cin != width:
            convs.append(ConvLayer(f"{tag}.downsample", cin, width, 1, stride, h, h))
        adds.append((ho, ho, width))
        acts.append((ho, ho, width))
        h, cin = ho, width
    return SmallCNN(
        name="small-resnet",
        source="ldsim small-scale executor model (ResNet-style basic blocks, He et al. 2016)",
        convs=convs,
        residual_adds=adds,
        fc_in=cin,
        fc_out=10,
        pools=[(h, h, cin)],
        activations=acts,
    )


def small_bert() -> SmallEncoder:
    """A small BERT-style encoder (ldsim's own small-scale model): L=4, H=256, A=4, FFN 1024,
    vocabulary 8192, 128 positions."""
    return SmallEncoder(
        "small-bert",
        "ldsim small-scale executor model (BERT-style, Devlin et al. 2019)",
        layers=4,
        hidden=256,
        heads=4,
        ffn=1024,
        vocab=8192,
        max_positions=128,
    )


def small_llama() -> SmallDecoder:
    """A small Llama-style decoder (ldsim's own small-scale model): 4 layers, hidden 512, 8
    heads (no grouping), SwiGLU FFN 1536, vocabulary 8192, context 1024 tokens."""
    return SmallDecoder(
        "small-llama",
        "ldsim small-scale executor model (Llama-style, Touvron et al. 2023)",
        layers=4,
        hidden=512,
        heads=8,
        kv_heads=8,
        ffn=1536,
        vocab=8192,
        max_context_tokens=1024,
        default_dtype="fp32",
    )


def small_dlrm() -> Recommendation:
    """A small DLRM (ldsim's own small-scale model): 13 dense features, 8 tables of 100,000 rows
    of dimension 32, bottom MLP 13-128-64-32, top MLP 68-128-64-1."""
    return Recommendation(
        "small-dlrm",
        "ldsim small-scale executor model (DLRM, Naumov et al. 2019)",
        dense_features=13,
        table_rows=[100_000] * 8,
        embedding_dim=32,
        bottom_mlp=[128, 64, 32],
        top_mlp=[128, 64, 1],
    )


#: Registry name -> ``module:function`` of each small model (registered in MODELS).
SMALL_MODELS = {
    "small-resnet": "simulator.small_models:small_resnet",
    "small-bert": "simulator.small_models:small_bert",
    "small-llama": "simulator.small_models:small_llama",
    "small-dlrm": "simulator.small_models:small_dlrm",
}
