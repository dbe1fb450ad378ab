"""Executor workers: one process per executor device, running real models on request.

A worker is started with :func:`start_worker` (a fresh ``python -m
simulator.executor.worker`` process, so nothing of the caller's ``__main__`` is re-run) and
serves one :class:`~multiprocessing.connection.Connection` to the coordinator. It first makes
itself a steady measuring environment, the same one the profiler measures in: its own CPU cores
(``sched_setaffinity``) and that many torch threads, ``OMP_WAIT_POLICY=PASSIVE``, and glibc
malloc keeping freed memory (:func:`simulator.calibrate.device.steady_allocator`), or one GPU.
Then it answers messages, each a tuple whose first item names it:

* ``("build", replica, arch, dtype, seed, max_samples, warmup)`` -- build the replica's model
  (:func:`simulator.executor.torch_models.build_runner`) and run the ``warmup`` payloads;
  answers ``("built", replica, seconds)``.
* ``("batch", replica, payload)`` -- one forward pass of a non-autoregressive model
  (``payload``: the number of samples, or the sequence lengths of an encoder batch);
  ``("step", replica, items, n_decode, releases)`` -- one decoder iteration (``items``: tuples
  of :class:`~simulator.executor.torch_models.StepItem` fields; ``releases``: ``(request,
  forget)`` KV slots to free first). Both answer ``("done", replica, start, end)``: the
  worker's ``time.perf_counter()`` when it began and when the step's outputs existed (after the
  argmax that samples them). ``perf_counter`` is the system's monotonic clock, which the
  coordinator shares.
* ``("drop", replica)`` -- forget a replica's model (answers ``("dropped", replica)``);
  ``("profile", kwargs)`` -- measure a profile (:func:`simulator.executor.profile.measure_here`);
  ``("stop",)`` -- exit.

A failure answers ``("error", replica, message)`` and the worker goes on. A worker never
outlives its coordinator: it runs in a session of its own and ignores SIGINT (a terminal's
Ctrl-C reaches only the coordinator, which stops it), asks Linux to kill it when its parent
dies (``PR_SET_PDEATHSIG``), and exits when its connection closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["WorkerConfig", "start_worker", "worker_main"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerConfig:
    """Where a worker runs: ``device`` (``cpu`` or ``cuda:N``), the CPU ``cores`` it is pinned
    to (empty: no pinning), its torch intra-op ``threads``."""

    index: int
    device: str
    cores: tuple[int, ...]
    threads: int

    def describe(self) -> str:
        """One line: the device and its cores or threads."""
        if self.device.startswith("cuda"):
            return self.device
        where = f"cores {','.join(map(str, self.cores))}" if self.cores else "any core"
        return f"cpu ({where}, {self.threads} thread{'s' if self.threads != 1 else ''})"


def start_worker(config: WorkerConfig) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start a worker process (``python -m simulator.executor.worker``, in its own session so
    that a terminal's Ctrl-C reaches only the coordinator); return it and the coordinator's end
    of its connection. The worker's death closes the connection (EOF)."""
    parent, child = multiprocessing.Pipe(duplex=True)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by torch's OpenMP at import: set before it
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "simulator.executor.worker", json.dumps(asdict(config)), str(child.fileno())]
    try:
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), env=env, start_new_session=True)
    finally:
        child.close()
    return proc, parent


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """The worker process's body (see the module docstring)."""
    _die_with_parent()
    if os.getppid() == 1:  # the parent died before the line above took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.cores and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(config.cores))
    import torch

    from simulator.calibrate.device import resolve_target, steady_allocator

    target = resolve_target(config.device, config.threads if not config.device.startswith("cuda") else None)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    runners: dict[int, Any] = {}
    with steady_allocator(target):
        conn.send(("ready", os.getpid(), target.describe(), str(torch.__version__)))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "stop":
                return
            try:
                reply = _handle(msg, runners, target)
            except Exception as exc:  # reported to the coordinator, which ends the run
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                reply = ("error", msg[1] if len(msg) > 1 and isinstance(msg[1], int) else -1, detail)
            try:
                conn.send(reply)
            except (EOFError, OSError, BrokenPipeError):
                return


def _handle(msg: tuple[Any, ...], runners: dict[int, Any], target: Any) -> tuple[Any, ...]:
    kind = msg[0]
    if kind == "step":
        _, replica, items, n_decode, releases = msg
        start = time.perf_counter()
        runner = runners[replica]
        for request_id, forget in releases:
            runner.release(request_id, forget)
        runner.step(_items(items), n_decode)
        return ("done", replica, start, time.perf_counter())
    if kind == "batch":
        _, replica, payload = msg
        start = time.perf_counter()
        runners[replica].run(payload)
        return ("done", replica, start, time.perf_counter())
    if kind == "drop":
        runners.pop(msg[1], None)
        return ("dropped", msg[1])
    if kind == "build":
        from simulator.executor.torch_models import build_runner

        _, replica, arch, dtype, seed, max_samples, warmup = msg
        start = time.perf_counter()
        runner = build_runner(arch, dtype, target.torch_device, seed, max_samples)
        runners[replica] = runner
        for payload in warmup:
            if isinstance(payload, tuple) and payload and payload[0] == "step":
                _, items, n_decode, releases = payload
                for request_id, forget in releases:
                    runner.release(request_id, forget)
                runner.step(_items(items), n_decode)
            else:
                runner.run(payload)
        return ("built", replica, time.perf_counter() - start)
    if kind == "profile":
        from simulator.executor.profile import measure_here

        return ("profiled", measure_here(target=target, **msg[1]))
    raise ValueError(f"unknown worker message {kind!r}")


def _items(items: list[tuple[int, int, int, int, bool]]) -> list[Any]:
    from simulator.executor.torch_models import StepItem

    return [StepItem(*item) for item in items]


def _main(argv: list[str]) -> int:
    """Entry point: ``python -m simulator.executor.worker CONFIG_JSON FD``."""
    raw = json.loads(argv[0])
    config = WorkerConfig(int(raw["index"]), str(raw["device"]), tuple(raw["cores"]), int(raw["threads"]))
    worker_main(Connection(int(argv[1])), config)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
