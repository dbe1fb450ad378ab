"""Cache-aware (prefix-aware) routing: the SGLang gateway's rule, by hand and end to end."""

from __future__ import annotations

import copy

from policies.routing import PrefixAware
from simulator.testing import StubReplica, make_request
from tests.conftest import LLM, run_doc


def _replicas(loads, cached, free_tokens=(1000, 1000, 1000)):
    reps = []
    for k, (load, units, free) in enumerate(zip(loads, cached, free_tokens, strict=True)):
        queue = [make_request(100 * k + j, 0.0, input_tokens=10, output_tokens=1) for j in range(load)]
        reps.append(
            StubReplica(
                queue=queue,
                replica_id=k,
                autoregressive=True,
                kv_capacity_tokens=2000,
                kv_used_blocks=2000 - free,
                cached_prefix_units=set(units),
                prefix_block_tokens=16,
            )
        )
    return reps


def _request(units, tokens=100):
    return make_request(1, 0.0, input_tokens=tokens, output_tokens=4, prefix_ids=units)


def test_a_request_follows_the_replica_holding_most_of_its_prompt():
    router = PrefixAware(PrefixAware.Params())
    reps = _replicas([3, 0, 1], [{1, 2}, set(), {1, 2, 3, 4}])
    # replica 2 holds 4 of the 6 usable units: 64 of 100 tokens > 0.3
    assert router.pick_replica(_request([1, 2, 3, 4, 5, 6]), reps, 0.0) == 2


def test_a_small_match_goes_to_the_replica_with_most_free_cache():
    router = PrefixAware(PrefixAware.Params())
    reps = _replicas([0, 0, 0], [{1}, set(), set()], free_tokens=(500, 1500, 900))
    # 16 of 100 tokens cached on replica 0: below 0.3, so the most free KV wins
    assert router.pick_replica(_request([1, 2, 3, 4, 5, 6]), reps, 0.0) == 1


def test_imbalanced_loads_override_cache_affinity():
    router = PrefixAware(PrefixAware.Params(balance_abs_threshold=4, balance_rel_threshold=1.5))
    reps = _replicas([10, 1, 3], [{1, 2, 3, 4, 5, 6}, set(), set()])
    assert router.pick_replica(_request([1, 2, 3, 4, 5, 6]), reps, 0.0) == 1
    # balanced again (10 - 8 <= 4): the cache wins
    reps = _replicas([10, 8, 9], [{1, 2, 3, 4, 5, 6}, set(), set()])
    assert router.pick_replica(_request([1, 2, 3, 4, 5, 6]), reps, 0.0) == 0


def test_prefix_aware_routing_finds_more_cached_prompt_than_least_loaded():
    doc = copy.deepcopy(LLM)
    doc["cluster"] = {"profile": "a100-sxm-80gb", "replicas": 4}
    doc["models"]["llama"]["batching"] = {"policy": "vllm"}
    doc["models"]["llama"]["kv_cache"] = {"prefix_caching": True, "prefix_block_tokens": 64}
    doc["workload"] = {
        "rate_rps": 6,
        "num_requests": 400,
        "mix": [{"model": "llama", "input_tokens": {"dist": "uniform", "low": 200, "high": 2000}, "output_tokens": 32}],
    }
    hits = {}
    for routing in ("least_loaded", "prefix_aware"):
        doc["routing"] = {"policy": routing}
        _, _, df = run_doc(doc, prefix_units=64)
        assert (df["status"] == "completed").all()
        hits[routing] = df["cached_tokens"].sum() / df["input_tokens"].sum()
    # each of the 7 conversations' prefix is first computed once per replica that serves it:
    # affinity makes those cold misses rarer
    assert 1 - hits["prefix_aware"] < 0.6 * (1 - hits["least_loaded"]), hits
