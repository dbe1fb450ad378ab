"""The real executor: an experiment's runs on real models, and the simulator's error measured.

``ldsim execute`` (:func:`execute_runs`) runs the same experiment spec on small real torch
models -- the same workload, the same policy objects -- and writes the simulator's results
schema from real timestamps; ``ldsim validate`` (:func:`validate`) runs both the simulation
and the execution over a sweep of loads and writes a fidelity report. A profile of this
machine for the experiment's models comes from :func:`profile_models`.

Modules: :mod:`.torch_models` (the models, in torch), :mod:`.worker` (a process per executor
device), :mod:`.engine` (the coordinator: the simulator's engine on the wall clock),
:mod:`.run` (execute and write runs), :mod:`.profile` (measure a profile for given models),
:mod:`.validate` (simulation vs execution). Importing this package imports none of them (a
worker process starts from :mod:`.worker` alone); the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExecutedRun", "execute", "execute_runs", "profile_models", "validate"]

_WHERE = {
    "ExecutedRun": "simulator.executor.run",
    "execute": "simulator.executor.run",
    "execute_runs": "simulator.executor.run",
    "profile_models": "simulator.executor.profile",
    "validate": "simulator.executor.validate",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'simulator.executor' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
