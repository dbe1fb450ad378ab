"""Trace readers round-trip and name the place of every malformed row.

Round trip: the arrival count, the token totals (and the prefix-block ids) of a read trace
equal those of the file, computed here independently with the standard library. Malformed
rows (non-numeric, negative, fractional tokens, empty cells, missing columns or fields,
unparseable timestamps; LF and CRLF endings) raise an error naming the file, the line and
the column, or are skipped and counted with ``on_error: skip``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import workloads.readers as readers
from simulator.errors import ConfigError
from workloads.traces import DATA_DIR, iter_trace_chunks, read_trace

HERE = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
MOONCAKE = SHARED / "mooncake" / "conversation_trace.jsonl"


def read(fmt: str, file: Path | str, **options):
    return read_trace({"format": fmt, "file": str(file), **options})


# --------------------------------------------------------------------------------------------
# round trips on real files


@pytest.mark.parametrize("name", ["code", "conv"])
def test_azure_llm_2023_round_trip(name: str) -> None:
    path = DATA_DIR / f"azure_llm_2023/AzureLLMInferenceTrace_{name}.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    trace = read("azure_llm_2023", path)
    assert len(trace) == len(rows)
    assert trace.input_tokens.sum() == sum(int(r["ContextTokens"]) for r in rows)
    assert trace.output_tokens.sum() == sum(int(r["GeneratedTokens"]) for r in rows)
    # 7 fractional digits: the standard library reads 6, so compare to 1 microsecond
    stamps = sorted(dt.datetime.fromisoformat(r["TIMESTAMP"][:26]) for r in rows)
    assert trace.arrival_s[-1] == pytest.approx((stamps[-1] - stamps[0]).total_seconds(), abs=1e-6)
    assert trace.start_epoch_s == pytest.approx(stamps[0].replace(tzinfo=dt.timezone.utc).timestamp(), abs=1e-6)
    assert np.all(np.diff(trace.arrival_s) >= 0)


def test_azure_llm_2024_timestamp_variants() -> None:
    trace = read("azure_llm_2024", HERE / "AzureLLMInferenceTrace_code_1week.csv")
    expected = np.array([0.00993, 1, 1.5, 2.123456, 2.900000001, 3.25, 4, 5.0000001, 6]) - 0.00993
    assert np.allclose(trace.arrival_s, expected, atol=1e-9)
    assert trace.input_tokens.tolist() == [100 * (i + 1) for i in range(9)]


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the shared Mooncake trace is not here")
def test_mooncake_round_trip_with_prefix_blocks() -> None:
    rows = [json.loads(line) for line in MOONCAKE.read_text().splitlines() if line.strip()]
    trace = read("mooncake", MOONCAKE)
    assert len(trace) == len(rows)
    assert trace.input_tokens.sum() == sum(r["input_length"] for r in rows)
    assert trace.output_tokens.sum() == sum(r["output_length"] for r in rows)
    assert trace.arrival_s[-1] == max(r["timestamp"] for r in rows) / 1000
    order = sorted(range(len(rows)), key=lambda i: rows[i]["timestamp"])  # stable, as the reader
    ids, off = trace.prefix_ids, trace.prefix_offsets
    assert len(ids) == sum(len(r["hash_ids"]) for r in rows)
    for k in (0, 1, 777, len(rows) - 1):
        assert ids[off[k] : off[k + 1]].tolist() == rows[order[k]]["hash_ids"]


def test_mooncake_format_on_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]}\r\n'
        "\r\n"
        '{"timestamp": 1500, "input_length": 1200, "output_length": 9, "hash_ids": [0, 2, 3], "extra": 1}\n'
    )
    trace = read("mooncake", path)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.prefix_ids.tolist() == [0, 1, 0, 2, 3] and trace.prefix_offsets.tolist() == [0, 2, 5]


# --------------------------------------------------------------------------------------------
# the formats tested on synthetic files in the upstream layout (tests/workloads/data)


def test_burstgpt_round_trip_and_failures() -> None:
    path = HERE / "BurstGPT_sample.csv"
    frame = pd.read_csv(path)
    trace = read("burstgpt", path)
    assert len(trace) == len(frame)
    assert trace.input_tokens.sum() == frame["Request tokens"].sum()
    assert trace.output_tokens.sum() == frame["Response tokens"].sum()
    assert trace.failed.sum() == (frame["Response tokens"] == 0).sum() == trace.stats.failed == 3
    assert trace.labels["model"].counts() == frame["Model"].value_counts().to_dict()
    assert trace.arrival_s[0] == frame["Timestamp"].min()  # relative timestamps keep time 0
    dropped = read("burstgpt", path, failed="drop")
    assert len(dropped) == len(frame) - 3 and not dropped.failed.any()
    assert dropped.stats.failed_dropped == 3


def test_burstgpt_total_mismatch_is_a_warning(tmp_path: Path) -> None:
    text = (HERE / "BurstGPT_sample.csv").read_text().splitlines()
    parts = text[1].split(",")
    parts[4] = "1"
    (tmp_path / "b.csv").write_text("\n".join([text[0], ",".join(parts), *text[2:]]) + "\n")
    assert "1 rows whose 'Total tokens'" in read("burstgpt", tmp_path / "b.csv").stats.summary()


@pytest.mark.parametrize("within", ["uniform", "even"])
def test_azure_functions_2019_keeps_every_minute_count(within: str) -> None:
    path = HERE / "invocations_per_function_md.anon.d01.csv"
    frame = pd.read_csv(path)
    counts = frame[[str(m) for m in range(1, 1441)]].to_numpy()
    trace = read("azure_functions_2019", path, within_minute=within)
    assert len(trace) == counts.sum()
    minute = (trace.arrival_s // 60).astype(int)
    fn = trace.labels["function"]
    for row, name in enumerate(frame["HashFunction"]):
        got = np.bincount(minute[fn.codes == fn.names.index(name)], minlength=1440)
        assert np.array_equal(got, counts[row]), name
    assert trace.labels["trigger"].counts()["timer"] == counts[1].sum()
    if within == "even":  # (k + 1/2) * 60 / c within the minute
        m = int(np.flatnonzero(counts[2])[0])
        c = counts[2, m]
        mask = (minute == m) & (fn.codes == fn.names.index(frame["HashFunction"][2]))
        assert np.allclose(np.sort(trace.arrival_s[mask]) - 60 * m, (np.arange(c) + 0.5) * 60 / c)


def test_azure_functions_2019_seed_fixes_the_placement() -> None:
    path = HERE / "invocations_per_function_md.anon.d01.csv"
    a = read("azure_functions_2019", path, seed=1).arrival_s
    b = read("azure_functions_2019", path, seed=1, max_requests=10**9).arrival_s
    c = read("azure_functions_2019", path, seed=2).arrival_s
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_azure_functions_2021_arrival_is_end_minus_duration() -> None:
    path = HERE / "AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt"
    frame = pd.read_csv(path)
    start = np.sort((frame["end_timestamp"] - frame["duration"]).to_numpy())
    trace = read("azure_functions_2021", path)
    assert len(trace) == len(frame)
    assert np.allclose(trace.arrival_s, start - start[0], atol=1e-6)
    assert sum(trace.labels["app"].counts().values()) == len(frame)
    assert len(trace.labels["function"].names) == len(frame.groupby(["app", "func"]))


def test_table_reader_csv_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"t_ms": [0, 250, 250, 1000], "prompt": [10, 20, 30, 40], "answer": [1, 2, 3, 4], "user": ["a", "b", "a", "c"]}
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    columns = {"arrival": "t_ms", "input_tokens": "prompt", "output_tokens": "answer", "tenant": "user"}
    for name in ("t.csv", "t.parquet"):
        trace = read("table", tmp_path / name, columns=columns, time_unit="ms")
        assert trace.arrival_s.tolist() == [0, 0.25, 0.25, 1.0]
        assert trace.input_tokens.sum() == 100 and trace.output_tokens.sum() == 10
        assert trace.labels["tenant"].counts() == {"a": 2, "b": 1, "c": 1}
    stamps = pd.DataFrame(
        {"when": pd.to_datetime(["2024-01-01 00:00:00.0", "2024-01-01 00:00:02.5"], format="ISO8601")}
    )
    stamps.to_parquet(tmp_path / "s.parquet")
    trace = read("parquet", tmp_path / "s.parquet", columns={"arrival": "when"}, time_unit="datetime")
    assert trace.arrival_s.tolist() == [0.0, 2.5] and trace.input_tokens is None
    with pytest.raises(ConfigError, match="column 'prompts': no such column; did you mean 'prompt'"):
        read("table", tmp_path / "t.parquet", columns={**columns, "input_tokens": "prompts"})


# --------------------------------------------------------------------------------------------
# malformed rows


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
ROWS = [f"2023-11-16 18:17:0{i}.97996{i}0,{100 + i},{10 + i}" for i in range(6)]


def write(tmp_path: Path, lines: list[str], eol: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_bytes((eol.join(lines) + eol).encode())
    return path


MALFORMED = {
    # case: (row 3 of the data, i.e. line 4, replaced by this; column; words of the message)
    "non-numeric": ("2023-11-16 18:17:09.1,abc,10", "ContextTokens", ["expected a number of tokens", "'abc'"]),
    "negative": ("2023-11-16 18:17:09.1,-5,10", "ContextTokens", ["a number of tokens >= 0", "'-5'"]),
    "fraction": ("2023-11-16 18:17:09.1,12,2.5", "GeneratedTokens", ["a whole number of tokens", "'2.5'"]),
    "empty-cell": ("2023-11-16 18:17:09.1,,10", "ContextTokens", ["a number of tokens", "''"]),
    "bad-timestamp": ("yesterday,12,10", "TIMESTAMP", ["a date-time", "'yesterday'"]),
    "impossible-date": ("2023-13-45 18:17:09,12,10", "TIMESTAMP", ["a date-time", "2023-13-45"]),
}


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_cell_names_file_line_column(tmp_path: Path, case: str, eol: str) -> None:
    row, column, words = MALFORMED[case]
    path = write(tmp_path, [HEADER, *ROWS[:3], row, *ROWS[3:]], eol)
    with pytest.raises(ConfigError) as err:
        read("azure_llm_2023", path)
    msg = str(err.value)
    assert f"{path}, line 5, column '{column}'" in msg, msg
    assert all(w in msg for w in words), msg
    assert "on_error: skip" in msg
    trace = read("azure_llm_2023", path, on_error="skip")
    assert len(trace) == len(ROWS) and trace.stats.skipped_rows == 1
    assert trace.input_tokens.sum() == sum(100 + i for i in range(6))


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_short_row_and_missing_column(tmp_path: Path, eol: str) -> None:
    path = write(tmp_path, [HEADER, *ROWS[:2], "2023-11-16 18:17:09.1,12", *ROWS[2:]], eol)
    with pytest.raises(ConfigError, match=r"trace.csv, line 4: expected 3 fields, got 2"):
        read("azure_llm_2023", path)
    trace = read("azure_llm_2023", path, on_error="skip")
    assert len(trace) == len(ROWS) and trace.stats.skipped_rows == 1
    path = write(tmp_path, ["TIMESTAMP,ContextTokens,GeneratedToken", *ROWS], eol, "cols.csv")
    with pytest.raises(ConfigError, match=r"cols.csv, line 1, column 'GeneratedTokens': no such column.*did you mean"):
        read("azure_llm_2023", path, on_error="skip")


def test_blank_lines_and_empty_files(tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, ROWS[0], "", ROWS[1], "   ", "2023-11-16 18:17:09.1,x,1"], "\r\n")
    with pytest.raises(ConfigError, match="line 6, column 'ContextTokens'"):
        read("azure_llm_2023", path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        read("azure_llm_2023", tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text(HEADER + "\n")
    with pytest.raises(ConfigError, match="no requests"):
        read("azure_llm_2023", tmp_path / "header.csv")


def test_line_numbers_are_right_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 100)  # a few lines per block
    lines = [HEADER] + [f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.5,{i},{i}" for i in range(200)]
    lines[157] = lines[157].replace(",156,", ",1.5,")
    path = write(tmp_path, lines, "\r\n")
    with pytest.raises(ConfigError, match=r"line 158, column 'ContextTokens'.*'1\.5'"):
        read("azure_llm_2023", path)
    chunks = list(iter_trace_chunks({"format": "azure_llm_2023", "file": str(path), "on_error": "skip"}))
    assert len(chunks) > 20 and sum(len(c) for c in chunks) == 199


@pytest.mark.parametrize(
    "line,words",
    [
        ('{"timestamp": 5, "input_length": 10', ["line 2", "not valid JSON"]),
        ('{"timestamp": 5, "output_length": 1, "hash_ids": []}', ["line 2", "'input_length'"]),
        ('{"timestamp": "soon", "input_length": 1, "output_length": 1}', ["line 2", "'timestamp'", "'soon'"]),
        ('{"timestamp": 5, "input_length": -4, "output_length": 1}', ["line 2", "'input_length'", ">= 0"]),
        ('{"timestamp": 5, "input_length": 4, "output_length": 1, "hash_ids": ["a"]}', ["line 2", "hash_ids"]),
    ],
)
def test_mooncake_malformed_lines(tmp_path: Path, line: str, words: list[str]) -> None:
    good = '{"timestamp": 0, "input_length": 7, "output_length": 2, "hash_ids": [1]}'
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([good, line, good]) + "\n")
    with pytest.raises(ConfigError) as err:
        read("mooncake", path)
    assert all(w in str(err.value) for w in words), str(err.value)
    trace = read("mooncake", path, on_error="skip")
    assert len(trace) == 2 and trace.stats.skipped_rows == 1
    assert trace.prefix_offsets.tolist() == [0, 1, 2]


def test_azure_functions_2019_bad_count(tmp_path: Path) -> None:
    lines = (HERE / "invocations_per_function_md.anon.d01.csv").read_bytes().decode().split("\r\n")
    cells = lines[2].split(",")
    cells[4 + 16] = "many"  # minute 17 of the second function
    lines[2] = ",".join(cells)
    (tmp_path / "d.csv").write_bytes("\r\n".join(lines).encode())
    with pytest.raises(ConfigError, match="line 3, column '17': expected a number of invocations, got 'many'"):
        read("azure_functions_2019", tmp_path / "d.csv")


def test_unknown_format_and_option_suggest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown trace format 'azure_llm'; did you mean 'azure_llm_202[34]'"):
        read("azure_llm", DATA_DIR / "azure_llm_2023/AzureLLMInferenceTrace_code.csv")
    with pytest.raises(ConfigError, match="windw_s: unknown key; did you mean 'window_s'"):
        read("azure_llm_2023", "azure_llm_2023/AzureLLMInferenceTrace_code.csv", windw_s=[0, 1])
    with pytest.raises(ConfigError, match=r"file 'nope\.csv' not found"):
        read("azure_llm_2023", "nope.csv")
