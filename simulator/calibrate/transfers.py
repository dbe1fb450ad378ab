"""Moving bytes without computing: streaming bandwidth, host-device copies, storage reads.

* **Streaming bandwidth**: a device-to-device copy of a buffer several times larger than the
  last-level cache (``dst.copy_(src)``); its read-plus-write bytes per second is the profile's
  measured memory bandwidth.
* **Host <-> device** (GPU only): pinned host memory to and from the device over message
  sizes, timed with CUDA events; written to the collectives table as link ``host``, ops
  ``h2d``/``d2h``. On a CPU the "device" is the host, and the host link is a ``memcpy``.
* **Storage -> host**: a temporary file of a few hundred MB is written beside the profile,
  flushed with ``fsync``, evicted from the page cache with ``posix_fadvise(DONTNEED)``, and
  read back sequentially; the result is the profile's ``host.storage_read_gb_per_s`` (what a
  cold start that loads weights from local storage sees). A second, cached read tells whether
  the eviction took effect.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.calibrate.records import row
from simulator.calibrate.timing import Measurement

if TYPE_CHECKING:
    from simulator.calibrate.harness import Session

__all__ = ["measure_storage_read", "measure_transfers"]

_CHUNK_BYTES = 8 * 2**20


def _fit_link(sizes: list[int], times_s: list[float]) -> dict[str, float]:
    """Latency (the smallest message's time) and bandwidth (the largest message's rate)."""
    return {"latency_us": min(times_s) * 1e6, "bandwidth_gb_per_s": sizes[-1] / times_s[-1] / 1e9}


def _stream(session: Session) -> dict[str, float]:
    import torch

    target = session.target
    n = session.grid.stream_bytes // 4
    src = torch.ones(n, device=target.torch_device)
    dst = torch.empty_like(src)
    m = session.time(lambda: dst.copy_(src))
    moved = 2.0 * n * 4
    session.rows.append(
        row("memory", "stream", "fp32", "", "copy", (int(moved),), ("bytes",), moved, 0.0, moved, m, held_out=True)
    )
    return {"stream_gb_per_s": moved / m.median_s / 1e9}


def _memcpy_curve(session: Session) -> dict[str, float]:
    """The host "link" of a CPU: a copy between two host buffers, over message sizes."""
    import torch

    sizes, times = [], []
    for nbytes in session.grid.copy_bytes:
        src = torch.ones(nbytes // 4)
        dst = torch.empty_like(src)
        m = session.time(functools.partial(dst.copy_, src))
        session.rows.append(
            row(
                "link",
                "memcpy",
                "fp32",
                "copy",
                "copy_",
                (1, nbytes),
                ("devices", "bytes"),
                nbytes,
                0.0,
                nbytes,
                m,
                True,
            )
        )
        sizes.append(nbytes)
        times.append(m.median_s)
    return _fit_link(sizes, times)


def _host_device_curves(session: Session) -> dict[str, float]:
    """Pinned host <-> device copies over message sizes (GPU only)."""
    import torch

    target = session.target
    figures: dict[str, float] = {}
    for op in ("h2d", "d2h"):
        sizes, times = [], []
        for nbytes in session.grid.copy_bytes:
            host = torch.ones(nbytes // 4, pin_memory=True)
            dev = torch.empty(nbytes // 4, device=target.torch_device)
            if op == "h2d":
                m = session.time(functools.partial(dev.copy_, host, non_blocking=True))
            else:
                m = session.time(functools.partial(host.copy_, dev, non_blocking=True))
            session.rows.append(
                row("link", "host", "fp32", op, "copy_", (1, nbytes), ("devices", "bytes"), nbytes, 0.0, nbytes, m)
            )
            sizes.append(nbytes)
            times.append(m.median_s)
        fit = _fit_link(sizes, times)
        figures[f"{op}_latency_us"] = fit["latency_us"]
        figures[f"{op}_gb_per_s"] = fit["bandwidth_gb_per_s"]
    return figures


def measure_storage_read(folder: Path, nbytes: int) -> dict[str, Any]:
    """Write ``nbytes`` to a temporary file in ``folder``, evict it from the page cache and read
    it back; returns GB/s cold and cached and whether eviction was possible.

    The file holds pseudo-random data (so that no layer of the storage stack can compress or
    deduplicate it) and is always removed.
    """
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, _CHUNK_BYTES, dtype=np.uint8)
    chunks = max(1, nbytes // _CHUNK_BYTES)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".ldsim-storage-probe-", dir=folder)
    evicted = False
    note = ""
    try:
        for i in range(chunks):
            block[:8] = np.frombuffer(np.int64(i).tobytes(), dtype=np.uint8)
            os.write(fd, block.data)
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                evicted = True
            except OSError as exc:
                note = f"posix_fadvise(DONTNEED) failed: {exc}"
        else:
            note = "posix_fadvise is not available on this platform: the read may come from the page cache"
        os.close(fd)
        fd = -1
        cold_s = _read_file(name)
        cached_s = _read_file(name)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(name)
    size = chunks * _CHUNK_BYTES
    cold, cached = size / cold_s / 1e9, size / cached_s / 1e9
    if evicted and cold > 0.7 * cached:
        note = (
            f"after posix_fadvise(DONTNEED) the read ran at {cold:.2f} GB/s, close to the cached {cached:.2f} GB/s:"
            " the eviction may not have reached the storage (a RAM-backed or host-cached virtual disk)"
        )
    elif evicted:
        note = f"page cache evicted with posix_fadvise(DONTNEED): cold {cold:.2f} GB/s vs cached {cached:.2f} GB/s"
    return {
        "storage_read_gb_per_s": cold,
        "storage_cached_gb_per_s": cached,
        "storage_evicted": evicted,
        "storage_bytes": size,
        "storage_note": note,
        "storage_read_s": cold_s,
    }


def _read_file(path: str) -> float:
    buf = bytearray(_CHUNK_BYTES)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(view):
            pass
    return time.perf_counter() - start


def measure_transfers(session: Session, folder: Path) -> dict[str, Any]:
    """Streaming bandwidth, the host link (memcpy on a CPU, pinned copies on a GPU) and a
    storage read in ``folder``; returns the figures the profile writer needs."""
    figures: dict[str, Any] = {}
    figures.update(_stream(session))
    if session.target.is_cuda:
        figures.update(_host_device_curves(session))
    else:
        fit = _memcpy_curve(session)
        figures["memcpy_latency_us"] = fit["latency_us"]
        figures["memcpy_gb_per_s"] = fit["bandwidth_gb_per_s"]
    storage = measure_storage_read(folder, session.grid.storage_bytes)
    figures.update(storage)
    read_s = storage["storage_read_s"]
    m = Measurement(read_s, read_s, read_s, read_s, read_s, 1, 1)
    size = float(storage["storage_bytes"])
    session.rows.append(
        row("link", "storage", "", "read", "readinto", (1, size), ("devices", "bytes"), size, 0.0, size, m, True)
    )
    if storage["storage_note"]:
        session.notes.append(f"storage read: {storage['storage_note']}")
    return figures
