"""Properties of the whole simulator on random small experiments (hypothesis).

For random experiments (a CNN, an encoder or a decoder; any built-in batching policy with
random parameters; any routing policy; 1-4 replicas; Poisson or bursty Gamma arrivals; random
sizes and SLOs):

* conservation: every arrival ends exactly once, with a final status;
* batches stay within their limits (every batching decision is recorded by a plug-in that
  subclasses the built-in, named in the experiment as ``module:Class``);
* no device holds more than its memory, no replica more KV than its cache;
* clocks never run back;
* the same spec and seed give identical result files;
* jumping over identical decode iterations gives the results of stepping them one by one.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.batching import ContinuousBatching, DynamicBatching, NoBatching, StaticBatching
from simulator.config import expand
from simulator.engine import Simulation
from simulator.experiment import resolve
from simulator.metrics import requests_frame
from simulator.request import COMPLETED, PENDING, STATUSES
from simulator.results import write_run

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- a plug-in that records every batching decision -----------------------------------------

#: One record per batching decision of the current example (cleared before each simulation).
DECISIONS: list[dict[str, Any]] = []


class _Recording:
    """Mix-in: record what the replica looked like and what the built-in decided."""

    def next_batch(self, replica, now_s):
        decision = super().next_batch(replica, now_s)
        queue = {id(r) for r in replica.queue}
        DECISIONS.append(
            {
                "replica": replica.replica_id,
                "now_s": now_s,
                "params": self.params,
                "autoregressive": replica.autoregressive,
                "running": len(replica.running),
                "admitted": len(decision.admit),
                "all_waiting": all(id(r) in queue for r in decision.admit + decision.drop),
                "kv_used": replica.kv_used_tokens,
                "kv_capacity": replica.kv_capacity_tokens,
                "kv_needed": sum(r.input_tokens + r.output_tokens for r in decision.admit),
                "prompt_tokens": sum(r.input_tokens for r in decision.admit),
            }
        )
        return decision


class RecordingNone(_Recording, NoBatching):
    """``none``, recorded."""


class RecordingStatic(_Recording, StaticBatching):
    """``static``, recorded."""


class RecordingDynamic(_Recording, DynamicBatching):
    """``dynamic``, recorded."""


class RecordingContinuous(_Recording, ContinuousBatching):
    """``continuous``, recorded."""


RECORDERS = {
    "none": RecordingNone,
    "static": RecordingStatic,
    "dynamic": RecordingDynamic,
    "continuous": RecordingContinuous,
}


class CountingSimulation(Simulation):
    """Counts how often each request reaches a final status."""

    def __init__(self, resolved, table=None):
        super().__init__(resolved, table)
        self.final_counts = np.zeros(len(self.table), dtype=np.int64)

    def finalize(self, req, status, t, reason=None):
        self.final_counts[req.request_id] += 1
        super().finalize(req, status, t, reason)


# ---- random experiments ---------------------------------------------------------------------


def uniform(low: int, high: int) -> dict[str, Any]:
    return {"dist": "uniform", "low": low, "high": high}


@st.composite
def experiments(draw: st.DrawFn) -> dict[str, Any]:
    """A small experiment document (one model, at most 20-300 requests)."""
    model = draw(st.sampled_from(["resnet-50", "bert-base", "llama-2-7b"]))
    policy = draw(st.sampled_from(sorted(RECORDERS)))
    mbs = draw(st.integers(1, 32))
    batching: dict[str, Any] = {"policy": f"{__name__}:{RECORDERS[policy].__name__}"}
    if policy == "static":
        batching["max_batch_size"] = mbs
    elif policy == "dynamic":
        preferred = draw(st.lists(st.integers(1, mbs), unique=True, max_size=3))
        batching |= {
            "max_batch_size": mbs,
            "max_queue_delay_ms": draw(st.sampled_from([0.0, 0.5, 2.0, 20.0])),
            "preferred_batch_sizes": sorted(preferred),
        }
    elif policy == "continuous":
        batching |= {"max_batch_size": mbs, "max_batch_tokens": draw(st.sampled_from([16, 256, 2048, 8192]))}
    deployment: dict[str, Any] = {"architecture": model, "batching": batching}
    if model != "resnet-50":
        deployment["tensor_parallel"] = draw(st.sampled_from([1, 1, 2]))
    if model == "resnet-50":
        sizes: dict[str, Any] = {"input_samples": uniform(1, draw(st.integers(1, 8)))}
        log_rate = draw(st.floats(2.0, 4.3))
    elif model == "bert-base":
        # up to 600 tokens: some exceed the 512 positions and are rejected
        sizes = {"input_tokens": uniform(1, draw(st.sampled_from([64, 512, 600])))}
        log_rate = draw(st.floats(1.5, 3.5))
    else:
        # long requests and small caches: the KV limit binds; some exceed the 4096-token
        # context or the whole cache and are rejected. (static and dynamic reserve activations
        # for max_batch_size whole contexts, so they need a larger share of the device.)
        sizes = {
            "input_tokens": uniform(1, draw(st.sampled_from([32, 1024, 4000]))),
            "output_tokens": uniform(1, draw(st.sampled_from([1, 64, 600]))),
        }
        shares = [0.5, 0.9] if policy in ("static", "dynamic") else [0.2, 0.25, 0.9]
        deployment["memory_utilization"] = draw(st.sampled_from(shares))
        log_rate = draw(st.floats(-0.5, 1.7))
    arrival = draw(
        st.one_of(
            st.just({"process": "poisson"}),
            st.builds(lambda cv: {"process": "gamma", "cv": cv}, st.floats(0.3, 4.0)),
        )
    )
    classes = [{"model": "m", "tenant": "a", **sizes}]
    if draw(st.booleans()):
        classes.append({"model": "m", "tenant": "b", "weight": 0.5, "priority": 1, "slo": {"e2e_ms": 50.0}, **sizes})
    workload: dict[str, Any] = {
        "rate_rps": float(10**log_rate),
        "num_requests": draw(st.integers(20, 300)),
        "arrival": arrival,
        "mix": classes,
    }
    if draw(st.integers(0, 4)) == 0:  # sometimes the window ends before the last request
        workload["duration_s"] = 0.8 * workload["num_requests"] / workload["rate_rps"]
    engine = {"timeseries_interval_s": draw(st.sampled_from([1e-3, 0.05, 1.0]))} if draw(st.booleans()) else {}
    return {
        "name": "property",
        "seed": draw(st.integers(0, 2**31)),
        "cluster": {"replicas": draw(st.integers(1, 4))},
        "models": {"m": deployment},
        "routing": {"policy": draw(st.sampled_from(["round_robin", "random", "least_loaded"]))},
        "workload": workload,
        "engine": engine,
    }


def run(doc: dict[str, Any]) -> tuple[Any, Any, CountingSimulation]:
    """Resolve and simulate ``doc``; return (resolved, result, simulation)."""
    (spec,) = expand(doc, Path("property.yaml"))
    resolved = resolve(spec)
    DECISIONS.clear()
    sim = CountingSimulation(resolved)
    return resolved, sim.run(), sim


# ---- the properties -------------------------------------------------------------------------


@SETTINGS
@given(experiments())
def test_every_arrival_ends_exactly_once(doc):
    _, result, sim = run(doc)
    table = result.table
    assert len(table) <= doc["workload"]["num_requests"]
    assert result.warnings == []
    assert (sim.final_counts == 1).all(), np.flatnonzero(sim.final_counts != 1)
    assert not (table.status == PENDING).any()
    frame = requests_frame(table)
    assert list(frame["request_id"]) == list(range(len(table)))
    assert frame["status"].notna().all()
    assert set(frame["status"]) <= {"completed", "rejected", "dropped", "failed"}
    counts = frame["status"].value_counts()
    assert sum(int(counts.get(s, 0)) for s in STATUSES[1:]) == len(table)
    routed = table.replica >= 0
    assert routed[table.status == COMPLETED].all()


@SETTINGS
@given(experiments())
def test_batches_stay_within_their_limits(doc):
    resolved, result, _ = run(doc)
    assert DECISIONS, "the recording policy was never consulted"
    last_now: dict[int, float] = defaultdict(lambda: -math.inf)
    for d in DECISIONS:
        assert d["all_waiting"]
        assert d["now_s"] >= last_now[d["replica"]]  # one replica's decisions in time order
        last_now[d["replica"]] = d["now_s"]
        mbs = getattr(d["params"], "max_batch_size", 1)
        assert d["running"] + d["admitted"] <= mbs, d
        if d["autoregressive"]:
            assert d["kv_used"] + d["kv_needed"] <= d["kv_capacity"], d
            mbt = getattr(d["params"], "max_batch_tokens", None)
            alone = d["admitted"] == 1 and d["running"] == 0
            if mbt is not None and not alone:
                assert d["running"] + d["prompt_tokens"] <= mbt, d
    limit = resolved.models["m"].max_batch_size or 1
    sizes = result.timeseries["batch_size"].dropna()
    assert (sizes <= limit + 1e-9).all()
    assert all(r["step_items"] <= r["steps"] * limit for r in result.replicas)


@SETTINGS
@given(experiments())
def test_no_device_holds_more_than_its_memory(doc):
    resolved, result, _ = run(doc)
    plan = resolved.models["m"]
    ts = result.timeseries
    device = resolved.profile.memory_bytes
    assert (ts["memory_used_bytes"] <= plan.memory.total_bytes * (1 + 1e-12)).all()
    assert (ts["memory_used_bytes"] <= device * plan.memory_utilization * (1 + 1e-12)).all()
    capacity = {r["replica"]: r["kv_capacity_tokens"] for r in result.replicas}
    assert (ts["kv_used_tokens"] <= ts["replica"].map(capacity)).all()
    assert (ts["kv_used_tokens"] >= 0).all()
    for d in DECISIONS:
        assert 0 <= d["kv_used"] <= d["kv_capacity"]


@SETTINGS
@given(experiments())
def test_clocks_never_run_back(doc):
    _, result, _ = run(doc)
    frame = requests_frame(result.table)
    done = frame[frame["status"] == "completed"]
    assert (done["arrival_s"] <= done["start_s"]).all()
    assert (done["start_s"] <= done["first_token_s"]).all()
    assert (done["first_token_s"] <= done["completion_s"]).all()
    assert (done["completion_s"] == done["final_s"]).all()
    assert (frame["final_s"] >= frame["arrival_s"]).all()
    assert (frame["final_s"] <= result.sim_end_s).all()
    assert np.all(np.diff(frame["arrival_s"]) >= 0)
    for _, rows in result.timeseries.groupby("replica"):
        assert (np.diff(rows["time_s"].to_numpy()) >= 0).all()
    busy = result.timeseries["busy_fraction"].dropna()
    assert ((busy >= 0) & (busy <= 1)).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(experiments())
def test_same_spec_and_seed_give_identical_files(doc):
    files = []
    for _ in range(2):
        (spec,) = expand(doc, Path("property.yaml"))
        resolved = resolve(spec)
        result = Simulation(resolved).run()
        with tempfile.TemporaryDirectory() as out:
            write_run(Path(out), spec, resolved, result)
            folder = Path(out) / spec.run_id
            files.append({name: (folder / name).read_bytes() for name in ("requests.parquet", "timeseries.parquet")})
    assert files[0]["requests.parquet"] == files[1]["requests.parquet"]
    assert files[0]["timeseries.parquet"] == files[1]["timeseries.parquet"]


@SETTINGS
@given(experiments().filter(lambda d: d["models"]["m"]["architecture"] == "llama-2-7b"))
def test_coalesced_decoding_equals_stepping(doc):
    frames = []
    for coalesce in (True, False):
        _, result, _ = run({**doc, "engine": {**doc["engine"], "coalesce_decode": coalesce}})
        frames.append(requests_frame(result.table))
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
