"""Every shipped experiment runs, shortened, and reproduces its stored output.

Each ``experiments/*.yaml`` runs with ``workload.num_requests`` cut to 300 (every sweep point,
every seed) through the same code path as ``ldsim run``. Its key figures per run are compared
with ``golden/<name>.json``: a deliberate change to the engine, a policy or a profile changes
them, and is then reviewed and regenerated with ``LDSIM_UPDATE_GOLDEN=1 pytest tests/experiments``
(like SimPy, which diffs each example's output against a stored ``.out``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.results import read_summaries

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
KEYS = (
    "requests",
    "completed",
    "rejected",
    "dropped",
    "failed",
    "throughput_rps",
    "e2e_p50_s",
    "e2e_p99_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "queue_mean_s",
    "utilization",
)


def _figures(out: Path) -> dict[str, dict[str, float | int | None]]:
    return {s["run_id"]: {k: s[k] for k in KEYS} for s in read_summaries(out)}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs_shortened_and_matches_golden(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#"), "an experiment opens with a comment: question, runtime, figures"
    assert "Expected runtime" in text and "Figures" in text
    out = tmp_path / "out"
    assert main(["run", str(path), "workload.num_requests=300", "--out", str(out), "--no-report", "-q"]) == 0
    figures = _figures(out)
    for run_id, fig in figures.items():
        assert fig["requests"] == fig["completed"] + fig["rejected"] + fig["dropped"] + fig["failed"], run_id
        assert fig["failed"] == 0, run_id
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("LDSIM_UPDATE_GOLDEN") or not golden.exists():
        golden.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
        if not os.environ.get("LDSIM_UPDATE_GOLDEN"):
            pytest.fail(f"{golden} did not exist: written now; review it and commit it")
    expected = json.loads(golden.read_text())
    assert sorted(figures) == sorted(expected)
    for run_id, fig in expected.items():
        for key, value in fig.items():
            got = figures[run_id][key]
            if isinstance(value, float) and isinstance(got, float):
                assert math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12), (run_id, key, got, value)
            else:
                assert got == value, (run_id, key, got, value)
