"""Engine mechanics on hand-checkable cases, and coalesced decoding against stepping."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from simulator.engine import Simulation
from simulator.experiment import resolve
from simulator.metrics import requests_frame
from simulator.request import RequestTable
from tests.conftest import LLM, make_runs, run_doc


def _table(arrivals, model_code=0, input_tokens=0, output_tokens=0, samples=1, models=("m",)):
    n = len(arrivals)
    full = lambda v, dt=np.int64: np.full(n, v, dtype=dt)  # noqa: E731
    return RequestTable(
        arrival_s=np.asarray(arrivals, dtype=float),
        model=full(model_code, np.int32),
        tenant=full(0, np.int32),
        input_tokens=np.broadcast_to(np.asarray(input_tokens, dtype=np.int64), n).copy(),
        input_samples=full(samples),
        output_tokens=np.broadcast_to(np.asarray(output_tokens, dtype=np.int64), n).copy(),
        priority=full(0, np.int32),
        ttft_slo_s=full(np.nan, float),
        tpot_slo_s=full(np.nan, float),
        e2e_slo_s=full(np.nan, float),
        model_names=list(models),
        tenant_names=["default"],
    )


def _resolved(doc):
    (run,) = make_runs(doc)
    return resolve(run)


def test_dynamic_batching_waits_for_its_delay_then_runs_the_batch(cnn_doc):
    cnn_doc["models"]["resnet50"]["batching"] = {"policy": "dynamic", "max_batch_size": 4, "max_queue_delay_ms": 2}
    resolved = _resolved(cnn_doc)
    cost = resolved.models["resnet50"].cost
    # three requests within 1 ms: the batch forms at 1.000 + 2 ms and runs all three
    # then four at once: a full batch runs immediately when the replica is free
    table = _table([1.000, 1.0005, 1.001, 2.0, 2.0, 2.0, 2.0], models=["resnet50"])
    result = Simulation(resolved, table).run()
    df = requests_frame(result.table)
    first = df.iloc[:3]
    assert (first["start_s"] == 1.000 + 0.002).all()
    assert (first["completion_s"] == 1.002 + cost.batch_s(3)).all()
    second = df.iloc[3:]
    assert (second["start_s"] == 2.0).all()
    assert (second["completion_s"] == 2.0 + cost.batch_s(4)).all()


def test_a_lone_decoder_request_by_hand():
    """TTFT = one prefill iteration; then output_tokens - 1 decode iterations of batch 1."""
    resolved = _resolved(LLM)
    cost = resolved.models["llama"].cost
    prompt, out = 500, 40
    result = Simulation(resolved, _table([0.5], input_tokens=prompt, output_tokens=out, models=["llama"])).run()
    row = requests_frame(result.table).iloc[0]
    ttft = cost.iteration_s([(prompt, prompt)], 0, 0)
    assert row["first_token_s"] == 0.5 + ttft
    t = 0.5 + ttft
    for g in range(1, out):
        t = t + cost.iteration_s([], 1, prompt + g)
    assert row["completion_s"] == pytest.approx(t, rel=1e-12)
    assert row["tpot_s"] == pytest.approx((t - 0.5 - ttft) / (out - 1), rel=1e-12)


def test_continuous_batching_admits_a_newcomer_at_the_next_iteration():
    resolved = _resolved(LLM)
    cost = resolved.models["llama"].cost
    table = _table([0.0, 0.05], input_tokens=[200, 300], output_tokens=[200, 5], models=["llama"])
    df = requests_frame(Simulation(resolved, table).run().table)
    t = cost.iteration_s([(200, 200)], 0, 0)  # request 0 prefills alone
    g = 1
    while t < 0.05:  # request 0 decodes alone until the boundary after request 1 arrives
        t = t + cost.iteration_s([], 1, 200 + g)
        g += 1
    assert df.loc[1, "start_s"] == t
    assert df.loc[1, "first_token_s"] == t + cost.iteration_s([(300, 300)], 1, 200 + g)


def _decoder_doc(seed, batching, replicas, rate):
    return {
        "name": "coalesce",
        "seed": seed,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": replicas},
        "models": {"llama": {"architecture": "llama-2-7b", "batching": batching}},
        "routing": {"policy": "least_loaded"},
        "engine": {"timeseries_interval_s": 0.37},
        "workload": {
            "rate_rps": rate,
            "num_requests": 400,
            "arrival": {"process": "gamma", "cv": 2.0},
            "mix": [
                {
                    "model": "llama",
                    "input_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 3000},
                    "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 1.0, "max": 1000},
                }
            ],
        },
    }


BATCHINGS = [
    {"policy": "continuous", "max_batch_size": 24, "max_batch_tokens": 2048},
    {"policy": "continuous"},
    {"policy": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 20},
    {"policy": "static", "max_batch_size": 4},
    {"policy": "none"},
    {"policy": "vllm", "max_num_seqs": 64, "max_num_batched_tokens": 4096},
    {"policy": "sarathi", "chunk_tokens": 512},
    {"policy": "orca", "max_batch_size": 32, "reservation": "pow2"},
    {"policy": "request_level", "max_batch_size": 8},
]

#: KV-cache settings that squeeze memory (about 6,000 tokens): preemption, swap, prefix caching.
PRESSURE = [
    {"memory_utilization": 0.25},
    {"memory_utilization": 0.25, "kv_cache": {"preemption": "swap"}},
    {"memory_utilization": 0.25, "kv_cache": {"prefix_caching": True, "prefix_block_tokens": 64}},
]


@pytest.mark.parametrize("pressure", PRESSURE, ids=["recompute", "swap", "prefix"])
@pytest.mark.parametrize("policy", ["vllm", "sarathi", "orca"])
def test_coalesced_decoding_is_identical_to_stepping_under_kv_pressure(policy, pressure):
    batching = next(b for b in BATCHINGS if b["policy"] == policy)
    doc = _decoder_doc(11, batching, 1, 12.0)
    doc["models"]["llama"].update(copy.deepcopy(pressure))
    if pressure.get("kv_cache", {}).get("prefix_caching"):
        doc["workload"]["num_requests"] = 300
    _, fast, fast_df = run_doc(doc, prefix_units=64)
    slow_doc = copy.deepcopy(doc)
    slow_doc["engine"]["coalesce_decode"] = False
    _, slow, slow_df = run_doc(slow_doc, prefix_units=64)
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    pd.testing.assert_frame_equal(fast.timeseries, slow.timeseries, check_exact=True)
    assert [r["busy_s"] for r in fast.replicas] == [r["busy_s"] for r in slow.replicas]
    assert [r.get("preemptions") for r in fast.replicas] == [r.get("preemptions") for r in slow.replicas]
    assert (fast.itl_counts == slow.itl_counts).all()
    if pressure.get("kv_cache", {}).get("prefix_caching"):
        assert fast_df["cached_tokens"].sum() > 0  # the cache was really used
    elif policy != "orca":
        assert fast_df["preemptions"].sum() > 0  # the pressure was real


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batching", BATCHINGS, ids=[b["policy"] + str(len(b)) for b in BATCHINGS])
def test_coalesced_decoding_is_identical_to_stepping(seed, batching):
    rng = np.random.default_rng(seed)
    doc = _decoder_doc(seed, batching, int(rng.integers(1, 4)), float(rng.uniform(2, 30)))
    _, fast, fast_df = run_doc(doc)
    slow_doc = copy.deepcopy(doc)
    slow_doc["engine"]["coalesce_decode"] = False
    _, slow, slow_df = run_doc(slow_doc)
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    pd.testing.assert_frame_equal(fast.timeseries, slow.timeseries, check_exact=True)
    assert [r["busy_s"] for r in fast.replicas] == [r["busy_s"] for r in slow.replicas]
    assert fast.events < slow.events  # and it did coalesce


class _TickAdmission:
    """Continuous batching that admits only on 0.1 s ticks: a decision that changes with time
    alone, announced to the engine through ``wake_at_s``."""

    def __init__(self, params=None, rng=None):
        from policies.batching import ContinuousBatching

        self._inner = ContinuousBatching(ContinuousBatching.Params(max_batch_size=16), rng)

    def next_batch(self, replica, now_s):
        from simulator.policy import BatchDecision

        k = round(now_s / 0.1)
        if replica.queue and abs(now_s - k * 0.1) > 1e-9:  # off-tick: wait for the next tick
            nxt = k * 0.1 if k * 0.1 > now_s else (k + 1) * 0.1
            return BatchDecision(wake_at_s=nxt)
        return self._inner.next_batch(replica, now_s)


def test_time_dependent_policy_is_exact_under_coalescing_through_wake_at():
    from simulator.registry import BATCHING

    BATCHING.register("tick_admission_test", _TickAdmission)
    doc = _decoder_doc(7, {"policy": "tick_admission_test"}, 2, 12.0)
    _, _, fast_df = run_doc(doc)
    slow_doc = copy.deepcopy(doc)
    slow_doc["engine"]["coalesce_decode"] = False
    _, _, slow_df = run_doc(slow_doc)
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    ticks = (fast_df["start_s"] / 0.1) % 1.0
    assert ((ticks < 0.02) | (ticks > 0.98)).mean() > 0.2  # admissions really followed the ticks


@pytest.mark.parametrize(
    "deployment",
    [
        {"architecture": "llama-2-70b", "tensor_parallel": 2, "pipeline_parallel": 4, "pipeline_microbatches": 2},
        {"architecture": "mixtral-8x7b", "expert_parallel": 4, "moe_routing_skew": 1.0},
    ],
    ids=["pipeline", "experts"],
)
def test_coalesced_decoding_is_identical_to_stepping_with_model_parallelism(deployment):
    doc = _decoder_doc(5, {"policy": "vllm", "max_num_seqs": 64}, 2, 8.0)
    doc["models"]["llama"].update(deployment)
    _, fast, fast_df = run_doc(doc)
    slow_doc = copy.deepcopy(doc)
    slow_doc["engine"]["coalesce_decode"] = False
    _, slow, slow_df = run_doc(slow_doc)
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    assert [r["busy_s"] for r in fast.replicas] == [r["busy_s"] for r in slow.replicas]
    assert fast.events < slow.events
