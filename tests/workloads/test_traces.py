"""Trace tools: windows, caps, rate scaling, splitting, and the options of ``read_trace``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import workloads.readers as readers
from simulator.errors import ConfigError
from workloads.traces import DATA_DIR, Labels, ReadStats, Trace, read_trace

CONV = str(DATA_DIR / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
BURST = str(Path(__file__).resolve().parent / "data" / "BurstGPT_sample.csv")


def small() -> Trace:
    """Six requests; request i has prefix blocks [i, ..., i + i - 1] (i blocks)."""
    lengths = np.arange(6)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate([np.arange(i, 2 * i) for i in range(6)]).astype(np.int64)
    return Trace(
        arrival_s=np.array([0.0, 1.0, 1.5, 4.0, 7.0, 9.0]),
        input_tokens=np.arange(6, dtype=np.int64) * 10,
        output_tokens=np.arange(6, dtype=np.int64),
        labels={"model": Labels(np.array([0, 1, 0, 1, 1, 0], dtype=np.int32), ("a", "b"))},
        failed=np.array([False, True, False, False, True, False]),
        prefix_ids=ids,
        prefix_offsets=offsets,
        source="mem",
        format="test",
        span_s=10.0,
        stats=ReadStats(),
    )


def blocks(trace: Trace, i: int) -> list[int]:
    return trace.prefix_ids[trace.prefix_offsets[i] : trace.prefix_offsets[i + 1]].tolist()


def test_window_head_scale_and_select_keep_rows_together() -> None:
    t = small()
    w = t.window(1.0, 7.0)
    assert w.arrival_s.tolist() == [0.0, 0.5, 3.0] and w.span_s == 6.0
    assert w.input_tokens.tolist() == [10, 20, 30]
    assert [blocks(w, i) for i in range(3)] == [[1], [2, 3], [3, 4, 5]]
    h = t.head(4)
    assert len(h) == 4 and h.span_s == 7.0 and blocks(h, 3) == [3, 4, 5]
    s = t.scaled(2.0)
    assert s.arrival_s.tolist() == [0.0, 0.5, 0.75, 2.0, 3.5, 4.5] and s.span_s == 5.0
    r = t.scaled_to_rate(10.0)
    assert math.isclose(r.mean_rate_rps, 10.0)
    ok = t.drop_failed()
    assert ok.output_tokens.tolist() == [0, 2, 3, 5] and [blocks(ok, i) for i in range(4)] == [
        [],
        [2, 3],
        [3, 4, 5],
        [5, 6, 7, 8, 9],
    ]


def test_split_by_label_partitions_the_trace() -> None:
    parts = small().split("model")
    assert set(parts) == {"a", "b"}
    assert parts["a"].input_tokens.tolist() == [0, 20, 50] and parts["b"].input_tokens.tolist() == [10, 30, 40]
    assert blocks(parts["b"], 2) == [4, 5, 6, 7]
    with pytest.raises(KeyError, match="did you mean 'model'"):
        small().split("modle")


def test_statistics() -> None:
    t = small()
    assert math.isclose(t.mean_rate_rps, 5 / 9)
    gaps = np.diff(t.arrival_s)
    assert math.isclose(t.interarrival_cv, gaps.std() / gaps.mean())


def test_read_trace_applies_window_failed_cap_and_scale_in_order() -> None:
    full = read_trace({"format": "burstgpt", "file": BURST})
    got = read_trace(
        {
            "format": "burstgpt",
            "file": BURST,
            "window_s": [100, 500],
            "failed": "drop",
            "max_requests": 10,
            "rate_scale": 4,
        }
    )
    manual = full.window(100, 500).drop_failed().head(10).scaled(4)
    assert np.array_equal(got.arrival_s, manual.arrival_s)
    assert np.array_equal(got.input_tokens, manual.input_tokens)
    assert got.span_s == manual.span_s


def test_reading_stops_after_the_window_in_a_sorted_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)
    t = read_trace({"format": "azure_llm_2023", "file": CONV, "window_s": [0, 60]})
    assert t.stats.stopped_early and t.stats.rows < 5000
    everything = read_trace({"format": "azure_llm_2023", "file": CONV})
    assert np.array_equal(t.arrival_s, everything.window(0, 60).arrival_s)
    capped = read_trace({"format": "azure_llm_2023", "file": CONV, "max_requests": 100})
    assert len(capped) == 100 and capped.stats.rows < 5000


def test_window_past_the_end_and_bad_windows() -> None:
    with pytest.raises(ConfigError, match="no requests left after window_s"):
        read_trace({"format": "azure_llm_2023", "file": CONV, "window_s": [10_000, 20_000]})
    with pytest.raises(ConfigError, match=r"window_s.*0 <= start < end"):
        read_trace({"format": "azure_llm_2023", "file": CONV, "window_s": [5, 1]})


def test_reads_are_cached() -> None:
    spec = {"format": "azure_llm_2023", "file": CONV, "max_requests": 50}
    assert read_trace(spec) is read_trace(dict(spec))
