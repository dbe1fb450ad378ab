"""The discrete-event engine (simpy): an arrival feeder, routers, replicas, and a sampler.

Processes (ARCHITECTURE.md, principle 2): one feeder that injects requests at their arrival
times, one engine loop per replica (:mod:`simulator.replica` for models that run one forward
pass per batch, :mod:`simulator.decoder` for decoders that run iteration by iteration), one
timeseries sampler. Never one per request or token. Request state lives in plain
:class:`~simulator.request.Request` objects while in flight and in the
:class:`~simulator.request.RequestTable` columns afterwards.

Every timer is scheduled at an absolute time, so the times computed in one place (``now +
duration`` or a cumulative sum) are exactly the times recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from heapq import heappush
from typing import Any

import numpy as np
import pandas as pd
import simpy
from simpy.core import NORMAL

from simulator.cost import kv_transfer_s
from simulator.decoder import ITL_NBINS, DecoderReplica
from simulator.experiment import ModelPlan, ResolvedRun
from simulator.policy import instantiate
from simulator.replica import BatchReplica, PolicyError, Replica
from simulator.request import COMPLETED, FAILED, REJECTED, ROW_COLUMNS, Request, RequestTable

__all__ = ["Environment", "PolicyError", "Simulation", "SimulationResult"]


#: With the default sampling interval, it doubles after this many samples.
_SAMPLES_PER_DOUBLING = 1000

#: The feeder turns table columns into Python values this many rows at a time.
_ROWS_PER_SLICE = 65536


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
    itl_counts: np.ndarray | None = None
    fallbacks: dict[str, str] = field(default_factory=dict)


class Simulation:
    """One run: a workload served by a cluster of replicas under the run's policies.

    Deterministic: the run's seed is split with :class:`numpy.random.SeedSequence` into the
    workload's generators and one generator per policy object, in a fixed order. ``table``
    replaces the generated workload (for tests and replays); its result columns are filled.
    ``env``, ``replica_class`` (the replica class for a model plan) and ``coalesce`` (overriding
    ``engine.coalesce_decode``) let another driver reuse the engine: the real executor runs it
    on a wall clock with replicas that execute their steps.
    """

    def __init__(
        self,
        resolved: ResolvedRun,
        table: RequestTable | None = None,
        env: Environment | None = None,
        replica_class: Callable[[ModelPlan], type[Replica]] | None = None,
        coalesce: bool | None = None,
    ) -> None:
        spec = resolved.run.spec
        self.resolved = resolved
        root = np.random.SeedSequence(spec.seed)
        workload_ss, routing_ss, replica_ss = root.spawn(3)
        self.table = table if table is not None else resolved.generate_workload(workload_ss)
        self._clients = resolved.closed_loop_clients(workload_ss) if table is None else None
        self._issued = 0  # closed loop: rows issued so far (rows are issued in order)
        self._pending = 0  # closed loop: next requests scheduled and not yet issued
        self._user_of = np.zeros(len(self.table) if self._clients is not None else 0, dtype=np.int64)
        self.env = env if env is not None else Environment()
        self.arrivals_done = False
        self.finished = 0
        self.rejections: dict[str, int] = {}
        self._all_done = self.env.event()
        source = str(resolved.run.source)
        placements = resolved.cluster.placements
        seeds = replica_ss.spawn(2 * len(placements))
        self.replicas: list[Replica] = []
        for p, (b_ss, s_ss) in zip(placements, zip(seeds[::2], seeds[1::2], strict=True), strict=True):
            plan = resolved.models[p.model].pool(p.role)
            where = f"{source}: models.{plan.name}" + (".decode_pool" if p.role == "decode" else "")
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
            if replica_class is not None:
                cls = replica_class(plan)
            else:
                cls = DecoderReplica if plan.arch.autoregressive else BatchReplica
            coalesce_decode = spec.engine.coalesce_decode if coalesce is None else coalesce
            self.replicas.append(
                cls(self, p.replica_id, plan, batching, scheduling, p.node, p.devices, coalesce_decode)
            )
        model_names = list(resolved.models)
        self._model_index = {m: i for i, m in enumerate(model_names)}
        self._by_model = [[r for r in self.replicas if r.model == m and r.plan.role != "decode"] for m in model_names]
        self._decode_pools = [
            [r for r in self.replicas if r.model == m and r.plan.role == "decode"] for m in model_names
        ]
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
        # a disaggregated deployment's decode pool has a router of its own (later seeds, so
        # that the prefill routers' seeds do not depend on whether a decode pool exists)
        self._decode_routers: list[Any] = []
        for m, ss in zip(model_names, routing_ss.spawn(len(model_names)), strict=True):
            plan = resolved.models[m]
            routing = plan.decode_routing or resolved.routing
            self._decode_routers.append(
                instantiate(
                    "routing",
                    routing.target,
                    routing.params,
                    np.random.default_rng(ss),
                    f"{source}: models.{m}.decode_pool.routing",
                )
                if plan.decode is not None
                else None
            )
        n = len(self.table)
        window = float(self.table.arrival_s[-1]) if n else 1.0
        if not window > 0:  # a closed loop's arrivals are not known beforehand (nan)
            window = 0.2
        self.interval_s = spec.engine.timeseries_interval_s or window / 200.0
        self._adaptive = spec.engine.timeseries_interval_s is None
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
                "kv_utilization",
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
            table.max_itl_s[i] = req.max_itl_s
        elif reason is not None:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
        table.preemptions[i] = req.preemptions
        table.cached_tokens[i] = req.cached_tokens
        table.truncated_tokens[i] = req.truncated_tokens
        self.finished += 1
        clients = self._clients
        if clients is None:
            if self.finished == len(table):
                self._all_done.succeed()
            return
        nxt = clients.on_completion(int(self._user_of[i]), t)
        if nxt is not None:
            self._schedule_user(int(self._user_of[i]), nxt)
        self._check_arrivals_over()

    def handoff(self, req: Request, src: Replica, now: float) -> float:
        """A prefill replica of a disaggregated deployment finished ``req``'s prefill at
        ``now``: pick a decode replica with the pool's router and start moving the KV cache
        there; the request joins that replica's queue when the transfer ends. Returns the
        transfer's end (``now`` if the router rejected the request)."""
        m = self._model_index[req.model]
        pool = self._decode_pools[m]
        router = self._decode_routers[m]
        idx = router.pick_replica(req, pool, now)
        if idx is None:
            self.finalize(req, REJECTED, now, "routing")
            return now
        if not 0 <= idx < len(pool):
            raise PolicyError(
                f"routing policy {type(router).__name__} picked decode replica index {idx!r} of {len(pool)}"
                f" for model {req.model} at t={now:.6f} s"
            )
        dst = pool[idx]
        seconds = kv_transfer_s(req.kv_tokens, src.plan, dst.plan, same_node=src.node == dst.node)
        ready = now + seconds
        self.table.kv_transfer_s[req.request_id] = seconds
        self.table.prefill_replica[req.request_id] = src.replica_id
        assert isinstance(dst, DecoderReplica)
        dst.expect(req)
        self.env.timer_at(ready).callbacks.append(lambda _event: dst.receive(req, ready))
        return ready

    def decode_arrivals_done(self, model: str) -> bool:
        """True once no request will reach ``model``'s decode pool again: arrivals are over,
        its prefill replicas hold nothing, and no KV cache is on its way."""
        m = self._model_index[model]
        return (
            self.arrivals_done
            and all(r.outstanding == 0 for r in self._by_model[m])
            and all(r.in_transfer == 0 for r in self._decode_pools[m])  # type: ignore[attr-defined]
        )

    def _issuer(self) -> Callable[[int, float], None]:
        """A function ``issue(i, at)`` that makes row ``i`` of the table a request arriving at
        ``at`` and routes it. Rows must be issued in order: the table's columns are turned
        into Python values a slice of ``_ROWS_PER_SLICE`` rows at a time, so a run of any
        length holds only one slice of them."""
        t = self.table
        model_names, tenant_names = t.model_names, t.tenant_names
        by_model, routers = self._by_model, self._routers
        prefix = t.prefix_of if t.prefix_ids is not None else None
        env = self.env
        start = end = 0
        cols: tuple[list[Any], ...] = ()

        def issue(i: int, at: float) -> None:
            nonlocal start, end, cols
            if i >= end:
                start, end = i, min(len(t), i + _ROWS_PER_SLICE)
                cols = tuple(getattr(t, name)[start:end].tolist() for name in ROW_COLUMNS)
            k = i - start
            models, tenants, inputs, samples, outputs, prios, ttft, tpot, e2e = cols
            m = models[k]
            req = Request(
                i,
                model_names[m],
                tenant_names[tenants[k]],
                at,
                inputs[k],
                samples[k],
                outputs[k],
                prios[k],
                ttft[k],
                tpot[k],
                e2e[k],
                prefix(i).tolist() if prefix is not None else (),
            )
            replicas = by_model[m]
            idx = routers[m].pick_replica(req, replicas, at)
            if idx is None:
                self.finalize(req, REJECTED, at, "routing")
                return
            if not 0 <= idx < len(replicas):
                raise PolicyError(
                    f"routing policy {type(routers[m]).__name__} picked replica index"
                    f" {idx!r} of {len(replicas)} for model {model_names[m]} at t={env.now:.6f} s"
                )
            replicas[idx].submit(req, at)

        return issue

    def _end_of_arrivals(self) -> None:
        self.arrivals_done = True
        for replica in self.replicas:
            replica.notify()

    def _feed(self) -> Generator[simpy.Event, Any, None]:
        """Open loop: issue the table's rows at their arrival times."""
        env = self.env
        issue = self._issuer()
        arrivals = self.table.arrival_s
        for lo in range(0, len(arrivals), _ROWS_PER_SLICE):
            for i, at in enumerate(arrivals[lo : lo + _ROWS_PER_SLICE].tolist(), lo):
                if at > env.now:
                    yield env.timer_at(at)
                issue(i, at)
        self._end_of_arrivals()

    # ---- closed-loop clients ---------------------------------------------------------------

    def _start_clients(self) -> None:
        """Closed loop: schedule each user's first request; the rest follow completions."""
        assert self._clients is not None
        self._issue = self._issuer()
        users, times = self._clients.first_arrivals()
        for user, at in zip(users.tolist(), times.tolist(), strict=True):
            self._schedule_user(user, at)
        self._check_arrivals_over()

    def _schedule_user(self, user: int, at: float) -> None:
        """User ``user`` issues its next request at ``at`` (one timer; no process)."""
        self._pending += 1
        event = self.env.timer_at(max(at, self.env.now))
        event.callbacks.append(lambda _event: self._issue_next(user))

    def _issue_next(self, user: int) -> None:
        """A user's timer fired: its request takes the table's next row."""
        row = self._issued
        self._issued += 1
        self._pending -= 1
        now = self.env.now
        self.table.arrival_s[row] = now
        self._user_of[row] = user
        self._issue(row, now)
        self._check_arrivals_over()

    def _check_arrivals_over(self) -> None:
        """Closed loop: arrivals are over once no next request is scheduled and none can be
        (the budget is spent, or no request is in flight to lead to one); the run is over
        once, besides, no request is in flight."""
        clients = self._clients
        assert clients is not None
        if self._pending:
            return
        if not self.arrivals_done and (clients.issued >= clients.budget or clients.in_flight == 0):
            self._end_of_arrivals()
        if clients.done and not self._all_done.triggered:
            self._all_done.succeed()

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
            if isinstance(r, DecoderReplica):
                used = r.kv_used_blocks_now() * r.kv_block_tokens
                s["kv_used_tokens"].append(used)
                s["kv_utilization"].append(used / r.kv_capacity_tokens)
            else:
                s["kv_used_tokens"].append(0)
                s["kv_utilization"].append(math.nan)
            self._last_sample[k] = (now, busy_s, q_area, r.steps, r.step_items)

    def _sampler(self) -> Generator[simpy.Event, Any, None]:
        """Sample every ``interval_s``; with the default interval, double it each time another
        ``_SAMPLES_PER_DOUBLING`` samples have been taken, so a run far longer than its arrival
        window still keeps a bounded timeseries (each row covers its own span)."""
        env = self.env
        k = 0
        origin = 0.0
        interval = self.interval_s
        while not self._all_done.triggered:
            k += 1
            yield env.timer_at(origin + k * interval)
            self._sample(env.now)
            if self._adaptive and k == _SAMPLES_PER_DOUBLING:
                origin, k, interval = env.now, 0, 2 * interval
            if not env._queue:  # nothing else can ever happen: stop, let run() report a stall
                return

    # ---- running -------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        """Run to the last request's final status; return the results."""
        wall0 = time.perf_counter()
        env = self.env
        warnings: list[str] = []
        if len(self.table):
            if self._clients is not None:
                self._start_clients()
            else:
                env.process(self._feed())
            env.process(self._sampler())
            try:
                env.run(until=self._all_done)
            except RuntimeError as exc:
                if "No scheduled events left" not in str(exc):
                    raise
                warnings.append(self._stalled())
        self._sample(env.now)
        if self._clients is not None:  # a duration cut the loop short: drop the unissued rows
            self.table.truncate(self._issued)
        wall = time.perf_counter() - wall0
        plans = self.resolved.plans()
        uncalibrated = sorted({k for m in plans for k in m.cost.uncalibrated_kinds})
        profile = self.resolved.profile
        replicas = []
        itl = np.zeros(ITL_NBINS, dtype=np.int64)
        for r in self.replicas:
            r.flush_stats(env.now)
            stats = r.stats()
            devices_time = env.now * len(r.devices)
            device = r.plan.profile or profile
            peak = device.peak_flops(r.plan.dtype)
            bandwidth = device.memory_bandwidth_bytes_per_s
            stats["mfu"] = stats["flops"] / (devices_time * peak) if devices_time > 0 else None
            stats["mbu"] = stats["bytes"] / (devices_time * bandwidth) if devices_time > 0 else None
            replicas.append(stats)
            if isinstance(r, DecoderReplica):
                itl += r.itl_counts
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
            itl_counts=itl if any(isinstance(r, DecoderReplica) for r in self.replicas) else None,
            fallbacks={k: v for m in plans for k, v in m.cost.fallback_kinds.items()},
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
