"""Batching policies: when a replica runs and which waiting requests join the batch.

Each is a published rule with its parameters.

Request-level (for any model; on a decoder a batch runs until its last request finishes
before the next forms, each request reserving its whole sequence in the KV cache):

* ``none`` -- one request at a time (no batching).
* ``static`` -- wait for exactly ``max_batch_size`` requests (TensorFlow-Serving-style fixed
  batches); once no more requests will arrive, the last partial batch is flushed so every
  request is served.
* ``dynamic`` -- Triton Inference Server's dynamic batcher: run ``max_batch_size`` requests as
  soon as that many wait; otherwise, as soon as one of ``preferred_batch_sizes`` can be formed,
  run the largest such size; otherwise run what waits once the oldest request of the forming
  batch has waited ``max_queue_delay_ms``.
* ``request_level`` -- FasterTransformer-style static batching of a decoder: when the replica
  is free, up to ``max_batch_size`` waiting requests form a batch whose prompts are padded to
  the longest and which runs until its longest request ends; shorter requests are padding
  meanwhile and complete with the batch. KV reserved for the model's whole context.

Iteration-level, for decoders (the policy is consulted at every iteration boundary):

* ``orca`` -- Orca (Yu et al., OSDI 2022): waiting requests join the running batch, first come
  first served, while it has fewer than ``max_batch_size`` and the KV cache can hold each
  joiner's reservation (``reservation``: ``max`` the model's context, as Orca does; ``pow2``
  the sequence rounded up to a power of two; ``oracle`` its exact final length -- the three
  variants of the vLLM paper); a joiner's whole prompt is prefilled in the iteration it joins.
* ``continuous`` -- ``orca`` with the oracle reservation and an iteration token budget
  ``max_batch_tokens`` (a prompt longer than it still runs alone).
* ``vllm`` -- vLLM (Kwon et al., SOSP 2023), its scheduler without chunked prefill: the running
  decodes come first (one token each), then waiting requests are admitted in order while the
  batch has fewer than ``max_num_seqs`` requests, the iteration's tokens stay within
  ``max_num_batched_tokens``, and their prompt's KV blocks fit above the watermark; KV is paged
  and the newest request is preempted when blocks run out. A prompt longer than
  ``max_num_batched_tokens`` can never be scheduled and is dropped (vLLM ignores it).
* ``sarathi`` -- Sarathi-Serve (Agrawal et al., OSDI 2024): chunked prefill under a token
  budget per iteration (``chunk_tokens``): the running decodes come first, then prompts in
  progress and then new ones fill the remaining budget in chunks, so a long prompt never
  stalls the decodes; KV is paged as in ``vllm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from simulator.policy import WAIT, BatchDecision, Policy, PolicyParams, ReplicaView, RequestView

__all__ = [
    "ContinuousBatching",
    "DynamicBatching",
    "NoBatching",
    "OrcaBatching",
    "RequestLevelBatching",
    "SarathiBatching",
    "StaticBatching",
    "VllmBatching",
    "fitting_prefix",
]


def fitting_prefix(replica: ReplicaView, candidates: Sequence[RequestView]) -> tuple[RequestView, ...]:
    """The longest prefix of ``candidates`` whose KV blocks fit the decoder replica's free
    blocks together (all of them for a model without a KV cache)."""
    if not replica.autoregressive:
        return tuple(candidates)
    free = replica.kv_free_blocks
    taken = 0
    for req in candidates:
        need = replica.kv_blocks_to_admit(req)
        if need > free:
            break
        free -= need
        taken += 1
    return tuple(candidates[:taken])


def _run(admit: tuple[RequestView, ...]) -> BatchDecision:
    return BatchDecision(admit=admit) if admit else WAIT


def _decoding(replica: ReplicaView) -> int:
    """Running requests whose prompt is done (each decodes one token per iteration)."""
    return sum(1 for r in replica.running if r.prefilled_tokens >= r.prefill_target)


class NoBatching(Policy):
    """Serve one request at a time, in queue order."""

    kv_reservation = "oracle"

    class Params(PolicyParams):
        """No parameters (the batch size is 1)."""

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Admit the head of the queue when nothing runs."""
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=(replica.queue[0],))


class StaticBatching(Policy):
    """Run only full batches of ``max_batch_size``; flush the remainder after the last arrival."""

    kv_reservation = "oracle"

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

    kv_reservation = "oracle"

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


class RequestLevelBatching(Policy):
    """FasterTransformer-style static batching of a decoder (see the module docstring)."""

    kv_reservation = "max"
    request_level = True

    class Params(PolicyParams):
        """``max_batch_size``: the most requests in a batch (>= 1)."""

        max_batch_size: int = Field(default=32, ge=1)

    params: Params

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """When the replica is free, a batch of the waiting requests (as many as fit)."""
        if replica.running or not replica.queue:
            return WAIT
        return _run(fitting_prefix(replica, replica.queue[: self.params.max_batch_size]))


class OrcaBatching(Policy):
    """Orca's iteration-level batching (see the module docstring)."""

    class Params(PolicyParams):
        """``max_batch_size``: most requests in the running batch; ``reservation``: the KV
        reserved per request at admission (``max``, ``pow2`` or ``oracle``)."""

        max_batch_size: int = Field(default=256, ge=1)
        reservation: Literal["max", "pow2", "oracle"] = "max"

    params: Params

    def __init__(self, params: Params, rng: np.random.Generator | None = None) -> None:
        super().__init__(params, rng)
        self.kv_reservation = params.reservation

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Admit from the head of the queue while the batch and the KV cache allow."""
        queue = replica.queue
        room = self.params.max_batch_size - len(replica.running)
        if not queue or room <= 0:
            return WAIT
        return _run(fitting_prefix(replica, queue[:room]))


class ContinuousBatching(Policy):
    """Orca-style iteration-level batching with an exact reservation and a token budget."""

    kv_reservation = "oracle"

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
        free = replica.kv_free_blocks
        admit: list[RequestView] = []
        for req in queue:
            if len(admit) >= room:
                break
            need = replica.kv_blocks_to_admit(req)
            if need > free:
                break
            prompt = replica.prompt_tokens_to_compute(req)
            if tokens + prompt > p.max_batch_tokens and (admit or running):
                break
            admit.append(req)
            tokens += prompt
            free -= need
        return _run(tuple(admit))


class VllmBatching(Policy):
    """vLLM's scheduler without chunked prefill (see the module docstring)."""

    class Params(PolicyParams):
        """``max_num_seqs``: most requests in the running batch (vLLM default 256);
        ``max_num_batched_tokens``: most tokens in one iteration (decodes count one each)."""

        max_num_seqs: int = Field(default=256, ge=1)
        max_num_batched_tokens: int = Field(default=4096, ge=1)

    params: Params

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Decodes first, then prompts in queue order while sequences, tokens and blocks allow."""
        queue = replica.queue
        if not queue:
            return WAIT
        p = self.params
        seqs = len(replica.running)
        tokens = _decoding(replica)
        free = replica.kv_free_blocks
        watermark = replica.kv_watermark_blocks
        admit: list[RequestView] = []
        drop: list[RequestView] = []
        for req in queue:
            prompt = replica.prompt_tokens_to_compute(req)
            if prompt > p.max_num_batched_tokens:
                drop.append(req)  # can never be scheduled: vLLM ignores such a prompt
                continue
            if seqs >= p.max_num_seqs:
                break
            step = prompt if prompt else 1  # a swapped-in request decodes one token
            if tokens + step > p.max_num_batched_tokens:
                break
            need = replica.kv_blocks_to_admit(req)
            if free - need < watermark:
                break
            admit.append(req)
            seqs += 1
            tokens += step
            free -= need
        if not admit and not drop:
            return WAIT
        return BatchDecision(admit=tuple(admit), drop=tuple(drop))


class SarathiBatching(Policy):
    """Sarathi-Serve's chunked prefill (see the module docstring)."""

    class Params(PolicyParams):
        """``max_num_seqs``: most requests in the running batch; ``chunk_tokens``: the token
        budget of one iteration (decodes one each, the rest prompt chunks)."""

        max_num_seqs: int = Field(default=256, ge=1)
        chunk_tokens: int = Field(default=512, ge=1)

    params: Params

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Decodes first; then chunks of prompts in progress, then of new requests."""
        p = self.params
        budget = p.chunk_tokens - _decoding(replica)
        chunks: dict[int, int] = {}
        for req in replica.running:
            left = req.prefill_target - req.prefilled_tokens
            if left > 0:
                take = max(0, min(left, budget))
                chunks[req.request_id] = take
                budget -= take
        admit: list[RequestView] = []
        seqs = len(replica.running)
        free = replica.kv_free_blocks
        watermark = replica.kv_watermark_blocks
        for req in replica.queue:
            if budget <= 0 or seqs >= p.max_num_seqs:
                break
            need = replica.kv_blocks_to_admit(req)
            if free - need < watermark:
                break
            prompt = replica.prompt_tokens_to_compute(req)
            take = min(prompt, budget) if prompt else 0
            if prompt and take == 0:
                break
            admit.append(req)
            chunks[req.request_id] = take
            budget -= max(take, 1 if not prompt else 0)
            seqs += 1
            free -= need
        if not admit and not any(chunks.values()):
            return WAIT if not replica.running else BatchDecision(prefill_tokens=chunks)
        return BatchDecision(admit=tuple(admit), prefill_tokens=chunks)
