"""The fidelity report: simulated vs executed runs of one experiment, per request and in aggregate.

Reads ``OUT/simulated/<run>`` and ``OUT/executed/<run>`` (the ordinary results layout) for the
runs of a validation and computes, per run:

* aggregate figures from each ``summary.json`` -- throughput and the mean, p50 and p99 of
  e2e latency, TTFT and TPOT -- and the **relative error** of each, ``simulated / executed - 1``
  (negative: the simulator is optimistic);
* the **per-request error** of e2e latency (and TTFT for decoders), ``simulated / executed -
  1`` of every request completed in both (same request id: the same request), summarised by
  its percentiles;
* the **per-step error** of the cost model: each executed step's duration (nominal start to
  end) against what the cost model predicted for that exact batch (``steps.parquet``);
* the machine's load around the execution (load average, CPU pressure), so a noisy run can be
  told apart;
* when ``OUT/simulated-matched/<run>`` exists (see
  :func:`simulator.executor.validate.simulate_at_measured_speed`), the same relative errors of a
  simulation at the execution's own measured step speed (``<metric>_matched_err``, ``speed``).

The targets are those of issue 4: |error| <= 10% for mean and p99 e2e latency and <= 5% for
throughput. Writes ``fidelity.json``, ``fidelity.csv``, ``figures/fidelity_*.png`` and a
self-contained ``fidelity.html`` (figures embedded), each atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from simulator.results import atomic_write_text

__all__ = ["METRICS", "TARGETS", "compare_run", "write_fidelity"]

#: Summary figures compared, in report order: key -> (label, unit scale, unit).
METRICS: dict[str, tuple[str, float, str]] = {
    "throughput_rps": ("throughput", 1.0, "req/s"),
    "e2e_mean_s": ("e2e mean", 1e3, "ms"),
    "e2e_p50_s": ("e2e p50", 1e3, "ms"),
    "e2e_p99_s": ("e2e p99", 1e3, "ms"),
    "ttft_mean_s": ("TTFT mean", 1e3, "ms"),
    "ttft_p50_s": ("TTFT p50", 1e3, "ms"),
    "ttft_p99_s": ("TTFT p99", 1e3, "ms"),
    "tpot_mean_s": ("TPOT mean", 1e3, "ms"),
    "tpot_p50_s": ("TPOT p50", 1e3, "ms"),
    "tpot_p99_s": ("TPOT p99", 1e3, "ms"),
}
#: Issue 4's targets: the largest |relative error| allowed per figure.
TARGETS = {"e2e_mean_s": 0.10, "e2e_p99_s": 0.10, "throughput_rps": 0.05}
_REQUEST_PCTS = (5, 25, 50, 75, 95)


def _rel(sim: Any, exe: Any) -> float | None:
    if sim is None or exe is None or not exe:
        return None
    return float(sim) / float(exe) - 1.0


def _read(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    summary = json.loads((folder / "summary.json").read_text())
    frame = pd.read_parquet(folder / "requests.parquet")
    config = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    return summary, frame, config


def _streams(folder: Path, run_id: str) -> list[Path]:
    """``folder/run_id`` and its replications with other step-time streams
    (``run_id_stream-k``), those that finished."""
    dirs = [folder / run_id, *sorted(folder.glob(f"{run_id}_stream-*"))]
    return [d for d in dirs if (d / "summary.json").is_file()]


def _mean_summary(dirs: Sequence[Path]) -> tuple[dict[str, Any], dict[str, float]]:
    """Each metric's mean over the summaries in ``dirs`` (None when any lacks it), and its
    standard deviation over them."""
    sums = [json.loads((d / "summary.json").read_text()) for d in dirs]
    mean: dict[str, Any] = dict(sums[0])
    sd: dict[str, float] = {}
    for key in METRICS:
        values = [s.get(key) for s in sums]
        if any(v is None for v in values):
            mean[key] = None
            continue
        mean[key] = float(np.mean(values))
        sd[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, sd


def compare_run(sim_dir: Path, exe_dir: Path) -> dict[str, Any]:
    """The comparison of one run (see the module docstring), as plain data. The simulated
    figures are the mean over ``sim_dir`` and its replications with other step-time streams
    beside it (``<run>_stream-k`` there or in ``simulated-streams/``); per-request errors use
    ``sim_dir`` itself."""
    _, s_df, _ = _read(sim_dir)
    others = _streams(sim_dir.parent.parent / "simulated-streams", sim_dir.name)
    sim_dirs = _streams(sim_dir.parent, sim_dir.name) + [d for d in others if d.name != sim_dir.name]
    s_sum, s_sd = _mean_summary(sim_dirs)
    e_sum, e_df, e_cfg = _read(exe_dir)
    point = e_cfg.get("run", {}).get("point", {}) or {}
    row: dict[str, Any] = {
        "run_id": exe_dir.name,
        "load": point.get("load"),
        "offered_rps": e_sum.get("offered_rps"),
        "requests": e_sum.get("requests"),
        "completed_sim": s_sum.get("completed"),
        "completed_exec": e_sum.get("completed"),
        "failed_exec": e_sum.get("failed"),
        "executor": e_cfg.get("executor", {}),
    }
    row["sim_streams"] = len(sim_dirs)
    for key in METRICS:
        sim, exe = s_sum.get(key), e_sum.get(key)
        row[f"{key}_sim"], row[f"{key}_exec"], row[f"{key}_err"] = sim, exe, _rel(sim, exe)
        row[f"{key}_sim_sd"] = s_sd.get(key)
    row["pass"] = all(row[f"{k}_err"] is not None and abs(row[f"{k}_err"]) <= tol for k, tol in TARGETS.items())
    both = s_df[["request_id", "status", "e2e_s", "ttft_s"]].merge(
        e_df[["request_id", "status", "e2e_s", "ttft_s"]], on="request_id", suffixes=("_sim", "_exec")
    )
    ok = both[(both["status_sim"] == "completed") & (both["status_exec"] == "completed")]
    for metric in ("e2e_s", "ttft_s"):
        err = (ok[f"{metric}_sim"] / ok[f"{metric}_exec"] - 1.0).to_numpy(dtype=float)
        err = err[np.isfinite(err)]
        name = metric.removesuffix("_s")
        if err.size:
            for p, v in zip(_REQUEST_PCTS, np.percentile(err, _REQUEST_PCTS), strict=True):
                row[f"request_{name}_err_p{p}"] = float(v)
            row[f"request_{name}_abs_err_median"] = float(np.median(np.abs(err)))
    steps_path = exe_dir / "steps.parquet"
    if steps_path.is_file():
        steps = pd.read_parquet(steps_path)
        if len(steps):
            err = (steps["predicted_s"] / steps["measured_s"] - 1.0).to_numpy(dtype=float)
            err = err[np.isfinite(err)]
            if err.size:
                for p, v in zip((10, 50, 90), np.percentile(err, [10, 50, 90]), strict=True):
                    row[f"step_err_p{p}"] = float(v)
            row["steps"] = len(steps)
            row["step_measured_mean_s"] = float(steps["measured_s"].mean())
            row["step_predicted_mean_s"] = float(steps["predicted_s"].mean())
    matched = _streams(sim_dir.parent.parent / "simulated-matched", sim_dir.name)
    if matched:
        m_sum, _ = _mean_summary(matched)
        for key in METRICS:
            row[f"{key}_matched_err"] = _rel(m_sum.get(key), e_sum.get(key))
        if row.get("step_predicted_mean_s"):
            row["speed"] = row["step_measured_mean_s"] / row["step_predicted_mean_s"]
    return row


# ---- figures ---------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values[np.isfinite(values)])
    return v, (np.arange(1, len(v) + 1) / len(v)) if len(v) else np.zeros(0)


def _label(row: dict[str, Any]) -> str:
    load = row.get("load")
    return f"load {load:g}" if isinstance(load, int | float) else str(row["run_id"])


def _cdf_figure(out: Path, rows: list[dict[str, Any]], metrics: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(len(metrics), n, figsize=(2.6 * n, 2.1 * len(metrics)), squeeze=False)
    names = {"e2e_s": "e2e latency (ms)", "ttft_s": "TTFT (ms)", "tpot_s": "TPOT (ms/token)"}
    for j, row in enumerate(rows):
        sim = pd.read_parquet(out / "simulated" / row["run_id"] / "requests.parquet")
        exe = pd.read_parquet(out / "executed" / row["run_id"] / "requests.parquet")
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for frame, style, who in ((exe, "-", "executed"), (sim, "--", "simulated")):
                done = frame[frame["status"] == "completed"]
                x, y = _cdf(done[metric].to_numpy(dtype=float) * 1e3)
                ax.plot(x, y, style, lw=1.2, label=who, color="C0" if who == "executed" else "C3")
            ax.set_xlabel(names[metric], fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3, lw=0.5)
            if j == 0:
                ax.set_ylabel("CDF", fontsize=7)
            if i == 0:
                ax.set_title(_label(row), fontsize=8)
    axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _errors_figure(rows: list[dict[str, Any]], metrics: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r.get("load") for r in rows]
    numeric = all(isinstance(v, int | float) for v in loads)
    x = np.array(loads, dtype=float) if numeric else np.arange(len(rows), dtype=float)
    fig, ax = plt.subplots(figsize=(4.4, 2.8))
    for i, key in enumerate(metrics):
        y = [100 * r[f"{key}_err"] if r.get(f"{key}_err") is not None else np.nan for r in rows]
        ax.plot(x, y, "o-", ms=3, lw=1.1, label=METRICS[key][0], color=f"C{i}")
    ax.axhspan(-10, 10, color="0.85", alpha=0.5, lw=0, label="±10% (latency target)")
    ax.axhspan(-5, 5, color="0.7", alpha=0.5, lw=0, label="±5% (throughput target)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("load (fraction of measured saturation)" if numeric else "run", fontsize=8)
    if not numeric:
        ax.set_xticks(x, [str(r["run_id"]) for r in rows], rotation=30, fontsize=6)
    ax.set_ylabel("simulated / executed - 1 (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=6, frameon=False, ncol=2)
    fig.tight_layout()
    return _png(fig)


def _request_error_figure(out: Path, rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 2.8))
    for i, row in enumerate(rows):
        sim = pd.read_parquet(out / "simulated" / row["run_id"] / "requests.parquet")
        exe = pd.read_parquet(out / "executed" / row["run_id"] / "requests.parquet")
        both = sim[["request_id", "status", "e2e_s"]].merge(
            exe[["request_id", "status", "e2e_s"]], on="request_id", suffixes=("_sim", "_exec")
        )
        ok = both[(both["status_sim"] == "completed") & (both["status_exec"] == "completed")]
        err = 100 * (ok["e2e_s_sim"] / ok["e2e_s_exec"] - 1.0).to_numpy(dtype=float)
        err = err[np.isfinite(err)]
        if err.size:
            lo, hi = np.percentile(err, [0.5, 99.5])
            ax.hist(
                np.clip(err, lo, hi), bins=60, histtype="step", density=True, lw=1.1, color=f"C{i}", label=_label(row)
            )
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("per-request e2e error: simulated / executed - 1 (%)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _step_figure(out: Path, rows: list[dict[str, Any]]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    for row in rows:
        path = out / "executed" / row["run_id"] / "steps.parquet"
        if path.is_file():
            frames.append(pd.read_parquet(path))
    if not frames:
        return None
    steps = pd.concat(frames)
    if not len(steps):
        return None
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    x, y = steps["predicted_s"].to_numpy() * 1e3, steps["measured_s"].to_numpy() * 1e3
    ax.scatter(x, y, s=3, alpha=0.35, lw=0, color="C0")
    lo = max(1e-3, float(min(x.min(), y.min())))
    hi = float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
    ax.plot([lo, hi], [lo * 1.1, hi * 1.1], "k:", lw=0.5)
    ax.plot([lo, hi], [lo / 1.1, hi / 1.1], "k:", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cost model's step time (ms)", fontsize=8)
    ax.set_ylabel("measured step time (ms)", fontsize=8)
    ax.set_title("every executed step (dotted: ±10%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, lw=0.5, which="both")
    fig.tight_layout()
    return _png(fig)


# ---- the report ------------------------------------------------------------------------------


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def _err_cell(err: Any, target: float | None) -> str:
    if err is None:
        return "<td>–</td>"
    bad = target is not None and abs(err) > target
    style = ' style="color:#b00;font-weight:bold"' if bad else ""
    return f"<td{style}>{100 * err:+.1f}%</td>"


def _table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    head = "<tr><th>run</th><th>offered (req/s)</th>" + "".join(
        f"<th>{METRICS[k][0]} sim / exec ({METRICS[k][2]})</th><th>error</th>" for k in metrics
    )
    head += (
        "<th>per-request e2e error p5 / p50 / p95</th><th>step error p10 / p50 / p90</th>"
        "<th>measured / priced step time</th><th>at that speed: e2e mean / p99 error</th>"
        "<th>load avg / CPU pressure</th><th>targets</th></tr>"
    )
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(_label(r))}</td>", f"<td>{_fmt(r.get('offered_rps'))}</td>"]
        for k in metrics:
            _, scale, _ = METRICS[k]
            sd = r.get(f"{k}_sim_sd")
            spread = f" ± {_fmt(sd, scale)}" if sd else ""
            cells.append(f"<td>{_fmt(r.get(f'{k}_sim'), scale)}{spread} / {_fmt(r.get(f'{k}_exec'), scale)}</td>")
            cells.append(_err_cell(r.get(f"{k}_err"), TARGETS.get(k)))
        req = [r.get(f"request_e2e_err_p{p}") for p in (5, 50, 95)]
        cells.append("<td>" + " / ".join(_fmt(v, 100, 1) + "%" if v is not None else "–" for v in req) + "</td>")
        stp = [r.get(f"step_err_p{p}") for p in (10, 50, 90)]
        cells.append("<td>" + " / ".join(_fmt(v, 100, 1) + "%" if v is not None else "–" for v in stp) + "</td>")
        cells.append(f"<td>{_fmt(r.get('speed'), 1, 3)}</td>")
        matched = [r.get(f"e2e_{m}_s_matched_err") for m in ("mean", "p99")]
        cells.append("<td>" + " / ".join(_fmt(v, 100, 1) + "%" if v is not None else "–" for v in matched) + "</td>")
        load = (r.get("executor") or {}).get("machine_load") or {}
        before, after = load.get("before") or {}, load.get("after") or {}
        cells.append(
            f"<td>{_fmt(before.get('loadavg_1m'))}→{_fmt(after.get('loadavg_1m'))} /"
            f" {_fmt(after.get('cpu_pressure_avg10_pct'), 1, 1)}%</td>"
        )
        cells.append("<td>pass</td>" if r.get("pass") else '<td style="color:#b00">miss</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + head + "".join(body) + "</table>"


_CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;font-size:13px;max-width:1300px;margin:20px auto;color:#222}
table{border-collapse:collapse;font-size:11px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f2f2f2}img{max-width:100%}h2{font-size:15px;margin-top:24px}code{background:#f5f5f5}
"""

_DEFINITIONS = """
<h2>Method and metric boundaries</h2>
<p>The simulation and the execution read the same experiment spec: the same workload (same seed, same requests,
same arrival times), and policy objects built from the same spec with the same seeds. The executor feeds each
request at its arrival time on the wall clock to a coordinator that runs the simulator's own engine code (queues,
batching decisions, KV-block accounting, preemption); each model step runs on a worker process (its own CPU cores)
with real torch models with random weights.</p>
<ul>
<li><b>arrival</b>: the request's scheduled arrival time (identical in both);</li>
<li><b>start</b>: the decision that admits it to a batch or iteration;</li>
<li><b>first token (TTFT end)</b>: the end of the model step that produced the request's first token (a decoder's
prefill step), taken on the worker right after the step's outputs (the sampled tokens) exist; for models that emit no
tokens, the end of the forward pass that produced its result;</li>
<li><b>completion (e2e end)</b>: the end of the step that produced its last output;</li>
<li>TPOT = (completion - first token) / (output tokens - 1); throughput = completed requests / (last final status -
first arrival).</li>
</ul>
<p>Relative errors are <code>simulated / executed - 1</code>. The simulated figures are the mean over the
simulations of the run with different streams of step-time noise (<code>--sim-streams</code>; ± their standard
deviation); the execution is one sample of its own noise. Per-request errors compare the same request (same
id). The step error compares each executed step's duration (its nominal start, when the coordinator decided it, to
its end on the worker) with the cost model's price of that exact batch, including the profile's runtime terms
(step overhead, wake-up after idle).</p>
<p>"At that speed" is a diagnostic second simulation of each run with every step's price multiplied by the
execution's measured / priced step time (total over total): it shows how much of the error is the machine running
faster or slower than while it was profiled (a shared virtual machine drifts by several percent between runs), and
how much is the modelling of queues, batching and step-time scatter. The targets apply to the first simulation.</p>
"""


def _wake_us(runtime: dict[str, Any], gap_s: float) -> float:
    from simulator.hardware import ArchitectureRuntime, RuntimeSpec

    spec = RuntimeSpec(per_architecture={"m": ArchitectureRuntime.model_validate(runtime)})
    return 1e6 * spec.wake_s("m", gap_s)


def write_fidelity(out: Path, run_ids: Sequence[str], meta: dict[str, Any]) -> Path:
    """Compare the runs ``run_ids`` under ``out`` and write the fidelity report; return the HTML
    file's path."""
    rows = []
    for run_id in run_ids:
        sim_dir, exe_dir = out / "simulated" / run_id, out / "executed" / run_id
        if (sim_dir / "summary.json").is_file() and (exe_dir / "summary.json").is_file():
            rows.append(compare_run(sim_dir, exe_dir))
    decoder = any(r.get("tpot_mean_s_exec") is not None for r in rows)
    metrics = ["throughput_rps", "e2e_mean_s", "e2e_p50_s", "e2e_p99_s"]
    if decoder:
        metrics += ["ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "tpot_p99_s"]
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    if rows:
        images["fidelity_cdf"] = _cdf_figure(out, rows, ["e2e_s", "ttft_s", "tpot_s"] if decoder else ["e2e_s"])
        err_keys = ["throughput_rps", "e2e_mean_s", "e2e_p99_s"] + (["ttft_mean_s", "tpot_mean_s"] if decoder else [])
        images["fidelity_errors"] = _errors_figure(rows, err_keys)
        images["fidelity_request_error"] = _request_error_figure(out, rows)
        step = _step_figure(out, rows)
        if step is not None:
            images["fidelity_steps"] = step
    for name, data in images.items():
        tmp = figures_dir / f".{name}.png.tmp"
        tmp.write_bytes(data)
        tmp.replace(figures_dir / f"{name}.png")
    plain = [{k: v for k, v in r.items() if k != "executor"} for r in rows]
    atomic_write_text(out / "fidelity.json", json.dumps({"meta": meta, "targets": TARGETS, "runs": rows}, indent=1))
    atomic_write_text(out / "fidelity.csv", pd.DataFrame(plain).to_csv(index=False))
    verdict = "every run within the targets" if rows and all(r["pass"] for r in rows) else "some runs miss a target"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fidelity: {html.escape(str(meta.get('experiment')))}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>Simulator fidelity: {html.escape(Path(str(meta.get('experiment'))).name)}</h1>",
        f"<p>Host {html.escape(str(meta.get('host')))}, device {html.escape(str(meta.get('device')))}; profile"
        f" <code>{html.escape(str(meta.get('profile')))}</code>."
        + (
            f" Measured saturation: {meta['saturation']['throughput_rps']:.1f} req/s (burst of"
            f" {meta['saturation']['requests']})."
            if meta.get("saturation")
            else ""
        )
        + "".join(
            f" {html.escape(name)}: host overhead {rt.get('step_overhead_us', 0):.0f} µs per step +"
            f" {rt.get('step_overhead_per_item_us', 0):.1f} µs per request or sample; wake-up after 10 / 100 ms"
            f" idle {_wake_us(rt, 0.01):.0f} / {_wake_us(rt, 0.1):.0f} µs."
            for name, rt in (meta.get("runtime") or {}).items()
        )
        + f" Targets: |error| ≤ 10% for mean and p99 e2e, ≤ 5% for throughput: <b>{verdict}</b>.</p>",
        "<h2>Simulated vs executed</h2>",
        _table(rows, metrics),
    ]
    captions = {
        "fidelity_errors": "Relative error against load.",
        "fidelity_cdf": "Latency CDFs: executed (solid) and simulated (dashed).",
        "fidelity_request_error": "Per-request e2e error (same request in both).",
        "fidelity_steps": "Every executed step: measured duration against the cost model's price.",
    }
    for name, data in images.items():
        encoded = base64.b64encode(data).decode()
        parts.append(f"<h2>{captions[name]}</h2><img src='data:image/png;base64,{encoded}'>")
    parts.append(_DEFINITIONS)
    parts.append(f"<h2>Run</h2><pre>{html.escape(json.dumps(meta, indent=1))}</pre></body></html>")
    path = out / "fidelity.html"
    atomic_write_text(path, "\n".join(parts))
    return path
