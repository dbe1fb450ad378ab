"""Arrival processes: when requests arrive.

Every process is registered in ``ARRIVALS`` and built from the YAML as ``Cls(params)``, or
``Cls(params, base_dir=FOLDER)`` when its constructor takes ``base_dir`` (for files named
relative to the experiment). ``rate_rps`` is always the long-run mean rate: the other
parameters set the shape only (a coefficient of variation, a burst pattern, a rate curve), so
a sweep over ``workload.rate_rps`` keeps the shape and moves the load. There are three kinds:

* **renewal** processes implement ``interarrival_s(rate_rps, n, rng)``: ``n`` independent
  gaps with mean ``1 / rate_rps``. Built in: ``poisson`` (exponential gaps, CV 1), ``gamma``
  and ``weibull`` (a given CV of the gaps; CV > 1 is burstier than Poisson).
* **general** processes implement ``stream_s(rate_rps, rng)``: an iterator over sorted
  chunks of arrival times (seconds from 0). Built in: ``mmpp`` (Markov-modulated Poisson:
  on/off bursts), ``diurnal``, ``piecewise`` and ``rate_curve`` (a time-varying rate, drawn by
  thinning), and ``replay`` (the timestamps of a trace).
* **closed loop** (``closed_loop``): ``N`` users, each issuing its next request one think
  time after its previous one completed. Its arrivals depend on the simulation, so it
  implements ``clients(num_requests, duration_s, rng)`` returning a
  :class:`ClosedLoopClients`, which the engine's feeder drives.

:func:`arrival_stream` cuts any open-loop process at ``num_requests`` or ``duration_s``,
chunk by chunk, in bounded memory; :func:`arrival_times` returns the whole array.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, model_validator

from simulator.errors import ConfigError
from simulator.policy import PolicyParams

__all__ = [
    "CHUNK",
    "MMPP",
    "ArrivalProcess",
    "ClosedLoop",
    "ClosedLoopClients",
    "Diurnal",
    "GammaRenewal",
    "PiecewiseRate",
    "Poisson",
    "RateCurve",
    "Replay",
    "ThinkTime",
    "WeibullRenewal",
    "arrival_stream",
    "arrival_times",
    "weibull_shape_for_cv",
]

#: Most arrivals drawn at once (a chunk): bounds the memory of generating any number of
#: requests. Runs of up to ``CHUNK`` requests draw exactly what one call would.
CHUNK = 1 << 20


class ArrivalProcess(Protocol):
    """A renewal process: draws inter-arrival gaps (seconds) with mean ``1 / rate_rps``.

    General processes implement ``stream_s(rate_rps, rng) -> Iterator[np.ndarray]`` instead
    (sorted chunks of absolute times, seconds from 0); see the module docstring.
    """

    def interarrival_s(self, rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``n`` gaps in seconds."""
        ...


# --------------------------------------------------------------------------------------------
# renewal processes


class Poisson:
    """Poisson arrivals: exponential gaps with mean ``1 / rate_rps`` (CV = 1)."""

    class Params(PolicyParams):
        """No parameters."""

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()

    def interarrival_s(self, rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Exponential gaps."""
        return rng.exponential(1.0 / rate_rps, n)


class GammaRenewal:
    """A Gamma renewal process: gaps ~ Gamma(shape 1/cv^2, scale cv^2/rate), mean 1/rate,
    coefficient of variation ``cv`` (``cv = 1`` is Poisson; ``cv = 4`` is very bursty)."""

    class Params(PolicyParams):
        """``cv``: coefficient of variation of the gaps (> 0)."""

        cv: float = Field(gt=0)

    def __init__(self, params: Params) -> None:
        self.params = params

    def interarrival_s(self, rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gamma-distributed gaps."""
        shape = 1.0 / self.params.cv**2
        return rng.gamma(shape, 1.0 / (rate_rps * shape), n)


def _weibull_cv(k: float) -> float:
    """CV of a Weibull distribution of shape ``k``: sqrt(G(1+2/k)/G(1+1/k)^2 - 1)."""
    return math.sqrt(math.expm1(math.lgamma(1 + 2 / k) - 2 * math.lgamma(1 + 1 / k)))


def weibull_shape_for_cv(cv: float) -> float:
    """The Weibull shape ``k`` whose CV is ``cv`` (bisection on log k; the CV falls as k
    grows; k = 1 is the exponential, CV 1)."""
    lo, hi = math.log(0.05), math.log(200.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        if _weibull_cv(math.exp(mid)) > cv:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


class WeibullRenewal:
    """A Weibull renewal process with gaps of mean ``1 / rate_rps`` and coefficient of
    variation ``cv`` (the shape solves CV(k) = cv; ``cv = 1`` is Poisson). Its tail is
    heavier than the Gamma's of the same CV: long silences, then clusters."""

    class Params(PolicyParams):
        """``cv``: coefficient of variation of the gaps, in [0.01, 1e4]."""

        cv: float = Field(ge=0.01, le=1e4)

    def __init__(self, params: Params) -> None:
        self.params = params
        self.shape = weibull_shape_for_cv(params.cv)

    def interarrival_s(self, rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Weibull-distributed gaps."""
        scale = 1.0 / (rate_rps * math.exp(math.lgamma(1 + 1 / self.shape)))
        return scale * rng.weibull(self.shape, n)


# --------------------------------------------------------------------------------------------
# Markov-modulated Poisson


class MMPP:
    """A Markov-modulated Poisson process: a hidden state ``k`` that lasts an exponential
    time of mean ``mean_sojourn_s[k]``, then moves to another state (with two states: the
    other one; with more: by row ``k`` of ``transitions``, uniformly if not given); while in
    state ``k``, arrivals are Poisson at rate ``rates_rps[k]``. ``rates_rps: [100, 0]`` with
    sojourns ``[2, 8]`` is an on/off source bursting for 2 s every 10 s on average.

    All rates are multiplied by one factor so that the stationary mean rate equals the
    workload's ``rate_rps`` (the burst shape is kept across a load sweep).
    :meth:`mean_rate_rps` is the mean of the rates as given.
    """

    class Params(PolicyParams):
        """``rates_rps`` (>= 0 each, not all 0), ``mean_sojourn_s`` (> 0 each), optional
        ``transitions`` (rows sum to 1, zero diagonal)."""

        rates_rps: tuple[float, ...] = Field(min_length=2)
        mean_sojourn_s: tuple[float, ...] = Field(min_length=2)
        transitions: tuple[tuple[float, ...], ...] | None = None

        @model_validator(mode="after")
        def _check(self) -> MMPP.Params:
            k = len(self.rates_rps)
            if len(self.mean_sojourn_s) != k:
                raise ValueError(
                    f"rates_rps ({k} states) and mean_sojourn_s ({len(self.mean_sojourn_s)}) must have equal lengths"
                )
            if any(r < 0 for r in self.rates_rps) or not any(r > 0 for r in self.rates_rps):
                raise ValueError(f"rates_rps must be >= 0 and not all 0, got {list(self.rates_rps)}")
            if any(s <= 0 for s in self.mean_sojourn_s):
                raise ValueError(f"mean_sojourn_s must all be > 0, got {list(self.mean_sojourn_s)}")
            if self.transitions is not None:
                p = np.asarray(self.transitions, dtype=float)
                if p.shape != (k, k) or np.any(p < 0) or np.any(np.diag(p) != 0):
                    raise ValueError(f"transitions must be a {k}x{k} matrix of probabilities >= 0 with a zero diagonal")
                if not np.allclose(p.sum(axis=1), 1.0):
                    raise ValueError(f"each row of transitions must sum to 1, got sums {p.sum(axis=1).tolist()}")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params
        k = len(params.rates_rps)
        if params.transitions is not None:
            self.jump = np.asarray(params.transitions, dtype=float)
        else:
            self.jump = (np.ones((k, k)) - np.eye(k)) / (k - 1)
        self.rates = np.asarray(params.rates_rps, dtype=float)
        self.sojourn = np.asarray(params.mean_sojourn_s, dtype=float)

    def stationary(self) -> np.ndarray:
        """The fraction of time spent in each state (the embedded chain's stationary law
        weighted by the mean sojourns)."""
        k = len(self.rates)
        a = np.vstack([self.jump.T - np.eye(k), np.ones(k)])
        b = np.zeros(k + 1)
        b[-1] = 1.0
        visits = np.linalg.lstsq(a, b, rcond=None)[0]
        time = visits * self.sojourn
        return time / time.sum()

    def mean_rate_rps(self) -> float:
        """The stationary mean rate of the rates as given (requests/s)."""
        return float(self.stationary() @ self.rates)

    def stream_s(self, rate_rps: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Arrival times, one chunk per batch of sojourns."""
        rates = self.rates * (rate_rps / self.mean_rate_rps())
        k = len(rates)
        state = int(rng.choice(k, p=self.stationary()))
        now = 0.0
        cum = np.cumsum(self.jump, axis=1)
        batch = 4096
        while True:
            states = np.empty(batch, dtype=np.int64)
            u = rng.random(batch)
            for i in range(batch):  # the chain is sequential; k x batch work, no draws per arrival
                states[i] = state
                state = int(np.searchsorted(cum[state], u[i], side="right")) if k > 2 else 1 - state
            durations = rng.exponential(self.sojourn[states])
            starts = now + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
            now = float(starts[-1] + durations[-1])
            counts = rng.poisson(rates[states] * durations)
            times = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(durations, counts)
            yield np.sort(times)


# --------------------------------------------------------------------------------------------
# time-varying rates, by thinning


class _Thinned:
    """A non-homogeneous Poisson process of intensity ``rate_rps * shape(t)``, where the
    shape's time average is 1, drawn by thinning (Lewis and Shedler): candidates at the peak
    rate, each kept with probability ``shape(t) / peak``."""

    def shape(self, t_s: np.ndarray) -> np.ndarray:
        """The relative intensity at times ``t_s`` (time average 1)."""
        raise NotImplementedError

    def peak(self) -> float:
        """The largest value of :meth:`shape`."""
        raise NotImplementedError

    def intensity_rps(self, t_s: np.ndarray, rate_rps: float) -> np.ndarray:
        """The arrival rate (requests/s) at times ``t_s`` for a mean rate ``rate_rps``."""
        return rate_rps * self.shape(np.asarray(t_s, dtype=float))

    def stream_s(self, rate_rps: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Arrival times, thinned from Poisson candidates at the peak rate."""
        peak = self.peak()
        last = 0.0
        n = 1 << 16
        while True:
            cand = last + np.cumsum(rng.exponential(1.0 / (rate_rps * peak), n))
            last = float(cand[-1])
            keep = rng.random(n) * peak < self.shape(cand)
            yield cand[keep]


class Diurnal(_Thinned):
    """A sinusoidal daily cycle: ``rate(t) = rate_rps * (1 + amplitude * sin(2 pi (t -
    phase_s) / period_s))``; ``amplitude`` in [0, 1] (0 = Poisson), ``period_s`` default one
    day, ``phase_s`` shifts the cycle (the rate is at its mean and rising at ``phase_s``)."""

    class Params(PolicyParams):
        """``amplitude`` in [0, 1], ``period_s`` > 0 (default 86400), ``phase_s``."""

        amplitude: float = Field(ge=0, le=1)
        period_s: float = Field(default=86400.0, gt=0)
        phase_s: float = 0.0

    def __init__(self, params: Params) -> None:
        self.params = params

    def shape(self, t_s: np.ndarray) -> np.ndarray:
        """``1 + amplitude * sin(...)``."""
        p = self.params
        return 1.0 + p.amplitude * np.sin(2 * np.pi * (t_s - p.phase_s) / p.period_s)

    def peak(self) -> float:
        """``1 + amplitude``."""
        return 1.0 + self.params.amplitude


class _Curve(_Thinned):
    """A cyclic rate curve given at times ``0 = t_0 < ... < t_m`` (the period is ``t_m``):
    ``step`` holds ``r_i`` on ``[t_i, t_{i+1})``, ``linear`` interpolates. Normalised to a
    time average of 1."""

    def __init__(self, times_s: np.ndarray, rates: np.ndarray, interpolation: str, where: str) -> None:
        if len(times_s) < 2 or times_s[0] != 0 or np.any(np.diff(times_s) <= 0):
            raise ConfigError(f"{where}: the curve's times must start at 0 and increase (at least two points)")
        if np.any(rates < 0) or not np.any(rates > 0):
            raise ConfigError(f"{where}: the curve's rates must be >= 0 and not all 0")
        self.times = times_s
        self.interpolation = interpolation
        widths = np.diff(times_s)
        if interpolation == "step":
            mean = float(rates[:-1] @ widths) / times_s[-1]
        else:
            mean = float(((rates[:-1] + rates[1:]) / 2) @ widths) / times_s[-1]
        self.rates = rates / mean
        self.period_s = float(times_s[-1])

    def shape(self, t_s: np.ndarray) -> np.ndarray:
        """The normalised curve at ``t_s`` (cyclic)."""
        t = np.mod(t_s, self.period_s)
        if self.interpolation == "linear":
            return np.interp(t, self.times, self.rates)
        idx = np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.rates) - 2)
        return self.rates[idx]

    def peak(self) -> float:
        """The curve's maximum."""
        return float(self.rates[:-1].max() if self.interpolation == "step" else self.rates.max())


class PiecewiseRate(_Curve):
    """A piecewise-constant rate that repeats: level ``rates[i]`` for ``durations_s[i]``
    seconds, then the next. The levels are relative: they are scaled so that the time average
    over one cycle equals the workload's ``rate_rps`` (``rates: [1, 4, 1]`` is a burst at four
    times the base level)."""

    class Params(PolicyParams):
        """``rates`` (>= 0, relative) and ``durations_s`` (> 0), of equal lengths."""

        rates: tuple[float, ...] = Field(min_length=1)
        durations_s: tuple[float, ...] = Field(min_length=1)

        @model_validator(mode="after")
        def _check(self) -> PiecewiseRate.Params:
            if len(self.rates) != len(self.durations_s):
                raise ValueError(
                    f"rates ({len(self.rates)}) and durations_s ({len(self.durations_s)}) must have equal lengths"
                )
            if any(d <= 0 for d in self.durations_s):
                raise ValueError(f"durations_s must all be > 0, got {list(self.durations_s)}")
            if any(r < 0 for r in self.rates) or not any(r > 0 for r in self.rates):
                raise ValueError(f"rates must be >= 0 and not all 0, got {list(self.rates)}")
            return self

    def __init__(self, params: Params) -> None:
        self.params = params
        times = np.concatenate([[0.0], np.cumsum(params.durations_s)])
        rates = np.asarray([*params.rates, params.rates[-1]], dtype=float)
        super().__init__(times, rates, "step", "piecewise")


class RateCurve(_Curve):
    """A rate curve read from a CSV or parquet file with a time column (seconds from 0) and
    a rate column (any unit: the curve is scaled to a time average of the workload's
    ``rate_rps``). It repeats after its last time. ``interpolation``: ``step`` (a rate holds
    until the next time) or ``linear``."""

    class Params(PolicyParams):
        """``file``, ``time_column`` (s), ``rate_column``, ``interpolation``."""

        file: str
        time_column: str = "time_s"
        rate_column: str = "rate_rps"
        interpolation: Literal["step", "linear"] = "step"

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        import pandas as pd

        from workloads.traces import resolve_data_file

        self.params = params
        where = f"rate_curve (file {params.file!r})"
        path = resolve_data_file(params.file, base_dir, where)
        try:
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        except Exception as exc:
            raise ConfigError(f"{where}: {path}: cannot read: {exc}") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        cols = []
        for col in (params.time_column, params.rate_column):
            if col not in frame.columns:
                from simulator.errors import did_you_mean

                raise ConfigError(
                    f"{where}: {path}: no column '{col}'{did_you_mean(col, list(frame.columns), 'columns')}"
                )
            values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ConfigError(
                    f"{where}: {path}, line {int(bad[0]) + 2}, column '{col}': expected a number,"
                    f" got {frame[col].iloc[bad[0]]!r}"
                )
            cols.append(values)
        super().__init__(cols[0], cols[1], params.interpolation, f"{where}: {path}")


# --------------------------------------------------------------------------------------------
# replay


class Replay:
    """The arrival times of a trace, replayed: ``trace`` is a trace spec (``{format: NAME,
    file: PATH, window_s: ..., ...}``, see :mod:`workloads.readers`). With a workload
    ``rate_rps``, time is scaled so that the mean rate (the inverse of the mean gap) of the
    part replayed (the first ``num_requests`` arrivals, or all) equals it; without, the
    trace's own times are used. The replay ends with the trace unless
    ``loop`` repeats it (period: the trace's span plus one mean gap). Only the times are used;
    sizes come from the mix (for the trace's own sizes, use ``workload.trace``)."""

    #: The workload's ``rate_rps`` is optional for this process.
    needs_rate = False
    #: :func:`arrival_stream` passes ``num_requests`` to :meth:`stream_s`.
    takes_count = True

    class Params(PolicyParams):
        """``trace``: a trace spec mapping; ``loop``: repeat the trace."""

        trace: dict[str, Any]
        loop: bool = False

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        from workloads.traces import read_trace

        self.params = params
        self.trace = read_trace(params.trace, base_dir, "replay", ("trace",))

    def stream_s(
        self, rate_rps: float | None, rng: np.random.Generator, num_requests: int | None = None
    ) -> Iterator[np.ndarray]:
        """The trace's arrival times, scaled so that the first ``num_requests`` of them have
        the mean rate ``rate_rps`` (when given)."""
        trace = self.trace
        if rate_rps is not None:
            part = trace.head(num_requests) if num_requests is not None and not self.params.loop else trace
            trace = trace.scaled(rate_rps / part.mean_rate_rps)
        times = trace.arrival_s
        period = float(times[-1]) + (1.0 / trace.mean_rate_rps if len(times) > 1 else 1.0)
        offset = 0.0
        while True:
            for lo in range(0, len(times), CHUNK):
                yield times[lo : lo + CHUNK] + offset
            if not self.params.loop:
                return
            offset += period


# --------------------------------------------------------------------------------------------
# closed loop


class ThinkTime(PolicyParams):
    """A user's think time between an answer and its next request: ``dist`` is
    ``exponential`` (default), ``fixed``, ``uniform`` (on [0, 2 mean]), ``gamma`` or
    ``lognormal`` (these two with a coefficient of variation ``cv``); ``mean_s`` >= 0."""

    dist: Literal["exponential", "fixed", "uniform", "gamma", "lognormal"] = "exponential"
    mean_s: float = Field(ge=0)
    cv: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ThinkTime:
        if self.dist in ("gamma", "lognormal") and self.cv is None:
            raise ValueError(f"a {self.dist} think time needs cv (its coefficient of variation)")
        if self.dist not in ("gamma", "lognormal") and self.cv is not None:
            raise ValueError(f"cv applies to gamma and lognormal think times, not {self.dist}")
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` think times in seconds."""
        m = self.mean_s
        if self.dist == "fixed" or m == 0:
            return np.full(n, m)
        if self.dist == "exponential":
            return rng.exponential(m, n)
        if self.dist == "uniform":
            return rng.uniform(0.0, 2 * m, n)
        cv = float(self.cv or 1.0)
        if self.dist == "gamma":
            shape = 1.0 / cv**2
            return rng.gamma(shape, m / shape, n)
        sigma2 = math.log1p(cv**2)
        return rng.lognormal(math.log(m) - sigma2 / 2, math.sqrt(sigma2), n)


class ClosedLoop:
    """``users`` clients, each with at most one request outstanding: a user issues its next
    request one ``think_time`` after its previous one reached a final status (completed,
    rejected or dropped). ``start``: ``staggered`` (default) issues each user's first request
    after one think time, ``together`` issues them all at time 0. The offered rate follows
    from the system (about users / (think + response time)), so the workload's ``rate_rps``
    is not used; ``num_requests`` is the run's budget of requests."""

    needs_rate = False

    class Params(PolicyParams):
        """``users`` (> 0), ``think_time`` (a :class:`ThinkTime`), ``start``."""

        users: int = Field(gt=0)
        think_time: ThinkTime
        start: Literal["staggered", "together"] = "staggered"

    def __init__(self, params: Params) -> None:
        self.params = params

    def clients(
        self, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> ClosedLoopClients:
        """A fresh set of clients for one run."""
        p = self.params
        return ClosedLoopClients(p.users, p.think_time, rng, num_requests, duration_s, p.start)


class ClosedLoopClients:
    """The state of ``users`` closed-loop clients during one run (a plain object driven by
    the engine's feeder; no simpy).

    Protocol: :meth:`first_arrivals` once, then :meth:`on_completion` each time a request of
    a user reaches a final status; it returns when that user's next request arrives, or
    ``None`` when the budget (``num_requests``) is spent or the next arrival would be at or
    after ``duration_s``. Invariant: each user has at most one request issued and not yet
    completed, so at most ``users`` requests are ever in flight.
    """

    def __init__(
        self,
        users: int,
        think_time: ThinkTime,
        rng: np.random.Generator,
        num_requests: int | None = None,
        duration_s: float | None = None,
        start: str = "staggered",
    ) -> None:
        self.users = users
        self.think_time = think_time
        self.rng = rng
        self.budget = num_requests if num_requests is not None else math.inf
        self.duration_s = duration_s if duration_s is not None else math.inf
        self.start = start
        self.issued = 0
        self._busy = np.zeros(users, dtype=bool)
        self._buffer = np.empty(0)
        self._next = 0
        self._started = False

    @property
    def in_flight(self) -> int:
        """Requests issued and not yet completed (<= users)."""
        return int(self._busy.sum())

    @property
    def done(self) -> bool:
        """The run's arrivals are over: no request is in flight, so none will be issued."""
        return self._started and self.in_flight == 0

    def _think(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer = self.think_time.sample(4096, self.rng)
            self._next = 0
        value = float(self._buffer[self._next])
        self._next += 1
        return value

    def first_arrivals(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users, arrival_s)`` of the first requests, sorted by time (ties by user):
        at most ``num_requests`` of them, none at or after ``duration_s``."""
        if self._started:
            raise RuntimeError("first_arrivals() was already called for this run")
        self._started = True
        if self.start == "together":
            times = np.zeros(self.users)
        else:
            times = np.array([self._think() for _ in range(self.users)])
        order = np.argsort(times, kind="stable")
        order = order[times[order] < self.duration_s]
        if np.isfinite(self.budget):
            order = order[: int(self.budget)]
        self._busy[order] = True
        self.issued = len(order)
        return order.astype(np.int64), times[order]

    def on_completion(self, user: int, t_s: float) -> float | None:
        """User ``user``'s request reached a final status at ``t_s``: return the arrival time
        of its next request, or ``None`` if it issues no more."""
        if not self._busy[user]:
            raise RuntimeError(f"user {user} has no request in flight (completion at t={t_s:.6f} s)")
        self._busy[user] = False
        if self.issued >= self.budget:
            return None
        nxt = t_s + self._think()
        if nxt >= self.duration_s:
            return None
        self._busy[user] = True
        self.issued += 1
        return nxt


# --------------------------------------------------------------------------------------------
# drawing arrivals


def arrival_stream(
    process: Any,
    rate_rps: float | None,
    rng: np.random.Generator,
    num_requests: int | None,
    duration_s: float | None,
    chunk: int = CHUNK,
) -> Iterator[np.ndarray]:
    """Sorted chunks of arrival times (seconds from 0) until ``num_requests`` or
    ``duration_s``, whichever is reached first (or the process ends, for a replay).

    A renewal process draws ``min(num_requests, chunk)`` gaps at a time (with only a
    duration: ``min(1.1 rate duration + 64, chunk)``) and sums them on from the previous
    chunk, so its arrivals are exactly those of one call drawing all the gaps at once; the
    first arrival is one gap after 0.
    """
    if num_requests is None and duration_s is None and not isinstance(process, Replay):
        raise ValueError("give num_requests or duration_s")
    left = num_requests if num_requests is not None else math.inf
    end = duration_s if duration_s is not None else math.inf
    if hasattr(process, "interarrival_s"):
        assert rate_rps is not None
        size = min(chunk, num_requests) if num_requests is not None else min(chunk, int(rate_rps * end * 1.1) + 64)
        last = 0.0
        while left > 0:
            gaps = process.interarrival_s(rate_rps, int(min(size, left)), rng)
            # summed on from the previous chunk's last arrival, so chunking never changes a bit
            times = np.cumsum(np.concatenate([[last], gaps]))[1:] if last else np.cumsum(gaps)
            last = float(times[-1])
            if last >= end:
                times = times[times < end]
                if len(times):
                    yield times
                return
            left -= len(times)
            yield times
        return
    if not hasattr(process, "stream_s"):
        raise ConfigError(
            f"{type(process).__name__} is not an open-loop arrival process: it has neither"
            f" interarrival_s(rate_rps, n, rng) nor stream_s(rate_rps, rng)"
        )
    extra = {"num_requests": num_requests} if getattr(process, "takes_count", False) else {}
    for times in process.stream_s(rate_rps, rng, **extra):
        cut = False
        if len(times) and times[-1] >= end:
            times = times[times < end]
            cut = True
        if len(times) >= left:
            times = times[: int(left)]
            cut = True
        if len(times):
            left -= len(times)
            yield times
        if cut:
            return


def arrival_times(
    process: Any,
    rate_rps: float | None,
    rng: np.random.Generator,
    num_requests: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """All arrival times (seconds from 0, sorted) of :func:`arrival_stream`."""
    chunks = list(arrival_stream(process, rate_rps, rng, num_requests, duration_s))
    return np.concatenate(chunks) if chunks else np.zeros(0)
