"""The roofline cost model on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.cost import Deployment, ModelCost, allreduce_s, operator_s
from simulator.hardware import load_profile
from simulator.models import Operator, llama2_7b, resnet50


@pytest.fixture
def a100(tmp_path):
    """A datasheet-only A100 profile with fixed efficiencies (independent of the shipped one)."""
    import yaml

    from simulator.hardware import available_profiles

    data = yaml.safe_load(available_profiles()["a100-sxm-80gb"].read_text())
    for key in ("tables", "measured_peaks"):
        data.pop(key, None)
    data["provenance"] = {"status": "datasheet", "sources": ["test"]}
    data["device"]["kernel_launch_overhead_us"] = 4.0
    data["efficiency"] = {"source": "test", "compute": {"default": 0.6, "gemm": 0.7}, "memory": {"default": 0.85}}
    data["node"]["intra_node"] = {"name": "nvlink3", "bandwidth_gb_per_s": 300, "latency_us": 2.0}
    path = tmp_path / "a100-datasheet.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


def test_operator_is_overhead_plus_the_larger_of_compute_and_memory(a100):
    op = Operator("g", "gemm", flops=1e12, bytes=1e9, count=3)
    compute = 1e12 / (312e12 * 0.70)
    memory = 1e9 / (2039e9 * 0.85)
    assert operator_s(op, a100, "bf16") == pytest.approx(3 * (4e-6 + max(compute, memory)), rel=1e-12)
    mem_bound = Operator("e", "elementwise", flops=1e6, bytes=1e9)
    assert operator_s(mem_bound, a100, "bf16") == pytest.approx(4e-6 + 1e9 / (2039e9 * 0.85), rel=1e-12)


def test_ring_allreduce_by_hand(a100):
    link = a100.node.intra_node  # 300 GB/s, 2 us
    assert allreduce_s(1e9, 1, link) == 0.0
    expected = 2 * 7 * 2e-6 + (2 * 7 / 8) * 1e9 / 300e9
    assert allreduce_s(1e9, 8, link) == pytest.approx(expected, rel=1e-12)


def test_tp2_step_is_the_halved_compute_plus_the_allreduces(a100):
    """A TP=2 decoder step costs exactly its per-device (halved) operators plus two
    all-reduces per layer of the activations, on the intra-node link."""
    llama = llama2_7b()
    tp2 = ModelCost(Deployment(llama, "bf16", 2), a100)
    ops = llama.dense_operators(32, 32, "bf16", tp=2)
    compute = sum(operator_s(op, a100, "bf16", 2) for op in ops if op.kind != "allreduce")
    comm = 2 * llama.layers * allreduce_s(32 * 4096 * 2, 2, a100.node.intra_node)
    assert tp2.dense_s(32, 32) == pytest.approx(compute + comm, rel=1e-12)
    half = next(op for op in ops if op.name == "qkv_proj")
    full = next(op for op in llama.dense_operators(32, 32, "bf16") if op.name == "qkv_proj")
    assert half.flops * 2 == full.flops


def test_decode_steps_vectorised_equals_scalar_iterations(a100):
    cost = ModelCost(Deployment(llama2_7b(), "bf16"), a100)
    kv = np.array([1000.0, 1032.0, 1064.0])
    vec = cost.decode_steps_s(32, kv)
    for i, k in enumerate(kv):
        assert cost.iteration_s([], 32, int(k)) == vec[i]  # bit-identical


def test_decode_is_memory_bound_and_grows_with_context(a100):
    cost = ModelCost(Deployment(llama2_7b(), "bf16"), a100)
    small, large = cost.decode_steps_s(16, np.array([16 * 100.0, 16 * 4000.0]))
    weights_s = llama2_7b().weight_bytes("bf16") / (2039e9 * 0.85)
    assert weights_s < small < large
    assert small < 1.3 * weights_s  # a small batch is dominated by reading the weights once


def test_batch_cost_grows_sublinearly_and_is_cached(a100):
    cost = ModelCost(Deployment(resnet50(), "fp16"), a100)
    b1, b32 = cost.batch_s(1), cost.batch_s(32)
    assert b1 < b32 < 32 * b1
    assert cost._batch_cache[(32, 0)][0] == b32  # priced once, then served from the cache
    cost._batch_cache[(32, 0)] = (-1.0, 0, 0)
    assert cost.batch_s(32) == -1.0
    assert cost.uncalibrated_kinds >= {"conv", "gemm"}


def test_unknown_dtype_is_a_clear_error(a100):
    from simulator.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no peak for dtype .fp8.*has: bf16"):
        ModelCost(Deployment(resnet50(), "fp8"), a100)
