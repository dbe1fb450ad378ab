"""Workload generation and trace reading throughput (issue 6, "Fast").

Prints requests per second and the peak resident memory of each case, each case in its own
process so that the peak is its own. ``baseline`` is the resident memory just before the
case starts (ldsim, numpy, pandas and pyarrow imported, the experiment resolved); ``peak`` is
the case's peak resident memory (Linux: the peak is reset at the start of the case):

  generate        10,000,000 requests, Poisson arrivals, log-normal input and output tokens,
                  streamed chunk by chunk (``ResolvedRun.iter_workload``) and discarded;
  generate-table  the same, assembled into one ``RequestTable`` (what the engine takes today);
  read            a synthetic 10,000,000-row Azure LLM trace (CSV, CRLF, 7-digit fractions,
                  ~380 MB) streamed block by block (``iter_trace_chunks``) and discarded;
  read-trace      the same file read whole into a ``Trace`` (``read_trace``).

Run:  python benchmarks/bench_workloads.py [CASE ...] [--requests 10000000] [--file PATH]
The synthetic trace is written once to a temporary folder (or PATH) and is not timed.
This is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ("generate", "generate-table", "read", "read-trace")

EXPERIMENT = {
    "name": "bench-workload",
    "seed": 1,
    "models": {"llama": {"architecture": "llama-2-7b"}},
    "workload": {
        "rate_rps": 1000.0,
        "num_requests": 10_000_000,
        "mix": [
            {
                "model": "llama",
                "input_tokens": {"dist": "lognormal", "median": 1000, "sigma": 1.0, "max": 4000},
                "output_tokens": {"dist": "lognormal", "median": 200, "sigma": 1.0, "max": 2000},
            }
        ],
    },
}


def _status_mb(key: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in MB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak RSS (Linux: write 5 to /proc/self/clear_refs), so that the peak is the
    case's own and not the imports'."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_azure_csv(path: Path, n: int) -> None:
    """A trace in the Azure LLM 2023 layout: CRLF, TIMESTAMP with 7 fractional digits."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(0)
    start = np.datetime64("2023-11-16T18:00:00", "ns").astype(np.int64)
    with path.open("wb") as f:
        f.write(b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n")
        last = 0.0
        for lo in range(0, n, 1_000_000):
            k = min(1_000_000, n - lo)
            t = last + np.cumsum(rng.exponential(1 / 3000, k))
            last = float(t[-1])
            ns = start + (t * 1e9).astype(np.int64)
            whole = pc.strftime(pa.array((ns // 10**9).astype("datetime64[s]")), format="%Y-%m-%d %H:%M:%S")
            frac = pc.utf8_lpad(pc.cast(pa.array((ns % 10**9) // 100), pa.string()), width=7, padding="0")
            table = pa.table(
                {
                    "TIMESTAMP": pc.binary_join_element_wise(whole, frac, "."),
                    "ContextTokens": pc.cast(pa.array(rng.integers(1, 8000, k)), pa.string()),
                    "GeneratedTokens": pc.cast(pa.array(rng.integers(1, 500, k)), pa.string()),
                }
            )
            pcsv.write_csv(table, f, pcsv.WriteOptions(include_header=False, quoting_style="none", eol="\r\n"))


def _one(case: str, n: int, file: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pyarrow  # noqa: F401 (the baseline includes it)

    import simulator  # noqa: F401
    from simulator.config import expand
    from simulator.experiment import resolve
    from workloads.traces import iter_trace_chunks, read_trace

    if case.startswith("generate"):
        doc = json.loads(json.dumps(EXPERIMENT))
        doc["workload"]["num_requests"] = n
        (run,) = expand(doc, ROOT / "benchmarks" / "bench.yaml")
        resolved = resolve(run)
    baseline = _status_mb("VmRSS") or _peak_mb()
    _reset_peak()
    t0 = time.perf_counter()
    if case.startswith("generate"):
        ss = np.random.SeedSequence(1).spawn(3)[0]
        if case == "generate":
            count = tokens = 0
            for chunk in resolved.iter_workload(ss):
                count += len(chunk)
                tokens += int(chunk.input_tokens.sum())
        else:
            table = resolved.generate_workload(ss)
            count, tokens = len(table), int(table.input_tokens.sum())
    else:
        spec = {"format": "azure_llm_2023", "file": file}
        if case == "read":
            count = tokens = 0
            for chunk in iter_trace_chunks(spec):
                count += len(chunk)
                tokens += int(chunk.input_tokens.sum())
        else:
            trace = read_trace(spec)
            count, tokens = len(trace), int(trace.input_tokens.sum())
    wall = time.perf_counter() - t0
    return {
        "case": case,
        "requests": count,
        "wall_s": round(wall, 3),
        "requests_per_s": round(count / wall),
        "peak_rss_mb": round(_peak_mb()),
        "baseline_rss_mb": round(baseline),
        "input_tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"one of {', '.join(CASES)} (default: all)")
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--file", help="the synthetic trace (written if missing)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cases = args.cases or list(CASES)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.one:
        print(json.dumps(_one(args.one, args.requests, args.file)))
        return 0
    tmp = None
    file = Path(args.file) if args.file else None
    if any(c.startswith("read") for c in args.cases) and (file is None or not file.exists()):
        if file is None:
            tmp = tempfile.TemporaryDirectory()
            file = Path(tmp.name) / "AzureLLMInferenceTrace_synthetic.csv"
        t = time.perf_counter()
        write_azure_csv(file, args.requests)
        print(f"wrote {file} ({file.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(f"{'case':<16} {'requests':>12} {'wall s':>8} {'requests/s':>12} {'peak RSS MB':>12} {'baseline MB':>12}")
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--requests", str(args.requests), "--file", str(file)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"{case:<16} {out['requests']:>12,} {out['wall_s']:>8.2f} {out['requests_per_s']:>12,}"
            f" {out['peak_rss_mb']:>12,} {out['baseline_rss_mb']:>12,}"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
