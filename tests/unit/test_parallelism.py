"""Model parallelism: tensor, pipeline and expert parallelism in placement, memory and cost."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from simulator.cost import Deployment, ModelCost
from simulator.experiment import resolve
from simulator.hardware import load_profile
from simulator.models import expert_loads, llama2_7b, llama2_70b, mixtral_8x7b
from tests.conftest import LLM, make_runs, run_doc

A100 = load_profile("a100-sxm-80gb")


def _llm(**deployment):
    doc = copy.deepcopy(LLM)
    doc["models"]["llama"].update(deployment)
    return doc


def _resolved(doc):
    return resolve(make_runs(doc)[0])


def test_a_replica_larger_than_a_node_places_whole_stages_on_several_nodes():
    resolved = _resolved(_llm(architecture="llama-2-70b", tensor_parallel=8, pipeline_parallel=2, replicas=2))
    placements = resolved.cluster.placements
    assert [p.stage_nodes for p in placements] == [(0, 1), (2, 3)]
    assert [p.devices for p in placements] == [tuple(range(0, 16)), tuple(range(16, 32))]
    assert all(p.spans_nodes for p in placements)
    assert resolved.models["llama"].cost.deployment.cross_node


def test_a_replica_that_fits_a_node_keeps_its_stages_together():
    resolved = _resolved(_llm(architecture="llama-2-70b", tensor_parallel=2, pipeline_parallel=2, replicas=3))
    assert [p.stage_nodes for p in resolved.cluster.placements] == [(0, 0), (0, 0), (1, 1)]
    assert not resolved.models["llama"].cost.deployment.cross_node


def test_pipeline_stages_cross_nodes_over_the_network_and_pay_for_it():
    arch = llama2_70b()
    inside = ModelCost(Deployment(arch, "bf16", tp=4, pp=2), A100)
    across = ModelCost(Deployment(arch, "bf16", tp=4, pp=2, cross_node=True), A100)
    kv = np.array([8 * 1024.0])
    assert across.decode_steps_s(8, kv)[0] > inside.decode_steps_s(8, kv)[0]
    # the difference is one transfer of a micro-batch (8 sequences / 2), network vs NVLink
    gap = across.decode_steps_s(8, kv)[0] - inside.decode_steps_s(8, kv)[0]
    assert gap == pytest.approx(across._stage_transfer_s(4) - inside._stage_transfer_s(4), rel=1e-9)


def test_one_microbatch_through_two_stages_costs_the_whole_model_plus_one_transfer():
    arch = llama2_7b()
    whole = ModelCost(Deployment(arch, "bf16"), A100)
    staged = ModelCost(Deployment(arch, "bf16", pp=2, microbatches=1), A100)
    kv = np.array([4096.0, 8192.0])
    expected = whole.decode_steps_s(16, kv) + staged._stage_transfer_s(16)
    np.testing.assert_allclose(staged.decode_steps_s(16, kv), expected, rtol=1e-12)
    assert staged._stage_transfer_s(16) > 0


def test_more_microbatches_shrink_the_pipeline_bubble_of_a_large_prefill():
    arch = llama2_70b()
    prefills = [(2048, 2048)] * 8
    times = [
        ModelCost(Deployment(arch, "bf16", tp=2, pp=4, microbatches=m), A100).iteration_s(prefills, 0, 0)
        for m in (1, 2, 4, 8)
    ]
    # GPipe: (m + pp - 1) stage times of 1/m of the batch each; compute-bound prefill keeps
    # the stage time ~1/m, so the bubble (pp - 1) / (m + pp - 1) shrinks as m grows
    assert times[0] > times[1] > times[2] > times[3]
    assert times[0] / times[3] == pytest.approx((1 + 3) / ((8 + 3) / 8), rel=0.15)


def test_microbatching_a_weight_bound_decode_costs_more_per_iteration():
    arch = llama2_70b()
    kv = np.array([64 * 512.0])
    one, four = (
        float(ModelCost(Deployment(arch, "bf16", tp=2, pp=4, microbatches=m), A100).decode_steps_s(64, kv)[0])
        for m in (1, 4)
    )
    # each micro-batch reads the stage's weights again: small decode batches gain nothing
    assert four > one


def test_weights_per_device_split_over_stages_and_shards():
    arch = llama2_70b()
    total = arch.weight_bytes("bf16")
    assert arch.weight_bytes_per_device("bf16", tp=8, pp=2) == pytest.approx(total / 16)
    moe = mixtral_8x7b()
    experts = moe.expert_param_count() * 2
    non_expert = moe.param_count() * 2 - experts
    assert moe.weight_bytes_per_device("bf16", ep=8) == pytest.approx(non_expert + experts / 8)
    # Mixtral's experts are most of its weights (~45 of ~47 B parameters)
    assert 0.9 < experts / (moe.param_count() * 2) < 0.99


def test_a_pipeline_stage_holds_kv_for_its_layers_only():
    one = _resolved(_llm(architecture="llama-2-70b", tensor_parallel=4)).models["llama"]
    two = _resolved(_llm(architecture="llama-2-70b", tensor_parallel=4, pipeline_parallel=2)).models["llama"]
    assert two.kv.block_bytes == pytest.approx(one.kv.block_bytes / 2)
    # half the weights per device and half the block size: more than twice the blocks
    assert two.kv.total_blocks > 2 * one.kv.total_blocks
    assert two.devices_per_replica == 8 and two.stage_devices == 4


def test_expert_parallel_replicas_hold_kv_on_every_device():
    doc = _llm(architecture="mixtral-8x7b", expert_parallel=4)
    plan = _resolved(doc).models["llama"]
    assert plan.devices_per_replica == 4
    assert plan.kv.total_blocks % 4 == 0 and plan.kv.total_blocks > 0
    per_device = plan.memory.kv_cache_bytes
    assert per_device == pytest.approx(plan.kv.total_blocks / 4 * plan.kv.block_bytes)


def test_the_busiest_expert_device_carries_more_than_its_share_under_skew():
    tokens = 256
    for skew, low, high in ((0.0, 1.0, 1.3), (1.2, 1.6, 8.0)):
        loads = expert_loads(8, 2, tokens, 4, skew)
        busiest_rows = sum(p * rows for p, rows in loads)
        share = tokens * 2 / 4
        assert low <= busiest_rows / share <= high, (skew, busiest_rows / share)


def test_a_skewed_router_slows_the_moe_step():
    arch = mixtral_8x7b()
    kv = np.array([32 * 1024.0])
    times = [
        float(ModelCost(Deployment(arch, "bf16", ep=8, skew=s), A100).decode_steps_s(256, kv)[0])
        for s in (0.0, 0.5, 1.0, 2.0)
    ]
    assert times == sorted(times) and times[-1] > 1.3 * times[0]


def test_expert_parallelism_adds_dispatch_and_combine_all_to_alls():
    arch = mixtral_8x7b()
    ops = arch.dense_operators(512, 512, "bf16", ep=8)
    a2a = [op for op in ops if op.kind == "alltoall"]
    assert len(a2a) == 2 and all(op.count == arch.layers for op in a2a)
    assert not [op for op in arch.dense_operators(512, 512, "bf16") if op.kind == "alltoall"]


@pytest.mark.parametrize(
    ("deployment", "fragment"),
    [
        ({"architecture": "llama-2-7b", "expert_parallel": 2}, "needs a mixture-of-experts model"),
        ({"architecture": "mixtral-8x7b", "expert_parallel": 3}, "must divide the 8 experts"),
        ({"architecture": "mixtral-8x7b", "expert_parallel": 2, "tensor_parallel": 2}, "is not modelled"),
        ({"architecture": "llama-2-7b", "pipeline_parallel": 33}, "exceeds the 32 layers"),
        (
            {"architecture": "mixtral-8x7b", "expert_parallel": 8, "tensor_parallel": 1, "pipeline_parallel": 1},
            None,
        ),
    ],
)
def test_impossible_parallelism_is_refused_with_the_key(deployment, fragment):
    doc = _llm(**deployment)
    if fragment is None:
        _resolved(doc)
        return
    with pytest.raises(Exception, match=fragment) as info:
        _resolved(doc)
    assert "models.llama" in str(info.value)


def test_pipeline_parallel_on_a_cnn_is_refused():
    doc = {
        "name": "cnn",
        "models": {"r": {"architecture": "resnet-50", "pipeline_parallel": 2}},
        "workload": {"rate_rps": 1, "num_requests": 1, "mix": [{"model": "r", "input_samples": 1}]},
    }
    with pytest.raises(Exception, match="modelled for decoder"):
        _resolved(doc)


def test_a_pipelined_moe_run_conserves_requests_and_is_deterministic():
    doc = _llm(architecture="mixtral-8x7b", expert_parallel=4, pipeline_parallel=2, moe_routing_skew=0.8)
    doc["workload"]["num_requests"] = 40
    _, _, first = run_doc(doc)
    _, _, second = run_doc(doc)
    assert len(first) == 40 and (first["status"] == "completed").all()
    assert first.equals(second)
