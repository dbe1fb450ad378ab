"""The simulated cluster: nodes of devices joined by links, and replicas placed on devices.

Built from a hardware profile: ``nodes`` nodes of ``devices_per_node`` devices, an
intra-node link (NVLink, PCIe) inside each node, the network between nodes, and a host link
per node. Each replica of a model takes ``tensor_parallel x pipeline_parallel x
expert_parallel`` devices: one node's when they fit in one, otherwise whole pipeline stages
on several nodes. A device holds at most one replica (sharing a device is a later feature).
Placement is first-fit in the order models are declared. Every device's memory plan (weights, activation reserve, KV
cache) must fit its memory times the deployment's utilisation fraction, or the experiment is
refused with the numbers that did not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.errors import ConfigError
from simulator.hardware import GIB, HardwareProfile

__all__ = ["Cluster", "Device", "MemoryPlan", "Placement", "check_fits"]


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device of a replica sets aside: weights, activations, KV cache."""

    weights_bytes: float
    activation_bytes: float
    kv_cache_bytes: float

    @property
    def total_bytes(self) -> float:
        """Everything reserved on the device."""
        return self.weights_bytes + self.activation_bytes + self.kv_cache_bytes


@dataclass
class Device:
    """One accelerator: its node, memory capacity, and what is placed on it."""

    device_id: int
    node: int
    memory_bytes: float
    replica: int | None = None
    reserved_bytes: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Where one replica runs: its devices, stage by stage, and the node of each pipeline
    stage (``node`` is the first stage's)."""

    replica_id: int
    model: str
    node: int
    devices: tuple[int, ...]
    stage_nodes: tuple[int, ...] = ()

    @property
    def spans_nodes(self) -> bool:
        """Whether the replica's pipeline stages sit on more than one node."""
        return len(set(self.stage_nodes)) > 1


@dataclass
class Cluster:
    """Nodes and devices of one profile, with replicas placed on them."""

    profile: HardwareProfile
    nodes: int
    devices_per_node: int
    devices: list[Device] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        profile: HardwareProfile,
        nodes: int | None,
        devices_per_node: int | None,
        demands: list[tuple[str, int, int, int]],
        where: str,
    ) -> Cluster:
        """Build a cluster and place replicas.

        ``demands``: ``(model, replicas, stage_devices, stages)`` in declaration order, where a
        replica is ``stages`` pipeline stages of ``stage_devices`` devices (its tensor- and
        expert-parallel group, which must share a node). A replica that fits in one node is
        placed whole on the first node with room; a larger one stage by stage, each stage on
        the first node with room for it. With ``nodes=None`` the cluster gets as many nodes as
        placement needs.
        """
        per_node = devices_per_node or profile.node.devices_per_node
        for model, _, group, _ in demands:
            if group > per_node:
                raise ConfigError(
                    f"{where}: models.{model}: a pipeline stage needs {group} devices"
                    f" (tensor_parallel x expert_parallel) but a node has {per_node}: a stage's"
                    f" tensor- and expert-parallel group must fit inside one node"
                )
        free: list[int] = []  # free devices per node

        def take(count: int) -> tuple[int, tuple[int, ...]]:
            node = next((i for i, f in enumerate(free) if f >= count), None)
            if node is None:
                if nodes is not None and len(free) >= nodes:
                    need = sum(r * g * s for _, r, g, s in demands)
                    parts = ", ".join(f"{m}: {r} x {g * s}" for m, r, g, s in demands)
                    raise ConfigError(
                        f"{where}: cluster.nodes ({nodes}) x {per_node} devices cannot hold the"
                        f" replicas: they need {need} devices ({parts})"
                    )
                free.append(per_node)
                node = len(free) - 1
            first = node * per_node + (per_node - free[node])
            free[node] -= count
            return node, tuple(range(first, first + count))

        plan: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        for model, replicas, group, stages in demands:
            for _ in range(replicas):
                if group * stages <= per_node:
                    node, devs = take(group * stages)
                    plan.append((model, (node,) * stages, devs))
                    continue
                placed = [take(group) for _ in range(stages)]
                plan.append((model, tuple(n for n, _ in placed), tuple(d for _, ds in placed for d in ds)))
        n_nodes = nodes if nodes is not None else max(1, len(free))
        cluster = cls(profile, n_nodes, per_node)
        cluster.devices = [Device(i, i // per_node, profile.memory_bytes) for i in range(n_nodes * per_node)]
        for rid, (model, stage_nodes, devs) in enumerate(plan):
            cluster.placements.append(Placement(rid, model, stage_nodes[0], devs, stage_nodes))
            for d in devs:
                cluster.devices[d].replica = rid
        return cluster

    def reserve(self, placement: Placement, plan: MemoryPlan, utilization: float, where: str) -> None:
        """Reserve ``plan`` on each device of ``placement``; refuse if it exceeds the budget."""
        check_fits(plan, self.profile, utilization, where)
        for d in placement.devices:
            self.devices[d].reserved_bytes = plan.total_bytes

    @property
    def device_count(self) -> int:
        """Devices in the cluster (used or not)."""
        return len(self.devices)


def check_fits(
    plan: MemoryPlan, profile: HardwareProfile, utilization: float, where: str, needs_kv: bool = False
) -> None:
    """Refuse a memory plan above ``memory x utilization`` (or, with ``needs_kv``, one that
    leaves no room for a KV cache), naming every term of the sum."""
    budget = profile.memory_bytes * utilization
    if plan.total_bytes <= budget + 1e-6 and not (needs_kv and plan.kv_cache_bytes <= 0):
        return
    raise ConfigError(
        f"{where}: a replica needs {plan.total_bytes / GIB:.1f} GiB per device (weights"
        f" {plan.weights_bytes / GIB:.1f} + activations {plan.activation_bytes / GIB:.1f}"
        f" + KV cache {plan.kv_cache_bytes / GIB:.1f}){' and room for a KV cache' if needs_kv else ''}"
        f" but {profile.name} allows {profile.device.memory_gib:g} GiB x memory_utilization"
        f" {utilization:g} = {budget / GIB:.1f} GiB; use more tensor_parallel devices, a"
        f" smaller dtype or smaller batches"
    )
