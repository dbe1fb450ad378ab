"""Routing policies: which replica of a model serves a request, decided at its arrival.

* ``round_robin`` -- replicas in turn.
* ``random`` -- uniformly at random (from the policy's own generator).
* ``least_loaded`` -- the replica with the fewest outstanding requests (waiting plus
  running); ties go to the first such replica after the previous pick, so equal replicas
  share load evenly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulator.policy import Policy, PolicyParams, ReplicaView, RequestView

__all__ = ["LeastLoaded", "RandomRouting", "RoundRobin"]


class RoundRobin(Policy):
    """Replicas in turn."""

    class Params(PolicyParams):
        """No parameters."""

    def __init__(self, params: PolicyParams | None = None, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self._next = 0

    def pick_replica(self, request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int:
        """The next replica in turn."""
        i = self._next % len(replicas)
        self._next = i + 1
        return i


class RandomRouting(Policy):
    """Uniformly random replica."""

    class Params(PolicyParams):
        """No parameters."""

    _BLOCK = 4096

    def __init__(self, params: PolicyParams | None = None, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self._draws: list[float] = []

    def pick_replica(self, request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int:
        """A uniform draw (drawn in blocks from the policy's generator, for speed)."""
        if not self._draws:
            self._draws = self.rng.random(self._BLOCK).tolist()[::-1]
        return min(int(self._draws.pop() * len(replicas)), len(replicas) - 1)


class LeastLoaded(Policy):
    """Fewest outstanding requests; ties rotate."""

    class Params(PolicyParams):
        """No parameters."""

    def __init__(self, params: PolicyParams | None = None, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self._start = 0

    def pick_replica(self, request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int:
        """The least-loaded replica, scanning from just after the previous pick."""
        n = len(replicas)
        start = self._start % n
        best = start
        best_load = replicas[start].outstanding
        for offset in range(1, n):
            i = (start + offset) % n
            load = replicas[i].outstanding
            if load < best_load:
                best, best_load = i, load
        self._start = best + 1
        return best
