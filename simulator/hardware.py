"""Hardware profiles: what a device, its node, the network and the host can do.

A profile is a YAML file under ``hardware_profiles/`` (format ``ldsim-hardware-profile/1``).
It states, with units in every key, a device's datasheet peak FLOP/s per dtype, memory size
and bandwidth, kernel-launch overhead, power and price; the links inside a node, between nodes
and to the host; and the default efficiencies (achieved fraction of peak) the cost model
applies where it has no measurement. Its ``provenance`` says which numbers are datasheet
values and which were measured, on what, when and by which command.

A calibrated profile adds ``measured_peaks`` (the best throughput the harness achieved,
beside the datasheet peaks) and ``tables``: the files, beside the YAML, of measured operator
times (:mod:`simulator.tables`), measured collective and transfer times, and the raw
measurements they came from. A profile without tables still works: the cost model then prices
every operator by the roofline and the results say "uncalibrated". A profile measured by
running a serving runtime (``ldsim validate``) may add ``runtime``: its per-step host overhead
and the extra time of a step after the device idled (:class:`RuntimeSpec`).

A number may be written bare, in the unit its key names (``memory_bandwidth_gb_per_s:
2039``), or as a string with a unit (``"2.039 TB/s"``, ``"80 GiB"``, ``"4 us"``), which is
converted; a unit that does not parse, or does not fit the key, is an error naming the file
and the field. The loader refuses a malformed or inconsistent profile the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from simulator.errors import ConfigError, did_you_mean, validation_message
from simulator.resources import data_dir, find_file
from simulator.tables import CollectiveTable, GridTable, load_collectives, load_tables

__all__ = [
    "ArchitectureRuntime",
    "DeviceSpec",
    "HardwareProfile",
    "LinkSpec",
    "RuntimeSpec",
    "available_profiles",
    "load_profile",
    "parse_quantity",
]

GIB = 1024**3
GB = 1e9

# ---- quantities with units ------------------------------------------------------------------

_UNITS: dict[str, dict[str, float]] = {  # dimension -> unit -> value in the dimension's base unit
    "bandwidth": {
        "B/s": 1.0,
        "KB/s": 1e3,
        "MB/s": 1e6,
        "GB/s": 1e9,
        "TB/s": 1e12,
        "KiB/s": 2.0**10,
        "MiB/s": 2.0**20,
        "GiB/s": 2.0**30,
        "TiB/s": 2.0**40,
        "Gb/s": 1e9 / 8,
        "Gbit/s": 1e9 / 8,
        "Tb/s": 1e12 / 8,
    },
    "memory": {
        "B": 1.0,
        "KB": 1e3,
        "MB": 1e6,
        "GB": 1e9,
        "TB": 1e12,
        "KiB": 2.0**10,
        "MiB": 2.0**20,
        "GiB": 2.0**30,
        "TiB": 2.0**40,
    },
    "time": {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0},
    "power": {"mW": 1e-3, "W": 1.0, "kW": 1e3},
    "flops": {
        "FLOP/s": 1.0,
        "GFLOP/s": 1e9,
        "TFLOP/s": 1e12,
        "PFLOP/s": 1e15,
        "TFLOPS": 1e12,
        "GFLOPS": 1e9,
        "PFLOPS": 1e15,
    },
}
_NUMBER_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\s\d].*?)?\s*$")


def parse_quantity(value: Any, dimension: str, unit: str) -> Any:
    """``value`` converted to ``unit`` of ``dimension`` when it is a string with a unit.

    Numbers pass through (they are in ``unit`` already). Raises ``ValueError`` with what was
    expected for a string that does not parse or whose unit is of another dimension.
    """
    if not isinstance(value, str):
        return value
    match = _NUMBER_UNIT.match(value)
    known = _UNITS[dimension]
    if match is None:
        raise ValueError(
            f"cannot read {value!r} as a {dimension}: expected a number and a unit such as '{next(iter(known))}'"
        )
    number, given = float(match.group(1)), (match.group(2) or unit)
    if given not in known:
        hint = did_you_mean(given, known, "known units")
        raise ValueError(f"cannot read {value!r} as a {dimension}: unknown unit '{given}'{hint}")
    return number * known[given] / known[unit]


def _quantity(dimension: str, unit: str) -> Any:
    return BeforeValidator(lambda v: parse_quantity(v, dimension, unit))


Bandwidth = Annotated[float, _quantity("bandwidth", "GB/s")]
MemoryGiB = Annotated[float, _quantity("memory", "GiB")]
Micros = Annotated[float, _quantity("time", "us")]
Watts = Annotated[float, _quantity("power", "W")]
TeraFlops = Annotated[float, _quantity("flops", "TFLOP/s")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class LinkSpec(_Strict):
    """One kind of link: a per-direction bandwidth and a one-way latency."""

    name: str
    bandwidth_gb_per_s: Bandwidth = Field(gt=0, description="per direction, 1e9 bytes/s")
    latency_us: Micros = Field(ge=0)

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Bandwidth in bytes per second."""
        return self.bandwidth_gb_per_s * GB

    @property
    def latency_s(self) -> float:
        """Latency in seconds."""
        return self.latency_us * 1e-6

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` over this link once: latency + bytes / bandwidth."""
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s


class DeviceSpec(_Strict):
    """One accelerator (or a CPU standing in for one): peaks, memory, launch overhead, power, price."""

    model: str
    memory_gib: MemoryGiB = Field(gt=0)
    memory_bandwidth_gb_per_s: Bandwidth = Field(gt=0)
    peak_tflops: dict[str, TeraFlops] = Field(min_length=1, description="dense peak per dtype")
    kernel_launch_overhead_us: Micros = Field(ge=0)
    power_tdp_w: Watts = Field(gt=0)
    power_idle_w: Watts = Field(ge=0)
    price_per_hour_usd: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DeviceSpec:
        for dtype, tflops in self.peak_tflops.items():
            if tflops <= 0:
                raise ValueError(f"peak_tflops.{dtype} must be > 0, got {tflops}")
        if self.power_idle_w > self.power_tdp_w:
            raise ValueError(f"power_idle_w ({self.power_idle_w}) must not exceed power_tdp_w ({self.power_tdp_w})")
        return self


class EfficiencySpec(_Strict):
    """Achieved fraction of peak, per operator kind (``default`` for any other kind).

    ``compute`` applies to FLOP/s, ``memory`` to bytes/s. Each value is in (0, 1]. A kind such
    as ``attention_prefill`` falls back to ``attention`` (the part before the first ``_``),
    then to ``default``.
    """

    compute: dict[str, float]
    memory: dict[str, float]
    source: str = Field(description="where the defaults come from")

    @model_validator(mode="after")
    def _check(self) -> EfficiencySpec:
        for table_name, table in (("compute", self.compute), ("memory", self.memory)):
            if "default" not in table:
                raise ValueError(f"{table_name} needs a 'default' entry")
            for kind, value in table.items():
                if not 0 < value <= 1:
                    raise ValueError(f"{table_name}.{kind} must be in (0, 1], got {value}")
        return self


class NodeSpec(_Strict):
    """A node: how many devices it holds and the link between them."""

    devices_per_node: int = Field(gt=0)
    intra_node: LinkSpec


class NetworkSpec(_Strict):
    """The network between nodes (per device NIC bandwidth)."""

    inter_node: LinkSpec


class HostSpec(_Strict):
    """The host side of a node: the device-host link, host memory and storage reads."""

    link: LinkSpec
    memory_gib: MemoryGiB = Field(gt=0)
    storage_read_gb_per_s: Bandwidth = Field(gt=0)


class MeasuredInfo(_Strict):
    """Where and when measured numbers were taken."""

    date: str
    host: str
    device: str
    driver: str | None = None
    torch: str | None = None
    command: str


class Provenance(_Strict):
    """Which numbers are datasheet values and which were measured (and on what)."""

    status: Literal["datasheet", "measured", "fitted"]
    sources: list[str] = Field(min_length=1)
    notes: str = ""
    measured: MeasuredInfo | None = None

    @model_validator(mode="after")
    def _check(self) -> Provenance:
        if self.status != "datasheet" and self.measured is None:
            raise ValueError(f"status '{self.status}' requires a 'measured' section")
        return self


class MeasuredPeaks(_Strict):
    """The best the harness achieved on the device, beside the datasheet peaks."""

    tflops: dict[str, TeraFlops] = Field(description="best GEMM throughput per dtype")
    memory_bandwidth_gb_per_s: Bandwidth = Field(gt=0, description="best streaming bandwidth")
    kernel_launch_overhead_us: Micros = Field(ge=0, description="fastest operator measured")


class TableFiles(_Strict):
    """Files beside the profile: measured operator and collective tables, raw measurements."""

    operators: str | None = None
    collectives: str | None = None
    raw: str | None = None


class ArchitectureRuntime(_Strict):
    """The runtime's costs for one architecture (see :class:`RuntimeSpec`).

    ``step_overhead_us`` + ``step_overhead_per_item_us`` x items: host time every model step
    takes beyond its operators -- receiving the previous step's result, the scheduler's
    decision and bookkeeping (which grows with the requests or samples in the step, the
    items), handing the step to the device. ``wake_after_idle``: ``[idle_gap_s, extra_s]``
    points with increasing gaps: the extra seconds the first step after the device idled that
    long takes (processes woken from sleep, caches gone cold); between points the extra time is
    interpolated in log(gap), below the first it falls linearly to 0, beyond the last it stays.
    ``step_time_quantiles``: the variability of step times, as quantiles of the ratio of a
    measured step time to its price (at probabilities ``(i + 1/2) / n``); each simulated step's
    time is multiplied by a ratio drawn from them (:class:`simulator.jitter.StepJitter`). Empty:
    every step takes exactly its price. ``step_time_correlation``: the lag-1 correlation, in
    [0, 1), of the normal scores of consecutive steps' ratios (slow steps come in runs: a busy
    neighbour, a clock change); 0 draws each step independently.
    """

    step_overhead_us: Micros = Field(default=0.0, ge=0)
    step_overhead_per_item_us: Micros = Field(default=0.0, ge=0)
    wake_after_idle: list[tuple[float, float]] = Field(default_factory=list)
    step_time_quantiles: list[float] = Field(default_factory=list)
    step_time_correlation: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> ArchitectureRuntime:
        q = self.step_time_quantiles
        if q and (len(q) < 2 or any(x <= 0 for x in q) or q != sorted(q)):
            raise ValueError("step_time_quantiles: give at least 2 increasing ratios > 0")
        points = self.wake_after_idle
        gaps = [g for g, _ in points]
        if any(g <= 0 for g in gaps) or gaps != sorted(set(gaps)):
            raise ValueError("wake_after_idle: give [gap_s, extra_s] points with increasing gaps > 0")
        if any(extra < 0 for _, extra in points):
            raise ValueError("wake_after_idle: extra seconds must be >= 0")
        return self


class RuntimeSpec(_Strict):
    """The serving runtime on this host, measured by running it (``ldsim validate``): per
    architecture name (``per_architecture``) the host overhead of every step and the wake-up
    cost after idling (:class:`ArchitectureRuntime`); ``step_overhead_us`` for any other
    architecture. A profile without this section has neither cost."""

    step_overhead_us: Micros = Field(default=0.0, ge=0)
    per_architecture: dict[str, ArchitectureRuntime] = Field(default_factory=dict)
    source: str = ""

    def step_overhead_s(self, architecture: str) -> tuple[float, float]:
        """Host seconds per step of ``architecture``, and per item in the step."""
        own = self.per_architecture.get(architecture)
        if own is None:
            return self.step_overhead_us * 1e-6, 0.0
        return own.step_overhead_us * 1e-6, own.step_overhead_per_item_us * 1e-6

    def step_time_quantiles(self, architecture: str) -> list[float]:
        """The step-time ratio quantiles of ``architecture`` (empty: no variability)."""
        own = self.per_architecture.get(architecture)
        return list(own.step_time_quantiles) if own is not None else []

    def step_time_correlation(self, architecture: str) -> float:
        """The lag-1 correlation of consecutive step-time ratios of ``architecture`` (0: none)."""
        own = self.per_architecture.get(architecture)
        return own.step_time_correlation if own is not None else 0.0

    def wake_s(self, architecture: str, gap_s: float) -> float:
        """Extra seconds of a step of ``architecture`` after ``gap_s`` seconds idle (0 when the
        profile has no curve for it)."""
        own = self.per_architecture.get(architecture)
        points = own.wake_after_idle if own is not None else []
        if not points or gap_s <= 0:
            return 0.0
        first_gap, first_extra = points[0]
        if gap_s <= first_gap:
            return first_extra * gap_s / first_gap
        for (g0, e0), (g1, e1) in itertools.pairwise(points):
            if gap_s <= g1:
                frac = math.log(gap_s / g0) / math.log(g1 / g0)
                return e0 + frac * (e1 - e0)
        return points[-1][1]


class HardwareProfile(_Strict):
    """A validated hardware profile. Build one with :func:`load_profile`."""

    format: Literal["ldsim-hardware-profile/1"]
    name: str
    description: str
    provenance: Provenance
    device: DeviceSpec
    efficiency: EfficiencySpec
    node: NodeSpec
    network: NetworkSpec
    host: HostSpec
    measured_peaks: MeasuredPeaks | None = None
    tables: TableFiles | None = None
    runtime: RuntimeSpec | None = None

    _path: Path | None = PrivateAttr(default=None)
    _sha256: str = PrivateAttr(default="")
    _grids: dict[tuple[str, str, str], GridTable] = PrivateAttr(default_factory=dict)
    _collectives: dict[tuple[str, str, int], CollectiveTable] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path | None:
        """The file this profile was read from."""
        return self._path

    @property
    def sha256(self) -> str:
        """SHA-256 of the profile file and its table files (recorded with every result)."""
        return self._sha256

    @property
    def calibrated(self) -> bool:
        """True when the profile has measured operator tables."""
        return bool(self._grids)

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.device.memory_gib * GIB

    @property
    def memory_bandwidth_bytes_per_s(self) -> float:
        """Device memory bandwidth in bytes per second."""
        return self.device.memory_bandwidth_gb_per_s * GB

    @property
    def launch_overhead_s(self) -> float:
        """Fixed cost of one kernel launch, in seconds."""
        return self.device.kernel_launch_overhead_us * 1e-6

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s of ``dtype``; a clear error for a dtype the device lacks."""
        try:
            return self.device.peak_tflops[dtype] * 1e12
        except KeyError:
            known = sorted(self.device.peak_tflops)
            raise ConfigError(
                f"hardware profile '{self.name}' has no peak for dtype '{dtype}'{did_you_mean(dtype, known, 'it has')}"
            ) from None

    def _efficiency(self, table: dict[str, float], kind: str) -> float:
        if kind in table:
            return table[kind]
        family = kind.split("_", 1)[0]
        return table.get(family, table["default"])

    def compute_efficiency(self, kind: str) -> float:
        """Achieved fraction of peak FLOP/s for operators of ``kind`` without a table."""
        return self._efficiency(self.efficiency.compute, kind)

    def memory_efficiency(self, kind: str) -> float:
        """Achieved fraction of peak memory bandwidth for operators of ``kind`` without a table."""
        return self._efficiency(self.efficiency.memory, kind)

    def table(self, kind: str, dtype: str, variant: str = "") -> GridTable | None:
        """The measured table of ``(kind, dtype, variant)``, or ``None``."""
        return self._grids.get((kind, dtype, variant))

    def table_keys(self) -> list[tuple[str, str, str]]:
        """Every (kind, dtype, variant) with a measured table."""
        return sorted(self._grids)

    def collective(self, link: str, op: str, devices: int) -> CollectiveTable | None:
        """The measured curve of a collective or transfer, or ``None``."""
        return self._collectives.get((link, op, devices))

    def collective_keys(self) -> list[tuple[str, str, int]]:
        """Every (link, op, devices) with a measured curve."""
        return sorted(self._collectives)


def available_profiles() -> dict[str, Path]:
    """Shipped profiles by name."""
    return {p.stem: p for p in sorted(data_dir("hardware_profiles").glob("*.yaml"))}


_CACHE: dict[tuple[Path, int], HardwareProfile] = {}


def _sibling(path: Path, name: str, field: str) -> Path:
    target = (path.parent / name).resolve()
    if not target.is_file():
        raise ConfigError(f"{path}: tables.{field}: file '{name}' not found beside the profile ({target})")
    return target


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load and validate a profile by shipped name (``a100-sxm-80gb``) or by file path.

    Reads and validates the table files it names too. Raises :class:`ConfigError` naming the
    file and the field for anything malformed.
    """
    path = find_file(name_or_path, "hardware_profiles")
    if path is None:
        known = sorted(available_profiles())
        raise ConfigError(
            f"unknown hardware profile '{name_or_path}'{did_you_mean(str(name_or_path), known, 'shipped')}"
            f" (or give a path to a profile YAML)"
        )
    path = path.resolve()
    key = (path, path.stat().st_mtime_ns)  # a profile rewritten in place is read again
    if key in _CACHE:
        return _CACHE[key]
    raw_bytes = path.read_bytes()
    try:
        raw = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        profile = HardwareProfile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(path), HardwareProfile)) from None
    digest = hashlib.sha256(raw_bytes)
    files = profile.tables
    if files is not None:
        if files.operators:
            table_path = _sibling(path, files.operators, "operators")
            profile._grids = load_tables(table_path, f"{path}: tables.operators")
            digest.update(table_path.read_bytes())
        if files.collectives:
            coll_path = _sibling(path, files.collectives, "collectives")
            profile._collectives = load_collectives(coll_path, f"{path}: tables.collectives")
            digest.update(coll_path.read_bytes())
        if files.raw:
            _sibling(path, files.raw, "raw")
    if profile.provenance.status != "datasheet" and not profile._grids:
        raise ConfigError(
            f"{path}: provenance.status is '{profile.provenance.status}' but the profile"
            f" has no operator tables (tables.operators)"
        )
    profile._path = path
    profile._sha256 = digest.hexdigest()
    _CACHE[key] = profile
    return profile
