"""``ldsim workload describe``: the statistics of a workload, as figures and plots.

The target is either an experiment (a YAML file or a shipped experiment's name: the
workload of its first run is generated exactly as a run would) or a trace file (its format
given with ``--format``, or recognised from the file's name). Printed: the number of requests,
the span, the mean and peak arrival rates, the CV of the inter-arrival gaps (1 for Poisson),
percentiles of the input and output sizes, the most frequent labels (model, tenant, ...),
failed requests and prefix blocks; with ``--fit``, a Gamma and an MMPP arrival model and
log-normal lengths as YAML to paste. With an output folder, two plots are drawn:
``arrival_rate.png`` (requests/s per time bin) and ``sizes.png`` (size distributions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from simulator.errors import ConfigError, LdsimError

__all__ = ["WorkloadSummary", "add_arguments", "describe", "guess_format", "main", "run_from_args", "summarize"]

#: Percentiles printed for sizes.
PERCENTILES = (50, 90, 99, 99.9)

#: File-name patterns of the formats ``describe`` recognises without ``--format``.
_PATTERNS = (
    ("AzureLLMInferenceTrace_", "azure_llm_2023"),
    ("invocations_per_function", "azure_functions_2019"),
    ("AzureFunctionsInvocationTrace", "azure_functions_2021"),
    ("BurstGPT", "burstgpt"),
    (".jsonl", "mooncake"),
)


@dataclass
class WorkloadSummary:
    """What :func:`describe` measured. Rates in requests/s, times in seconds, sizes in tokens
    (or samples). ``sizes`` maps a column to its percentiles and mean; ``labels`` a label
    name to its most frequent values and counts; ``fits`` the fitted specs (with ``--fit``)."""

    source: str
    requests: int
    span_s: float
    mean_rate_rps: float
    interarrival_cv: float
    peak_rate_rps: float
    bin_s: float
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: int | None = None
    prefix_blocks_mean: float | None = None
    prefix_reuse: float | None = None
    notes: list[str] = field(default_factory=list)
    fits: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def guess_format(path: str) -> str | None:
    """The trace format a file's name suggests, or ``None``."""
    name = Path(path).name
    return next((fmt for pattern, fmt in _PATTERNS if pattern in name), None)


def _bin(span_s: float, bin_s: float | None) -> float:
    if bin_s is not None:
        return bin_s
    for candidate in (0.1, 1.0, 10.0, 60.0, 600.0, 3600.0):
        if span_s / candidate <= 2000:
            return candidate
    return span_s / 2000


def summarize(
    arrival_s: np.ndarray,
    source: str,
    sizes: Mapping[str, np.ndarray | None],
    labels: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
    failed: np.ndarray | None = None,
    prefix: tuple[Any, Any] | None = None,
    span_s: float | None = None,
    bin_s: float | None = None,
) -> WorkloadSummary:
    """The statistics of arrival times (sorted, seconds), sizes, labels (codes, names),
    failed flags and prefix blocks (flat ids, offsets)."""
    n = len(arrival_s)
    span = float(span_s if span_s is not None else (arrival_s[-1] if n else 0.0))
    gaps = np.diff(arrival_s)
    mean_rate = (
        (n - 1) / float(arrival_s[-1] - arrival_s[0]) if n > 1 and arrival_s[-1] > arrival_s[0] else float("nan")
    )
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else float("nan")
    width = _bin(span, bin_s)
    counts = np.bincount((arrival_s / width).astype(np.int64)) if n else np.zeros(1)
    summary = WorkloadSummary(
        source=source,
        requests=n,
        span_s=span,
        mean_rate_rps=float(mean_rate),
        interarrival_cv=cv,
        peak_rate_rps=float(counts.max() / width) if n else 0.0,
        bin_s=width,
    )
    for name, values in sizes.items():
        if values is None or not len(values) or not np.any(values):
            continue
        pct = np.percentile(values, PERCENTILES)
        summary.sizes[name] = {
            "mean": float(values.mean()),
            **{f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
            "max": float(values.max()),
            "total": float(values.sum()),
        }
    for name, (codes, names) in (labels or {}).items():
        c = np.bincount(codes, minlength=len(names))
        order = np.argsort(-c, kind="stable")[:10]
        summary.labels[name] = {str(names[i]): int(c[i]) for i in order if c[i]}
    if failed is not None:
        summary.failed = int(failed.sum())
    if prefix is not None:
        ids, offsets = prefix
        lengths = np.diff(offsets)
        summary.prefix_blocks_mean = float(lengths.mean()) if len(lengths) else 0.0
        if len(ids):
            summary.prefix_reuse = 1.0 - len(np.unique(ids)) / len(ids)
    return summary


def _from_trace(target: str, fmt: str, bin_s: float | None, options: dict[str, Any]) -> tuple[WorkloadSummary, Any]:
    from workloads.traces import read_trace

    trace = read_trace({"format": fmt, "file": target, **options}, Path.cwd(), "describe")
    summary = summarize(
        trace.arrival_s,
        f"{target} ({fmt})",
        {"input_tokens": trace.input_tokens, "output_tokens": trace.output_tokens},
        {k: (v.codes, v.names) for k, v in trace.labels.items()},
        trace.failed,
        (trace.prefix_ids, trace.prefix_offsets) if trace.prefix_ids is not None else None,
        trace.span_s,
        bin_s,
    )
    summary.notes.append(trace.stats.summary())
    summary.notes.extend(trace.stats.examples)
    return summary, trace


def _from_experiment(target: str, overrides: Sequence[str], bin_s: float | None) -> tuple[WorkloadSummary, Any]:
    from simulator.config import load_experiment
    from simulator.experiment import resolve

    runs = load_experiment(target, overrides)
    resolved = resolve(runs[0])
    if resolved.closed_loop:
        raise ConfigError(f"{target}: closed-loop arrivals depend on the simulation: run it and read requests.parquet")
    workload_ss = np.random.SeedSequence(runs[0].spec.seed).spawn(3)[0]  # as simulator.engine.Simulation
    table = resolved.generate_workload(workload_ss)
    tokens = any(c.token_input for c in resolved.classes)
    sizes = (
        {"input_tokens": table.input_tokens, "output_tokens": table.output_tokens}
        if tokens
        else {"input_samples": table.input_samples}
    )
    labels = {"model": (table.model, table.model_names), "tenant": (table.tenant, table.tenant_names)}
    prefix = getattr(table, "prefix_ids", None)
    summary = summarize(
        table.arrival_s,
        f"{target} (run {runs[0].run_id})",
        sizes,
        labels,
        prefix=(prefix, table.prefix_offsets) if prefix is not None else None,
        bin_s=bin_s,
    )
    summary.notes.extend(resolved.notes)
    if len(runs) > 1:
        summary.notes.append(f"the first of {len(runs)} runs of the sweep")
    return summary, table


def _plots(
    summary: WorkloadSummary, arrival_s: np.ndarray, sizes: Mapping[str, np.ndarray | None], out_dir: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    width = summary.bin_s
    counts = np.bincount((arrival_s / width).astype(np.int64)) if len(arrival_s) else np.zeros(1)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(np.arange(len(counts)) * width, counts / width, lw=0.8, drawstyle="steps-post")
    ax.axhline(summary.mean_rate_rps, color="k", ls="--", lw=0.8, label=f"mean {summary.mean_rate_rps:.3g} req/s")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"arrival rate (req/s, {width:g} s bins)")
    ax.set_title(f"{Path(summary.source.split(' ')[0]).name}: CV of gaps {summary.interarrival_cv:.2f}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = out_dir / "arrival_rate.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    summary.figures.append(path)
    shown = {k: v for k, v in sizes.items() if v is not None and len(v) and np.any(v)}
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.2), squeeze=False)
        for ax, (name, values) in zip(axes[0], shown.items(), strict=True):
            pos = values[values > 0]
            bins = np.logspace(0, np.log10(max(pos.max(), 2)), 60) if len(pos) else 30
            ax.hist(pos, bins=bins, color="C1")
            ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel("requests")
            p50 = summary.sizes[name]["p50"]
            ax.axvline(p50, color="k", ls="--", lw=0.8, label=f"p50 {p50:g}")
            ax.legend()
        fig.tight_layout()
        path = out_dir / "sizes.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        summary.figures.append(path)


def _print(summary: WorkloadSummary, out: TextIO) -> None:
    w = out.write
    w(f"workload: {summary.source}\n")
    w(f"  requests           {summary.requests:,}\n")
    w(f"  span               {summary.span_s:,.3f} s\n")
    w(f"  mean rate          {summary.mean_rate_rps:,.4g} req/s (1 / mean gap)\n")
    w(f"  peak rate          {summary.peak_rate_rps:,.4g} req/s (in {summary.bin_s:g} s bins)\n")
    w(f"  CV of gaps         {summary.interarrival_cv:.3f} (Poisson: 1)\n")
    for name, stats in summary.sizes.items():
        pct = "  ".join(f"{k} {v:,.0f}" for k, v in stats.items() if k.startswith("p"))
        w(f"  {name:<18} mean {stats['mean']:,.1f}  {pct}  max {stats['max']:,.0f}  total {stats['total']:,.0f}\n")
    for name, counts in summary.labels.items():
        top = ", ".join(f"{k[:24]} {v:,}" for k, v in list(counts.items())[:5])
        w(f"  {name:<18} {len(counts)}{'+' if len(counts) == 10 else ''} values; most frequent: {top}\n")
    if summary.failed is not None:
        w(f"  failed             {summary.failed:,} (flagged by the trace)\n")
    if summary.prefix_blocks_mean is not None:
        reuse = f", {summary.prefix_reuse:.1%} of block ids repeat" if summary.prefix_reuse is not None else ""
        w(f"  prefix blocks      {summary.prefix_blocks_mean:,.1f} per request{reuse}\n")
    for key, spec in summary.fits.items():
        w(f"  fit: {key:<13} {json.dumps(spec)}\n")
    for note in summary.notes:
        w(f"  note: {note}\n")
    for path in summary.figures:
        w(f"  figure: {path}\n")


def describe(
    target: str,
    out_dir: Path | None = None,
    *,
    format: str | None = None,
    overrides: Sequence[str] = (),
    bin_s: float | None = None,
    fit: bool = False,
    options: dict[str, Any] | None = None,
    out: TextIO | None = None,
) -> WorkloadSummary:
    """Print the statistics of an experiment's workload or of a trace, draw the plots into
    ``out_dir`` (none without it), and return them.

    ``target``: an experiment YAML (or shipped experiment's name), with command-line style
    ``overrides``; or a trace file read with ``format`` (default: recognised from the file's
    name) and reader ``options`` (``window_s``, ``max_requests``, ``rate_scale``, ...).
    ``bin_s``: the width of the rate bins (default: a round width giving at most 2,000 bins).
    ``fit``: also fit Gamma and MMPP arrivals and log-normal sizes. Raises
    :class:`simulator.errors.LdsimError` for a bad target.
    """
    out = out or sys.stdout
    is_experiment = format is None and (target.endswith((".yaml", ".yml")) or not Path(target).exists())
    if is_experiment:
        summary, data = _from_experiment(target, overrides, bin_s)
        arrival = data.arrival_s
        sizes = {k: getattr(data, k) for k in summary.sizes}
    else:
        fmt = format or guess_format(target)
        if fmt is None:
            raise ConfigError(
                f"{target}: cannot tell the trace format from the file's name: give --format"
                f" (azure_llm_2023, azure_llm_2024, mooncake, burstgpt, azure_functions_2019,"
                f" azure_functions_2021, table)"
            )
        summary, data = _from_trace(target, fmt, bin_s, dict(options or {}))
        arrival = data.arrival_s
        sizes = {"input_tokens": data.input_tokens, "output_tokens": data.output_tokens}
    if fit and len(arrival) >= 10:
        from workloads.fitting import fit_gamma, fit_lognormal, fit_mmpp

        g = fit_gamma(arrival)
        summary.fits["gamma"] = {"rate_rps": round(g.rate_rps, 4), **g.spec()}
        m = fit_mmpp(arrival)
        summary.fits["mmpp"] = {"rate_rps": round(m.mean_rate_rps, 4), **m.spec()}
        for name, values in sizes.items():
            if values is not None and np.count_nonzero(values) >= 2:
                summary.fits[name] = fit_lognormal(values).spec()
    if out_dir is not None:
        _plots(summary, arrival, sizes, Path(out_dir))
    _print(summary, out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``describe``'s arguments to ``parser`` (for ``ldsim workload describe``)."""
    parser.add_argument("target", help="an experiment YAML (or shipped experiment's name), or a trace file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override keys of an experiment")
    parser.add_argument("--format", help="the trace's format (default: recognised from the file's name)")
    parser.add_argument("--out", help="folder for arrival_rate.png and sizes.png (default: no plots)")
    parser.add_argument("--bin-s", type=float, help="width of the arrival-rate bins, seconds")
    parser.add_argument("--fit", action="store_true", help="fit Gamma/MMPP arrivals and log-normal sizes")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="key=value",
        help="a trace reader option, e.g. window_s=[0,600] or max_requests=5000 (YAML values)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``describe`` from parsed arguments; return the exit status (errors propagate)."""
    from simulator.config import parse_yaml

    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option '{item}': expected key=value, e.g. max_requests=5000")
        options[key] = parse_yaml(raw)
    describe(
        args.target,
        Path(args.out) if args.out else None,
        format=args.format,
        overrides=args.overrides,
        bin_s=args.bin_s,
        fit=args.fit,
        options=options,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workloads.describe TARGET [...]``: as ``ldsim workload describe``."""
    parser = argparse.ArgumentParser(prog="ldsim workload describe", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except LdsimError as exc:
        print(f"ldsim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
