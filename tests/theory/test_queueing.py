"""The simulator against queueing theory where a closed form exists.

One replica, no batching, Poisson arrivals: an M/G/1 FCFS queue. The Pollaczek-Khinchine
formula gives the mean wait ``Wq = lambda E[S^2] / (2 (1 - rho))`` with ``rho = lambda E[S]``
(M/D/1 when every request has the same size). Each load is simulated over independent seeds;
the test's tolerance is the standard error of the mean over seeds (4 standard errors, so a
correct simulator fails about once in 15,000 runs), never a fixed number of decimal places.
The first 10% of each run is discarded as warm-up (the queue starts empty).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.conftest import run_doc

SEEDS = range(12)


def _waits(doc: dict, seed: int) -> tuple[float, np.ndarray, float]:
    """Mean wait after warm-up, the service times, and the arrival rate of one run."""
    doc = copy.deepcopy(doc)
    doc["seed"] = seed
    _, _, df = run_doc(doc)
    assert (df["status"] == "completed").all()
    service = (df["completion_s"] - df["start_s"]).to_numpy()
    keep = df.iloc[len(df) // 10 :]
    return float(keep["queue_s"].mean()), service, float(doc["workload"]["rate_rps"])


def _check_pk(doc: dict, rho_target: float, n: int) -> None:
    from simulator.cost import Deployment, ModelCost
    from simulator.hardware import load_profile
    from simulator.models import resnet50

    cost = ModelCost(Deployment(resnet50(), "fp16"), load_profile("a100-sxm-80gb"))
    doc = copy.deepcopy(doc)
    doc["models"]["resnet50"]["dtype"] = "fp16"
    mix = doc["workload"]["mix"][0]
    samples = mix.get("input_samples", 1)
    if isinstance(samples, dict):  # uniform sizes: mean service time over the distribution
        mean_s = np.mean([cost.batch_s(k) for k in range(samples["low"], samples["high"] + 1)])
    else:
        mean_s = cost.batch_s(samples)
    doc["workload"]["rate_rps"] = rho_target / mean_s
    doc["workload"]["num_requests"] = n
    means, theory = [], []
    for seed in SEEDS:
        wq, service, lam = _waits(doc, seed)
        rho = lam * service.mean()
        means.append(wq)
        theory.append(lam * np.mean(service**2) / (2 * (1 - rho)))
    mean, se = float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(len(means)))
    expected = float(np.mean(theory))
    print(f"rho={rho_target}: simulated Wq={mean * 1e3:.4f} ms +- {se * 1e3:.4f}, P-K {expected * 1e3:.4f} ms")
    assert abs(mean - expected) < 4 * se, (mean, expected, se)


@pytest.mark.parametrize(("rho", "n"), [(0.3, 20_000), (0.6, 20_000), (0.9, 100_000)])
def test_md1_mean_wait_matches_pollaczek_khinchine(cnn_doc, rho, n):
    _check_pk(cnn_doc, rho, n)


@pytest.mark.parametrize(("rho", "n"), [(0.5, 20_000), (0.9, 100_000)])
def test_mg1_mean_wait_matches_pollaczek_khinchine(cnn_doc, rho, n):
    cnn_doc["workload"]["mix"][0]["input_samples"] = {"dist": "uniform", "low": 1, "high": 32}
    _check_pk(cnn_doc, rho, n)


def test_md1_is_deterministic_service(cnn_doc):
    """M/D/1 really has one service time (guards the test above against a silent M/G/1)."""
    _, service, _ = _waits(cnn_doc, 0)
    assert np.ptp(service) < 1e-12


@pytest.mark.parametrize(
    "batching",
    [
        {"policy": "none"},
        {"policy": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 1.0},
        {"policy": "static", "max_batch_size": 4},
    ],
)
def test_littles_law_for_the_queue(cnn_doc, batching):
    """The engine's time-averaged queue length equals (sum of queueing times) / time.

    The left side is integrated by the engine from queue-length changes, the right side is
    computed from per-request timestamps: two independent accountings of the same process.
    """
    cnn_doc["models"]["resnet50"]["batching"] = batching
    cnn_doc["workload"]["rate_rps"] = 2500.0
    _, result, df = run_doc(cnn_doc)
    area = sum(r["queue_area"] for r in result.replicas)
    assert area / result.sim_end_s == pytest.approx(df["queue_s"].sum() / result.sim_end_s, rel=1e-9)
    assert df["queue_s"].mean() > 0


def test_littles_law_for_the_system_with_a_decoder():
    """L = lambda W for a continuous-batching decoder: time-average of requests in the system
    from the timeseries against throughput x mean sojourn, within the sampling error."""
    doc = {
        "name": "little",
        "seed": 4,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": 2},
        "models": {"llama": {"architecture": "llama-2-7b", "batching": {"policy": "continuous"}}},
        "engine": {"timeseries_interval_s": 0.05},
        "workload": {
            "rate_rps": 8.0,
            "num_requests": 3000,
            "mix": [
                {
                    "model": "llama",
                    "input_tokens": {"dist": "uniform", "low": 100, "high": 1000},
                    "output_tokens": {"dist": "uniform", "low": 10, "high": 300},
                }
            ],
        },
    }
    _, result, df = run_doc(doc)
    ts = result.timeseries
    in_system = (ts["queue_length"] + ts["running"]).groupby(ts["time_s"]).sum()
    sojourn = (df["final_s"] - df["arrival_s"]).sum() / result.sim_end_s
    # running is sampled (not integrated): allow the sampling error of a 0.05 s grid
    assert in_system.mean() == pytest.approx(sojourn, rel=0.05)
