"""The simulated cluster: nodes of devices joined by links, and replicas placed on devices.

Built from hardware profiles: nodes of ``devices_per_node`` devices, an intra-node link
(NVLink, PCIe) inside each node, the network between nodes, and a host link per node. A node
holds devices of one profile; a cluster holds the experiment's profile's nodes and, when a
disaggregated deployment's decode pool names another device type, nodes of that profile too.
Each replica takes ``tensor_parallel x pipeline_parallel x expert_parallel`` devices: one
node's when they fit in one, otherwise whole pipeline stages on several nodes. A device holds
at most one replica (sharing a device is a later feature). Placement is first-fit in the
order models are declared (a deployment's prefill pool, then its decode pool). Every device's
memory plan (weights, activation reserve, KV cache) must fit its memory times the
deployment's utilisation fraction, or the experiment is refused with the numbers that did not
fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.errors import ConfigError
from simulator.hardware import GIB, HardwareProfile

__all__ = ["Cluster", "Demand", "Device", "MemoryPlan", "Placement", "check_fits"]


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
class Demand:
    """What one pool of replicas asks of the cluster: ``replicas`` replicas of ``stages``
    pipeline stages of ``stage_devices`` devices each (a stage's tensor- and expert-parallel
    group, which must share a node), on nodes of ``profile`` with ``devices_per_node``.
    ``role``: ``serve`` (a whole model), ``prefill`` or ``decode`` (a disaggregated pool);
    ``key`` names the pool's place in the experiment (``models.NAME`` or
    ``models.NAME.decode_pool``) for messages."""

    model: str
    replicas: int
    stage_devices: int
    stages: int
    profile: HardwareProfile
    devices_per_node: int
    role: str = "serve"
    key: str = ""

    @property
    def devices(self) -> int:
        """Devices one replica occupies."""
        return self.stage_devices * self.stages


@dataclass(frozen=True)
class Placement:
    """Where one replica runs: its devices, stage by stage, the node of each pipeline stage
    (``node`` is the first stage's), its ``role`` and the name of its device ``profile``."""

    replica_id: int
    model: str
    node: int
    devices: tuple[int, ...]
    stage_nodes: tuple[int, ...] = ()
    role: str = "serve"
    profile: str = ""

    @property
    def spans_nodes(self) -> bool:
        """Whether the replica's pipeline stages sit on more than one node."""
        return len(set(self.stage_nodes)) > 1


@dataclass
class Cluster:
    """Nodes and devices, with replicas placed on them.

    ``profile``/``devices_per_node`` are the experiment's device type; ``node_profiles`` gives
    each node's (a decode pool may bring another type). ``nodes`` counts all nodes.
    """

    profile: HardwareProfile
    nodes: int
    devices_per_node: int
    devices: list[Device] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    node_profiles: list[HardwareProfile] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        profile: HardwareProfile,
        nodes: int | None,
        devices_per_node: int | None,
        demands: list[Demand],
        where: str,
    ) -> Cluster:
        """Build a cluster and place the ``demands`` in order.

        A replica that fits in one node is placed whole on the first node (of its profile)
        with room; a larger one stage by stage, each stage on the first node with room for
        it. ``nodes`` caps the nodes of the experiment's ``profile`` (``None``: as many as
        placement needs); nodes of another profile are added as needed.
        """
        per_node = devices_per_node or profile.node.devices_per_node
        for d in demands:
            if d.stage_devices > d.devices_per_node:
                raise ConfigError(
                    f"{where}: {d.key}: a pipeline stage needs {d.stage_devices} devices"
                    f" (tensor_parallel x expert_parallel) but a node of {d.profile.name} has"
                    f" {d.devices_per_node}: a stage's tensor- and expert-parallel group must fit"
                    f" inside one node"
                )
        node_profile: list[HardwareProfile] = []
        node_size: list[int] = []
        free: list[int] = []

        def take(d: Demand, count: int) -> tuple[int, int]:
            """A node of ``d``'s profile with ``count`` free devices, and the first of them."""
            node = next(
                (i for i, f in enumerate(free) if f >= count and node_profile[i] is d.profile),
                None,
            )
            if node is None:
                same = sum(1 for p in node_profile if p is d.profile)
                if d.profile is profile and nodes is not None and same >= nodes:
                    need = sum(x.replicas * x.devices for x in demands if x.profile is profile)
                    parts = ", ".join(
                        f"{x.model}{' ' + x.role if x.role != 'serve' else ''}: {x.replicas} x {x.devices}"
                        for x in demands
                        if x.profile is profile
                    )
                    raise ConfigError(
                        f"{where}: cluster.nodes ({nodes}) x {per_node} devices cannot hold the"
                        f" replicas: they need {need} devices ({parts})"
                    )
                node_profile.append(d.profile)
                node_size.append(d.devices_per_node)
                free.append(d.devices_per_node)
                node = len(free) - 1
            first = node_size[node] - free[node]
            free[node] -= count
            return node, first

        plan: list[tuple[Demand, tuple[tuple[int, int, int], ...]]] = []  # (node, first, count)
        for d in demands:
            for _ in range(d.replicas):
                if d.devices <= d.devices_per_node:
                    node, first = take(d, d.devices)
                    plan.append((d, ((node, first, d.devices),)))
                else:
                    plan.append((d, tuple((*take(d, d.stage_devices), d.stage_devices) for _ in range(d.stages))))
        if nodes is not None:  # the experiment's nodes are all there, used or not
            while sum(1 for p in node_profile if p is profile) < nodes:
                node_profile.append(profile)
                node_size.append(per_node)
                free.append(per_node)
        if not node_profile:
            node_profile, node_size = [profile], [per_node]
        offsets = [0]
        for size in node_size:
            offsets.append(offsets[-1] + size)
        cluster = cls(profile, len(node_profile), per_node, node_profiles=node_profile)
        cluster.devices = [
            Device(offsets[n] + k, n, node_profile[n].memory_bytes)
            for n in range(len(node_size))
            for k in range(node_size[n])
        ]
        for rid, (d, parts) in enumerate(plan):
            devs = tuple(offsets[n] + first + k for n, first, count in parts for k in range(count))
            stage_nodes = (parts[0][0],) * d.stages if len(parts) == 1 else tuple(n for n, _, _ in parts)
            cluster.placements.append(Placement(rid, d.model, parts[0][0], devs, stage_nodes, d.role, d.profile.name))
            for dev in devs:
                cluster.devices[dev].replica = rid
        return cluster

    def node_profile(self, node: int) -> HardwareProfile:
        """The profile of the devices of ``node``."""
        return self.node_profiles[node] if self.node_profiles else self.profile

    def reserve(self, placement: Placement, plan: MemoryPlan, utilization: float, where: str) -> None:
        """Reserve ``plan`` on each device of ``placement``; refuse if it exceeds the budget."""
        check_fits(plan, self.node_profile(placement.node), utilization, where)
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
