"""Loading experiments: overrides, sweep expansion, run ids, immutability and defaults."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import yaml

from simulator.cli import main
from simulator.config import apply_overrides, expand, load_experiment
from simulator.experiment import resolve
from tests.conftest import CNN, LLM, write_yaml

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")


# --------------------------------------------------------------------------------------------
# overrides


@pytest.mark.parametrize(
    ("override", "key_path", "expected"),
    [
        ("workload.rate_rps=40", ("workload", "rate_rps"), 40),
        ("workload.rate_rps=2.5", ("workload", "rate_rps"), 2.5),
        ("workload.rate_rps=1.5e+3", ("workload", "rate_rps"), 1500.0),
        ("seed=-4", ("seed",), -4),
        ("cluster.profile=h100-sxm-80gb", ("cluster", "profile"), "h100-sxm-80gb"),
        ("description='123'", ("description",), "123"),
        ("description=two words", ("description",), "two words"),
        ("description=", ("description",), ""),
        (
            "models.resnet50.batching.preferred_batch_sizes=[2, 4]",
            ("models", "resnet50", "batching", "preferred_batch_sizes"),
            [2, 4],
        ),
        ("engine.coalesce_decode=false", ("engine", "coalesce_decode"), False),
        ("cluster.nodes=null", ("cluster", "nodes"), None),
        ("routing={policy: random}", ("routing",), {"policy": "random"}),
        ("workload.mix.0.weight=2", ("workload", "mix", 0, "weight"), 2),
    ],
)
def test_override_values_are_parsed_as_yaml(override: str, key_path: tuple[Any, ...], expected: Any) -> None:
    doc = apply_overrides(CNN, [override], "exp.yaml")
    node: Any = doc
    for part in key_path:
        node = node[part]
    assert node == expected
    assert type(node) is type(expected)
    assert CNN["workload"]["rate_rps"] == 500, "the original document must not change"


def test_scientific_notation_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CNN).replace("rate_rps: 500", "rate_rps: 5e2"), encoding="utf-8")
    (run,) = load_experiment(path)
    assert run.spec.workload.rate_rps == 500.0
    (run,) = load_experiment(path, ["workload.rate_rps=1.5e3"])
    assert run.spec.workload.rate_rps == 1500.0


def test_overrides_reach_the_validated_spec(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    overrides = [
        "workload.rate_rps=40",
        "models.resnet50.batching.preferred_batch_sizes=[2, 4]",
        "description=a test",
        "workload.mix.0.weight=2.5",
        "cluster.replicas=3",
    ]
    (run,) = load_experiment(path, overrides)
    spec = run.spec
    assert spec.workload.rate_rps == 40.0
    assert spec.models["resnet50"].batching.params["preferred_batch_sizes"] == [2, 4]
    assert spec.description == "a test"
    assert spec.workload.mix[0].weight == 2.5
    assert spec.cluster.replicas == 3


def test_override_of_a_list_index_and_a_new_nested_key(tmp_path: Path) -> None:
    doc = copy.deepcopy(CNN)
    doc["workload"]["mix"].append({"model": "resnet50", "input_samples": 4, "tenant": "b"})
    path = write_yaml(tmp_path / "exp.yaml", doc)
    (run,) = load_experiment(path, ["workload.mix.1.weight=3", "workload.mix.-2.slo.e2e_ms=25"])
    mix = run.spec.workload.mix
    assert [m.weight for m in mix] == [1.0, 3.0]
    assert mix[0].slo.e2e_ms == 25.0
    assert mix[1].slo.e2e_ms is None


def test_override_of_a_grid_key_replaces_that_sweep_axis(tmp_path: Path) -> None:
    doc = {
        **CNN,
        "sweep": {"grid": {"workload.rate_rps": [100, 200, 300], "cluster.replicas": [1, 2]}, "seeds": [1, 2]},
    }
    path = write_yaml(tmp_path / "exp.yaml", doc)
    assert len(load_experiment(path)) == 3 * 2 * 2
    runs = load_experiment(path, ["workload.rate_rps=50"])
    assert len(runs) == 2 * 2
    assert {r.spec.workload.rate_rps for r in runs} == {50.0}
    assert all(dict(r.point).keys() == {"cluster.replicas"} for r in runs)
    assert all("rate_rps" not in r.run_id for r in runs)


def test_override_of_the_seed_replaces_the_sweep_seeds(tmp_path: Path) -> None:
    doc = {**CNN, "sweep": {"grid": {"workload.rate_rps": [100, 200]}, "seeds": [1, 2, 3]}}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    runs = load_experiment(path, ["seed=7"])
    assert [r.seed for r in runs] == [7, 7]


# --------------------------------------------------------------------------------------------
# sweeps and run ids


def test_sweep_is_grid_times_seeds(tmp_path: Path) -> None:
    grid = {"workload.rate_rps": [100, 200.5], "cluster.replicas": [1, 2, 3]}
    doc = {**CNN, "sweep": {"grid": grid, "seeds": [11, 12]}}
    runs = expand(doc, tmp_path / "exp.yaml")
    assert len(runs) == 2 * 3 * 2
    combos = {(r.spec.workload.rate_rps, r.spec.cluster.replicas, r.seed) for r in runs}
    assert combos == {(rate, rep, s) for rate in (100, 200.5) for rep in (1, 2, 3) for s in (11, 12)}
    for run in runs:
        point = dict(run.point)
        assert point == {"workload.rate_rps": run.spec.workload.rate_rps, "cluster.replicas": run.spec.cluster.replicas}


def test_sweep_cases_set_several_keys_together_times_the_grid(tmp_path: Path) -> None:
    cases = [
        {"name": "small", "cluster.replicas": 1, "models.resnet50.batching": {"policy": "none"}},
        {"name": "big", "cluster.replicas": 3},
    ]
    doc = {**CNN, "sweep": {"grid": {"workload.rate_rps": [100, 200]}, "cases": cases, "seeds": [1, 2]}}
    runs = expand(doc, tmp_path / "exp.yaml")
    assert len(runs) == 2 * 2 * 2
    by_case = {}
    for run in runs:
        point = dict(run.point)
        assert list(point) == ["case", "workload.rate_rps"]
        by_case.setdefault(point["case"], set()).add(
            (run.spec.cluster.replicas, run.spec.models["resnet50"].batching.policy)
        )
        assert run.run_id.startswith(f"case-{point['case']}_")
    # a case's keys go together; what it does not set keeps the document's value
    assert by_case == {"small": {(1, "none")}, "big": {(3, "dynamic")}}
    # an override of a key a case sets wins over the case
    runs = expand(doc, tmp_path / "exp.yaml", ["cluster.replicas=2"])
    assert {r.spec.cluster.replicas for r in runs} == {2}


@pytest.mark.parametrize(
    ("cases", "fragment"),
    [
        ([{"cluster.replicas": 1}], "cases.0.name: each case needs a name"),
        ([{"name": "a"}], "case 'a' sets no keys"),
        ([{"name": "a", "cluster.replicas": 1}, {"name": "a", "cluster.replicas": 2}], "names must be distinct"),
        ([{"name": "a", "workload.rate_rps": 5}], "which the grid also sets"),
        ([{"name": "a", "cluster.replica": 1}], "cluster.replica"),
    ],
)
def test_sweep_case_mistakes_are_named(tmp_path: Path, cases: list[dict[str, Any]], fragment: str) -> None:
    from simulator.errors import ConfigError

    doc = {**CNN, "sweep": {"grid": {"workload.rate_rps": [100]}, "cases": cases}}
    with pytest.raises(ConfigError) as info:
        expand(doc, tmp_path / "exp.yaml")
    assert fragment in str(info.value), str(info.value)


def test_without_a_sweep_there_is_one_run_at_the_documents_seed(tmp_path: Path) -> None:
    (run,) = expand(CNN, tmp_path / "exp.yaml")
    assert run.seed == 3
    assert run.point == ()
    assert run.run_id == "seed-3"


def test_run_ids_are_stable_distinct_and_filesystem_safe(tmp_path: Path) -> None:
    # Values that lose characters when made safe ("a/b", "a b", "a:b") or print alike (%g)
    # must still give distinct ids; two keys ending in 'replicas' keep their full paths.
    doc = copy.deepcopy(CNN)
    doc["sweep"] = {
        "grid": {
            "description": ["a/b", "a b", "a:b", "ab", "..", "é"],
            "workload.mix.0.weight": [0.1, 0.1000001],
            "cluster.replicas": [1],
            "models.resnet50.replicas": [2],
        },
        "seeds": [0, 1],
    }
    runs = expand(doc, tmp_path / "exp.yaml")
    ids = [r.run_id for r in runs]
    assert len(ids) == 6 * 2 * 2
    assert len(set(ids)) == len(ids), sorted(ids)
    assert len({i.lower() for i in ids}) == len(ids), "ids must differ on case-insensitive filesystems too"
    for run_id in ids:
        assert SAFE_ID.fullmatch(run_id), run_id
        assert Path(run_id).name == run_id and len(run_id) < 200
    assert all("cluster.replicas-1" in i and "models.resnet50.replicas-2" in i for i in ids)
    again = expand(doc, tmp_path / "exp.yaml")
    assert [r.run_id for r in again] == ids
    assert [r.spec_hash for r in again] == [r.spec_hash for r in runs]
    assert len({r.spec_hash for r in runs}) == len(runs)


def test_run_ids_name_the_swept_values(tmp_path: Path) -> None:
    doc = {**CNN, "sweep": {"grid": {"workload.rate_rps": [4000, 12000.5]}, "seeds": [1]}}
    ids = [r.run_id for r in expand(doc, tmp_path / "exp.yaml")]
    assert ids == ["rate_rps-4000_seed-1", "rate_rps-12000.5_seed-1"]


# --------------------------------------------------------------------------------------------
# immutability


def test_specs_are_frozen(tmp_path: Path) -> None:
    (run,) = expand(CNN, tmp_path / "exp.yaml")
    with pytest.raises(pydantic.ValidationError):
        run.spec.workload.rate_rps = 1.0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        run.spec.cluster.replicas = 7  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        run.spec.models["resnet50"].batching.policy = "none"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.run_id = "other"  # type: ignore[misc]
    assert run.spec.workload.rate_rps == 500.0


def test_spec_containers_are_immutable_too(tmp_path: Path) -> None:
    (run,) = expand(CNN, tmp_path / "exp.yaml")
    before = run.spec_hash
    with pytest.raises((TypeError, AttributeError, pydantic.ValidationError)):
        run.spec.models["other"] = run.spec.models["resnet50"]  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError, pydantic.ValidationError)):
        run.spec.workload.mix.append(run.spec.workload.mix[0])
    assert run.spec_hash == before


# --------------------------------------------------------------------------------------------
# defaults


def test_defaults_are_visible_in_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "llm.yaml", LLM)
    out_dir = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out_dir), "-q", "--no-report"]) == 0, capsys.readouterr().err
    config = yaml.safe_load((out_dir / "seed-0" / "config.resolved.yaml").read_text())
    experiment = config["experiment"]
    llama = experiment["models"]["llama"]
    assert llama["batching"] == {"policy": "continuous", "max_batch_size": 256, "max_batch_tokens": 8192}
    assert llama["scheduling"] == {"policy": "fcfs"}
    assert llama["tensor_parallel"] == 1
    assert llama["memory_utilization"] == 0.9
    assert llama["replicas"] == 1
    assert llama["dtype"] in ("fp16", "bf16")
    assert experiment["routing"] == {"policy": "round_robin"}
    assert experiment["cluster"]["profile"] == "a100-sxm-80gb"
    assert experiment["seed"] == 0
    assert experiment["workload"]["arrival"] == {"process": "poisson"}
    assert experiment["workload"]["mix"][0]["tenant"] == "default"
    assert experiment["workload"]["mix"][0]["weight"] == 1.0
    assert experiment["engine"]["coalesce_decode"] is True
    assert config["run"]["spec_hash"]
    assert config["ldsim"]["version"]
    assert len(config["profile"]["sha256"]) == 64


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    doc = {k: v for k, v in CNN.items() if k != "name"}
    (run,) = load_experiment(write_yaml(tmp_path / "my-exp.yaml", doc))
    assert run.spec.name == "my-exp"


# --------------------------------------------------------------------------------------------
# num_requests and duration_s: whichever is reached first


def _arrivals(tmp_path: Path, rate: float, num_requests: int | None, duration_s: float | None) -> np.ndarray:
    doc = copy.deepcopy(CNN)
    doc["workload"].update(rate_rps=rate, num_requests=num_requests, duration_s=duration_s)
    doc["workload"] = {k: v for k, v in doc["workload"].items() if v is not None}
    (run,) = expand(doc, tmp_path / "exp.yaml")
    table = resolve(run).generate_workload(np.random.SeedSequence(5))
    return np.asarray(table.arrival_s)


def test_duration_reached_before_num_requests(tmp_path: Path) -> None:
    times = _arrivals(tmp_path, rate=100, num_requests=10_000, duration_s=2.0)
    assert 100 < len(times) < 300  # about rate x duration = 200, far below 10,000
    assert times.max() < 2.0
    assert np.all(np.diff(times) >= 0)


def test_num_requests_reached_before_duration(tmp_path: Path) -> None:
    times = _arrivals(tmp_path, rate=100, num_requests=50, duration_s=1000.0)
    assert len(times) == 50
    assert times.max() < 5.0


def test_duration_alone(tmp_path: Path) -> None:
    times = _arrivals(tmp_path, rate=1000, num_requests=None, duration_s=3.0)
    assert 2700 < len(times) < 3300
    assert times.max() < 3.0


def test_both_limits_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = copy.deepcopy(CNN)
    doc["workload"].update(rate_rps=200, num_requests=5000, duration_s=0.5)
    path = write_yaml(tmp_path / "exp.yaml", doc)
    out_dir = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out_dir), "-q", "--no-report"]) == 0, capsys.readouterr().err
    import pandas as pd

    frame = pd.read_parquet(out_dir / "seed-3" / "requests.parquet")
    assert 50 < len(frame) < 160
    assert frame["arrival_s"].max() < 0.5
