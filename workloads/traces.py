"""Traces: locating workload files, reading them as columns, and the trace tools.

A file named in an experiment resolves, in order, as an absolute path, relative to the
experiment file's folder, relative to the current directory, or as one of the traces
bundled with ldsim (``workloads/data/``, e.g. ``azure_llm_2023/AzureLLMInferenceTrace_conv.csv``).

A *trace* is a production log of requests read by a registered trace reader (registry
``TRACES``: ``azure_llm_2023``, ``mooncake``, ``burstgpt``, ...; see :mod:`workloads.readers`)
into a :class:`Trace`: columns, never one Python object per request. Readers stream the file
in blocks of bounded size (:func:`iter_trace_chunks`); :func:`read_trace` assembles the blocks,
sorts by arrival, and applies the trace tools that the YAML asks for, in this order: the time
window ``window_s``, dropping failed requests (``failed: drop``), the cap ``max_requests``, and
the time scaling ``rate_scale``. The same tools are methods of :class:`Trace`
(:meth:`Trace.window`, :meth:`Trace.head`, :meth:`Trace.scaled`, :meth:`Trace.split`, ...).

Malformed rows (a non-numeric or negative value, a missing field or column, an unparseable
timestamp) are errors naming the file, the line and the column; with ``on_error: skip`` they
are skipped and counted in :class:`ReadStats` instead. CSV files may have any line endings.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from simulator.errors import ConfigError, did_you_mean
from simulator.policy import PolicyParams

__all__ = [
    "DATA_DIR",
    "Labels",
    "ReadStats",
    "RowErrors",
    "Trace",
    "TraceChunk",
    "TraceParams",
    "TraceReader",
    "iter_trace_chunks",
    "read_numeric_columns",
    "read_trace",
    "resolve_data_file",
    "trace_reader",
]

#: Traces bundled with ldsim.
DATA_DIR = Path(__file__).resolve().parent / "data"


def resolve_data_file(name: str, base_dir: Path | None, where: str) -> Path:
    """Find the file ``name`` (see the module docstring for the search order)."""
    raw = Path(name).expanduser()
    candidates = (
        [raw]
        if raw.is_absolute()
        else [
            *([base_dir / raw] if base_dir is not None else []),
            Path.cwd() / raw,
            DATA_DIR / raw,
        ]
    )
    for cand in candidates:
        if cand.is_file():
            return cand
    looked = ", ".join(dict.fromkeys(str(c.resolve()) for c in candidates))
    raise ConfigError(f"{where}: file '{name}' not found (looked in: {looked})")


_CACHE: dict[tuple[Path, tuple[str, ...]], dict[str, np.ndarray]] = {}


def read_numeric_columns(path: Path, columns: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """Read ``columns`` of a CSV or parquet file as non-negative integer arrays.

    Results are cached per (file, columns) for the life of the process. Raises
    :class:`ConfigError` naming ``where``, the file, the column and the 1-based line.
    """
    key = (path.resolve(), tuple(columns))
    if key in _CACHE:
        return _CACHE[key]
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{where}: {path}: the file is empty") from None
    except Exception as exc:
        raise ConfigError(f"{where}: {path}: cannot read: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise ConfigError(f"{where}: {path}: the file has a header but no rows")
    out: dict[str, np.ndarray] = {}
    for col in columns:
        if col not in frame.columns:
            known = list(frame.columns)
            raise ConfigError(f"{where}: {path}: no column '{col}'{did_you_mean(col, known, 'columns')}")
        column = frame[col]
        if pd.api.types.is_numeric_dtype(column):
            values = column.astype(float)
        else:  # read as text (pandas may use object or string dtype): parse, marking bad cells NaN
            values = pd.to_numeric(column.astype(str).str.strip(), errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if bad.size:
            line = int(bad[0]) + 2  # 1-based, after the header
            raise ConfigError(
                f"{where}: {path}, line {line}, column '{col}': expected a number,"
                f" got {frame[col].iloc[bad[0]]!r} ({bad.size} such rows)"
            )
        arr = values.to_numpy(dtype=float)
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise ConfigError(
                f"{where}: {path}, line {int(neg[0]) + 2}, column '{col}': expected a value >= 0, got {arr[neg[0]]:g}"
            )
        out[col] = np.rint(arr).astype(np.int64)
    _CACHE[key] = out
    return out


# --------------------------------------------------------------------------------------------
# reader parameters and the reader protocol


class TraceParams(PolicyParams):
    """The options every trace reader takes (a reader's ``Params`` subclasses this).

    ``file``: the trace file (see :func:`resolve_data_file`). ``window_s``: keep arrivals in
    ``[start, end)`` seconds from the trace's time 0 (its start, or its first arrival for
    wall-clock timestamps; see :class:`Trace`), shifted to start at 0.
    ``max_requests``: keep the first N (after the window). ``rate_scale``: multiply the arrival
    rate (2.0 = the same requests in half the time). ``on_error``: ``raise`` (default) stops at
    the first malformed row; ``skip`` skips such rows and counts them. ``failed``: ``keep``
    (default) or ``drop`` the requests the trace marks as failed (BurstGPT's zero-token
    responses).
    """

    file: str
    window_s: tuple[float, float] | None = None
    max_requests: int | None = Field(default=None, gt=0)
    rate_scale: float | None = Field(default=None, gt=0)
    on_error: Literal["raise", "skip"] = "raise"
    failed: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _check_window(self) -> TraceParams:
        if self.window_s is not None:
            start, end = self.window_s
            if not (0 <= start < end):
                raise ValueError(f"window_s must be [start, end] with 0 <= start < end, got [{start:g}, {end:g}]")
        return self


class TraceReader(Protocol):
    """A trace format: built as ``Reader(params)``; :meth:`chunks` streams a file's rows.

    ``Params`` subclasses :class:`TraceParams` with the format's own options. A reader whose
    timestamps count from the trace's start sets the class attribute ``origin_ns = 0``, so
    that time 0 stays the trace's start; otherwise (wall clocks) time 0 is the first arrival.
    """

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Yield the file's rows as :class:`TraceChunk` blocks of bounded size, in file order,
        handing every malformed row to ``errors`` (which raises or skips and counts)."""
        ...


@dataclass
class TraceChunk:
    """One block of trace rows as columns (file order; not necessarily sorted).

    ``time_ns``: arrival instants in integer nanoseconds on any fixed epoch (wall clock or
    trace-relative). ``input_tokens``/``output_tokens``: int64 token counts, ``None`` when the
    format has none. ``labels``: name -> (int32 codes into the chunk's own ``names``).
    ``failed``: rows the trace marks as failed. ``prefix_offsets`` (n + 1, int64) and
    ``prefix_ids`` (flat int64): each row's prefix-block ids, ``prefix_ids[off[i]:off[i+1]]``.
    """

    time_ns: np.ndarray
    input_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    labels: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    failed: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None
    prefix_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.time_ns)


@dataclass
class ReadStats:
    """What reading a trace did: rows read and kept, rows skipped (by column and reason),
    blank lines, rows flagged as failed, and warnings about the data's units."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    blank_lines: int = 0
    failed: int = 0
    failed_dropped: int = 0
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def skipped_rows(self) -> int:
        """Rows skipped as malformed (``on_error: skip``)."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for the run's notes."""
        parts = [f"{self.rows:,} rows read"]
        if self.skipped:
            reasons = ", ".join(f"{k}: {v:,}" for k, v in self.skipped.most_common())
            parts.append(f"{self.skipped_rows:,} malformed rows skipped ({reasons})")
        if self.failed:
            verb = "dropped" if self.failed_dropped else "kept"
            parts.append(f"{self.failed:,} failed requests ({verb})")
        if self.stopped_early:
            parts.append("stopped reading past the window/cap")
        return "; ".join(parts + self.warnings)


class RowErrors:
    """The ``on_error`` policy of one read: raise at a malformed row, or skip and count it.

    A reader calls :meth:`reject` with a mask of bad rows of a block; the error names the
    file, the line and the column, and what was expected.
    """

    def __init__(self, path: Path, policy: str, where: str, stats: ReadStats) -> None:
        self.path = path
        self.policy = policy
        self.where = where
        self.stats = stats

    def fail(self, line: int | str | None, column: str | None, message: str, row: bool = False) -> ConfigError:
        """The error naming the file, ``line`` (or a description such as ``row 3``) and
        ``column``; ``row``: it is about a malformed row, which ``on_error: skip`` skips."""
        place = str(self.path)
        if line is not None:
            place += f", line {line}" if isinstance(line, int) else f", {line}"
        if column is not None:
            place += f", column '{column}'"
        hint = " (set on_error: skip in the trace spec to skip such rows and count them)" if row else ""
        return ConfigError(f"{self.where}: {place}: {message}{hint}")

    def reject(
        self,
        bad: np.ndarray,
        line_of: Callable[[int], int | str],
        column: str,
        expected: str,
        values: Callable[[int], Any],
    ) -> None:
        """Handle the rows of a block marked in ``bad`` (a boolean mask) for ``column``.

        ``line_of(i)`` gives the line of row ``i``; ``values(i)`` its raw value. Raises a
        :class:`ConfigError` under ``on_error: raise``; otherwise records the count.
        """
        idx = np.flatnonzero(bad)
        if not idx.size:
            return
        first = int(idx[0])
        if self.policy == "raise":
            more = f" ({idx.size:,} such rows in this block)" if idx.size > 1 else ""
            raise self.fail(line_of(first), column, f"expected {expected}, got {values(first)!r}{more}", row=True)
        self.stats.skipped[f"{column}: {expected}"] += int(idx.size)
        if len(self.stats.examples) < 5:
            self.stats.examples.append(f"line {line_of(first)}, column '{column}': got {values(first)!r}")

    def reject_line(self, line: int | str, message: str, reason: str = "malformed line") -> None:
        """Handle one malformed line that cannot be split into fields (``reason``: how it is
        counted when skipped)."""
        if self.policy == "raise":
            raise self.fail(line, None, message, row=True)
        self.stats.skipped[reason] += 1
        if len(self.stats.examples) < 5:
            self.stats.examples.append(f"line {line}: {message}")


# --------------------------------------------------------------------------------------------
# the trace container and its tools


@dataclass(frozen=True)
class Labels:
    """A categorical column: ``codes`` (int32, one per request) into ``names``."""

    codes: np.ndarray
    names: tuple[str, ...]

    def mask(self, values: Sequence[str]) -> np.ndarray:
        """Rows whose label is one of ``values``."""
        chosen = set(values)
        wanted = [i for i, name in enumerate(self.names) if name in chosen]
        return np.isin(self.codes, np.asarray(wanted, dtype=np.int32))

    def counts(self) -> dict[str, int]:
        """Requests per label, most frequent first."""
        counts = np.bincount(self.codes, minlength=len(self.names))
        order = np.argsort(-counts, kind="stable")
        return {self.names[i]: int(counts[i]) for i in order if counts[i]}


@dataclass(frozen=True)
class Trace:
    """A trace as columns, sorted by arrival.

    ``arrival_s``: seconds from the start of the trace (or of its window), sorted.
    ``input_tokens``/``output_tokens``: int64, ``None`` if the format has none. ``labels``:
    categorical columns such as ``model``, ``tenant``, ``app``, ``function``, ``trigger``.
    ``failed``: requests the trace marks as failed (``None``: the format marks none).
    Time 0 is the trace's start for formats with relative timestamps (Mooncake, BurstGPT,
    Azure Functions 2019), the first arrival for wall-clock ones.
    ``prefix_ids``/``prefix_offsets``: each request's prefix-block ids as one flat array and
    ``n + 1`` offsets. ``span_s``: the time the trace covers (the window's length when one was
    applied, else the last arrival). ``start_epoch_s``: wall-clock time of ``arrival_s == 0``
    (``nan`` when the format's timestamps are relative).
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    labels: Mapping[str, Labels]
    failed: np.ndarray | None
    prefix_ids: np.ndarray | None
    prefix_offsets: np.ndarray | None
    source: str
    format: str
    span_s: float
    start_epoch_s: float = float("nan")
    stats: ReadStats = field(default_factory=ReadStats, compare=False)

    def __len__(self) -> int:
        return len(self.arrival_s)

    # ---- statistics ------------------------------------------------------------------------

    @property
    def mean_rate_rps(self) -> float:
        """Requests per second as the inverse of the mean inter-arrival gap,
        ``(n - 1) / (last - first)`` (``nan`` for fewer than two requests or no spread)."""
        n = len(self)
        if n < 2:
            return float("nan")
        spread = float(self.arrival_s[-1] - self.arrival_s[0])
        return (n - 1) / spread if spread > 0 else float("nan")

    @property
    def interarrival_cv(self) -> float:
        """Coefficient of variation of the inter-arrival gaps (1 for Poisson)."""
        gaps = np.diff(self.arrival_s)
        if len(gaps) < 2 or gaps.mean() <= 0:
            return float("nan")
        return float(gaps.std() / gaps.mean())

    # ---- tools -----------------------------------------------------------------------------

    def select(self, rows: np.ndarray) -> Trace:
        """The requests at ``rows`` (a boolean mask or sorted indices), order kept."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.int64)
        prefix_ids, prefix_offsets = _take_csr(self.prefix_ids, self.prefix_offsets, idx)
        return replace(
            self,
            arrival_s=self.arrival_s[idx],
            input_tokens=None if self.input_tokens is None else self.input_tokens[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            labels={k: Labels(v.codes[idx], v.names) for k, v in self.labels.items()},
            failed=None if self.failed is None else self.failed[idx],
            prefix_ids=prefix_ids,
            prefix_offsets=prefix_offsets,
        )

    def window(self, start_s: float, end_s: float) -> Trace:
        """Arrivals in ``[start_s, end_s)``, shifted so that ``start_s`` becomes 0."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        out = self.select(np.arange(lo, hi))
        return replace(
            out,
            arrival_s=out.arrival_s - start_s,
            span_s=float(min(end_s, max(self.span_s, start_s)) - start_s),
            start_epoch_s=self.start_epoch_s + start_s,
        )

    def head(self, n: int) -> Trace:
        """The first ``n`` requests; the span ends at the next arrival (or stays)."""
        if n >= len(self):
            return self
        out = self.select(np.arange(n))
        return replace(out, span_s=float(self.arrival_s[n]))

    def scaled(self, rate_scale: float) -> Trace:
        """Time compressed by ``rate_scale`` (> 1: the same requests faster; < 1: stretched)."""
        if rate_scale <= 0:
            raise ValueError(f"rate_scale must be > 0, got {rate_scale}")
        return replace(self, arrival_s=self.arrival_s / rate_scale, span_s=self.span_s / rate_scale)

    def scaled_to_rate(self, rate_rps: float) -> Trace:
        """Time scaled so that :attr:`mean_rate_rps` equals ``rate_rps``."""
        native = self.mean_rate_rps
        if not np.isfinite(native):
            raise ValueError(f"a trace of {len(self)} request(s) at one instant has no mean rate to scale")
        return self.scaled(rate_rps / native)

    def split(self, label: str) -> dict[str, Trace]:
        """One trace per value of the label column ``label`` (e.g. ``model``, ``tenant``)."""
        if label not in self.labels:
            raise KeyError(f"the trace has no label '{label}'{did_you_mean(label, list(self.labels), 'labels')}")
        col = self.labels[label]
        return {name: self.select(col.codes == i) for i, name in enumerate(col.names) if np.any(col.codes == i)}

    def drop_failed(self) -> Trace:
        """Without the requests marked failed."""
        if self.failed is None or not self.failed.any():
            return self
        return self.select(~self.failed)


def _take_csr(
    values: np.ndarray | None, offsets: np.ndarray | None, idx: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Rows ``idx`` of a ragged array stored as flat ``values`` and ``offsets`` (vectorised)."""
    if values is None or offsets is None:
        return None, None
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    if total == 0:
        return values[:0].copy(), new_offsets
    gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return values[gather], new_offsets


# --------------------------------------------------------------------------------------------
# reading


def trace_reader(spec: Mapping[str, Any], source: str, prefix: Sequence[Any]) -> tuple[Any, TraceParams]:
    """Resolve ``spec['format']`` in the ``TRACES`` registry and validate the other keys
    against the reader's ``Params``; return ``(reader object, params)``."""
    from simulator.policy import validate_params
    from simulator.registry import TRACES

    where = f"{source}: {'.'.join(str(p) for p in prefix)}" if prefix else source
    name = spec.get("format")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.format: required: the trace format{did_you_mean('', TRACES.names())}")
    try:
        target = TRACES.resolve(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}.format: {exc}") from None
    params = validate_params(target, {k: v for k, v in spec.items() if k != "format"}, source, prefix, "format")
    if not isinstance(params, TraceParams):
        raise ConfigError(
            f"{where}.format: '{name}' is not a trace reader: its Params must subclass workloads.traces.TraceParams"
        )
    return target(params), params


def iter_trace_chunks(
    spec: Mapping[str, Any], base_dir: Path | None = None, source: str = "trace", prefix: Sequence[Any] = ()
) -> Iterator[TraceChunk]:
    """Stream a trace's rows in file order as :class:`TraceChunk` blocks (bounded memory).

    Malformed rows are handled by the spec's ``on_error``; nothing is sorted, windowed or
    scaled (see :func:`read_trace` for that).
    """
    reader, params = trace_reader(spec, source, prefix)
    where = f"{source}: {'.'.join(str(p) for p in prefix)}" if prefix else source
    path = resolve_data_file(params.file, base_dir, f"{where}.file")
    errors = RowErrors(path, params.on_error, where, ReadStats())
    yield from reader.chunks(path, errors)


_TRACE_CACHE: dict[tuple[Any, ...], Trace] = {}
_TRACE_CACHE_SIZE = 4


def read_trace(
    spec: Mapping[str, Any], base_dir: Path | None = None, source: str = "trace", prefix: Sequence[Any] = ()
) -> Trace:
    """Read a whole trace (``{format: NAME, file: PATH, **options}``) into a :class:`Trace`.

    Blocks are assembled, sorted by arrival (stably), made relative to the first arrival, then
    windowed, stripped of failed requests if asked, capped and scaled (module docstring).
    Reading stops early once a sorted file has passed the window's end or the cap. Results
    are cached per (file, its size and mtime, spec) for the life of the process. Errors name
    ``source`` and the key path ``prefix``.
    """
    reader, params = trace_reader(spec, source, prefix)
    where = f"{source}: {'.'.join(str(p) for p in prefix)}" if prefix else source
    path = resolve_data_file(params.file, base_dir, f"{where}.file")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, json.dumps(dict(spec), sort_keys=True, default=str))
    cached = _TRACE_CACHE.get(key)
    if cached is not None:
        return cached
    stats = ReadStats()
    errors = RowErrors(path, params.on_error, where, stats)
    origin = getattr(reader, "origin_ns", None)
    trace = _assemble(reader.chunks(path, errors), params, stats, path, str(spec.get("format")), errors, origin)
    if len(_TRACE_CACHE) >= _TRACE_CACHE_SIZE:
        _TRACE_CACHE.pop(next(iter(_TRACE_CACHE)))
    _TRACE_CACHE[key] = trace
    return trace


def _assemble(
    chunks: Iterator[TraceChunk],
    params: TraceParams,
    stats: ReadStats,
    path: Path,
    fmt: str,
    errors: RowErrors,
    origin_ns: int | None = None,
) -> Trace:
    times: list[np.ndarray] = []
    inputs: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    failed: list[np.ndarray] = []
    prefix_ids: list[np.ndarray] = []
    prefix_lengths: list[np.ndarray] = []
    label_parts: dict[str, list[np.ndarray]] = {}
    label_names: dict[str, dict[str, int]] = {}
    sorted_so_far = True
    last = None
    first_ns = None
    rows = 0
    has_in = has_out = has_failed = has_prefix = None
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        t = chunk.time_ns
        if first_ns is None:
            first_ns = int(t[0]) if origin_ns is None else origin_ns
        if sorted_so_far and ((last is not None and t[0] < last) or np.any(t[1:] < t[:-1])):
            sorted_so_far = False
        last = int(t[-1])
        times.append(t)
        for flag, arr, bucket in (
            ("in", chunk.input_tokens, inputs),
            ("out", chunk.output_tokens, outputs),
            ("failed", chunk.failed, failed),
        ):
            if arr is not None:
                bucket.append(arr)
            elif bucket:
                raise AssertionError(f"trace reader for {fmt} yielded a chunk without '{flag}' after one with it")
        has_in, has_out, has_failed = bool(inputs), bool(outputs), bool(failed)
        if chunk.prefix_offsets is not None and chunk.prefix_ids is not None:
            has_prefix = True
            prefix_ids.append(chunk.prefix_ids)
            prefix_lengths.append(np.diff(chunk.prefix_offsets))
        for name, (codes, names) in chunk.labels.items():
            table = label_names.setdefault(name, {})
            remap = np.array([table.setdefault(v, len(table)) for v in names], dtype=np.int32)
            label_parts.setdefault(name, []).append(remap[codes] if len(remap) else codes.astype(np.int32))
        rows += n
        if sorted_so_far and _past_needs(int(t[-1]) - first_ns, rows, params, failed):
            stats.stopped_early = True
            break
    stats.rows = rows
    if rows == 0:
        raise errors.fail(None, None, "the trace has no requests")
    time_ns = np.concatenate(times)
    order = None if sorted_so_far else np.argsort(time_ns, kind="stable")
    if order is not None:
        time_ns = time_ns[order]
    t0 = int(time_ns[0]) if origin_ns is None else origin_ns
    arrival_s = (time_ns - t0) / 1e9

    def cat(parts: list[np.ndarray]) -> np.ndarray | None:
        if not parts:
            return None
        arr = np.concatenate(parts)
        return arr[order] if order is not None else arr

    ids = offs = None
    if has_prefix:
        flat = np.concatenate(prefix_ids)
        lengths = np.concatenate(prefix_lengths)
        offs = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        ids = flat
        if order is not None:
            ids, offs = _take_csr(flat, offs, order)
    labels = {
        name: Labels(cat(parts), tuple(label_names[name]))  # type: ignore[arg-type]
        for name, parts in label_parts.items()
    }
    failed_arr = cat(failed) if has_failed else None
    epoch = t0 / 1e9 if t0 > 10**17 else float("nan")  # ns after 1973: a wall clock
    trace = Trace(
        arrival_s=arrival_s,
        input_tokens=cat(inputs) if has_in else None,
        output_tokens=cat(outputs) if has_out else None,
        labels=labels,
        failed=failed_arr,
        prefix_ids=ids,
        prefix_offsets=offs,
        source=str(path),
        format=fmt,
        span_s=float(arrival_s[-1]),
        start_epoch_s=epoch,
        stats=stats,
    )
    if failed_arr is not None:
        stats.failed = int(failed_arr.sum())
    _check_units(trace, stats)
    if params.window_s is not None:
        trace = trace.window(*params.window_s)
    if params.failed == "drop" and failed_arr is not None:
        before = len(trace)
        trace = trace.drop_failed()
        stats.failed_dropped = before - len(trace)
    if params.max_requests is not None:
        trace = trace.head(params.max_requests)
    if params.rate_scale is not None:
        trace = trace.scaled(params.rate_scale)
    if len(trace) == 0:
        raise errors.fail(None, None, f"no requests left after window_s {list(params.window_s or [])}")
    return trace


def _past_needs(elapsed_ns: int, rows: int, params: TraceParams, failed: list[np.ndarray]) -> bool:
    """Whether reading a sorted file has passed everything the window and the cap keep."""
    if params.window_s is not None:
        return elapsed_ns >= params.window_s[1] * 1e9
    if params.max_requests is not None:
        dropped = sum(int(f.sum()) for f in failed) if params.failed == "drop" else 0
        return rows - dropped > params.max_requests
    return False


def _check_units(trace: Trace, stats: ReadStats) -> None:
    """Warn about data whose units look wrong (a rate no service has, a span of years)."""
    span = trace.span_s
    rate = trace.mean_rate_rps
    if span > 400 * 86400:
        stats.warnings.append(f"the trace spans {span / 86400:,.0f} days: are its timestamps in the stated unit?")
    if np.isfinite(rate) and rate > 1e7:
        stats.warnings.append(f"mean rate {rate:,.0f} requests/s: are its timestamps in the stated unit?")
