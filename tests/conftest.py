"""Shared fixtures: building experiments in code and running them in-process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.cli import main
from simulator.config import expand
from simulator.metrics import requests_frame
from simulator.registry import ARRIVALS, BATCHING, MODELS, ROUTING, SCHEDULING, SIZES, TRACES
from simulator.sweep import simulate

#: A small CNN experiment (one replica, 200 requests): checks and runs in well under a second.
CNN: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "cluster": {"profile": "a100-sxm-80gb", "replicas": 1},
    "models": {
        "resnet50": {
            "architecture": "resnet-50",
            "batching": {"policy": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 1},
        }
    },
    "workload": {"rate_rps": 500, "num_requests": 200, "mix": [{"model": "resnet50", "input_samples": 1}]},
}

#: A small decoder experiment (llama-2-7b, 20 requests).
LLM: dict[str, Any] = {
    "name": "llm",
    "models": {"llama": {"architecture": "llama-2-7b", "batching": {"policy": "continuous"}}},
    "workload": {
        "rate_rps": 2,
        "num_requests": 20,
        "mix": [{"model": "llama", "input_tokens": 64, "output_tokens": 16}],
    },
}


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo what a run leaves in the process: sys.path entries and registrations."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for registry in (ARRIVALS, BATCHING, MODELS, ROUTING, SCHEDULING, SIZES, TRACES):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_loaded", dict(registry._loaded))


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``ldsim argv`` in this process; return (status, stdout, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own exits
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as YAML to ``path``; return the path."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def make_runs(doc: dict[str, Any], overrides: list[str] | None = None, where: str = "test.yaml"):
    """Expand an experiment mapping (as if read from ``where``) into validated runs."""
    return expand(doc, Path(where).resolve(), overrides or [])


def run_doc(doc: dict[str, Any], overrides: list[str] | None = None, prefix_units: int = 0):
    """Simulate the single run of ``doc``; return (resolved, result, requests frame).

    With ``prefix_units`` > 0, each request also carries prefix-unit ids (one per
    ``prefix_units`` tokens of its prompt) shared among 7 conversations, for prefix caching.
    """
    runs = make_runs(doc, overrides)
    assert len(runs) == 1
    if not prefix_units:
        resolved, result = simulate(runs[0])
        return resolved, result, requests_frame(result.table)
    import numpy as np

    from simulator.engine import Simulation
    from simulator.experiment import resolve

    resolved = resolve(runs[0])
    table = resolved.generate_workload(np.random.SeedSequence(runs[0].seed).spawn(3)[0])
    units = table.input_tokens // prefix_units
    table.prefix_ids = np.concatenate(
        [np.arange(u, dtype=np.int64) + 1000 * (i % 7) for i, u in enumerate(units.tolist())]
    )
    table.prefix_offsets = np.concatenate([[0], np.cumsum(units)]).astype(np.int64)
    result = Simulation(resolved, table).run()
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
