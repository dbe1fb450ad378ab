"""Running the runs of a sweep: in this process or in a process pool, resumably.

Each run is resolved, simulated and written by itself (see :mod:`simulator.results`), so a
run that fails is reported with its error written beside the others
(``DIR/<run-id>.error.txt``) and takes no other run with it; a run already finished in
``DIR`` with the same configuration is skipped, so repeating an interrupted command resumes
it. ``jobs > 1`` runs in a pool of worker processes with a progress bar.
"""

from __future__ import annotations

import multiprocessing
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simulator.config import RunSpec
from simulator.errors import LdsimError
from simulator.results import atomic_write_text, is_complete, write_run, write_summary_csv

__all__ = ["RunOutcome", "execute_run", "run_sweep", "simulate"]


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended: ``ok``, ``skipped`` (already finished) or ``failed`` (with why)."""

    run_id: str
    status: str
    message: str = ""
    wall_s: float = 0.0


def simulate(run: RunSpec) -> tuple[Any, Any]:
    """Resolve and simulate one run in this process; return ``(resolved, result)``."""
    from simulator.engine import Simulation
    from simulator.experiment import resolve

    resolved = resolve(run)
    return resolved, Simulation(resolved).run()


def execute_run(run: RunSpec, out_dir: Path) -> RunOutcome:
    """Simulate ``run`` and write its folder; never raises for a failure of the run itself."""
    try:
        resolved, result = simulate(run)
        write_run(out_dir, run, resolved, result)
        return RunOutcome(run.run_id, "ok", wall_s=result.wall_s)
    except LdsimError as exc:
        message = str(exc)
        detail = message
    except Exception as exc:  # a crash inside one run must not lose the others
        message = f"{type(exc).__name__}: {exc}"
        detail = traceback.format_exc()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{run.run_id}.error.txt", detail)
    return RunOutcome(run.run_id, "failed", message)


def run_sweep(
    runs: Sequence[RunSpec],
    out_dir: Path,
    jobs: int = 1,
    progress: bool = True,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run every run not already complete in ``out_dir``; write ``summary.csv``; return outcomes
    in the order of ``runs``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, RunOutcome] = {}
    todo = []
    for run in runs:
        if is_complete(out_dir, run):
            outcomes[run.run_id] = RunOutcome(run.run_id, "skipped")
        else:
            todo.append(run)
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or len(todo) <= 1, file=sys.stderr)
    try:
        if jobs <= 1 or len(todo) <= 1:
            for run in todo:
                outcome = execute_run(run, out_dir)
                outcomes[run.run_id] = outcome
                if on_outcome:
                    on_outcome(outcome)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
                futures = {pool.submit(execute_run, run, out_dir): run for run in todo}
                try:
                    for future in as_completed(futures):
                        run = futures[future]
                        try:
                            outcome = future.result()
                        except Exception as exc:  # a worker that died (e.g. out of memory)
                            outcome = RunOutcome(run.run_id, "failed", f"worker process failed: {exc}")
                            atomic_write_text(out_dir / f"{run.run_id}.error.txt", outcome.message)
                        outcomes[run.run_id] = outcome
                        if on_outcome:
                            on_outcome(outcome)
                        bar.update(1)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        write_summary_csv(out_dir, [r.run_id for r in runs])
    return [outcomes[r.run_id] for r in runs]
