"""The discrete-event engine (simpy): an arrival feeder, routers, and one process per replica.

Processes (ARCHITECTURE.md, principle 2): one feeder that injects requests at their arrival
times, one engine loop per replica, one timeseries sampler. Never one per request or token.
Request state lives in plain :class:`~simulator.request.Request` objects while in flight and
in the :class:`~simulator.request.RequestTable` columns afterwards.

A replica's loop asks its batching policy for a decision at every decision point, applies
it, and advances time by the cost model's price of the batch or iteration. Non-autoregressive
models run one forward pass per batch. Decoders run iteration by iteration: requests admitted
at an iteration prefill their whole prompt in it (emitting their first token at its end),
the others decode one token each. While a decoder's batch is unchanged (pure decode, the
policy admitted and dropped nothing), the loop prices the run of iterations up to the next
completion in one vectorised call and sleeps until its end -- or until the first iteration
boundary after an arrival routed to it, or at or after the ``wake_at_s`` the policy asked
for -- giving results identical to stepping. The policy contract that makes this exact: a
batching policy's decision may change at an iteration boundary only if a request arrived,
finished or was admitted since its last decision, or its ``wake_at_s`` has come; a policy
that needs more (e.g. preemption on generated length) sets ``decides_every_iteration = True``
and is consulted at every iteration.

Every timer is scheduled at an absolute time, so the times computed in one place
(``now + duration`` or a cumulative sum) are exactly the times recorded.
"""

from __future__ import annotations

import math
import time
from bisect import insort
from collections.abc import Generator
from dataclasses import dataclass, field
from heapq import heappush
from operator import attrgetter
from typing import Any

import numpy as np
import pandas as pd
import simpy
from simpy.core import NORMAL

from simulator.errors import LdsimError
from simulator.experiment import ModelPlan, ResolvedRun
from simulator.models import Decoder, Encoder
from simulator.policy import BatchDecision, instantiate
from simulator.request import COMPLETED, DROPPED, FAILED, REJECTED, Request, RequestTable

__all__ = ["Environment", "PolicyError", "Replica", "Simulation", "SimulationResult"]

_KEY = attrgetter("queue_key")


def _waker(event: simpy.Event) -> Any:
    """A timer callback that triggers ``event`` unless something else already did."""

    def wake(_timer: simpy.Event) -> None:
        if not event.triggered:
            event.succeed()

    return wake


class PolicyError(LdsimError):
    """A policy returned a decision the engine cannot apply (names the policy and replica)."""


class Environment(simpy.Environment):
    """A simpy environment with timers at absolute times and a count of scheduled events."""

    def timer_at(self, time_s: float) -> simpy.Event:
        """An event that fires at simulated time ``time_s`` (>= now), exactly."""
        event = simpy.Event(self)
        event._ok = True
        event._value = None
        heappush(self._queue, (time_s, NORMAL, next(self._eid), event))
        return event

    def events_scheduled(self) -> int:
        """Events scheduled so far (call once, at the end: it consumes one event id)."""
        return next(self._eid)


class Replica:
    """One model instance and its engine loop. Implements :class:`simulator.policy.ReplicaView`.

    Invariants: every request in ``queue`` or ``running`` is counted in ``outstanding``;
    ``kv_used_tokens <= kv_capacity_tokens`` (each running decoder request reserves
    ``input_tokens + output_tokens``).
    """

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
        self.autoregressive = plan.arch.autoregressive
        self.queue: list[Request] = []
        self.running: list[Request] = []
        self.outstanding = 0
        self.busy = False
        self.kv_capacity_tokens = plan.kv_capacity_tokens
        self.kv_used_tokens = 0
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
        self._encoder = isinstance(plan.arch, Encoder)
        arch = plan.arch
        # the longest request this replica can ever serve, in tokens (0: no limit)
        if isinstance(arch, Decoder):
            self._context_limit = arch.max_context_tokens
        elif isinstance(arch, Encoder):
            self._context_limit = arch.max_positions
        else:
            self._context_limit = 0
        self._prefill: list[Request] = []  # running requests whose prompt is not yet processed
        self._n_dec = 0  # running requests that are decoding
        self._dec_kv = 0  # sum over decoding requests of (input_tokens + generated_tokens)
        self._kv_bytes_per_token = arch.kv_bytes_per_token(plan.dtype, plan.tp) if isinstance(arch, Decoder) else 0.0
        self._jump_ends: np.ndarray | None = None  # iteration end times of a coalesced run
        self._jump_accounted = 0  # its iterations already in the statistics
        # statistics for the timeseries and the summary
        self.busy_s = 0.0
        self._busy_since = 0.0
        self.steps = 0  # forward passes (batches or iterations)
        self.step_items = 0  # requests summed over steps
        self.tokens_generated = 0
        self._q_area = 0.0
        self._q_t = 0.0
        self.process = self._env.process(self._loop())

    # ---- the view a policy reads ---------------------------------------------------------

    @property
    def arrivals_done(self) -> bool:
        """True once no request will ever arrive again."""
        return self._sim.arrivals_done

    @property
    def memory_used_bytes(self) -> float:
        """Bytes in use on each device now: weights, activation reserve, KV cache in use."""
        mem = self.plan.memory
        return mem.weights_bytes + mem.activation_bytes + self.kv_used_tokens * self._kv_bytes_per_token

    # ---- arrivals ------------------------------------------------------------------------

    def accepts(self, req: Request) -> str | None:
        """Why this replica can never serve ``req`` (``None`` if it can): longer than the
        model's context (``context_length``) or than the whole KV cache (``kv_capacity``)."""
        if self._context_limit:
            need = req.input_tokens + req.output_tokens
            if need > self._context_limit:
                return "context_length"
            if self.autoregressive and need > self.kv_capacity_tokens:
                return "kv_capacity"
        return None

    def submit(self, req: Request, now: float) -> None:
        """Enqueue an arriving request (or reject it), and wake the loop if it waits."""
        reason = self.accepts(req)
        if reason is None and self._admit is not None and not self._admit(req, self, now):
            reason = "admission"
        req.replica = self.replica_id
        if reason is not None:
            self._sim.finalize(req, REJECTED, now, reason)
            return
        key = self._key(req, now)
        req.queue_key = key
        queue = self.queue
        self._q_area += len(queue) * (now - self._q_t)
        self._q_t = now
        if not queue or key >= queue[-1].queue_key:
            queue.append(req)
        else:
            insort(queue, req, key=_KEY)
        self.outstanding += 1
        wake = self._wake
        if wake is not None and self._wake_on_arrival and not wake.triggered:
            wake.succeed()

    def notify(self) -> None:
        """Wake the loop if it waits (no more arrivals: a partial batch may now run)."""
        wake = self._wake
        if wake is not None and self._wake_on_arrival and not wake.triggered:
            wake.succeed()

    # ---- decisions -----------------------------------------------------------------------

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
                raise PolicyError(
                    f"batching policy {type(self._batching).__name__} on replica {self.replica_id}"
                    f" ({self.model}) {verb} {req!r}, which is not waiting in its queue"
                ) from None

    def _idle(self, now: float, wake_at_s: float | None) -> Generator[simpy.Event, Any, None]:
        """Wait for an arrival, or until ``wake_at_s``."""
        env = self._env
        self._idle_at(now)
        event = env.event()
        self._wake = event
        self._wake_on_arrival = True
        if wake_at_s is not None:
            if not wake_at_s > now:
                raise PolicyError(
                    f"batching policy {type(self._batching).__name__} on replica {self.replica_id}"
                    f" ({self.model}) admitted nothing and asked to wake at {wake_at_s!r} <= now ({now!r})"
                )
            env.timer_at(wake_at_s).callbacks.append(_waker(event))
        yield event
        self._wake = None
        self._wake_on_arrival = False

    def _busy(self, now: float) -> None:
        """Start a busy period (no-op inside one: busy periods are maximal intervals)."""
        if not self.busy:
            self.busy = True
            self._busy_since = now

    def _idle_at(self, now: float) -> None:
        if self.busy:
            self.busy_s += now - self._busy_since
            self._busy_since = now
            self.busy = False

    def flush_stats(self, now: float) -> tuple[float, float]:
        """Bring busy time, queue area and the iterations of a coalesced decode run completed
        by ``now`` into the totals; return (busy seconds, queue area)."""
        if self.busy:
            self.busy_s += now - self._busy_since
            self._busy_since = now
        self._q_area += len(self.queue) * (now - self._q_t)
        self._q_t = now
        if self._jump_ends is not None:
            self._account_jump(now)
        return self.busy_s, self._q_area

    def _account_jump(self, now: float) -> None:
        """Count the iterations of the current coalesced decode run that ended by ``now``."""
        assert self._jump_ends is not None
        done = int(np.searchsorted(self._jump_ends, now, side="right"))
        if done > self._jump_accounted:
            self._account(done - self._jump_accounted, self._n_dec, 0)
            self._jump_accounted = done

    def _account(self, iterations: int, n_dec: int, n_prefill: int) -> None:
        self.steps += iterations
        self.step_items += iterations * (n_dec + n_prefill)
        self.tokens_generated += iterations * n_dec + n_prefill

    # ---- the loops -----------------------------------------------------------------------

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        if self.autoregressive:
            yield from self._iterations()
        else:
            yield from self._batches()

    def _batches(self) -> Generator[simpy.Event, Any, None]:
        """Non-autoregressive: one forward pass per batch; every request ends with it."""
        env = self._env
        cost = self._cost
        sim = self._sim
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
            duration = cost.batch_s(samples, seq_len if self._encoder else 0)
            self._busy(now)
            self.steps += 1
            self.step_items += len(batch)
            yield env.timer_at(now + duration)
            end = env.now
            self.running = []
            self.outstanding -= len(batch)
            for req in batch:
                req.first_token_s = end
                sim.finalize(req, COMPLETED, end)

    def _iterations(self) -> Generator[simpy.Event, Any, None]:
        """Decoders: iteration-level execution with prefill and decode (see module docstring)."""
        env = self._env
        cost = self._cost
        running = self.running
        while True:
            now = env.now
            decision = self._decide(now)
            admitted = decision.admit
            for req in admitted:
                req.start_s = now
                running.append(req)
                self._prefill.append(req)
                self.kv_used_tokens += req.input_tokens + req.output_tokens
            if self.kv_used_tokens > self.kv_capacity_tokens:
                raise PolicyError(
                    f"batching policy {type(self._batching).__name__} on replica {self.replica_id}"
                    f" ({self.model}) admitted beyond the KV cache: {self.kv_used_tokens} >"
                    f" {self.kv_capacity_tokens} tokens"
                )
            if not running:
                yield from self._idle(now, decision.wake_at_s)
                continue
            self._busy(now)
            if not self._prefill and self._coalesce and not decision.drop:
                done = yield from self._decode_run(now, decision.wake_at_s)
            else:
                prefills = [(r.input_tokens, r.input_tokens) for r in self._prefill]
                duration = cost.iteration_s(prefills, self._n_dec, self._dec_kv)
                yield env.timer_at(now + duration)
                done = self._advance(1, env.now)
            if done:
                self._finish(done, env.now)

    def _decode_run(self, now: float, wake_at_s: float | None) -> Generator[simpy.Event, Any, list[Request]]:
        """Run pure-decode iterations up to the next completion, the first boundary at or
        after the policy's ``wake_at_s``, or the first boundary after an arrival; return the
        requests that finished."""
        env = self._env
        running = self.running
        n = self._n_dec
        k = min(r.output_tokens - r.generated_tokens for r in running)
        kv = self._dec_kv + n * np.arange(k, dtype=np.float64)
        ends = np.cumsum(np.concatenate(([now], self._cost.decode_steps_s(n, kv))))[1:]
        if wake_at_s is not None and wake_at_s < ends[-1]:
            k = int(np.searchsorted(ends, wake_at_s, side="left")) + 1
            ends = ends[:k]
        last = float(ends[-1])
        self._jump_ends = ends
        self._jump_accounted = 0
        event = env.event()
        self._wake = event
        self._wake_on_arrival = True
        env.timer_at(last).callbacks.append(_waker(event))
        yield event
        self._wake = None
        self._wake_on_arrival = False
        t = env.now
        if t >= last:
            m = k
        else:
            m = int(np.searchsorted(ends, t, side="left")) + 1
            boundary = float(ends[m - 1])
            if boundary > t:
                yield env.timer_at(boundary)
        self._account_jump(env.now)  # iterations 1..m are all complete now
        self._jump_ends = None
        return self._advance(m - self._jump_accounted, env.now, accounted=m)

    def _advance(self, unaccounted: int, end: float, accounted: int | None = None) -> list[Request]:
        """Apply ``accounted`` iterations ending at ``end`` (``unaccounted`` of them not yet in
        the statistics): prefills emit their first token, decodes one token per iteration.
        Return the requests that have generated all their tokens."""
        m = unaccounted if accounted is None else accounted
        n_dec = self._n_dec
        if unaccounted:
            self._account(unaccounted, n_dec, len(self._prefill))
        self._dec_kv += m * n_dec
        done = []
        for req in self.running:
            if req.generated_tokens:
                req.generated_tokens += m
                if req.generated_tokens >= req.output_tokens:
                    done.append(req)
        for req in self._prefill:  # only ever one iteration: the whole prompt at once
            req.prefilled_tokens = req.input_tokens
            req.generated_tokens = 1
            req.first_token_s = end
            self._n_dec += 1
            self._dec_kv += req.input_tokens + 1
            if req.output_tokens <= 1:
                done.append(req)
        self._prefill.clear()
        return done

    def _finish(self, done: list[Request], end: float) -> None:
        sim = self._sim
        ids = {id(r) for r in done}
        self.running[:] = [r for r in self.running if id(r) not in ids]
        for req in done:
            self._n_dec -= 1
            self._dec_kv -= req.input_tokens + req.generated_tokens
            self.kv_used_tokens -= req.input_tokens + req.output_tokens
            self.outstanding -= 1
            sim.finalize(req, COMPLETED, end)


@dataclass
class SimulationResult:
    """What one run produced: the filled request table, the timeseries and run counters."""

    table: RequestTable
    timeseries: pd.DataFrame
    replicas: list[dict[str, Any]]
    sim_end_s: float
    wall_s: float
    events: int
    rejections: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    uncalibrated: list[str] = field(default_factory=list)


class Simulation:
    """One run: a workload served by a cluster of replicas under the run's policies.

    Deterministic: the run's seed is split with :class:`numpy.random.SeedSequence` into the
    workload's generators and one generator per policy object, in a fixed order. ``table``
    replaces the generated workload (for tests and replays); its result columns are filled.
    """

    def __init__(self, resolved: ResolvedRun, table: RequestTable | None = None) -> None:
        spec = resolved.run.spec
        self.resolved = resolved
        root = np.random.SeedSequence(spec.seed)
        workload_ss, routing_ss, replica_ss = root.spawn(3)
        self.table = table if table is not None else resolved.generate_workload(workload_ss)
        self.env = Environment()
        self.arrivals_done = False
        self.finished = 0
        self.rejections: dict[str, int] = {}
        self._all_done = self.env.event()
        source = str(resolved.run.source)
        placements = resolved.cluster.placements
        seeds = replica_ss.spawn(2 * len(placements))
        self.replicas: list[Replica] = []
        for p, (b_ss, s_ss) in zip(placements, zip(seeds[::2], seeds[1::2], strict=True), strict=True):
            plan = resolved.models[p.model]
            where = f"{source}: models.{plan.name}"
            batching = instantiate(
                "batching", plan.batching.target, plan.batching.params, np.random.default_rng(b_ss), f"{where}.batching"
            )
            scheduling = instantiate(
                "scheduling",
                plan.scheduling.target,
                plan.scheduling.params,
                np.random.default_rng(s_ss),
                f"{where}.scheduling",
            )
            self.replicas.append(
                Replica(self, p.replica_id, plan, batching, scheduling, p.node, p.devices, spec.engine.coalesce_decode)
            )
        model_names = list(resolved.models)
        self._by_model = [[r for r in self.replicas if r.model == m] for m in model_names]
        self._routers = [
            instantiate(
                "routing",
                resolved.routing.target,
                resolved.routing.params,
                np.random.default_rng(ss),
                f"{source}: routing",
            )
            for ss in routing_ss.spawn(len(model_names))
        ]
        n = len(self.table)
        window = float(self.table.arrival_s[-1]) if n else 1.0
        self.interval_s = spec.engine.timeseries_interval_s or max(window / 200.0, 1e-6)
        self._samples: dict[str, list[Any]] = {
            k: []
            for k in (
                "time_s",
                "replica",
                "model",
                "queue_length",
                "running",
                "busy_fraction",
                "batch_size",
                "memory_used_bytes",
                "kv_used_tokens",
            )
        }
        self._last_sample = [(0.0, 0.0, 0.0, 0, 0) for _ in self.replicas]

    # ---- request lifecycle ---------------------------------------------------------------

    def finalize(self, req: Request, status: int, t: float, reason: str | None = None) -> None:
        """Record a request's final status at time ``t`` (exactly once per request)."""
        i = req.request_id
        table = self.table
        table.status[i] = status
        table.final_s[i] = t
        table.replica[i] = req.replica
        if status == COMPLETED:
            table.start_s[i] = req.start_s
            table.first_token_s[i] = req.first_token_s
            table.completion_s[i] = t
        elif reason is not None:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.finished += 1
        if self.finished == len(table):
            self._all_done.succeed()

    def _feed(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        t = self.table
        arrivals = t.arrival_s.tolist()
        models = t.model.tolist()
        tenants = t.tenant.tolist()
        inputs = t.input_tokens.tolist()
        samples = t.input_samples.tolist()
        outputs = t.output_tokens.tolist()
        prios = t.priority.tolist()
        ttft, tpot, e2e = t.ttft_slo_s.tolist(), t.tpot_slo_s.tolist(), t.e2e_slo_s.tolist()
        model_names, tenant_names = t.model_names, t.tenant_names
        by_model, routers = self._by_model, self._routers
        for i, at in enumerate(arrivals):
            if at > env.now:
                yield env.timer_at(at)
            m = models[i]
            req = Request(
                i,
                model_names[m],
                tenant_names[tenants[i]],
                at,
                inputs[i],
                samples[i],
                outputs[i],
                prios[i],
                ttft[i],
                tpot[i],
                e2e[i],
            )
            replicas = by_model[m]
            idx = routers[m].pick_replica(req, replicas, at)
            if idx is None:
                self.finalize(req, REJECTED, at, "routing")
                continue
            if not 0 <= idx < len(replicas):
                raise PolicyError(
                    f"routing policy {type(routers[m]).__name__} picked replica index"
                    f" {idx!r} of {len(replicas)} for model {model_names[m]}"
                )
            replicas[idx].submit(req, at)
        self.arrivals_done = True
        for replica in self.replicas:
            replica.notify()

    def _sample(self, now: float) -> None:
        """Append one timeseries row per replica covering (previous sample, now]."""
        s = self._samples
        for k, r in enumerate(self.replicas):
            busy_s, q_area = r.flush_stats(now)
            t0, busy0, q0, steps0, items0 = self._last_sample[k]
            span = now - t0
            steps = r.steps - steps0
            s["time_s"].append(now)
            s["replica"].append(r.replica_id)
            s["model"].append(r.model)
            s["queue_length"].append((q_area - q0) / span if span > 0 else float(len(r.queue)))
            s["running"].append(len(r.running))
            s["busy_fraction"].append(min(1.0, (busy_s - busy0) / span) if span > 0 else float(r.busy))
            s["batch_size"].append((r.step_items - items0) / steps if steps else math.nan)
            s["memory_used_bytes"].append(r.memory_used_bytes)
            s["kv_used_tokens"].append(r.kv_used_tokens)
            self._last_sample[k] = (now, busy_s, q_area, r.steps, r.step_items)

    def _sampler(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        k = 1
        while not self._all_done.triggered:
            yield env.timer_at(k * self.interval_s)
            k += 1
            self._sample(env.now)
            if not env._queue:  # nothing else can ever happen: stop, let run() report a stall
                return

    # ---- running -------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        """Run to the last request's final status; return the results."""
        wall0 = time.perf_counter()
        env = self.env
        warnings: list[str] = []
        if len(self.table):
            env.process(self._feed())
            env.process(self._sampler())
            try:
                env.run(until=self._all_done)
            except RuntimeError as exc:
                if "No scheduled events left" not in str(exc):
                    raise
                warnings.append(self._stalled())
        self._sample(env.now)
        wall = time.perf_counter() - wall0
        uncalibrated = sorted({k for m in self.resolved.models.values() for k in m.cost.uncalibrated_kinds})
        replicas = [
            {
                "replica": r.replica_id,
                "model": r.model,
                "node": r.node,
                "devices": list(r.devices),
                "busy_s": r.busy_s,
                "queue_area": r.flush_stats(env.now)[1],
                "steps": r.steps,
                "step_items": r.step_items,
                "tokens_generated": r.tokens_generated,
                "kv_capacity_tokens": r.kv_capacity_tokens,
                "memory_reserved_bytes": r.plan.memory.total_bytes,
            }
            for r in self.replicas
        ]
        return SimulationResult(
            table=self.table,
            timeseries=pd.DataFrame(self._samples),
            replicas=replicas,
            sim_end_s=env.now,
            wall_s=wall,
            events=env.events_scheduled(),
            rejections=dict(self.rejections),
            warnings=warnings,
            uncalibrated=uncalibrated,
        )

    def _stalled(self) -> str:
        """Mark every request still in a queue or batch as failed; describe where they were."""
        now = self.env.now
        stuck = []
        for r in self.replicas:
            left = list(r.queue) + list(r.running)
            if left:
                stuck.append(f"replica {r.replica_id} ({r.model}, batching {type(r._batching).__name__}): {len(left)}")
            for req in left:
                self.finalize(req, FAILED, now, "stalled")
            r.queue.clear()
            r.running.clear()
            r.outstanding = 0
        return (
            f"the simulation stalled at t={now:.6f} s with requests that no policy would run;"
            f" marked failed: {'; '.join(stuck)}"
        )
