"""The machine being measured: torch, the device, its dtypes, and how to synchronise with it.

Everything that depends on *where* the harness runs lives here: importing torch (an optional
extra, imported only inside functions), resolving ``cpu`` / ``cuda[:N]`` into a
:class:`Target`, describing the host and the device for a profile's provenance, probing which
dtypes the device runs at a useful speed, and putting the host allocator into the steady state
a long-running serving process reaches (so that operator times do not include page faults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import platform
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from simulator.errors import LdsimError

__all__ = [
    "INSTALL_HINT",
    "TORCH_DTYPES",
    "LoadMeter",
    "Target",
    "cpu_model_name",
    "host_memory_gib",
    "parse_device",
    "probe_dtypes",
    "require_torch",
    "require_torch_installed",
    "resolve_target",
    "steady_allocator",
    "utc_now",
]

#: What to run when torch is missing.
INSTALL_HINT = (
    "install it with `pip install 'ldsim[torch]'` (or the calibrate extra, `pip install 'ldsim[calibrate]'`),"
    " or torch alone: `pip install torch==2.13.0` (the version the shipped CPU profile was measured with;"
    " CPU-only wheels: add `--index-url https://download.pytorch.org/whl/cpu`); the rest of ldsim runs without it"
)

#: ldsim dtype names -> torch dtype attribute names.
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def require_torch(what: str = "this command") -> Any:
    """Import and return ``torch``; an :class:`LdsimError` with the install hint when absent."""
    try:
        import torch
    except ImportError as exc:  # also raised when sys.modules['torch'] is None
        raise LdsimError(f"{what} needs PyTorch, which is not installed ({exc}); {INSTALL_HINT}") from None
    return torch


def require_torch_installed(what: str = "this command") -> None:
    """Check, without importing it, that torch can be imported; :class:`LdsimError` if not."""
    import importlib.util
    import sys

    if "torch" in sys.modules and sys.modules["torch"] is None:
        raise LdsimError(f"{what} needs PyTorch, which cannot be imported here; {INSTALL_HINT}")
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LdsimError(f"{what} needs PyTorch, which is not installed; {INSTALL_HINT}")


def cpu_model_name() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one, else ``platform``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_memory_gib() -> float:
    """Physical memory of the host, in GiB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 1.0


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache in bytes (32 MiB when the OS does not say)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size"), encoding="utf-8") as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            number = text[:-1] if text[-1:] in "KMG" else text
            if number.isdigit():
                best = max(best, int(number) * scale)
    except OSError:
        pass
    return best or 32 * 2**20


@dataclass
class Target:
    """A resolved device to measure.

    ``kind`` is ``cpu`` or ``cuda``; ``torch_device`` the ``torch.device``; ``threads`` the
    intra-op threads (CPU); ``dtypes`` the ldsim dtypes that will be measured, in order, and
    ``skipped_dtypes`` the ones left out with the reason; ``cache_bytes`` the last-level cache
    (buffers smaller than a few times this are rotated so that weights stream from memory).
    """

    kind: str
    index: int
    torch_device: Any
    threads: int
    name: str
    cache_bytes: int
    dtypes: list[str] = field(default_factory=list)
    skipped_dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        """True for a GPU."""
        return self.kind == "cuda"

    def torch_dtype(self, dtype: str) -> Any:
        """The torch dtype of ldsim dtype ``dtype``."""
        import torch

        return getattr(torch, TORCH_DTYPES[dtype])

    def synchronize(self) -> None:
        """Wait until every operation queued on the device has finished (no-op on a CPU)."""
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.torch_device)

    def device_count(self) -> int:
        """Devices of this kind on the machine (GPUs; 1 for a CPU)."""
        if not self.is_cuda:
            return 1
        import torch

        return int(torch.cuda.device_count())

    def describe(self) -> str:
        """The device, for a profile's ``provenance.measured.device``."""
        if self.is_cuda:
            return f"{self.name} (cuda:{self.index})"
        return f"{self.name}, {self.threads} thread(s)"

    def host_description(self) -> str:
        """Host name and CPU model, for ``provenance.measured.host``."""
        return f"{socket.gethostname()} ({cpu_model_name()}, {os.cpu_count()} logical CPUs)"

    def driver(self) -> str | None:
        """The CUDA driver/runtime version, or ``None`` on a CPU."""
        if not self.is_cuda:
            return None
        import torch

        parts = [f"CUDA runtime {torch.version.cuda}"]
        try:
            import subprocess

            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                parts.insert(0, f"driver {out.stdout.strip().splitlines()[0]}")
        except (OSError, subprocess.SubprocessError):
            pass
        return ", ".join(parts)


def parse_device(spec: str) -> tuple[str, int]:
    """``(kind, index)`` of a device argument: ``cpu`` -> ``("cpu", 0)``, ``cuda`` ->
    ``("cuda", 0)``, ``cuda:N`` -> ``("cuda", N)``. Needs no torch; raises
    :class:`LdsimError` naming the argument for anything else."""
    text = spec.strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:"):
        tail = text.split(":", 1)[1]
        if not tail.isdigit():
            raise LdsimError(f"--device {spec!r}: expected cuda or cuda:N with N a number")
        return "cuda", int(tail)
    raise LdsimError(f"--device {spec!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def resolve_target(spec: str, threads: int | None = None) -> Target:
    """Resolve ``cpu`` or ``cuda[:N]`` into a :class:`Target` (dtypes not yet probed).

    Sets torch's intra-op thread count on a CPU (``threads``, default: every core). Raises
    :class:`LdsimError` for an unknown device or a GPU that is not there.
    """
    kind, index = parse_device(spec)
    torch = require_torch("ldsim calibrate")
    if kind == "cpu":
        count = threads or os.cpu_count() or 1
        if count < 1:
            raise LdsimError(f"--threads must be >= 1, got {count}")
        torch.set_num_threads(count)
        name = f"{cpu_model_name()}"
        return Target("cpu", 0, torch.device("cpu"), count, name, _last_level_cache_bytes())
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise LdsimError(f"--device {spec!r}: torch {torch.__version__} sees no CUDA device on this machine")
        if index >= torch.cuda.device_count():
            raise LdsimError(f"--device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        torch.cuda.set_device(index)
        props = torch.cuda.get_device_properties(index)
        l2 = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
        return Target("cuda", index, torch.device("cuda", index), threads or 1, props.name, l2)
    raise AssertionError(kind)


def probe_dtypes(target: Target, slowdown_limit: float = 20.0) -> None:
    """Decide which of fp32, bf16, fp16 to measure on ``target``; fills ``target.dtypes``.

    On a CPU each dtype runs a 256x512x512 ``linear``; one that fails, or is more than
    ``slowdown_limit`` times slower than fp32, is skipped with the reason recorded in
    ``target.skipped_dtypes`` (and later in the profile's notes). A GPU keeps every dtype its
    compute capability supports (bf16 needs sm_80 or later).
    """
    import torch

    wanted = ["fp32", "bf16", "fp16"]
    if target.is_cuda:
        major, _ = torch.cuda.get_device_capability(target.index)
        for dtype in wanted:
            if dtype == "bf16" and major < 8:
                target.skipped_dtypes[dtype] = f"compute capability {major}.x has no bf16 tensor cores"
            else:
                target.dtypes.append(dtype)
        return
    times: dict[str, float] = {}
    for dtype in wanted:
        try:
            tdt = target.torch_dtype(dtype)
            x = torch.randn(256, 512).to(tdt)
            w = torch.randn(512, 512).to(tdt)
            torch.nn.functional.linear(x, w)
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - start)
            times[dtype] = best
        except (RuntimeError, TypeError) as exc:
            target.skipped_dtypes[dtype] = f"linear failed: {exc}"
    base = times.get("fp32")
    for dtype in wanted:
        if dtype not in times:
            continue
        if base is not None and times[dtype] > slowdown_limit * base:
            target.skipped_dtypes[dtype] = (
                f"a 256x512x512 linear took {times[dtype] / base:.0f}x as long as in fp32 (limit {slowdown_limit:.0f}x)"
            )
        else:
            target.dtypes.append(dtype)


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@contextmanager
def steady_allocator(target: Target) -> Iterator[str]:
    """Keep freed host memory in the process while measuring; yields a note for the profile.

    With glibc's defaults, a large tensor freed by one eager CPU operator goes back to the OS
    and the next operator's output is page-faulted in again, which on a virtual machine can
    cost more than the operator itself and varies from run to run. A serving process reaches a
    steady state in which buffers are reused (as a GPU caching allocator, or jemalloc on a CPU,
    arranges), so the harness measures in that state: ``mallopt`` disables mmap-backed
    allocations and trimming for the duration, and restores glibc's limits afterwards.
    """
    libc = None
    if not target.is_cuda and platform.system() == "Linux":
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) and libc.mallopt(_M_MMAP_MAX, 0)
        except (OSError, AttributeError):
            ok = False
        if not ok:
            libc = None
    note = (
        "glibc malloc kept freed memory during the measurements (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1):"
        " times are those of a steady-state process that reuses its buffers, without page faults"
        if libc is not None
        else ""
    )
    try:
        yield note
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, 65536)
            libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)


def _machine_busy_s() -> float | None:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``: user,
    nice, system, irq, softirq and steal time), or ``None`` where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = [int(v) for v in fields[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (collective workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """How much CPU *other* processes used while the harness measured, in cores.

    Operator times on a CPU depend on whether the cores are shared: a 2-thread operator on a
    machine where another process keeps one core busy takes up to twice as long. The meter
    reads the machine's busy time (``/proc/stat``) and subtracts the harness's own, so a
    profile can say under what load it was measured. ``None`` where the OS does not tell.
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), _machine_busy_s(), _own_cpu_s())

    def other_cores(self) -> float | None:
        """Average cores used by other processes since this meter was made (>= 0)."""
        wall0, busy0, own0 = self._start
        busy1 = _machine_busy_s()
        elapsed_s = time.perf_counter() - wall0
        if busy0 is None or busy1 is None or elapsed_s <= 0:
            return None
        return max(0.0, ((busy1 - busy0) - (_own_cpu_s() - own0)) / elapsed_s)


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string (seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
