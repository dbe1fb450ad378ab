"""Arrival processes: inter-arrival times for a mean rate.

An arrival process is a class with ``Params`` (validated from the YAML) whose
``interarrival_s(rate_rps, n, rng)`` returns ``n`` independent gaps in seconds with mean
``1 / rate_rps``. Built in: ``poisson`` (exponential gaps, CV 1) and ``gamma`` (a Gamma
renewal process with a given coefficient of variation: CV > 1 is burstier than Poisson).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from pydantic import Field

from simulator.policy import PolicyParams

__all__ = ["ArrivalProcess", "GammaRenewal", "Poisson", "arrival_times"]


class ArrivalProcess(Protocol):
    """Draws inter-arrival gaps (seconds) with mean ``1 / rate_rps``."""

    def interarrival_s(self, rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``n`` gaps in seconds."""
        ...


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


def arrival_times(
    process: ArrivalProcess,
    rate_rps: float,
    rng: np.random.Generator,
    num_requests: int | None,
    duration_s: float | None,
) -> np.ndarray:
    """Arrival times (seconds from 0, sorted) until ``num_requests`` or ``duration_s``,
    whichever is reached first. The first arrival is one gap after time 0."""
    if num_requests is not None:
        times = np.cumsum(process.interarrival_s(rate_rps, num_requests, rng))
        return times[times < duration_s] if duration_s is not None else times
    assert duration_s is not None
    chunks: list[np.ndarray] = []
    last = 0.0
    chunk = int(rate_rps * duration_s * 1.1) + 64
    while last < duration_s:
        times = last + np.cumsum(process.interarrival_s(rate_rps, chunk, rng))
        chunks.append(times)
        last = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]
