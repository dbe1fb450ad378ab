"""Experiment YAML -> validated, immutable specs, one :class:`RunSpec` per sweep point.

Loading goes: ``yaml.safe_load`` (duplicate keys are errors) -> command-line overrides
(``workload.rate_rps=40``) -> ``sweep`` expansion (a grid over any keys, times seeds) ->
pydantic validation of each point (unknown keys, wrong types and impossible values are
errors naming the file, the key path and what was expected, with a did-you-mean) -> the
cross-field checks that need the registries (a model named in the mix exists, a policy's
``params`` fit its ``Params``, a decoder has output lengths). Nothing is run until every
point of a sweep has passed, so a bad sweep never writes half its results.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from simulator.errors import ConfigError, validation_message
from simulator.resources import find_file

__all__ = [
    "ArrivalSpec",
    "ClusterSpec",
    "DecodePoolSpec",
    "DeploymentSpec",
    "EngineSpec",
    "ExperimentSpec",
    "JointLengths",
    "KVCacheSpec",
    "MixEntry",
    "PolicySpec",
    "Popularity",
    "RunSpec",
    "SizeSpec",
    "SloSpec",
    "SweepSpec",
    "TraceSpec",
    "WorkloadSpec",
    "apply_overrides",
    "expand",
    "load_experiment",
    "read_yaml",
]


class FrozenDict(dict):
    """A dict that refuses changes after it is built (the mappings inside a frozen spec)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a validated spec is immutable; build a new one (e.g. with overrides)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Open(BaseModel):
    """A spec naming a plug-in plus that plug-in's own parameters (validated later)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    @property
    def params(self) -> dict[str, Any]:
        """The keys besides the plug-in's name: its parameters."""
        return dict(self.model_extra or {})


class PolicySpec(_Open):
    """``{policy: NAME, **params}``: a policy by registry name or ``module:Class``."""

    policy: str


class _OmitNone(BaseModel):
    """Leaves keys added after a model's first release out of its dump while they are ``None``,
    so the resolved configuration and ``spec_hash`` of an older experiment do not change; and
    a key that does not apply beside another (``_omit_beside``: (key, other) pairs)."""

    _omit_none: tuple[str, ...] = ()
    _omit_beside: tuple[tuple[str, str], ...] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in self._omit_none:
                if data.get(key, 0) is None:
                    del data[key]
            for key, other in self._omit_beside:
                if data.get(other) is not None:
                    data.pop(key, None)
        return data


class SizeSpec(_Open):
    """``{dist: NAME, **params}``: a size distribution (``fixed``, ``uniform``, ``lognormal``,
    ``gamma``, ``empirical``) or a plug-in ``module:Class``."""

    dist: str


class ArrivalSpec(_Open):
    """``{process: NAME, **params}``: an arrival process (``poisson``, ``gamma``, ``weibull``,
    ``mmpp``, ``diurnal``, ``piecewise``, ``rate_curve``, ``replay``, ``closed_loop``; see
    :mod:`workloads.arrivals`) or a plug-in ``module:Class``."""

    process: str = "poisson"


class TraceSpec(_Open):
    """``{format: NAME, file: PATH, **options}``: a trace read by a registered reader
    (``azure_llm_2023``, ``azure_llm_2024``, ``mooncake``, ``burstgpt``,
    ``azure_functions_2019``, ``azure_functions_2021``, ``table``; see
    :mod:`workloads.readers`) or a plug-in ``module:Class``. Options every reader takes:
    ``window_s``, ``max_requests``, ``rate_scale``, ``on_error``, ``failed``
    (:class:`workloads.traces.TraceParams`)."""

    format: str


class SloSpec(_Spec):
    """Latency objectives of a request class, in milliseconds (each optional)."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    e2e_ms: float | None = Field(default=None, gt=0)


def _fixed_size(value: Any) -> Any:
    """Accept a bare integer as shorthand for ``{dist: fixed, value: N}``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"dist": "fixed", "value": value}
    return value


Size = Annotated[SizeSpec, BeforeValidator(_fixed_size)]


class JointLengths(_OmitNone, _Spec):
    """Joint (input, output) token pairs sampled from rows of a file: the columns
    ``input_column`` and ``output_column`` of a CSV or parquet file, or, with ``format``, the
    input and output tokens of a trace read by that reader (``format: mooncake``)."""

    _omit_none = ("input_column", "output_column", "format")

    file: str
    input_column: str | None = None
    output_column: str | None = None
    format: str | None = None

    @model_validator(mode="after")
    def _check(self) -> JointLengths:
        columns = (self.input_column, self.output_column)
        if self.format is None and None in columns:
            raise ValueError("give input_column and output_column (a CSV or parquet file), or format (a trace)")
        if self.format is not None and columns != (None, None):
            raise ValueError(f"a trace (format '{self.format}') has its own columns: remove input_column/output_column")
        return self


class Popularity(_Spec):
    """How a mix entry with several ``models`` splits its weight among them: ``zipf`` gives
    the ``k``-th listed model a share proportional to ``1 / k**s``; ``uniform`` equal shares."""

    dist: Literal["zipf", "uniform"] = "zipf"
    s: float = Field(default=1.0, gt=0)


def _label_values(value: Any) -> Any:
    """A ``match`` mapping: each label to a tuple of strings (a single value allowed)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, values in value.items():
        items = values if isinstance(values, list | tuple) else [values]
        out[key] = tuple(str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in items)
    return out


Match = Annotated[
    dict[str, tuple[str, ...]], BeforeValidator(_label_values), AfterValidator(FrozenDict), Field(strict=False)
]


class MixEntry(_OmitNone, _Spec):
    """One class of requests: which model, tenant, share of arrivals, sizes, SLOs, priority.

    Sizes: ``input_tokens`` (language models), ``output_tokens`` (decoders), or
    ``input_samples`` (images for a CNN, queries for a recommender); each an integer or a
    distribution. ``lengths`` samples (input, output) token pairs jointly from a file. With a
    trace workload, sizes not given come from the trace.

    ``models`` (a list, or ``"*"`` for every deployed model) instead of ``model`` expands the
    entry into one class per model, splitting ``weight`` by ``popularity`` (default: Zipf
    with s = 1, the first listed model the most popular). ``rate_rps`` (with an optional
    ``arrival``, default Poisson) gives the class its own arrival process instead of a share
    of the workload's (with ``models``, each model gets its popularity share of the rate).
    ``match`` (trace workloads) takes the trace rows whose labels have the given values, e.g.
    ``{model: GPT-4}``.
    """

    _omit_none = ("model", "models", "popularity", "rate_rps", "arrival", "match")

    model: str | None = None
    models: Annotated[tuple[str, ...], Field(strict=False)] | Literal["*"] | None = None
    popularity: Popularity | None = None
    tenant: str = "default"
    weight: float = Field(default=1.0, gt=0)
    rate_rps: float | None = Field(default=None, gt=0)
    arrival: ArrivalSpec | None = None
    match: Match | None = None
    input_tokens: Size | None = None
    output_tokens: Size | None = None
    input_samples: Size = SizeSpec.model_validate({"dist": "fixed", "value": 1})
    lengths: JointLengths | None = None
    slo: SloSpec = SloSpec()
    priority: int = 0

    @model_validator(mode="after")
    def _check(self) -> MixEntry:
        if self.lengths is not None and (self.input_tokens is not None or self.output_tokens is not None):
            raise ValueError("give either 'lengths' (joint pairs) or input_tokens/output_tokens, not both")
        if (self.model is None) == (self.models is None):
            raise ValueError("give 'model' (one model) or 'models' (a list, or '*' for all deployed models)")
        if self.models is not None and self.models != "*" and not self.models:
            raise ValueError("'models' lists no model")
        if self.popularity is not None and self.models is None:
            raise ValueError("'popularity' splits the weight of an entry with several 'models'; this entry has one")
        if self.arrival is not None and self.rate_rps is None and self.arrival.process not in ("replay",):
            raise ValueError(
                f"an entry's own arrival process ('{self.arrival.process}') needs the entry's rate_rps (its mean rate)"
            )
        return self


class WorkloadSpec(_OmitNone, _Spec):
    """Where requests come from and what they are.

    Arrivals at ``rate_rps`` (the mean, requests/s) from ``arrival``, until ``num_requests``
    or ``duration_s`` (whichever comes first), with request classes drawn from ``mix`` by
    weight. Or arrivals from a ``trace`` (see :class:`TraceSpec`), which ends by itself;
    ``rate_rps`` then rescales its time so that the requests run (the first
    ``num_requests``, or all) have that mean rate, and ``num_requests``/``duration_s`` cut it
    short.
    """

    _omit_none = ("rate_rps", "trace")
    _omit_beside = (("arrival", "trace"),)  # a trace's arrivals are its own

    rate_rps: float | None = Field(default=None, gt=0)
    arrival: ArrivalSpec = ArrivalSpec()
    trace: TraceSpec | None = None
    num_requests: int | None = Field(default=None, gt=0)
    duration_s: float | None = Field(default=None, gt=0)
    mix: tuple[MixEntry, ...] = Field(min_length=1, strict=False)  # a YAML list, kept as a tuple

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        ends = self.trace is not None or (self.arrival.process == "replay" and not self.arrival.params.get("loop"))
        if self.num_requests is None and self.duration_s is None and not ends:
            raise ValueError("give num_requests or duration_s (or both: whichever is reached first)")
        if self.trace is not None and "arrival" in self.model_fields_set:
            raise ValueError(
                "give either 'trace' (arrivals, sizes and labels from a trace) or 'arrival', not both;"
                " to replay only a trace's timestamps, use arrival: {process: replay, trace: {...}}"
            )
        for i, entry in enumerate(self.mix):
            if entry.match is not None and self.trace is None:
                raise ValueError(f"mix.{i}.match selects rows of a trace: give workload.trace")
            if self.trace is not None and (entry.arrival is not None or entry.rate_rps is not None):
                raise ValueError(
                    f"mix.{i}: a trace workload's arrivals come from the trace: remove the entry's arrival/rate_rps"
                )
        return self


class ClusterSpec(_Spec):
    """The hardware: a profile, how many nodes (default: as many as the models need) and the
    default number of replicas of each model."""

    profile: str = "a100-sxm-80gb"
    nodes: int | None = Field(default=None, gt=0)
    devices_per_node: int | None = Field(default=None, gt=0)
    replicas: int = Field(default=1, gt=0)


class KVCacheSpec(_Spec):
    """A decoder's KV cache: paged blocks (vLLM's ``block_size``, default 16 tokens),
    preemption by ``recompute`` or ``swap`` (to ``swap_space_gib`` of host memory per device),
    the ``watermark`` fraction of blocks kept free when admitting, prefix caching over units of
    ``prefix_block_tokens``, and ``reserve_gib`` of device memory set aside for the runtime
    (CUDA context, communication buffers) before the cache is sized."""

    block_tokens: int = Field(default=16, gt=0)
    preemption: Literal["recompute", "swap"] = "recompute"
    swap_space_gib: float = Field(default=4.0, ge=0)
    watermark: float = Field(default=0.01, ge=0, lt=1)
    prefix_caching: bool = False
    prefix_block_tokens: int = Field(default=512, gt=0)
    reserve_gib: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> KVCacheSpec:
        if self.prefix_block_tokens % self.block_tokens:
            raise ValueError(
                f"prefix_block_tokens ({self.prefix_block_tokens}) must be a multiple of"
                f" block_tokens ({self.block_tokens})"
            )
        return self


class DecodePoolSpec(_Spec):
    """The decode pool of a disaggregated deployment (Splitwise, DistServe): ``replicas``
    instances, on devices of ``profile`` (default: the cluster's), with their own parallelism,
    batching, scheduling, routing (default: the experiment's) and memory fraction (default:
    the deployment's). The deployment's own replicas become the prefill pool: each request is
    prefilled there, emits its first token, and its KV cache moves to a decode replica over
    the link between them. ``kv_transfer``: ``after_prefill`` (DistServe: the whole cache
    moves once the prefill ends) or ``layerwise`` (Splitwise: each layer's KV is sent as soon
    as it is computed, so only the last layer's transfer is not hidden behind the prefill)."""

    replicas: int = Field(gt=0)
    profile: str | None = None
    tensor_parallel: int = Field(default=1, gt=0)
    pipeline_parallel: int = Field(default=1, gt=0)
    pipeline_microbatches: int | None = Field(default=None, gt=0)
    expert_parallel: int = Field(default=1, gt=0)
    batching: PolicySpec | None = None
    scheduling: PolicySpec | None = None
    routing: PolicySpec | None = None
    memory_utilization: float | None = Field(default=None, gt=0, le=1)
    kv_transfer: Literal["after_prefill", "layerwise"] = "after_prefill"


class DeploymentSpec(_Spec):
    """One served model: its architecture (default: the deployment's name), replicas, dtype,
    parallelism, batching and scheduling policies, and the fraction of device memory it may use
    (as vLLM's ``gpu_memory_utilization``).

    Parallelism: ``tensor_parallel`` devices split each layer (Megatron-style, two all-reduces
    per layer); ``pipeline_parallel`` stages split the layers, an iteration flowing through
    them as ``pipeline_microbatches`` micro-batches (default: one per stage) with send/recv
    between stages, which may sit on different nodes; ``expert_parallel`` devices share a
    mixture-of-experts model's experts (attention data-parallel over them, dispatch and
    combine all-to-alls, the step waiting for the busiest device under Zipf
    ``moe_routing_skew``). Data parallelism is ``replicas``.

    ``decode_pool`` disaggregates prefill and decode (:class:`DecodePoolSpec`).

    A request longer than the model's context (``input_tokens + output_tokens``) is rejected,
    or, with ``context_overflow: truncate``, its prompt is cut from the left to fit (and its
    output too if that alone does not fit); either way it is counted."""

    architecture: str | None = None
    replicas: int | None = Field(default=None, gt=0)
    dtype: str | None = None
    tensor_parallel: int = Field(default=1, gt=0)
    pipeline_parallel: int = Field(default=1, gt=0)
    pipeline_microbatches: int | None = Field(default=None, gt=0)
    expert_parallel: int = Field(default=1, gt=0)
    moe_routing_skew: float = Field(default=0.0, ge=0)
    batching: PolicySpec = PolicySpec(policy="none")
    scheduling: PolicySpec = PolicySpec(policy="fcfs")
    memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_cache: KVCacheSpec = KVCacheSpec()
    context_overflow: Literal["reject", "truncate"] = "reject"
    decode_pool: DecodePoolSpec | None = None


class EngineSpec(_Spec):
    """Engine options. ``coalesce_decode`` jumps over runs of identical decode iterations in
    one event (results are identical to stepping; a test proves it).
    ``timeseries_interval_s`` sets the sampling period of ``timeseries.parquet`` (default:
    the arrival window / 200, doubling after every 1,000 samples so that a long drain keeps
    the timeseries bounded). ``step_time_stream`` picks the stream of step-time ratios drawn
    under a profile with a measured runtime scatter (``runtime.*.step_time_quantiles``): runs
    that differ only in it replicate the runtime's noise over the same workload."""

    coalesce_decode: bool = True
    timeseries_interval_s: float | None = Field(default=None, gt=0)
    step_time_stream: int = Field(default=0, ge=0)


class SweepSpec(_Spec):
    """A grid over any keys (dotted paths to lists of values), times ``cases``, times
    ``seeds``. A case sets several keys together (``{name: NAME, dotted.key: value, ...}``),
    for comparing whole configurations that a grid would cross with each other; its name is
    the sweep point's ``case`` value."""

    grid: dict[str, list[Any]] = {}
    cases: list[dict[str, Any]] = []
    seeds: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
        names = []
        for i, case in enumerate(self.cases):
            name = case.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"cases.{i}.name: each case needs a name (a non-empty string)")
            if len(case) < 2:
                raise ValueError(f"cases.{i}: case '{name}' sets no keys")
            both = sorted(set(case) & set(self.grid))
            if both:
                raise ValueError(f"cases.{i}: case '{name}' sets {', '.join(both)}, which the grid also sets")
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError(f"cases: names must be distinct, got {names}")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


class ExperimentSpec(_Spec):
    """A whole experiment point: validated and frozen (one point of a sweep)."""

    name: str
    description: str = ""
    seed: int = 0
    cluster: ClusterSpec = ClusterSpec()
    models: Annotated[dict[str, DeploymentSpec], AfterValidator(FrozenDict)] = Field(min_length=1)
    routing: PolicySpec = PolicySpec(policy="round_robin")
    workload: WorkloadSpec
    engine: EngineSpec = EngineSpec()


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: a validated point of the sweep with its seed and id.

    ``source`` is the YAML file (for messages and relative paths); ``point`` the grid values
    that made this run (empty without a sweep); ``spec_hash`` identifies the run's whole
    configuration (a finished run with the same hash is not run again).
    """

    spec: ExperimentSpec
    run_id: str
    source: Path
    point: tuple[tuple[str, Any], ...]

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.spec.seed

    @property
    def base_dir(self) -> Path:
        """The folder of the YAML file, against which relative paths resolve."""
        return self.source.parent

    @property
    def spec_hash(self) -> str:
        """A SHA-256 of the run's resolved configuration."""
        blob = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def resolved(self) -> dict[str, Any]:
        """The resolved configuration as plain data (for ``config.resolved.yaml``)."""
        return self.spec.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------------------------
# YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.2 floats: PyYAML (YAML 1.1) reads `5e2` and `1e-3` as strings; a rate of 5e2 is a number.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, name: str = "<command line>") -> Any:
    """Parse YAML text with ldsim's loader (safe, duplicate keys refused, YAML 1.2 floats)."""
    stream = io.StringIO(text)
    stream.name = name  # PyYAML names this in the line/column of an error
    return yaml.load(stream, Loader=_UniqueKeyLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load`` semantics; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected an experiment mapping")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# overrides and sweeps


def _set_path(doc: dict[str, Any], path: str, value: Any, source: str) -> None:
    parts = path.split(".")
    node: Any = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"{source}: {where}: expected an index into a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            prefix = ".".join(parts[:i])
            raise ConfigError(f"{source}: {where}: '{prefix}' is a {type(node).__name__}, not a mapping")


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """Return a copy of ``doc`` with each ``key.path=value`` applied (value parsed as YAML)."""
    out = copy.deepcopy(doc)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_\-.:]+", key):
            raise ConfigError(f"command-line override '{item}': expected key.path=value, e.g. workload.rate_rps=40")
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"command-line override '{item}': value is not valid YAML: {exc}") from None
        _set_path(out, key, value, f"{source} (command line)")
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, dict):  # a policy or distribution spec: name it by what it selects
        named = next((value[k] for k in ("policy", "dist", "process") if k in value), None)
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
        return f"{_fmt(named)}.{digest}" if named is not None else digest
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+\-]", "", text.replace("/", "-")) or "x"


def _run_id(point: Sequence[tuple[str, Any]], seed: int) -> str:
    last = [k.split(".")[-1] for k, _ in point]
    names = [k if last.count(k.split(".")[-1]) > 1 else k.split(".")[-1] for k, _ in point]
    parts = [f"{re.sub(r'[^A-Za-z0-9_.]', '', n)}-{_fmt(v)}" for n, (_, v) in zip(names, point, strict=True)]
    parts.append(f"seed-{seed}")
    return "_".join(parts)


def _validate(doc: dict[str, Any], source: Path, note: str) -> ExperimentSpec:
    doc = dict(doc)
    doc.setdefault("name", source.stem)
    try:
        return ExperimentSpec.model_validate(doc)
    except ValidationError as exc:
        msg = validation_message(exc, str(source), ExperimentSpec)
        raise ConfigError(msg + (f"\n({note})" if note else "")) from None


def expand(doc: Mapping[str, Any], source: Path, overrides: Sequence[str] = ()) -> list[RunSpec]:
    """Expand a raw experiment mapping into validated :class:`RunSpec` objects.

    Command-line ``overrides`` apply first; an override of a key the sweep grid also sets
    replaces that grid axis. Each point of ``grid x seeds`` is then validated on its own.
    """
    overridden = {item.partition("=")[0] for item in overrides}
    doc = apply_overrides(dict(doc), overrides, str(source))
    raw_sweep = doc.pop("sweep", None) or {}
    if not isinstance(raw_sweep, dict):
        raise ConfigError(f"{source}: sweep: expected a mapping with 'grid' and/or 'seeds'")
    try:
        sweep = SweepSpec.model_validate(raw_sweep)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(source), SweepSpec, prefix=("sweep",))) from None
    grid = {k: v for k, v in sweep.grid.items() if k not in overridden}
    base_seed = doc.get("seed", 0)
    seeds = [base_seed] if "seed" in overridden or sweep.seeds is None else sweep.seeds
    keys = list(grid)
    cases: list[dict[str, Any]] = sweep.cases or [{}]
    runs: list[RunSpec] = []
    seen: dict[str, tuple[tuple[str, Any], ...]] = {}
    for case, values in itertools.product(cases, itertools.product(*(grid[k] for k in keys))):
        name = case.get("name")
        sets = {k: v for k, v in case.items() if k != "name" and k not in overridden}
        point = (("case", name),) * (name is not None) + tuple(zip(keys, values, strict=True))
        for seed in seeds:
            assigned = [f"{k}={json.dumps(v)}" for k, v in (*sets.items(), *zip(keys, values, strict=True))]
            assigned.append(f"seed={seed}")
            point_doc = apply_overrides(doc, assigned, str(source))
            shown = ([f"case={name}"] if name is not None else []) + assigned
            notes = [f"sweep point {', '.join(shown)}"] if point or len(seeds) > 1 else []
            if overrides:
                notes.append(f"command-line overrides: {' '.join(overrides)}")
            note = "; ".join(notes)
            spec = _validate(point_doc, source, note)
            run_id = _run_id(point, seed)
            if run_id in seen:
                run_id = f"{run_id}_{hashlib.sha256(repr(point).encode()).hexdigest()[:6]}"
            seen[run_id] = point
            runs.append(RunSpec(spec, run_id, source, point))
    return runs


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> list[RunSpec]:
    """Read, override, expand and validate an experiment file (or a shipped experiment's name).

    Returns one :class:`RunSpec` per sweep point. Only schema-level validation happens here;
    :func:`simulator.build.check_run` completes the cross-field checks.
    """
    found = find_file(path, "experiments")
    if found is None:
        raise ConfigError(f"{path}: experiment file not found")
    found = found.resolve()
    return expand(read_yaml(found), found, overrides)
