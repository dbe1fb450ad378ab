"""Step-time variability from a runtime profile: the ratio stream, exact coalescing, queueing."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.jitter import StepJitter
from simulator.resources import find_file
from tests.conftest import run_doc

#: Ratios of a heavy-tailed runtime: log-normal with sigma 0.3 (CV about 0.31), median 1.
QUANTILES = [round(float(np.exp(0.3 * x)), 4) for x in np.sort(np.random.default_rng(7).standard_normal(400))[::2]]


def jitter_profile(folder: Path, quantiles: list[float] = QUANTILES, correlation: float = 0.0) -> Path:
    """The datasheet H100 profile with a measured runtime section giving ``quantiles`` (and
    ``correlation`` between consecutive steps) for ResNet-50 and Llama-2-7B."""
    source = find_file("h100-sxm-80gb.yaml", "hardware_profiles")
    assert source is not None
    doc = yaml.safe_load(source.read_text())
    doc["name"] = "h100-jitter"
    doc["runtime"] = {
        "source": "test",
        "per_architecture": {
            arch: {"step_time_quantiles": list(quantiles), "step_time_correlation": correlation}
            for arch in ("resnet-50", "llama-2-7b")
        },
    }
    path = folder / "h100-jitter.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_kth_step_always_gets_the_kth_ratio():
    a = StepJitter(QUANTILES, seed=3, replica_id=1)
    b = StepJitter(QUANTILES, seed=3, replica_id=1)
    first = [a.take() for _ in range(10)]
    assert np.array_equal(b.peek(10), first)  # peeking ten equals taking them one by one
    b.advance(4)
    assert np.array_equal(b.peek(6), first[4:])
    assert b.steps == 4
    other = StepJitter(QUANTILES, seed=3, replica_id=2)
    assert not np.array_equal(other.peek(10), first)  # replicas draw independently


def test_ratios_follow_the_quantiles():
    jitter = StepJitter(QUANTILES, seed=0, replica_id=0)
    draws = jitter.peek(200_000)
    n = len(QUANTILES)
    probs = (np.arange(n) + 0.5) / n
    # the empirical quantiles at the given probabilities recover the given ratios
    np.testing.assert_allclose(np.quantile(draws, probs[5:-5]), QUANTILES[5:-5], rtol=0.02)
    assert QUANTILES[0] <= draws.min() and draws.max() <= QUANTILES[-1]


def test_correlated_ratios_keep_their_distribution_and_correlate_as_asked():
    """The Gaussian copula: the marginal stays the quantiles' distribution, the normal scores'
    lag-1 correlation is the one asked for, and peeking ahead equals taking one by one."""
    from statistics import NormalDist

    n = len(QUANTILES)
    probs = (np.arange(n) + 0.5) / n
    for rho in (0.3, 0.7):
        draws = StepJitter(QUANTILES, seed=5, replica_id=0, correlation=rho).peek(100_000)
        np.testing.assert_allclose(np.quantile(draws, probs[10:-10]), QUANTILES[10:-10], rtol=0.03)
        ranks = np.argsort(np.argsort(draws))
        scores = np.array([NormalDist().inv_cdf((r + 0.5) / len(draws)) for r in ranks.tolist()])
        # the standard error of a lag-1 correlation over 1e5 draws is about 0.003
        assert np.corrcoef(scores[1:], scores[:-1])[0, 1] == pytest.approx(rho, abs=0.02)
        a = StepJitter(QUANTILES, seed=5, replica_id=0, correlation=rho)
        b = StepJitter(QUANTILES, seed=5, replica_id=0, correlation=rho)
        taken = [a.take() for _ in range(5000)]  # crosses a block boundary
        b.advance(7)
        assert np.array_equal(b.peek(4993), taken[7:])
    independent = StepJitter(QUANTILES, seed=5, replica_id=0).peek(100_000)
    assert abs(np.corrcoef(independent[1:], independent[:-1])[0, 1]) < 0.02
    with pytest.raises(ValueError, match="correlation"):
        StepJitter(QUANTILES, seed=5, replica_id=0, correlation=1.0)


def test_step_time_streams_replicate_the_noise_over_the_same_workload(tmp_path):
    """``engine.step_time_stream`` changes the step-time draws and nothing else: same arrivals
    and sizes, other service times; stream 0 is the default stream."""
    assert np.array_equal(StepJitter(QUANTILES, 3, 1).peek(50), StepJitter(QUANTILES, 3, 1, stream=0).peek(50))
    assert not np.array_equal(StepJitter(QUANTILES, 3, 1).peek(50), StepJitter(QUANTILES, 3, 1, stream=2).peek(50))
    doc = {
        "name": "streams",
        "seed": 1,
        "cluster": {"profile": str(jitter_profile(tmp_path)), "replicas": 1},
        "models": {"resnet50": {"architecture": "resnet-50", "dtype": "fp16", "batching": {"policy": "none"}}},
        "workload": {"rate_rps": 10.0, "num_requests": 200, "mix": [{"model": "resnet50"}]},
    }
    _, _, base = run_doc(copy.deepcopy(doc))
    doc["engine"] = {"step_time_stream": 3}
    _, _, other = run_doc(doc)
    assert np.array_equal(base["arrival_s"], other["arrival_s"])
    assert np.array_equal(base["input_samples"], other["input_samples"])
    assert not np.allclose(base["e2e_s"], other["e2e_s"])


def _decoder(tmp_path, jitter=True, coalesce=True, correlation=0.0):
    profile = jitter_profile(tmp_path, correlation=correlation) if jitter else "h100-sxm-80gb"
    return {
        "name": "jitter",
        "seed": 4,
        "cluster": {"profile": str(profile), "replicas": 2},
        "models": {"llama": {"architecture": "llama-2-7b", "batching": {"policy": "vllm", "max_num_seqs": 64}}},
        "routing": {"policy": "least_loaded"},
        "engine": {"coalesce_decode": coalesce},
        "workload": {
            "rate_rps": 12,
            "num_requests": 400,
            "mix": [
                {
                    "model": "llama",
                    "input_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 3000},
                    "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 1.0, "max": 1000},
                }
            ],
        },
    }


@pytest.mark.parametrize("correlation", [0.0, 0.6])
def test_coalesced_decoding_with_jitter_is_identical_to_stepping(tmp_path, correlation):
    _, fast, fast_df = run_doc(_decoder(tmp_path, correlation=correlation))
    _, slow, slow_df = run_doc(_decoder(tmp_path, coalesce=False, correlation=correlation))
    pd.testing.assert_frame_equal(fast_df, slow_df, check_exact=True)
    assert [r["busy_s"] for r in fast.replicas] == [r["busy_s"] for r in slow.replicas]
    assert fast.events < slow.events
    _, _, fixed = run_doc(_decoder(tmp_path, jitter=False))
    # the ratios really moved the times: per-token gaps now scatter around the fixed ones
    assert not np.allclose(fixed["tpot_s"], fast_df["tpot_s"], equal_nan=True)


def test_a_batch_replica_scales_each_batch_by_its_ratio(tmp_path):
    doc = {
        "name": "cnn",
        "seed": 1,
        "cluster": {"profile": str(jitter_profile(tmp_path)), "replicas": 1},
        "models": {"resnet50": {"architecture": "resnet-50", "dtype": "fp16", "batching": {"policy": "none"}}},
        "workload": {"rate_rps": 10.0, "num_requests": 300, "mix": [{"model": "resnet50"}]},
    }
    resolved, _, df = run_doc(doc)
    price = resolved.models["resnet50"].cost.batch_s(1)
    service = (df["completion_s"] - df["start_s"]).to_numpy()
    expected = price * StepJitter(QUANTILES, seed=1, replica_id=0).peek(len(df))
    # one replica, FCFS, no batching: the k-th request is the k-th step
    np.testing.assert_allclose(np.sort(service), np.sort(expected), rtol=1e-9)
    assert np.std(service) / np.mean(service) == pytest.approx(0.3, abs=0.06)


def test_mean_wait_with_jitter_matches_pollaczek_khinchine(tmp_path):
    """M/G/1 whose service variability comes from the jitter: Wq = lambda E[S^2] / 2(1 - rho)."""
    profile = str(jitter_profile(tmp_path))
    means, theory, fixed = [], [], []
    for seed in range(12):
        doc = {
            "name": "mg1",
            "seed": seed,
            "cluster": {"profile": profile, "replicas": 1},
            "models": {"resnet50": {"architecture": "resnet-50", "dtype": "fp16", "batching": {"policy": "none"}}},
            "workload": {"rate_rps": 1.0, "num_requests": 20_000, "mix": [{"model": "resnet50"}]},
        }
        resolved, _, _ = run_doc(copy.deepcopy(doc))
        doc["workload"]["rate_rps"] = 0.7 / resolved.models["resnet50"].cost.batch_s(1)
        _, _, df = run_doc(doc)
        service = (df["completion_s"] - df["start_s"]).to_numpy()
        lam = doc["workload"]["rate_rps"]
        rho = lam * service.mean()
        means.append(float(df.iloc[len(df) // 10 :]["queue_s"].mean()))
        theory.append(lam * np.mean(service**2) / (2 * (1 - rho)))
        fixed.append(lam * service.mean() ** 2 / (2 * (1 - rho)))  # M/D/1 at the same mean
    mean, se = float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(len(means)))
    assert abs(mean - float(np.mean(theory))) < 4 * se, (mean, np.mean(theory), se)
    # the variability matters: fixed step times would wait (1 + CV^2) ~ 1.09 times less
    assert float(np.mean(fixed)) < 0.95 * mean
