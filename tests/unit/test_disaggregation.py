"""Disaggregated prefill and decode (Splitwise, DistServe): pools, KV transfer, routing."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from simulator.errors import ConfigError
from simulator.experiment import resolve
from simulator.hardware import load_profile
from tests.conftest import make_runs, run_doc


def _doc(pool=None, prefill_replicas=2, rate=4.0, n=200, **deployment):
    doc = {
        "name": "disagg",
        "seed": 2,
        "cluster": {"profile": "a100-sxm-80gb"},
        "models": {
            "llama": {
                "architecture": "llama-2-7b",
                "replicas": prefill_replicas,
                "batching": {"policy": "vllm"},
                "decode_pool": {"replicas": 2, **(pool or {})},
                **deployment,
            }
        },
        "routing": {"policy": "least_loaded"},
        "workload": {
            "rate_rps": rate,
            "num_requests": n,
            "mix": [
                {
                    "model": "llama",
                    "input_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.7, "max": 3000},
                    "output_tokens": {"dist": "lognormal", "median": 80, "sigma": 0.7, "max": 800},
                }
            ],
        },
    }
    return doc


def _single(input_tokens, output_tokens, pool=None):
    doc = _doc(pool, prefill_replicas=1, n=1)
    doc["models"]["llama"]["decode_pool"]["replicas"] = 1
    doc["workload"]["mix"][0].update(input_tokens=input_tokens, output_tokens=output_tokens)
    return doc


def test_every_request_is_prefilled_in_one_pool_and_decoded_in_the_other():
    resolved, result, df = run_doc(_doc())
    roles = {p.replica_id: p.role for p in resolved.cluster.placements}
    assert sorted(roles.values()) == ["decode", "decode", "prefill", "prefill"]
    assert len(df) == 200 and (df["status"] == "completed").all()
    multi = df[df["output_tokens"] > 1]
    assert multi["prefill_replica"].map(roles).eq("prefill").all()
    assert multi["replica"].map(roles).eq("decode").all()
    assert (multi["kv_transfer_s"] > 0).all()
    # the second token comes after the first plus the KV transfer
    assert (multi["completion_s"] >= multi["first_token_s"] + multi["kv_transfer_s"]).all()
    stats = {r["replica"]: r for r in result.replicas}
    handed = sum(stats[r]["handoffs"] for r, role in roles.items() if role == "prefill")
    assert handed == len(multi)
    # a one-token answer is complete after its prefill and never moves
    single = df[df["output_tokens"] == 1]
    assert single["kv_transfer_s"].isna().all() and single["replica"].map(roles).eq("prefill").all()


def test_a_lone_request_pays_prefill_then_transfer_then_decode():
    resolved, _, df = run_doc(_single(1000, 3))
    plan = resolved.models["llama"]
    r = df.iloc[0]
    prefill_s = plan.cost.iteration_s([(1000, 1000)], 0, 0)
    assert r["first_token_s"] - r["arrival_s"] == pytest.approx(prefill_s, rel=1e-12)
    arch = plan.arch
    nbytes = 1000 * 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    curve = load_profile("a100-sxm-80gb").collective("intra_node", "sendrecv", 2)
    assert r["kv_transfer_s"] == pytest.approx(curve.time_s(nbytes), rel=1e-12)
    decode = plan.decode.cost.decode_steps_s(1, np.array([1001.0, 1002.0]))
    expected = r["first_token_s"] + r["kv_transfer_s"] + decode.sum()
    assert r["completion_s"] == pytest.approx(expected, rel=1e-12)


def test_layerwise_transfer_leaves_only_the_last_layer_on_the_critical_path():
    _, _, after = run_doc(_single(2000, 4))
    _, _, layerwise = run_doc(_single(2000, 4, {"kv_transfer": "layerwise"}))
    whole, last = after["kv_transfer_s"].iloc[0], layerwise["kv_transfer_s"].iloc[0]
    assert last < whole / 8
    assert layerwise["e2e_s"].iloc[0] < after["e2e_s"].iloc[0]


def test_a_decode_pool_of_another_device_type_sits_on_its_own_nodes_and_uses_the_network():
    resolved, _, df = run_doc(_single(1000, 3, {"profile": "h100-sxm-80gb"}))
    cluster = resolved.cluster
    assert [p.name for p in cluster.node_profiles] == ["a100-sxm-80gb", "h100-sxm-80gb"]
    roles = {p.role: p for p in cluster.placements}
    assert roles["prefill"].profile == "a100-sxm-80gb" and roles["decode"].profile == "h100-sxm-80gb"
    assert roles["decode"].node == 1 and roles["decode"].devices == (8,)
    arch = resolved.models["llama"].arch
    nbytes = 1000 * 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    a100 = load_profile("a100-sxm-80gb").collective("inter_node", "sendrecv", 2).time_s(nbytes)
    h100 = load_profile("h100-sxm-80gb").network.inter_node.transfer_s(nbytes)
    assert df["kv_transfer_s"].iloc[0] == pytest.approx(max(a100, h100), rel=1e-12)
    # the decode pool's own profile prices its iterations
    decode_cost = resolved.models["llama"].decode.cost
    assert decode_cost.profile.name == "h100-sxm-80gb"


def test_tensor_parallel_pools_move_their_shards_in_parallel():
    one_stream = _single(1000, 3, {"tensor_parallel": 2})  # prefill on 1 device, decode on 2
    two_streams = copy.deepcopy(one_stream)
    two_streams["models"]["llama"]["tensor_parallel"] = 2
    resolved, _, one = run_doc(one_stream)
    _, _, two = run_doc(two_streams)
    assert resolved.models["llama"].decode.devices_per_replica == 2
    curve = load_profile("a100-sxm-80gb").collective("intra_node", "sendrecv", 2)
    arch = resolved.models["llama"].arch
    nbytes = 1000 * 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    assert one["kv_transfer_s"].iloc[0] == pytest.approx(curve.time_s(nbytes), rel=1e-12)
    assert two["kv_transfer_s"].iloc[0] == pytest.approx(curve.time_s(nbytes / 2), rel=1e-12)


def test_the_decode_pool_has_its_own_router_and_batching():
    doc = _doc({"routing": {"policy": "round_robin"}, "batching": {"policy": "continuous", "max_batch_size": 8}})
    resolved, _, df = run_doc(doc)
    assert resolved.models["llama"].decode.batching.name == "continuous"
    assert resolved.models["llama"].batching.name == "vllm"
    decoded = df[df["output_tokens"] > 1].sort_values("first_token_s")
    # round robin over the two decode replicas, in the order prefills finish
    firsts = decoded["replica"].to_numpy()
    assert (firsts[:-1] != firsts[1:]).mean() > 0.95


def test_disaggregated_runs_are_deterministic_and_coalescing_is_exact():
    doc = _doc(rate=8.0, n=300)
    _, fast, fast_df = run_doc(doc)
    _, _, again = run_doc(doc)
    pd.testing.assert_frame_equal(fast_df, again, check_exact=True)
    slow_doc = copy.deepcopy(doc)
    slow_doc["engine"] = {"coalesce_decode": False}
    _, slow, slow_df = run_doc(slow_doc)
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    assert fast.events < slow.events


def test_disaggregation_removes_prefill_interference_from_decoding():
    # colocated vLLM: a long prompt's prefill stalls every decode in its batch; disaggregated,
    # decode iterations never carry a prefill, so the worst inter-token gap shrinks
    doc = _doc(rate=6.0, n=300)
    _, _, split = run_doc(doc)
    colocated = copy.deepcopy(doc)
    del colocated["models"]["llama"]["decode_pool"]
    colocated["models"]["llama"]["replicas"] = 4
    _, _, mixed = run_doc(colocated)
    assert split["max_itl_s"].median() < mixed["max_itl_s"].median()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"decode_pool": {"replicas": 1, "profile": "h100-sxm"}}, "models.llama.decode_pool.profile"),
        ({"decode_pool": {"replicas": 1, "tensor_paralel": 2}}, "did you mean 'tensor_parallel'"),
        ({"decode_pool": {"replicas": 1, "tensor_parallel": 16}}, "models.llama.decode_pool.tensor_parallel (16)"),
        ({"decode_pool": {"replicas": 1, "kv_transfer": "push"}}, "kv_transfer"),
        ({"decode_pool": {}}, "replicas"),
    ],
)
def test_decode_pool_mistakes_name_their_key(change, fragment):
    doc = _doc()
    doc["models"]["llama"].update(change)
    with pytest.raises(ConfigError) as info:
        resolve(make_runs(doc)[0])
    assert fragment in str(info.value), str(info.value)


def test_a_decode_pool_for_a_cnn_is_refused():
    doc = {
        "name": "cnn",
        "models": {"r": {"architecture": "resnet-50", "decode_pool": {"replicas": 1}}},
        "workload": {"rate_rps": 1, "num_requests": 1, "mix": [{"model": "r", "input_samples": 1}]},
    }
    with pytest.raises(ConfigError, match="decode_pool: disaggregated prefill and decode is for decoder"):
        resolve(make_runs(doc)[0])
