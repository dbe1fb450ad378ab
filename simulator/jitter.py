"""Step-time variability: each simulated step takes its price times a random ratio.

A real runtime's step times scatter around what the cost model prices (operating-system noise,
caches, clocks, co-running processes); queueing turns that scatter into heavier latency tails
than fixed step times give. A profile measured by running a runtime (``ldsim validate``)
records the scatter as quantiles of measured / priced step time
(``runtime.per_architecture.<arch>.step_time_quantiles``); :class:`StepJitter` draws a ratio per
step from them, by inverse-CDF sampling with linear interpolation between the quantiles.

Consecutive steps may be correlated (``step_time_correlation``, measured the same way): slow
steps on a real host come in runs, which queue more requests behind them than independent
draws with the same distribution. The ratios are then drawn through a Gaussian copula: normal
scores follow an AR(1) process ``z[k] = rho z[k-1] + sqrt(1 - rho^2) e[k]`` (stationary, unit
variance) and each ``z[k]`` is mapped to its probability and through the quantiles, so the
marginal distribution stays the measured one.

Draws are indexed by step: the ``k``-th step of a replica always gets the ``k``-th ratio of
that replica's stream, whichever way the engine asks for it (one step at a time, or a run of
decode steps at once, of which only some may be used). So coalesced decoding stays identical
to stepping, and a run stays a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["StepJitter"]

#: Distinguishes the jitter's generators from every other stream derived from a run's seed.
_STREAM = 0x6A177E2

_SQRT2 = math.sqrt(2.0)

#: Uniform draws made at once.
_BLOCK = 4096


class StepJitter:
    """The step-time ratios of one replica: ``quantiles`` of the ratio at probabilities
    ``(i + 1/2) / n``, drawn from the generator of (``seed``, ``replica_id``, ``stream``),
    consecutive steps correlated by ``correlation`` (the lag-1 correlation of their normal
    scores)."""

    def __init__(
        self, quantiles: Sequence[float], seed: int, replica_id: int, correlation: float = 0.0, stream: int = 0
    ) -> None:
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"step-time correlation must be in [0, 1), got {correlation}")
        self.quantiles = np.asarray(quantiles, dtype=float)
        self.correlation = float(correlation)
        n = len(self.quantiles)
        self._probs = (np.arange(n) + 0.5) / n
        key = [_STREAM, int(seed), int(replica_id)] + ([int(stream)] if stream else [])
        self._rng = np.random.default_rng(key)
        self._z: float | None = None  # the last normal score drawn (correlated draws only)
        self._ratios = np.empty(0)  # ratios of steps _first, _first + 1, ...
        self._first = 0  # index of the next step

    def _uniforms(self, size: int) -> np.ndarray:
        """The next ``size`` probabilities: independent, or the AR(1) normal scores' CDFs."""
        if self.correlation == 0.0:
            return self._rng.random(size)
        rho = self.correlation
        scale = math.sqrt(1.0 - rho * rho)
        erf = math.erf
        out = np.empty(size)
        z = self._z
        for i, e in enumerate(self._rng.standard_normal(size).tolist()):
            z = e if z is None else rho * z + scale * e  # the first score is drawn stationary
            out[i] = 0.5 * (1.0 + erf(z / _SQRT2))
        self._z = z
        return out

    def peek(self, k: int) -> np.ndarray:
        """The ratios of the next ``k`` steps (not yet used up: see :meth:`advance`)."""
        while len(self._ratios) < k:
            u = self._uniforms(max(_BLOCK, k - len(self._ratios)))
            self._ratios = np.concatenate((self._ratios, np.interp(u, self._probs, self.quantiles)))
        return self._ratios[:k]

    def advance(self, k: int) -> None:
        """``k`` steps ran: their ratios are used up."""
        self.peek(k)
        self._ratios = self._ratios[k:]
        self._first += k

    def take(self) -> float:
        """The ratio of the next step, used up."""
        ratio = float(self.peek(1)[0])
        self.advance(1)
        return ratio

    @property
    def steps(self) -> int:
        """Steps whose ratios are used up."""
        return self._first
