"""Measured operator tables: the calibrated times the cost model interpolates.

A calibrated hardware profile names a CSV of measured operator times (written by ``ldsim
calibrate`` or by a converter of published measurements) and, optionally, a CSV of collective
and transfer times. This module defines both formats, validates them, and predicts the time of
an operator of any shape by **multilinear interpolation in log space** on the measured grid.

``<profile>.tables.csv`` -- one row per grid point::

    kind      operator kind (see DIMS below)
    dtype     fp32 | tf32 | bf16 | fp16 | fp8 | int8
    variant   a categorical key inside a kind ('' for none): 'hd128' for attention head
              dimension, a convolution's geometry 'c64-o256-k1-s1-h56-w56'
    d0 .. d3  the grid coordinates of the point (integers >= 1; unused ones empty)
    work      the operator's work at the point: FLOPs or bytes, as DIMS says
    time_s    median measured time of one operator, in seconds (launch overhead included)
    spread    relative spread of the measurement, (p90 - p10) / median

Every (kind, dtype, variant) table must be a full grid: every combination of its coordinates
present once. What is interpolated is the log of the achieved rate (work per second) over the
log of the coordinates; a query outside the grid takes the rate at the nearest edge (so time
grows linearly with work beyond the largest measured shape), and no prediction falls below the
fastest time measured for the kind (the launch-overhead floor). The same arithmetic is applied
to every query independently, so a vectorised query gives bit-identical results to one-by-one.

``<profile>.collectives.csv`` -- one row per measured message size::

    link      intra_node | inter_node | host
    op        allreduce | allgather | alltoall | sendrecv | h2d | d2h
    devices   participants (2 for a point-to-point transfer)
    bytes     message size in bytes (per device, as the op is called)
    time_s    median measured time, seconds
    spread    relative spread

Collective time is interpolated log-log in the message size for each (link, op, devices);
above the largest size time scales with bytes, below the smallest it stays at that time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.errors import ConfigError, did_you_mean

__all__ = [
    "COLLECTIVE_COLUMNS",
    "DIMS",
    "TABLE_COLUMNS",
    "CollectiveTable",
    "GridTable",
    "load_collectives",
    "load_tables",
]

TABLE_COLUMNS = ("kind", "dtype", "variant", "d0", "d1", "d2", "d3", "work", "time_s", "spread")
COLLECTIVE_COLUMNS = ("link", "op", "devices", "bytes", "time_s", "spread")

#: Grid coordinates and work of each table kind: (coordinate names, work unit).
DIMS: dict[str, tuple[tuple[str, ...], str]] = {
    "gemm": (("M", "N", "K"), "flops"),
    "conv": (("batch",), "flops"),
    "attention_prefill": (("batch_x_heads", "q_len", "past_len"), "flops"),
    "attention_encoder": (("batch_x_heads", "seq_len"), "flops"),
    "attention_decode": (("batch_x_kv_heads", "kv_len"), "bytes"),
    "elementwise": (("bytes",), "bytes"),
    "norm": (("bytes",), "bytes"),
    "embedding": (("bytes",), "bytes"),
    "embedding_bag": (("bytes",), "bytes"),
}
_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
_LINKS = ("intra_node", "inter_node", "host")
_COLLECTIVE_OPS = ("allreduce", "allgather", "alltoall", "sendrecv", "h2d", "d2h")


class GridTable:
    """Measured times of one (kind, dtype, variant) on a full grid, interpolated in log space.

    ``axes``: the sorted coordinate values of each dimension; ``log_rate``: log2 of the
    achieved work per second at each grid point, shape ``tuple(len(a) for a in axes)``;
    ``floor_s``: the fastest time measured for the kind.
    """

    def __init__(
        self, kind: str, dtype: str, variant: str, axes: list[np.ndarray], log_rate: np.ndarray, floor_s: float
    ) -> None:
        self.kind, self.dtype, self.variant = kind, dtype, variant
        self.axes = axes
        self._log_axes = [np.log2(a.astype(np.float64)) for a in axes]
        self.log_rate = log_rate
        self.floor_s = floor_s
        # per dimension: can we interpolate (>= 2 points) or is it a constant axis
        self._varying = [len(a) > 1 for a in axes]
        self._axes_list = [list(map(float, a)) for a in self._log_axes]
        self._values = log_rate.tolist()  # nested lists: fast scalar indexing

    @property
    def ndim(self) -> int:
        """Number of grid coordinates."""
        return len(self.axes)

    def rate(self, coords: np.ndarray) -> np.ndarray:
        """Achieved work per second at ``coords`` (shape ``(n, ndim)``), interpolated."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, self.ndim)
        n = coords.shape[0]
        lows: list[np.ndarray] = []
        fracs: list[np.ndarray] = []
        for d, log_axis in enumerate(self._log_axes):
            if not self._varying[d]:
                lows.append(np.zeros(n, dtype=np.intp))
                fracs.append(np.zeros(n))
                continue
            x = np.clip(np.log2(np.maximum(coords[:, d], 1.0)), log_axis[0], log_axis[-1])
            lo = np.clip(np.searchsorted(log_axis, x, side="right") - 1, 0, len(log_axis) - 2)
            lows.append(lo)
            fracs.append((x - log_axis[lo]) / (log_axis[lo + 1] - log_axis[lo]))
        acc = np.zeros(n)
        for corner in range(1 << self.ndim):
            weight = np.ones(n)
            index = []
            for d in range(self.ndim):
                up = (corner >> d) & 1
                if up and not self._varying[d]:
                    weight = weight * 0.0
                    index.append(lows[d])
                    continue
                weight = weight * (fracs[d] if up else 1.0 - fracs[d])
                index.append(lows[d] + up)
            acc = acc + weight * self.log_rate[tuple(index)]
        return np.exp2(acc)

    def along_last(self, fixed: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """For a 2-D table: the log2 axis of the second coordinate and the log2 rate along it,
        blended at the first coordinate ``fixed[0]`` (so that a query varying only in the second
        coordinate is a 1-D interpolation: see :meth:`time_along_s`)."""
        if self.ndim != 2:
            raise ValueError("along_last needs a 2-D table")
        axis0 = self._log_axes[0]
        if len(axis0) == 1:
            return self._log_axes[1], self.log_rate[0].astype(np.float64)
        x = min(max(math.log2(max(float(fixed[0]), 1.0)), float(axis0[0])), float(axis0[-1]))
        lo = min(max(int(np.searchsorted(axis0, x, side="right")) - 1, 0), len(axis0) - 2)
        frac = (x - axis0[lo]) / (axis0[lo + 1] - axis0[lo])
        return self._log_axes[1], (1.0 - frac) * self.log_rate[lo] + frac * self.log_rate[lo + 1]

    def time_along_s(self, curve: tuple[np.ndarray, np.ndarray], second: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Seconds of operators at a fixed first coordinate (``curve`` from :meth:`along_last`)
        and the given second coordinates (vectorised: the same arithmetic for every element)."""
        axis, values = curve
        x = np.log2(np.maximum(second, 1.0))
        return np.maximum(self.floor_s, work / np.exp2(np.interp(x, axis, values)))

    def time_s(self, coords: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Predicted seconds of operators with ``work`` at ``coords`` (vectorised)."""
        return np.maximum(self.floor_s, np.asarray(work, dtype=np.float64) / self.rate(coords))

    def time_one_s(self, coords: Sequence[float], work: float) -> float:
        """Predicted seconds of one operator (the same interpolation in plain Python: several
        times faster than :meth:`time_s` for a single query; agrees with it to rounding)."""
        lows: list[int] = []
        fracs: list[float] = []
        for d, axis in enumerate(self._axes_list):
            if len(axis) == 1:
                lows.append(0)
                fracs.append(0.0)
                continue
            x = min(max(math.log2(max(float(coords[d]), 1.0)), axis[0]), axis[-1])
            lo = min(max(bisect_right(axis, x) - 1, 0), len(axis) - 2)
            lows.append(lo)
            fracs.append((x - axis[lo]) / (axis[lo + 1] - axis[lo]))
        acc = 0.0
        for corner in range(1 << len(lows)):
            weight = 1.0
            node: Any = self._values
            for d, lo in enumerate(lows):
                up = (corner >> d) & 1
                if up and len(self._axes_list[d]) == 1:
                    weight = 0.0
                    break
                weight *= fracs[d] if up else 1.0 - fracs[d]
                node = node[lo + up]
            if weight:
                acc += weight * node
        return max(self.floor_s, work / 2.0**acc)


@dataclass(frozen=True)
class CollectiveTable:
    """Measured times of one (link, op, devices) against message size."""

    link: str
    op: str
    devices: int
    log_bytes: np.ndarray
    log_time: np.ndarray

    def time_s(self, nbytes: float) -> float:
        """Seconds for a message of ``nbytes``: log-log interpolation; linear in bytes above."""
        x = np.log2(max(nbytes, 1.0))
        top = self.log_bytes[-1]
        if x > top:
            return float(np.exp2(self.log_time[-1] + (x - top)))
        return float(np.exp2(np.interp(x, self.log_bytes, self.log_time)))


def _read_csv(path: Path, columns: tuple[str, ...], where: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found: {path}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {path}: cannot read as CSV: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"{where}: {path}: missing column(s) {', '.join(missing)}; expected columns: {', '.join(columns)}"
        )
    if frame.empty:
        raise ConfigError(f"{where}: {path}: no rows")
    return frame


def _positive(frame: pd.DataFrame, column: str, path: Path, where: str, allow_nan: bool = False) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(values > 0) if not allow_nan else (values <= 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{where}: {path}, line {i + 2}, column '{column}': expected a number > 0, got {frame[column].iloc[i]!r}"
        )
    return values


def _check_names(frame: pd.DataFrame, column: str, allowed: tuple[str, ...], path: Path, where: str) -> None:
    for i, value in enumerate(frame[column].astype(str)):
        if value not in allowed:
            raise ConfigError(
                f"{where}: {path}, line {i + 2}, column '{column}': unknown value {value!r}"
                f"{did_you_mean(value, allowed)}"
            )


def load_tables(path: Path, where: str) -> dict[tuple[str, str, str], GridTable]:
    """Read and validate a tables CSV; return its grids by ``(kind, dtype, variant)``."""
    frame = _read_csv(path, TABLE_COLUMNS, where)
    _check_names(frame, "kind", tuple(DIMS), path, where)
    _check_names(frame, "dtype", _DTYPES, path, where)
    frame["variant"] = ["" if pd.isna(v) else str(v) for v in frame["variant"]]
    time_s = _positive(frame, "time_s", path, where)
    work = _positive(frame, "work", path, where)
    frame = frame.assign(_time=time_s, _work=work)
    floors = frame.groupby("kind")["_time"].min().to_dict()
    tables: dict[tuple[str, str, str], GridTable] = {}
    for key, group in frame.groupby(["kind", "dtype", "variant"], sort=True):
        kind, dtype, variant = (str(k) for k in key)
        names = DIMS[kind][0]
        cols = [f"d{i}" for i in range(len(names))]
        coords = np.empty((len(group), len(cols)))
        for j, col in enumerate(cols):
            coords[:, j] = _positive(group, col, path, f"{where} (table {kind}/{dtype}/{variant or '-'}: {names[j]})")
        axes = [np.unique(coords[:, j]) for j in range(len(cols))]
        shape = tuple(len(a) for a in axes)
        expected = int(np.prod(shape))
        if len(group) != expected:
            raise ConfigError(
                f"{where}: {path}: table {kind}/{dtype}/{variant or '-'} is not a full grid of"
                f" {' x '.join(names)}: {len(group)} rows for {' x '.join(map(str, shape))} = {expected}"
                f" coordinate combinations (each combination must appear exactly once)"
            )
        log_rate = np.full(shape, np.nan)
        index = tuple(np.searchsorted(axes[j], coords[:, j]) for j in range(len(cols)))
        log_rate[index] = np.log2(group["_work"].to_numpy() / group["_time"].to_numpy())
        if np.isnan(log_rate).any():
            raise ConfigError(f"{where}: {path}: table {kind}/{dtype}/{variant or '-'} repeats a grid point")
        tables[(kind, dtype, variant)] = GridTable(kind, dtype, variant, axes, log_rate, float(floors[kind]))
    return tables


def load_collectives(path: Path, where: str) -> dict[tuple[str, str, int], CollectiveTable]:
    """Read and validate a collectives CSV; return its curves by ``(link, op, devices)``."""
    frame = _read_csv(path, COLLECTIVE_COLUMNS, where)
    _check_names(frame, "link", _LINKS, path, where)
    _check_names(frame, "op", _COLLECTIVE_OPS, path, where)
    frame = frame.assign(
        _bytes=_positive(frame, "bytes", path, where),
        _time=_positive(frame, "time_s", path, where),
        _devices=_positive(frame, "devices", path, where),
    )
    out: dict[tuple[str, str, int], CollectiveTable] = {}
    for key, group in frame.groupby(["link", "op", "_devices"], sort=True):
        link, op, devices = str(key[0]), str(key[1]), int(float(key[2]))  # type: ignore[arg-type]
        curve = group.groupby("_bytes")["_time"].median().sort_index()
        out[(link, op, devices)] = CollectiveTable(
            link,
            op,
            devices,
            np.log2(curve.index.to_numpy(dtype=np.float64)),
            np.log2(curve.to_numpy(dtype=np.float64)),
        )
    return out
