"""Shared fixtures: building experiments in code and running them in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulator.config import expand
from simulator.metrics import requests_frame
from simulator.sweep import simulate


def make_runs(doc: dict[str, Any], overrides: list[str] | None = None, where: str = "test.yaml"):
    """Expand an experiment mapping (as if read from ``where``) into validated runs."""
    return expand(doc, Path(where).resolve(), overrides or [])


def run_doc(doc: dict[str, Any], overrides: list[str] | None = None):
    """Simulate the single run of ``doc``; return (resolved, result, requests frame)."""
    runs = make_runs(doc, overrides)
    assert len(runs) == 1
    resolved, result = simulate(runs[0])
    return resolved, result, requests_frame(result.table)


@pytest.fixture
def cnn_doc() -> dict[str, Any]:
    """A one-replica ResNet-50 experiment without batching (an M/G/1 queue)."""
    return {
        "name": "cnn",
        "seed": 1,
        "cluster": {"profile": "a100-sxm-80gb", "replicas": 1},
        "models": {"resnet50": {"architecture": "resnet-50", "batching": {"policy": "none"}}},
        "workload": {"rate_rps": 1000.0, "num_requests": 2000, "mix": [{"model": "resnet50"}]},
    }
