"""The coordinator: the simulator's engine driven by the wall clock and by real model steps.

:class:`Execution` is a :class:`~simulator.engine.Simulation` whose environment is a
:class:`WallClock` and whose replicas hand each step to a worker process instead of pricing it
with the cost model. Everything else is the simulator's own code, run unchanged: the workload
(same seed, same requests), the arrival feeder, the routing, scheduling and batching policy
objects (built from the same spec with the same seeds), queue order, admission, the
decoder's KV block accounting and preemption (:class:`~simulator.decoder.DecoderReplica`'s
methods), request finalisation, the timeseries and the per-replica statistics. So the
executor's ``requests.parquet`` has the simulator's columns, computed by the same code.

Time. Simulated time is seconds since the run's start on ``time.perf_counter`` (the system's
monotonic clock, shared with the workers). An event is never processed before its time: the
loop sleeps (``select`` on the workers' connections) until the next event is due or a worker
answers. ``env.now`` is the event's own time -- an arrival's scheduled time, the moment a step
finished on its worker -- so decisions are stamped with the time their information became
true, and the coordinator's own delays (waking, deciding, sending) show up where they belong:
in the duration of the step they delay, between its nominal start and its measured end.

Metric boundaries (the same as the simulator's; see :mod:`simulator.metrics`): a request
arrives at its scheduled ``arrival_s``; it starts (``start_s``) when the decision that admits
it is made; its first token (``first_token_s``) and its completion (``completion_s``) are the
``end`` of the model step that produced them, taken by the worker right after the step's
outputs exist (the sampled tokens, the classes); for a non-autoregressive model the first
output is the whole result.

Stopping. Ctrl-C (or SIGTERM) and a worker that dies or fails end the run where it is: every
request that completed keeps its row; every other one -- waiting, running, or not yet arrived
-- is marked ``failed`` at the stop time; results are written as usual, with the reason in the
summary's warnings.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from heapq import heappush
from typing import Any

import numpy as np
import pandas as pd
import simpy
from simpy.core import NORMAL

from simulator.decoder import ITL_NBINS, DecoderReplica
from simulator.engine import Environment, Simulation, SimulationResult
from simulator.errors import ConfigError, LdsimError
from simulator.executor.worker import WorkerConfig, start_worker
from simulator.experiment import ResolvedRun
from simulator.models import Decoder
from simulator.replica import BatchReplica
from simulator.request import FAILED, PENDING, Request

__all__ = [
    "MIN_SAMPLE_INTERVAL_S",
    "WAKE_GUARD_S",
    "ExecBatchReplica",
    "ExecDecoderReplica",
    "Execution",
    "ExecutionResult",
    "WallClock",
    "WorkerCrash",
    "WorkerPool",
    "check_executable",
    "plan_workers",
]


#: Shortest timeseries sampling interval of an execution, seconds.
MIN_SAMPLE_INTERVAL_S = 0.01
#: While a step runs, the coordinator wakes once this long before the step should end (by the
#: cost model) and then waits for it: a process woken from a long sleep reacts slowly on a
#: virtual machine (hundreds of microseconds after a 15 ms sleep, against about a hundred after
#: 1 ms), and that delay would otherwise grow with the step's length.
WAKE_GUARD_S = 0.001


class WorkerCrash(LdsimError):
    """A worker process died or failed; the run stops and the unfinished requests fail."""


class WallClock(Environment):
    """A simpy environment whose events are due on the wall clock (see the module docstring).

    ``clock()`` is seconds since :meth:`start`; :meth:`push` schedules an event at a given
    time (never before ``now``, so time stays monotone)."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.perf_counter()

    def start(self, t0: float) -> None:
        """Set the ``perf_counter`` reading that is simulated time 0."""
        self._t0 = t0

    @property
    def t0(self) -> float:
        """The ``perf_counter`` reading at simulated time 0."""
        return self._t0

    def clock(self) -> float:
        """Seconds since time 0 on the wall clock."""
        return time.perf_counter() - self._t0

    def push(self, event: simpy.Event, time_s: float, value: Any) -> None:
        """Trigger ``event`` with ``value`` at ``max(time_s, now)``."""
        event._ok = True
        event._value = value
        heappush(self._queue, (max(time_s, self._now), NORMAL, next(self._eid), event))


# ---- workers ---------------------------------------------------------------------------------


def check_executable(resolved: ResolvedRun) -> None:
    """Refuse, with one clear line each, what the executor does not run."""
    source = str(resolved.run.source)
    if resolved.closed_loop:
        raise ConfigError(
            f"{source}: workload.arrival: the executor feeds open-loop arrivals only, not closed-loop clients"
        )
    for name, plan in resolved.models.items():
        where = f"{source}: models.{name}"
        if getattr(plan, "decode", None) is not None:
            raise ConfigError(f"{where}.decode_pool: the executor does not run disaggregated prefill and decode pools")
        if plan.devices_per_replica > 1:
            raise ConfigError(
                f"{where}: the executor runs each replica on one device; this one takes"
                f" {plan.devices_per_replica} (tensor/pipeline/expert parallelism is simulated only)"
            )
        arch = plan.arch
        if isinstance(arch, Decoder):
            if arch.experts > 1:
                raise ConfigError(f"{where}: the executor runs dense decoders; {arch.name} is a mixture of experts")
            if plan.preemption == "swap":
                raise ConfigError(f"{where}.kv_cache.preemption: the executor preempts by recompute only, not swap")
            if plan.kv is not None and plan.kv.prefix_block_tokens:
                raise ConfigError(f"{where}.kv_cache.prefix_caching: the executor does not share KV between requests")
            if getattr(plan.batching.target, "request_level", False):
                raise ConfigError(
                    f"{where}.batching: the executor does not run request-level (padded) decoder batching"
                    f" ('{plan.batching.name}'); use an iteration-level policy"
                )
        if plan.dtype not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"{where}.dtype: the executor runs fp32, bf16 or fp16, not '{plan.dtype}'")


def plan_workers(devices: int, device: str = "cpu", cores_per_device: int | None = None) -> list[WorkerConfig]:
    """The worker of each of ``devices`` executor devices.

    On a CPU, each worker is pinned to its own cores and runs that many torch threads; one
    core is left to the coordinator when there are more cores than workers (with 2 cores and
    one device: the coordinator on core 0, the worker on core 1). ``cores_per_device``
    overrides the share. With ``device='cuda'``, worker ``i`` gets ``cuda:i``.
    """
    if device.startswith("cuda"):
        base = int(device.split(":", 1)[1]) if ":" in device else 0
        return [WorkerConfig(i, f"cuda:{base + i}", (), 1) for i in range(devices)]
    if device != "cpu":
        raise LdsimError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        cores = list(range(os.cpu_count() or 1))
    spare = cores[1:] if len(cores) > devices else cores
    per = cores_per_device or max(1, len(spare) // devices)
    out = []
    for i in range(devices):
        mine = tuple(spare[(i * per + j) % len(spare)] for j in range(per))
        out.append(WorkerConfig(i, "cpu", mine, per))
    return out


@dataclass
class _Worker:
    config: WorkerConfig
    proc: Any
    conn: Any
    pid: int = 0
    description: str = ""
    torch_version: str = ""


class WorkerPool:
    """Worker processes for a run, stopped (and if need be killed) on :meth:`close`.

    Use as a context manager; nothing it starts outlives the ``with`` block."""

    def __init__(self, configs: list[WorkerConfig], start_timeout_s: float = 120.0) -> None:
        self.workers: list[_Worker] = []
        try:
            for config in configs:
                proc, conn = start_worker(config)
                self.workers.append(_Worker(config, proc, conn))
            for w in self.workers:
                msg = self._recv(w, start_timeout_s, "start")
                _, w.pid, w.description, w.torch_version = msg
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [int(w.proc.pid) for w in self.workers]

    def _recv(self, w: _Worker, timeout_s: float, what: str) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerCrash(
                    f"worker {w.config.index} ({w.config.describe()}) did not {what} in {timeout_s:.0f} s"
                )
            select.select([w.conn.fileno()], [], [], min(left, 1.0))
            if w.conn.poll():
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    raise WorkerCrash(self.death(w, what)) from None
                if msg[0] == "error":
                    raise WorkerCrash(f"worker {w.config.index} failed to {what}: {msg[2]}")
                return tuple(msg)

    def death(self, w: _Worker, doing: str) -> str:
        """Why worker ``w`` is gone, in words."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=1.0)
        code = w.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        return f"worker {w.config.index} ({w.config.describe()}, pid {w.proc.pid}) {how} while {doing}"

    def request(self, index: int, message: tuple[Any, ...], timeout_s: float, what: str) -> tuple[Any, ...]:
        """Send ``message`` to worker ``index`` and wait for its answer."""
        w = self.workers[index]
        w.conn.send(message)
        return self._recv(w, timeout_s, what)

    def close(self) -> None:
        """Stop every worker: ask, then terminate, then kill; reap them all."""
        for w in self.workers:
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                w.conn.send(("stop",))
        deadline = time.monotonic() + 3.0
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
        for w in self.workers:
            for stop in (w.proc.terminate, w.proc.kill):
                if w.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        stop()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        w.proc.wait(timeout=2.0)
            with contextlib.suppress(OSError):
                w.conn.close()
        self.workers = []


# ---- replicas --------------------------------------------------------------------------------


class ExecBatchReplica(BatchReplica):
    """:class:`~simulator.replica.BatchReplica` whose forward passes run on a worker."""

    def _forward(
        self, batch: tuple[Any, ...], now: float, samples: int, seq_len: int
    ) -> Generator[simpy.Event, Any, float]:
        """Send the batch to the worker (an encoder's per-sample lengths, else the sample count)
        and log the step; return when the worker finished it."""
        sim: Execution = self._sim  # type: ignore[assignment]
        if seq_len:
            payload: Any = [int(r.input_tokens) for r in batch for _ in range(int(r.input_samples))]
        else:
            payload = samples
        predicted, flops, nbytes = self._cost.batch(samples, seq_len)
        self._busy(now)
        predicted += self._take_wake()
        self._count_step(len(batch), flops, nbytes)
        timing = yield sim.dispatch(self, ("batch", self.replica_id, payload), predicted)
        sim.log_step(self, now, timing, predicted, len(batch), samples, seq_len, 0, 0, 0)
        return float(timing[1])


class ExecDecoderReplica(DecoderReplica):
    """:class:`~simulator.decoder.DecoderReplica` whose iterations run on a worker, with the
    KV cache's keys and values there; its admission, KV block accounting, preemption and token
    bookkeeping are the simulator's methods."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._releases: list[tuple[int, bool]] = []
        super().__init__(*args, **kwargs)

    def _preempt(self, req: Request, now: float) -> None:
        super()._preempt(req, now)
        self._releases.append((req.request_id, False))  # keep its tokens: it is recomputed

    def _finish(self, done: list[Request], end: float) -> None:
        super()._finish(done, end)
        self._releases.extend((r.request_id, True) for r in done)

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env = self._env
        sim: Execution = self._sim  # type: ignore[assignment]
        cost = self._cost
        while True:
            now = env.now
            decision = self._decide(now)
            for req in decision.preempt:
                if req not in self.running:
                    raise self._policy_error(f"preempted {req!r}, which is not running")
                self._preempt(req, now)
            for req in decision.admit:
                self._start(req, now)
            if not self.running:
                yield from self._idle(now, decision.wake_at_s)
                continue
            chunks = self._plan(decision, now)
            if not self.running:
                continue
            self._busy(now)
            prefilling = {id(r) for r in self._prefill}
            decoding = [r for r in self.running if id(r) not in prefilling]
            items = [(r.request_id, int(r.input_tokens), int(r.kv_tokens), 1, True) for r in decoding]
            items += [
                (
                    r.request_id,
                    int(r.input_tokens),
                    int(r.kv_tokens),
                    int(c),
                    r.prefilled_tokens + c >= r.prefill_target,
                )
                for r, c in chunks
            ]
            prefills = [(c, r.kv_tokens + c) for r, c in chunks]
            n_dec, dec_kv = self._n_dec, self._dec_kv
            predicted, flops, nbytes = cost.iteration(prefills, n_dec, dec_kv)
            predicted += self._take_wake()
            self.flops += flops
            self.bytes_moved += nbytes
            releases, self._releases = self._releases, []
            timing = yield sim.dispatch(self, ("step", self.replica_id, items, len(decoding), releases), predicted)
            end = timing[1]
            sim.log_step(self, now, timing, predicted, len(items), 0, 0, n_dec, sum(c for c, _ in prefills), dec_kv)
            done = self._advance(chunks, end)
            if done:
                self._finish(done, end)


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class ExecutionResult(SimulationResult):
    """A :class:`~simulator.engine.SimulationResult` from real execution, with the step log
    (one row per model step: nominal start, when it was sent, the worker's start and end, when
    the answer was received, the cost model's prediction), when the run stopped early why, the
    workers, and the machine's load before and after
    (:func:`simulator.executor.run.machine_load`)."""

    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    stopped: str | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)


_STEP_COLUMNS = (
    "replica",
    "model",
    "nominal_start_s",
    "sent_s",
    "worker_start_s",
    "end_s",
    "received_s",
    "measured_s",
    "predicted_s",
    "requests",
    "samples",
    "seq_len",
    "decode_requests",
    "prefill_tokens",
    "decode_kv_tokens",
)


class Execution(Simulation):
    """One run executed for real (see the module docstring).

    ``pool`` holds started workers; ``worker_of`` maps each replica id to its worker's index.
    The replicas' models must already be built on their workers (:func:`build_models`).
    """

    def __init__(self, resolved: ResolvedRun, pool: WorkerPool, worker_of: dict[int, int], lead_s: float = 0.05):
        self.wall = WallClock()
        self.pool = pool
        self.worker_of = worker_of
        self.lead_s = lead_s
        self._in_flight: dict[int, tuple[simpy.Event, float]] = {}  # replica -> (its step's event, sent)
        self._wake_at: dict[int, float] = {}  # when to wake for a step in flight
        self._step_log: dict[str, list[Any]] = {k: [] for k in _STEP_COLUMNS}
        self._fds: dict[int, int] = {}
        # the simulator's engine on the wall clock, with replicas that execute their steps and
        # the policy objects it builds (same classes, params and seeds as a simulated run)
        super().__init__(
            resolved,
            env=self.wall,
            replica_class=lambda plan: ExecDecoderReplica if plan.arch.autoregressive else ExecBatchReplica,
            coalesce=False,
        )
        # the timeseries sampler wakes the coordinator: never more often than every 10 ms of
        # real time (a burst's arrival window is a millisecond, whose /200 would be 5 us)
        self.interval_s = max(self.interval_s, MIN_SAMPLE_INTERVAL_S)

    # ---- dispatch ------------------------------------------------------------------------

    def dispatch(self, replica: Any, message: tuple[Any, ...], expected_s: float = 0.0) -> simpy.Event:
        """Send one step to the replica's worker; the returned event fires (at the step's
        end) with ``(start, end, sent, received)`` in run seconds: the worker's start and end of
        the step, when the coordinator sent it and when it received the answer. ``expected_s``:
        how long the step should take (the cost model's price), to wake up shortly before its
        end (see :data:`WAKE_GUARD_S`)."""
        event = self.env.event()
        w = self.pool.workers[self.worker_of[replica.replica_id]]
        sent = self.wall.clock()
        self._in_flight[replica.replica_id] = (event, sent)
        self._wake_at[replica.replica_id] = sent + expected_s - WAKE_GUARD_S
        w.conn.send(message)
        return event

    def log_step(
        self,
        replica: Any,
        nominal: float,
        timing: tuple[float, float, float, float],
        predicted: float,
        requests: int,
        samples: int,
        seq_len: int,
        decode: int,
        prefill_tokens: int,
        decode_kv: int,
    ) -> None:
        """Record one step of the step log (``timing``: the dispatch event's value)."""
        start, end, sent, received = timing
        s = self._step_log
        s["replica"].append(replica.replica_id)
        s["model"].append(replica.model)
        s["nominal_start_s"].append(nominal)
        s["sent_s"].append(sent)
        s["worker_start_s"].append(start)
        s["end_s"].append(end)
        s["received_s"].append(received)
        s["measured_s"].append(end - nominal)
        s["predicted_s"].append(predicted)
        s["requests"].append(requests)
        s["samples"].append(samples)
        s["seq_len"].append(seq_len)
        s["decode_requests"].append(decode)
        s["prefill_tokens"].append(prefill_tokens)
        s["decode_kv_tokens"].append(decode_kv)

    def _receive(self, timeout_s: float | None) -> None:
        """Wait up to ``timeout_s`` (``None``: indefinitely) for workers' answers; handle them."""
        workers = self.pool.workers
        ready, _, _ = select.select([w.conn.fileno() for w in workers], [], [], timeout_s)
        if not ready:
            return
        for w in workers:
            while w.conn.poll():  # EOF counts as readable: a dead worker raises here
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    raise WorkerCrash(self.pool.death(w, "running the experiment")) from None
                self._handle(w, msg)

    def _handle(self, w: Any, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "error":
            raise WorkerCrash(
                f"worker {w.config.index} ({w.config.describe()}) failed a step of replica {msg[1]}: {msg[2]}"
            )
        if kind != "done":
            return
        _, replica_id, start, end = msg
        event, sent = self._in_flight.pop(replica_id)
        self._wake_at.pop(replica_id, None)
        t0 = self.wall.t0
        self.wall.push(event, end - t0, (start - t0, end - t0, sent, self.wall.clock()))

    # ---- running -------------------------------------------------------------------------

    def run(self) -> ExecutionResult:
        """Execute to the last request's final status (or until stopped); return the results."""
        env = self.wall
        warnings: list[str] = []
        stopped = None
        wall0 = time.perf_counter()
        with _sigterm_as_interrupt():
            env.start(time.perf_counter() + self.lead_s)
            if len(self.table):
                env.process(self._feed())
                env.process(self._sampler())
            try:
                while not self._all_done.triggered and len(self.table):
                    due = env.peek()
                    now = env.clock()
                    if due <= now:
                        self._receive(0.0)
                        env.step()
                    elif due == math.inf and not self._in_flight:
                        warnings.append(self._stalled())
                        break
                    else:
                        wait = None if due == math.inf else due - now
                        early = min((t for t in self._wake_at.values() if t > now), default=math.inf)
                        if early < math.inf:  # wake shortly before a step should end (one wake-up)
                            wait = min(wait, early - now) if wait is not None else early - now
                        self._receive(wait)
            except KeyboardInterrupt:
                stopped = "interrupted (Ctrl-C or SIGTERM)"
            except WorkerCrash as exc:
                stopped = str(exc)
        end_s = max(env.now, env.clock())
        if stopped is not None:
            failed = self._fail_unfinished(end_s, "worker_failed" if "worker" in stopped else "interrupted")
            warnings.append(
                f"the execution stopped at t={end_s:.3f} s: {stopped}; {failed} unfinished request(s) marked failed"
            )
        self._sample(end_s)
        wall = time.perf_counter() - wall0
        return self._result(end_s, wall, warnings, stopped)

    def _fail_unfinished(self, t: float, reason: str) -> int:
        """Mark every request without a final status failed at ``t``; return how many."""
        count = 0
        for r in self.replicas:
            for req in list(r.queue) + list(r.running):
                self.finalize(req, FAILED, t, reason)
                count += 1
            r.queue.clear()
            r.running.clear()
            r.outstanding = 0
        table = self.table
        pending = np.flatnonzero(table.status == PENDING)
        if len(pending):
            table.status[pending] = FAILED
            table.final_s[pending] = t
            self.rejections[reason] = self.rejections.get(reason, 0) + len(pending)
            self.finished += len(pending)
            count += len(pending)
        return count

    def _result(self, end_s: float, wall_s: float, warnings: list[str], stopped: str | None) -> ExecutionResult:
        profile = self.resolved.profile
        replicas = []
        itl = np.zeros(ITL_NBINS, dtype=np.int64)
        for r in self.replicas:
            r.flush_stats(end_s)
            stats = r.stats()
            devices_time = end_s * len(r.devices)
            peak = profile.peak_flops(r.plan.dtype)
            bandwidth = profile.memory_bandwidth_bytes_per_s
            stats["mfu"] = stats["flops"] / (devices_time * peak) if devices_time > 0 else None
            stats["mbu"] = stats["bytes"] / (devices_time * bandwidth) if devices_time > 0 else None
            replicas.append(stats)
            if isinstance(r, DecoderReplica):
                itl += r.itl_counts
        steps = pd.DataFrame(self._step_log, columns=list(_STEP_COLUMNS))
        return ExecutionResult(
            table=self.table,
            timeseries=pd.DataFrame(self._samples),
            replicas=replicas,
            sim_end_s=end_s,
            wall_s=wall_s,
            events=self.env.events_scheduled(),
            rejections=dict(self.rejections),
            warnings=warnings,
            uncalibrated=sorted({k for m in self.resolved.models.values() for k in m.cost.uncalibrated_kinds}),
            itl_counts=itl if any(isinstance(r, DecoderReplica) for r in self.replicas) else None,
            fallbacks={k: v for m in self.resolved.models.values() for k, v in m.cost.fallback_kinds.items()},
            steps=steps,
            stopped=stopped,
            workers=[
                {"index": w.config.index, "pid": w.pid, "device": w.description, "torch": w.torch_version}
                for w in self.pool.workers
            ],
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while executing (so results are still written)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
