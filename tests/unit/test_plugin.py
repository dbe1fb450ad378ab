"""A policy plug-in end to end: ``tests/plugins/shortest_first.py`` named from a YAML file.

The plug-in is copied beside an experiment in a temporary folder, as a researcher would keep
it beside their own YAML, and named as ``shortest_first:ShortestFirst`` (scheduling) and
``shortest_first:fewest_waiting`` (routing). The tests check that the served order follows
the policy's key, that its ``Params`` are validated like a built-in's, that it passes the
conformance check, and that a name registered from an installed distribution's entry point
is listed and resolves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from simulator.registry import ARRIVALS, BATCHING, MODELS, ROUTING, SCHEDULING, SIZES
from tests.conftest import cli, write_yaml

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "tests" / "plugins" / "shortest_first.py"
MODULE = "shortest_first"


def experiment(scheduling: str = f"{MODULE}:ShortestFirst", replicas: int = 1, **params: Any) -> dict[str, Any]:
    """BERT-base without batching, overloaded (arrivals ~5x the service rate), so a queue forms
    and the scheduling policy decides the order."""
    return {
        "name": "sjf",
        "seed": 7,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": replicas},
        "models": {
            "bert": {
                "architecture": "bert-base",
                "batching": {"policy": "none"},
                "scheduling": {"policy": scheduling, **params},
            }
        },
        "workload": {
            "rate_rps": 5000,
            "num_requests": 300,
            "mix": [{"model": "bert", "input_tokens": {"dist": "uniform", "low": 8, "high": 512}}],
        },
    }


@pytest.fixture(autouse=True)
def _fresh_plugin(isolated: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test imports the plug-in afresh and leaves no trace: sys.path, registries, modules."""
    for registry in (ARRIVALS, BATCHING, MODELS, ROUTING, SCHEDULING, SIZES):
        monkeypatch.setattr(registry, "_scanned", False)
    sys.modules.pop(MODULE, None)
    yield
    sys.modules.pop(MODULE, None)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A researcher's folder: the plug-in beside where their experiment YAML will go."""
    folder = tmp_path / "lab"
    folder.mkdir()
    shutil.copy(PLUGIN, folder / PLUGIN.name)
    return folder


def order_violations(frame: pd.DataFrame, key: str) -> tuple[int, int]:
    """Pairs (served, waiting) where a request still waiting when another started had a smaller
    ``key`` (or an equal key and an earlier arrival); and the number of such pairs checked.

    On one replica without batching, the request that starts at ``t`` was chosen among those
    that had arrived before ``t`` and start after it.
    """
    done = frame[frame["status"] == "completed"].sort_values("start_s")
    start = done["start_s"].to_numpy()
    arrival = done["arrival_s"].to_numpy()
    value = done[key].to_numpy()
    violations = checked = 0
    for i in range(len(done)):
        waiting = (arrival < start[i]) & (start > start[i])
        checked += int(waiting.sum())
        better = (value[waiting] < value[i]) | ((value[waiting] == value[i]) & (arrival[waiting] < arrival[i]))
        violations += int(better.sum())
    return violations, checked


def run_in_process(folder: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> pd.DataFrame:
    path = write_yaml(folder / "exp.yaml", doc)
    out_dir = folder / "out"
    status, _, err = cli(["run", str(path), "--out", str(out_dir), "-q", "--no-report"], capsys)
    assert status == 0, err
    (run_dir,) = [p for p in out_dir.iterdir() if p.is_dir()]
    return pd.read_parquet(run_dir / "requests.parquet")


# --------------------------------------------------------------------------------------------
# the served order follows the key


def test_served_order_follows_input_tokens(
    lab: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Put the folder on sys.path explicitly: whether the CLI does that by itself is the next test.
    monkeypatch.syspath_prepend(str(lab))
    frame = run_in_process(lab, experiment(), capsys)
    assert (frame["status"] == "completed").all()
    assert frame["replica"].nunique() == 1
    violations, checked = order_violations(frame, "input_tokens")
    assert checked > 5_000, "the experiment must be overloaded for the order to matter"
    assert violations == 0
    # the same workload first come, first served breaks this order many times
    fcfs = run_in_process(lab, experiment(scheduling="fcfs"), capsys)
    assert order_violations(fcfs, "input_tokens")[0] > checked // 10
    assert order_violations(fcfs, "arrival_s")[0] == 0
    assert frame["queue_s"].mean() < fcfs["queue_s"].mean()  # shortest first: a shorter mean wait


def test_aging_parameter_changes_the_key(
    lab: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(lab))
    rate = 1e12  # tokens per second of age: dwarfs any prompt length, so the order is by arrival
    frame = run_in_process(lab, experiment(aging_tokens_per_s=rate), capsys)
    frame["aged_key"] = frame["input_tokens"] + rate * frame["arrival_s"]
    assert order_violations(frame, "aged_key")[0] == 0
    assert order_violations(frame, "arrival_s")[0] == 0
    config = yaml.safe_load((lab / "out" / "seed-7" / "config.resolved.yaml").read_text())
    assert config["experiment"]["models"]["bert"]["scheduling"] == {
        "policy": f"{MODULE}:ShortestFirst",
        "aging_tokens_per_s": rate,
    }


def test_cli_finds_a_plugin_beside_the_yaml(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", str(lab), str(elsewhere))]
    path = write_yaml(lab / "exp.yaml", experiment())
    status, _, err = cli(["check", str(path)], capsys)
    assert status == 0, err
    frame = run_in_process(lab, experiment(), capsys)
    assert order_violations(frame, "input_tokens")[0] == 0


def test_cli_finds_a_plugin_in_the_cwd(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    monkeypatch.chdir(lab)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", str(lab), str(experiments))]
    path = write_yaml(experiments / "exp.yaml", experiment())
    status, _, err = cli(["check", str(path)], capsys)
    assert status == 0, err


def test_python_dash_m_simulator_with_the_plugin_beside_the_yaml(lab: Path) -> None:
    """What a researcher types in their folder (Python puts the cwd on sys.path for ``-m``)."""
    write_yaml(lab / "exp.yaml", experiment())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "run", "exp.yaml", "--out", "out", "-q", "--no-report"],
        cwd=lab,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_parquet(lab / "out" / "seed-7" / "requests.parquet")
    assert order_violations(frame, "input_tokens")[0] == 0


# --------------------------------------------------------------------------------------------
# the routing function and parameter validation


def test_routing_function_plugin(
    lab: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(lab))
    doc = experiment(replicas=3)
    doc["routing"] = {"policy": f"{MODULE}:fewest_waiting"}
    frame = run_in_process(lab, doc, capsys)
    assert (frame["status"] == "completed").all()
    counts = frame["replica"].value_counts()
    assert len(counts) == 3
    assert counts.max() - counts.min() < 0.2 * len(frame)  # equal replicas share an overload evenly
    config = yaml.safe_load((lab / "out" / "seed-7" / "config.resolved.yaml").read_text())
    assert config["experiment"]["routing"] == {"policy": f"{MODULE}:fewest_waiting"}


def test_plugin_params_are_validated(
    lab: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(lab))
    path = write_yaml(lab / "exp.yaml", experiment(aging_tokens_per_sec=1.0))
    status, _, err = cli(["check", str(path)], capsys)
    assert status == 2
    assert "models.bert.scheduling.aging_tokens_per_sec: unknown key" in err
    assert "did you mean 'aging_tokens_per_s'?" in err
    path = write_yaml(lab / "exp.yaml", experiment(aging_tokens_per_s=-1))
    status, _, err = cli(["check", str(path)], capsys)
    assert status == 2
    assert "models.bert.scheduling.aging_tokens_per_s" in err and "greater than or equal to 0" in err
    doc = experiment()
    doc["routing"] = {"policy": f"{MODULE}:fewest_waiting", "power": 2}
    status, _, err = cli(["check", str(write_yaml(lab / "exp.yaml", doc))], capsys)
    assert status == 2
    assert "routing" in err and "takes no parameters" in err and "power" in err


def test_plugin_passes_the_conformance_check(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(lab))
    from simulator.testing import check_policy

    check_policy("scheduling", f"{MODULE}:ShortestFirst", {"aging_tokens_per_s": 10.0}, cases=100, models=())
    check_policy("routing", f"{MODULE}:fewest_waiting", cases=100, models=())


def test_plugin_is_documented() -> None:
    sys.path.insert(0, str(PLUGIN.parent))
    import shortest_first

    assert shortest_first.__doc__
    for obj in (shortest_first.ShortestFirst, shortest_first.ShortestFirst.Params, shortest_first.fewest_waiting):
        assert obj.__doc__ and len(obj.__doc__.split()) > 5, obj
    assert shortest_first.ShortestFirst.key.__doc__
    assert shortest_first.ShortestFirst.Params().aging_tokens_per_s == 0.0


# --------------------------------------------------------------------------------------------
# registration by name: an installed distribution's entry point


def test_registered_name_is_listed_and_resolves(
    lab: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(lab))
    origin = "entry point (my-lab-plugins)"
    SCHEDULING.register("shortest_first", f"{MODULE}:ShortestFirst", origin)
    assert MODULE not in sys.modules, "registering by string must not import the plug-in"
    status, out, err = cli(["list", "policies"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    (line,) = [ln for ln in lines if ln.split()[:1] == ["shortest_first"]]
    assert f"{MODULE}:ShortestFirst" in line and origin in line
    assert lines.index(line) > lines.index("scheduling:")
    assert lines.index(line) < lines.index("routing:"), "listed under its own family"

    frame = run_in_process(lab, experiment(scheduling="shortest_first"), capsys)
    assert order_violations(frame, "input_tokens")[0] == 0

    path = write_yaml(lab / "exp.yaml", experiment(scheduling="shortest_frist"))
    status, _, err = cli(["check", str(path)], capsys)
    assert status == 2
    assert "did you mean 'shortest_first'?" in err


def test_entry_point_of_an_installed_distribution(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``*.dist-info`` folder on sys.path is what ``pip install my-lab-plugins`` leaves."""
    site = tmp_path / "site"
    info = site / "my_lab_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lab-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[ldsim.scheduling]\nsjf_prompt = {MODULE}:ShortestFirst\n\n"
        f"[ldsim.routing]\nfewest = {MODULE}:fewest_waiting\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(lab))
    status, out, err = cli(["list", "policies"], capsys)
    assert status == 0, err
    (line,) = [ln for ln in out.splitlines() if ln.split()[:1] == ["sjf_prompt"]]
    assert f"{MODULE}:ShortestFirst" in line and "entry point (my-lab-plugins)" in line
    assert any(ln.split()[:1] == ["fewest"] for ln in out.splitlines())

    doc = experiment(scheduling="sjf_prompt", replicas=2)
    doc["routing"] = {"policy": "fewest"}
    frame = run_in_process(lab, doc, capsys)
    assert frame["replica"].nunique() == 2
    for _, per_replica in frame.groupby("replica"):
        assert order_violations(per_replica, "input_tokens")[0] == 0
    assert np.isfinite(frame["e2e_s"]).all()
