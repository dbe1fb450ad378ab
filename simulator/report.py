"""The report of a results folder: ``report.html`` and ``figures/*.png`` across a sweep's runs.

Reads what :mod:`simulator.results` wrote (one folder per finished run, ``*.error.txt`` per
failed run) and draws the figures a systems paper would show: latency CDFs, latency
percentiles and throughput against offered load (or against the swept key when the sweep
varies something else), and queue length, utilisation, KV cache and batch size over time.
Seeds of the same grid point are pooled (CDFs) or averaged with their min-max as error bars
(percentiles, throughput). Computing a figure's numbers (:func:`figure_data`, plain
:class:`FigureData` records in the units drawn) is separate from drawing them
(:func:`render_png`), so the numbers are testable. The HTML is self-contained (figures as
base64 data URIs) and every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from simulator.errors import LdsimError
from simulator.results import RESULT_FILES, atomic_write_text, read_summaries

__all__ = [
    "CDF_MAX_POINTS",
    "DPI",
    "FIGURE_NAMES",
    "TIMESERIES_MAX_POINTS",
    "TIMESERIES_MAX_RUNS",
    "Curve",
    "FailedRun",
    "FigureData",
    "GridPoint",
    "Panel",
    "Results",
    "RunRecord",
    "SweepAxis",
    "figure_data",
    "load_results",
    "render_png",
    "sweep_axis",
    "write_report",
]

#: Most points kept per CDF line: evenly spaced in sorted order, the maximum always included.
CDF_MAX_POINTS = 2000
#: Most grid points drawn over time; with more, the lowest, middle and highest load of each
#: line of the sweep figures are drawn (of the first line only, if that is still too many).
TIMESERIES_MAX_RUNS = 6
#: Most points kept per time-series line (consecutive samples are averaged beyond it).
TIMESERIES_MAX_POINTS = 1000
#: Resolution of the PNG figures, in dots per inch.
DPI = 150
#: The figure files a report may write (``figures/<name>.png``), in the order shown.
FIGURE_NAMES = ("latency_cdf", "latency_percentiles", "throughput", "queue_utilisation", "decoder_kv_batch")

_PANEL_W_IN = 3.2  # one panel's width, inches
_PANEL_H_IN = 2.4  # one panel's height, inches
_SMALL_PANEL_H_IN = 1.7  # one panel's height when each run has its own row, inches
_OVERLAY_MAX_RATIO = 3.0  # runs whose lengths differ by more than this get one row each
_LOG_RATIO = 30.0  # a latency axis spanning more than this factor is drawn on a log scale
_PERCENTILES = (50, 90, 99)
_METRICS = {  # summary prefix -> (name in figures, unit)
    "e2e": ("e2e latency", "ms"),
    "ttft": ("TTFT", "ms"),
    "tpot": ("TPOT", "ms/token"),
}
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "errorbar.capsize": 2,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "legend.frameon": False,
}


# --------------------------------------------------------------------------------------------
# reading a results folder


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its folder, sweep point ``{dotted.key: value}``, seed, ``summary.json``
    (seconds, requests/s) and ``config.resolved.yaml`` as plain data."""

    run_id: str
    folder: Path
    point: dict[str, Any]
    seed: int | None
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def decoder(self) -> bool:
        """True if some completed request emitted two or more tokens (a finite TPOT)."""
        return self.summary.get("tpot_p50_s") is not None


@dataclass(frozen=True)
class FailedRun:
    """A run that left ``<run-id>.error.txt`` (or an incomplete folder): ``reason`` is the
    error's last line, ``detail`` the whole text."""

    run_id: str
    path: Path
    reason: str
    detail: str


@dataclass(frozen=True)
class GridPoint:
    """One point of the sweep grid with its runs (one per seed, by increasing seed)."""

    point: dict[str, Any]
    label: str
    runs: tuple[RunRecord, ...]


@dataclass(frozen=True)
class Results:
    """A results folder: its finished runs ordered by grid values then seed, the same runs
    grouped by grid point, the failed runs, and the grid keys (``varying_keys``: those with
    two or more distinct values)."""

    out_dir: Path
    runs: tuple[RunRecord, ...]
    points: tuple[GridPoint, ...]
    failed: tuple[FailedRun, ...]
    grid_keys: tuple[str, ...]
    varying_keys: tuple[str, ...]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    """``value`` as a float; ``nan`` for ``None`` and non-numbers."""
    return float(value) if _is_number(value) else math.nan


def _key_text(value: Any) -> str:
    """A grid value as canonical JSON text: hashable, and equal exactly when the values are."""
    return json.dumps(value, sort_keys=True, default=str)


def _order(value: Any) -> tuple[int, float, str]:
    """Sort key: numbers by value, before anything else by its JSON text."""
    if _is_number(value):
        return (0, float(value), "")
    return (1, 0.0, _key_text(value))


def _fmt_value(value: Any) -> str:
    """A grid value for a legend: numbers compactly, a policy/distribution spec by its name
    and parameters (``dynamic(max_batch_size=16, max_queue_delay_ms=100)``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str | int | bool) or value is None:
        return str(value)
    if isinstance(value, dict):
        name_key = next((k for k in ("policy", "dist", "process") if k in value), None)
        if name_key is not None:
            rest = ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items() if k != name_key)
            text = f"{value[name_key]}({rest})" if rest else str(value[name_key])
            return text if len(text) <= 48 else text[:47] + "…"
    return json.dumps(value, sort_keys=True, default=str)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where two would read the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _point_label(point: dict[str, Any], keys: Sequence[str]) -> str:
    names = _short_names(keys)
    return ", ".join(f"{names[k]}={_fmt_value(point.get(k))}" for k in keys)


def _read_failure(path: Path) -> FailedRun:
    try:
        detail = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        detail = f"(could not read {path.name}: {exc})"
    lines = [ln.strip() for ln in detail.splitlines() if ln.strip()]
    reason = lines[-1] if lines else "(no message)"
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return FailedRun(path.name.removesuffix(".error.txt"), path, reason, detail)


def load_results(out_dir: Path) -> Results:
    """Read every finished and failed run of ``out_dir``.

    Hidden folders (``.tmp-*``, runs being written) are ignored; a run folder that lacks one
    of the result files is reported as failed. Raises :class:`LdsimError` naming the folder
    when it holds no finished run.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise LdsimError(f"{out_dir}: no such results folder")
    by_id: dict[str, dict[str, Any]] = {}
    # read_summaries sorts by folder name, so a hidden temporary copy of a run ('.tmp-<id>-pid')
    # comes before the run's own folder, which therefore wins here
    for summary in read_summaries(out_dir):
        run_id = str(summary.get("run_id", ""))
        if run_id and not run_id.startswith(".") and (out_dir / run_id / "summary.json").is_file():
            by_id[run_id] = summary
    failed = [_read_failure(p) for p in sorted(out_dir.glob("*.error.txt")) if not p.name.startswith(".")]
    records = []
    for run_id, summary in by_id.items():
        folder = out_dir / run_id
        missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
        if missing:
            reason = f"incomplete run folder: missing {', '.join(missing)}"
            failed.append(FailedRun(run_id, folder, reason, reason))
            continue
        point = summary["_point"] if isinstance(summary.get("_point"), dict) else {}
        seed = summary.get("_seed")
        records.append(
            RunRecord(run_id, folder, dict(point), seed if isinstance(seed, int) else None, summary, summary["_config"])
        )
    if not records:
        if failed:
            raise LdsimError(
                f"{out_dir}: no finished runs to report; {len(failed)} failed"
                f" (first: {failed[0].path}: {failed[0].reason})"
            )
        raise LdsimError(
            f"{out_dir}: no finished runs to report (expected one folder per run with summary.json,"
            " as written by 'ldsim run')"
        )
    grid_keys: list[str] = []
    for rec in records:
        grid_keys.extend(k for k in rec.point if k not in grid_keys)

    def run_order(rec: RunRecord) -> tuple[Any, ...]:
        return (*(_order(rec.point.get(k)) for k in grid_keys), rec.seed if rec.seed is not None else 0, rec.run_id)

    records.sort(key=run_order)
    distinct = {k: {_key_text(r.point.get(k)) for r in records} for k in grid_keys}
    varying = tuple(k for k in grid_keys if len(distinct[k]) > 1)
    groups: dict[str, list[RunRecord]] = {}
    for rec in records:
        groups.setdefault(_key_text(rec.point), []).append(rec)
    points = tuple(
        GridPoint(runs[0].point, _point_label(runs[0].point, varying) or "all runs", tuple(runs))
        for runs in groups.values()
    )
    failed.sort(key=lambda f: f.run_id)
    return Results(out_dir, tuple(records), points, tuple(failed), tuple(grid_keys), varying)


# --------------------------------------------------------------------------------------------
# the numbers behind each figure


@dataclass(frozen=True)
class Curve:
    """One line of a panel, in the panel's units. ``y_low``/``y_high`` (when given) are drawn
    as error bars: the min and max over the seeds of each grid point. ``color`` indexes the
    figure's palette; ``label`` ``None`` keeps the line out of the legend."""

    label: str | None
    x: np.ndarray
    y: np.ndarray
    y_low: np.ndarray | None = None
    y_high: np.ndarray | None = None
    color: int = 0
    linestyle: str = "-"
    marker: str | None = None
    steps: bool = False


@dataclass(frozen=True)
class Panel:
    """One set of axes: its labels (with units), lines, scales, optional ``y = x`` reference
    line, fixed y range, tick labels of a categorical x axis, and an x interval the axis must
    show even where no line has a value (the whole sweep)."""

    title: str
    x_label: str
    y_label: str
    curves: tuple[Curve, ...]
    log_x: bool = False
    log_y: bool = False
    diagonal: bool = False
    y_range: tuple[float, float] | None = None
    x_ticks: tuple[tuple[float, str], ...] | None = None
    x_span: tuple[float, float] | None = None
    title_left: bool = False


@dataclass(frozen=True)
class FigureData:
    """One figure (``figures/<name>.png``): panels laid out ``ncols`` wide, colours from a
    ``sequential`` palette (lines ordered by a sweep value) or a qualitative one."""

    name: str
    title: str
    caption: str
    panels: tuple[Panel, ...]
    ncols: int
    n_colors: int
    sequential: bool
    panel_height_in: float = _PANEL_H_IN


@dataclass(frozen=True)
class SweepAxis:
    """The x axis of the figures across a sweep: the measured offered load (``key`` ``None``,
    requests/s) or one grid key; the other varying keys make one line each (``series_keys``).
    A grid key with non-numeric values is drawn at positions 0, 1, ... named by
    ``categories``."""

    key: str | None
    label: str
    series_keys: tuple[str, ...]
    categories: tuple[str, ...] | None = None
    log: bool = False

    def position(self, point: GridPoint) -> float:
        """Where ``point`` lies on this axis (mean offered load over its seeds, or its value)."""
        if self.key is None:
            return _over_seeds(r.summary.get("offered_rps") for r in point.runs)[0]
        value = point.point.get(self.key)
        if self.categories is not None:
            return float(self.categories.index(_fmt_value(value)))
        return _as_float(value)


def _over_seeds(values: Iterable[Any]) -> tuple[float, float, float]:
    """Mean, min and max of the finite numbers among ``values`` (``nan`` if there are none)."""
    a = np.array([_as_float(v) for v in values], dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return (math.nan, math.nan, math.nan)
    return (float(a.mean()), float(a.min()), float(a.max()))


def _is_load_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "rate_rps"


def sweep_axis(results: Results) -> SweepAxis | None:
    """The x axis for figures across the sweep, or ``None`` if there are not two distinct x
    values. When the grid varies the arrival rate (a key ending in ``rate_rps``), x is the
    offered load measured in each run; otherwise x is the first varying grid key."""
    varying = results.varying_keys
    load = [k for k in varying if _is_load_key(k)]
    if load:
        axis = SweepAxis(None, "offered load (requests/s)", tuple(k for k in varying if k not in load))
        xs = {round(axis.position(p), 9) for p in results.points}
        xs = {x for x in xs if math.isfinite(x)}
        return axis if len(xs) >= 2 else None
    if not varying:
        return None
    key = varying[0]
    values = sorted({_key_text(p.point.get(key)) for p in results.points})
    raw = [json.loads(v) for v in values]
    if all(_is_number(v) for v in raw):
        nums = sorted(float(v) for v in raw)
        log = nums[0] > 0 and nums[-1] / nums[0] > 50
        return SweepAxis(key, key, tuple(varying[1:]), None, log)
    cats = tuple(_fmt_value(v) for v in sorted(raw, key=_order))
    return SweepAxis(key, key, tuple(varying[1:]), cats)


def _sweep_series(results: Results, axis: SweepAxis) -> list[tuple[str, list[tuple[float, GridPoint]]]]:
    """The grid points split into lines by ``axis.series_keys``, each sorted along the axis."""
    groups: dict[str, list[tuple[float, GridPoint]]] = {}
    for point in results.points:
        label = _point_label(point.point, axis.series_keys)
        groups.setdefault(label, []).append((axis.position(point), point))
    return [
        (label, sorted(items, key=lambda item: (not math.isfinite(item[0]), item[0])))
        for label, items in groups.items()
    ]


def _x_ticks(axis: SweepAxis) -> tuple[tuple[float, str], ...] | None:
    if axis.categories is None:
        return None
    return tuple((float(i), c) for i, c in enumerate(axis.categories))


def _x_span(results: Results, axis: SweepAxis) -> tuple[float, float] | None:
    xs = [x for x in (axis.position(p) for p in results.points) if math.isfinite(x)]
    return (min(xs), max(xs)) if xs else None


def _wide_range(values: Iterable[np.ndarray]) -> bool:
    """True if the positive values span more than :data:`_LOG_RATIO` (draw on a log scale)."""
    arrays = [v[np.isfinite(v) & (v > 0)] for v in values]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return False
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    return hi / lo > _LOG_RATIO


def _seed_curve(
    label: str | None,
    items: Sequence[tuple[float, GridPoint]],
    column: str,
    scale: float,
    color: int,
    linestyle: str = "-",
    marker: str = "o",
    model: str | None = None,
) -> Curve:
    """A line through the grid points: mean over seeds of ``summary[column] * scale`` (of
    ``summary["per_model"][model]`` when a model is named), with the min and max over seeds
    as error bars where a point has more than one seed."""

    def value(run: RunRecord) -> Any:
        block = run.summary if model is None else (run.summary.get("per_model") or {}).get(model, {})
        return block.get(column)

    stats = np.array([_over_seeds(value(r) for r in p.runs) for _, p in items], dtype=float)
    if stats.size == 0:
        stats = np.empty((0, 3))
    stats *= scale
    x = np.array([x for x, _ in items], dtype=float)
    several = any(len(p.runs) > 1 for _, p in items)
    return Curve(
        label,
        x,
        stats[:, 0],
        stats[:, 1] if several else None,
        stats[:, 2] if several else None,
        color,
        linestyle,
        marker,
    )


def _percentile_figure(results: Results, axis: SweepAxis) -> FigureData:
    decoder = any(r.decoder for r in results.runs)
    metrics = ["e2e", "ttft", "tpot"] if decoder else ["e2e"]
    # with several models, each model is a line of its own (its own percentiles)
    per_model = [r.summary.get("per_model") or {} for r in results.runs]
    models = list(dict.fromkeys(m for blocks in per_model for m in blocks))
    emits = {m: any(b.get(m, {}).get("tpot_p50_s") is not None for b in per_model) for m in models}
    lines: list[tuple[str, Sequence[tuple[float, GridPoint]], str | None]] = []
    for label, items in _sweep_series(results, axis):
        if len(models) > 1:
            lines += [(f"{label} · {m}" if label else m, items, m) for m in models]
        else:
            lines.append((label, items, None))

    def wanted(metric: str, model: str | None) -> bool:  # TTFT/TPOT only of models that emit tokens
        return metric == "e2e" or model is None or emits[model]

    ticks = _x_ticks(axis)
    span = _x_span(results, axis)
    panels = []
    styles = {50: ("-", "o"), 90: ("--", "s"), 99: (":", "^")}
    if len(lines) == 1:
        only = lines[0][1]
        for metric in metrics:
            name, unit = _METRICS[metric]
            curves = tuple(
                _seed_curve(f"p{pct}", only, f"{metric}_p{pct}_s", 1e3, i, *styles[pct])
                for i, pct in enumerate(_PERCENTILES)
            )
            log_y = _wide_range(c.y for c in curves)
            panels.append(
                Panel(name, axis.label, f"{name} ({unit})", curves, axis.log, log_y, x_ticks=ticks, x_span=span)
            )
        ncols, n_colors = len(panels), len(_PERCENTILES)
    else:
        for metric in metrics:
            name, unit = _METRICS[metric]
            for pct in _PERCENTILES:
                curves = tuple(
                    _seed_curve(label, items, f"{metric}_p{pct}_s", 1e3, i, model=model)
                    for i, (label, items, model) in enumerate(lines)
                    if wanted(metric, model)
                )
                log_y = _wide_range(c.y for c in curves)
                panels.append(
                    Panel(
                        f"p{pct} {name}",
                        axis.label,
                        f"p{pct} {name} ({unit})",
                        curves,
                        axis.log,
                        log_y,
                        x_ticks=ticks,
                        x_span=span,
                    )
                )
        ncols, n_colors = len(_PERCENTILES), len(lines)
    what = "offered load" if axis.key is None else axis.key
    return FigureData(
        "latency_percentiles",
        f"Latency percentiles against {what}",
        f"p50, p90 and p99 of the latency of completed requests against {what}"
        + (" (offered load: all models together)" if len(models) > 1 and axis.key is None else "")
        + ("; TTFT and TPOT of the models that emit tokens" if decoder else "")
        + ". Points: mean over seeds; error bars: min and max over seeds.",
        tuple(panels),
        ncols,
        n_colors,
        False,
    )


def _throughput_figure(results: Results, axis: SweepAxis) -> FigureData:
    series = _sweep_series(results, axis)
    goodput = any(
        r.summary.get("goodput_rps") is not None and r.summary.get("goodput_rps") != r.summary.get("throughput_rps")
        for r in results.runs
    )
    curves = []
    for i, (label, items) in enumerate(series):
        suffix = f" ({label})" if label else ""
        curves.append(_seed_curve(f"throughput{suffix}", items, "throughput_rps", 1.0, i, "-", "o"))
        if goodput:
            curves.append(_seed_curve(f"goodput{suffix}", items, "goodput_rps", 1.0, i, "--", "s"))
    what = "offered load" if axis.key is None else axis.key
    panel = Panel(
        f"Throughput against {what}",
        axis.label,
        "completed requests/s",
        tuple(curves),
        log_x=axis.log,
        diagonal=axis.key is None,
        x_ticks=_x_ticks(axis),
        x_span=_x_span(results, axis),
    )
    return FigureData(
        "throughput",
        f"Throughput{' and goodput' if goodput else ''} against {what}",
        "Completed requests per second of makespan"
        + ("; goodput counts only requests that met their SLOs" if goodput else "")
        + ("; dotted: throughput = offered load" if axis.key is None else "")
        + ". Points: mean over seeds; error bars: min and max over seeds.",
        (panel,),
        1,
        max(1, len(series)),
        False,
    )


def _cdf_points(values: np.ndarray, max_points: int = CDF_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of the finite ``values``: sorted values and the fraction of values at
    or below each, at most ``max_points`` of them evenly spaced in rank (the last is 1)."""
    v = np.sort(values[np.isfinite(values)])
    n = v.size
    if n == 0:
        return v, v
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64))
    return v[idx], (idx + 1) / n


_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class _Encoding:
    """How a line per grid point is told apart: its colour (by the value on the sweep axis,
    along a sequential palette when numeric) and its line style (by the other grid keys)."""

    color: dict[str, int]
    style: dict[str, int]
    n_colors: int
    sequential: bool


def _encoding(results: Results, axis: SweepAxis | None) -> _Encoding:
    points = results.points
    key = None
    if axis is not None:
        key = axis.key if axis.key is not None else next(k for k in results.varying_keys if _is_load_key(k))
    if axis is None or key is None:
        numeric = len(results.varying_keys) == 1 and all(
            _is_number(p.point.get(results.varying_keys[0])) for p in points
        )
        return _Encoding(
            {p.label: i for i, p in enumerate(points)},
            dict.fromkeys((p.label for p in points), 0),
            len(points),
            numeric or len(points) > 10,
        )
    values = sorted({_key_text(p.point.get(key)) for p in points}, key=lambda v: _order(json.loads(v)))
    rank = {v: i for i, v in enumerate(values)}
    series = list(dict.fromkeys(_point_label(p.point, axis.series_keys) for p in points))
    return _Encoding(
        {p.label: rank[_key_text(p.point.get(key))] for p in points},
        {p.label: series.index(_point_label(p.point, axis.series_keys)) for p in points},
        len(values),
        all(_is_number(json.loads(v)) for v in values),
    )


def _read_requests(run: RunRecord) -> pd.DataFrame:
    """The completed requests of ``run`` with only the columns the figures need."""
    columns = ["model", "status", "output_tokens", "e2e_s", "ttft_s", "tpot_s"]
    frame = pd.read_parquet(run.folder / "requests.parquet", columns=columns)
    return frame[frame["status"] == "completed"]


def _cdf_figure(results: Results, axis: SweepAxis | None) -> FigureData | None:
    decoder = any(r.decoder for r in results.runs)
    frames = {p.label: [_read_requests(r) for r in p.runs] for p in results.points}
    models = sorted({str(m) for fs in frames.values() for f in fs for m in f["model"].unique()})
    enc = _encoding(results, axis)
    metrics = ["e2e", "ttft", "tpot"] if decoder else ["e2e"]
    panels = []
    for metric in metrics:
        name, unit = _METRICS[metric]
        curves = []
        for point in results.points:
            pooled = pd.concat(frames[point.label], ignore_index=True) if frames[point.label] else None
            if pooled is None or not len(pooled):
                continue
            if metric != "e2e":  # TTFT and TPOT only of requests that emit tokens
                pooled = pooled[pooled["output_tokens"] > 0]
            for j, model in enumerate(models if len(models) > 1 else [None]):
                part = pooled if model is None else pooled[pooled["model"] == model]
                x, y = _cdf_points(part[f"{metric}_s"].to_numpy(dtype=float) * 1e3)
                if not x.size:
                    continue
                label = _join(point.label if results.varying_keys else "", model or "") or None
                style = enc.style[point.label] if model is None else j  # several models: style by model
                curves.append(
                    Curve(label, x, y, color=enc.color[point.label], linestyle=_LINESTYLES[style % 4], steps=True)
                )
        if curves:
            panels.append(
                Panel(
                    f"{name} CDF",
                    f"{name} ({unit})",
                    "fraction of requests",
                    tuple(curves),
                    log_x=_wide_range(_inner(c.x) for c in curves),
                    y_range=(0.0, 1.02),
                )
            )
    if not panels:
        return None
    seeds = max(len(p.runs) for p in results.points)
    return FigureData(
        "latency_cdf",
        "Latency CDFs",
        "Empirical CDFs of the latency of completed requests, one line per grid point"
        + (" (seeds pooled)" if seeds > 1 else "")
        + (
            f", at most {CDF_MAX_POINTS:,} points per line"
            if any(len(c.x) >= CDF_MAX_POINTS for c in panels[0].curves)
            else ""
        )
        + ".",
        tuple(panels),
        len(panels),
        enc.n_colors,
        enc.sequential,
    )


def _join(*parts: str) -> str:
    """A legend label from the non-empty ``parts``."""
    return " · ".join(p for p in parts if p)


def _inner(x: np.ndarray) -> np.ndarray:
    """The 1st to 99th percentile of a sorted array (the range a CDF's axis must show)."""
    if x.size < 3:
        return x
    return x[int(0.01 * (x.size - 1)) : math.ceil(0.99 * (x.size - 1)) + 1]


def _representative(results: Results, axis: SweepAxis | None) -> list[GridPoint]:
    """Grid points to draw over time: all of them, or, when there are more than
    :data:`TIMESERIES_MAX_RUNS`, the lowest, middle and highest along the sweep axis of each
    line of the sweep figures (of the first line only if that is still too many)."""
    points = list(results.points)
    if len(points) <= TIMESERIES_MAX_RUNS:
        return points
    if axis is None:
        return [points[0], points[(len(points) - 1) // 2], points[-1]]
    series = [[p for _, p in items] for _, items in _sweep_series(results, axis)]
    if 3 * len(series) > TIMESERIES_MAX_RUNS:
        series = series[:1]
    picks = [line[i] for line in series for i in sorted({0, (len(line) - 1) // 2, len(line) - 1})]
    return picks


def _downsample(frame: pd.DataFrame, max_points: int = TIMESERIES_MAX_POINTS) -> pd.DataFrame:
    """Average consecutive rows so that at most ``max_points`` remain."""
    if len(frame) <= max_points:
        return frame
    k = math.ceil(len(frame) / max_points)
    return frame.groupby(np.arange(len(frame)) // k).mean()


def _read_timeseries(run: RunRecord) -> pd.DataFrame:
    """``timeseries.parquet`` of ``run`` averaged over the replicas of each model."""
    columns = ["time_s", "model", "queue_length", "busy_fraction", "batch_size", "kv_used_tokens"]
    frame = pd.read_parquet(run.folder / "timeseries.parquet", columns=columns)
    if not len(frame):
        return frame
    frame["model"] = frame["model"].astype(str)
    times = np.unique(frame["time_s"].to_numpy(dtype=float))
    if times.size >= 3:
        gaps = np.diff(times)
        if gaps[-1] < 0.5 * float(np.median(gaps)):  # the final sample covers a sliver of time: too noisy
            frame = frame[frame["time_s"] < times[-1]]
    return frame.groupby(["model", "time_s"], sort=True).mean(numeric_only=True).reset_index()


@dataclass(frozen=True)
class _RunLine:
    """The time series of one model in one run, averaged over its replicas."""

    label: str
    color: int
    style: int
    model: str
    run: RunRecord
    frame: pd.DataFrame


def _timeseries_figures(results: Results, axis: SweepAxis | None) -> list[FigureData]:
    chosen = _representative(results, axis)
    enc = _encoding(results, axis)
    several_seeds = any(len(p.runs) > 1 for p in results.points)
    lines: list[_RunLine] = []
    models: list[str] = []

    def sweep_label(point: GridPoint) -> str:
        return point.label if results.varying_keys else ""

    for point in chosen:
        run = point.runs[0]
        frame = _read_timeseries(run)
        label = ", ".join(s for s in (sweep_label(point), f"seed {run.seed}" if several_seeds else "") if s)
        for model, part in frame.groupby("model", sort=True):
            if str(model) not in models:
                models.append(str(model))
            color, style = enc.color[point.label], enc.style[point.label]
            lines.append(_RunLine(label, color, style, str(model), run, _downsample(part.drop(columns="model"))))
    if not lines:
        return []
    multi = len(models) > 1
    ends = [float(line.frame["time_s"].max()) for line in lines]
    # runs of very different lengths would squash the short ones: draw one row per run instead
    overlay = min(ends) > 0 and max(ends) / min(ends) <= _OVERLAY_MAX_RATIO

    def curve(line: _RunLine, column: str, scale: float, label: str | None) -> Curve:
        style = models.index(line.model) if multi else line.style  # several models: style by model
        return Curve(
            label,
            line.frame["time_s"].to_numpy(dtype=float),
            line.frame[column].to_numpy(dtype=float) * scale,
            color=line.color,
            linestyle=_LINESTYLES[style % len(_LINESTYLES)],
        )

    def panels(specs: Sequence[tuple[str, str, str, str, float, Any]], kept: list[_RunLine]) -> tuple[Panel, ...]:
        """Specs: (title, y label, short y label, column, scale, y range)."""
        if overlay:
            return tuple(
                Panel(
                    title,
                    "time (s)",
                    y_label,
                    tuple(curve(ln, col, scale, _join(ln.label, ln.model if multi else "") or None) for ln in kept),
                    y_range=y_range,
                )
                for title, y_label, _, col, scale, y_range in specs
            )
        out = []  # one row per run, titled once on its left
        for label in dict.fromkeys(ln.label for ln in kept):
            group = [ln for ln in kept if ln.label == label]
            for k, (_, _, short_label, col, scale, y_range) in enumerate(specs):
                out.append(
                    Panel(
                        label if k == 0 else "",
                        "time (s)",
                        short_label,
                        tuple(curve(ln, col, scale, ln.model if multi else None) for ln in group),
                        y_range=y_range,
                        title_left=True,
                    )
                )
        return tuple(out)

    subset = len(chosen) < len(results.points)
    note = (f" Shown: {len(chosen)} of {len(results.points)} grid points." if subset else "") + (
        " One seed per grid point (the lowest)." if several_seeds else ""
    )
    height = _PANEL_H_IN if overlay else _SMALL_PANEL_H_IN
    figures = [
        FigureData(
            "queue_utilisation",
            "Queue length and utilisation over time",
            "Time-averaged queue length (requests) and busy fraction (%) in each sampling interval, averaged over"
            f" replicas{' of each model' if multi else ''}.{note}",
            panels(
                [
                    (
                        "Queue length",
                        "queue length (requests per replica)",
                        "queue (requests)",
                        "queue_length",
                        1.0,
                        None,
                    ),
                    ("Utilisation", "busy (% of time)", "busy (%)", "busy_fraction", 100.0, (0.0, 105.0)),
                ],
                lines,
            ),
            2,
            enc.n_colors,
            enc.sequential,
            height,
        )
    ]
    decoders = [ln for ln in lines if ln.run.decoder and bool((ln.frame["kv_used_tokens"] > 0).any())]
    if decoders:
        figures.append(
            FigureData(
                "decoder_kv_batch",
                "KV cache and batch size over time",
                "KV-cache tokens in use at each sample and mean batch size (requests per iteration) in each"
                f" sampling interval, averaged over replicas{' of each model' if multi else ''} (decoder models"
                f" only).{note}",
                panels(
                    [
                        (
                            "KV cache in use",
                            "KV cache (tokens per replica)",
                            "KV cache (tokens)",
                            "kv_used_tokens",
                            1.0,
                            None,
                        ),
                        (
                            "Batch size",
                            "batch size (requests per iteration)",
                            "batch (requests)",
                            "batch_size",
                            1.0,
                            None,
                        ),
                    ],
                    decoders,
                ),
                2,
                enc.n_colors,
                enc.sequential,
                height,
            )
        )
    return figures


def figure_data(results: Results) -> dict[str, FigureData]:
    """The numbers behind every figure of the report, by figure name (see
    :data:`FIGURE_NAMES`); figures without data (a sweep with one load level, runs without
    decoders, runs without completed requests) are left out."""
    axis = sweep_axis(results)
    figures: list[FigureData | None] = [_cdf_figure(results, axis)]
    if axis is not None:
        figures += [_percentile_figure(results, axis), _throughput_figure(results, axis)]
    figures += _timeseries_figures(results, axis)
    return {f.name: f for f in figures if f is not None}


# --------------------------------------------------------------------------------------------
# drawing


def _colors(n: int, sequential: bool) -> list[Any]:
    import matplotlib as mpl

    if sequential:
        cmap = mpl.colormaps["viridis"]
        return [cmap(0.85 * i / max(1, n - 1)) for i in range(max(1, n))]
    cycle = mpl.colormaps["tab10"]
    return [cycle(i % cycle.N) for i in range(max(1, n))]


def _thousands(value: float, _pos: int | None = None) -> str:
    """A tick label: ``12k`` from 10,000 up (keeps ticks of requests/s from running together)."""
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _draw_panel(ax: Any, panel: Panel, colors: list[Any]) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for c in panel.curves:
        color = colors[c.color % len(colors)]
        if c.y_low is not None and c.y_high is not None:
            err = np.vstack([c.y - c.y_low, c.y_high - c.y])
            ax.errorbar(
                c.x, c.y, yerr=np.nan_to_num(err), color=color, linestyle=c.linestyle, marker=c.marker, label=c.label,
                elinewidth=0.7, markerfacecolor="white" if c.linestyle != "-" else color,
            )  # fmt: skip
        else:
            ax.plot(
                c.x, c.y, color=color, linestyle=c.linestyle, marker=c.marker, label=c.label,
                drawstyle="steps-post" if c.steps else "default",
                markerfacecolor="white" if c.marker and c.linestyle != "-" else color,
            )  # fmt: skip
    if panel.log_x:
        ax.set_xscale("log")
    if panel.log_y:
        ax.set_yscale("log")
    if panel.x_span is not None and all(map(math.isfinite, panel.x_span)):
        lo, hi = ax.get_xlim()
        if panel.log_x and panel.x_span[0] > 0:
            pad = (panel.x_span[1] / panel.x_span[0]) ** 0.05
            ax.set_xlim(min(lo, panel.x_span[0] / pad), max(hi, panel.x_span[1] * pad))
        elif not panel.log_x:
            pad = 0.05 * (panel.x_span[1] - panel.x_span[0]) or 0.5
            ax.set_xlim(min(lo, panel.x_span[0] - pad), max(hi, panel.x_span[1] + pad))
    if panel.diagonal:
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="0.5", linestyle=":", linewidth=0.8, label="y = x", zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(bottom=0)
    if panel.y_range is not None:
        ax.set_ylim(*panel.y_range)
    if panel.x_ticks is not None:
        ax.set_xlim(-0.4, len(panel.x_ticks) - 0.6)  # room around the first and last category
        ax.set_xticks([t for t, _ in panel.x_ticks], [s for _, s in panel.x_ticks])
    elif not panel.log_x:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    if not panel.log_y:
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    if panel.title:
        ax.set_title(panel.title, loc="left" if panel.title_left else "center")
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)


def render_png(figure: FigureData) -> bytes:
    """Draw ``figure`` with matplotlib's Agg canvas; return the PNG's bytes (:data:`DPI`)."""
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with mpl.rc_context(cast(Any, _STYLE)):  # matplotlib types the keys as literals
        ncols = max(1, min(figure.ncols, len(figure.panels)))
        nrows = math.ceil(len(figure.panels) / ncols)
        labels = {c.label for p in figure.panels for c in p.curves if c.label}
        legend_cols = 1 if len(labels) <= 12 else 2
        longest = max((len(label) for label in labels), default=0)
        legend_w = legend_cols * min(3.5, 0.45 + 0.052 * longest) if labels else 0.0  # 7-pt text: ~0.052 in/char
        width = _PANEL_W_IN * ncols + legend_w
        height = figure.panel_height_in * nrows + (0.3 if len(figure.panels) > 1 else 0.0)
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        colors = _colors(figure.n_colors, figure.sequential)
        for ax, panel in zip(axes.flat, figure.panels, strict=False):
            _draw_panel(ax, panel, colors)
        for ax in list(axes.flat)[len(figure.panels) :]:
            ax.remove()
        handles: dict[str, Any] = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        if "y = x" in handles:  # the reference line goes last
            handles["y = x"] = handles.pop("y = x")
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside right upper", ncols=legend_cols)
        if len(figure.panels) > 1:  # a single panel's title says it all
            fig.suptitle(figure.title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# the HTML page


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ms(value: Any) -> str:
    v = _as_float(value) * 1e3
    if not math.isfinite(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _rps(value: Any) -> str:
    v = _as_float(value)
    if not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"


def _pct(value: Any) -> str:
    v = _as_float(value)
    return f"{v * 100:.1f}" if math.isfinite(v) else "-"


def _count(value: Any) -> str:
    return f"{int(value):,}" if _is_number(value) else "-"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _header(results: Results) -> list[tuple[str, str]]:
    """(label, HTML) pairs of the report's header."""
    configs = [r.config for r in results.runs]
    rows: list[tuple[str, str]] = []
    seeds = sorted({r.seed for r in results.runs if r.seed is not None})
    n_points = len(results.points)
    runs = f"{len(results.runs)} finished"
    if n_points != len(results.runs):
        plural = ("s" if n_points != 1 else "", "s" if len(seeds) != 1 else "")
        runs += f" ({n_points} grid point{plural[0]} × {len(seeds)} seed{plural[1]})"
    runs += f", {len(results.failed)} failed"
    rows.append(("Runs", _e(runs)))
    if results.grid_keys:
        parts = []
        for key in results.grid_keys:
            values = sorted({_key_text(r.point.get(key)) for r in results.runs})
            shown = ", ".join(_fmt_value(json.loads(v)) for v in sorted(values, key=lambda v: _order(json.loads(v))))
            parts.append(f"<code>{_e(key)}</code> ∈ {{{_e(shown)}}}")
        rows.append(("Sweep", "; ".join(parts) + (f"; seeds {_e(', '.join(map(str, seeds)))}" if seeds else "")))
    profiles = sorted(
        {f"{c.get('profile', {}).get('name', '?')} ({c.get('profile', {}).get('status', '?')})" for c in configs}
    )
    rows.append(("Hardware profile", _e(", ".join(profiles))))
    kinds = sorted({k for c in configs for k in (c.get("cost_model", {}) or {}).get("uncalibrated_kinds", []) or []})
    fallbacks = {
        k: v for c in configs for k, v in ((c.get("cost_model", {}) or {}).get("fallback_kinds", {}) or {}).items()
    }
    profile_calibrated = any((c.get("cost_model", {}) or {}).get("calibrated") for c in configs)
    if not kinds and not fallbacks:
        cost = "calibrated: every operator priced from measured tables"
    else:
        which = "partly calibrated" if profile_calibrated else "uncalibrated"
        notes = [f"{', '.join(kinds)} priced by the roofline with the profile's default efficiencies"] if kinds else []
        notes += [f"{k} priced from the measured {v} table" for k, v in sorted(fallbacks.items())]
        cost = f"{which}: " + "; ".join(notes)
    rows.append(("Cost model", _e(cost)))
    models = []
    for name, dep in ((configs[0].get("experiment", {}) or {}).get("models", {}) or {}).items():
        dep = dep or {}
        batching = (dep.get("batching") or {}).get("policy", "?")
        models.append(
            f"{name} ({dep.get('architecture', name)}, {dep.get('dtype', '?')}, {dep.get('replicas', '?')} replicas,"
            f" batching {batching})"
        )
    if models:
        rows.append(("Models", _e("; ".join(models))))
    info = configs[0].get("ldsim", {}) or {}
    version = f"ldsim {info.get('version', '?')}" + (f", commit {info['git_commit']}" if info.get("git_commit") else "")
    rows.append(("Simulator", _e(version)))
    if (results.out_dir / "summary.csv").is_file():
        rows.append(("Per-run numbers", '<a href="summary.csv">summary.csv</a>'))
    return rows


def _table(results: Results) -> str:
    """The summary table: one ``<tr class="run">`` per finished run."""
    decoder = any(r.decoder for r in results.runs)
    names = _short_names(results.grid_keys)
    head = ["run", *(names[k] for k in results.grid_keys), "seed", "completed", "rejected", "dropped", "failed"]
    head += ["offered (req/s)", "throughput (req/s)", "goodput (req/s)", "e2e p50 (ms)", "e2e p99 (ms)"]
    if decoder:
        head += ["TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "TPOT p99 (ms)"]
    head.append("utilisation (%)")
    titles = {names[k]: k for k in results.grid_keys}
    out = ["<table>", "<thead><tr>"]
    out += [f'<th title="{_e(titles[h])}">{_e(h)}</th>' if h in titles else f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for r in results.runs:
        s = r.summary
        cells = [f"<td class='id'>{_e(r.run_id)}</td>"]
        cells += [f"<td>{_e(_fmt_value(r.point.get(k)))}</td>" for k in results.grid_keys]
        cells.append(f"<td>{_e(r.seed if r.seed is not None else '-')}</td>")
        values = [_count(s.get(k)) for k in ("completed", "rejected", "dropped", "failed")]
        values += [_rps(s.get(k)) for k in ("offered_rps", "throughput_rps", "goodput_rps")]
        values += [_ms(s.get("e2e_p50_s")), _ms(s.get("e2e_p99_s"))]
        if decoder:
            values += [_ms(s.get(k)) for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s")]
        values.append(_pct(s.get("utilization")))
        cells += [f"<td class='num'>{_e(v)}</td>" for v in values]
        out.append(f'<tr class="run">{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; font-size: 14px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; margin: 0.8em 0; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
table { border-collapse: collapse; font-size: 12px; } th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; text-align: center; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: monospace; } .scroll { overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { font-size: 12px; color: #555; }
p.note { font-size: 12px; color: #555; }
.failed li { margin-bottom: 0.4em; } pre { font-size: 11px; background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
"""


def _html(results: Results, figures: dict[str, FigureData], images: dict[str, bytes]) -> str:
    configs = [r.config for r in results.runs]
    names = sorted({str((c.get("experiment", {}) or {}).get("name") or results.out_dir.name) for c in configs})
    title = ", ".join(names)
    description = str((configs[0].get("experiment", {}) or {}).get("description") or "")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ldsim report: {_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if description:
        out.append(f"<p>{_e(description)}</p>")
    out.append('<dl class="meta">')
    out += [f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in _header(results)]
    out.append("</dl>")
    out += [
        "<h2>Runs</h2>",
        '<p class="note">Requests by final status; latencies over completed requests; throughput and goodput'
        " per second of makespan (first arrival to last final status); utilisation: busy time over simulated"
        " time, averaged over replicas.</p>",
        '<div class="scroll">',
        _table(results),
        "</div>",
    ]
    if results.failed:
        out += [f"<h2>Failed runs ({len(results.failed)})</h2>", '<ul class="failed">']
        for f in results.failed:
            out.append(
                f"<li><code>{_e(f.run_id)}</code>: {_e(f.reason)} <details><summary>{_e(f.path.name)}</summary>"
                f"<pre>{_e(f.detail)}</pre></details></li>"
            )
        out.append("</ul>")
    warnings = [(r.run_id, w) for r in results.runs for w in r.summary.get("warnings", []) or []]
    if warnings:
        out += ["<h2>Warnings</h2>", "<ul>"]
        out += [f"<li><code>{_e(rid)}</code>: {_e(w)}</li>" for rid, w in warnings]
        out.append("</ul>")
    out.append("<h2>Figures</h2>")
    for name in FIGURE_NAMES:
        if name not in figures:
            continue
        data = base64.b64encode(images[name]).decode("ascii")
        fig = figures[name]
        out.append(
            f'<figure id="{_e(name)}"><img src="data:image/png;base64,{data}" alt="{_e(fig.title)}">'
            f"<figcaption><b>{_e(fig.title)}</b> (<code>figures/{_e(name)}.png</code>). {_e(fig.caption)}"
            "</figcaption></figure>"
        )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out_dir: Path) -> Path:
    """Draw ``out_dir/figures/*.png`` and ``out_dir/report.html`` for the runs in ``out_dir``;
    return the HTML's path. Each file is written to a temporary name and renamed into place;
    figure files of :data:`FIGURE_NAMES` that no longer have data are removed. Raises
    :class:`LdsimError` if ``out_dir`` holds no finished run."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    figures = figure_data(results)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    images = {}
    for name, figure in figures.items():
        images[name] = render_png(figure)
        _atomic_write_bytes(fig_dir / f"{name}.png", images[name])
    for name in FIGURE_NAMES:
        if name not in figures:
            (fig_dir / f"{name}.png").unlink(missing_ok=True)
    path = out_dir / "report.html"
    atomic_write_text(path, _html(results, figures, images))
    return path
