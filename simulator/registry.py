"""Registries: names in a YAML file to the objects they stand for.

One :class:`Registry` per family of plug-ins (batching, scheduling and routing policies,
model architectures, arrival processes, size distributions, trace formats). A name resolves, in order, to

1. a ``"module:attr"`` path (``my_lab.sched:Edf``), imported on demand;
2. a built-in, registered lazily by its ``"module:attr"`` string (nothing is imported until
   the name is used);
3. an installed plug-in's entry point in the group ``ldsim.<family>``, scanned only when the
   name is not already known.

An unknown name fails with a suggestion and the list of known names. Registries are keyed by
free-form strings, never by a closed enum, so third parties extend them without editing ldsim.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from simulator.errors import ConfigError, did_you_mean

__all__ = [
    "ARRIVALS",
    "BATCHING",
    "MODELS",
    "REGISTRIES",
    "ROUTING",
    "SCHEDULING",
    "SIZES",
    "TRACES",
    "Entry",
    "Registry",
    "import_target",
]


@dataclass(frozen=True)
class Entry:
    """One registered name: what it points to and where the registration came from."""

    name: str
    target: str
    origin: str


def import_target(target: str, what: str) -> Any:
    """Import ``"module:attr"`` (attr may be dotted) and return the object.

    ``what`` describes the use ("scheduling policy") for the error message. Any failure to
    import is a :class:`ConfigError` naming the target and the underlying exception.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} '{target}': expected 'module:attribute', e.g. 'my_lab.sched:Edf'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure in a plug-in is the user's to fix
        raise ConfigError(
            f"could not import the {what} '{target}': {type(exc).__name__}: {exc} (modules are"
            f" looked for beside the experiment file, in the current directory, then on sys.path)"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"the {what} '{target}': module '{module_name}' has no attribute '{attr}'") from exc
    return obj


class Registry:
    """Names of one plug-in family, resolved lazily.

    ``builtins`` maps each built-in name to its ``"module:attr"`` target. Invariant: a name
    resolves to the same object for the life of the process (targets are cached once loaded).
    """

    def __init__(self, family: str, noun: str, builtins: dict[str, str]) -> None:
        self.family = family
        self.noun = noun
        self.group = f"ldsim.{family}"
        self._entries: dict[str, Entry] = {name: Entry(name, target, "built-in") for name, target in builtins.items()}
        self._loaded: dict[str, Any] = {}
        self._scanned = False

    def register(self, name: str, target: Any, origin: str = "registered") -> None:
        """Register ``name`` for ``target`` (an object, or a ``"module:attr"`` string)."""
        if isinstance(target, str):
            self._entries[name] = Entry(name, target, origin)
            self._loaded.pop(name, None)
        else:
            qual = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"
            self._entries[name] = Entry(name, qual, origin)
            self._loaded[name] = target

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a registration or a resolved ``module:attr``); no-op if unknown."""
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name not in self._entries:
                dist = ep.dist.name if ep.dist is not None else "unknown distribution"
                self._entries[ep.name] = Entry(ep.name, ep.value, f"entry point ({dist})")

    def resolve(self, name: str) -> Any:
        """Return the object ``name`` stands for, importing it on first use.

        Raises :class:`ConfigError` for an unknown name (with a did-you-mean and the known
        names) or for a target that fails to import.
        """
        if name in self._loaded:
            return self._loaded[name]
        if ":" in name:
            obj = import_target(name, self.noun)
            self._loaded[name] = obj
            return obj
        if name not in self._entries:
            self._scan_entry_points()
        entry = self._entries.get(name)
        if entry is None:
            known = sorted(self._entries)
            raise ConfigError(
                f"unknown {self.noun} '{name}'{did_you_mean(name, known)}"
                f" (or give a plug-in as 'module:Class', or install one in the entry-point group"
                f" '{self.group}')"
            )
        obj = import_target(entry.target, self.noun)
        self._loaded[name] = obj
        return obj

    def names(self) -> list[str]:
        """All known names (built-in, registered and installed entry points), sorted."""
        self._scan_entry_points()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        """Every known :class:`Entry`, sorted by name."""
        self._scan_entry_points()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name not in self._entries:
            self._scan_entry_points()
        return name in self._entries


BATCHING = Registry(
    "batching",
    "batching policy",
    {
        "none": "policies.batching:NoBatching",
        "static": "policies.batching:StaticBatching",
        "dynamic": "policies.batching:DynamicBatching",
        "continuous": "policies.batching:ContinuousBatching",
        "orca": "policies.batching:OrcaBatching",
        "vllm": "policies.batching:VllmBatching",
        "sarathi": "policies.batching:SarathiBatching",
        "request_level": "policies.batching:RequestLevelBatching",
    },
)
SCHEDULING = Registry(
    "scheduling",
    "scheduling policy",
    {"fcfs": "policies.scheduling:Fcfs"},
)
ROUTING = Registry(
    "routing",
    "routing policy",
    {
        "round_robin": "policies.routing:RoundRobin",
        "random": "policies.routing:RandomRouting",
        "least_loaded": "policies.routing:LeastLoaded",
        "prefix_aware": "policies.routing:PrefixAware",
    },
)
MODELS = Registry(
    "models",
    "model architecture",
    {
        "resnet-50": "simulator.models:resnet50",
        "bert-base": "simulator.models:bert_base",
        "bert-large": "simulator.models:bert_large",
        "llama-2-7b": "simulator.models:llama2_7b",
        "llama-3-8b": "simulator.models:llama3_8b",
        "llama-3.1-8b": "simulator.models:llama31_8b",
        "llama-2-70b": "simulator.models:llama2_70b",
        "mixtral-8x7b": "simulator.models:mixtral_8x7b",
        "dlrm-criteo-kaggle": "simulator.models:dlrm_criteo_kaggle",
        "dlrm-criteo-terabyte": "simulator.models:dlrm_criteo_terabyte",
        "small-resnet": "simulator.small_models:small_resnet",
        "small-bert": "simulator.small_models:small_bert",
        "small-llama": "simulator.small_models:small_llama",
        "small-dlrm": "simulator.small_models:small_dlrm",
    },
)
ARRIVALS = Registry(
    "arrivals",
    "arrival process",
    {
        "poisson": "workloads.arrivals:Poisson",
        "gamma": "workloads.arrivals:GammaRenewal",
        "weibull": "workloads.arrivals:WeibullRenewal",
        "mmpp": "workloads.arrivals:MMPP",
        "diurnal": "workloads.arrivals:Diurnal",
        "piecewise": "workloads.arrivals:PiecewiseRate",
        "rate_curve": "workloads.arrivals:RateCurve",
        "replay": "workloads.arrivals:Replay",
        "closed_loop": "workloads.arrivals:ClosedLoop",
    },
)
SIZES = Registry(
    "sizes",
    "size distribution",
    {
        "fixed": "workloads.sizes:Fixed",
        "uniform": "workloads.sizes:Uniform",
        "lognormal": "workloads.sizes:LogNormal",
        "empirical": "workloads.sizes:Empirical",
        "gamma": "workloads.sizes:GammaSize",
    },
)
TRACES = Registry(
    "traces",
    "trace format",
    {
        "azure_llm_2023": "workloads.readers:AzureLLM",
        "azure_llm_2024": "workloads.readers:AzureLLM",
        "mooncake": "workloads.readers:Mooncake",
        "burstgpt": "workloads.readers:BurstGPT",
        "azure_functions_2019": "workloads.readers:AzureFunctions2019",
        "azure_functions_2021": "workloads.readers:AzureFunctions2021",
        "table": "workloads.readers:Table",
        "csv": "workloads.readers:Table",
        "parquet": "workloads.readers:Table",
    },
)

#: The policy families by name, for ``ldsim list policies`` and the conformance checks.
REGISTRIES: dict[str, Registry] = {
    "batching": BATCHING,
    "scheduling": SCHEDULING,
    "routing": ROUTING,
}
