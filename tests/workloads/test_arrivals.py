"""Each arrival process's samples match its definition.

Significance: every distribution test (Kolmogorov-Smirnov, chi-square) must not reject at
alpha = 0.001; every moment (mean, variance, index of dispersion) must lie within 4 standard
errors of its closed form, the standard error computed from the distribution's own higher
moments. Seeds are fixed, so the tests are deterministic; with alpha = 0.001 and 4 SE a
correct generator fails one of them with a probability well under 1%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from workloads.arrivals import (
    CHUNK,
    MMPP,
    ClosedLoopClients,
    Diurnal,
    GammaRenewal,
    PiecewiseRate,
    Poisson,
    RateCurve,
    Replay,
    ThinkTime,
    WeibullRenewal,
    arrival_stream,
    arrival_times,
    weibull_shape_for_cv,
)
from workloads.traces import DATA_DIR

ALPHA = 1e-3
Z = 4.0


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_moment(estimate: float, expected: float, se: float, what: str) -> None:
    assert abs(estimate - expected) < Z * se, f"{what}: {estimate:.6g} vs {expected:.6g} (SE {se:.3g})"


# --------------------------------------------------------------------------------------------
# renewal processes: the gaps' distribution, mean and CV


def check_gaps(gaps: np.ndarray, dist: stats.rv_continuous, rate: float, cv: float) -> None:
    n = len(gaps)
    ks = stats.kstest(gaps, dist.cdf)
    assert ks.pvalue > ALPHA, f"KS rejects: D={ks.statistic:.4g}, p={ks.pvalue:.3g}"
    mean, var = dist.stats(moments="mv")
    assert math.isclose(float(mean), 1 / rate, rel_tol=1e-9)
    assert math.isclose(math.sqrt(float(var)) * rate, cv, rel_tol=1e-6)
    assert_moment(gaps.mean(), 1 / rate, math.sqrt(var / n), "mean gap")
    mu4 = dist.expect(lambda x: (x - mean) ** 4)  # central 4th moment -> SE of the variance
    assert_moment(gaps.var(), float(var), math.sqrt((mu4 - var**2) / n), "variance of the gaps")


def test_poisson_gaps_are_exponential_with_mean_1_over_rate() -> None:
    rate = 50.0
    gaps = Poisson().interarrival_s(rate, 200_000, rng(1))
    check_gaps(gaps, stats.expon(scale=1 / rate), rate, 1.0)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_gaps_have_the_given_cv(cv: float) -> None:
    rate = 20.0
    gaps = GammaRenewal(GammaRenewal.Params(cv=cv)).interarrival_s(rate, 400_000, rng(2))
    shape = 1 / cv**2
    check_gaps(gaps, stats.gamma(shape, scale=1 / (rate * shape)), rate, cv)


@pytest.mark.parametrize("cv", [0.3, 1.0, 2.0])
def test_weibull_gaps_have_the_given_cv(cv: float) -> None:
    rate = 10.0
    proc = WeibullRenewal(WeibullRenewal.Params(cv=cv))
    gaps = proc.interarrival_s(rate, 400_000, rng(3))
    k = proc.shape
    scale = 1 / (rate * math.gamma(1 + 1 / k))
    check_gaps(gaps, stats.weibull_min(k, scale=scale), rate, cv)


def test_weibull_shape_solves_the_cv() -> None:
    assert math.isclose(weibull_shape_for_cv(1.0), 1.0, rel_tol=1e-9)
    for cv in (0.05, 0.5, 3.0, 30.0):
        k = weibull_shape_for_cv(cv)
        assert math.isclose(stats.weibull_min(k).std() / stats.weibull_min(k).mean(), cv, rel_tol=1e-6)


def test_chunking_never_changes_a_renewal_stream() -> None:
    proc = GammaRenewal(GammaRenewal.Params(cv=3.0))
    whole = np.cumsum(proc.interarrival_s(7.0, 50_000, rng(4)))
    chunked = np.concatenate(list(arrival_stream(proc, 7.0, rng(4), 50_000, None, chunk=999)))
    assert np.array_equal(whole, chunked)  # bit for bit
    assert CHUNK >= 1 << 20


def test_duration_and_count_limits() -> None:
    diurnal = Diurnal(Diurnal.Params(amplitude=0.5, period_s=10))
    for proc in (Poisson(), diurnal, MMPP(MMPP.Params(rates_rps=[5, 1], mean_sojourn_s=[1, 1]))):
        times = arrival_times(proc, 100.0, rng(5), 500, None)
        assert len(times) == 500 and np.all(np.diff(times) >= 0)
        times = arrival_times(proc, 100.0, rng(5), None, 3.0)
        assert times.max() < 3.0 and 100 < len(times) < 600
        times = arrival_times(proc, 100.0, rng(5), 10**6, 2.0)
        assert times.max() < 2.0


# --------------------------------------------------------------------------------------------
# MMPP: mean rate and burstiness (index of dispersion of counts) against the closed forms


def mmpp_idc(rates: list[float], sojourn: list[float], t: float) -> float:
    """Index of dispersion of counts in a window of ``t`` seconds, two-state MMPP
    (Fischer and Meier-Hellstern 1993): 1 + A (1 - (1 - exp(-r t)) / (r t))."""
    s1, s2 = 1 / sojourn[0], 1 / sojourn[1]  # leaving rates
    l1, l2 = rates
    r = s1 + s2
    a = 2 * s1 * s2 * (l1 - l2) ** 2 / (r**2 * (l1 * s2 + l2 * s1))
    return 1 + a * (1 - (1 - math.exp(-r * t)) / (r * t))


def test_mmpp_mean_rate_and_burstiness() -> None:
    rates, sojourn = [100.0, 0.0], [2.0, 8.0]  # on/off: bursts of 2 s every 10 s, mean 20 req/s
    proc = MMPP(MMPP.Params(rates_rps=rates, mean_sojourn_s=sojourn))
    assert np.allclose(proc.stationary(), [0.2, 0.8])
    assert math.isclose(proc.mean_rate_rps(), 20.0)
    horizon, window = 100_000.0, 200.0
    times = arrival_times(proc, 20.0, rng(6), None, horizon)
    idc_inf = mmpp_idc(rates, sojourn, 1e12)
    assert_moment(len(times) / horizon, 20.0, math.sqrt(idc_inf * 20.0 * horizon) / horizon, "mean rate")
    counts = np.bincount((times // window).astype(int), minlength=int(horizon / window))
    idc = counts.var(ddof=1) / counts.mean()
    expected = mmpp_idc(rates, sojourn, window)
    se = expected * math.sqrt(2 / (len(counts) - 1))  # of a variance estimate over the windows
    assert_moment(idc, expected, se, "index of dispersion")
    assert idc > 100  # far from Poisson's 1


def test_mmpp_rates_scale_to_the_workload_rate() -> None:
    proc = MMPP(MMPP.Params(rates_rps=[30, 10, 0], mean_sojourn_s=[1, 2, 3]))
    assert math.isclose(proc.stationary().sum(), 1.0)
    times = arrival_times(proc, 50.0, rng(7), None, 20_000.0)
    # a loose 10% bound: the counts are overdispersed, the exact check is the one above
    assert abs(len(times) / 20_000.0 - 50.0) < 5.0


def test_mmpp_params_are_checked() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        MMPP.Params(rates_rps=[1, 2], mean_sojourn_s=[1, 2, 3])
    with pytest.raises(ValueError, match="not all 0"):
        MMPP.Params(rates_rps=[0, 0], mean_sojourn_s=[1, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        MMPP.Params(rates_rps=[1, 2, 3], mean_sojourn_s=[1, 1, 1], transitions=[[0, 0.5, 0.4], [1, 0, 0], [1, 0, 0]])


# --------------------------------------------------------------------------------------------
# thinning preserves the rate curve: chi-square of the counts per bin against the integral


def chi_square_bins(times: np.ndarray, expected: np.ndarray, width: float) -> None:
    counts = np.bincount((times // width).astype(int), minlength=len(expected))[: len(expected)]
    keep = expected > 0
    assert not np.any(counts[~keep]), "arrivals where the rate is 0"
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    p = stats.chi2.sf(chi2, keep.sum())
    assert p > ALPHA, f"chi-square {chi2:.1f} on {keep.sum()} bins, p={p:.3g}"
    assert math.isclose(counts.sum(), expected.sum(), rel_tol=Z / math.sqrt(expected.sum()))


def test_diurnal_thinning_follows_the_sinusoid() -> None:
    rate, amp, period, phase = 100.0, 0.8, 1000.0, 150.0
    proc = Diurnal(Diurnal.Params(amplitude=amp, period_s=period, phase_s=phase))
    horizon, width = 5000.0, 10.0
    times = arrival_times(proc, rate, rng(8), None, horizon)
    edges = np.arange(0, horizon + width, width)
    w = 2 * np.pi / period

    def integral(t: np.ndarray) -> np.ndarray:
        return rate * (t - amp / w * np.cos(w * (t - phase)))

    chi_square_bins(times, np.diff(integral(edges)), width)
    assert np.allclose(proc.intensity_rps(np.array([phase + period / 4]), rate), rate * (1 + amp))


def test_piecewise_rate_is_normalised_and_followed() -> None:
    proc = PiecewiseRate(PiecewiseRate.Params(rates=[1, 4, 0, 2], durations_s=[10, 5, 5, 20]))
    rate = 30.0
    mean_level = (1 * 10 + 4 * 5 + 0 * 5 + 2 * 20) / 40
    levels = np.repeat(np.array([1, 4, 0, 2]) / mean_level * rate, [10, 5, 5, 20])  # per 1 s bin
    horizon = 40 * 200
    times = arrival_times(proc, rate, rng(9), None, float(horizon))
    chi_square_bins(times, np.tile(levels, 200), 1.0)


@pytest.mark.parametrize("interpolation", ["step", "linear"])
def test_rate_curve_from_a_file(tmp_path, interpolation: str) -> None:
    (tmp_path / "curve.csv").write_text("time_s,rate_rps\r\n0,10\r\n30,50\r\n60,20\r\n100,10\r\n")
    proc = RateCurve(RateCurve.Params(file="curve.csv", interpolation=interpolation), base_dir=tmp_path)
    rate = 40.0
    t = np.arange(0, 100, 0.01) + 0.005  # midpoint rule, fine enough for a piecewise-linear curve
    shape = proc.shape(t)
    assert math.isclose(shape.mean(), 1.0, rel_tol=1e-3)
    times = arrival_times(proc, rate, rng(10), None, 100.0 * 80)
    per_bin = (rate * shape).reshape(100, 100).sum(axis=1) * 0.01
    chi_square_bins(times, np.tile(per_bin, 80), 1.0)


# --------------------------------------------------------------------------------------------
# replay


def conv_replay(**extra) -> Replay:
    trace = {"format": "azure_llm_2023", "file": str(DATA_DIR / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv")}
    return Replay(Replay.Params(trace=trace, **extra))


def test_replay_keeps_the_trace_or_scales_it_to_a_mean_rate() -> None:
    proc = conv_replay()
    native = arrival_times(proc, None, rng(), 10**9, None)
    assert np.array_equal(native, proc.trace.arrival_s)
    scaled = arrival_times(proc, 11.0, rng(), 10**9, None)
    assert math.isclose((len(scaled) - 1) / (scaled[-1] - scaled[0]), 11.0, rel_tol=1e-9)
    assert np.allclose(scaled * 11.0 / proc.trace.mean_rate_rps, native)


def test_replay_ends_with_the_trace_unless_it_loops() -> None:
    n = len(conv_replay().trace)
    assert len(arrival_times(conv_replay(), 5.0, rng(), 3 * n, None)) == n
    looped = arrival_times(conv_replay(loop=True), 5.0, rng(), 3 * n, None)
    assert len(looped) == 3 * n and np.all(np.diff(looped) >= 0)


# --------------------------------------------------------------------------------------------
# closed loop: never more than N in flight; the interactive response-time law


def run_closed_loop(clients: ClosedLoopClients, service: np.ndarray, servers: float = math.inf) -> dict:
    """A tiny event loop standing in for the engine: arrivals, a queue, completions."""
    import heapq

    events: list[tuple[float, int, str, int]] = []
    seq = 0
    users, times = clients.first_arrivals()
    for u, t in zip(users.tolist(), times.tolist(), strict=True):
        heapq.heappush(events, (t, seq, "arrive", u))
        seq += 1
    busy, queue, in_flight, max_in_flight, done, k, now = 0, [], 0, 0, 0, 0, 0.0
    while events:
        now, _, kind, user = heapq.heappop(events)
        if kind == "arrive":
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            assert clients.in_flight <= clients.users
            queue.append(user)
        else:
            busy -= 1
            in_flight -= 1
            done += 1
            nxt = clients.on_completion(user, now)
            if nxt is not None:
                assert nxt >= now
                heapq.heappush(events, (nxt, seq, "arrive", user))
                seq += 1
        while queue and busy < servers:
            busy += 1
            heapq.heappush(events, (now + service[k % len(service)], seq, "done", queue.pop(0)))
            seq += 1
            k += 1
    return {"max_in_flight": max_in_flight, "completed": done, "end_s": now}


def test_closed_loop_throughput_follows_the_response_time_law() -> None:
    users, think, serve, budget = 20, 1.0, 0.5, 40_000
    clients = ClosedLoopClients(users, ThinkTime(mean_s=think), rng(11), num_requests=budget)
    out = run_closed_loop(clients, rng(12).exponential(serve, budget))
    assert out["max_in_flight"] <= users
    assert out["completed"] == budget and clients.issued == budget and clients.done
    x = budget / out["end_s"]
    expected = users / (think + serve)  # infinite servers: each user cycles think + service
    cv2 = (think**2 + serve**2) / (think + serve) ** 2
    assert_moment(x, expected, expected * math.sqrt(cv2 / budget), "throughput")


@pytest.mark.parametrize("start", ["staggered", "together"])
def test_closed_loop_with_one_server_never_exceeds_n_in_flight(start: str) -> None:
    clients = ClosedLoopClients(8, ThinkTime(dist="gamma", mean_s=0.2, cv=2.0), rng(13), num_requests=5000, start=start)
    out = run_closed_loop(clients, rng(14).exponential(0.05, 5000), servers=1)
    assert out["max_in_flight"] <= 8 and out["completed"] == 5000


def test_closed_loop_budget_duration_and_misuse() -> None:
    clients = ClosedLoopClients(10, ThinkTime(dist="fixed", mean_s=1.0), rng(), num_requests=4, start="together")
    users, times = clients.first_arrivals()
    assert len(users) == 4 and np.all(times == 0)
    assert clients.on_completion(int(users[0]), 0.5) is None  # budget spent
    with pytest.raises(RuntimeError, match="no request in flight"):
        clients.on_completion(int(users[0]), 0.6)
    with pytest.raises(RuntimeError, match="already called"):
        clients.first_arrivals()
    timed = ClosedLoopClients(2, ThinkTime(dist="fixed", mean_s=1.0), rng(), duration_s=2.5)
    users, times = timed.first_arrivals()
    assert np.all(times == 1.0)
    assert timed.on_completion(int(users[0]), 1.2) == 2.2
    assert timed.on_completion(int(users[0]), 2.3) is None  # 3.3 is past the duration
    with pytest.raises(ValueError, match="needs cv"):
        ThinkTime(dist="gamma", mean_s=1.0)


@pytest.mark.parametrize("dist,cv", [("exponential", None), ("gamma", 3.0), ("lognormal", 0.5), ("uniform", None)])
def test_think_time_mean(dist: str, cv: float | None) -> None:
    draws = ThinkTime(dist=dist, mean_s=2.0, cv=cv).sample(400_000, rng(15))
    expected_cv = {"exponential": 1.0, "uniform": 1 / math.sqrt(3)}.get(dist, cv)
    assert_moment(draws.mean(), 2.0, 2.0 * expected_cv / math.sqrt(len(draws)), f"{dist} think time")
