"""The results schema and the metrics computed from it.

``requests.parquet`` is the contract between simulator, executor, validator and report: one
row per request that arrived, with a final status, in seconds (columns in
:data:`REQUEST_COLUMNS`). Definitions (also in the README):

* ``queue_s = start_s - arrival_s``: waiting before the request's first batch or iteration;
* ``ttft_s = first_token_s - arrival_s``: time to first token (for a model that emits no
  tokens, its first output is its whole result, so ``ttft_s = e2e_s``);
* ``e2e_s = completion_s - arrival_s``;
* ``tpot_s = (completion_s - first_token_s) / (output_tokens - 1)``: time per output token
  after the first (``nan`` when ``output_tokens < 2``);
* ``slo_met``: completed, and every SLO the request carries is met (``ttft_s <= ttft_slo_s``,
  ``tpot_s <= tpot_slo_s``, ``e2e_s <= e2e_slo_s``); a request without SLOs meets them by
  completing.

The summary: counts per status; ``throughput_rps`` and ``goodput_rps`` = completed and
SLO-meeting requests per second of ``makespan_s`` (first arrival to last final status);
mean/p50/p90/p99 of e2e, ttft, tpot, queue time and normalised latency over completed
requests; utilisation = busy time / simulated time averaged over replicas; simulated and wall
seconds; events. For decoders also: the inter-token latencies' mean and percentiles (every gap
between two consecutive output tokens of every request, from a log-binned histogram: 20 bins
per decade, so within 12%), preemptions, recomputed tokens and swapped bytes, the prefix-cache
hit rate (cached prompt tokens / prompt tokens of completed requests), KV-cache utilisation
(mean and max over the timeseries samples), and MFU and MBU: FLOPs and bytes executed over
(simulated time x devices x the datasheet peak), averaged over replicas.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from simulator.request import STATUSES, RequestTable

__all__ = ["REQUEST_COLUMNS", "latency_stats", "requests_frame", "summarize"]

#: Columns of ``requests.parquet`` with their units.
REQUEST_COLUMNS = {
    "request_id": "index in arrival order",
    "model": "deployment name",
    "tenant": "tenant name",
    "replica": "replica id (-1: never routed)",
    "status": "completed | rejected | dropped | failed",
    "arrival_s": "s",
    "start_s": "s",
    "first_token_s": "s",
    "completion_s": "s",
    "final_s": "s",
    "input_tokens": "tokens",
    "input_samples": "samples",
    "output_tokens": "tokens",
    "priority": "class priority (higher is more important)",
    "queue_s": "s",
    "ttft_s": "s",
    "tpot_s": "s per token",
    "e2e_s": "s",
    "ttft_slo_s": "s (nan: none)",
    "tpot_slo_s": "s (nan: none)",
    "e2e_slo_s": "s (nan: none)",
    "slo_met": "bool",
    "normalized_latency_s": "s per output token: e2e_s / output_tokens (nan without output tokens)",
    "max_itl_s": "s: the longest gap between two consecutive output tokens (nan: fewer than 2)",
    "preemptions": "times the request was preempted",
    "cached_tokens": "prompt tokens served from the prefix cache",
    "truncated_tokens": "tokens cut to fit the model's context (context_overflow: truncate)",
    "prefill_replica": "replica id of the prefill in a disaggregated deployment (-1: none)",
    "kv_transfer_s": "s: the KV cache's move from the prefill to the decode replica (nan: none)",
}

_PERCENTILES = (50, 90, 99)


def requests_frame(table: RequestTable) -> pd.DataFrame:
    """The ``requests.parquet`` frame of a filled request table."""
    status = np.asarray(STATUSES, dtype=object)[table.status]
    with np.errstate(invalid="ignore", divide="ignore"):
        e2e = table.completion_s - table.arrival_s
        ttft = table.first_token_s - table.arrival_s
        queue = table.start_s - table.arrival_s
        denom = table.output_tokens - 1
        tpot = np.where(denom >= 1, (table.completion_s - table.first_token_s) / np.maximum(denom, 1), np.nan)
    completed = table.status == 1
    met = completed.copy()
    for value, slo in ((ttft, table.ttft_slo_s), (tpot, table.tpot_slo_s), (e2e, table.e2e_slo_s)):
        has = ~np.isnan(slo)
        ok = ~has | np.isnan(value) | (value <= slo)
        met &= ok
    model_names = np.asarray(table.model_names, dtype=object)
    tenant_names = np.asarray(table.tenant_names, dtype=object)
    return pd.DataFrame(
        {
            "request_id": np.arange(len(table), dtype=np.int64),
            "model": pd.Categorical(model_names[table.model], categories=table.model_names),
            "tenant": pd.Categorical(tenant_names[table.tenant], categories=table.tenant_names),
            "replica": table.replica.astype(np.int32),
            "status": pd.Categorical(status, categories=list(STATUSES[1:])),
            "arrival_s": table.arrival_s,
            "start_s": table.start_s,
            "first_token_s": table.first_token_s,
            "completion_s": table.completion_s,
            "final_s": table.final_s,
            "input_tokens": table.input_tokens.astype(np.int64),
            "input_samples": table.input_samples.astype(np.int64),
            "output_tokens": table.output_tokens.astype(np.int64),
            "priority": table.priority.astype(np.int32),
            "queue_s": queue,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": e2e,
            "ttft_slo_s": table.ttft_slo_s,
            "tpot_slo_s": table.tpot_slo_s,
            "e2e_slo_s": table.e2e_slo_s,
            "slo_met": met,
            "normalized_latency_s": np.where(table.output_tokens > 0, e2e / np.maximum(table.output_tokens, 1), np.nan),
            "max_itl_s": table.max_itl_s,
            "preemptions": table.preemptions.astype(np.int32),
            "cached_tokens": table.cached_tokens.astype(np.int64),
            "truncated_tokens": table.truncated_tokens.astype(np.int64),
            "prefill_replica": table.prefill_replica.astype(np.int32),
            "kv_transfer_s": table.kv_transfer_s,
        }
    )


def latency_stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean and p50/p90/p99 of the finite ``values`` (``None`` when there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, **{f"p{p}": None for p in _PERCENTILES}}
    pct = np.percentile(v, _PERCENTILES)
    return {"mean": float(v.mean()), **{f"p{p}": float(x) for p, x in zip(_PERCENTILES, pct, strict=True)}}


def _block(df: pd.DataFrame, makespan: float) -> dict[str, Any]:
    counts = df["status"].value_counts()
    completed = df[df["status"] == "completed"]
    out: dict[str, Any] = {
        "requests": len(df),
        **{status: int(counts.get(status, 0)) for status in STATUSES[1:]},
        "throughput_rps": len(completed) / makespan if makespan > 0 else None,
        "goodput_rps": int(df["slo_met"].sum()) / makespan if makespan > 0 else None,
        "slo_attainment": float(df["slo_met"].mean()) if len(df) else None,
        "output_tokens_per_s": float(completed["output_tokens"].sum()) / makespan if makespan > 0 else None,
    }
    for col in ("e2e_s", "ttft_s", "tpot_s", "queue_s", "normalized_latency_s"):
        for stat, value in latency_stats(completed[col].to_numpy()).items():
            out[f"{col.removesuffix('_s')}_{stat}_s"] = value
    if "preemptions" in df:
        out["truncated_requests"] = int((df["truncated_tokens"] > 0).sum())
        out["preemptions"] = int(df["preemptions"].sum())
        prompts = int(completed["input_tokens"].sum())
        out["prefix_cached_tokens"] = int(completed["cached_tokens"].sum())
        out["prefix_hit_rate"] = out["prefix_cached_tokens"] / prompts if prompts else None
        moved = completed["kv_transfer_s"].to_numpy()
        if np.isfinite(moved).any():
            for stat, value in latency_stats(moved).items():
                out[f"kv_transfer_{stat}_s"] = value
    return out


def itl_stats(counts: np.ndarray | None) -> dict[str, float | None]:
    """Mean and p50/p90/p99 of the inter-token latencies in a histogram of
    :func:`simulator.decoder.itl_bins` (each bin represented by its geometric centre)."""
    from simulator.decoder import ITL_BINS_PER_DECADE, ITL_LOG10_MIN_S

    keys = ["itl_mean_s", *(f"itl_p{p}_s" for p in _PERCENTILES)]
    if counts is None or counts.sum() == 0:
        return dict.fromkeys(keys)
    centres = 10 ** (ITL_LOG10_MIN_S + (np.arange(len(counts)) + 0.5) / ITL_BINS_PER_DECADE)
    cum = np.cumsum(counts) / counts.sum()
    out: dict[str, float | None] = {"itl_mean_s": float((centres * counts).sum() / counts.sum())}
    for p in _PERCENTILES:
        out[f"itl_p{p}_s"] = float(centres[int(np.searchsorted(cum, p / 100.0))])
    return out


def _kv_stats(replicas: list[dict[str, Any]], timeseries: pd.DataFrame | None) -> dict[str, Any]:
    """KV-cache and work figures of decoder replicas (empty for other models)."""
    decoders = [r for r in replicas if r.get("kv_blocks")]
    if not decoders:
        return {}
    out: dict[str, Any] = {
        "recomputed_tokens": sum(r["recomputed_tokens"] for r in decoders),
        "swapped_bytes": sum(r["swapped_bytes"] for r in decoders),
        "mfu_mean": float(np.mean([r["mfu"] for r in decoders])) if decoders[0].get("mfu") is not None else None,
        "mbu_mean": float(np.mean([r["mbu"] for r in decoders])) if decoders[0].get("mbu") is not None else None,
    }
    if timeseries is not None and "kv_utilization" in timeseries and len(timeseries):
        util = timeseries["kv_utilization"].dropna()
        out["kv_utilization_mean"] = float(util.mean()) if len(util) else None
        out["kv_utilization_max"] = float(util.max()) if len(util) else None
    return out


def summarize(
    df: pd.DataFrame,
    replicas: list[dict[str, Any]],
    sim_end_s: float,
    wall_s: float,
    events: int,
    itl_counts: np.ndarray | None = None,
    timeseries: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` figures of one run (see the module docstring)."""
    n = len(df)
    first = float(df["arrival_s"].min()) if n else 0.0
    makespan = float(df["final_s"].max()) - first if n else 0.0
    window = float(df["arrival_s"].max()) if n else 0.0
    busy = [r["busy_s"] for r in replicas]
    summary: dict[str, Any] = {
        **_block(df, makespan),
        "offered_rps": n / window if window > 0 else None,
        "makespan_s": makespan,
        "utilization": float(np.mean(busy)) / sim_end_s if replicas and sim_end_s > 0 else None,
        "queue_length_mean": (
            sum(r["queue_area"] for r in replicas) / sim_end_s if replicas and sim_end_s > 0 else None
        ),
        **(itl_stats(itl_counts) if itl_counts is not None else {}),
        **_kv_stats(replicas, timeseries),
        "simulated_s": sim_end_s,
        "wall_s": wall_s,
        "events": events,
        "requests_per_wall_s": n / wall_s if wall_s > 0 else None,
    }
    models = list(df["model"].cat.categories)
    if len(models) > 1:
        summary["per_model"] = {m: _block(df[df["model"] == m], makespan) for m in models}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
