"""``ldsim workload describe``: figures printed, plots drawn, errors reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LLM, write_yaml
from workloads.describe import describe, guess_format, main
from workloads.traces import DATA_DIR

HERE = Path(__file__).resolve().parent / "data"


def test_describe_a_trace_prints_figures_and_draws_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = describe(str(HERE / "BurstGPT_sample.csv"), tmp_path / "plots", fit=True)
    out = capsys.readouterr().out
    assert summary.requests == 40 and summary.failed == 3
    for words in ("requests", "mean rate", "CV of gaps", "input_tokens", "p99", "model", "failed", "fit: gamma"):
        assert words in out, words
    assert {p.name for p in summary.figures} == {"arrival_rate.png", "sizes.png"}
    assert all(p.stat().st_size > 1000 for p in summary.figures)
    assert summary.sizes["input_tokens"]["total"] > 0


def test_describe_an_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "llm.yaml", LLM)
    summary = describe(str(path), overrides=["workload.num_requests=50"])
    assert summary.requests == 50
    assert "output_tokens" in summary.sizes and summary.labels["model"] == {"llama": 50}
    assert "llm.yaml" in capsys.readouterr().out


def test_main_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = str(DATA_DIR / "azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
    assert main([conv, "--option", "window_s=[0, 600]", "--bin-s", "60"]) == 0
    assert "in 60 s bins" in capsys.readouterr().out
    (tmp_path / "mystery.csv").write_text("a,b\n1,2\n")
    assert main([str(tmp_path / "mystery.csv")]) == 2
    assert "give --format" in capsys.readouterr().err
    assert main([conv, "--format", "mooncake"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_guess_format() -> None:
    assert guess_format("x/AzureLLMInferenceTrace_code_1week.csv") == "azure_llm_2023"
    assert guess_format("invocations_per_function_md.anon.d07.csv") == "azure_functions_2019"
    assert guess_format("BurstGPT_without_fails_2.csv") == "burstgpt"
    assert guess_format("toolagent_trace.jsonl") == "mooncake"
    assert guess_format("other.csv") is None
