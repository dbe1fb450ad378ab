"""Trace readers: production request logs mapped onto ldsim requests, with units checked.

Each reader is registered in ``TRACES`` (:mod:`simulator.registry`) under the format's name,
is built as ``Reader(params)`` from a ``Params`` subclass of
:class:`workloads.traces.TraceParams`, and streams a file as
:class:`workloads.traces.TraceChunk` blocks of bounded size (no Python object per row: files
are cut into blocks of lines and parsed by pyarrow). Every source column is converted with its
unit stated: timestamps to integer nanoseconds, token counts to whole non-negative integers.

============================  ====================================================================
format                        file and mapping
============================  ====================================================================
``azure_llm_2023``            Azure LLM inference 2023 (code, conv): ``TIMESTAMP`` (wall clock,
                              7 fractional digits) -> arrival; ``ContextTokens`` -> input tokens;
                              ``GeneratedTokens`` -> output tokens.
``azure_llm_2024``            Azure LLM inference 2024 (one week): the same columns; timestamps
                              with or without fractions (up to 9 digits), ``T``/space, ``Z``/offset.
``mooncake``                  Mooncake JSONL: ``timestamp`` (ms from start), ``input_length``,
                              ``output_length`` (tokens), ``hash_ids`` (ids of the 512-token prompt
                              blocks) -> prefix-block ids.
``burstgpt``                  BurstGPT CSV: ``Timestamp`` (s from start), ``Model`` -> label
                              ``model``, ``Request tokens``, ``Response tokens``, ``Total tokens``
                              (checked), ``Log Type`` -> label ``log_type``; a response of 0 tokens
                              marks a failed request (flagged and counted).
``azure_functions_2019``      Azure Functions 2019 ``invocations_per_function_md.anon.dNN.csv``:
                              ``HashOwner, HashApp, HashFunction, Trigger, 1 .. 1440`` invocations
                              per minute -> arrivals synthesised within each minute (see
                              :class:`AzureFunctions2019`); labels ``owner, app, function, trigger``.
``azure_functions_2021``      Azure Functions 2021 per-invocation records: ``app, func,
                              end_timestamp, duration`` (s) -> arrival = end - duration; labels
                              ``app``, ``function``.
``table`` (``csv``,           any CSV or parquet file with a column mapping: ``columns: {arrival,
``parquet``)                  input_tokens, output_tokens, model, tenant}`` and ``time_unit``.
============================  ====================================================================
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
from pydantic import BaseModel, ConfigDict, Field

from simulator.errors import did_you_mean
from workloads.traces import RowErrors, TraceChunk, TraceParams, _take_csr

__all__ = [
    "AzureFunctions2019",
    "AzureFunctions2021",
    "AzureLLM",
    "BurstGPT",
    "Mooncake",
    "Table",
]

#: Bytes of a file parsed at once (a block ends at a line end): bounds a reader's memory.
BLOCK_BYTES = 8 << 20
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_DATETIME = (
    r'^\s*"?(?P<d>\d{4}-\d{2}-\d{2})[ T](?P<t>\d{2}:\d{2}:\d{2})(?:[.,](?P<f>\d{1,9}))?'
    r'\s*(?P<z>Z|UTC|[+-]\d{2}:?\d{2})?"?\s*$'
)
_DATETIME_EXAMPLE = "a date-time like 2023-11-16 18:17:03.9799600"


# --------------------------------------------------------------------------------------------
# blocks of lines


def _line_blocks(path: Path, skip_header: bool) -> Iterator[tuple[bytes, int]]:
    """Yield ``(bytes ending at a line end, number of its first line)`` of ``path``."""
    line = 1
    with path.open("rb") as f:
        if skip_header:
            f.readline()
            line = 2
        rest = b""
        while True:
            chunk = f.read(BLOCK_BYTES)
            data = rest + chunk
            if not data:
                return
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            else:
                rest = b""
            yield data, line
            line += data.count(b"\n")
            if not chunk:
                return


def _csv_header(path: Path, errors: RowErrors, delimiter: str) -> list[str]:
    """The column names on line 1 (BOM and surrounding spaces removed)."""
    with path.open("rb") as f:
        first = f.readline()
    if not first.strip():
        raise errors.fail(1 if first else None, None, "the file is empty" if not first else "no header line")
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    return [name.strip() for name in next(csv.reader([text], delimiter=delimiter))]


@dataclass
class _Block:
    """One parsed block of CSV rows: string columns, and how rows map back to lines."""

    columns: dict[str, pa.Array]
    first_line: int
    n_lines: int
    skipped_lines: list[int]
    live: np.ndarray  # rows that are not blank lines
    _lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.live)

    def line_of(self, i: int) -> int:
        """The 1-based line of row ``i`` of the block."""
        if not self.skipped_lines:
            return self.first_line + i
        if self._lines is None:
            every = np.arange(self.first_line, self.first_line + self.n_lines + 1)
            self._lines = np.setdiff1d(every, np.asarray(self.skipped_lines))
        return int(self._lines[i])

    def raw(self, column: str) -> Callable[[int], Any]:
        """The raw value of ``column`` at row ``i`` (for messages)."""
        return lambda i: self.columns[column][i].as_py()


def _csv_blocks(path: Path, needed: Sequence[str], errors: RowErrors, delimiter: str = ",") -> Iterator[_Block]:
    """Parse ``path`` block by block, keeping the columns ``needed`` as strings.

    A missing column is an error naming line 1; a row with the wrong number of fields is
    handed to ``errors`` with its line; blank lines are skipped and counted.
    """
    names = _csv_header(path, errors, delimiter)
    for col in needed:
        if col not in names:
            raise errors.fail(1, col, f"no such column in the header{did_you_mean(col, names, 'columns')}")
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" if names.index(n) != i else n for i, n in enumerate(names)]
    convert = pcsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        include_columns=list(needed),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    for data, first_line in _line_blocks(path, skip_header=True):
        table, invalid = _parse_csv(data, names, convert, delimiter, threads=True)
        skipped: list[int] = []
        if invalid:
            _, invalid = _parse_csv(data, names, convert, delimiter, threads=False)  # row numbers
            for number, text, actual in invalid:
                line = first_line + number - 1
                skipped.append(line)
                if text.strip():
                    errors.reject_line(line, f"expected {len(names)} fields, got {actual}: {text[:80]!r}")
                else:
                    errors.stats.blank_lines += 1
        columns = {c: table.column(c).combine_chunks() for c in needed}
        n = table.num_rows
        blank = np.ones(n, dtype=bool)
        for col in columns.values():
            blank &= pc.equal(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False)
        errors.stats.blank_lines += int(blank.sum())
        yield _Block(columns, first_line, data.count(b"\n"), skipped, ~blank)


def _parse_csv(
    data: bytes, names: list[str], convert: pcsv.ConvertOptions, delimiter: str, threads: bool
) -> tuple[pa.Table, list[tuple[int, str, int]]]:
    invalid: list[tuple[int, str, int]] = []

    def handler(row: Any) -> str:
        invalid.append((row.number or 0, row.text, row.actual_columns))
        return "skip"

    table = pcsv.read_csv(
        pa.py_buffer(data),
        read_options=pcsv.ReadOptions(column_names=names, use_threads=threads),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler, ignore_empty_lines=False),
        convert_options=convert,
    )
    return table, invalid


# --------------------------------------------------------------------------------------------
# converting string columns, with the bad rows marked


def _to_float(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse numbers; return (float64 values, mask of cells that are not finite numbers)."""
    try:
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        ok = np.ones(len(values), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        trimmed = pc.utf8_trim_whitespace(col)
        okay = pc.match_substring_regex(trimmed, _NUMBER)
        values = pc.cast(pc.if_else(okay, trimmed, "nan"), pa.float64()).to_numpy(zero_copy_only=False)
        ok = okay.to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)
    return values, ~(ok & np.isfinite(values))


def _to_datetime_ns(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse wall-clock date-times (``YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z|UTC|+HH:MM]``, quoted
    or not) to int64 ns since the epoch (UTC when an offset is given); return (ns, bad mask)."""
    try:
        ns = pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(ns, dtype=np.int64), np.zeros(len(ns), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parts = pc.extract_regex(col, _DATETIME)
    ok = parts.is_valid().to_numpy(zero_copy_only=False)

    def part(name: str) -> pa.Array:
        return pc.fill_null(pc.struct_field(parts, name), "")

    base = pc.strptime(
        pc.binary_join_element_wise(part("d"), part("t"), " "), format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True
    )
    ok &= base.is_valid().to_numpy(zero_copy_only=False)
    seconds = pc.fill_null(pc.cast(base, pa.int64()), 0).to_numpy(zero_copy_only=False)
    frac = pc.cast(pc.utf8_rpad(part("f"), width=9, padding="0"), pa.int64()).to_numpy(zero_copy_only=False)
    zone = pc.replace_substring(pc.replace_substring_regex(part("z"), "^(Z|UTC|)$", "+0000"), ":", "")
    sign = np.where(pc.utf8_slice_codeunits(zone, 0, 1).to_numpy(zero_copy_only=False) == "-", -1, 1)
    hours = pc.cast(pc.utf8_slice_codeunits(zone, 1, 3), pa.int64()).to_numpy(zero_copy_only=False)
    minutes = pc.cast(pc.utf8_slice_codeunits(zone, 3, 5), pa.int64()).to_numpy(zero_copy_only=False)
    offset_s = sign * (hours * 3600 + minutes * 60)
    ns = (seconds - offset_s) * 1_000_000_000 + frac
    return np.asarray(ns, dtype=np.int64), ~ok


def _to_labels(col: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Categorical codes (int32) and the distinct values (only these become Python strings)."""
    encoded = pc.dictionary_encode(col)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, [str(v) for v in encoded.dictionary.to_pylist()]


class _Checks:
    """The bad rows of one block, across columns: raise at the earliest, or skip and count."""

    def __init__(self, errors: RowErrors, live: np.ndarray, line_of: Callable[[int], int | str]) -> None:
        self.errors = errors
        self.live = live
        self.line_of = line_of
        self.items: list[tuple[str, np.ndarray, str, Callable[[int], Any]]] = []

    def add(self, column: str, bad: np.ndarray, expected: str, raw: Callable[[int], Any]) -> None:
        """Mark ``bad`` rows of ``column`` (expected: what a good value is)."""
        bad = bad & self.live
        if bad.any():
            self.items.append((column, bad, expected, raw))

    def tokens(self, column: str, col: pa.Array, raw: Callable[[int], Any], noun: str = "tokens") -> np.ndarray:
        """A count column (tokens, or ``noun``): whole numbers >= 0, as int64."""
        values, bad = _to_float(col)
        self.add(column, bad, f"a number of {noun}", raw)
        self.add(column, ~bad & (values < 0), f"a number of {noun} >= 0", raw)
        self.add(column, ~bad & (values != np.floor(values)), f"a whole number of {noun}", raw)
        return np.where(bad, 0, values).astype(np.int64)

    def seconds(self, column: str, col: pa.Array, raw: Callable[[int], Any], unit_s: float, nonneg: bool) -> np.ndarray:
        """A time column in units of ``unit_s`` seconds, as int64 nanoseconds."""
        values, bad = _to_float(col)
        self.add(column, bad, "a number", raw)
        if nonneg:
            self.add(column, ~bad & (values < 0), "a time >= 0", raw)
        return np.rint(np.where(bad, 0.0, values) * (unit_s * 1e9)).astype(np.int64)

    def keep(self) -> np.ndarray:
        """Rows to keep; raises (``on_error: raise``) at the earliest bad row."""
        if not self.items:
            return self.live
        if self.errors.policy == "raise":
            firsts = [int(np.flatnonzero(bad)[0]) for _, bad, _, _ in self.items]
            column, bad, expected, raw = self.items[int(np.argmin(firsts))]
            only = np.zeros_like(bad)
            only[min(firsts)] = True
            self.errors.reject(only, self.line_of, column, expected, raw)
        taken = np.zeros_like(self.live)
        for column, bad, expected, raw in self.items:
            new = bad & ~taken
            self.errors.reject(new, self.line_of, column, expected, raw)
            taken |= new
        return self.live & ~taken


def _labels_of(block_cols: dict[str, pa.Array], mapping: dict[str, str], keep: np.ndarray) -> dict:
    """Label columns (label name -> source column) of the kept rows."""
    out = {}
    for label, column in mapping.items():
        codes, names = _to_labels(block_cols[column])
        out[label] = (codes[keep], names)
    return out


# --------------------------------------------------------------------------------------------
# the readers


class AzureLLM:
    """Azure LLM inference traces, 2023 (``AzureLLMInferenceTrace_{code,conv}.csv``) and 2024
    (``..._1week.csv``): ``TIMESTAMP`` (wall clock; fractions of up to 9 digits, or none),
    ``ContextTokens`` (prompt tokens), ``GeneratedTokens`` (output tokens)."""

    class Params(TraceParams):
        """The common trace options (:class:`workloads.traces.TraceParams`)."""

    def __init__(self, params: TraceParams) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Stream the file's rows."""
        for block in _csv_blocks(path, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"], errors):
            cols = block.columns
            checks = _Checks(errors, block.live, block.line_of)
            ns, bad = _to_datetime_ns(cols["TIMESTAMP"])
            checks.add("TIMESTAMP", bad, _DATETIME_EXAMPLE, block.raw("TIMESTAMP"))
            inp = checks.tokens("ContextTokens", cols["ContextTokens"], block.raw("ContextTokens"))
            out = checks.tokens("GeneratedTokens", cols["GeneratedTokens"], block.raw("GeneratedTokens"))
            keep = checks.keep()
            yield TraceChunk(time_ns=ns[keep], input_tokens=inp[keep], output_tokens=out[keep])


class BurstGPT:
    """BurstGPT (``BurstGPT_*.csv``): ``Timestamp`` (seconds from the trace's start),
    ``Model`` (ChatGPT, GPT-4), ``Request tokens``, ``Response tokens``, ``Total tokens``,
    ``Log Type`` (Conversation log, API log). A request with 0 response tokens failed: it is
    flagged (``failed``), counted, and kept or dropped by the ``failed`` option. Rows whose
    total is not request + response are counted in a warning."""

    #: Timestamps count from the trace's start: keep it as time 0.
    origin_ns = 0

    class Params(TraceParams):
        """The common trace options (:class:`workloads.traces.TraceParams`)."""

    def __init__(self, params: TraceParams) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Stream the file's rows."""
        names = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]
        mismatched = 0
        for block in _csv_blocks(path, names, errors):
            cols = block.columns
            checks = _Checks(errors, block.live, block.line_of)
            ns = checks.seconds("Timestamp", cols["Timestamp"], block.raw("Timestamp"), 1.0, nonneg=True)
            inp = checks.tokens("Request tokens", cols["Request tokens"], block.raw("Request tokens"))
            out = checks.tokens("Response tokens", cols["Response tokens"], block.raw("Response tokens"))
            total = checks.tokens("Total tokens", cols["Total tokens"], block.raw("Total tokens"))
            keep = checks.keep()
            mismatched += int(np.sum((total != inp + out) & keep))
            labels = _labels_of(cols, {"model": "Model", "log_type": "Log Type"}, keep)
            yield TraceChunk(
                time_ns=ns[keep], input_tokens=inp[keep], output_tokens=out[keep], labels=labels, failed=out[keep] == 0
            )
        if mismatched:
            errors.stats.warnings.append(f"{mismatched:,} rows whose 'Total tokens' is not request + response")


class Mooncake:
    """Mooncake JSONL (kvcache-ai/Mooncake ``*_trace.jsonl``): one object a line with
    ``timestamp`` (milliseconds from the trace's start), ``input_length`` and
    ``output_length`` (tokens), and ``hash_ids`` (ids of the prompt's 512-token blocks; equal
    ids are a shared prefix), kept as the requests' prefix-block ids."""

    #: Timestamps count from the trace's start: keep it as time 0.
    origin_ns = 0

    class Params(TraceParams):
        """The common trace options (:class:`workloads.traces.TraceParams`)."""

    _SCHEMA = pa.schema(
        [
            ("timestamp", pa.float64()),
            ("input_length", pa.float64()),
            ("output_length", pa.float64()),
            ("hash_ids", pa.list_(pa.int64())),
        ]
    )

    def __init__(self, params: TraceParams) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Stream the file's rows."""
        for data, first_line in _line_blocks(path, skip_header=False):
            try:
                table = pjson.read_json(
                    io.BytesIO(data),
                    parse_options=pjson.ParseOptions(explicit_schema=self._SCHEMA, unexpected_field_behavior="ignore"),
                )
                columns = {name: table.column(name).combine_chunks() for name in self._SCHEMA.names}
                lines = _NonBlankLines(data, first_line)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                columns, lines = self._slow_block(data, first_line, errors)
            yield self._chunk(columns, lines, errors)

    def _slow_block(
        self, data: bytes, first_line: int, errors: RowErrors
    ) -> tuple[dict[str, pa.Array], _NonBlankLines]:
        """Parse a block line by line (only for a block that pyarrow refused), so that the
        error names the line."""
        rows: dict[str, list[Any]] = {name: [] for name in self._SCHEMA.names}
        kept: list[int] = []
        for k, text in enumerate(data.split(b"\n")):
            line = first_line + k
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                errors.reject_line(line, f"not valid JSON ({str(exc)[:60]}): {text[:80]!r}")
                continue
            if not isinstance(obj, dict):
                errors.reject_line(line, f"not a JSON object: {text[:80]!r}")
                continue
            problem = next(
                (
                    f"field '{name}': expected a number, got {obj.get(name)!r}"
                    for name in ("timestamp", "input_length", "output_length")
                    if isinstance(obj.get(name), bool) or not isinstance(obj.get(name), int | float)
                ),
                None,
            )
            ids = obj.get("hash_ids", [])
            if problem is None and (
                not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            ):
                problem = f"field 'hash_ids': expected a list of integers, got {str(ids)[:60]}"
            if problem is not None:
                errors.reject_line(line, problem)
                continue
            for name in ("timestamp", "input_length", "output_length"):
                rows[name].append(float(obj[name]))
            rows["hash_ids"].append(ids)
            kept.append(line)
        columns = {name: pa.array(rows[name], type=self._SCHEMA.field(name).type) for name in rows}
        return columns, _NonBlankLines(data, first_line, kept)

    def _chunk(self, columns: dict[str, pa.Array], lines: _NonBlankLines, errors: RowErrors) -> TraceChunk:
        n = len(columns["timestamp"])
        checks = _Checks(errors, np.ones(n, dtype=bool), lines.line_of)

        def raw(name: str) -> Callable[[int], Any]:
            return lambda i: columns[name][i].as_py()

        values: dict[str, np.ndarray] = {}
        for name in ("timestamp", "input_length", "output_length"):
            col = columns[name]
            arr = np.asarray(pc.fill_null(col, math.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
            missing = col.is_null().to_numpy(zero_copy_only=False)
            checks.add(name, missing, "a number (the field is missing)", raw(name))
            checks.add(name, ~missing & ~np.isfinite(arr), "a finite number", raw(name))
            checks.add(name, ~missing & (arr < 0), "a value >= 0", raw(name))
            if name != "timestamp":
                checks.add(name, ~missing & (arr != np.floor(arr)), "a whole number of tokens", raw(name))
            values[name] = np.where(np.isfinite(arr), arr, 0.0)
        keep = checks.keep()
        ids = columns["hash_ids"]
        lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if not keep.all():
            flat, offsets = _take_csr(flat, offsets, np.flatnonzero(keep))  # type: ignore[assignment]
        return TraceChunk(
            time_ns=np.rint(values["timestamp"][keep] * 1e6).astype(np.int64),
            input_tokens=values["input_length"][keep].astype(np.int64),
            output_tokens=values["output_length"][keep].astype(np.int64),
            prefix_offsets=offsets,
            prefix_ids=flat,
        )


class _NonBlankLines:
    """Line numbers of the non-blank lines of a JSONL block (computed only for a message)."""

    def __init__(self, data: bytes, first_line: int, lines: list[int] | None = None) -> None:
        self.data = data
        self.first_line = first_line
        self.lines = lines

    def line_of(self, i: int) -> int:
        if self.lines is None:
            self.lines = [self.first_line + k for k, ln in enumerate(self.data.split(b"\n")) if ln.strip()]
        return self.lines[i]


class AzureFunctions2019:
    """Azure Functions 2019 invocation counts (``invocations_per_function_md.anon.dNN.csv``):
    one row per function, ``HashOwner, HashApp, HashFunction, Trigger`` and 1440 columns
    ``1 .. 1440`` with the invocations in each minute of the day.

    The trace gives counts, not instants, so arrivals are synthesised within each minute:
    ``within_minute: uniform`` (default) places a minute's ``c`` invocations independently and
    uniformly in it, which is what a Poisson process conditioned on ``c`` arrivals in the
    minute does: it adds no structure that the data does not show. ``even`` spaces them at
    ``(k + 1/2) * 60 / c`` seconds, a deterministic pattern (inter-arrival CV 0 within a minute)
    that every function would share at the minute's start. ``seed`` fixes the uniform
    placement: it is part of reading the trace, so every run of a sweep replays the same
    arrivals. Minute ``m`` covers ``[60 (m - 1), 60 m)`` seconds from the start of the day.
    """

    #: Timestamps count from the trace's start: keep it as time 0.
    origin_ns = 0

    class Params(TraceParams):
        """``within_minute``: ``uniform`` or ``even``; ``seed`` of the uniform placement."""

        within_minute: Literal["uniform", "even"] = "uniform"
        seed: int = 0

    LABELS: ClassVar[dict[str, str]] = {
        "owner": "HashOwner",
        "app": "HashApp",
        "function": "HashFunction",
        "trigger": "Trigger",
    }

    def __init__(self, params: Params) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Read the counts (kept sparse: only non-zero minutes), then yield the synthesised
        arrivals in time order, about one block of rows at a time."""
        names = _csv_header(path, errors, ",")
        minutes = [n for n in names if n.isdigit()]
        if not minutes:
            raise errors.fail(1, "1", "no per-minute columns ('1' .. '1440') in the header")
        label_codes: dict[str, list[np.ndarray]] = {k: [] for k in self.LABELS}
        label_names: dict[str, dict[str, int]] = {k: {} for k in self.LABELS}
        triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_functions = 0
        for block in _csv_blocks(path, [*self.LABELS.values(), *minutes], errors):
            checks = _Checks(errors, block.live, block.line_of)
            counts = np.zeros((len(block), len(minutes)), dtype=np.int64)
            for j, m in enumerate(minutes):
                counts[:, j] = checks.tokens(m, block.columns[m], block.raw(m), "invocations")
            keep = checks.keep()
            counts = counts[keep]
            for label, column in self.LABELS.items():
                codes, values = _to_labels(block.columns[column])
                table = label_names[label]
                remap = np.array([table.setdefault(v, len(table)) for v in values], dtype=np.int32)
                label_codes[label].append(remap[codes[keep]] if len(remap) else codes[keep])
            rows, cols = np.nonzero(counts)
            minute_index = np.asarray([int(m) - 1 for m in minutes], dtype=np.int64)[cols]
            triples.append((minute_index, rows + n_functions, counts[rows, cols]))
            n_functions += int(keep.sum())
        if not triples:
            return
        minute = np.concatenate([t[0] for t in triples])
        function = np.concatenate([t[1] for t in triples])
        count = np.concatenate([t[2] for t in triples])
        order = np.lexsort((function, minute))
        minute, function, count = minute[order], function[order], count[order]
        label_arrays = {k: np.concatenate(v) for k, v in label_codes.items()}
        names_of = {k: list(v) for k, v in label_names.items()}
        rng = np.random.default_rng(self.params.seed)
        # cut at minute boundaries into blocks of about a million arrivals
        ends = np.flatnonzero(np.diff(minute)) + 1
        bounds = np.concatenate([[0], ends, [len(minute)]])
        total = np.concatenate([[0], np.cumsum(count)])
        start = 0
        while start < len(bounds) - 1:
            stop = start + 1
            while stop < len(bounds) - 1 and total[bounds[stop]] - total[bounds[start]] < (1 << 20):
                stop += 1
            lo, hi = bounds[start], bounds[stop]
            yield self._arrivals(minute[lo:hi], function[lo:hi], count[lo:hi], label_arrays, names_of, rng)
            start = stop

    def _arrivals(
        self,
        minute: np.ndarray,
        function: np.ndarray,
        count: np.ndarray,
        codes: dict[str, np.ndarray],
        names: dict[str, list[str]],
        rng: np.random.Generator,
    ) -> TraceChunk:
        k = int(count.sum())
        fn = np.repeat(function, count)
        if self.params.within_minute == "uniform":
            offset = rng.random(k)
        else:
            starts = np.repeat(np.cumsum(count) - count, count)
            offset = (np.arange(k) - starts + 0.5) / np.repeat(count, count)
        time_s = (np.repeat(minute, count) + offset) * 60.0
        order = np.argsort(time_s, kind="stable")
        fn = fn[order]
        labels = {label: (codes[label][fn], names[label]) for label in self.LABELS}
        return TraceChunk(time_ns=np.rint(time_s[order] * 1e9).astype(np.int64), labels=labels)


class AzureFunctions2021:
    """Azure Functions 2021 per-invocation records
    (``AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt``): ``app``, ``func`` (unique only
    within its app), ``end_timestamp`` and ``duration`` (seconds). The arrival is
    ``end_timestamp - duration``; rows are not in arrival order (sorted on reading). Labels:
    ``app`` and ``function`` (``app/func``)."""

    class Params(TraceParams):
        """The common trace options (:class:`workloads.traces.TraceParams`)."""

    def __init__(self, params: TraceParams) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Stream the file's rows."""
        for block in _csv_blocks(path, ["app", "func", "end_timestamp", "duration"], errors):
            cols = block.columns
            checks = _Checks(errors, block.live, block.line_of)
            end = checks.seconds("end_timestamp", cols["end_timestamp"], block.raw("end_timestamp"), 1.0, True)
            dur = checks.seconds("duration", cols["duration"], block.raw("duration"), 1.0, True)
            keep = checks.keep()
            function = pc.binary_join_element_wise(cols["app"], cols["func"], "/")
            codes, names = _to_labels(function)
            labels = _labels_of(cols, {"app": "app"}, keep)
            labels["function"] = (codes[keep], names)
            yield TraceChunk(time_ns=(end - dur)[keep], labels=labels)


class ColumnMap(BaseModel):
    """Which source column holds each request field (only ``arrival`` is required)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arrival: str
    input_tokens: str | None = None
    output_tokens: str | None = None
    model: str | None = None
    tenant: str | None = None


class Table:
    """Any CSV or parquet file (parquet by the suffix ``.parquet``/``.pq``), mapped by
    ``columns: {arrival: COL, input_tokens: COL, output_tokens: COL, model: COL, tenant: COL}``.
    ``time_unit``: the arrival column's unit, ``s``, ``ms``, ``us``, ``ns`` (numbers) or
    ``datetime`` (wall-clock text, or a parquet timestamp column)."""

    class Params(TraceParams):
        """``columns`` (see the class), ``time_unit``, ``delimiter`` (CSV)."""

        columns: ColumnMap
        time_unit: Literal["s", "ms", "us", "ns", "datetime"] = "s"
        delimiter: str = Field(default=",", min_length=1, max_length=1)

    _UNIT_S: ClassVar[dict[str, float]] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

    def __init__(self, params: Params) -> None:
        self.params = params

    def chunks(self, path: Path, errors: RowErrors) -> Iterator[TraceChunk]:
        """Stream the file's rows."""
        cmap = self.params.columns
        wanted = {k: v for k, v in cmap.model_dump().items() if v is not None}
        if path.suffix.lower() in (".parquet", ".pq"):
            yield from self._parquet(path, wanted, errors)
            return
        for block in _csv_blocks(path, list(dict.fromkeys(wanted.values())), errors, self.params.delimiter):
            yield self._chunk(block.columns, wanted, errors, block.live, block.line_of)

    def _parquet(self, path: Path, wanted: dict[str, str], errors: RowErrors) -> Iterator[TraceChunk]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except Exception as exc:
            raise errors.fail(None, None, f"cannot read as parquet: {exc}") from None
        names = file.schema_arrow.names
        for col in wanted.values():
            if col not in names:
                raise errors.fail(None, col, f"no such column{did_you_mean(col, names, 'columns')}")
        row = 0
        for batch in file.iter_batches(batch_size=1 << 20, columns=list(dict.fromkeys(wanted.values()))):
            cols = {name: batch.column(name) for name in batch.schema.names}
            first = row

            def line_of(i: int, first: int = first) -> str:
                return f"row {first + i + 1}"

            yield self._chunk(cols, wanted, errors, np.ones(batch.num_rows, dtype=bool), line_of)
            row += batch.num_rows

    def _chunk(
        self,
        cols: dict[str, pa.Array],
        wanted: dict[str, str],
        errors: RowErrors,
        live: np.ndarray,
        line_of: Callable[[int], int | str],
    ) -> TraceChunk:
        checks = _Checks(errors, live, line_of)

        def raw(name: str) -> Callable[[int], Any]:
            return lambda i: cols[name][i].as_py()

        def text(col: pa.Array) -> pa.Array:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                return col
            missing = col.is_null()
            return pc.if_else(missing, "", pc.cast(col, pa.string()))

        arrival = cols[wanted["arrival"]]
        if self.params.time_unit == "datetime":
            if pa.types.is_timestamp(arrival.type):
                ns = pc.cast(pc.cast(arrival, pa.timestamp("ns")), pa.int64())
                bad = arrival.is_null().to_numpy(zero_copy_only=False)
                time_ns = np.asarray(pc.fill_null(ns, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            else:
                time_ns, bad = _to_datetime_ns(text(arrival))
            checks.add(wanted["arrival"], bad, _DATETIME_EXAMPLE, raw(wanted["arrival"]))
        else:
            time_ns = checks.seconds(
                wanted["arrival"], text(arrival), raw(wanted["arrival"]), self._UNIT_S[self.params.time_unit], False
            )
        sizes = {
            key: checks.tokens(wanted[key], text(cols[wanted[key]]), raw(wanted[key]))
            for key in ("input_tokens", "output_tokens")
            if key in wanted
        }
        keep = checks.keep()
        labels = _labels_of(
            {k: text(v) for k, v in cols.items()}, {k: wanted[k] for k in ("model", "tenant") if k in wanted}, keep
        )
        return TraceChunk(
            time_ns=time_ns[keep],
            input_tokens=sizes["input_tokens"][keep] if "input_tokens" in sizes else None,
            output_tokens=sizes["output_tokens"][keep] if "output_tokens" in sizes else None,
            labels=labels,
        )
