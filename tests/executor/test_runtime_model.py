"""What the executor adds to the simulator, checked without torch: the small models, the
profile's measured runtime terms (step overhead, wake-up after idle) in the cost model and the
replicas, what the executor refuses, and how it places workers."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.config import expand
from simulator.cost import Deployment, ModelCost
from simulator.errors import ConfigError
from simulator.executor.engine import WallClock, check_executable, plan_workers
from simulator.executor.validate import fit_step_overhead
from simulator.experiment import resolve
from simulator.hardware import available_profiles, load_profile
from simulator.metrics import requests_frame
from simulator.registry import MODELS
from simulator.small_models import SmallCNN, SmallDecoder, SmallEncoder
from simulator.sweep import simulate

WAKE = [[0.001, 0.0002], [0.01, 0.0006], [0.1, 0.001]]


def _profile_with_runtime(tmp_path, runtime):
    """The shipped A100 profile (and its tables) copied, with a ``runtime`` section."""
    src = available_profiles()["a100-sxm-80gb"]
    for f in src.parent.glob("a100-sxm-80gb.*"):
        shutil.copy(f, tmp_path / f.name)
    data = yaml.safe_load(src.read_text())
    data["runtime"] = runtime
    path = tmp_path / "a100-sxm-80gb.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(tmp_path, profile, doc_extra=None, **workload):
    doc = {
        "name": "t",
        "seed": 1,
        "cluster": {"profile": str(profile), "replicas": 1},
        "models": {"cnn": {"architecture": "small-resnet", "batching": {"policy": "none"}}},
        "workload": {"rate_rps": 5, "num_requests": 20, "mix": [{"model": "cnn"}], **workload},
    }
    doc.update(doc_extra or {})
    return expand(doc, tmp_path / "t.yaml")[0]


def test_small_models_are_registered_and_priced():
    for name, cls in (("small-resnet", SmallCNN), ("small-bert", SmallEncoder), ("small-llama", SmallDecoder)):
        arch = MODELS.resolve(name)()
        assert isinstance(arch, cls) and arch.default_dtype == "fp32"
    cnn = MODELS.resolve("small-resnet")()
    ops = cnn.operators(2, "fp32")
    assert sum(op.variant == "relu" for op in ops) == len(cnn.activations) == 7
    assert ops[-1].name == "fc"  # the classifier stays last, as the forward pass runs it
    bert_ops = MODELS.resolve("small-bert")().operators(2, 16, "fp32")
    assert {op.variant for op in bert_ops if op.name in ("embeddings", "add_norm", "gelu")} == {
        "bert_embeddings",
        "add_layer_norm",
        "gelu",
    }
    llama = MODELS.resolve("small-llama")()
    assert [op.variant for op in llama.dense_operators(4, 4, "fp32") if op.name == "kv_cache_append"] == ["kv_append"]
    # a profile without the variants' tables prices them from their kind's generic table
    profile = load_profile("a100-sxm-80gb")
    for arch in (cnn, MODELS.resolve("small-bert")()):
        cost = ModelCost(Deployment(arch, "fp32"), profile)
        assert cost.batch(4, 16)[0] > cost.batch(1, 16)[0] > 0
    cost = ModelCost(Deployment(llama, "fp32"), profile)
    assert cost.iteration([(32, 32)], 2, 200)[0] > 0


def test_runtime_wake_curve_interpolates(tmp_path):
    profile = load_profile(
        _profile_with_runtime(tmp_path, {"per_architecture": {"small-resnet": {"wake_after_idle": WAKE}}})
    )
    rt = profile.runtime
    assert rt is not None
    assert rt.wake_s("small-resnet", 0.0) == 0.0
    assert rt.wake_s("small-resnet", 0.0005) == pytest.approx(0.0001)  # linear from (0, 0)
    assert rt.wake_s("small-resnet", 0.001) == pytest.approx(0.0002)
    mid = 0.0002 + 0.5 * (0.0006 - 0.0002)  # halfway in log(gap) between 1 ms and 10 ms
    assert rt.wake_s("small-resnet", math.sqrt(0.001 * 0.01)) == pytest.approx(mid)
    assert rt.wake_s("small-resnet", 5.0) == pytest.approx(0.001)
    assert rt.wake_s("small-bert", 0.05) == 0.0  # no curve: no cost


@pytest.mark.parametrize(
    ("runtime", "match"),
    [
        ({"per_architecture": {"m": {"wake_after_idle": [[0.01, 1e-4], [0.001, 2e-4]]}}}, "increasing gaps"),
        ({"per_architecture": {"m": {"wake_after_idle": [[0.01, -1e-4]]}}}, "must be >= 0"),
        ({"step_overhead_us": -3}, "step_overhead_us"),
        (
            {"per_architecture": {"m": {"step_overhead_per_item_us": -1.0}}},
            "per_architecture.m.step_overhead_per_item_us",
        ),
        ({"step_overhead": 3}, "unknown key"),
    ],
)
def test_malformed_runtime_is_refused(tmp_path, runtime, match):
    path = _profile_with_runtime(tmp_path, runtime)
    with pytest.raises(ConfigError, match=match):
        load_profile(path)


def test_step_overhead_is_added_to_every_step(tmp_path):
    base = load_profile("a100-sxm-80gb")
    path = _profile_with_runtime(
        tmp_path,
        {
            "step_overhead_us": 100,
            "per_architecture": {"small-llama": {"step_overhead_us": 250, "step_overhead_per_item_us": 10}},
        },
    )
    with_rt = load_profile(path)
    cnn, llama = MODELS.resolve("small-resnet")(), MODELS.resolve("small-llama")()
    a, b = ModelCost(Deployment(cnn, "fp32"), base), ModelCost(Deployment(cnn, "fp32"), with_rt)
    assert b.batch(3)[0] - a.batch(3)[0] == pytest.approx(100e-6)
    assert b.batch(3)[1:] == a.batch(3)[1:]  # FLOPs and bytes unchanged
    a, b = ModelCost(Deployment(llama, "fp32"), base), ModelCost(Deployment(llama, "fp32"), with_rt)
    kv = np.array([100.0, 104.0])
    assert np.allclose(b.decode_steps_s(4, kv) - a.decode_steps_s(4, kv), 290e-6)  # 250 + 4 x 10
    assert b.iteration([(16, 16)], 2, 50)[0] - a.iteration([(16, 16)], 2, 50)[0] == pytest.approx(280e-6)
    assert b.iteration([], 2, 50)[0] - a.iteration([], 2, 50)[0] == pytest.approx(270e-6)


def test_replica_pays_the_wake_up_after_idling(tmp_path):
    plain = simulate(_run(tmp_path, "a100-sxm-80gb"))[1]
    path = _profile_with_runtime(tmp_path, {"per_architecture": {"small-resnet": {"wake_after_idle": WAKE}}})
    resolved, woken = simulate(_run(tmp_path, path))
    a, b = requests_frame(plain.table), requests_frame(woken.table)
    assert (a["arrival_s"] == b["arrival_s"]).all()
    rt = resolved.profile.runtime
    # at 5 requests/s each request finds the replica idle since the previous one finished
    idle = b["arrival_s"].to_numpy() - np.concatenate(([0.0], b["completion_s"].to_numpy()[:-1]))
    expected = [rt.wake_s("small-resnet", g) for g in idle]
    assert np.allclose(b["e2e_s"] - a["e2e_s"], expected, rtol=1e-9, atol=1e-12)
    assert (b["e2e_s"] > a["e2e_s"]).all()


def test_back_to_back_batches_pay_no_wake_up(tmp_path):
    path = _profile_with_runtime(tmp_path, {"per_architecture": {"small-resnet": {"wake_after_idle": WAKE}}})
    run = _run(tmp_path, path, rate_rps=1_000_000, num_requests=30)  # a burst: one busy period
    resolved, result = simulate(run)
    frame = requests_frame(result.table)
    service = resolved.models["cnn"].cost.batch(1)[0]
    first = frame.iloc[0]
    wake = resolved.profile.runtime.wake_s("small-resnet", first["start_s"])  # idle since time 0
    assert first["completion_s"] == pytest.approx(first["start_s"] + service + wake, rel=1e-12)
    assert np.allclose(np.diff(frame["completion_s"].to_numpy()), service, rtol=1e-9)


@pytest.mark.parametrize(
    ("models", "match"),
    [
        (
            {"m": {"architecture": "small-llama", "tensor_parallel": 2, "batching": {"policy": "continuous"}}},
            "one device",
        ),
        (
            {"m": {"architecture": "small-llama", "batching": {"policy": "vllm"}, "kv_cache": {"preemption": "swap"}}},
            "recompute only",
        ),
        (
            {
                "m": {
                    "architecture": "small-llama",
                    "batching": {"policy": "vllm"},
                    "kv_cache": {"prefix_caching": True},
                }
            },
            "does not share KV",
        ),
        ({"m": {"architecture": "small-llama", "batching": {"policy": "request_level"}}}, "request-level"),
    ],
)
def test_what_the_executor_refuses(tmp_path, models, match):
    mix = [{"model": "m", "input_tokens": 16, "output_tokens": 4}]
    doc = {"name": "r", "models": models, "workload": {"rate_rps": 1, "num_requests": 2, "mix": mix}}
    resolved = resolve(expand(doc, tmp_path / "r.yaml")[0])
    with pytest.raises(ConfigError, match=match) as err:
        check_executable(resolved)
    assert "r.yaml: models.m" in str(err.value)


def test_workers_get_their_own_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    (one,) = plan_workers(1)
    assert one.cores == (1,) and one.threads == 1  # core 0 left to the coordinator
    two = plan_workers(2)
    assert [w.cores for w in two] == [(0,), (1,)]  # more devices than spare cores: they share
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(9)), raising=False)
    assert [w.cores for w in plan_workers(2)] == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert plan_workers(1, cores_per_device=2)[0].cores == (1, 2)
    assert [w.device for w in plan_workers(2, "cuda:1")] == ["cuda:1", "cuda:2"]


def test_wall_clock_never_runs_an_event_early_nor_back_in_time():
    env = WallClock()
    env.start(0.0)
    fired = []
    a, b = env.event(), env.event()
    a.callbacks.append(lambda e: fired.append(("a", env.now, e.value)))
    b.callbacks.append(lambda e: fired.append(("b", env.now, e.value)))
    env.push(a, 2.0, "late")
    env.step()
    env.push(b, 1.0, "past")  # a worker's end time older than now: processed now
    env.step()
    assert fired == [("a", 2.0, "late"), ("b", 2.0, "past")]
    assert env.clock() > 0


def test_step_overhead_fit():
    rows = []
    t = 0.0
    for i in range(60):
        items = 1 + i % 4
        overhead = 100e-6 + 20e-6 * items
        start = t
        rows.append(
            {
                "nominal_start_s": start,
                "worker_start_s": start + overhead,
                "end_s": start + overhead + 0.003,
                "samples": items,
            }
        )
        t = start + overhead + 0.003
    frame = pd.DataFrame(rows)
    base, per = fit_step_overhead(frame, "samples")
    assert base == pytest.approx(100e-6) and per == pytest.approx(20e-6)
    frame["samples"] = 8  # one size only: the median, nothing per item
    base, per = fit_step_overhead(frame, "samples")
    assert per == 0.0 and 100e-6 < base < 200e-6


def test_decoder_replica_pays_the_wake_up_after_idling(tmp_path):
    doc = {
        "models": {"llm": {"architecture": "small-llama", "batching": {"policy": "continuous"}}},
        "workload": {
            "rate_rps": 2,
            "num_requests": 6,
            "mix": [{"model": "llm", "input_tokens": 32, "output_tokens": 4}],
        },
    }
    plain = requests_frame(simulate(_run(tmp_path, "a100-sxm-80gb", doc))[1].table)
    path = _profile_with_runtime(tmp_path, {"per_architecture": {"small-llama": {"wake_after_idle": WAKE}}})
    resolved, woken = simulate(_run(tmp_path, path, doc))
    frame = requests_frame(woken.table)
    idle = frame["arrival_s"].to_numpy() - np.concatenate(([0.0], frame["completion_s"].to_numpy()[:-1]))
    assert (idle > 0).all()  # each request finds the replica idle
    expected = [resolved.profile.runtime.wake_s("small-llama", g) for g in idle]
    assert np.allclose(frame["ttft_s"] - plain["ttft_s"], expected, rtol=1e-9, atol=1e-12)
    # only the first step after idling pays: the decode steps after it are as before
    assert np.allclose(frame["completion_s"] - frame["first_token_s"], plain["completion_s"] - plain["first_token_s"])
