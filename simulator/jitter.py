"""Step-time variability: each simulated step takes its price times a random ratio.

A real runtime's step times scatter around what the cost model prices (operating-system noise,
caches, clocks, co-running processes); queueing turns that scatter into heavier latency tails
than fixed step times give. A profile measured by running a runtime (``ldsim validate``)
records the scatter as quantiles of measured / priced step time
(``runtime.per_architecture.<arch>.step_time_quantiles``); :class:`StepJitter` draws a ratio per
step from them, by inverse-CDF sampling with linear interpolation between the quantiles.

Draws are indexed by step: the ``k``-th step of a replica always gets the ``k``-th ratio of
that replica's stream, whichever way the engine asks for it (one step at a time, or a run of
decode steps at once, of which only some may be used). So coalesced decoding stays identical
to stepping, and a run stays a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["StepJitter"]

#: Distinguishes the jitter's generators from every other stream derived from a run's seed.
_STREAM = 0x6A177E2

#: Uniform draws made at once.
_BLOCK = 4096


class StepJitter:
    """The step-time ratios of one replica: ``quantiles`` of the ratio at probabilities
    ``(i + 1/2) / n``, drawn from the generator of (``seed``, ``replica_id``)."""

    def __init__(self, quantiles: Sequence[float], seed: int, replica_id: int) -> None:
        self.quantiles = np.asarray(quantiles, dtype=float)
        n = len(self.quantiles)
        self._probs = (np.arange(n) + 0.5) / n
        self._rng = np.random.default_rng([_STREAM, int(seed), int(replica_id)])
        self._ratios = np.empty(0)  # ratios of steps _first, _first + 1, ...
        self._first = 0  # index of the next step

    def peek(self, k: int) -> np.ndarray:
        """The ratios of the next ``k`` steps (not yet used up: see :meth:`advance`)."""
        while len(self._ratios) < k:
            u = self._rng.random(max(_BLOCK, k - len(self._ratios)))
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
