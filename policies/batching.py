"""Batching policies: when a replica runs and which waiting requests join the batch.

Each is a published rule with its parameters:

* ``none`` -- one request at a time (no batching).
* ``static`` -- wait for exactly ``max_batch_size`` requests (TensorFlow-Serving/
  FasterTransformer-style fixed batches); once no more requests will arrive, the last partial
  batch is flushed so every request is served.
* ``dynamic`` -- Triton Inference Server's dynamic batcher: run ``max_batch_size`` requests as
  soon as that many wait; otherwise, as soon as one of ``preferred_batch_sizes`` can be formed,
  run the largest such size; otherwise run what waits once the oldest request of the forming
  batch has waited ``max_queue_delay_ms``.
* ``continuous`` -- iteration-level scheduling as in Orca (Yu et al., OSDI 2022): at every
  iteration of a decoder, waiting requests join the running batch (first come, first served,
  no skipping) while it has fewer than ``max_batch_size`` requests, the iteration's tokens stay
  within ``max_batch_tokens`` and the KV cache can hold each joiner's whole sequence
  (``input_tokens + output_tokens``, reserved at admission, as Orca reserves a request's
  maximum length). For a non-autoregressive model it runs whatever waits, up to
  ``max_batch_size``, whenever the replica is free.

For a decoder, ``none``, ``static`` and ``dynamic`` batch at request level: a batch runs
until its longest request has finished before the next one is formed, and a batch takes the
longest prefix of the requests it would run whose KV reservations fit the cache (a request
that can never fit is rejected on arrival by the engine, so the head always fits an idle
replica).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field, model_validator

from simulator.policy import WAIT, BatchDecision, Policy, PolicyParams, ReplicaView, RequestView

__all__ = ["ContinuousBatching", "DynamicBatching", "NoBatching", "StaticBatching"]


def fitting_prefix(replica: ReplicaView, candidates: Sequence[RequestView]) -> tuple[RequestView, ...]:
    """The longest prefix of ``candidates`` whose KV reservations (``input_tokens +
    output_tokens`` each) fit the decoder replica's free KV cache; all of them otherwise."""
    if not replica.autoregressive:
        return tuple(candidates)
    free = replica.kv_capacity_tokens - replica.kv_used_tokens
    taken = 0
    for req in candidates:
        need = req.input_tokens + req.output_tokens
        if need > free:
            break
        free -= need
        taken += 1
    return tuple(candidates[:taken])


def _run(admit: tuple[RequestView, ...]) -> BatchDecision:
    return BatchDecision(admit=admit) if admit else WAIT


class NoBatching(Policy):
    """Serve one request at a time, in queue order."""

    class Params(PolicyParams):
        """No parameters (the batch size is 1)."""

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Admit the head of the queue when nothing runs."""
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=(replica.queue[0],))


class StaticBatching(Policy):
    """Run only full batches of ``max_batch_size``; flush the remainder after the last arrival."""

    class Params(PolicyParams):
        """``max_batch_size``: the fixed batch size (>= 1)."""

        max_batch_size: int = Field(ge=1)

    params: Params

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """A full batch, or the final partial one."""
        queue = replica.queue
        size = self.params.max_batch_size
        if replica.running or not queue:
            return WAIT
        if len(queue) >= size:
            return _run(fitting_prefix(replica, queue[:size]))
        if replica.arrivals_done:
            return _run(fitting_prefix(replica, queue))
        return WAIT


class DynamicBatching(Policy):
    """Triton's dynamic batcher (max batch size, preferred sizes, max queue delay)."""

    class Params(PolicyParams):
        """``max_batch_size`` (>= 1); ``max_queue_delay_ms`` (>= 0): how long the oldest
        request of a forming batch may wait for more; ``preferred_batch_sizes``: sizes to run
        at once when reachable (each <= ``max_batch_size``)."""

        max_batch_size: int = Field(ge=1)
        max_queue_delay_ms: float = Field(ge=0)
        preferred_batch_sizes: list[int] = Field(default_factory=list)

        @model_validator(mode="after")
        def _check(self) -> DynamicBatching.Params:
            sizes = self.preferred_batch_sizes
            if any(s < 1 or s > self.max_batch_size for s in sizes):
                raise ValueError(
                    f"preferred_batch_sizes {sizes} must each be in [1, max_batch_size ({self.max_batch_size})]"
                )
            if sizes != sorted(set(sizes)):
                raise ValueError(f"preferred_batch_sizes {sizes} must be increasing and distinct")
            return self

    params: Params

    def __init__(self, params: Params, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self._delay_s = params.max_queue_delay_ms / 1e3

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Run a full or preferred batch now, or the partial one once its oldest has waited."""
        queue = replica.queue
        if replica.running or not queue:
            return WAIT
        p = self.params
        n = len(queue)
        if n >= p.max_batch_size:
            return _run(fitting_prefix(replica, queue[: p.max_batch_size]))
        preferred = [s for s in p.preferred_batch_sizes if s <= n]
        if preferred:
            return _run(fitting_prefix(replica, queue[: preferred[-1]]))
        oldest = min(r.arrival_s for r in queue)
        due_s = oldest + self._delay_s
        if now_s >= due_s or replica.arrivals_done:
            return _run(fitting_prefix(replica, queue))
        return BatchDecision(wake_at_s=due_s)


class ContinuousBatching(Policy):
    """Orca's iteration-level batching (see the module docstring)."""

    class Params(PolicyParams):
        """``max_batch_size``: most requests in the running batch; ``max_batch_tokens``: most
        new tokens in one iteration (prompt tokens of joiners plus one per decoding request; a
        single prompt longer than this still runs alone)."""

        max_batch_size: int = Field(default=256, ge=1)
        max_batch_tokens: int = Field(default=8192, ge=1)

    params: Params

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Admit from the head of the queue while the batch, token and KV budgets allow."""
        queue = replica.queue
        if not queue:
            return WAIT
        p = self.params
        running = len(replica.running)
        room = p.max_batch_size - running
        if room <= 0:
            return WAIT
        if not replica.autoregressive:
            return BatchDecision(admit=tuple(queue[:room])) if not running else WAIT
        tokens = running  # one decode token per running request
        kv_free = replica.kv_capacity_tokens - replica.kv_used_tokens
        admit: list[RequestView] = []
        for req in queue:
            if len(admit) >= room:
                break
            need_kv = req.input_tokens + req.output_tokens
            if need_kv > kv_free:
                break
            if tokens + req.input_tokens > p.max_batch_tokens and (admit or running):
                break
            admit.append(req)
            tokens += req.input_tokens
            kv_free -= need_kv
        return BatchDecision(admit=tuple(admit)) if admit else WAIT
