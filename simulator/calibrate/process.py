"""The measuring process: every timing runs in a fresh Python process with a known environment.

Two process-wide settings decide whether eager CPU timings are reproducible, and both must be
in place before torch is first imported, which the calling process may already have done:

* OpenMP's wait policy. An intra-op worker that has gone to sleep between two operators must be
  woken for the next, which costs tens of microseconds and, on a virtual machine, sometimes a
  whole scheduler tick (4 ms, for a 5 us operator); a worker that never sleeps
  (``OMP_WAIT_POLICY=ACTIVE``) keeps a CPU busy even while the process waits for others (its
  collective workers). The measuring process lets workers spin for about 20 ms
  (``GOMP_SPINCOUNT``), as in a serving process running operators back to back, and sleep
  after that.
* The host allocator (see :func:`simulator.calibrate.device.steady_allocator`).

So :func:`run_task` starts ``python -m simulator.calibrate`` (:func:`child_main`) in its own session
(process group) with those settings, forwards its progress lines, and returns its JSON result.
The child never outlives the call: on an error, a timeout or an interrupt it is terminated and
then its whole process group (collective workers included) is killed. A user error in the
child (:class:`LdsimError`) is raised again in the parent with the same message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.errors import LdsimError

__all__ = ["MEASURING_ENV", "child_main", "run_task"]

#: Environment of the measuring process (a value already set by the user is kept): OpenMP
#: workers spin for about 20 ms after a parallel region before sleeping (GNU and Intel OpenMP).
MEASURING_ENV = {"GOMP_SPINCOUNT": "1000000", "KMP_BLOCKTIME": "20"}


def run_task(
    task: str, args: dict[str, Any], progress: Callable[[str], None] | None = None, timeout_s: float = 3600.0
) -> dict[str, Any]:
    """Run ``task`` (``calibrate`` or ``check``) with ``args`` in a measuring process.

    ``progress`` receives each line the child prints. Returns the child's result (a JSON
    object). Raises :class:`LdsimError` for a user error or a timeout, ``RuntimeError`` for a
    crash (with the end of its output).
    """
    folder = Path(tempfile.mkdtemp(prefix="ldsim-measure-"))
    request = folder / "request.json"
    result = folder / "result.json"
    request.write_text(json.dumps({"task": task, "args": args}), encoding="utf-8")
    env = dict(os.environ)
    for key, value in MEASURING_ENV.items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "simulator.calibrate", str(request), str(result)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            del tail[:-40]
            if progress is not None and not line.startswith("Traceback"):
                progress(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise LdsimError(f"ldsim {task}: the measuring process did not finish within {timeout_s:.0f} s")
            time.sleep(0.05)
        reader.join(timeout=5)
        if result.is_file():
            payload = json.loads(result.read_text(encoding="utf-8"))
            if "error" in payload:
                raise LdsimError(payload["error"])
            return dict(payload["result"])
        raise RuntimeError(
            f"ldsim {task}: the measuring process exited with status {proc.returncode}:\n" + "\n".join(tail[-20:])
        )
    finally:
        _stop(proc)
        for path in (request, result):
            path.unlink(missing_ok=True)
        folder.rmdir()


def _stop(proc: subprocess.Popen[str]) -> None:
    """End the child and anything it started (its process group), politely first."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the child's session: leftover workers included
    if proc.poll() is None:
        proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def child_main(request_path: str, result_path: str) -> int:
    """The measuring process (``python -m simulator.calibrate REQUEST RESULT``): run the
    requested task, write ``{"result": ...}`` or ``{"error": ...}`` to ``RESULT``; the exit
    status is 0, or 2 after a user error."""

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # run finally blocks: collective workers are stopped

    signal.signal(signal.SIGTERM, on_term)
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    task, args = request["task"], request["args"]
    try:
        if task == "calibrate":
            from simulator.calibrate.harness import calibrate_here

            payload: dict[str, Any] = {"result": calibrate_here(**args, progress=print)}
        elif task == "check":
            from simulator.calibrate.check import check_here

            payload = {"result": check_here(**args, progress=print)}
        else:
            raise LdsimError(f"unknown measuring task {task!r}")
    except LdsimError as exc:
        payload = {"error": str(exc)}
    tmp = result_path + ".tmp"
    Path(tmp).write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, result_path)
    return 2 if "error" in payload else 0
