"""The report: figure data against the runs' own summaries and requests, and the HTML page.

Results come from small experiments run through the command line, as a user would.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.cli import main
from simulator.errors import LdsimError
from simulator.report import (
    CDF_MAX_POINTS,
    _cdf_points,
    _percentile_figure,
    figure_data,
    load_results,
    sweep_axis,
    write_report,
)

CNN = {
    "name": "cnn-sweep",
    "seed": 1,
    "cluster": {"profile": "a100-sxm-80gb", "replicas": 2},
    "models": {
        "resnet50": {
            "architecture": "resnet-50",
            "dtype": "fp16",
            "batching": {"policy": "dynamic", "max_batch_size": 16, "max_queue_delay_ms": 2},
        }
    },
    "workload": {
        "rate_rps": 1000,
        "num_requests": 500,
        "mix": [{"model": "resnet50", "slo": {"e2e_ms": 3}}],
    },
    "sweep": {"grid": {"workload.rate_rps": [500, 2000, 6000]}, "seeds": [1, 2]},
}

LLAMA_MIX = {
    "model": "llama",
    "input_tokens": {"dist": "uniform", "low": 50, "high": 200},
    "output_tokens": {"dist": "uniform", "low": 5, "high": 50},
}

DECODER = {
    "name": "decoder-sweep",
    "seed": 1,
    "cluster": {"profile": "a100-sxm-80gb", "replicas": 2},
    "models": {"llama": {"architecture": "llama-2-7b", "batching": {"policy": "continuous"}}},
    "workload": {"rate_rps": 10, "num_requests": 300, "mix": [LLAMA_MIX]},
    "sweep": {"grid": {"workload.rate_rps": [10, 40]}},
}

# the second grid point's prompts exceed Llama-2's 4,096-token context: every request is rejected
UNSERVABLE = {
    **DECODER,
    "name": "unservable",
    "workload": {"rate_rps": 20, "num_requests": 100, "mix": [LLAMA_MIX]},
    "sweep": {"grid": {"workload.mix.0.input_tokens": [100, 5000]}},
}


def _run(doc: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = folder / "results"
    assert main(["run", str(path), "--out", str(out), "--no-report", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(CNN, tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def decoder_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(DECODER, tmp_path_factory.mktemp("decoder"))


@pytest.fixture(scope="module")
def cnn_summary(cnn_out: Path) -> pd.DataFrame:
    return pd.read_csv(cnn_out / "summary.csv")


def _panel(figure, title: str):
    return next(p for p in figure.panels if p.title == title)


def test_results_grouped_by_grid_point_and_ordered_by_load(cnn_out: Path) -> None:
    results = load_results(cnn_out)
    assert len(results.runs) == 6
    assert results.varying_keys == ("workload.rate_rps",)
    assert [p.point["workload.rate_rps"] for p in results.points] == [500, 2000, 6000]
    assert all([r.seed for r in p.runs] == [1, 2] for p in results.points)


def test_percentiles_against_load_are_the_seed_means_of_the_summaries(cnn_out: Path, cnn_summary: pd.DataFrame) -> None:
    figure = figure_data(load_results(cnn_out))["latency_percentiles"]
    assert [p.title for p in figure.panels] == ["e2e latency"]  # no decoder: no TTFT/TPOT
    assert figure.panels[0].x_label == "offered load (requests/s)"
    numbers = cnn_summary.select_dtypes("number")
    by_rate = numbers.groupby("workload.rate_rps").agg(["mean", "min", "max"]).sort_index()
    curves = {c.label: c for c in figure.panels[0].curves}
    assert set(curves) == {"p50", "p90", "p99"}
    for pct in (50, 90, 99):
        curve = curves[f"p{pct}"]
        np.testing.assert_allclose(curve.x, by_rate[("offered_rps", "mean")].to_numpy(), rtol=1e-12)
        col = f"e2e_p{pct}_s"
        np.testing.assert_allclose(curve.y, by_rate[(col, "mean")].to_numpy() * 1e3, rtol=1e-12)
        np.testing.assert_allclose(curve.y_low, by_rate[(col, "min")].to_numpy() * 1e3, rtol=1e-12)
        np.testing.assert_allclose(curve.y_high, by_rate[(col, "max")].to_numpy() * 1e3, rtol=1e-12)
    assert np.all(np.diff(curves["p99"].x) > 0)
    assert np.all(curves["p50"].y <= curves["p90"].y) and np.all(curves["p90"].y <= curves["p99"].y)


def test_throughput_and_goodput_against_load(cnn_out: Path, cnn_summary: pd.DataFrame) -> None:
    figure = figure_data(load_results(cnn_out))["throughput"]
    (panel,) = figure.panels
    assert panel.diagonal and panel.y_label == "completed requests/s"
    by_rate = cnn_summary.groupby("workload.rate_rps").mean(numeric_only=True).sort_index()
    curves = {c.label: c for c in panel.curves}
    np.testing.assert_allclose(curves["throughput"].y, by_rate["throughput_rps"].to_numpy(), rtol=1e-12)
    if (cnn_summary["goodput_rps"] != cnn_summary["throughput_rps"]).any():
        np.testing.assert_allclose(curves["goodput"].y, by_rate["goodput_rps"].to_numpy(), rtol=1e-12)
        assert np.all(curves["goodput"].y <= curves["throughput"].y)
    else:
        assert "goodput" not in curves


def test_cdf_pools_seeds_is_monotone_and_ends_at_one(cnn_out: Path) -> None:
    results = load_results(cnn_out)
    (panel,) = figure_data(results)["latency_cdf"].panels
    assert panel.x_label == "e2e latency (ms)"
    assert [c.label for c in panel.curves] == [p.label for p in results.points]
    for curve, point in zip(panel.curves, results.points, strict=True):
        frames = [pd.read_parquet(r.folder / "requests.parquet", columns=["status", "e2e_s"]) for r in point.runs]
        e2e_ms = np.concatenate([f.loc[f["status"] == "completed", "e2e_s"].to_numpy() for f in frames]) * 1e3
        assert len(curve.x) == min(e2e_ms.size, CDF_MAX_POINTS)
        assert np.all(np.diff(curve.x) >= 0) and np.all(np.diff(curve.y) > 0)
        assert curve.y[-1] == 1.0 and curve.x[-1] == pytest.approx(e2e_ms.max())
        assert curve.x[0] == pytest.approx(e2e_ms.min())
        # each point is an exact empirical CDF value: the fraction of requests at or below it
        for x, y in zip(curve.x[::97], curve.y[::97], strict=True):
            assert np.mean(e2e_ms <= x) >= y - 1e-12


def test_cdf_subsamples_huge_runs_evenly_in_rank() -> None:
    values = np.random.default_rng(0).exponential(size=100_000)
    values[17] = np.nan  # not completed
    x, y = _cdf_points(values)
    assert len(x) == CDF_MAX_POINTS
    assert x[-1] == np.nanmax(values) and x[0] == np.nanmin(values) and y[-1] == 1.0
    # evenly spaced in rank, up to the rounding of ranks to whole requests
    np.testing.assert_allclose(np.diff(y), 1 / (CDF_MAX_POINTS - 1), atol=1.01 / values.size)
    x_empty, y_empty = _cdf_points(np.array([np.nan]))
    assert x_empty.size == 0 and y_empty.size == 0


def test_html_embeds_every_figure_and_one_row_per_run(cnn_out: Path) -> None:
    path = write_report(cnn_out)
    assert path == cnn_out / "report.html"
    page = path.read_text()
    files = sorted((cnn_out / "figures").glob("*.png"))
    assert {f.stem for f in files} == {"latency_cdf", "latency_percentiles", "throughput", "queue_utilisation"}
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(f.read_bytes() for f in files)
    rows = re.findall(r'<tr class="run">(.*?)</tr>', page)
    results = load_results(cnn_out)
    assert len(rows) == len(results.runs) == 6
    for row, run in zip(rows, results.runs, strict=True):
        assert run.run_id in row
        assert f">{run.summary['completed']:,}<" in row
    assert "<h1>cnn-sweep</h1>" in page
    # ResNet-50's convolutions have no measured A100 table: the report must say how they were priced
    assert ("uncalibrated" in page or "partly calibrated" in page) and "conv priced from the measured gemm" in page
    assert "Failed runs" not in page
    leftovers = [p.name for p in (cnn_out, cnn_out / "figures") for p in p.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_and_temporary_runs(cnn_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    shutil.copytree(cnn_out, out, ignore=shutil.ignore_patterns("report.html", "figures"))
    first = sorted(p.name for p in out.iterdir() if p.is_dir())[0]
    shutil.copytree(out / first, out / f".tmp-{first}-123")  # a run being written: not a run
    (out / "rate_rps-9000_seed-1.error.txt").write_text("Traceback (most recent call last):\nValueError: <b>boom</b>\n")
    results = load_results(out)
    assert len(results.runs) == 6
    assert [(f.run_id, f.reason) for f in results.failed] == [("rate_rps-9000_seed-1", "ValueError: <b>boom</b>")]
    page = write_report(out).read_text()
    assert len(re.findall(r'<tr class="run">', page)) == 6
    failed = page.split("Failed runs (1)</h2>", 1)[1]
    assert "<code>rate_rps-9000_seed-1</code>: ValueError: &lt;b&gt;boom&lt;/b&gt;" in failed
    assert "<b>boom" not in page


def test_no_finished_runs_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-results"
    empty.mkdir()
    with pytest.raises(LdsimError, match="empty-results: no finished runs"):
        write_report(empty)
    (empty / ".tmp-seed-1-99").mkdir()  # only a run still being written
    (empty / "seed-1.error.txt").write_text("ConfigError: bad\n")
    with pytest.raises(LdsimError, match=r"no finished runs to report; 1 failed .*ConfigError: bad"):
        write_report(empty)
    assert main(["report", str(empty)]) == 2
    assert "empty-results" in capsys.readouterr().err
    assert not (empty / "report.html").exists()


def test_decoder_figures(decoder_out: Path) -> None:
    results = load_results(decoder_out)
    figures = figure_data(results)
    assert set(figures) == {
        "latency_cdf",
        "latency_percentiles",
        "throughput",
        "queue_utilisation",
        "decoder_kv_batch",
    }
    cdf = figures["latency_cdf"]
    assert [p.x_label for p in cdf.panels] == ["e2e latency (ms)", "TTFT (ms)", "TPOT (ms/token)"]
    for panel in cdf.panels:
        assert len(panel.curves) == 2 and all(c.y[-1] == 1.0 for c in panel.curves)
    ttft, tpot = cdf.panels[1].curves[0], cdf.panels[2].curves[0]
    e2e = cdf.panels[0].curves[0]
    assert ttft.x[-1] <= e2e.x[-1] and tpot.x[-1] < e2e.x[-1]
    percentiles = figures["latency_percentiles"]
    assert [p.title for p in percentiles.panels] == ["e2e latency", "TTFT", "TPOT"]
    p99_tpot = next(c for c in percentiles.panels[2].curves if c.label == "p99")
    np.testing.assert_allclose(p99_tpot.y, [r.summary["tpot_p99_s"] * 1e3 for r in results.runs], rtol=1e-12)

    kv_panels = [p for p in figures["decoder_kv_batch"].panels if p.y_label.startswith("KV cache")]
    batch_panels = [p for p in figures["decoder_kv_batch"].panels if p.y_label.startswith("batch")]
    kv_curves = [c for p in kv_panels for c in p.curves]
    assert len(kv_curves) == len(results.points) == 2
    for curve, point in zip(kv_curves, results.points, strict=True):
        ts = pd.read_parquet(point.runs[0].folder / "timeseries.parquet")
        expected = ts.groupby("time_s")["kv_used_tokens"].mean()
        # the report may leave out a final sample that covers a sliver of time
        assert len(curve.x) in (len(expected), len(expected) - 1)
        np.testing.assert_allclose(curve.y, expected.to_numpy()[: len(curve.x)])
        assert curve.y.max() > 0
    heavy = [c for p in batch_panels for c in p.curves][-1]
    assert np.nanmax(heavy.y) > 1  # continuous batching batches requests under load


def test_run_with_no_completed_request(tmp_path: Path) -> None:
    out = _run(UNSERVABLE, tmp_path)
    results = load_results(out)
    completed = {r.point["workload.mix.0.input_tokens"]: r.summary["completed"] for r in results.runs}
    assert completed[5000] == 0 and completed[100] == 100
    figures = figure_data(results)
    for panel in figures["latency_cdf"].panels:  # only the servable point has a CDF
        assert [c.label for c in panel.curves] == ["input_tokens=100"]
    # the sweep varies the prompt, not the rate: percentiles are drawn against that key
    (e2e,) = [p for p in figures["latency_percentiles"].panels if p.title == "e2e latency"]
    assert e2e.x_label == "workload.mix.0.input_tokens"
    p99 = next(c for c in e2e.curves if c.label == "p99")
    np.testing.assert_array_equal(p99.x, [100, 5000])
    assert np.isfinite(p99.y[0]) and np.isnan(p99.y[1])
    page = write_report(out).read_text()
    rows = re.findall(r'<tr class="run">(.*?)</tr>', page)
    assert len(rows) == 2
    unservable = next(r for r in rows if "input_tokens-5000" in r)
    assert ">0<" in unservable and ">100<" in unservable  # completed 0, rejected 100


def _fake_run(out: Path, run_id: str, point: dict, seed: int, **summary) -> None:
    """A run folder holding only what the sweep figures read (summary and resolved config)."""
    folder = out / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump({"run": {"id": run_id, "seed": seed, "point": point}}))
    for name in ("requests.parquet", "timeseries.parquet"):
        (folder / name).write_bytes(b"")


def test_two_key_grid_draws_one_line_per_other_key(tmp_path: Path) -> None:
    expected = {}
    for rate in (10, 20):
        for batch in (8, 32):
            for seed in (1, 2):
                offered = rate * (1 + 0.01 * seed)
                p99 = rate / batch + seed  # seconds
                expected.setdefault((rate, batch), []).append((offered, p99))
                point = {"workload.rate_rps": rate, "models.m.batching.max_batch_size": batch}
                _fake_run(
                    tmp_path,
                    f"r{rate}_b{batch}_s{seed}",
                    point,
                    seed,
                    offered_rps=offered,
                    throughput_rps=offered,
                    goodput_rps=offered,
                    e2e_p50_s=p99 / 2,
                    e2e_p90_s=p99 / 1.5,
                    e2e_p99_s=p99,
                )
    results = load_results(tmp_path)
    axis = sweep_axis(results)
    assert axis is not None and axis.key is None
    assert axis.series_keys == ("models.m.batching.max_batch_size",)
    figure = _percentile_figure(results, axis)
    assert [p.title for p in figure.panels] == ["p50 e2e latency", "p90 e2e latency", "p99 e2e latency"]
    curves = {c.label: c for c in figure.panels[2].curves}
    assert set(curves) == {"max_batch_size=8", "max_batch_size=32"}
    for batch in (8, 32):
        curve = curves[f"max_batch_size={batch}"]
        runs = [np.array(expected[(rate, batch)]) for rate in (10, 20)]
        np.testing.assert_allclose(curve.x, [r[:, 0].mean() for r in runs])
        np.testing.assert_allclose(curve.y, [r[:, 1].mean() * 1e3 for r in runs])
        np.testing.assert_allclose(curve.y_low, [r[:, 1].min() * 1e3 for r in runs])
        np.testing.assert_allclose(curve.y_high, [r[:, 1].max() * 1e3 for r in runs])


def test_a_non_numeric_sweep_key_is_a_categorical_axis(tmp_path: Path) -> None:
    for i, policy in enumerate(["round_robin", "least_loaded", "power_of_two"]):
        _fake_run(tmp_path, f"policy-{policy}", {"routing.policy": policy}, 1, offered_rps=100.0, e2e_p99_s=0.01 * i)
    results = load_results(tmp_path)
    axis = sweep_axis(results)
    assert axis is not None and axis.key == "routing.policy"
    assert axis.categories == ("least_loaded", "power_of_two", "round_robin")
    (panel,) = _percentile_figure(results, axis).panels
    assert panel.x_label == "routing.policy"
    assert panel.x_ticks == ((0.0, "least_loaded"), (1.0, "power_of_two"), (2.0, "round_robin"))
    p99 = next(c for c in panel.curves if c.label == "p99")
    np.testing.assert_array_equal(p99.x, [0, 1, 2])
    np.testing.assert_allclose(p99.y, [10.0, 20.0, 0.0])
