"""A non-editable install works: build the wheel, install it into a folder, run from elsewhere.

The shipped data (hardware profiles, experiments, bundled traces) must be found inside the
installed package (``simulator/_data/...``, ``workloads/data/...``), never in the source
checkout, so every subprocess here runs with ``PYTHONPATH`` set to the install folder and its
working directory outside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-input", "--disable-pip-version-check", "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built without network access."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the build backend) is not installed; `pip install hatchling` to run this test")
    dist = tmp_path_factory.mktemp("dist")
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO), cwd=dist)
    (found,) = dist.glob("ldsim-*.whl")
    return found


@pytest.fixture(scope="module")
def target(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (not editable) into a bare folder."""
    folder = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--target", str(folder), str(wheel), cwd=folder)
    return folder


def run_installed(target: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` seeing only the installed copy of ldsim (plus its dependencies)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    tops = {n.split("/")[0] for n in names}
    assert {"simulator", "policies", "workloads"} <= tops
    assert all(t in ("simulator", "policies", "workloads") or t.endswith(".dist-info") for t in tops), tops
    for kind in ("experiments", "hardware_profiles"):
        for shipped in sorted((REPO / kind).glob("*.yaml")):
            assert f"simulator/_data/{kind}/{shipped.name}" in names, shipped
    assert any(n.startswith("workloads/data/azure_llm_2023/") and n.endswith(".csv") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    assert "ldsim = simulator.cli:main" in entry_points


def test_installed_package_is_imported_from_the_target(target: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """\
        import json, sys
        import simulator, policies, workloads
        from simulator.resources import data_dir
        from simulator.hardware import load_profile
        from workloads.traces import DATA_DIR, resolve_data_file
        print(json.dumps({
            "simulator": simulator.__file__,
            "policies": policies.__file__,
            "workloads": workloads.__file__,
            "experiments": str(data_dir("experiments")),
            "profiles": str(data_dir("hardware_profiles")),
            "profile": str(load_profile("a100-sxm-80gb").path),
            "trace": str(resolve_data_file("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", None, "test")),
            "version": simulator.__version__,
        }))
        """
    )
    proc = run_installed(target, tmp_path, "-c", script)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    root = target.resolve()
    for key in ("simulator", "policies", "workloads", "experiments", "profiles", "profile", "trace"):
        path = Path(found[key]).resolve()
        assert path.is_relative_to(root), f"{key}: {path} is not inside the install folder {root}"
    assert Path(found["experiments"]).resolve() == root / "simulator" / "_data" / "experiments"
    assert Path(found["profiles"]).resolve() == root / "simulator" / "_data" / "hardware_profiles"
    assert found["version"]


def test_installed_cli_lists_the_shipped_files(target: Path, tmp_path: Path) -> None:
    proc = run_installed(target, tmp_path, "-m", "simulator", "list", "profiles")
    assert proc.returncode == 0, proc.stderr
    root = str(target.resolve())
    for name in ("a100-sxm-80gb", "h100-sxm-80gb"):
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.split()[:1] == [name]]
        assert f"{root}/simulator/_data/hardware_profiles/{name}.yaml" in line
    assert str(REPO) not in proc.stdout

    proc = run_installed(target, tmp_path, "-m", "simulator", "list", "experiments")
    assert proc.returncode == 0, proc.stderr
    listed = {ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()}
    assert {p.stem for p in (REPO / "experiments").glob("*.yaml")} == listed


def test_installed_cli_runs_quickstart(target: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "OUT"
    proc = run_installed(
        target,
        tmp_path,
        "-m",
        "simulator",
        "run",
        "quickstart",
        "--out",
        str(out_dir),
        "-q",
        "--no-report",
        "workload.num_requests=300",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    runs = sorted(p for p in out_dir.iterdir() if p.is_dir())
    assert runs
    for run in runs:
        config = yaml.safe_load((run / "config.resolved.yaml").read_text())
        assert config["experiment"]["workload"]["num_requests"] == 300
        assert Path(config["run"]["source"]).resolve().is_relative_to(target.resolve())
        assert Path(config["profile"]["path"]).resolve().is_relative_to(target.resolve())
        assert config["ldsim"]["git_commit"] is None  # an installed copy is not a git checkout
    assert (out_dir / "summary.csv").is_file()


def test_installed_console_script(target: Path, tmp_path: Path) -> None:
    script = target / "bin" / "ldsim"
    if not script.is_file():
        pytest.skip("pip did not write console scripts into the --target folder")
    proc = run_installed(target, tmp_path, str(script), "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ldsim ")
