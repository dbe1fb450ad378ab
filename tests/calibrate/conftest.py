"""Shared fixtures of the calibration tests: one quick CPU calibration and one check of it per
test session (each takes tens of seconds, so every test that needs a measured profile or a
``CheckResult`` shares these)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import main


@pytest.fixture(scope="session")
def quick_cpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``ldsim calibrate --device cpu --quick`` into a temporary folder, through the command
    line: ``(profile path, seconds the command took)``."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("quick-cpu") / "cpu-quick.yaml"
    start = time.perf_counter()
    status = main(["calibrate", "--device", "cpu", "--quick", "--out", str(out)])
    seconds = time.perf_counter() - start
    assert status == 0, "ldsim calibrate --device cpu --quick failed"
    print(f"\nldsim calibrate --device cpu --quick: {seconds:.1f} s")
    return out, seconds


@pytest.fixture(scope="session")
def quick_check(quick_cpu: tuple[Path, float], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``profile check --quick`` of :func:`quick_cpu`'s profile (a ``CheckResult``; its plot and
    rows are written to a temporary folder)."""
    from simulator.calibrate import check_profile

    png = tmp_path_factory.mktemp("quick-check") / "cpu-quick.check.png"
    result = check_profile(quick_cpu[0], quick=True, out_png=png)
    print("\n" + result.table())
    return result
