"""Request-size distributions: tokens or samples per request.

A size distribution is a class with ``Params`` whose ``sample(n, rng)`` returns ``n``
non-negative integers. It is built as ``Cls(params, base_dir)``, where ``base_dir`` is the
experiment's folder (for files named relative to it). Built in: ``fixed``, ``uniform``
(integers, both ends included), ``lognormal`` (by median and log-space sigma, clipped),
``gamma`` (by mean and coefficient of variation, clipped) and ``empirical`` (resampling one
column of a CSV or parquet file). Joint (input, output) pairs are not a size distribution but
the mix entry's ``lengths``; :mod:`workloads.fitting` fits a ``lognormal`` to a trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import Field, model_validator

from simulator.policy import PolicyParams
from workloads.traces import read_numeric_columns, resolve_data_file

__all__ = ["ClippedParams", "Empirical", "Fixed", "GammaSize", "LogNormal", "SizeDistribution", "Uniform"]


class SizeDistribution(Protocol):
    """Draws request sizes (tokens or samples)."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``n`` non-negative integers."""
        ...


class Fixed:
    """Every request has ``value``."""

    class Params(PolicyParams):
        """``value``: the size (>= 0)."""

        value: int = Field(ge=0)

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        self.params = params

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A constant array."""
        return np.full(n, self.params.value, dtype=np.int64)

    def mean(self) -> float:
        """The mean size."""
        return float(self.params.value)


class Uniform:
    """Integers uniform on ``[low, high]``, both included."""

    class Params(PolicyParams):
        """``low`` <= ``high``, both >= 0."""

        low: int = Field(ge=0)
        high: int = Field(ge=0)

        @model_validator(mode="after")
        def _check(self) -> Uniform.Params:
            if self.high < self.low:
                raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
            return self

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        self.params = params

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform integers."""
        return rng.integers(self.params.low, self.params.high + 1, n, dtype=np.int64)

    def mean(self) -> float:
        """The mean size."""
        return (self.params.low + self.params.high) / 2.0


class ClippedParams(PolicyParams):
    """The bounds shared by the parametric sizes: optional ``min`` (default 1) and ``max``."""

    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_bounds(self) -> ClippedParams:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def clip(self, values: np.ndarray) -> np.ndarray:
        """``values`` rounded to integers within ``[min, max]``."""
        return np.clip(np.rint(values), self.min, self.max).astype(np.int64)


class LogNormal:
    """``round(exp(N(log(median), sigma)))``, clipped to ``[min, max]``."""

    class Params(ClippedParams):
        """``median`` (> 0), ``sigma`` of the log (> 0), optional ``min`` and ``max``."""

        median: float = Field(gt=0)
        sigma: float = Field(gt=0)

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        self.params = params

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Log-normal integers."""
        p = self.params
        return p.clip(rng.lognormal(np.log(p.median), p.sigma, n))


class GammaSize:
    """``round(Gamma)`` with mean ``mean`` and coefficient of variation ``cv``, clipped to
    ``[min, max]`` (the clipping moves the mean a little when it bites)."""

    class Params(ClippedParams):
        """``mean`` (> 0), ``cv`` (> 0), optional ``min`` (default 1) and ``max``."""

        mean: float = Field(gt=0)
        cv: float = Field(gt=0)

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        self.params = params

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gamma integers."""
        p = self.params
        shape = 1.0 / p.cv**2
        return p.clip(rng.gamma(shape, p.mean / shape, n))


class Empirical:
    """Sizes resampled (with replacement) from one column of a CSV or parquet file."""

    class Params(PolicyParams):
        """``file`` (see :func:`workloads.traces.resolve_data_file`) and ``column``."""

        file: str
        column: str

    def __init__(self, params: Params, base_dir: Path | None = None) -> None:
        self.params = params
        where = f"empirical size distribution (file {params.file!r})"
        path = resolve_data_file(params.file, base_dir, where)
        self.values = read_numeric_columns(path, [params.column], where)[params.column]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Resampled values."""
        return self.values[rng.integers(0, len(self.values), n)]

    def mean(self) -> float:
        """The mean size."""
        return float(self.values.mean())
