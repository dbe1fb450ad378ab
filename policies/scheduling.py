"""Scheduling policies: the order of a replica's waiting queue.

* ``fcfs`` -- first come, first served: the key is the arrival time.
"""

from __future__ import annotations

from simulator.policy import Policy, PolicyParams, RequestView

__all__ = ["Fcfs"]


class Fcfs(Policy):
    """First come, first served."""

    class Params(PolicyParams):
        """No parameters."""

    def key(self, request: RequestView, now_s: float) -> float:
        """The arrival time: earlier arrivals are served first."""
        return request.arrival_s
