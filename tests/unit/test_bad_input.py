"""Every mistake a user can make in an experiment is reported as one ``ldsim: error:`` paragraph.

Each case runs the command line in this process (``simulator.cli.main``) and checks the
contract of :mod:`simulator.errors`: exit status 2, a message naming the file and the key path
(or the data file and its line) and what was expected, a did-you-mean for a typo, no Python
traceback, and nothing written to the ``--out`` folder. Two cases run ``python -m simulator`` in
a subprocess to prove that no traceback reaches a real user.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import CNN, LLM, cli, write_yaml

pytestmark = pytest.mark.usefixtures("isolated")

REPO = Path(__file__).resolve().parents[2]

#: The same decoder with its prompt lengths resampled from ``sizes.csv`` beside the YAML.
EMPIRICAL = {"dist": "empirical", "file": "sizes.csv", "column": "tokens"}


def with_key(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``dotted`` (a key path; digits index lists) set to ``value``."""
    out = copy.deepcopy(doc)
    node: Any = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def without_key(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[parts[-1]]
    return out


def assert_user_error(status: int, out: str, err: str, fragments: list[str], out_dir: Path | None = None) -> None:
    """The contract of a user's mistake (see the module docstring)."""
    assert status == 2, f"exit status {status}, expected 2\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    assert err.startswith("ldsim: error: "), err
    assert err.count("ldsim: error:") == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in the message:\n{err}"
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.rglob("*"))


def check_both_commands(
    yaml_path: Path, overrides: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> str:
    """``ldsim check`` and ``ldsim run --out`` each fail with the user-error contract."""
    status, out, err = cli(["check", str(yaml_path), *overrides], capsys)
    assert_user_error(status, out, err, fragments)
    out_dir = tmp_path / "out"
    status, out, err = cli(["run", str(yaml_path), *overrides, "--out", str(out_dir), "--no-report"], capsys)
    assert_user_error(status, out, err, fragments, out_dir)
    return err


# --------------------------------------------------------------------------------------------
# a good file


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "good.yaml", CNN)
    status, out, err = cli(["check", str(path)], capsys)
    assert status == 0, err
    assert "OK" in out and "1 run(s)" in out
    assert err == ""


def test_check_accepts_the_shipped_quickstart_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = cli(["check", "quickstart"], capsys)
    assert status == 0, err
    assert "OK" in out


# --------------------------------------------------------------------------------------------
# malformed YAML files


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param("name: a\n  cluster: {}\nworkload: 1\n", ["not valid YAML", "line 2"], id="bad-indentation"),
        pytest.param(
            "name: a\nworkload:\n\trate_rps: 3\n", ["not valid YAML", "line 3", "'\\t'"], id="tab-indentation"
        ),
        pytest.param(
            "name: a\nworkload:\n  rate_rps: 3\n  num_requests: 5\n  rate_rps: 4\n",
            ["duplicate key 'rate_rps'", "line 5"],
            id="duplicate-key",
        ),
        pytest.param("", ["empty", "expected an experiment mapping"], id="empty-file"),
        pytest.param("# only a comment\n", ["empty"], id="comment-only"),
        pytest.param("- a\n- b\n", ["expected a mapping at the top level", "list"], id="top-level-list"),
        pytest.param("just a string\n", ["expected a mapping at the top level", "str"], id="top-level-scalar"),
    ],
)
def test_malformed_yaml(text: str, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    check_both_commands(path, [], [str(path), *fragments], capsys, tmp_path)


def test_yaml_syntax_error_marks_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\n  cluster: {}\n", encoding="utf-8")
    status, out, err = cli(["check", str(path)], capsys)
    assert_user_error(status, out, err, [str(path), "line 2"])
    assert "<unicode string>" not in err


def test_missing_experiment_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    check_both_commands(path, [], [str(path), "not found"], capsys, tmp_path)


# --------------------------------------------------------------------------------------------
# schema errors: unknown keys, wrong types, impossible values


@dataclass
class Case:
    """A broken experiment: the document and what the message must contain."""

    doc: dict[str, Any]
    fragments: list[str]
    files: dict[str, str] = field(default_factory=dict)


SCHEMA_CASES: dict[str, Case] = {
    "unknown-top-level-key": Case(
        {**without_key(CNN, "workload"), "workloads": CNN["workload"]},
        ["workloads: unknown key", "did you mean 'workload'?"],
    ),
    "unknown-nested-key": Case(
        without_key(with_key(CNN, "cluster.replica", 2), "cluster.replicas"),
        ["cluster.replica: unknown key", "did you mean 'replicas'?"],
    ),
    "misspelt-policy-parameter": Case(
        without_key(
            with_key(CNN, "models.resnet50.batching.max_queue_delay_m", 2),
            "models.resnet50.batching.max_queue_delay_ms",
        ),
        ["models.resnet50.batching.max_queue_delay_m: unknown key", "did you mean 'max_queue_delay_ms'?"],
    ),
    "string-for-a-number": Case(
        with_key(CNN, "workload.rate_rps", "fast"), ["workload.rate_rps", "valid number", "'fast'"]
    ),
    "float-for-an-int": Case(with_key(CNN, "cluster.replicas", 2.5), ["cluster.replicas", "valid integer", "2.5"]),
    "bool-for-an-int": Case(with_key(CNN, "cluster.replicas", True), ["cluster.replicas", "valid integer", "True"]),
    "bool-for-num-requests": Case(
        with_key(CNN, "workload.num_requests", True), ["workload.num_requests", "valid integer"]
    ),
    "negative-rate": Case(with_key(CNN, "workload.rate_rps", -5), ["workload.rate_rps", "greater than 0", "-5"]),
    "zero-rate": Case(with_key(CNN, "workload.rate_rps", 0), ["workload.rate_rps", "greater than 0", "got 0"]),
    "zero-replicas": Case(with_key(CNN, "cluster.replicas", 0), ["cluster.replicas", "greater than 0", "got 0"]),
    "missing-required-key": Case(without_key(CNN, "workload.mix"), ["workload.mix", "required key is missing"]),
    "neither-num-requests-nor-duration": Case(
        without_key(CNN, "workload.num_requests"), ["workload", "num_requests or duration_s"]
    ),
    "unknown-architecture": Case(
        with_key(CNN, "models.resnet50.architecture", "resnet51"),
        ["models.resnet50.architecture", "unknown model architecture 'resnet51'", "did you mean 'resnet-50'?"],
    ),
    "unknown-hardware-profile": Case(
        with_key(CNN, "cluster.profile", "a100-sxm-40gb"),
        ["cluster.profile", "unknown hardware profile 'a100-sxm-40gb'", "did you mean 'a100-sxm-80gb'?"],
    ),
    "unknown-policy-name": Case(
        with_key(CNN, "models.resnet50.scheduling", {"policy": "fcsf"}),
        ["models.resnet50.scheduling.policy", "unknown scheduling policy 'fcsf'", "did you mean 'fcfs'?"],
    ),
    "unknown-routing-policy": Case(
        with_key(CNN, "routing", {"policy": "least_loded"}),
        ["routing.policy", "unknown routing policy 'least_loded'", "did you mean 'least_loaded'?"],
    ),
    "mix-names-an-undeployed-model": Case(
        with_key(CNN, "workload.mix.0.model", "resnet"),
        ["workload.mix.0.model", "'resnet' is not a deployed model", "did you mean 'resnet50'?", "resnet50"],
    ),
    "decoder-without-output-tokens": Case(
        without_key(LLM, "workload.mix.0.output_tokens"),
        ["workload.mix.0", "llama-2-7b", "decoder", "output_tokens"],
    ),
    "cnn-given-input-tokens": Case(
        with_key(CNN, "workload.mix.0.input_tokens", 128), ["workload.mix.0", "cnn", "input_samples", "not input"]
    ),
    "model-does-not-fit-in-memory": Case(
        with_key(LLM, "models.llama.architecture", "llama-2-70b"),
        ["models.llama", "GiB per device", "a100-sxm-80gb", "memory_utilization", "tensor_parallel"],
    ),
    "tensor-parallel-larger-than-a-node": Case(
        with_key(LLM, "models.llama.tensor_parallel", 16),
        ["models.llama.tensor_parallel (16)", "devices per node (8)"],
    ),
    "too-few-nodes-for-the-replicas": Case(
        with_key(with_key(CNN, "cluster.nodes", 1), "cluster.replicas", 9),
        ["cluster.nodes (1)", "9 devices", "resnet50: 9 x 1"],
    ),
    "unknown-dtype": Case(
        with_key(CNN, "models.resnet50.dtype", "fp61"), ["models.resnet50.dtype", "'fp61'", "did you mean"]
    ),
}


@pytest.mark.parametrize("name", list(SCHEMA_CASES))
def test_schema_error(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = SCHEMA_CASES[name]
    path = write_yaml(tmp_path / "exp.yaml", case.doc)
    check_both_commands(path, [], [str(path), *case.fragments], capsys, tmp_path)


def test_undeployed_model_without_a_close_match_reads_well(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", with_key(CNN, "workload.mix.0.model", "bert"))
    status, out, err = cli(["check", str(path)], capsys)
    assert_user_error(status, out, err, [str(path), "workload.mix.0.model", "'bert' is not a deployed model"])
    assert "model deployed:" not in err, err


# --------------------------------------------------------------------------------------------
# plug-ins named as module:Class that fail to import


PLUGIN_CASES = {
    "module-missing": ("", ["ModuleNotFoundError", "ldsim_test_nosuch_"]),
    "module-raises-at-import": ('raise RuntimeError("boom at import")\n', ["RuntimeError", "boom at import"]),
    "attribute-missing": ("class Other:\n    pass\n", ["has no attribute 'Sched'"]),
}


@pytest.mark.parametrize("name", list(PLUGIN_CASES))
def test_plugin_that_fails_to_import(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, fragments = PLUGIN_CASES[name]
    module = f"ldsim_test_{'nosuch_' if not source else ''}{name.replace('-', '_')}"
    if source:
        (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
    # The folder goes on sys.path explicitly: that the CLI itself finds plug-ins beside the
    # YAML is tested in test_plugin.py; here only the message is under test.
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = with_key(CNN, "models.resnet50.scheduling", {"policy": f"{module}:Sched"})
    path = write_yaml(tmp_path / "exp.yaml", doc)
    fragments = [str(path), "models.resnet50.scheduling.policy", f"'{module}:Sched'", *fragments]
    try:
        check_both_commands(path, [], fragments, capsys, tmp_path)
    finally:
        sys.modules.pop(module, None)


def test_plugin_that_is_not_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ldsim_test_notpolicy.py").write_text("class NotPolicy:\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ldsim_test_notpolicy", raising=False)
    doc = with_key(CNN, "models.resnet50.scheduling", {"policy": "ldsim_test_notpolicy:NotPolicy"})
    path = write_yaml(tmp_path / "exp.yaml", doc)
    try:
        check_both_commands(path, [], [str(path), "models.resnet50.scheduling", "no method 'key'"], capsys, tmp_path)
    finally:
        sys.modules.pop("ldsim_test_notpolicy", None)


# --------------------------------------------------------------------------------------------
# data files (an empirical size distribution read from a CSV beside the YAML)


def llm_with_sizes(tmp_path: Path, csv_bytes: bytes | None) -> Path:
    if csv_bytes is not None:
        (tmp_path / "sizes.csv").write_bytes(csv_bytes)
    return write_yaml(tmp_path / "exp.yaml", with_key(LLM, "workload.mix.0.input_tokens", EMPIRICAL))


@pytest.mark.parametrize(
    ("csv_bytes", "fragments"),
    [
        pytest.param(None, ["workload.mix.0.input_tokens", "'sizes.csv' not found"], id="missing-file"),
        pytest.param(b"", ["sizes.csv", "empty"], id="empty-file"),
        pytest.param(b"tokens\n", ["sizes.csv", "no rows"], id="header-only"),
        pytest.param(
            b"token,other\n10,1\n20,2\n",
            ["sizes.csv", "no column 'tokens'", "did you mean 'token'?", "columns: token, other"],
            id="column-missing",
        ),
        pytest.param(
            b"tokens,other\n10,1\n-3,2\n", ["sizes.csv", "line 3", "column 'tokens'", ">= 0", "-3"], id="negative"
        ),
        pytest.param(
            b"tokens,other\n10,1\n2x,2\n30,3\n",
            ["sizes.csv", "line 3", "column 'tokens'", "expected a number", "'2x'"],
            id="non-numeric",
        ),
        pytest.param(
            b"tokens,other\n10,1\n20,2\n,3\n",
            ["sizes.csv", "line 4", "column 'tokens'", "expected a number"],
            id="empty-cell",
        ),
    ],
)
def test_bad_data_file(
    csv_bytes: bytes | None, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = llm_with_sizes(tmp_path, csv_bytes)
    check_both_commands(path, [], [str(path), *fragments], capsys, tmp_path)


def test_csv_with_crlf_line_endings_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = llm_with_sizes(tmp_path, b"tokens,other\r\n10,1\r\n20,2\r\n30,3\r\n")
    out_dir = tmp_path / "out"
    status, _, err = cli(["run", str(path), "--out", str(out_dir), "-q", "--no-report"], capsys)
    assert status == 0, err
    frame = pd.read_parquet(out_dir / "seed-0" / "requests.parquet")
    assert len(frame) == 20
    assert set(frame["input_tokens"]) <= {10, 20, 30}


# --------------------------------------------------------------------------------------------
# command-line overrides


def test_override_without_equals_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    check_both_commands(
        path, ["workload.rate_rps"], ["command-line override 'workload.rate_rps'", "key.path=value"], capsys, tmp_path
    )


def test_override_of_a_misspelt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    check_both_commands(
        path, ["cluster.replica=8"], [str(path), "cluster.replica", "did you mean 'replicas'?"], capsys, tmp_path
    )


def test_override_with_a_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    check_both_commands(path, ["workload.rate_rps=fast"], [str(path), "workload.rate_rps", "'fast'"], capsys, tmp_path)


def test_override_indexing_past_a_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "exp.yaml", CNN)
    check_both_commands(
        path, ["workload.mix.3.weight=2"], ["workload.mix.3", "index into a list of 1"], capsys, tmp_path
    )


# --------------------------------------------------------------------------------------------
# sweeps: a bad grid key, or one bad point, writes nothing at all


def test_sweep_grid_key_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {**CNN, "sweep": {"grid": {"workload.rate_rp": [100, 200]}}}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    fragments = [str(path), "workload.rate_rp", "unknown key", "did you mean 'rate_rps'?"]
    check_both_commands(path, [], fragments, capsys, tmp_path)


def test_sweep_misspelt_section_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {**CNN, "sweep": {"gird": {"workload.rate_rps": [100, 200]}}}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    check_both_commands(path, [], [str(path), "sweep.gird", "did you mean 'grid'?"], capsys, tmp_path)


def test_sweep_with_one_invalid_point_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {**CNN, "sweep": {"grid": {"workload.rate_rps": [100, 0, 200]}, "seeds": [1, 2]}}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    err = check_both_commands(path, [], [str(path), "workload.rate_rps", "greater than 0"], capsys, tmp_path)
    assert "sweep point" in err and "workload.rate_rps=0" in err


def test_sweep_whose_last_point_cannot_be_placed_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid for the schema; only resolving the cluster of the last point fails.
    doc = {**with_key(CNN, "cluster.nodes", 1), "sweep": {"grid": {"cluster.replicas": [1, 2, 9]}}}
    path = write_yaml(tmp_path / "exp.yaml", doc)
    check_both_commands(path, [], [str(path), "cluster.nodes (1)", "9 devices"], capsys, tmp_path)


# --------------------------------------------------------------------------------------------
# a real user: python -m simulator in a subprocess


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_subprocess_typo_prints_one_paragraph_and_no_traceback(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", {**CNN, "workloads": CNN["workload"]})
    out_dir = tmp_path / "out"
    proc = run_module(["run", str(path), "--out", str(out_dir)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ldsim: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "did you mean 'workload'?" in proc.stderr
    assert proc.stdout == ""
    assert not out_dir.exists()


def test_subprocess_plugin_raising_at_import_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "ldsim_test_broken.py").write_text(
        textwrap.dedent(
            """\
            import nonexistent_dependency_of_the_plugin  # noqa: F401
            """
        ),
        encoding="utf-8",
    )
    doc = with_key(CNN, "models.resnet50.scheduling", {"policy": "ldsim_test_broken:Sched"})
    path = write_yaml(tmp_path / "exp.yaml", doc)
    out_dir = tmp_path / "out"
    proc = run_module(["run", "exp.yaml", "--out", str(out_dir)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "nonexistent_dependency_of_the_plugin" in proc.stderr
    assert str(path) in proc.stderr
    assert not out_dir.exists()


def test_subprocess_check_good_and_bad(tmp_path: Path) -> None:
    good = write_yaml(tmp_path / "good.yaml", CNN)
    bad = write_yaml(tmp_path / "bad.yaml", with_key(CNN, "models.resnet50.scheduling", {"policy": "fcsf"}))
    ok = run_module(["check", str(good)], tmp_path)
    assert ok.returncode == 0, ok.stderr
    failed = run_module(["check", str(bad)], tmp_path)
    assert failed.returncode == 2
    assert "did you mean 'fcfs'?" in failed.stderr and "Traceback" not in failed.stderr
