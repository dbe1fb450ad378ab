"""``ldsim calibrate``: run every microbenchmark on one device and write a measured profile.

:func:`calibrate` resolves the device, probes its dtypes, then times, section by section, the
GEMM, attention, memory-bound, embedding-bag and convolution grids of :mod:`.grids`, the
streaming bandwidth, host-device copies and storage reads (:mod:`.transfers`), collectives
between worker processes (:mod:`.collectives`) and small end-to-end layer blocks
(:mod:`.blocks`), and hands the raw rows to :mod:`.writer`, which writes the profile YAML, its
tables and the raw CSV, and validates the result by loading it. It returns how long each
section took, so the command can print the breakdown, and notes how much CPU other processes
used meanwhile. Memory-bound tables get extra points where an operator's time jumps between two
grid sizes (:func:`refine_steps`). A caller may pass its own :class:`~.grids.Grid` and limit the
dtypes (a test's tiny calibration does both).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.calibrate.device import (
    TORCH_DTYPES,
    LoadMeter,
    Target,
    parse_device,
    probe_dtypes,
    require_torch,
    require_torch_installed,
    resolve_target,
    steady_allocator,
)
from simulator.calibrate.grids import Grid, grid_for, grid_from_dict
from simulator.calibrate.operators import Case, attention_prefill_case, build, gemm_case
from simulator.calibrate.process import MEASURING_ENV
from simulator.calibrate.records import case_row
from simulator.calibrate.timing import FULL, QUICK, LevelGate, Measurement, Patience, TimingPlan, measure
from simulator.errors import LdsimError, did_you_mean

__all__ = ["CalibrationResult", "Session", "calibrate", "calibrate_here"]


@dataclass
class CalibrationResult:
    """What a calibration wrote and how long it took.

    ``sections_s``: seconds per section, in the order run; ``total_s``: wall time of the whole
    command; ``rows``: raw measurements; ``notes``: what was skipped and why.
    """

    profile_path: Path
    sections_s: dict[str, float]
    total_s: float
    rows: int
    notes: list[str] = field(default_factory=list)

    def breakdown(self) -> str:
        """The time breakdown, one line."""
        parts = ", ".join(f"{name} {sec:.1f}s" for name, sec in self.sections_s.items())
        return f"{self.total_s:.1f}s in all: {parts}"


class Session:
    """A measuring session on one target: timing plan, raw rows, notes and section times.

    ``progress`` receives one line per finished section (and may be ``None``); ``quick`` says
    whether this is a ``--quick`` run (fewer blocks).
    """

    def __init__(
        self,
        target: Target,
        grid: Grid,
        plan: TimingPlan,
        progress: Callable[[str], None] | None = None,
        quick: bool = False,
    ) -> None:
        self.target = target
        self.quick = quick
        self.grid = grid
        self.plan = plan
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.sections_s: dict[str, float] = {}
        self.progress = progress
        self.failed_tables: dict[tuple[str, str, str], str] = {}
        self.timings = 0  # operators timed so far (rows, probes and re-measurements alike)
        self.other_load_cores: dict[str, float] = {}  # per section: CPU used by other processes
        self.patience = Patience(plan.patience_s)
        self.gate: LevelGate | None = None
        self.evict: Callable[[], Any] | None = None
        self._points: set[tuple[Any, ...]] = set()
        self._buffers: dict[Any, Any] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a section of the run under ``name``."""
        start = time.perf_counter()
        before = self.timings
        retried, contended = self.patience.retried, self.patience.contended
        meter = LoadMeter()
        try:
            yield
        finally:
            self._buffers.clear()
            took = time.perf_counter() - start
            self.sections_s[name] = self.sections_s.get(name, 0.0) + took
            other = meter.other_cores()
            if other is not None:
                self.other_load_cores[name] = other
            if self.progress is not None:
                load = f" (other processes: {other:.2f} cores)" if other is not None else ""
                if self.patience.retried > retried or self.patience.contended > contended:
                    load += (
                        f" [{self.patience.retried - retried} retried after a pause,"
                        f" {self.patience.contended - contended} kept though contended]"
                    )
                self.progress(f"{name:<12} {self.timings - before:5d} timings in {took:6.1f} s{load}")

    def load_note(self) -> str:
        """One sentence on the CPU load of other processes during the sections ('' if unknown)."""
        if not self.other_load_cores:
            return ""
        total_s = sum(self.sections_s.get(k, 0.0) for k in self.other_load_cores)
        mean = sum(v * self.sections_s.get(k, 0.0) for k, v in self.other_load_cores.items()) / max(total_s, 1e-9)
        worst = max(self.other_load_cores, key=lambda k: self.other_load_cores[k])
        return (
            f"other processes on the machine used {mean:.2f} cores on average while measuring"
            f" (most during '{worst}': {self.other_load_cores[worst]:.2f}); {os.cpu_count()} logical CPUs"
        )

    def contention_note(self) -> str:
        """One sentence on measurements disturbed by other work ('' when none was)."""
        plan = self.plan
        busy = sum(
            r.get("contention", 0) > plan.max_contention or r.get("level", 0) > plan.max_level for r in self.rows
        )
        alone = sum(bool(r.get("single_thread")) for r in self.rows)
        if not busy and not alone and not self.patience.retried:
            return ""
        return (
            f"other work slowed the machine at times: {self.patience.retried} measurement(s) were taken again,"
            f" {alone} with one thread after every multi-threaded attempt was disturbed, and {busy} of"
            f" {len(self.rows)} kept some disturbance (the raw CSV's contention, level and single_thread columns)"
        )

    def start_gate(self) -> None:
        """Gate every later measurement on a reference GEMM (see :class:`.timing.LevelGate`):
        learn its best time now, then retry measurements taken while it runs slow. On a CPU,
        also prepare the cache-evicting GEMM that precedes each memory-bound operator's calls
        (see :func:`cache_evictor`)."""
        self.gate = reference_gate(self.target)
        self.gate.settle()
        self.evict = cache_evictor(self.target)

    def time(self, fn: Callable[[], Any]) -> Measurement:
        """Time ``fn`` with this session's plan, retrying a measurement disturbed by other
        processes (or, with :meth:`start_gate`, by a slow phase of the machine) while the
        session's patience lasts."""
        self.timings += 1
        return measure(fn, self.target, self.plan, self.patience, gate=self.gate)

    def time_case(self, case: Case) -> Measurement:
        """Build and time one operator case (no row recorded). A memory-bound operator smaller
        than the last-level cache is timed call by call with cold caches, as it runs between a
        model's GEMMs (a larger one streams from memory and flushes the caches itself)."""
        fn = build(case, self.target, self._buffers)
        if case.family == "memory" and self.evict is not None and case.op.bytes < self.target.cache_bytes:
            self.timings += 1
            return measure(fn, self.target, self.plan, self.patience, gate=self.gate, prepare=self.evict)
        return self.time(fn)

    def time_cases(self, cases: list[Case], held_out: bool = False) -> list[tuple[Case, Measurement]]:
        """Time each case and record its raw row.

        A case that fails (an operator the device does not support in that dtype) drops its
        whole table, since tables must be full grids; the reason goes into the notes.
        """
        done = []
        for case in cases:
            if case.key in self.failed_tables:
                continue
            point = (*case.key, case.coords, held_out)
            if point in self._points:  # a table point is measured once (tables are grids)
                continue
            self._points.add(point)
            try:
                m = self.time_case(case)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                self.failed_tables[case.key] = reason
                kind, dtype, variant = case.key
                self.notes.append(
                    f"table {kind}/{dtype}/{variant or '-'} not measured: {case.label()} failed ({reason})"
                )
                continue
            self.rows.append(case_row(case, m, held_out))
            done.append((case, m))
        if not held_out and self.failed_tables:
            failed = set(self.failed_tables)
            self.rows = [
                r
                for r in self.rows
                if r["held_out"] or (r["kind"], r["dtype"], r["variant"]) not in failed or r["family"] == "block"
            ]
        return done

    def gemm_rate(self, dtype: str) -> float:
        """A rough GEMM throughput of ``dtype`` in FLOP/s (to size the grid)."""
        case = gemm_case(128, 1024, 1024, dtype)
        return case.op.flops / self.time_case(case).median_s

    def attention_rate(self, dtype: str) -> float:
        """A rough causal-attention throughput of ``dtype`` in FLOP/s (to size the grid)."""
        case = attention_prefill_case(8, 256, 0, 64, dtype)
        return case.op.flops / self.time_case(case).median_s


def reference_gate(target: Target) -> LevelGate:
    """The :class:`.timing.LevelGate` of ``target``: a small multi-threaded fp32 GEMM with
    weights kept in cache (64x512x512 on a CPU, 1024x1024x1024 on a GPU), the operator found
    most sensitive to other tenants of a virtual machine's cores."""
    import torch

    m, n = (1024, 1024) if target.is_cuda else (64, 512)
    x = torch.randn(m, n, device=target.torch_device)
    w = torch.randn(n, n, device=target.torch_device)
    return LevelGate(lambda: torch.nn.functional.linear(x, w), target)


def cache_evictor(target: Target) -> Callable[[], Any] | None:
    """On a CPU, a GEMM of a decode step's shape whose weights (1.1 x the last-level cache,
    fp32) stream through and flush every cache level, as a model's GEMMs do for the small
    operators between them; ``None`` on a GPU, whose kernels do not share the host's caches
    with the framework.

    Measured on the 2-vCPU EPYC (32 MiB L3): a tiny add takes 1.5 us back to back, 2.8 us after
    a 4 MiB GEMM, 14 us after 16 MiB and 20 us after 32 MiB.
    """
    if target.is_cuda:
        return None
    import torch

    rows = max(1024, int(1.1 * target.cache_bytes) // (1024 * 4))
    x = torch.randn(8, 1024)
    weight = torch.randn(rows, 1024)
    return lambda: torch.nn.functional.linear(x, weight)


def _operator_sections(session: Session) -> None:
    target, grid = session.target, session.grid
    with session.section("gemm"):
        for dtype in target.dtypes:
            session.time_cases(grid.gemm_cases(dtype, session.gemm_rate(dtype)))
    with session.section("attention"):
        for dtype in target.dtypes:
            session.time_cases(grid.attention_cases(dtype, session.attention_rate(dtype)))
    with session.section("memory"):
        for dtype in target.dtypes:
            by_impl: dict[str, list[tuple[Case, Measurement]]] = {}
            for case, m in session.time_cases(grid.memory_cases(dtype)):
                by_impl.setdefault(case.impl, []).append((case, m))
            for impl, measured in by_impl.items():
                refine_steps(session, impl, dtype, measured)
    with session.section("embedding"):
        for dtype in target.dtypes:
            session.time_cases(grid.embedding_bag_cases(dtype))
    with session.section("conv"):
        for dtype in conv_dtypes(target):
            session.time_cases(grid.conv_cases(dtype))


#: A rise of time between two adjacent sizes this much steeper than the rise of the size marks
#: a step (an operator switching to its multi-threaded path, say), which :func:`refine_steps`
#: locates.
STEP_RATIO = 1.5


def refine_steps(
    session: Session, impl: str, dtype: str, measured: list[tuple[Case, Measurement]], max_probes: int = 6
) -> int:
    """Add points to a memory-bound table where its time jumps between two grid sizes.

    An eager CPU operator switches to its multi-threaded path above a size (torch's grain of
    32,768 elements), which on a virtual machine can cost tens of microseconds more than the
    single-threaded path just below: a step that log-space interpolation between grid points a
    factor of two apart would smear over the whole interval. Where time rises more than
    :data:`STEP_RATIO` times faster than size between adjacent points, the interval is bisected
    (in log space, ``max_probes`` times at most, to one row of elements) and every probe is
    recorded as a table point, so that the step is pinned between two close points. Returns
    the number of points added.
    """
    from simulator.calibrate.operators import memory_case

    points = sorted(((c.params["rows"] * c.params["row"], m.median_s) for c, m in measured))
    row_elements = max(1, min(c.params["row"] for c, _ in measured))
    added = 0
    for (lo, t_lo), (hi, t_hi) in itertools.pairwise(points):
        if t_hi / t_lo <= STEP_RATIO * hi / lo:
            continue
        for _ in range(max_probes):
            if hi - lo <= row_elements:
                break
            case = memory_case(impl, round(math.sqrt(lo * hi) / row_elements) * row_elements, dtype)
            mid = case.params["rows"] * case.params["row"]
            if not lo < mid < hi:
                break
            done = session.time_cases([case])
            if not done:
                break
            added += 1
            t_mid = done[0][1].median_s
            if t_mid / t_lo > STEP_RATIO * mid / lo:
                hi, t_hi = mid, t_mid
            else:
                lo, t_lo = mid, t_mid
    return added


def check_dtypes(dtypes: Sequence[str] | None) -> list[str] | None:
    """``dtypes`` as a list, each a dtype the harness measures (fp32, bf16, fp16); ``None``
    for all. Raises :class:`LdsimError` naming an unknown one."""
    if dtypes is None:
        return None
    wanted = [d.strip() for d in dtypes if d.strip()]
    for dtype in wanted:
        if dtype not in TORCH_DTYPES:
            raise LdsimError(f"--dtypes: unknown dtype '{dtype}'{did_you_mean(dtype, list(TORCH_DTYPES))}")
    if not wanted:
        raise LdsimError("--dtypes: give at least one dtype (fp32, bf16, fp16)")
    return wanted


def conv_dtypes(target: Target) -> list[str]:
    """Dtypes in which convolutions are measured: all on a GPU; on a CPU those oneDNN runs
    fast (fp32 and bf16; fp16 convolutions fall back to slow reference code)."""
    if target.is_cuda:
        return list(target.dtypes)
    return [d for d in target.dtypes if d in ("fp32", "bf16")]


def calibrate(
    device: str,
    out: Path,
    quick: bool = False,
    threads: int | None = None,
    name: str | None = None,
    command: str = "ldsim calibrate",
    progress: Callable[[str], None] | None = None,
    grid: Grid | None = None,
    dtypes: Sequence[str] | None = None,
) -> CalibrationResult:
    """Measure ``device`` (``cpu``, ``cuda``, ``cuda:N``) and write a profile to ``out``.

    Writes ``out`` (YAML) and, beside it, ``<stem>.tables.csv``, ``<stem>.collectives.csv``
    and ``<stem>.raw.csv``, each atomically, and loads the written profile with
    :func:`simulator.hardware.load_profile` before returning. ``command`` is recorded as the
    command line in the provenance. The measurements run in a separate measuring process
    (:mod:`.process`); ``progress`` receives its progress lines. Raises :class:`LdsimError`
    (one line, naming the argument) for an ``out`` that is not a ``.yaml`` path, a device
    that is not ``cpu``/``cuda``/``cuda:N`` or is not there, or torch missing.

    ``grid`` replaces the device's standard grid of shapes (:func:`.grids.grid_for`), for a
    smaller or a targeted calibration; ``dtypes`` limits the dtypes measured to those given
    (each must be one the device runs; default: every one it runs at a useful speed).
    """
    from simulator.calibrate.process import run_task

    start = time.perf_counter()
    if Path(out).suffix not in (".yaml", ".yml"):
        raise LdsimError(f"--out {out}: a profile is a YAML file; give a path ending in .yaml")
    parse_device(device)  # a bad --device fails here, before torch or a process is started
    if threads is not None and threads < 1:
        raise LdsimError(f"--threads must be >= 1, got {threads}")
    wanted = check_dtypes(dtypes)
    require_torch_installed("ldsim calibrate")
    args = {
        "device": device,
        "out": str(Path(out).resolve()),
        "quick": quick,
        "threads": threads,
        "name": name,
        "command": command,
        "grid": None if grid is None else dataclasses.asdict(grid),
        "dtypes": wanted,
    }
    found = run_task("calibrate", args, progress)
    return CalibrationResult(
        Path(found["profile_path"]),
        {k: float(v) for k, v in found["sections_s"].items()},
        time.perf_counter() - start,
        int(found["rows"]),
        list(found["notes"]),
    )


def calibrate_here(
    device: str,
    out: str,
    quick: bool,
    threads: int | None,
    name: str | None,
    command: str,
    progress: Callable[[str], None] | None = None,
    grid: dict[str, Any] | None = None,
    dtypes: list[str] | None = None,
) -> dict[str, Any]:
    """The body of :func:`calibrate`, run inside the measuring process; returns a JSON-able
    summary (profile path, seconds per section, raw rows, notes). ``grid`` is a
    :class:`Grid` as a dict (``dataclasses.asdict``)."""
    from simulator.calibrate import blocks, collectives, transfers, writer

    start = time.perf_counter()
    out_path = Path(out)
    require_torch("ldsim calibrate")
    target = resolve_target(device, threads)
    probe_dtypes(target)
    if dtypes is not None:
        for dtype in dtypes:
            if dtype not in target.dtypes:
                why = target.skipped_dtypes.get(dtype, "not measured on this device")
                raise LdsimError(f"--dtypes {','.join(dtypes)}: {dtype} cannot be measured on {device}: {why}")
        target.dtypes = [d for d in target.dtypes if d in dtypes]
    shapes = grid_for(target.kind, quick) if grid is None else grid_from_dict(grid)
    session = Session(target, shapes, QUICK if quick else FULL, progress, quick)
    if progress is not None:
        progress(
            f"calibrating {target.describe()}: dtypes {', '.join(target.dtypes)}"
            + "".join(f"; {d} skipped ({why})" for d, why in target.skipped_dtypes.items())
        )
    with steady_allocator(target) as allocator_note:
        session.start_gate()
        if allocator_note:
            session.notes.append(allocator_note)
        session.notes.append(
            "OpenMP workers spin between operators as in a busy serving process ("
            + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in MEASURING_ENV)
            + ")"
        )
        _operator_sections(session)
        with session.section("transfers"):
            figures = transfers.measure_transfers(session, out_path.parent)
        with session.section("collectives"):
            figures.update(collectives.measure_collectives(session))
        with session.section("blocks"):
            blocks.measure_blocks(session)
    for note in (session.load_note(), session.contention_note()):
        if note:
            session.notes.append(note)
    name = name or (out_path.stem)
    with session.section("write"):
        path = writer.write_profile(session, out_path, name, command, quick, figures, time.perf_counter() - start)
    return {
        "profile_path": str(path),
        "sections_s": session.sections_s,
        "rows": len(session.rows),
        "notes": session.notes,
    }
