"""Core simulator throughput benchmark (issue 2, "Fast").

Prints simulated requests per wall second and the peak resident memory of each case, each
case in its own process so the peak is its own:

  (a) ResNet-50, dynamic batching (max 32, 2 ms), 64 replicas, 1,000,000 requests;
  (b) Llama-2-7B, continuous batching, 16 replicas, 100,000 requests with (input, output)
      lengths sampled from the Azure LLM 2023 conversation trace.

Run:  python benchmarks/bench_core.py [a|b ...] [--requests-scale 0.1]
This is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "a": {
        "name": "bench-resnet50-dynamic",
        "seed": 1,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": 64},
        "models": {
            "resnet50": {
                "architecture": "resnet-50",
                "dtype": "fp16",
                "batching": {"policy": "dynamic", "max_batch_size": 32, "max_queue_delay_ms": 2.0},
            }
        },
        "routing": {"policy": "round_robin"},
        "workload": {"rate_rps": 300_000.0, "num_requests": 1_000_000, "mix": [{"model": "resnet50"}]},
    },
    "b": {
        "name": "bench-llama2-7b-continuous",
        "seed": 1,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": 16},
        "models": {"llama": {"architecture": "llama-2-7b", "batching": {"policy": "continuous"}}},
        "routing": {"policy": "round_robin"},
        "workload": {
            "rate_rps": 40.0,
            "num_requests": 100_000,
            "mix": [
                {
                    "model": "llama",
                    "lengths": {
                        "file": "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
                        "input_column": "ContextTokens",
                        "output_column": "GeneratedTokens",
                    },
                }
            ],
        },
    },
}


def _one(case: str, scale: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from simulator.config import expand
    from simulator.engine import Simulation
    from simulator.experiment import resolve
    from simulator.metrics import requests_frame, summarize

    doc = json.loads(json.dumps(CASES[case]))
    doc["workload"]["num_requests"] = int(doc["workload"]["num_requests"] * scale)
    (run,) = expand(doc, ROOT / "benchmarks" / f"{case}.yaml")
    t0 = time.perf_counter()
    resolved = resolve(run)
    sim = Simulation(resolved)
    t1 = time.perf_counter()
    result = sim.run()
    t2 = time.perf_counter()
    frame = requests_frame(result.table)
    summary = summarize(frame, result.replicas, result.sim_end_s, result.wall_s, result.events)
    t3 = time.perf_counter()
    n = len(result.table)
    return {
        "case": case,
        "requests": n,
        "setup_s": t1 - t0,
        "simulate_s": t2 - t1,
        "metrics_s": t3 - t2,
        "requests_per_wall_s": n / (t3 - t0),
        "requests_per_sim_wall_s": n / (t2 - t1),
        "events": result.events,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "completed": summary["completed"],
        "rejected": summary["rejected"],
        "utilization": summary["utilization"],
        "e2e_p50_ms": (summary["e2e_p50_s"] or 0) * 1e3,
        "e2e_p99_ms": (summary["e2e_p99_s"] or 0) * 1e3,
        "ttft_p99_ms": (summary["ttft_p99_s"] or 0) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=sorted(CASES))
    parser.add_argument("--requests-scale", type=float, default=1.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.cases[0], args.requests_scale)))
        return
    for case in args.cases:
        out = subprocess.run(
            [sys.executable, __file__, case, "--child", "--requests-scale", str(args.requests_scale)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"({r['case']}) {r['requests']:,} requests: {r['requests_per_wall_s']:,.0f} requests/s end to end"
            f" ({r['requests_per_sim_wall_s']:,.0f}/s in the event loop; setup {r['setup_s']:.2f} s,"
            f" simulate {r['simulate_s']:.2f} s, metrics {r['metrics_s']:.2f} s), {r['events']:,} events,"
            f" peak RSS {r['peak_rss_mib']:,.0f} MiB; completed {r['completed']:,}, rejected {r['rejected']:,},"
            f" utilisation {r['utilization']:.2f}, e2e p50 {r['e2e_p50_ms']:.1f} ms p99 {r['e2e_p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
