"""``ldsim execute``: run an experiment's runs on real models and write the simulator's results.

:func:`execute` resolves a run exactly as the simulator does, checks that the executor can run
it (:func:`~simulator.executor.engine.check_executable`), starts one worker per executor
device (:func:`~simulator.executor.engine.plan_workers`), builds each replica's model on its
worker and warms it up on the batch shapes the run will use (first calls allocate and select
kernels), then executes it (:class:`~simulator.executor.engine.Execution`). :func:`execute_runs`
writes each run as :func:`simulator.results.write_run` writes a simulated one -- so ``ldsim
report`` draws it unchanged -- plus ``steps.parquet`` (the step log) and an ``executor``
section in ``config.resolved.yaml`` (workers, devices, torch version, whether it finished).
A run already executed to the end with the same configuration is not executed again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simulator.config import RunSpec
from simulator.executor.engine import Execution, ExecutionResult, WorkerPool, check_executable, plan_workers
from simulator.executor.worker import WorkerConfig
from simulator.experiment import ModelPlan, ResolvedRun
from simulator.models import Decoder, Encoder

__all__ = [
    "STEPS_FILE",
    "ExecutedRun",
    "build_models",
    "execute",
    "execute_runs",
    "foreign_cpu_pct",
    "is_executed",
    "machine_load",
    "max_batch_items",
    "require_torch",
    "wait_quiet",
    "warmup_payloads",
    "worker_layout",
    "write_executed",
]

#: Extra files of an executed run beside the simulator's.
STEPS_FILE = "steps.parquet"


def machine_load() -> dict[str, float | None]:
    """How busy this machine is now: the 1-minute load average and, on Linux, the CPU pressure
    (``/proc/pressure/cpu`` ``some avg10``: % of the last 10 s in which a runnable task waited)."""
    try:
        load1: float | None = os.getloadavg()[0]
    except OSError:
        load1 = None
    psi = None
    try:
        with open("/proc/pressure/cpu", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("some"):
                    psi = float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return {"loadavg_1m": load1, "cpu_pressure_avg10_pct": psi}


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """``pid -> (parent pid, user + system clock ticks)`` of every process (Linux ``/proc``)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def foreign_cpu_pct(interval_s: float = 1.0) -> float | None:
    """CPU used over ``interval_s`` by processes outside this one and its descendants, in % of
    one core (``None`` where ``/proc`` cannot tell)."""
    if not os.path.isdir("/proc"):
        return None
    before = _cpu_ticks()
    time.sleep(interval_s)
    after = _cpu_ticks()
    ours = {os.getpid()}
    grew = True
    while grew:  # this process and everything it started
        new = {pid for pid, (ppid, _) in after.items() if ppid in ours} - ours
        grew = bool(new)
        ours |= new
    ticks = sum(t - before[pid][1] for pid, (_, t) in after.items() if pid in before and pid not in ours)
    return 100.0 * ticks / os.sysconf("SC_CLK_TCK") / interval_s


def wait_quiet(
    max_wait_s: float, threshold_pct: float = 15.0, window_s: int = 3, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Wait (up to ``max_wait_s``) until other processes have used less than ``threshold_pct``
    of a core for ``window_s`` seconds in a row; return ``{"waited_s", "quiet"}``. Timings on a
    machine that other work shares are noisy, and this is how to ask for a quiet one."""
    start = time.monotonic()
    calm = 0
    told = False
    while True:
        used = foreign_cpu_pct(1.0)
        if used is None:
            return {"waited_s": 0.0, "quiet": None}
        calm = calm + 1 if used < threshold_pct else 0
        waited = time.monotonic() - start
        if calm >= window_s:
            return {"waited_s": round(waited, 1), "quiet": True}
        if waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "quiet": False}
        if not told and progress is not None and used >= threshold_pct:
            progress(
                f"waiting (up to {max_wait_s:.0f} s) for a quiet machine: other processes use {used:.0f}% of a core"
            )
            told = True


def require_torch(what: str) -> None:
    """Fail with the install hint when torch cannot be imported (checked without importing)."""
    from simulator.calibrate.device import require_torch_installed

    require_torch_installed(what)


def worker_layout(
    resolved: ResolvedRun, device: str, cores_per_device: int | None
) -> tuple[list[WorkerConfig], dict[int, int]]:
    """The workers of a run (one per device its replicas occupy) and each replica's worker."""
    devices = sorted({p.devices[0] for p in resolved.cluster.placements})
    configs = plan_workers(len(devices), device, cores_per_device)
    worker_of = {p.replica_id: devices.index(p.devices[0]) for p in resolved.cluster.placements}
    return configs, worker_of


def max_batch_items(plan: ModelPlan, table: Any, model_code: int) -> int:
    """The largest batch (samples, or running sequences for a decoder) the replica can see."""
    rows = table.model == model_code
    per_request = int(table.input_samples[rows].max()) if rows.any() else 1
    requests = plan.max_batch_size or 1
    if isinstance(plan.arch, Decoder):
        return max(1, min(requests, int(rows.sum()) or 1))
    return max(1, min(requests * per_request, int(table.input_samples[rows].sum()) or 1))


def warmup_payloads(plan: ModelPlan, max_samples: int, lengths: np.ndarray) -> list[Any]:
    """Steps run once before the clock starts, covering the shapes the run will use: every
    batch size up to ``max_samples`` (geometrically spaced beyond 32); for encoders each with
    the shortest, median and longest of the model's request ``lengths``; for decoders prefills
    of those lengths and decode steps of up to ``max_samples`` sequences."""
    arch = plan.arch
    picks = sorted({int(x) for x in np.percentile(lengths, [0, 50, 100])}) if len(lengths) else [16]
    if isinstance(arch, Decoder):
        return _decoder_warmup(arch, max_samples, picks)
    sizes = list(range(1, max_samples + 1))
    if len(sizes) > 32:
        sizes = sorted({*sizes[:32], *np.unique(np.geomspace(33, max_samples, 16).astype(int)).tolist()})
    if isinstance(arch, Encoder):
        return [[length] * b for b in sizes for length in picks]
    return sizes + sizes


def _decoder_warmup(arch: Decoder, max_seqs: int, lengths: list[int]) -> list[Any]:
    """Prefill steps of each length and decode steps of up to ``max_seqs`` sequences, under
    negative request ids, all released at the end."""
    out: list[Any] = []
    ids = [-(i + 1) for i in range(max_seqs)]
    length = max(1, min(max(lengths), arch.max_context_tokens - 4))
    for n in sorted({1, max(1, max_seqs // 2), max_seqs}):
        for p in lengths:
            p = max(1, min(p, arch.max_context_tokens - 4))
            out.append(("step", [(ids[0], p, 0, p, True)], 0, [(ids[0], True)]))
        prefill = [(i, length, 0, length, True) for i in ids[:n]]
        out.append(("step", prefill, 0, [(i, True) for i in ids]))
        for k in range(2):
            out.append(("step", [(i, length, length + k, 1, True) for i in ids[:n]], n, []))
    out.append(("step", [], 0, [(i, True) for i in ids]))
    return out


def build_models(
    pool: WorkerPool, execution: Execution, worker_of: dict[int, int], progress: Callable[[str], None] | None
) -> None:
    """Build (and warm up) every replica's model on its worker."""
    resolved = execution.resolved
    table = execution.table
    codes = {name: i for i, name in enumerate(table.model_names)}
    for p in resolved.cluster.placements:
        plan = resolved.models[p.model]
        code = codes[p.model]
        max_samples = max_batch_items(plan, table, code)
        lengths = table.input_tokens[table.model == code]
        warmup = warmup_payloads(plan, max_samples, lengths)
        seed = int(np.random.SeedSequence([resolved.run.seed, p.replica_id]).generate_state(1)[0])
        index = worker_of[p.replica_id]
        msg = ("build", p.replica_id, plan.arch, plan.dtype, seed, max_samples, warmup)
        _, _, seconds = pool.request(index, msg, 600.0, f"build replica {p.replica_id} ({plan.arch.name})")
        if progress is not None:
            progress(
                f"replica {p.replica_id} ({plan.arch.name}) built and warmed up on worker {index} in {seconds:.1f} s"
            )


@contextlib.contextmanager
def _pinned(configs: list[WorkerConfig]) -> Iterator[None]:
    """Keep this (coordinating) process off the workers' cores while executing, when there
    are cores left for it."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    taken = {c for cfg in configs for c in cfg.cores}
    left = before - taken
    if not left or not taken:
        yield
        return
    try:
        os.sched_setaffinity(0, left)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def execute(
    run: RunSpec,
    device: str = "cpu",
    cores_per_device: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_workers: Callable[[list[int]], None] | None = None,
) -> tuple[ResolvedRun, ExecutionResult]:
    """Resolve and execute one run on real models; return ``(resolved, result)``.

    ``on_workers`` receives the worker process ids once they run (for tests that kill one).
    """
    from simulator.experiment import resolve

    require_torch("ldsim execute")
    resolved = resolve(run)
    check_executable(resolved)
    configs, worker_of = worker_layout(resolved, device, cores_per_device)
    with WorkerPool(configs) as pool:
        if progress is not None:
            progress("workers: " + "; ".join(f"{w.config.index}: {w.description}" for w in pool.workers))
        if on_workers is not None:
            on_workers(pool.pids)
        execution = Execution(resolved, pool, worker_of)
        build_models(pool, execution, worker_of, progress)
        before = machine_load()
        with _pinned(configs):
            result = execution.run()
        result.load = {"before": before, "after": machine_load()}
    return resolved, result


@dataclass(frozen=True)
class ExecutedRun:
    """How one executed run ended: ``ok``, ``skipped`` (already executed), ``stopped`` (written,
    but cut short: ``message`` says why) or ``failed`` (nothing written)."""

    run_id: str
    status: str
    message: str = ""
    summary: dict[str, Any] | None = None


def is_executed(out_dir: Path, run: RunSpec) -> bool:
    """True if ``out_dir/<run-id>`` holds this run executed to the end."""
    from simulator.results import is_complete

    folder = out_dir / run.run_id
    if not is_complete(out_dir, run) or not (folder / STEPS_FILE).is_file():
        return False
    try:
        config = yaml.safe_load((folder / "config.resolved.yaml").read_text())
        return bool(config["executor"]["finished"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def write_executed(
    out_dir: Path, run: RunSpec, resolved: ResolvedRun, result: ExecutionResult, device: str
) -> dict[str, Any]:
    """Write an executed run's folder (the simulator's files, the step log, the executor
    section); return its summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simulator.results import atomic_write_text, write_run

    summary = write_run(out_dir, run, resolved, result)
    folder = out_dir / run.run_id
    tmp = folder / f".{STEPS_FILE}.{os.getpid()}.tmp"
    pq.write_table(pa.Table.from_pandas(result.steps, preserve_index=False), tmp, compression="zstd")
    os.replace(tmp, folder / STEPS_FILE)
    config_path = folder / "config.resolved.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["executor"] = {
        "finished": result.stopped is None,
        "stopped": result.stopped,
        "device": device,
        "workers": result.workers,
        "steps": len(result.steps),
        "machine_load": result.load,
        "note": "requests.parquet holds real timestamps from running the models; the profile named above"
        " only prices steps_parquet's predicted_s column",
    }
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    return summary


def execute_runs(
    runs: Sequence[RunSpec],
    out_dir: Path,
    device: str = "cpu",
    cores_per_device: int | None = None,
    progress: Callable[[str], None] | None = None,
    wait_quiet_s: float = 0.0,
) -> list[ExecutedRun]:
    """Execute every run not already executed in ``out_dir``, one after another (they share
    this machine's cores); write ``summary.csv``. An interrupted run is written and stops the
    sweep (the ``KeyboardInterrupt`` is raised again after writing). With ``wait_quiet_s``,
    each run first waits up to that long for a quiet machine (:func:`wait_quiet`)."""
    from simulator.results import write_summary_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    interrupted = False
    try:
        for run in runs:
            if is_executed(out_dir, run):
                outcomes.append(ExecutedRun(run.run_id, "skipped"))
                continue
            quiet = wait_quiet(wait_quiet_s, progress=progress) if wait_quiet_s > 0 else None
            if progress is not None:
                progress(f"executing {run.run_id}")
            resolved, result = execute(run, device, cores_per_device, progress)
            if quiet is not None:
                result.load["wait_quiet"] = quiet
            summary = write_executed(out_dir, run, resolved, result, device)
            if result.stopped is not None:
                outcomes.append(ExecutedRun(run.run_id, "stopped", result.stopped, summary))
                interrupted = "interrupted" in result.stopped
                break
            outcomes.append(ExecutedRun(run.run_id, "ok", summary=summary))
    finally:
        write_summary_csv(out_dir, [r.run_id for r in runs])
    if interrupted:
        raise KeyboardInterrupt
    return outcomes
