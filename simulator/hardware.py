"""Hardware profiles: what a device, its node, the network and the host can do.

A profile is a YAML file under ``hardware_profiles/`` (format ``ldsim-hardware-profile/1``).
It states, with units in every key, a device's peak FLOP/s per dtype, memory size and
bandwidth, kernel-launch overhead, power and price; the links inside a node, between nodes
and to the host; and the efficiencies (achieved fraction of peak) the cost model applies.
Its ``provenance`` says which numbers are datasheet values and which were measured, on what
and when. The loader validates everything and refuses a malformed or inconsistent profile
with an error naming the file and the field.

Efficiency lookups go through :meth:`HardwareProfile.compute_efficiency` and
:meth:`HardwareProfile.memory_efficiency`, so measured tables (written by the calibration
harness) slot in behind them without changing the cost model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from simulator.errors import ConfigError, did_you_mean, validation_message
from simulator.resources import data_dir, find_file

__all__ = [
    "DeviceSpec",
    "HardwareProfile",
    "LinkSpec",
    "available_profiles",
    "load_profile",
]

GIB = 1024**3
GB = 1e9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class LinkSpec(_Strict):
    """One kind of link: a per-direction bandwidth and a one-way latency."""

    name: str
    bandwidth_gb_per_s: float = Field(gt=0, description="per direction, 1e9 bytes/s")
    latency_us: float = Field(ge=0)

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
    """One accelerator: peaks, memory, launch overhead, power and price."""

    model: str
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gb_per_s: float = Field(gt=0)
    peak_tflops: dict[str, float] = Field(min_length=1, description="dense peak per dtype")
    kernel_launch_overhead_us: float = Field(ge=0)
    power_tdp_w: float = Field(gt=0)
    power_idle_w: float = Field(ge=0)
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

    ``compute`` applies to FLOP/s, ``memory`` to bytes/s. Each value is in (0, 1].
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
    memory_gib: float = Field(gt=0)
    storage_read_gb_per_s: float = Field(gt=0)


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

    _path: Path | None = PrivateAttr(default=None)
    _sha256: str = PrivateAttr(default="")

    @property
    def path(self) -> Path | None:
        """The file this profile was read from."""
        return self._path

    @property
    def sha256(self) -> str:
        """SHA-256 of the profile file's bytes (recorded with every result)."""
        return self._sha256

    @property
    def calibrated(self) -> bool:
        """True when the efficiencies come from measurements on the device."""
        return self.provenance.status != "datasheet"

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

    def compute_efficiency(self, kind: str) -> float:
        """Achieved fraction of peak FLOP/s for operators of ``kind``."""
        table = self.efficiency.compute
        return table.get(kind, table["default"])

    def memory_efficiency(self, kind: str) -> float:
        """Achieved fraction of peak memory bandwidth for operators of ``kind``."""
        table = self.efficiency.memory
        return table.get(kind, table["default"])


def available_profiles() -> dict[str, Path]:
    """Shipped profiles by name."""
    return {p.stem: p for p in sorted(data_dir("hardware_profiles").glob("*.yaml"))}


_CACHE: dict[Path, HardwareProfile] = {}


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load and validate a profile by shipped name (``a100-sxm-80gb``) or by file path.

    Raises :class:`ConfigError` naming the file and the field for anything malformed.
    """
    path = find_file(name_or_path, "hardware_profiles")
    if path is None:
        known = sorted(available_profiles())
        raise ConfigError(
            f"unknown hardware profile '{name_or_path}'{did_you_mean(str(name_or_path), known, 'shipped')}"
            f" (or give a path to a profile YAML)"
        )
    path = path.resolve()
    if path in _CACHE:
        return _CACHE[path]
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
    profile._path = path
    profile._sha256 = hashlib.sha256(raw_bytes).hexdigest()
    _CACHE[path] = profile
    return profile
