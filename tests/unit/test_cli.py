"""The ``ldsim`` command line: ``list``, resuming ``run``, a crashing run, ``--jobs`` and ``--help``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import Field

from simulator.hardware import available_profiles
from simulator.policy import WAIT, BatchDecision, Policy, PolicyParams, ReplicaView
from simulator.registry import BATCHING, MODELS, REGISTRIES
from simulator.resources import data_dir
from simulator.results import RESULT_FILES
from tests.conftest import CNN, cli, write_yaml

pytestmark = pytest.mark.usefixtures("isolated")

REPO = Path(__file__).resolve().parents[2]

SWEEP = {**CNN, "sweep": {"grid": {"workload.rate_rps": [300, 600]}, "seeds": [1, 2]}}


def mtimes(out_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out_dir.glob("*/requests.parquet")}


# --------------------------------------------------------------------------------------------
# ldsim list


def test_list_policies_prints_every_name_with_its_target(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(["list", "policies"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    for family, registry in REGISTRIES.items():
        assert f"{family}:" in lines
        for entry in registry.entries():
            assert any(entry.name in ln.split() and entry.target in ln and entry.origin in ln for ln in lines), (
                entry,
                out,
            )
    for name in ("fcfs", "none", "static", "dynamic", "continuous", "round_robin", "random", "least_loaded"):
        assert name in out.split()


def test_list_models_prints_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(["list", "models"], capsys)
    assert status == 0, err
    names = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    expected = {
        "resnet-50",
        "bert-base",
        "bert-large",
        "llama-2-7b",
        "llama-3-8b",
        "llama-2-70b",
        "mixtral-8x7b",
        "dlrm-criteo-kaggle",
    }
    assert expected <= set(names)
    assert set(MODELS.names()) <= set(names)
    assert "failed to load" not in out


def test_list_profiles_and_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(["list", "profiles"], capsys)
    assert status == 0, err
    listed = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
    assert {"a100-sxm-80gb", "h100-sxm-80gb"} <= listed
    assert set(available_profiles()) == listed
    status, out, err = cli(["list", "experiments"], capsys)
    assert status == 0, err
    listed = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
    assert "quickstart" in listed
    assert {p.stem for p in data_dir("experiments").glob("*.yaml")} == listed


def test_list_of_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(["list", "polices"], capsys)
    assert status == 2
    assert "invalid choice" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# resuming


def test_run_twice_does_not_rerun_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", SWEEP)
    out_dir = tmp_path / "out"
    status, out, err = cli(["run", str(path), "--out", str(out_dir), "--no-report"], capsys)
    assert status == 0, err
    first = mtimes(out_dir)
    assert len(first) == 4
    assert "not run again" not in err

    status, out, err = cli(["run", str(path), "--out", str(out_dir), "--no-report"], capsys)
    assert status == 0, err
    assert mtimes(out_dir) == first
    assert f"4 run(s) already finished in {out_dir} were not run again" in err
    for run_id in first:  # the table still shows every run
        assert run_id in out

    # A new value for one key is a new configuration: every run is simulated again.
    status, out, err = cli(
        ["run", str(path), "workload.num_requests=150", "--out", str(out_dir), "--no-report"], capsys
    )
    assert status == 0, err
    again = mtimes(out_dir)
    assert again.keys() == first.keys()
    assert all(again[k] != first[k] for k in first)
    assert "not run again" not in err
    frame = pd.read_parquet(out_dir / "rate_rps-300_seed-1" / "requests.parquet")
    assert len(frame) == 150


def test_a_new_sweep_point_runs_only_that_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", SWEEP)
    out_dir = tmp_path / "out"
    assert cli(["run", str(path), "--out", str(out_dir), "-q", "--no-report"], capsys)[0] == 0
    first = mtimes(out_dir)
    wider = copy.deepcopy(SWEEP)
    wider["sweep"]["grid"]["workload.rate_rps"].append(900)
    write_yaml(path, wider)
    status, _, err = cli(["run", str(path), "--out", str(out_dir), "--no-report"], capsys)
    assert status == 0, err
    now = mtimes(out_dir)
    assert {k: now[k] for k in first} == first
    assert set(now) - set(first) == {"rate_rps-900_seed-1", "rate_rps-900_seed-2"}
    assert "4 run(s) already finished" in err
    assert len(pd.read_csv(out_dir / "summary.csv")) == 6


# --------------------------------------------------------------------------------------------
# a run that crashes inside a sweep


class CrashingBatching(Policy):
    """Serves one request at a time; with ``crash`` set, raises at its first decision."""

    class Params(PolicyParams):
        crash: bool = False
        max_batch_size: int = Field(default=1, ge=1)

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        if self.params.crash:
            raise RuntimeError("deliberate crash inside next_batch")
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=(replica.queue[0],))


def test_a_crashing_run_is_reported_and_the_others_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    BATCHING.register("crashing", CrashingBatching, "test_cli.py")
    doc = copy.deepcopy(CNN)
    doc["models"]["resnet50"]["batching"] = {"policy": "crashing"}
    doc["workload"]["rate_rps"] = 100
    doc["sweep"] = {"grid": {"models.resnet50.batching.crash": [False, True]}, "seeds": [1, 2]}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    out_dir = tmp_path / "out"

    status, _, err = cli(["run", str(path), "--out", str(out_dir), "--no-report"], capsys)
    assert status == 1, err
    failed = ["crash-True_seed-1", "crash-True_seed-2"]
    good = ["crash-False_seed-1", "crash-False_seed-2"]
    for run_id in failed:
        assert f"ldsim: run {run_id} failed: RuntimeError: deliberate crash inside next_batch" in err
        detail = (out_dir / f"{run_id}.error.txt").read_text()
        assert "Traceback" in detail and "deliberate crash" in detail  # a crash keeps its traceback
        assert not (out_dir / run_id).exists()
    for run_id in good:
        assert all((out_dir / run_id / name).is_file() for name in RESULT_FILES), run_id
        assert len(pd.read_parquet(out_dir / run_id / "requests.parquet")) == 200
        assert not (out_dir / f"{run_id}.error.txt").exists()
    assert "Traceback" not in err
    summary = pd.read_csv(out_dir / "summary.csv")
    assert sorted(summary["run_id"]) == good
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "no temporary folders are left"

    # Again: the finished runs are kept, the failed ones are tried again (and fail again).
    before = mtimes(out_dir)
    status, _, err = cli(["run", str(path), "--out", str(out_dir), "--no-report"], capsys)
    assert status == 1
    assert "2 run(s) already finished" in err
    assert mtimes(out_dir) == before


# --------------------------------------------------------------------------------------------
# --jobs


def test_jobs_2_gives_the_same_results_as_jobs_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", SWEEP)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert cli(["run", str(path), "--out", str(serial), "-q", "--no-report", "--jobs", "1"], capsys)[0] == 0
    status, _, err = cli(["run", str(path), "--out", str(parallel), "-q", "--no-report", "--jobs", "2"], capsys)
    assert status == 0, err
    ids = sorted(p.name for p in serial.iterdir() if p.is_dir())
    assert len(ids) == 4
    assert sorted(p.name for p in parallel.iterdir() if p.is_dir()) == ids
    for run_id in ids:
        a = pd.read_parquet(serial / run_id / "requests.parquet")
        b = pd.read_parquet(parallel / run_id / "requests.parquet")
        pd.testing.assert_frame_equal(a, b)
        assert not np.isnan(a["completion_s"]).all()


# --------------------------------------------------------------------------------------------
# argument handling


def test_overrides_may_follow_the_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    out_dir = tmp_path / "out"
    status, _, err = cli(
        ["run", str(path), "--out", str(out_dir), "-q", "--no-report", "workload.num_requests=50"], capsys
    )
    assert status == 0, err
    assert len(pd.read_parquet(out_dir / "seed-3" / "requests.parquet")) == 50


def test_report_of_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(["report", str(tmp_path / "nothing")], capsys)
    assert status == 2
    assert err.startswith("ldsim: error: ") and "no such results folder" in err


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_python_dash_m_simulator_help(tmp_path: Path) -> None:
    proc = run_module(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ldsim")
    for command in ("run", "check", "report", "list"):
        assert command in proc.stdout
    proc = run_module(["run", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--jobs" in proc.stdout and "--out" in proc.stdout
    proc = run_module(["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ldsim ")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_module([], tmp_path)
    assert proc.returncode == 2
    assert "usage: ldsim" in proc.stderr and "Traceback" not in proc.stderr
