"""ldsim: a discrete-event simulator of large-scale deep-learning serving systems.

The public API, for scripts and notebooks::

    from simulator import load_experiment, simulate
    runs = load_experiment("experiments/quickstart.yaml", ["workload.rate_rps=400"])
    resolved, result = simulate(runs[0])

The command line (``ldsim``) wraps the same functions. Heavy optional dependencies (torch,
ray) are imported only inside the functions that need them.
"""

from __future__ import annotations

from simulator.config import ExperimentSpec, RunSpec, expand, load_experiment
from simulator.engine import Simulation, SimulationResult
from simulator.errors import ConfigError, LdsimError
from simulator.experiment import ResolvedRun, resolve
from simulator.hardware import HardwareProfile, load_profile
from simulator.metrics import REQUEST_COLUMNS, requests_frame, summarize
from simulator.policy import (
    BatchDecision,
    BatchingPolicy,
    Policy,
    PolicyParams,
    ReplicaView,
    RequestView,
    RoutingPolicy,
    SchedulingPolicy,
)
from simulator.registry import BATCHING, MODELS, ROUTING, SCHEDULING, Registry
from simulator.sweep import execute_run, run_sweep, simulate

__version__ = "0.1.0"

__all__ = [
    "BATCHING",
    "MODELS",
    "REQUEST_COLUMNS",
    "ROUTING",
    "SCHEDULING",
    "BatchDecision",
    "BatchingPolicy",
    "ConfigError",
    "ExperimentSpec",
    "HardwareProfile",
    "LdsimError",
    "Policy",
    "PolicyParams",
    "Registry",
    "ReplicaView",
    "RequestView",
    "ResolvedRun",
    "RoutingPolicy",
    "RunSpec",
    "SchedulingPolicy",
    "Simulation",
    "SimulationResult",
    "__version__",
    "execute_run",
    "expand",
    "load_experiment",
    "load_profile",
    "requests_frame",
    "resolve",
    "run_sweep",
    "simulate",
    "summarize",
]
