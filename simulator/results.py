"""Writing results: one folder per run, written atomically, and a ``summary.csv`` per sweep.

``DIR/<run-id>/`` holds ``requests.parquet``, ``timeseries.parquet``, ``summary.json`` and
``config.resolved.yaml``. A run is written into a hidden temporary folder and renamed into
place only when complete, so an interrupted run leaves nothing that looks finished. A run
whose folder exists with the same configuration hash is complete and is not run again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from simulator.config import RunSpec
from simulator.engine import SimulationResult
from simulator.experiment import ResolvedRun
from simulator.metrics import requests_frame, summarize

__all__ = [
    "atomic_write_text",
    "is_complete",
    "package_info",
    "read_summaries",
    "write_run",
    "write_summary_csv",
]

RESULT_FILES = ("requests.parquet", "timeseries.parquet", "summary.json", "config.resolved.yaml")


@lru_cache(maxsize=1)
def package_info() -> dict[str, Any]:
    """Ldsim's version, the git commit of its source tree (if it is one), and the platform."""
    from simulator import __version__

    root = Path(__file__).resolve().parent.parent
    commit = None
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            commit = out.stdout.strip() if out.returncode == 0 else None
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if commit and dirty.stdout.strip():
                commit += "+dirty"
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {
        "version": __version__,
        "git_commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def _cost_note(result: SimulationResult) -> str:
    """How the run's operators were priced, in one sentence."""
    parts = []
    if result.uncalibrated:
        parts.append(
            f"{', '.join(result.uncalibrated)} priced by the roofline with the profile's default"
            " efficiencies (uncalibrated)"
        )
    if result.fallbacks:
        parts.append("; ".join(f"{k} priced from the measured {v} table" for k, v in sorted(result.fallbacks.items())))
    return "; ".join(parts) if parts else "every operator priced from measured tables"


def _resolved_config(run: RunSpec, resolved: ResolvedRun, result: SimulationResult) -> dict[str, Any]:
    experiment = run.resolved()
    for name, plan in resolved.models.items():
        dep = experiment["models"][name]
        dep["architecture"] = plan.arch.name
        dep["dtype"] = plan.dtype
        dep["replicas"] = plan.replicas
        dep["batching"] = plan.batching.describe()
        dep["scheduling"] = plan.scheduling.describe()
    experiment["routing"] = resolved.routing.describe()
    profile = resolved.profile
    return {
        "ldsim": package_info(),
        "run": {
            "id": run.run_id,
            "source": str(run.source),
            "seed": run.seed,
            "point": {k: v for k, v in run.point},
            "spec_hash": run.spec_hash,
        },
        "profile": {
            "name": profile.name,
            "path": str(profile.path),
            "sha256": profile.sha256,
            "status": profile.provenance.status,
        },
        "cost_model": {
            "calibrated": profile.calibrated,
            "uncalibrated_kinds": result.uncalibrated,
            "fallback_kinds": result.fallbacks,
            "note": _cost_note(result),
        },
        "cluster": {
            "nodes": resolved.cluster.nodes,
            "devices_per_node": resolved.cluster.devices_per_node,
            "replicas": [
                {
                    "replica": p.replica_id,
                    "model": p.model,
                    "node": p.node,
                    "stage_nodes": list(p.stage_nodes),
                    "devices": list(p.devices),
                }
                for p in resolved.cluster.placements
            ],
        },
        "experiment": experiment,
    }


def write_run(out_dir: Path, run: RunSpec, resolved: ResolvedRun, result: SimulationResult) -> dict[str, Any]:
    """Write one run's folder atomically; return its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / run.run_id
    tmp = out_dir / f".tmp-{run.run_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    frame = requests_frame(result.table)
    _write_parquet(frame, tmp / "requests.parquet")
    _write_parquet(result.timeseries, tmp / "timeseries.parquet")
    summary = summarize(
        frame, result.replicas, result.sim_end_s, result.wall_s, result.events, result.itl_counts, result.timeseries
    )
    summary = {
        "run_id": run.run_id,
        **summary,
        "rejections": result.rejections,
        "warnings": result.warnings,
        "workload_notes": resolved.notes,
        "profile": resolved.profile.name,
        "calibrated": not result.uncalibrated,
        "replicas": result.replicas,
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    config = _resolved_config(run, resolved, result)
    (tmp / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    error = out_dir / f"{run.run_id}.error.txt"
    if error.exists():
        error.unlink()
    return summary


def is_complete(out_dir: Path, run: RunSpec) -> bool:
    """True if ``out_dir/<run-id>`` holds a finished run of exactly this configuration."""
    folder = out_dir / run.run_id
    if not all((folder / f).is_file() for f in RESULT_FILES):
        return False
    try:
        config = yaml.safe_load((folder / "config.resolved.yaml").read_text())
        return bool(config["run"]["spec_hash"] == run.spec_hash)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def read_summaries(out_dir: Path) -> list[dict[str, Any]]:
    """Every run's summary under ``out_dir`` with its sweep point, sorted by run id."""
    rows = []
    for summary_path in sorted(out_dir.glob("*/summary.json")):
        folder = summary_path.parent
        if folder.name.startswith("."):  # a run being written, or left by an interrupted one
            continue
        try:
            summary = json.loads(summary_path.read_text())
            config = yaml.safe_load((folder / "config.resolved.yaml").read_text())
        except (OSError, json.JSONDecodeError, yaml.YAMLError):
            continue
        summary["_point"] = config.get("run", {}).get("point", {}) or {}
        summary["_seed"] = config.get("run", {}).get("seed")
        summary["_config"] = config
        rows.append(summary)
    return rows


def write_summary_csv(out_dir: Path, order: list[str] | None = None) -> Path:
    """Write ``DIR/summary.csv``: one row per finished run (sweep keys, seed, scalar figures).

    With ``order`` (run ids), only those runs, in that order; otherwise every run in ``DIR``.
    """
    rows = []
    wanted = set(order) if order is not None else None
    for summary in read_summaries(out_dir):
        if wanted is not None and summary["run_id"] not in wanted:
            continue
        row: dict[str, Any] = {"run_id": summary["run_id"]}
        row.update(summary["_point"])
        row["seed"] = summary["_seed"]
        for key, value in summary.items():
            if not key.startswith("_") and key != "run_id" and isinstance(value, int | float | str | bool | type(None)):
                row[key] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if order and len(frame):
        rank = {rid: i for i, rid in enumerate(order)}
        frame = frame.sort_values("run_id", key=lambda s: s.map(lambda r: rank.get(r, len(rank))))
    path = out_dir / "summary.csv"
    atomic_write_text(path, frame.to_csv(index=False))
    return path
