"""Architecture specs against their published numbers."""

from __future__ import annotations

import pytest

from simulator import models as m
from simulator.registry import MODELS

# Published / Hugging Face parameter counts (config.json of each model, or torchvision).
PUBLISHED = {
    "bert-base": 109_482_240,
    "bert-large": 335_141_888,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "llama-2-70b": 68_976_648_192,
    "mixtral-8x7b": 46_702_792_704,
}


@pytest.mark.parametrize(("name", "count"), PUBLISHED.items())
def test_transformer_parameter_counts_equal_the_published_ones(name, count):
    assert MODELS.resolve(name)().param_count() == count


def test_resnet50_matches_torchvision_after_folding_batch_norm():
    r = m.resnet50()
    bn_channels = sum(c.cout for c in r.convs)
    # torchvision: 25,557,032 with two BN parameters per channel; folded keeps one bias
    assert r.param_count() + bn_channels == 25_557_032
    assert r.macs_per_sample() == pytest.approx(4.09e9, rel=0.005)


def test_mixtral_active_parameters():
    assert m.mixtral_8x7b().active_param_count() == pytest.approx(12.9e9, rel=0.01)


def test_dlrm_kaggle_size():
    d = m.dlrm_criteo_kaggle()
    assert sum(d.table_rows) == 33_762_577
    assert d.interaction_width == 16 + 27 * 26 // 2  # 367: the top MLP's published input


def test_kv_bytes_per_token_by_hand():
    # Llama-2-7B: 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes = 524,288
    assert m.llama2_7b().kv_bytes_per_token("bf16") == 524_288
    # Llama-2-70B with GQA (8 KV heads) over TP=2: 2 x 80 x 4 x 128 x 2 = 163,840 per device
    assert m.llama2_70b().kv_bytes_per_token("bf16", tp=2) == 163_840


def test_decoder_dense_flops_are_twice_the_active_parameters_per_token():
    # one decode token through every GEMM costs ~2 FLOPs per parameter (minus the embedding)
    llama = m.llama2_7b()
    flops = sum(op.flops * op.count for op in llama.dense_operators(1, 1, "bf16") if op.kind == "gemm")
    matmul_params = llama.param_count() - llama.vocab * llama.hidden - llama.layers * 2 * llama.hidden - llama.hidden
    assert flops == pytest.approx(2 * matmul_params, rel=1e-9)


def test_tensor_parallel_splits_gemms_and_adds_two_allreduces_per_layer():
    llama = m.llama2_7b()
    one = {op.name: op for op in llama.dense_operators(64, 64, "bf16", tp=1)}
    two = {op.name: op for op in llama.dense_operators(64, 64, "bf16", tp=2)}
    for name in ("qkv_proj", "o_proj", "mlp_up_gate", "mlp_down"):
        assert two[name].flops == pytest.approx(one[name].flops / 2)
    assert "allreduce" not in one
    assert two["allreduce"].count == 2 * llama.layers
    assert two["allreduce"].bytes == 64 * llama.hidden * 2


def test_prefill_attention_is_causal():
    llama = m.llama2_7b()
    full = llama.prefill_attention(1000, 1000, "bf16")
    # a causal prompt of 1000 tokens attends on average (1000 + 1) / 2 keys per query
    assert full.flops == pytest.approx(4 * 1000 * 500.5 * 32 * 128)
