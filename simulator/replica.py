"""Replicas: one model instance, its waiting queue, and its engine loop (one simpy process).

:class:`Replica` holds what every replica shares: the queue kept in the scheduling policy's
order, admission on arrival, the batching policy's decisions applied (admit, drop), waiting
for an arrival or a requested time, and the statistics behind the timeseries (busy periods as
maximal intervals, the time-integral of the queue length). :class:`BatchReplica` runs a
non-autoregressive model: one forward pass per batch, after which every request of the batch
is complete. Decoders run iteration by iteration in :class:`simulator.decoder.DecoderReplica`.

A replica is the :class:`simulator.policy.ReplicaView` its policies read. Timers are always
set at absolute times (``Environment.timer_at``), so the times computed are exactly those
recorded.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Generator
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import simpy

from simulator.errors import LdsimError
from simulator.experiment import ModelPlan
from simulator.jitter import StepJitter
from simulator.models import Decoder, Encoder
from simulator.policy import BatchDecision
from simulator.request import COMPLETED, DROPPED, REJECTED, Request

if TYPE_CHECKING:
    from simulator.engine import Simulation

__all__ = ["BatchReplica", "PolicyError", "Replica", "waker"]

_KEY = attrgetter("queue_key")


class PolicyError(LdsimError):
    """A policy returned a decision the engine cannot apply (names the policy and replica)."""


def waker(event: simpy.Event) -> Any:
    """A timer callback that triggers ``event`` unless something else already did."""

    def wake(_timer: simpy.Event) -> None:
        if not event.triggered:
            event.succeed()

    return wake


class Replica:
    """What every replica shares (see the module docstring). Subclasses define ``_loop``.

    Invariant: every request in ``queue`` or ``running`` is counted in ``outstanding``.
    """

    autoregressive = False

    def __init__(
        self,
        sim: Simulation,
        replica_id: int,
        plan: ModelPlan,
        batching: Any,
        scheduling: Any,
        node: int,
        devices: tuple[int, ...],
        coalesce: bool,
    ) -> None:
        self.replica_id = replica_id
        self.model = plan.name
        self.node = node
        self.devices = devices
        self.plan = plan
        self.queue: list[Request] = []
        self.running: list[Request] = []
        self.outstanding = 0
        self.busy = False
        self._sim = sim
        self._env = sim.env
        self._cost = plan.cost
        self._batching = batching
        self._next_batch = batching.next_batch
        self._key = scheduling.key
        self._admit = getattr(scheduling, "admit", None)
        self._coalesce = coalesce and not getattr(batching, "decides_every_iteration", False)
        self._wake: simpy.Event | None = None
        self._wake_on_arrival = False
        arch = plan.arch
        # the longest request this replica can ever serve, in tokens (0: no limit)
        if isinstance(arch, Decoder):
            self._context_limit = arch.max_context_tokens
        elif isinstance(arch, Encoder):
            self._context_limit = arch.max_positions
        else:
            self._context_limit = 0
        # statistics for the timeseries and the summary
        self.busy_s = 0.0
        self._busy_since = 0.0
        self._idle_since = 0.0  # when the current idle period began
        self._wake_s = 0.0  # extra seconds of the next step, after an idle period (the profile's)
        quantiles = plan.cost.step_time_quantiles
        # step-time variability measured from a runtime (None: every step takes its price)
        self._jitter = (
            StepJitter(
                quantiles,
                sim.resolved.run.seed,
                replica_id,
                plan.cost.step_time_correlation,
                sim.resolved.run.spec.engine.step_time_stream,
            )
            if quantiles
            else None
        )
        self.steps = 0  # forward passes (batches or iterations)
        self.step_items = 0  # requests summed over steps
        self.tokens_generated = 0
        self.flops = 0  # FLOPs executed (an exact integer sum)
        self.bytes_moved = 0  # bytes moved to and from device memory (an exact integer sum)
        self._q_area = 0.0
        self._q_t = 0.0
        self.process = self._env.process(self._loop())

    # ---- the view a policy reads ---------------------------------------------------------

    @property
    def arrivals_done(self) -> bool:
        """True once no request will ever arrive again."""
        return self._sim.arrivals_done

    kv_capacity_tokens = 0
    kv_used_tokens = 0
    kv_block_tokens = 0
    kv_free_blocks = 0
    kv_watermark_blocks = 0

    def kv_blocks_to_admit(self, request: Any) -> int:
        """Blocks admitting ``request`` would allocate (0: this replica has no KV cache)."""
        return 0

    def prompt_tokens_to_compute(self, request: Any) -> int:
        """Prompt tokens the request's prefill would compute (its whole input here)."""
        return int(request.input_tokens)

    def cached_prefix_tokens(self, request: Any) -> int:
        """Prompt tokens of ``request`` held in this replica's prefix cache (none here)."""
        return 0

    @property
    def memory_used_bytes(self) -> float:
        """Bytes in use on each device now: weights and the activation reserve."""
        mem = self.plan.memory
        return mem.weights_bytes + mem.activation_bytes

    # ---- arrivals ------------------------------------------------------------------------

    def accepts(self, req: Request) -> str | None:
        """Why this replica can never serve ``req`` (``None`` if it can)."""
        if self._context_limit and req.input_tokens + req.output_tokens > self._context_limit:
            return "context_length"
        return None

    def _truncate(self, req: Request) -> None:
        """Cut an over-long request to the model's context (prompt first, from the left)."""
        limit = self._context_limit
        if not limit or req.input_tokens + req.output_tokens <= limit or self.plan.context_overflow != "truncate":
            return
        before = req.input_tokens + req.output_tokens
        req.output_tokens = min(req.output_tokens, limit - 1)
        req.input_tokens = limit - req.output_tokens if self.autoregressive else min(req.input_tokens, limit)
        req.prefill_target = req.input_tokens
        req.stop_tokens = req.output_tokens
        req.truncated_tokens = before - req.input_tokens - req.output_tokens

    def submit(self, req: Request, now: float) -> None:
        """Enqueue an arriving request (or reject it), and wake the loop if it waits."""
        self._truncate(req)
        reason = self.accepts(req)
        if reason is None and self._admit is not None and not self._admit(req, self, now):
            reason = "admission"
        req.replica = self.replica_id
        if reason is not None:
            self._sim.finalize(req, REJECTED, now, reason)
            return
        self._enqueue(req, self._key(req, now), now)
        self.outstanding += 1
        self.notify()

    def _enqueue(self, req: Request, key: float, now: float) -> None:
        req.queue_key = key
        queue = self.queue
        self._q_area += len(queue) * (now - self._q_t)
        self._q_t = now
        if not queue or key >= queue[-1].queue_key:
            queue.append(req)
        else:
            insort(queue, req, key=_KEY)

    def notify(self) -> None:
        """Wake the loop if it waits for an arrival (or for no more arrivals)."""
        wake = self._wake
        if wake is not None and self._wake_on_arrival and not wake.triggered:
            wake.succeed()

    # ---- decisions -----------------------------------------------------------------------

    def _policy_error(self, what: str) -> PolicyError:
        return PolicyError(
            f"batching policy {type(self._batching).__name__} on replica {self.replica_id} ({self.model}) {what}"
        )

    def _decide(self, now: float) -> BatchDecision:
        decision = self._next_batch(self, now)
        if decision.drop:
            self._take(decision.drop, now, "dropped")
            for req in decision.drop:
                self.outstanding -= 1
                self._sim.finalize(req, DROPPED, now)
        if decision.admit:
            self._take(decision.admit, now, "admitted")
        return decision

    def _take(self, reqs: tuple[Any, ...], now: float, verb: str) -> None:
        queue = self.queue
        self._q_area += len(queue) * (now - self._q_t)
        self._q_t = now
        k = len(reqs)
        if k <= len(queue) and all(a is b for a, b in zip(queue, reqs, strict=False)):
            del queue[:k]
            return
        for req in reqs:
            try:
                queue.remove(req)
            except ValueError:
                raise self._policy_error(f"{verb} {req!r}, which is not waiting in its queue") from None

    def _idle(self, now: float, wake_at_s: float | None) -> Generator[simpy.Event, Any, None]:
        """Wait for an arrival, or until ``wake_at_s``."""
        env = self._env
        self._idle_at(now)
        event = env.event()
        self._wake = event
        self._wake_on_arrival = True
        if wake_at_s is not None:
            if not wake_at_s > now:
                raise self._policy_error(f"admitted nothing and asked to wake at {wake_at_s!r} <= now ({now!r})")
            env.timer_at(wake_at_s).callbacks.append(waker(event))
        yield event
        self._wake = None
        self._wake_on_arrival = False

    # ---- statistics ----------------------------------------------------------------------

    def _busy(self, now: float) -> None:
        """Start a busy period (no-op inside one: busy periods are maximal intervals). Its first
        step pays the profile's wake-up cost after the idle period that ends here
        (``_wake_s``, 0 for a profile without one)."""
        if not self.busy:
            self.busy = True
            self._busy_since = now
            self._wake_s = self._cost.wake_s(now - self._idle_since)

    def _idle_at(self, now: float) -> None:
        if self.busy:
            self.busy_s += now - self._busy_since
            self._busy_since = now
            self.busy = False
            self._idle_since = now

    def _take_wake(self) -> float:
        """The wake-up seconds owed by the step starting now (once)."""
        wake, self._wake_s = self._wake_s, 0.0
        return wake

    def flush_stats(self, now: float) -> tuple[float, float]:
        """Bring busy time and queue area up to ``now``; return (busy seconds, queue area)."""
        if self.busy:
            self.busy_s += now - self._busy_since
            self._busy_since = now
        self._q_area += len(self.queue) * (now - self._q_t)
        self._q_t = now
        return self.busy_s, self._q_area

    def stats(self) -> dict[str, Any]:
        """Per-replica counters for the summary."""
        return {
            "replica": self.replica_id,
            "model": self.model,
            "node": self.node,
            "devices": list(self.devices),
            "busy_s": self.busy_s,
            "queue_area": self._q_area,
            "steps": self.steps,
            "step_items": self.step_items,
            "tokens_generated": self.tokens_generated,
            "flops": float(self.flops),
            "bytes": float(self.bytes_moved),
            "memory_reserved_bytes": self.plan.memory.total_bytes,
            "kv_capacity_tokens": self.kv_capacity_tokens,
        }

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        raise NotImplementedError
        yield  # pragma: no cover


class BatchReplica(Replica):
    """A non-autoregressive model: one forward pass per batch; every request ends with it."""

    def _count_step(self, items: int, flops: int, nbytes: int) -> None:
        """Count one forward pass of ``items`` requests in the replica's statistics."""
        self.steps += 1
        self.step_items += items
        self.flops += flops
        self.bytes_moved += nbytes

    def _forward(
        self, batch: tuple[Request, ...], now: float, samples: int, seq_len: int
    ) -> Generator[simpy.Event, Any, float]:
        """Run ``batch``'s forward pass from ``now`` (``samples`` items, padded to ``seq_len``
        tokens for an encoder); return when it ended. Here: its price, scaled by the runtime's
        step-time ratio, plus any wake-up after idling; the real executor runs it instead."""
        duration, flops, nbytes = self._cost.batch(samples, seq_len)
        self._busy(now)
        self._count_step(len(batch), flops, nbytes)
        if self._jitter is not None:
            duration *= self._jitter.take()
        yield self._env.timer_at(now + duration + self._take_wake())
        return float(self._env.now)

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env = self._env
        sim = self._sim
        encoder = isinstance(self.plan.arch, Encoder)
        while True:
            now = env.now
            decision = self._decide(now)
            batch = decision.admit
            if not batch:
                yield from self._idle(now, decision.wake_at_s)
                continue
            self.running = list(batch)
            samples = 0
            seq_len = 0
            for req in batch:
                req.start_s = now
                samples += req.input_samples
                if req.input_tokens > seq_len:
                    seq_len = req.input_tokens
            end = yield from self._forward(batch, now, samples, seq_len if encoder else 0)
            self.running = []
            self.outstanding -= len(batch)
            for req in batch:
                req.first_token_s = end
                sim.finalize(req, COMPLETED, end)
