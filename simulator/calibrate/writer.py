"""Writing a measured hardware profile: the YAML, its tables and its raw measurements.

:func:`write_profile` turns a finished :class:`~simulator.calibrate.harness.Session` into the
files of a calibrated profile (format of :mod:`simulator.hardware` and :mod:`simulator.tables`):

* ``<stem>.tables.csv`` -- the operator grids (median time and spread per point);
* ``<stem>.collectives.csv`` -- collectives and host-device copies against message size;
* ``<stem>.raw.csv`` -- every measurement, including held-out ones (blocks, streaming copy,
  storage read), with its samples' median, p10, p90, min and max;
* ``<stem>.yaml`` -- device peaks (for a CPU the measured best GEMM rate per dtype and the
  measured streaming bandwidth; for a GPU the measured figures too, as the harness knows no
  datasheet), ``measured_peaks`` beside them, default efficiencies fitted from the tables (the
  median achieved fraction of peak per kind, used only where no table applies), node, network
  and host links from the collective and transfer measurements, and a provenance saying what
  was measured on what, when, by which command, and which values are assumptions.

Every file is written to a temporary name and renamed into place; the YAML is validated by
loading it with :func:`simulator.hardware.load_profile` before it replaces an existing one.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from simulator.calibrate.device import host_memory_gib, utc_now
from simulator.calibrate.records import RAW_COLUMNS, collective_table, operator_table
from simulator.errors import LdsimError

if TYPE_CHECKING:
    from simulator.calibrate.harness import Session

__all__ = ["atomic_write", "fit_efficiency", "write_profile"]

#: Assumed power and price of a CPU "device" (a share of a server socket), stated in the notes.
_CPU_WATTS_PER_CORE = 4.0
_CPU_IDLE_WATTS_PER_CORE = 1.5
_CPU_USD_PER_CORE_HOUR = 0.025


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (keeps the YAML readable)."""
    if value == 0 or not np.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


def fit_efficiency(tables: pd.DataFrame, peaks_flops: dict[str, float], bandwidth_bytes: float) -> dict[str, Any]:
    """Default efficiencies: the median achieved fraction of peak per table kind.

    FLOP kinds (gemm, conv, attention_prefill, attention_encoder) against the dtype's measured
    peak; byte kinds against the streaming bandwidth (fractions above 1, reached in cache, are
    clipped to 1). ``attention`` is the median over both attention FLOP kinds and ``default``
    the median over every point of the group.
    """
    from simulator.tables import DIMS

    compute: dict[str, list[float]] = {}
    memory: dict[str, list[float]] = {}
    rates = tables["work"].to_numpy(dtype=np.float64) / tables["time_s"].to_numpy(dtype=np.float64)
    for kind, dtype, rate in zip(tables["kind"].astype(str), tables["dtype"].astype(str), rates, strict=True):
        if DIMS[kind][1] == "flops":
            peak = peaks_flops.get(dtype)
            if peak:
                compute.setdefault(kind, []).append(float(rate) / peak)
        else:
            memory.setdefault(kind, []).append(float(rate) / bandwidth_bytes)

    def summarise(groups: dict[str, list[float]]) -> dict[str, float]:
        out = {k: float(np.clip(np.median(v), 0.001, 1.0)) for k, v in sorted(groups.items())}
        every = [x for v in groups.values() for x in v]
        out["default"] = float(np.clip(np.median(every), 0.001, 1.0)) if every else 0.5
        return {k: round(v, 3) or 0.001 for k, v in out.items()}

    attention = compute.get("attention_prefill", []) + compute.get("attention_encoder", [])
    fitted_compute = summarise(compute)
    if attention:
        fitted_compute["attention"] = round(float(np.clip(np.median(attention), 0.001, 1.0)), 3) or 0.001
    return {"compute": fitted_compute, "memory": summarise(memory)}


def _link(
    name: str, bandwidth_gb_per_s: float | None, latency_us: float | None, fallback: tuple[float, float]
) -> dict[str, Any]:
    bw = bandwidth_gb_per_s if bandwidth_gb_per_s and bandwidth_gb_per_s > 0 else fallback[0]
    lat = latency_us if latency_us is not None and latency_us >= 0 else fallback[1]
    return {"name": name, "bandwidth_gb_per_s": _sig(bw), "latency_us": _sig(lat)}


def _is_virtual() -> bool:
    """True when the CPU reports running under a hypervisor (the ``hypervisor`` cpuinfo flag)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and " hypervisor" in line for line in fh)
    except OSError:
        return False


def _gpu_power_w(index: int) -> float | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", str(index), "--query-gpu=power.limit", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def write_profile(
    session: Session,
    out: Path,
    name: str,
    command: str,
    quick: bool,
    figures: dict[str, Any],
    elapsed_s: float,
) -> Path:
    """Write the profile of ``session`` to ``out`` (and its CSVs beside it); return its path.

    ``figures``: link, transfer and storage figures from :mod:`.transfers` and
    :mod:`.collectives`. Raises :class:`LdsimError` if the written profile does not load.
    """
    import torch

    from simulator.hardware import load_profile

    target = session.target
    out = out.resolve()
    stem = out.name[: -len(out.suffix)] if out.suffix in (".yaml", ".yml") else out.name
    raw = pd.DataFrame(session.rows, columns=list(RAW_COLUMNS))
    tables = operator_table(raw)
    if tables.empty:
        raise LdsimError("calibration measured no operator table; nothing to write")
    coll = collective_table(raw)
    files = {"operators": f"{stem}.tables.csv", "raw": f"{stem}.raw.csv"}
    if not coll.empty:
        files["collectives"] = f"{stem}.collectives.csv"
        atomic_write(out.parent / files["collectives"], coll.to_csv(index=False, float_format="%.6g").encode())
    atomic_write(out.parent / files["operators"], tables.to_csv(index=False, float_format="%.6g").encode())
    atomic_write(out.parent / files["raw"], raw.to_csv(index=False, float_format="%.4g").encode())

    gemm = tables[tables["kind"] == "gemm"]
    peaks_flops = {str(dtype): float((group["work"] / group["time_s"]).max()) for dtype, group in gemm.groupby("dtype")}
    if not peaks_flops:
        raise LdsimError("calibration measured no GEMM; cannot state peak FLOP/s")
    bandwidth = float(figures.get("stream_gb_per_s", 0.0)) * 1e9
    if bandwidth <= 0:
        memory_rows = tables[tables["kind"] == "elementwise"]
        bandwidth = float((memory_rows["work"] / memory_rows["time_s"]).max())
    launch_us = float(tables["time_s"].min()) * 1e6
    efficiency = fit_efficiency(tables, peaks_flops, bandwidth)
    ram = host_memory_gib()
    notes = list(session.notes)
    for dtype, reason in target.skipped_dtypes.items():
        notes.insert(0, f"dtype {dtype} not measured: {reason}")
    notes.append(
        "Tables: attention_prefill's past_len coordinate 1 holds the measurement with no past (the cost model"
        " reads a past of 0 as 1); elementwise is a two-tensor add and norm is RMS norm, with per-implementation"
        " variants beside them (act = SiLU-mul, rope, kv_append, softmax; layer_norm); embedding_bag is one fused bag"
        " over DLRM Criteo Kaggle's 26 tables (dimension 16, each capped at 262,144 rows); conv is channels-last"
        " with a bias per output channel; GEMM weights and decode KV caches are rotated through copies so that"
        " they stream from memory; on a CPU, a memory-bound operator smaller than the last-level cache is timed"
        " call by call, each right after a GEMM that flushes the caches (as between a model's GEMMs: a tiny add"
        " then takes about 10x its back-to-back time). Every measurement is gated on a reference GEMM timed"
        " before and after it and retried when that ran more than 1.5x slower than its best or when other"
        " tasks waited for a CPU over 5% of the time (Linux PSI); see the raw CSV's level and contention."
    )
    if target.is_cuda:
        model = target.name
        power = _gpu_power_w(target.index)
        tdp = power or 300.0
        idle = round(tdp * 0.15, 1)
        price = None
        notes.append(
            f"power_tdp_w {tdp:g} is {'the board power limit from nvidia-smi' if power else 'assumed'};"
            f" power_idle_w {idle:g} is assumed (15% of it); no price is stated."
            " device.peak_tflops and memory bandwidth are the measured figures (the harness knows no datasheet);"
            " replace them with datasheet values to keep both."
        )
        devices_per_node = max(1, target.device_count())
        intra = _link("nccl", figures.get("link_gb_per_s"), figures.get("link_latency_us"), (100.0, 5.0))
        if "link_gb_per_s" not in figures:
            notes.append("node.intra_node is assumed (100 GB/s, 5 us): no collective could be measured here")
        host_link = _link(
            "pcie (measured h2d)", figures.get("h2d_gb_per_s"), figures.get("h2d_latency_us"), (25.0, 10.0)
        )
        inter = {"name": "assumed (not measured)", "bandwidth_gb_per_s": 25.0, "latency_us": 5.0}
        notes.append("network.inter_node is assumed (25 GB/s, 5 us): the harness measures only one node")
    else:
        threads = target.threads
        model = f"{target.name} ({threads} thread{'s' if threads != 1 else ''})"
        tdp = _CPU_WATTS_PER_CORE * threads
        idle = _CPU_IDLE_WATTS_PER_CORE * threads
        price = round(_CPU_USD_PER_CORE_HOUR * threads, 4)
        notes.append(
            f"power_tdp_w {tdp:g}, power_idle_w {idle:g} and price_per_hour_usd {price:g} are assumed: a"
            f" {threads}-core share of a server CPU socket (about {_CPU_WATTS_PER_CORE:g} W and"
            f" {_CPU_USD_PER_CORE_HOUR:g} USD per core-hour); device.peak_tflops is the best measured GEMM"
            " throughput per dtype and memory_bandwidth_gb_per_s the measured streaming bandwidth (no datasheet)."
        )
        devices_per_node = 1
        backend = figures.get("collective_backend", "gloo")
        world = figures.get("collective_world", 2)
        intra = _link(f"{backend}-loopback", figures.get("link_gb_per_s"), figures.get("link_latency_us"), (1.0, 100.0))
        inter = dict(intra, name=f"{backend}-loopback (no network measured: same figures as the node link)")
        notes.append(
            f"node.intra_node and the collectives table come from {backend} between {world} processes on this host"
            " (TCP over the loopback interface); no network between machines was measured."
        )
        host_link = _link(
            "memcpy (the device is the host)",
            figures.get("memcpy_gb_per_s"),
            figures.get("memcpy_latency_us"),
            (10.0, 1.0),
        )
    device_desc = target.describe()
    machine = "virtual machine" if not target.is_cuda and _is_virtual() else "machine"
    description = (
        f"Measured by ldsim calibrate on {device_desc}, a {os.cpu_count()}-CPU {machine} ({platform.node()})"
        f"{' (quick run)' if quick else ''}. Specific to that {machine} and its load at the time:"
        " make one for yours with `ldsim calibrate --device "
        f"{'cuda' if target.is_cuda else 'cpu'} --out hardware_profiles/mine.yaml`."
    )
    doc: dict[str, Any] = {
        "format": "ldsim-hardware-profile/1",
        "name": name,
        "description": description,
        "provenance": {
            "status": "measured",
            "sources": [
                f"ldsim calibrate: torch {torch.__version__} microbenchmarks on this machine,"
                f" {len(raw)} measurements in {files['raw']} ({elapsed_s:.0f} s)"
            ],
            "notes": " ".join(n if n.endswith(".") else n + "." for n in notes),
            "measured": {
                "date": utc_now(),
                "host": target.host_description(),
                "device": device_desc,
                "driver": target.driver(),
                "torch": str(torch.__version__),
                "command": command,
            },
        },
        "device": {
            "model": model,
            "memory_gib": _sig(float(torch.cuda.get_device_properties(target.index).total_memory) / 2**30)
            if target.is_cuda
            else _sig(ram, 3),
            "memory_bandwidth_gb_per_s": _sig(bandwidth / 1e9),
            "peak_tflops": {d: _sig(v / 1e12) for d, v in peaks_flops.items()},
            "kernel_launch_overhead_us": _sig(launch_us, 3),
            "power_tdp_w": _sig(tdp, 3),
            "power_idle_w": _sig(idle, 3),
            "price_per_hour_usd": price,
        },
        "measured_peaks": {
            "tflops": {d: _sig(v / 1e12) for d, v in peaks_flops.items()},
            "memory_bandwidth_gb_per_s": _sig(bandwidth / 1e9),
            "kernel_launch_overhead_us": _sig(launch_us, 3),
        },
        "efficiency": {
            "source": "fitted by ldsim calibrate: median achieved fraction of the measured peaks per kind"
            f" ({files['operators']})",
            **efficiency,
        },
        "node": {"devices_per_node": devices_per_node, "intra_node": intra},
        "network": {"inter_node": inter},
        "host": {
            "link": host_link,
            "memory_gib": _sig(ram, 3),
            "storage_read_gb_per_s": _sig(float(figures.get("storage_read_gb_per_s", 1.0)) or 1.0),
        },
        "tables": files,
    }
    if doc["device"]["price_per_hour_usd"] is None:
        del doc["device"]["price_per_hour_usd"]
    header = (
        f"# {name}: measured by `{command}` on {utc_now()[:10]}.\n"
        "# Written by ldsim calibrate; the tables and raw measurements are the CSV files named under `tables:`.\n"
    )
    text = header + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)  # not *.yaml: unlisted
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            load_profile(tmp)
        except LdsimError as exc:
            raise LdsimError(f"the profile written for {out} does not load: {exc}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    load_profile(out)  # read again (the loader notices a file rewritten in place)
    return out
