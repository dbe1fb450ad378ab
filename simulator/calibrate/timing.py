"""Timing one operator: warm-up, repetition, median and spread.

:func:`measure` runs a zero-argument callable the way a serving engine runs an operator,
over and over, and returns a :class:`Measurement` of one call in seconds. It warms up first
(first-call allocation, kernel selection, the allocator reaching its steady state), then
times ``samples`` samples of ``inner`` back-to-back calls each, with ``inner`` chosen so
that one sample lasts at least ``sample_s`` (so that timer overhead and jitter of a few
microseconds do not dominate an operator of one microsecond). On a GPU the timed region is
bracketed by CUDA events and the stream is synchronised before each sample, so queued work
from before cannot leak into it and the last kernel's completion is included.

Other processes competing for the CPUs spoil a measurement (on a 2-core machine a parallel
operator then waits whole scheduler ticks). Where Linux reports CPU pressure
(``/proc/pressure/cpu``), the share of the sampling time during which some task was waiting
for a CPU is recorded as the measurement's ``contention``. A virtual machine is also slowed by
what the guest cannot see (other tenants on the host's cores: on the 2-vCPU VM the shipped CPU
profile was measured on, a 2-thread GEMM ran at 180, 380 or 580 us for stretches of 10-20 s
while the guest was idle). A :class:`LevelGate` catches that: it times a small reference
operator before and after each measurement and reports how much slower than its best it ran
(the measurement's ``level``). A measurement contended beyond
``TimingPlan.max_contention``, or taken at a level above ``TimingPlan.max_level``, is taken
again after a pause as long as the session's :class:`Patience` lasts, and the least disturbed
attempt is kept.

Inside a model a small operator rarely runs twice in a row: it follows a GEMM that has just
streamed megabytes of weights through the caches, so its data and the framework's dispatch
code are cold (a tiny add takes 15 us after a large GEMM against 1.6 us back to back, on the
CPU the shipped profile was measured on). With ``prepare``, :func:`measure` calls it, untimed,
before every call of the operator, and times each call on its own.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from simulator.calibrate.device import Target

__all__ = ["FULL", "QUICK", "LevelGate", "Measurement", "Patience", "TimingPlan", "cpu_stall_us", "measure"]


@dataclass(frozen=True)
class TimingPlan:
    """How long and how often to time one operator.

    ``warmup_s``: minimum warm-up time (at least two calls); ``sample_s``: minimum length of
    one sample; ``samples``: samples to take; ``min_samples``: samples taken even when over
    budget; ``budget_s``: time after which sampling stops once ``min_samples`` are in;
    ``max_contention``: the share of time other tasks may wait for a CPU before a measurement
    is retried; ``max_level``: how much slower than its best the reference operator of a
    :class:`LevelGate` may run before a measurement is retried; ``patience_s``: total time a
    session may spend waiting for a quiet machine.
    """

    warmup_s: float
    sample_s: float
    samples: int
    min_samples: int
    budget_s: float
    max_contention: float = 0.05
    max_level: float = 1.5
    patience_s: float = 60.0


#: ``--quick``: enough for a few-percent median on a quiet machine.
QUICK = TimingPlan(warmup_s=0.002, sample_s=0.0006, samples=7, min_samples=3, budget_s=0.12, patience_s=15.0)
#: A full calibration.
FULL = TimingPlan(warmup_s=0.015, sample_s=0.002, samples=11, min_samples=5, budget_s=0.6, patience_s=300.0)


@dataclass(frozen=True)
class Measurement:
    """Seconds of one call: median and spread over the samples.

    ``reps`` samples were taken, each the mean of ``inner`` back-to-back calls;
    ``contention``: share of the sampling time during which some task waited for a CPU
    (NaN where the OS does not say); ``level``: how much slower than its best a reference
    operator ran around the measurement (NaN without a :class:`LevelGate`); ``single_thread``:
    taken with one CPU thread because every multi-threaded attempt was disturbed.
    """

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    reps: int
    inner: int
    contention: float = float("nan")
    level: float = float("nan")
    single_thread: bool = False

    def disturbed(self, plan: TimingPlan) -> bool:
        """True when other work visibly slowed this measurement (contention or level too high)."""
        return self.contention > plan.max_contention or self.level > plan.max_level

    @property
    def spread(self) -> float:
        """Relative spread of the samples: (p90 - p10) / median."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0

    @classmethod
    def from_samples(cls, samples_s: list[float], inner: int, contention: float = float("nan")) -> Measurement:
        """Summarise per-call times (one per sample) taken with ``inner`` calls per sample."""
        arr = np.asarray(samples_s, dtype=np.float64)
        p10, p50, p90 = np.percentile(arr, [10, 50, 90])
        return cls(float(p50), float(p10), float(p90), float(arr.min()), float(arr.max()), len(arr), inner, contention)


class LevelGate:
    """A reference operator that tells how fast the machine runs right now.

    ``probe`` is timed (a few short samples, median) before and after each gated measurement;
    :meth:`level` returns its time over the fastest time it has ever run (1.0 at its best).
    :meth:`settle` times it a few times over ``seconds`` to find its best before measuring.
    """

    def __init__(self, probe: Callable[[], Any], target: Target, sample_s: float = 0.0003) -> None:
        self.probe = probe
        self.target = target
        self.sample_s = sample_s
        self.best_s = math.inf
        self._inner = 0
        self._last = (-math.inf, math.inf)  # (when, level) of the latest reading

    def _time(self) -> float:
        if not self._inner:
            self.probe()
            self.target.synchronize()
            start = time.perf_counter()
            self.probe()
            self.target.synchronize()
            self._inner = max(1, math.ceil(self.sample_s / max(time.perf_counter() - start, 1e-7)))
        self.probe()  # untimed: whatever ran before may have left the caches cold
        samples = []
        for _ in range(3):
            samples.append(
                _cuda_sample(self.probe, self._inner, self.target)
                if self.target.is_cuda
                else _host_sample(self.probe, self._inner, time.perf_counter)
            )
        return float(np.median(samples))

    def level(self, max_age_s: float = 0.0) -> float:
        """The probe's time now over its best (>= 1.0); a reading younger than ``max_age_s``
        is reused (the reading after one measurement serves as the one before the next)."""
        when, level = self._last
        if time.perf_counter() - when <= max_age_s:
            return level
        now = self._time()
        self.best_s = min(self.best_s, now)
        self._last = (time.perf_counter(), now / self.best_s)
        return now / self.best_s

    def settle(self, seconds: float = 0.5, times: int = 8) -> float:
        """Time the probe ``times`` times over ``seconds`` to learn its best; returns the best."""
        for _ in range(times):
            self.level()
            time.sleep(seconds / times)
        return self.best_s


class Patience:
    """How long a session may still wait for other processes to leave the CPUs (seconds).

    ``retried`` counts measurements taken again; ``contended`` those still contended when
    kept.
    """

    def __init__(self, seconds: float) -> None:
        self.left_s = seconds
        self.retried = 0
        self.contended = 0


_PSI_PATH = "/proc/pressure/cpu"


def cpu_stall_us() -> int | None:
    """Microseconds, since boot, during which some task waited for a CPU (Linux PSI), or
    ``None`` where the kernel does not report it."""
    try:
        with open(_PSI_PATH, encoding="ascii") as fh:
            return int(fh.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _cuda_sample(fn: Callable[[], Any], inner: int, target: Target) -> float:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    target.synchronize()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) * 1e-3 / inner


def _host_sample(fn: Callable[[], Any], inner: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(inner):
        fn()
    return (clock() - start) / inner


def measure(
    fn: Callable[[], Any],
    target: Target,
    plan: TimingPlan,
    patience: Patience | None = None,
    max_inner: int = 100_000,
    clock: Callable[[], float] = time.perf_counter,
    gate: LevelGate | None = None,
    prepare: Callable[[], Any] | None = None,
) -> Measurement:
    """Time one call of ``fn`` on ``target`` (seconds, per call); see the module docstring.

    ``clock`` returns seconds (a test passes a fake one; a GPU's samples are timed by CUDA
    events instead). With a ``gate``, the reference operator is timed before and after and the
    measurement's ``level`` is the worse of the two. With ``patience``, a disturbed measurement
    (:meth:`Measurement.disturbed`) is taken again (at once, then after 0.1, 0.3 and 1 s) while
    patience lasts, and the least disturbed attempt is returned. With ``prepare``, every call is
    preceded by an untimed call of it and timed on its own (see the module docstring).
    """

    def once(gated: bool = True) -> Measurement:
        before = gate.level(max_age_s=0.05) if gate is not None and gated else float("nan")
        if prepare is None:
            m = _measure_once(fn, target, plan, max_inner, clock)
        else:
            m = _measure_prepared(fn, prepare, target, plan, clock)
        if gate is None or not gated:
            return m
        return replace(m, level=max(before, gate.level()))

    def alone() -> Measurement:
        import torch

        torch.set_num_threads(1)
        try:  # the gate's reference is a multi-threaded operator: not comparable here
            return replace(once(gated=False), single_thread=True)
        finally:
            torch.set_num_threads(target.threads)

    def badness(m: Measurement) -> float:
        level = m.level if m.level == m.level else 1.0
        contention = m.contention if m.contention == m.contention else 0.0
        return max(level - 1.0, 0.0) + contention

    best = once()
    pauses = [0.0, 0.1, 0.3, 1.0]
    while patience is not None and best.disturbed(plan) and pauses:
        pause = pauses.pop(0)
        if patience.left_s < pause:
            break
        time.sleep(pause)
        patience.left_s -= pause
        patience.retried += 1
        again = once()
        if badness(again) < badness(best):
            best = again
    if patience is not None and best.disturbed(plan) and not target.is_cuda and target.threads > 1:
        # Threads spinning at a barrier while another process holds a core wait whole scheduler
        # ticks (a 30 us GEMM then takes 8 ms); one thread cannot wait for another, so its time
        # is at most the operator's serial time -- far closer than a stalled parallel one.
        serial = alone()
        if serial.median_s < best.median_s:
            best = serial
    if patience is not None and best.disturbed(plan):
        patience.contended += 1
    return best


def _measure_prepared(
    fn: Callable[[], Any], prepare: Callable[[], Any], target: Target, plan: TimingPlan, clock: Callable[[], float]
) -> Measurement:
    """Warm up, then time single calls of ``fn``, each right after an untimed ``prepare()``:
    ``plan.samples + 2`` of them (a single call is noisier than a sample of many)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        prepare()
        fn()
        target.synchronize()
        samples: list[float] = []
        stall_before = cpu_stall_us()
        wall_before = time.perf_counter()
        for _ in range(plan.samples + 2):
            prepare()
            target.synchronize()
            start = clock()
            fn()
            target.synchronize()
            samples.append(clock() - start)
        elapsed_us = (time.perf_counter() - wall_before) * 1e6
        stall_after = cpu_stall_us()
        contention = float("nan")
        if stall_before is not None and stall_after is not None and elapsed_us > 0:
            contention = min(1.0, (stall_after - stall_before) / elapsed_us)
        return Measurement.from_samples(samples, 1, contention)
    finally:
        if was_enabled:
            gc.enable()


def _measure_once(
    fn: Callable[[], Any], target: Target, plan: TimingPlan, max_inner: int, clock: Callable[[], float]
) -> Measurement:
    """One warm-up and sampling pass. Python's garbage collector is paused while timing so
    that a collection does not land in one sample."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        fn()
        target.synchronize()
        warm: list[float] = []
        begin = clock()
        while len(warm) < 2 or clock() - begin < plan.warmup_s:
            start = clock()
            fn()
            target.synchronize()
            warm.append(clock() - start)
        estimate_s = max(float(np.median(warm)), 1e-8)
        inner = int(min(max_inner, max(1, math.ceil(plan.sample_s / estimate_s))))
        samples: list[float] = []
        stall_before = cpu_stall_us()
        wall_before = time.perf_counter()
        begin = clock()
        for _ in range(plan.samples):
            samples.append(_cuda_sample(fn, inner, target) if target.is_cuda else _host_sample(fn, inner, clock))
            if len(samples) >= plan.min_samples and clock() - begin > plan.budget_s:
                break
        elapsed_us = (time.perf_counter() - wall_before) * 1e6
        stall_after = cpu_stall_us()
        contention = float("nan")
        if stall_before is not None and stall_after is not None and elapsed_us > 0:
            contention = min(1.0, (stall_after - stall_before) / elapsed_us)
        return Measurement.from_samples(samples, inner, contention)
    finally:
        if was_enabled:
            gc.enable()
