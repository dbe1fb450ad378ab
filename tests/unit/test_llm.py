"""LLM-serving mechanisms on small cases whose answers are computed by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from simulator.engine import Simulation
from simulator.experiment import resolve
from simulator.hardware import GIB
from simulator.metrics import requests_frame
from simulator.request import RequestTable
from tests.conftest import make_runs


def _doc(batching, **deployment):
    return {
        "name": "llm",
        "seed": 1,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": 1},
        "models": {"llama": {"architecture": "llama-2-7b", "batching": batching, **deployment}},
        "workload": {
            "rate_rps": 1.0,
            "num_requests": 1,
            "mix": [{"model": "llama", "input_tokens": 1, "output_tokens": 1}],
        },
    }


def _resolve(doc):
    (run,) = make_runs(doc)
    return resolve(run)


def _table(arrivals, inputs, outputs, prefix=None):
    n = len(arrivals)
    nan = np.full(n, np.nan)
    kwargs = {}
    if prefix is not None:
        kwargs["prefix_ids"] = np.array([i for ids in prefix for i in ids], dtype=np.int64)
        kwargs["prefix_offsets"] = np.cumsum([0, *[len(ids) for ids in prefix]]).astype(np.int64)
    return RequestTable(
        arrival_s=np.array(arrivals, dtype=float),
        model=np.zeros(n, np.int32),
        tenant=np.zeros(n, np.int32),
        input_tokens=np.array(inputs, np.int64),
        input_samples=np.ones(n, np.int64),
        output_tokens=np.array(outputs, np.int64),
        priority=np.zeros(n, np.int32),
        ttft_slo_s=nan,
        tpot_slo_s=nan.copy(),
        e2e_slo_s=nan.copy(),
        model_names=["llama"],
        tenant_names=["default"],
        **kwargs,
    )


def _with_blocks(doc, blocks):
    """Set ``reserve_gib`` so that the replica's KV cache has exactly ``blocks`` blocks."""
    plan = _resolve(doc).models["llama"]
    budget = 80 * GIB * plan.memory_utilization - plan.memory.weights_bytes - plan.memory.activation_bytes
    doc = copy.deepcopy(doc)
    doc["models"]["llama"]["kv_cache"] = {
        **doc["models"]["llama"].get("kv_cache", {}),
        "reserve_gib": (budget - (blocks + 0.5) * plan.kv.block_bytes) / GIB,
    }
    resolved = _resolve(doc)
    assert resolved.models["llama"].kv.total_blocks == blocks
    return resolved


def test_block_count_is_computed_as_vllm_computes_it():
    plan = _resolve(_doc({"policy": "vllm", "max_num_batched_tokens": 4096})).models["llama"]
    weights = 6_738_415_616 * 2  # bf16 parameters
    activations = 4096 * (3 * 11008 + 4 * 4096) * 2  # one pass of max_num_batched_tokens
    free = 80 * 2**30 * 0.9 - weights - activations
    block_bytes = 16 * (2 * 32 * 32 * 128 * 2)  # 16 tokens x K,V x layers x heads x head_dim x bytes
    assert plan.kv.block_bytes == block_bytes
    assert plan.kv.total_blocks == int(free // block_bytes) == 7561
    assert plan.kv.watermark_blocks == int(0.01 * 7561)
    assert plan.kv.cpu_blocks == int(4 * 2**30 // block_bytes)  # swap_space_gib = 4


def test_preemption_of_the_newest_happens_when_blocks_run_out():
    """10 blocks of 16 tokens; two 64-token prompts hold 4 blocks each after prefill, take a
    5th at their first decode (64 + 1 tokens), and both need a 6th at the iteration that stores
    their 81st token: the newest is preempted holding exactly 64 + 16 = 80 tokens."""
    resolved = _with_blocks(_doc({"policy": "vllm"}), 10)
    sim = Simulation(resolved, _table([0.0, 0.0], [64, 64], [40, 40]))
    result = sim.run()
    df = requests_frame(result.table)
    replica = sim.replicas[0]
    assert list(df["preemptions"]) == [0, 1]
    assert replica.preemptions == 1 and replica.recomputed_tokens == 80
    assert (df["status"] == "completed").all()
    assert df.loc[1, "completion_s"] > df.loc[0, "completion_s"]  # B re-prefilled after A left


def test_preemption_by_swap_moves_blocks_over_the_host_link_and_back():
    doc = _doc({"policy": "vllm"}, kv_cache={"preemption": "swap"})
    resolved = _with_blocks(doc, 10)
    sim = Simulation(resolved, _table([0.0, 0.0], [64, 64], [40, 40]))
    df = requests_frame(sim.run().table)
    replica = sim.replicas[0]
    block_bytes = resolved.models["llama"].kv.block_bytes
    assert list(df["preemptions"]) == [0, 1]
    assert replica.recomputed_tokens == 0
    assert replica.swapped_bytes == 2 * 5 * block_bytes  # 5 blocks out, then the same 5 back in


def test_sarathi_splits_a_long_prompt_into_budget_sized_chunks_without_stalling_decodes():
    doc = _doc({"policy": "sarathi", "chunk_tokens": 512})
    resolved = _resolve(doc)
    cost = resolved.models["llama"].cost
    # A (100-token prompt) decodes while B's 1,300-token prompt is split into 511-token chunks
    # (the budget minus A's decode token): 511 + 511 + 278.
    sim = Simulation(resolved, _table([0.0, 0.001], [100, 1300], [60, 5]))
    df = requests_frame(sim.run().table)
    t = cost.iteration_s([(100, 100)], 0, 0)  # A alone prefills
    assert df.loc[0, "first_token_s"] == t
    a_kv = 100 + 1  # keys A attends at its next decode
    for chunk, past in ((511, 0), (511, 511), (278, 1022)):
        t = t + cost.iteration_s([(chunk, past + chunk)], 1, a_kv)
        a_kv += 1
    assert df.loc[1, "first_token_s"] == t
    assert df.loc[0, "max_itl_s"] <= cost.iteration_s([(511, 1022)], 1, 110) * 1.0001  # never stalled longer


def test_prefix_caching_skips_the_resident_units():
    doc = _doc({"policy": "vllm"}, kv_cache={"prefix_caching": True, "prefix_block_tokens": 512})
    resolved = _resolve(doc)
    cost = resolved.models["llama"].cost
    prefix = [[1, 2, 3], [1, 2, 9]]  # B shares A's first two 512-token units
    sim = Simulation(resolved, _table([0.0, 10.0], [1500, 1500], [2, 2], prefix))
    df = requests_frame(sim.run().table)
    assert list(df["cached_tokens"]) == [0, 1024]
    ttft_b = df.loc[1, "first_token_s"] - 10.0
    assert ttft_b == pytest.approx(cost.iteration_s([(1500 - 1024, 1500)], 0, 0), rel=1e-12)
    stats = sim.replicas[0].stats()
    assert stats["prefix_hit_tokens"] == 1024 and stats["prefix_prompt_tokens"] == 3000


def test_request_level_batches_run_to_their_longest_request():
    doc = _doc({"policy": "request_level", "max_batch_size": 8})
    resolved = _resolve(doc)
    cost = resolved.models["llama"].cost
    sim = Simulation(resolved, _table([0.0, 0.0, 0.0], [100, 300, 200], [5, 20, 10]))
    df = requests_frame(sim.run().table)
    assert df["completion_s"].nunique() == 1  # everyone leaves with the batch
    prefill = cost.iteration_s([(300, 300)] * 3, 0, 0)  # prompts padded to the longest
    assert (df["first_token_s"] == prefill).all()
    t, kv = prefill, [101, 301, 201]
    for _ in range(19):  # 20 tokens for the longest: 19 decode iterations of the full batch
        t = t + cost.iteration_s([], 3, sum(kv))
        kv = [k + 1 for k in kv]
    assert df.loc[0, "completion_s"] == pytest.approx(t, rel=1e-12)


def test_orca_reserves_the_whole_context_and_never_preempts():
    resolved = _with_blocks(_doc({"policy": "orca", "max_batch_size": 8}), 300)  # 300 blocks = 4,800 tokens
    sim = Simulation(resolved, _table([0.0, 0.0, 0.0], [64, 64, 64], [40, 40, 40]))
    df = requests_frame(sim.run().table)
    # each admission reserves 4,096 tokens = 256 blocks: only one request runs at a time
    assert df["preemptions"].sum() == 0
    assert df.loc[1, "start_s"] >= df.loc[0, "completion_s"]
    assert df.loc[2, "start_s"] >= df.loc[1, "completion_s"]


def test_vllm_drops_a_prompt_longer_than_its_token_budget():
    resolved = _resolve(_doc({"policy": "vllm", "max_num_batched_tokens": 1024}))
    df = requests_frame(Simulation(resolved, _table([0.0, 0.0], [2000, 100], [5, 5])).run().table)
    assert list(df["status"]) == ["dropped", "completed"]


def test_mfu_and_mbu_are_the_executed_work_over_the_device_peaks():
    resolved = _resolve(_doc({"policy": "vllm"}))
    sim = Simulation(resolved, _table([0.0], [1000], [200]))
    result = sim.run()
    stats = result.replicas[0]
    llama = resolved.models["llama"]
    flops = llama.cost.iteration([(1000, 1000)], 0, 0)[1]
    assert stats["flops"] > flops  # the prefill, plus 199 decode steps
    assert stats["mfu"] == pytest.approx(stats["flops"] / (result.sim_end_s * 312e12))
    assert 0 < stats["mbu"] < 1
