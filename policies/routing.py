"""Routing policies: which replica of a model serves a request, decided at its arrival.

* ``round_robin`` -- replicas in turn.
* ``random`` -- uniformly at random (from the policy's own generator).
* ``least_loaded`` -- the replica with the fewest outstanding requests (waiting plus
  running); ties go to the first such replica after the previous pick, so equal replicas
  share load evenly.
* ``prefix_aware`` -- the cache-aware rule of the SGLang model gateway (sgl-router's
  ``cache_aware`` policy): while the replicas' loads are balanced, a request goes to the
  replica whose prefix cache holds the longest part of its prompt if that part exceeds
  ``cache_threshold`` of the prompt, and otherwise to the replica with the most free KV
  cache; when they are imbalanced (the busiest has more than ``balance_abs_threshold``
  requests over the idlest and more than ``balance_rel_threshold`` times its load) it goes to
  the least loaded. Defaults as the gateway's documentation gives them (0.3, 64, 1.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from simulator.policy import Policy, PolicyParams, ReplicaView, RequestView

__all__ = ["LeastLoaded", "PrefixAware", "RandomRouting", "RoundRobin"]


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


class PrefixAware(Policy):
    """Cache affinity while loads are balanced, least loaded otherwise (see the module
    docstring)."""

    class Params(PolicyParams):
        """``cache_threshold``: the fraction of the prompt a replica must hold cached for the
        request to follow its cache; ``balance_abs_threshold`` (requests) and
        ``balance_rel_threshold`` (a ratio): beyond both, loads count as imbalanced."""

        cache_threshold: float = Field(default=0.3, ge=0, le=1)
        balance_abs_threshold: int = Field(default=64, ge=0)
        balance_rel_threshold: float = Field(default=1.5, ge=1)

    params: Params

    def __init__(self, params: PolicyParams | None = None, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self._least = LeastLoaded(None, rng)

    def pick_replica(self, request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int:
        """The replica holding most of the prompt, the one with most free KV cache, or the
        least loaded (see the class docstring)."""
        p = self.params
        loads = [r.outstanding for r in replicas]
        busiest, idlest = max(loads), min(loads)
        if busiest - idlest > p.balance_abs_threshold and busiest > p.balance_rel_threshold * idlest:
            return self._least.pick_replica(request, replicas, now_s)
        cached = [r.cached_prefix_tokens(request) for r in replicas]
        best = max(range(len(replicas)), key=lambda i: (cached[i], -loads[i], -i))
        prompt = max(1, int(request.input_tokens))
        if cached[best] > p.cache_threshold * prompt:
            return best
        return max(range(len(replicas)), key=lambda i: (replicas[i].kv_free_blocks, -loads[i], -i))
