"""Side-by-side workload with Vidur (MLSys'24): ldsim's wall time, peak memory and latencies.

The workload is Vidur's own, reproduced request for request (microsoft/vidur at commit
7d47513, its default seed 42), so that the two simulators can be timed on one machine:

  Llama-2-70B, tensor parallel 2, A100 (ldsim's profile calibrated on the same Vidur kernel
  measurements), vLLM-style scheduler with a batch cap of 128 sequences and 4,096 tokens per
  batch, KV blocks of 16 tokens;

  (a) one replica, 50,000 requests, Vidur's "Poisson" arrivals at 0.9 req/s, lengths from the
      Azure conversation trace (../shared/vidur_data/processed_traces/splitwise_conv.csv,
      19,366 rows, tiled to 50,000 rows);
  (b) the same trace replayed with its own arrival times on 8 replicas, round-robin.

How each request is matched to Vidur's (see vidur/request_generator/*):

* (a) lengths: the tiled rows, each total clipped to 4,096 tokens by deducting
  ``ceil(diff * share)`` from prefill and decode in proportion, both kept >= 1, then the rows
  shuffled with ``DataFrame.sample(frac=1, random_state=42)`` and taken in order
  (TraceRequestLengthGenerator);
* (a) arrivals: ``random.seed(42)``, then each gap ``min(-log(1 - random.random()) / 0.9,
  3 / 0.9)`` -- Vidur's Poisson generator caps gaps at three times their mean, so its effective
  rate is 0.9 / (1 - e**-3) = 0.947 req/s (PoissonRequestIntervalGenerator, set_seeds);
* (b) the trace's ``arrived_at`` and token counts, a prefill reduced by the excess over 4,096
  tokens, both counts >= 1 (TraceReplayRequestGenerator).

Run: ``python benchmarks/bench_vidur.py [a] [b] [--requests N]``. Each case runs in its own
process and prints wall seconds, peak RSS and TTFT/TPOT/e2e percentiles. A benchmark, not a
test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT.parent / "shared" / "vidur_data" / "processed_traces" / "splitwise_conv.csv"
MAX_TOKENS = 4096
SEED = 42


def experiment(replicas: int) -> dict:
    """The ldsim experiment of the comparison (the workload is injected as a request table)."""
    return {
        "name": f"vidur-comparison-{replicas}",
        "seed": SEED,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": replicas},
        "models": {
            "llama": {
                "architecture": "llama-2-70b",
                "tensor_parallel": 2,
                "dtype": "fp16",
                "batching": {"policy": "vllm", "max_num_seqs": 128, "max_num_batched_tokens": 4096},
                "kv_cache": {"block_tokens": 16, "watermark": 0.01},
            }
        },
        "routing": {"policy": "round_robin"},
        "workload": {
            "rate_rps": 1.0,
            "num_requests": 1,
            "mix": [{"model": "llama", "input_tokens": 1, "output_tokens": 1}],
        },
    }


def vidur_synthetic(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case (a): arrivals, prefill and decode tokens as Vidur generates them."""
    trace = pd.read_csv(TRACE)
    tiled = pd.concat([trace] * math.ceil(n / len(trace)), ignore_index=True).iloc[:n].copy()
    prefill = tiled["num_prefill_tokens"].astype(int)
    decode = tiled["num_decode_tokens"].astype(int)
    total = prefill + decode
    diff = (total - MAX_TOKENS).clip(lower=0)
    prefill = (prefill - np.ceil(diff * (prefill / total)).astype(int)).clip(lower=1)
    decode = (decode - np.ceil(diff * (decode / total)).astype(int)).clip(lower=1)
    frame = pd.DataFrame({"p": prefill, "d": decode}).sample(frac=1, random_state=SEED)
    random.seed(SEED)
    qps = 0.9
    cap = 3.0 / qps
    t = 0.0
    arrivals = np.empty(n)
    for i in range(n):
        t += min(-math.log(1.0 - random.random()) / qps, cap)
        arrivals[i] = t
    return arrivals, frame["p"].to_numpy(np.int64), frame["d"].to_numpy(np.int64)


def vidur_replay() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case (b): the trace replayed as Vidur replays it."""
    trace = pd.read_csv(TRACE)
    prefill = trace["num_prefill_tokens"].astype(int).clip(lower=1)
    decode = trace["num_decode_tokens"].astype(int).clip(lower=1)
    prefill = prefill - (prefill + decode - MAX_TOKENS).clip(lower=0)
    order = np.argsort(trace["arrived_at"].to_numpy(), kind="stable")
    return (
        trace["arrived_at"].to_numpy(float)[order],
        prefill.to_numpy(np.int64)[order],
        decode.to_numpy(np.int64)[order],
    )


def _one(case: str, limit: int | None) -> dict:
    sys.path.insert(0, str(ROOT))
    from simulator.config import expand
    from simulator.engine import Simulation
    from simulator.experiment import resolve
    from simulator.metrics import requests_frame, summarize
    from simulator.request import RequestTable

    t0 = time.perf_counter()
    arrivals, prefill, decode = vidur_synthetic(limit or 50_000) if case == "a" else vidur_replay()
    if limit:
        arrivals, prefill, decode = arrivals[:limit], prefill[:limit], decode[:limit]
    (run,) = expand(experiment(1 if case == "a" else 8), ROOT / "benchmarks" / "vidur.yaml")
    resolved = resolve(run)
    n = len(arrivals)
    nan = np.full(n, np.nan)
    table = RequestTable(
        arrival_s=arrivals,
        model=np.zeros(n, np.int32),
        tenant=np.zeros(n, np.int32),
        input_tokens=prefill,
        input_samples=np.ones(n, np.int64),
        output_tokens=decode,
        priority=np.zeros(n, np.int32),
        ttft_slo_s=nan,
        tpot_slo_s=nan.copy(),
        e2e_slo_s=nan.copy(),
        model_names=["llama"],
        tenant_names=["default"],
    )
    t1 = time.perf_counter()
    result = Simulation(resolved, table).run()
    t2 = time.perf_counter()
    frame = requests_frame(result.table)
    s = summarize(frame, result.replicas, result.sim_end_s, result.wall_s, result.events, result.itl_counts)
    t3 = time.perf_counter()
    kv = resolved.models["llama"].kv
    return {
        "case": case,
        "requests": n,
        "wall_s": t3 - t0,
        "workload_s": t1 - t0,
        "simulate_s": t2 - t1,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "events": result.events,
        "completed": s["completed"],
        "preemptions": s.get("preemptions"),
        "kv_blocks": kv.total_blocks,
        "simulated_s": result.sim_end_s,
        **{k: s[k] for k in s if k.startswith(("ttft_", "tpot_", "e2e_")) and not k.endswith("mean_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=["a", "b"])
    parser.add_argument("--requests", type=int, default=None, help="cut each case to this many requests")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.cases[0], args.requests)))
        return
    for case in args.cases:
        cmd = [sys.executable, __file__, case, "--child"] + (
            ["--requests", str(args.requests)] if args.requests else []
        )
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(
            f"({r['case']}) {r['requests']:,} requests, {r['kv_blocks']:,} KV blocks per replica:"
            f" {r['wall_s']:.2f} s wall (workload {r['workload_s']:.2f}, simulation {r['simulate_s']:.2f}),"
            f" peak RSS {r['peak_rss_mib']:.0f} MiB, {r['events']:,} events, {r['simulated_s']:,.0f} s simulated,"
            f" {r['completed']:,} completed, {r['preemptions']:,} preemptions"
        )
        for metric in ("ttft", "tpot", "e2e"):
            print(f"    {metric}: " + ", ".join(f"p{p} {r[f'{metric}_p{p}_s']:.4g} s" for p in (50, 90, 99)))


if __name__ == "__main__":
    main()
