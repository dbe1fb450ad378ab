"""Workloads from experiment YAML: request mixes, own arrival processes, Zipf popularity,
trace workloads, and the checks that name a mistake's place."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from simulator.errors import ConfigError
from simulator.experiment import resolve
from simulator.registry import TRACES
from tests.conftest import CNN, LLM, make_runs, run_doc

HERE = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
CODE = "azure_llm_2023/AzureLLMInferenceTrace_code.csv"


def table(doc: dict[str, Any], seed: int = 5):
    (run,) = make_runs(doc)
    resolved = resolve(run)
    return resolved, resolved.generate_workload(np.random.SeedSequence(seed))


def child(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(i + 1)[i])


def with_workload(doc: dict[str, Any], **workload: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["workload"] = {**out["workload"], **workload}
    return {**out, "workload": {k: v for k, v in out["workload"].items() if v is not None}}


def three_resnets() -> dict[str, Any]:
    doc = copy.deepcopy(CNN)
    doc["models"] = {name: {"architecture": "resnet-50"} for name in ("a", "b", "c")}
    return doc


# --------------------------------------------------------------------------------------------
# the default generation draws what it always drew


def test_default_poisson_and_sizes_draw_the_same_numbers() -> None:
    _, t = table(CNN)
    assert np.array_equal(t.arrival_s, np.cumsum(child(5, 0).exponential(1 / 500, 200)))
    doc = with_workload(LLM, num_requests=300)
    doc["workload"]["mix"][0]["input_tokens"] = {"dist": "lognormal", "median": 100, "sigma": 1.0, "max": 4000}
    _, t = table(doc)
    expected = np.clip(np.rint(child(5, 2).lognormal(np.log(100), 1.0, 300)), 1, 4000).astype(np.int64)
    assert np.array_equal(t.input_tokens, expected)


# --------------------------------------------------------------------------------------------
# classes with their own arrival processes, merged by time


def test_classes_with_own_arrivals_are_merged() -> None:
    doc = three_resnets()
    doc["workload"] = {
        "duration_s": 200.0,
        "mix": [
            {"model": "a", "rate_rps": 100},
            {"model": "b", "rate_rps": 300, "arrival": {"process": "gamma", "cv": 3}},
        ],
    }
    resolved, t = table(doc)
    assert np.all(np.diff(t.arrival_s) >= 0) and t.arrival_s.max() < 200
    for code, rate, cv in ((0, 100, 1.0), (1, 300, 3.0)):
        times = t.arrival_s[t.model == code]
        n = len(times)
        se = math.sqrt(cv**2 * rate * 200)  # counts of a renewal process: Var N ~ cv^2 E[N]
        assert abs(n - rate * 200) < 4 * se, (code, n)
        gaps = np.diff(times)
        assert abs(gaps.std() / gaps.mean() - cv) < 0.1 * cv, code
    assert resolved.classes[1].rate_rps == 300


def test_shared_and_own_arrivals_together_and_the_count_cap() -> None:
    doc = three_resnets()
    doc["workload"] = {
        "rate_rps": 50,
        "num_requests": 20_000,
        "mix": [{"model": "a"}, {"model": "c", "weight": 3}, {"model": "b", "rate_rps": 200}],
    }
    _, t = table(doc)
    assert len(t) == 20_000 and np.all(np.diff(t.arrival_s) >= 0)
    counts = np.bincount(t.model, minlength=3)
    span = t.arrival_s[-1]
    assert abs(counts[1] / span - 200) < 4 * math.sqrt(200 / span)
    assert abs(counts[2] / counts[0] - 3) < 0.3


# --------------------------------------------------------------------------------------------
# many models with Zipf popularity


@pytest.mark.parametrize("s", [0.8, 1.5])
def test_zipf_popularity_over_all_deployed_models(s: float) -> None:
    doc = three_resnets()
    doc["workload"] = {"rate_rps": 1000, "num_requests": 30_000, "mix": [{"models": "*", "popularity": {"s": s}}]}
    resolved, t = table(doc)
    shares = np.array([1, 2**-s, 3**-s])
    shares /= shares.sum()
    assert [c.model for c in resolved.classes] == ["a", "b", "c"]
    assert np.allclose([c.weight for c in resolved.classes], shares)
    counts = np.bincount(t.model, minlength=3)
    assert stats.chisquare(counts, shares * len(t)).pvalue > 1e-3


def test_models_list_with_uniform_popularity_and_errors() -> None:
    doc = three_resnets()
    doc["workload"]["mix"] = [{"models": ["c", "a"], "popularity": {"dist": "uniform"}}]
    resolved, _ = table(doc)
    assert [(c.model, c.weight) for c in resolved.classes] == [("c", 0.5), ("a", 0.5)]
    doc["workload"]["mix"] = [{"models": ["c", "z"]}]
    with pytest.raises(ConfigError, match=r"workload.mix.0.models: 'z' is not a deployed model"):
        table(doc)


# --------------------------------------------------------------------------------------------
# trace workloads


def llm_trace(trace: dict[str, Any], **workload: Any) -> dict[str, Any]:
    doc = copy.deepcopy(LLM)
    doc["workload"] = {"trace": trace, "mix": [{"model": "llama"}], **workload}
    return doc


def test_trace_workload_takes_arrivals_and_sizes_from_the_trace() -> None:
    resolved, t = table(llm_trace({"format": "azure_llm_2023", "file": CODE, "max_requests": 500}))
    trace = resolved.trace
    assert len(t) == 500
    assert np.array_equal(t.arrival_s, trace.arrival_s)
    assert np.array_equal(t.input_tokens, np.maximum(trace.input_tokens, 1))
    assert np.array_equal(t.output_tokens, np.maximum(trace.output_tokens, 1))
    assert any("500 rows read" in n or "rows read" in n for n in resolved.notes)


def test_trace_rate_rps_rescales_and_limits_cut() -> None:
    _, t = table(llm_trace({"format": "azure_llm_2023", "file": CODE}, rate_rps=20.0, num_requests=3000))
    assert len(t) == 3000
    _, whole = table(llm_trace({"format": "azure_llm_2023", "file": CODE}, rate_rps=20.0))
    assert math.isclose((len(whole) - 1) / (whole.arrival_s[-1] - whole.arrival_s[0]), 20.0)
    _, cut = table(llm_trace({"format": "azure_llm_2023", "file": CODE}, duration_s=60.0))
    assert cut.arrival_s.max() < 60


def test_trace_rows_split_by_match_and_weight() -> None:
    doc = copy.deepcopy(LLM)
    doc["models"]["big"] = {"architecture": "llama-2-7b", "batching": {"policy": "continuous"}}
    doc["workload"] = {
        "trace": {"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv"), "failed": "drop"},
        "mix": [
            {"model": "big", "match": {"model": "GPT-4"}, "tenant": "gpt4", "slo": {"ttft_ms": 500}},
            {"model": "llama", "tenant": "chat", "output_tokens": 7},
        ],
    }
    resolved, t = table(doc)
    trace = resolved.trace
    gpt4 = trace.labels["model"].mask(["GPT-4"])
    assert len(t) == len(trace) == 37
    assert np.array_equal(t.model == 1, gpt4)  # deployments: llama (0), big (1)
    assert np.array_equal(t.input_tokens, trace.input_tokens)
    assert np.all(t.output_tokens[~gpt4] == 7)
    assert np.array_equal(t.output_tokens[gpt4], trace.output_tokens[gpt4])
    assert np.all(t.ttft_slo_s[gpt4] == 0.5) and np.all(np.isnan(t.ttft_slo_s[~gpt4]))
    assert t.tenant_names == ["gpt4", "chat"]


def test_unmatched_trace_rows_are_left_out_and_noted() -> None:
    doc = llm_trace({"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")})
    doc["workload"]["mix"] = [{"model": "llama", "match": {"model": ["ChatGPT"], "log_type": "Conversation log"}}]
    resolved, t = table(doc)
    want = resolved.trace.labels["model"].mask(["ChatGPT"]) & resolved.trace.labels["log_type"].mask(
        ["Conversation log"]
    )
    assert len(t) == want.sum() < len(resolved.trace)
    assert any("match no mix entry" in n for n in resolved.notes)


@pytest.mark.skipif(not (SHARED / "mooncake" / "conversation_trace.jsonl").exists(), reason="no shared Mooncake trace")
def test_mooncake_prefix_blocks_reach_the_request_table() -> None:
    doc = llm_trace(
        {"format": "mooncake", "file": str(SHARED / "mooncake/conversation_trace.jsonl"), "max_requests": 50}
    )
    resolved, t = table(doc)
    assert t.prefix_ids is not None and len(t.prefix_offsets) == 51
    assert np.array_equal(
        t.prefix_of(3), resolved.trace.prefix_ids[resolved.trace.prefix_offsets[3] : resolved.trace.prefix_offsets[4]]
    )


def test_lengths_from_a_trace_format() -> None:
    doc = copy.deepcopy(LLM)
    doc["workload"]["mix"] = [
        {"model": "llama", "lengths": {"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")}}
    ]
    _, t = table(doc)
    assert set(t.input_tokens.tolist()) <= set(
        np.loadtxt(HERE / "BurstGPT_sample.csv", delimiter=",", skiprows=1, usecols=2, dtype=int).tolist()
    )


# --------------------------------------------------------------------------------------------
# running them


def test_a_trace_workload_and_a_replay_run_end_to_end() -> None:
    _, _, frame = run_doc(llm_trace({"format": "azure_llm_2023", "file": CODE, "max_requests": 40}, rate_rps=2.0))
    assert len(frame) == 40 and (frame["status"] != "pending").all()
    doc = copy.deepcopy(LLM)
    doc["workload"]["arrival"] = {"process": "replay", "trace": {"format": "azure_llm_2023", "file": CODE}}
    _, _, frame = run_doc(doc)
    assert len(frame) == 20


# --------------------------------------------------------------------------------------------
# mistakes name their place


ERRORS = {
    "trace-format": (
        llm_trace({"format": "azure_llm_2032", "file": CODE}),
        ["workload.trace.format", "unknown trace format 'azure_llm_2032'", "did you mean"],
    ),
    "trace-option": (
        llm_trace({"format": "azure_llm_2023", "file": CODE, "max_request": 5}),
        ["workload.trace.max_request: unknown key", "did you mean 'max_requests'"],
    ),
    "trace-and-arrival": (
        {
            **llm_trace({"format": "azure_llm_2023", "file": CODE}),
            "workload": {
                **llm_trace({"format": "azure_llm_2023", "file": CODE})["workload"],
                "arrival": {"process": "poisson"},
            },
        },
        ["either 'trace'", "or 'arrival'"],
    ),
    "rate-and-scale": (
        llm_trace({"format": "azure_llm_2023", "file": CODE, "rate_scale": 2}, rate_rps=3.0),
        ["workload.rate_rps (3) and workload.trace.rate_scale (2)"],
    ),
    "match-without-trace": (
        with_workload(LLM, mix=[{"model": "llama", "input_tokens": 5, "output_tokens": 5, "match": {"model": "x"}}]),
        ["mix.0.match", "give workload.trace"],
    ),
    "match-unknown-label": (
        {
            **llm_trace({"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")}),
            "workload": {
                "trace": {"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")},
                "mix": [{"model": "llama", "match": {"modle": "GPT-4"}}],
            },
        },
        ["workload.mix.0.match.modle", "no label 'modle'", "did you mean 'model'"],
    ),
    "match-unknown-value": (
        {
            **llm_trace({"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")}),
            "workload": {
                "trace": {"format": "burstgpt", "file": str(HERE / "BurstGPT_sample.csv")},
                "mix": [{"model": "llama", "match": {"model": "GPT4"}}],
            },
        },
        ["workload.mix.0.match.model", "no request of the trace has model 'GPT4'", "did you mean 'GPT-4'"],
    ),
    "trace-without-output": (
        {
            **llm_trace(
                {
                    "format": "azure_functions_2021",
                    "file": str(HERE / "AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt"),
                }
            )
        },
        ["workload.mix.0", "is a decoder: give input_tokens and output_tokens"],
    ),
    "missing-rate": (
        {**copy.deepcopy(LLM), "workload": {"num_requests": 5, "mix": LLM["workload"]["mix"]}},
        ["workload.rate_rps: required by the arrival process 'poisson'"],
    ),
    "entry-arrival-without-rate": (
        with_workload(LLM, mix=[{**LLM["workload"]["mix"][0], "arrival": {"process": "gamma", "cv": 2}}]),
        ["mix.0", "needs the entry's rate_rps"],
    ),
    "unknown-process": (
        with_workload(LLM, arrival={"process": "poison"}),
        ["workload.arrival.process", "did you mean 'poisson'"],
    ),
    "process-param": (
        with_workload(LLM, arrival={"process": "mmpp", "rates_rps": [1, 2], "mean_sojourn": [1, 1]}),
        ["workload.arrival.mean_sojourn: unknown key", "did you mean 'mean_sojourn_s'"],
    ),
    "popularity-single": (
        with_workload(LLM, mix=[{**LLM["workload"]["mix"][0], "popularity": {"s": 1}}]),
        ["'popularity' splits the weight of an entry with several 'models'"],
    ),
    "lengths-format-and-columns": (
        with_workload(
            LLM, mix=[{"model": "llama", "lengths": {"format": "mooncake", "file": "x", "input_column": "a"}}]
        ),
        ["has its own columns"],
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_workload_mistakes_name_their_place(case: str) -> None:
    doc, fragments = ERRORS[case]
    with pytest.raises(ConfigError) as err:
        table(doc)
    msg = str(err.value)
    assert "test.yaml" in msg, msg
    assert all(f in msg for f in fragments), msg


def test_closed_loop_plan() -> None:
    doc = with_workload(
        LLM, arrival={"process": "closed_loop", "users": 4, "think_time": {"mean_s": 1.0}}, rate_rps=None
    )
    resolved, t = table(doc)
    assert resolved.closed_loop and len(t) == 20 and np.isnan(t.arrival_s).all()
    clients = resolved.closed_loop_clients(np.random.SeedSequence(5))
    users, _ = clients.first_arrivals()
    assert len(users) == 4 and clients.in_flight == 4
    no_budget = with_workload(doc, num_requests=None, duration_s=10.0)
    with pytest.raises(ConfigError, match=r"workload\.num_requests: closed-loop clients need a budget"):
        table(no_budget)


def test_the_rate_of_the_part_that_runs_is_rate_rps() -> None:
    _, t = table(llm_trace({"format": "azure_llm_2023", "file": CODE}, rate_rps=5.0, num_requests=700))
    assert math.isclose((len(t) - 1) / (t.arrival_s[-1] - t.arrival_s[0]), 5.0)
    doc = with_workload(LLM, num_requests=700, rate_rps=5.0)
    doc["workload"]["arrival"] = {"process": "replay", "trace": {"format": "azure_llm_2023", "file": CODE}}
    _, t = table(doc)
    assert len(t) == 700 and math.isclose((len(t) - 1) / (t.arrival_s[-1] - t.arrival_s[0]), 5.0)


PLUGIN = '''
import numpy as np
from simulator.policy import PolicyParams
from workloads.traces import TraceChunk, TraceParams


class Ticks:
    """Arrivals every step_s seconds (a general process)."""

    class Params(PolicyParams):
        step_s: float

    def __init__(self, params):
        self.params = params

    def stream_s(self, rate_rps, rng):
        t = 0.0
        while True:
            times = t + self.params.step_s * np.arange(1, 1001)
            t = float(times[-1])
            yield times


class Lines:
    """A trace of one arrival time (s) a line."""

    origin_ns = 0

    class Params(TraceParams):
        pass

    def __init__(self, params):
        self.params = params

    def chunks(self, path, errors):
        values = np.loadtxt(path, ndmin=1)
        n = len(values)
        ones = np.ones(n, dtype=np.int64)
        yield TraceChunk(time_ns=(values * 1e9).astype(np.int64), input_tokens=5 * ones, output_tokens=3 * ones)
'''


def test_plug_in_arrival_process_and_trace_reader(
    tmp_path: Path, isolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TRACES, "_loaded", dict(TRACES._loaded))  # `isolated` predates TRACES
    (tmp_path / "lab_workloads.py").write_text(PLUGIN)
    (tmp_path / "times.txt").write_text("0.5\n1.5\n2.0\n")
    doc = with_workload(LLM, arrival={"process": "lab_workloads:Ticks", "step_s": 0.25})
    (run,) = make_runs(doc, where=str(tmp_path / "exp.yaml"))
    t = resolve(run).generate_workload(np.random.SeedSequence(1))
    assert np.allclose(t.arrival_s, 0.25 * np.arange(1, 21))
    doc = llm_trace({"format": "lab_workloads:Lines", "file": "times.txt"})
    (run,) = make_runs(doc, where=str(tmp_path / "exp.yaml"))
    t = resolve(run).generate_workload(np.random.SeedSequence(1))
    assert t.arrival_s.tolist() == [0.5, 1.5, 2.0] and t.input_tokens.tolist() == [5, 5, 5]


def test_a_trace_run_writes_what_it_read_into_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.conftest import cli, write_yaml

    doc = llm_trace({"format": "azure_llm_2023", "file": CODE}, num_requests=30)
    exp = write_yaml(tmp_path / "trace.yaml", doc)
    status, _, err = cli(["run", str(exp), "--out", str(tmp_path / "out")], capsys)
    assert status == 0, err
    (summary,) = (tmp_path / "out").rglob("summary.json")
    notes = json.loads(summary.read_text())["workload_notes"]
    assert any("AzureLLMInferenceTrace_code.csv" in n and "rows" in n for n in notes), notes
