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

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.cluster import Cluster, MemoryPlan, check_fits
from simulator.config import MixEntry, RunSpec, SizeSpec
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

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache of one replica holds (0 for models without one)."""
        return self.kv.capacity_tokens if self.kv is not None else 0


@dataclass
class ClassPlan:
    """One request class of the mix, with its size samplers built."""

    entry: MixEntry
    model_code: int
    tenant_code: int
    input_tokens: Any | None
    output_tokens: Any | None
    input_samples: Any
    lengths: tuple[np.ndarray, np.ndarray] | None


@dataclass
class ResolvedRun:
    """Everything one run needs, checked. Build with :func:`resolve`."""

    run: RunSpec
    profile: HardwareProfile
    cluster: Cluster
    models: dict[str, ModelPlan]
    routing: PolicyPlan
    arrival: Any
    classes: list[ClassPlan]
    tenants: list[str]
    notes: list[str] = field(default_factory=list)

    def generate_workload(self, seed_seq: np.random.SeedSequence) -> RequestTable:
        """Draw the run's requests (arrivals, classes, sizes) from ``seed_seq``.

        Independent generators are spawned for the arrivals, the class choice and each
        class's sizes, so changing one class's sizes does not move the arrivals.
        """
        from workloads.arrivals import arrival_times

        wl = self.run.spec.workload
        arr_ss, cls_ss, *size_ss = seed_seq.spawn(2 + len(self.classes))
        times = arrival_times(self.arrival, wl.rate_rps, np.random.default_rng(arr_ss), wl.num_requests, wl.duration_s)
        n = len(times)
        weights = np.array([c.entry.weight for c in self.classes], dtype=float)
        if len(self.classes) == 1:
            which = np.zeros(n, dtype=np.int64)
        else:
            which = np.random.default_rng(cls_ss).choice(len(self.classes), n, p=weights / weights.sum())
        cols = {
            name: np.zeros(n, dtype=np.int64)
            for name in ("model", "tenant", "input_tokens", "input_samples", "output_tokens", "priority")
        }
        slos = {name: np.full(n, np.nan) for name in ("ttft_slo_s", "tpot_slo_s", "e2e_slo_s")}
        for c_idx, (plan, ss) in enumerate(zip(self.classes, size_ss, strict=True)):
            idx = np.flatnonzero(which == c_idx)
            k = len(idx)
            rng = np.random.default_rng(ss)
            cols["model"][idx] = plan.model_code
            cols["tenant"][idx] = plan.tenant_code
            cols["priority"][idx] = plan.entry.priority
            if plan.lengths is not None:
                rows = rng.integers(0, len(plan.lengths[0]), k)
                cols["input_tokens"][idx] = plan.lengths[0][rows]
                cols["output_tokens"][idx] = plan.lengths[1][rows]
            else:
                if plan.input_tokens is not None:
                    cols["input_tokens"][idx] = plan.input_tokens.sample(k, rng)
                if plan.output_tokens is not None:
                    cols["output_tokens"][idx] = plan.output_tokens.sample(k, rng)
            cols["input_samples"][idx] = plan.input_samples.sample(k, rng)
            model = self.models[plan.entry.model]
            if model.arch.family in ("decoder", "encoder"):
                cols["input_tokens"][idx] = np.maximum(cols["input_tokens"][idx], 1)
                cols["input_samples"][idx] = 1
            else:
                cols["input_samples"][idx] = np.maximum(cols["input_samples"][idx], 1)
            if model.arch.autoregressive:
                cols["output_tokens"][idx] = np.maximum(cols["output_tokens"][idx], 1)
            slo = plan.entry.slo
            for key, value in (("ttft_slo_s", slo.ttft_ms), ("tpot_slo_s", slo.tpot_ms), ("e2e_slo_s", slo.e2e_ms)):
                if value is not None:
                    slos[key][idx] = value / 1e3
        return RequestTable(
            arrival_s=times,
            model=cols["model"].astype(np.int32),
            tenant=cols["tenant"].astype(np.int32),
            input_tokens=cols["input_tokens"],
            input_samples=cols["input_samples"],
            output_tokens=cols["output_tokens"],
            priority=cols["priority"].astype(np.int32),
            ttft_slo_s=slos["ttft_slo_s"],
            tpot_slo_s=slos["tpot_slo_s"],
            e2e_slo_s=slos["e2e_slo_s"],
            model_names=list(self.models),
            tenant_names=self.tenants,
        )


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
    arch: Decoder, dtype: str, tp: int, profile: HardwareProfile, dep: Any, weights: float, activations: float
) -> KVConfig:
    """Size a decoder replica's paged KV cache as vLLM does (see :mod:`simulator.kvcache`)."""
    spec = dep.kv_cache
    block_bytes = spec.block_tokens * arch.kv_bytes_per_token(dtype, tp)
    free = profile.memory_bytes * dep.memory_utilization - weights - activations - spec.reserve_gib * GIB
    blocks = max(0, int(free // block_bytes))
    return KVConfig(
        total_blocks=blocks,
        block_tokens=spec.block_tokens,
        block_bytes=block_bytes,
        watermark_blocks=int(spec.watermark * blocks),
        cpu_blocks=int(spec.swap_space_gib * GIB // block_bytes),
        prefix_block_tokens=spec.prefix_block_tokens if spec.prefix_caching else 0,
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
        try:
            profile.peak_flops(dtype)
        except ConfigError as exc:
            raise ConfigError(f"{where}.dtype: {exc}") from None
        _check_tp(arch, dep.tensor_parallel, where)
        batching = _policy(BATCHING, dep.batching, source, ("models", name, "batching"))
        scheduling = _policy(SCHEDULING, dep.scheduling, source, ("models", name, "scheduling"))
        tp = dep.tensor_parallel
        weights = arch.weight_bytes(dtype, tp)
        activations, max_batch = _activation_bytes(arch, dtype, tp, batching)
        kv_config = None
        kv_bytes = 0.0
        if isinstance(arch, Decoder):
            kv_config = _kv_config(arch, dtype, tp, profile, dep, weights, activations)
            kv_bytes = kv_config.total_blocks * kv_config.block_bytes
        memory = MemoryPlan(weights, activations + dep.kv_cache.reserve_gib * GIB, kv_bytes)
        check_fits(memory, profile, dep.memory_utilization, where, needs_kv=isinstance(arch, Decoder))
        models[name] = ModelPlan(
            name=name,
            arch=arch,
            dtype=dtype,
            tp=tp,
            replicas=dep.replicas or spec.cluster.replicas,
            cost=ModelCost(Deployment(arch, dtype, tp), profile),
            batching=batching,
            scheduling=scheduling,
            memory=memory,
            memory_utilization=dep.memory_utilization,
            max_batch_size=max_batch,
            kv=kv_config,
            preemption=dep.kv_cache.preemption,
        )

    cluster = Cluster.build(
        profile,
        spec.cluster.nodes,
        spec.cluster.devices_per_node,
        [(m.name, m.replicas, m.tp) for m in models.values()],
        source,
    )
    for placement in cluster.placements:
        plan = models[placement.model]
        cluster.reserve(placement, plan.memory, plan.memory_utilization, f"{source}: models.{plan.name}")

    routing = _policy(ROUTING, spec.routing, source, ("routing",))
    arrival_plan = _policy(ARRIVALS, spec.workload.arrival, source, ("workload", "arrival"), "process")
    arrival = arrival_plan.target(arrival_plan.params) if arrival_plan.params is not None else arrival_plan.target()

    tenants: list[str] = []
    classes: list[ClassPlan] = []
    model_names = list(models)
    for i, entry in enumerate(spec.workload.mix):
        prefix = ("workload", "mix", i)
        where = f"{source}: workload.mix.{i}"
        if entry.model not in models:
            raise ConfigError(
                f"{where}.model: '{entry.model}' is not a deployed model"
                f"{did_you_mean(entry.model, model_names, 'deployed')}"
            )
        arch = models[entry.model].arch
        _check_sizes(entry, arch, where)
        if entry.tenant not in tenants:
            tenants.append(entry.tenant)
        lengths = None
        if entry.lengths is not None:
            from workloads.traces import read_numeric_columns, resolve_data_file

            path = resolve_data_file(entry.lengths.file, run.base_dir, f"{where}.lengths.file")
            cols = read_numeric_columns(
                path, [entry.lengths.input_column, entry.lengths.output_column], f"{where}.lengths"
            )
            lengths = (cols[entry.lengths.input_column], cols[entry.lengths.output_column])
        classes.append(
            ClassPlan(
                entry=entry,
                model_code=model_names.index(entry.model),
                tenant_code=tenants.index(entry.tenant),
                input_tokens=_size(entry.input_tokens, source, (*prefix, "input_tokens"), run.base_dir),
                output_tokens=_size(entry.output_tokens, source, (*prefix, "output_tokens"), run.base_dir),
                input_samples=_size(entry.input_samples, source, (*prefix, "input_samples"), run.base_dir),
                lengths=lengths,
            )
        )
    return ResolvedRun(run, profile, cluster, models, routing, arrival, classes, tenants)


def _check_sizes(entry: MixEntry, arch: Architecture, where: str) -> None:
    family = arch.family
    has_in = entry.input_tokens is not None or entry.lengths is not None
    has_out = entry.output_tokens is not None or entry.lengths is not None
    if family == "decoder" and not (has_in and has_out):
        raise ConfigError(
            f"{where}: model '{entry.model}' ({arch.name}) is a decoder: give input_tokens"
            f" and output_tokens, or lengths (joint pairs from a file)"
        )
    if family == "encoder":
        if not has_in:
            raise ConfigError(f"{where}: model '{entry.model}' ({arch.name}) is an encoder: give input_tokens")
        if has_out:
            raise ConfigError(
                f"{where}: model '{entry.model}' ({arch.name}) is an encoder: it generates"
                f" no output_tokens (remove output_tokens/lengths)"
            )
    if family in ("cnn", "recommendation") and (has_in or has_out):
        raise ConfigError(
            f"{where}: model '{entry.model}' ({arch.name}) is a {family} model: it takes"
            f" input_samples (images or queries per request), not input/output tokens"
        )
