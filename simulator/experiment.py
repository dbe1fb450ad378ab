"""Resolving a run: from a validated :class:`RunSpec` to everything the engine needs.

This is where the cross-field checks live, the ones that need the registries and the
hardware profile: every model named in the workload is deployed; every architecture, policy,
arrival process and size distribution resolves, and its ``params`` fit its ``Params``; the
sizes a request class gives match what its model consumes (tokens for language models,
output tokens for decoders, samples for CNNs and recommenders); every replica's weights,
activations and KV cache fit its devices; the cluster holds every replica. ``ldsim check``
runs exactly this for every sweep point, so a run never starts on a spec that cannot run.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.cluster import Cluster, Demand, MemoryPlan, check_fits
from simulator.config import ArrivalSpec, MixEntry, RunSpec, SizeSpec
from simulator.cost import Deployment, ModelCost
from simulator.errors import ConfigError, LdsimError, did_you_mean
from simulator.hardware import GIB, HardwareProfile, load_profile
from simulator.kvcache import KVConfig
from simulator.models import CNN, DTYPE_BYTES, Architecture, Decoder, Encoder, Recommendation
from simulator.policy import PolicyParams, decision_method, validate_params
from simulator.registry import ARRIVALS, BATCHING, MODELS, ROUTING, SCHEDULING, SIZES
from simulator.request import RequestTable

__all__ = ["ClassPlan", "ModelPlan", "PolicyPlan", "ResolvedRun", "resolve"]


@dataclass(frozen=True)
class PolicyPlan:
    """A resolved policy: its registry name, the object it names, and validated params."""

    name: str
    target: Any
    params: PolicyParams | None

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for the resolved configuration."""
        dumped = self.params.model_dump() if self.params is not None else {}
        return {"policy": self.name, **dumped}


@dataclass
class ModelPlan:
    """One deployed model, resolved: architecture, cost model, policies, memory plan."""

    name: str
    arch: Architecture
    dtype: str
    tp: int
    replicas: int
    cost: ModelCost
    batching: PolicyPlan
    scheduling: PolicyPlan
    memory: MemoryPlan
    memory_utilization: float
    max_batch_size: int | None
    kv: KVConfig | None = None
    preemption: str = "recompute"
    context_overflow: str = "reject"
    devices_per_replica: int = 1
    stage_devices: int = 1  # devices of one pipeline stage (they share a node)
    role: str = "serve"  # or "prefill"/"decode": a pool of a disaggregated deployment
    profile: Any = None  # the HardwareProfile of its devices
    devices_per_node: int = 0
    decode: ModelPlan | None = None  # a disaggregated deployment's decode pool
    kv_transfer: str = "after_prefill"
    decode_routing: PolicyPlan | None = None  # None: the experiment's routing

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache of one replica holds (0 for models without one)."""
        return self.kv.capacity_tokens if self.kv is not None else 0

    def pool(self, role: str) -> ModelPlan:
        """The plan of the pool with ``role``: its decode pool for ``"decode"``, itself otherwise."""
        if role == "decode":
            assert self.decode is not None
            return self.decode
        return self

    def demand(self, key: str) -> Demand:
        """What this pool's replicas ask of the cluster."""
        return Demand(
            self.name,
            self.replicas,
            self.stage_devices,
            self.devices_per_replica // self.stage_devices,
            self.profile,
            self.devices_per_node,
            self.role,
            key,
        )


@dataclass
class ClassPlan:
    """One request class: one model of a mix entry, with its samplers built (it is what
    :class:`workloads.mix.RequestClass` describes).

    ``weight``: the class's share of the shared arrivals (the entry's weight times the
    model's popularity share). ``arrival``/``rate_rps``: the class's own arrival process and
    mean rate (requests/s), ``None`` when it shares the workload's. ``token_input``: the model
    takes input tokens (decoders, encoders); ``autoregressive``: it generates output tokens.
    ``priority``, ``slo_s`` (TTFT, TPOT, e2e in seconds, ``nan``: none) and ``match`` (the
    trace labels it takes rows by) come from the entry.
    """

    entry: MixEntry
    model_code: int
    tenant_code: int
    input_tokens: Any | None
    output_tokens: Any | None
    input_samples: Any
    lengths: tuple[np.ndarray, np.ndarray] | None
    model: str = ""
    weight: float = 1.0
    token_input: bool = False
    autoregressive: bool = False
    arrival: Any = None
    rate_rps: float | None = None
    priority: int = 0
    slo_s: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    match: Any = None


@dataclass
class ResolvedRun:
    """Everything one run needs, checked. Build with :func:`resolve`.

    ``arrival`` is the workload's shared arrival process (``None`` for a trace workload);
    ``trace`` the :class:`workloads.traces.Trace` a trace workload replays (windowed, capped
    and scaled as the spec asks).
    """

    run: RunSpec
    profile: HardwareProfile
    cluster: Cluster
    models: dict[str, ModelPlan]
    routing: PolicyPlan
    arrival: Any
    classes: list[ClassPlan]
    tenants: list[str]
    notes: list[str] = field(default_factory=list)
    trace: Any = None

    def plans(self) -> list[ModelPlan]:
        """Every pool's plan: each deployment's, and its decode pool's when disaggregated."""
        return [p for m in self.models.values() for p in (m, m.decode) if p is not None]

    @property
    def closed_loop(self) -> bool:
        """Whether arrivals come from closed-loop clients (fed back by the engine)."""
        return hasattr(self.arrival, "clients")

    def iter_workload(self, seed_seq: np.random.SeedSequence) -> Iterator[Any]:
        """The run's requests as :class:`workloads.mix.RequestColumns` chunks in arrival order
        (bounded memory for any number of requests; see :mod:`workloads.mix` for how
        ``seed_seq`` is split)."""
        from workloads.mix import closed_loop_requests, requests_from_trace, stream_requests

        wl = self.run.spec.workload
        if self.trace is not None:
            yield requests_from_trace(self.classes, self.trace, seed_seq, wl.num_requests, wl.duration_s)
        elif self.closed_loop:
            assert wl.num_requests is not None
            yield closed_loop_requests(self.classes, wl.num_requests, seed_seq)
        else:
            yield from stream_requests(
                self.classes, self.arrival, wl.rate_rps, seed_seq, wl.num_requests, wl.duration_s
            )

    def generate_workload(self, seed_seq: np.random.SeedSequence) -> RequestTable:
        """Draw the run's requests (arrivals, classes, sizes) from ``seed_seq`` as one table.

        Independent generators are derived for the arrivals, the class choice and each
        class's sizes, so changing one class's sizes does not move the arrivals. For
        closed-loop clients the table holds the requests in the order they will be issued,
        with ``arrival_s`` ``nan`` until the engine issues them (see
        :meth:`closed_loop_clients`).
        """
        from workloads.mix import RequestColumns

        cols = RequestColumns.concat(list(self.iter_workload(seed_seq)))
        init = [f.name for f in dataclasses.fields(RequestTable) if f.init]
        return RequestTable(**cols.table_kwargs(init), model_names=list(self.models), tenant_names=self.tenants)

    def closed_loop_clients(self, seed_seq: np.random.SeedSequence) -> Any:
        """The closed-loop clients of a run (a :class:`workloads.arrivals.ClosedLoopClients`),
        drawing think times from ``seed_seq``'s arrival child; ``None`` for open-loop
        arrivals. Pass the same ``seed_seq`` as to :meth:`generate_workload`."""
        if not self.closed_loop:
            return None
        from workloads.mix import child_seed

        wl = self.run.spec.workload
        return self.arrival.clients(wl.num_requests, wl.duration_s, np.random.default_rng(child_seed(seed_seq, 0)))


def _architecture(name: str, where: str) -> Architecture:
    target = MODELS.resolve(name)
    arch = target() if callable(target) and not isinstance(target, Architecture) else target
    if not isinstance(arch, Architecture):
        raise ConfigError(f"{where}: '{name}' did not produce a model architecture (got {type(arch).__name__})")
    return arch


def _policy(registry: Any, spec: Any, source: str, prefix: tuple[Any, ...], name_key: str = "policy") -> PolicyPlan:
    name = getattr(spec, name_key)
    where = f"{source}: {'.'.join(str(p) for p in prefix)}.{name_key}"
    try:
        target = registry.resolve(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    family = registry.family
    if family in ("batching", "scheduling", "routing"):
        method = decision_method(family)
        if not callable(target) or (isinstance(target, type) and not callable(getattr(target, method, None))):
            raise ConfigError(
                f"{where}: '{name}' ({getattr(target, '__qualname__', type(target).__name__)}) is not a"
                f" {family} policy: it has no method '{method}' (write one, or give a plain function)"
            )
    params = validate_params(target, spec.params, source, prefix, name_key)
    return PolicyPlan(name, target, params)


def _size(spec: SizeSpec | None, source: str, prefix: tuple[Any, ...], base_dir: Path) -> Any:
    if spec is None:
        return None
    plan = _policy(SIZES, spec, source, prefix, "dist")
    try:
        return plan.target(plan.params, base_dir)
    except LdsimError as exc:
        raise ConfigError(f"{source}: {'.'.join(map(str, prefix))}: {exc}") from None


#: Parameter names under which batching policies state their limits.
_BATCH_LIMITS = ("max_batch_size", "max_num_seqs")
_TOKEN_LIMITS = ("max_num_batched_tokens", "max_batch_tokens", "chunk_tokens")


def _limit(params: Any, names: tuple[str, ...]) -> int | None:
    return next((int(getattr(params, n)) for n in names if getattr(params, n, None) is not None), None)


def _activation_bytes(arch: Architecture, dtype: str, tp: int, batching: PolicyPlan) -> tuple[float, int | None]:
    """Peak activation memory of one forward pass at the policy's limits, and the batch-size
    limit. A decoder reserves a pass of its token budget (as vLLM profiles one of
    ``max_num_batched_tokens``); without one, of ``max(context, 2048)`` tokens, vLLM's default
    budget without chunked prefill."""
    params = batching.params
    max_batch = _limit(params, _BATCH_LIMITS)
    batch = max_batch or 1
    if isinstance(arch, Decoder):
        tokens = _limit(params, _TOKEN_LIMITS) or max(arch.max_context_tokens, 2048)
        return arch.activation_bytes(min(tokens, batch * arch.max_context_tokens), dtype, tp), max_batch
    if isinstance(arch, Encoder):
        return arch.activation_bytes(batch, arch.max_positions, dtype) / tp, max_batch
    if isinstance(arch, CNN | Recommendation):
        return arch.activation_bytes(batch, dtype), max_batch
    return 0.0, max_batch


def _kv_config(
    arch: Decoder,
    dtype: str,
    deployment: Deployment,
    profile: HardwareProfile,
    dep: Any,
    weights: float,
    activations: float,
    utilization: float,
) -> KVConfig:
    """Size a decoder replica's paged KV cache as vLLM does (see :mod:`simulator.kvcache`).

    A block holds ``block_tokens`` tokens of the layers of one pipeline stage (``1/pp`` of
    them) and the KV heads of one tensor-parallel shard; with expert parallelism each of the
    ``ep`` devices holds the KV of its own sequences, so the replica has ``ep`` times the
    blocks of one device."""
    spec = dep.kv_cache
    block_bytes = spec.block_tokens * arch.kv_bytes_per_token(dtype, deployment.tp) / deployment.pp
    free = profile.memory_bytes * utilization - weights - activations - spec.reserve_gib * GIB
    blocks = max(0, int(free // block_bytes)) * deployment.ep
    return KVConfig(
        total_blocks=blocks,
        block_tokens=spec.block_tokens,
        block_bytes=block_bytes,
        watermark_blocks=int(spec.watermark * blocks),
        cpu_blocks=int(spec.swap_space_gib * GIB // block_bytes),
        prefix_block_tokens=spec.prefix_block_tokens if spec.prefix_caching else 0,
    )


def _check_pp_ep(arch: Architecture, dep: Any, where: str) -> None:
    """Pipeline and expert parallelism: decoders only; experts split evenly; EP without TP."""
    pp, ep = dep.pipeline_parallel, dep.expert_parallel
    if (pp > 1 or ep > 1) and not isinstance(arch, Decoder):
        raise ConfigError(
            f"{where}: pipeline_parallel ({pp}) and expert_parallel ({ep}) are modelled for decoder"
            f" LLMs; {arch.name} is a {arch.family}"
        )
    if isinstance(arch, Decoder):
        if pp > arch.layers:
            raise ConfigError(f"{where}: pipeline_parallel ({pp}) exceeds the {arch.layers} layers of {arch.name}")
        if ep > 1:
            if arch.experts == 1:
                raise ConfigError(
                    f"{where}: expert_parallel ({ep}) needs a mixture-of-experts model; {arch.name} has no experts"
                )
            if arch.experts % ep:
                raise ConfigError(
                    f"{where}: expert_parallel ({ep}) must divide the {arch.experts} experts of {arch.name}"
                )
            if dep.tensor_parallel > 1:
                raise ConfigError(
                    f"{where}: expert_parallel ({ep}) with tensor_parallel ({dep.tensor_parallel}) is not"
                    f" modelled: with EP, attention is data-parallel over the EP devices"
                )


def _check_tp(arch: Architecture, tp: int, where: str) -> None:
    if tp == 1:
        return
    if isinstance(arch, Decoder):
        if arch.heads % tp or (arch.kv_heads % tp and tp % arch.kv_heads):
            raise ConfigError(
                f"{where}: tensor_parallel ({tp}) must divide the {arch.heads} attention"
                f" heads and the {arch.kv_heads} KV heads of {arch.name}"
            )
    elif isinstance(arch, Encoder):
        if arch.heads % tp:
            raise ConfigError(f"{where}: tensor_parallel ({tp}) must divide the {arch.heads} heads of {arch.name}")
    else:
        raise ConfigError(
            f"{where}: tensor_parallel ({tp}) is modelled for transformer models only; {arch.name} is a {arch.family}"
        )


def plugin_search_path(run: RunSpec) -> None:
    """Let plug-ins named as ``module:Class`` live beside the experiment file or in the cwd."""
    for folder in (str(run.base_dir), os.getcwd()):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _model_plan(
    name: str,
    arch: Architecture,
    dtype: str,
    pool: Any,
    dep: Any,
    profile: HardwareProfile,
    per_node: int,
    replicas: int,
    source: str,
    where: str,
    prefix: tuple[Any, ...],
    role: str,
) -> ModelPlan:
    """Resolve one pool of replicas of a deployment: ``pool`` gives parallelism, policies and
    memory fraction (the deployment itself, or its decode pool, whose unset policies and
    memory fraction come from the deployment ``dep``); ``dep`` the KV cache and context
    settings."""
    try:
        profile.peak_flops(dtype)
    except ConfigError as exc:
        raise ConfigError(f"{where}.dtype: {exc}" if pool is dep else f"{where}.profile: {exc}") from None
    _check_tp(arch, pool.tensor_parallel, where)
    _check_pp_ep(arch, pool, where)
    batching_spec = pool.batching or dep.batching
    scheduling_spec = pool.scheduling or dep.scheduling
    base = prefix if pool.batching is not None else prefix[:2]
    batching = _policy(BATCHING, batching_spec, source, (*base, "batching"))
    base = prefix if pool.scheduling is not None else prefix[:2]
    scheduling = _policy(SCHEDULING, scheduling_spec, source, (*base, "scheduling"))
    utilization = pool.memory_utilization or dep.memory_utilization
    tp, pp, ep = pool.tensor_parallel, pool.pipeline_parallel, pool.expert_parallel
    if tp * ep > per_node:
        what = f"{where}.tensor_parallel ({tp})" + (f" x expert_parallel ({ep})" if ep > 1 else "")
        raise ConfigError(
            f"{what} exceeds the devices per node ({per_node}): a pipeline stage's tensor- and"
            f" expert-parallel group must fit inside one node (pipeline stages may span nodes)"
        )
    deployment = Deployment(
        arch,
        dtype,
        tp,
        pp,
        ep,
        dep.moe_routing_skew,
        pool.pipeline_microbatches,
        cross_node=tp * pp * ep > per_node,
    )
    if isinstance(arch, Decoder):
        weights = arch.weight_bytes_per_device(dtype, tp, pp, ep)
    else:
        weights = arch.weight_bytes(dtype, tp)
    activations, max_batch = _activation_bytes(arch, dtype, tp, batching)
    kv_config = None
    kv_bytes = 0.0
    if isinstance(arch, Decoder):
        kv_config = _kv_config(arch, dtype, deployment, profile, dep, weights, activations, utilization)
        kv_bytes = kv_config.total_blocks * kv_config.block_bytes / ep
    memory = MemoryPlan(weights, activations + dep.kv_cache.reserve_gib * GIB, kv_bytes)
    check_fits(memory, profile, utilization, where, needs_kv=isinstance(arch, Decoder))
    return ModelPlan(
        name=name,
        arch=arch,
        dtype=dtype,
        tp=tp,
        replicas=replicas,
        cost=ModelCost(deployment, profile),
        devices_per_replica=deployment.devices,
        stage_devices=tp * ep,
        batching=batching,
        scheduling=scheduling,
        memory=memory,
        memory_utilization=utilization,
        max_batch_size=max_batch,
        kv=kv_config,
        preemption=dep.kv_cache.preemption,
        context_overflow=dep.context_overflow,
        role=role,
        profile=profile,
        devices_per_node=per_node,
    )


def resolve(run: RunSpec) -> ResolvedRun:
    """Resolve and check one run (see the module docstring). Raises :class:`ConfigError`.

    Plug-ins named as ``module:Class`` are imported from ``sys.path`` with the experiment's
    folder and the current directory added in front.
    """
    plugin_search_path(run)
    spec = run.spec
    source = str(run.source)
    try:
        profile = load_profile(spec.cluster.profile)
    except ConfigError as exc:
        raise ConfigError(f"{source}: cluster.profile: {exc}") from None

    models: dict[str, ModelPlan] = {}
    demands: list[Demand] = []
    per_node = spec.cluster.devices_per_node or profile.node.devices_per_node
    for name, dep in spec.models.items():
        where = f"{source}: models.{name}"
        arch_name = dep.architecture or name
        try:
            arch = _architecture(arch_name, where)
        except ConfigError as exc:
            key = "architecture" if dep.architecture else "(name)"
            raise ConfigError(f"{where}.{key}: {exc}") from None
        dtype = dep.dtype or arch.default_dtype
        if dtype not in DTYPE_BYTES:
            raise ConfigError(f"{where}.dtype: unknown dtype '{dtype}'{did_you_mean(dtype, DTYPE_BYTES)}")
        pool = dep.decode_pool
        if pool is not None and not isinstance(arch, Decoder):
            raise ConfigError(
                f"{where}.decode_pool: disaggregated prefill and decode is for decoder LLMs; {arch.name} is a"
                f" {arch.family}"
            )
        plan = _model_plan(
            name,
            arch,
            dtype,
            dep,
            dep,
            profile,
            per_node,
            dep.replicas or spec.cluster.replicas,
            source,
            where,
            ("models", name),
            role="prefill" if pool is not None else "serve",
        )
        demands.append(plan.demand(f"models.{name}"))
        if pool is not None:
            pool_where = f"{where}.decode_pool"
            pool_profile = profile
            if pool.profile is not None:
                try:
                    pool_profile = load_profile(pool.profile)
                except ConfigError as exc:
                    raise ConfigError(f"{pool_where}.profile: {exc}") from None
            pool_per_node = per_node if pool_profile is profile else pool_profile.node.devices_per_node
            plan.decode = _model_plan(
                name,
                arch,
                dtype,
                pool,
                dep,
                pool_profile,
                pool_per_node,
                pool.replicas,
                source,
                pool_where,
                ("models", name, "decode_pool"),
                role="decode",
            )
            plan.kv_transfer = pool.kv_transfer
            if pool.routing is not None:
                plan.decode_routing = _policy(ROUTING, pool.routing, source, ("models", name, "decode_pool", "routing"))
            demands.append(plan.decode.demand(f"models.{name}.decode_pool"))
        models[name] = plan

    cluster = Cluster.build(profile, spec.cluster.nodes, spec.cluster.devices_per_node, demands, source)
    for placement in cluster.placements:
        plan = models[placement.model].pool(placement.role)
        key = "models." + plan.name + (".decode_pool" if placement.role == "decode" else "")
        cluster.reserve(placement, plan.memory, plan.memory_utilization, f"{source}: {key}")

    routing = _policy(ROUTING, spec.routing, source, ("routing",))
    arrival, classes, tenants, trace, notes = _resolve_workload(run, models)
    return ResolvedRun(run, profile, cluster, models, routing, arrival, classes, tenants, notes, trace)


def _build_arrival(plan: PolicyPlan, base_dir: Path, where: str) -> Any:
    """Build an arrival process; one whose constructor takes ``base_dir`` gets the
    experiment's folder (for files named relative to it)."""
    target = plan.target
    kwargs: dict[str, Any] = {}
    try:
        if "base_dir" in inspect.signature(target).parameters:
            kwargs["base_dir"] = base_dir
    except (TypeError, ValueError):  # a builtin or C callable: no signature
        pass
    try:
        return target(plan.params, **kwargs) if plan.params is not None else target(**kwargs)
    except LdsimError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _resolve_workload(
    run: RunSpec, models: dict[str, ModelPlan]
) -> tuple[Any, list[ClassPlan], list[str], Any, list[str]]:
    """The workload part of :func:`resolve`: the arrival process (or the trace), and the mix
    expanded into request classes with their samplers built and checked."""
    spec = run.spec
    wl = spec.workload
    source = str(run.source)
    notes: list[str] = []
    trace = None
    arrival = None
    if wl.trace is not None:
        from workloads.traces import read_trace

        if wl.rate_rps is not None and wl.trace.params.get("rate_scale") is not None:
            raise ConfigError(
                f"{source}: workload.rate_rps ({wl.rate_rps:g}) and workload.trace.rate_scale"
                f" ({wl.trace.params['rate_scale']}) both set the trace's rate: give one"
            )
        trace = read_trace({"format": wl.trace.format, **wl.trace.params}, run.base_dir, source, ("workload", "trace"))
        if wl.rate_rps is not None:  # the part that will run has the mean rate rate_rps
            part = trace.head(wl.num_requests) if wl.num_requests is not None else trace
            trace = trace.scaled(wl.rate_rps / part.mean_rate_rps)
        notes.append(f"trace {trace.source}: {trace.stats.summary()}")
    else:
        arrival_plan = _policy(ARRIVALS, wl.arrival, source, ("workload", "arrival"), "process")
        arrival = _build_arrival(arrival_plan, run.base_dir, f"{source}: workload.arrival")
        shared = any(e.arrival is None and e.rate_rps is None for e in wl.mix)
        if wl.rate_rps is None and shared and getattr(arrival, "needs_rate", True):
            raise ConfigError(
                f"{source}: workload.rate_rps: required by the arrival process '{wl.arrival.process}'"
                f" (the mean rate, requests/s) of the mix entries without their own rate_rps"
            )
        if hasattr(arrival, "clients"):
            _check_closed_loop(run, source)
            with_own = [i for i, e in enumerate(wl.mix) if e.arrival is not None or e.rate_rps is not None]
            if with_own:
                raise ConfigError(
                    f"{source}: workload.mix.{with_own[0]}: with closed-loop clients every request comes"
                    f" from a client: remove the entry's arrival/rate_rps"
                )
    tenants: list[str] = []
    classes: list[ClassPlan] = []
    model_names = list(models)
    for i, entry in enumerate(wl.mix):
        prefix = ("workload", "mix", i)
        where = f"{source}: workload.mix.{i}"
        names = [entry.model] if entry.model is not None else model_names if entry.models == "*" else entry.models
        assert names is not None
        for name in names:
            if name not in models:
                key = "model" if entry.model is not None else "models"
                raise ConfigError(
                    f"{where}.{key}: '{name}' is not a deployed model{did_you_mean(name, model_names, 'deployed')}"
                )
            _check_sizes(entry, models[name].arch, where, trace, name)
        if entry.tenant not in tenants:
            tenants.append(entry.tenant)
        if entry.match is not None:
            _check_match(entry.match, trace, where)
        lengths = _lengths(entry, run, source, prefix, where)
        own_plan = None
        if entry.arrival is not None or entry.rate_rps is not None:
            own_spec = entry.arrival if entry.arrival is not None else ArrivalSpec()
            own_plan = _policy(ARRIVALS, own_spec, source, (*prefix, "arrival"), "process")
        slo = entry.slo
        ttft, tpot, e2e = (v / 1e3 if v is not None else math.nan for v in (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms))
        sizes = {
            key: _size(getattr(entry, key), source, (*prefix, key), run.base_dir)
            for key in ("input_tokens", "output_tokens", "input_samples")
        }
        for name, share in zip(names, _popularity(entry, len(names)), strict=True):
            arch = models[name].arch
            own = _build_arrival(own_plan, run.base_dir, f"{where}.arrival") if own_plan is not None else None
            if hasattr(own, "clients"):
                raise ConfigError(
                    f"{where}.arrival: closed-loop clients drive the whole workload: use workload.arrival"
                )
            classes.append(
                ClassPlan(
                    entry=entry,
                    model_code=model_names.index(name),
                    tenant_code=tenants.index(entry.tenant),
                    input_tokens=sizes["input_tokens"],
                    output_tokens=sizes["output_tokens"],
                    input_samples=sizes["input_samples"],
                    lengths=lengths,
                    model=name,
                    weight=entry.weight * share,
                    token_input=arch.family in ("decoder", "encoder"),
                    autoregressive=arch.autoregressive,
                    arrival=own,
                    rate_rps=entry.rate_rps * share if entry.rate_rps is not None else None,
                    priority=entry.priority,
                    slo_s=(ttft, tpot, e2e),
                    match=entry.match,
                )
            )
    if trace is not None:
        from workloads.mix import assign_classes

        unmatched = int(np.sum(assign_classes(classes, trace, np.random.default_rng(0)) < 0))
        if unmatched:
            notes.append(f"{unmatched:,} trace requests match no mix entry and are left out")
    return arrival, classes, tenants, trace, notes


def _popularity(entry: MixEntry, n: int) -> list[float]:
    """The shares of an entry's weight among its ``n`` models (1 for a single model)."""
    if n == 1 and entry.popularity is None:
        return [1.0]
    pop = entry.popularity
    if pop is None or pop.dist == "zipf":
        s = pop.s if pop is not None else 1.0
        raw = [1.0 / (k + 1) ** s for k in range(n)]
    else:
        raw = [1.0] * n
    total = sum(raw)
    return [r / total for r in raw]


def _lengths(
    entry: MixEntry, run: RunSpec, source: str, prefix: tuple[Any, ...], where: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The joint (input, output) pairs of ``entry.lengths``: two columns of a file, or a trace."""
    spec = entry.lengths
    if spec is None:
        return None
    from workloads.traces import read_numeric_columns, read_trace, resolve_data_file

    if spec.format is not None:
        trace = read_trace({"format": spec.format, "file": spec.file}, run.base_dir, source, (*prefix, "lengths"))
        if trace.input_tokens is None or trace.output_tokens is None:
            raise ConfigError(f"{where}.lengths.format: a '{spec.format}' trace has no input and output token counts")
        return trace.input_tokens, trace.output_tokens
    assert spec.input_column is not None and spec.output_column is not None
    path = resolve_data_file(spec.file, run.base_dir, f"{where}.lengths.file")
    cols = read_numeric_columns(path, [spec.input_column, spec.output_column], f"{where}.lengths")
    return cols[spec.input_column], cols[spec.output_column]


def _check_match(match: Any, trace: Any, where: str) -> None:
    """Every label a ``match`` names exists in the trace, and every value occurs in it."""
    for label, values in match.items():
        if label not in trace.labels:
            known = sorted(trace.labels)
            raise ConfigError(
                f"{where}.match.{label}: the '{trace.format}' trace has no label '{label}'"
                f"{did_you_mean(label, known, 'labels') if known else '; it has no labels'}"
            )
        names = trace.labels[label].names
        for value in values:
            if value not in names:
                shown = list(trace.labels[label].counts())[:12]
                raise ConfigError(
                    f"{where}.match.{label}: no request of the trace has {label} '{value}'"
                    f"{did_you_mean(value, shown, 'most frequent')}"
                )


def _check_closed_loop(run: RunSpec, source: str) -> None:
    """Closed-loop clients need a budget of requests."""
    if run.spec.workload.num_requests is None:
        raise ConfigError(
            f"{source}: workload.num_requests: closed-loop clients need a budget of requests"
            f" (duration_s may cut it short)"
        )


def _check_sizes(entry: MixEntry, arch: Architecture, where: str, trace: Any = None, model: str | None = None) -> None:
    """The sizes a class gives (or its trace supplies) are what its model consumes."""
    family = arch.family
    model = model or entry.model
    from_trace_in = trace is not None and trace.input_tokens is not None and family in ("decoder", "encoder")
    from_trace_out = trace is not None and trace.output_tokens is not None and family == "decoder"
    has_in = entry.input_tokens is not None or entry.lengths is not None or from_trace_in
    has_out = entry.output_tokens is not None or entry.lengths is not None or from_trace_out
    if family == "decoder" and not (has_in and has_out):
        raise ConfigError(
            f"{where}: model '{model}' ({arch.name}) is a decoder: give input_tokens"
            f" and output_tokens, or lengths (joint pairs from a file)"
        )
    if family == "encoder":
        if not has_in:
            raise ConfigError(f"{where}: model '{model}' ({arch.name}) is an encoder: give input_tokens")
        if has_out:
            raise ConfigError(
                f"{where}: model '{model}' ({arch.name}) is an encoder: it generates"
                f" no output_tokens (remove output_tokens/lengths)"
            )
    if family in ("cnn", "recommendation") and (has_in or has_out):
        raise ConfigError(
            f"{where}: model '{model}' ({arch.name}) is a {family} model: it takes"
            f" input_samples (images or queries per request), not input/output tokens"
        )
