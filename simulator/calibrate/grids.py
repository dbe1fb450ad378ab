"""Which shapes a calibration measures, on a CPU or a GPU, quick or full, and the held-out ones.

A :class:`Grid` lists, per operator family, the coordinates of a full grid (every combination
is measured, as :func:`simulator.tables.load_tables` requires). Coordinates are spaced
geometrically (mostly by factors of two) because the cost model interpolates in log space.
Grids are scaled to the device: a CPU's largest GEMM is a few GFLOP, a GPU's a few TFLOP, so
that ``--quick`` on a 2-core CPU takes well under a minute and a full run a few minutes.

:func:`held_out` derives, from a profile's own tables, shapes that lie *between* its grid
points (geometric midpoints of adjacent coordinates): the shapes ``ldsim profile check``
re-measures to see how well the tables predict what they were not fitted to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.calibrate.operators import (
    MEMORY_IMPLS,
    Case,
    attention_decode_case,
    attention_encoder_case,
    attention_prefill_case,
    conv_case,
    embedding_bag_case,
    gemm_case,
    memory_case,
)
from simulator.models import ConvLayer, resnet50

__all__ = ["Grid", "distinct_convs", "grid_for", "grid_from_dict", "held_out", "midpoints"]


def _pow2(lo: int, hi: int, step: int = 1) -> tuple[int, ...]:
    """Powers of two from ``2**lo`` to ``2**hi`` every ``step`` exponents."""
    return tuple(2**e for e in range(lo, hi + 1, step))


@dataclass(frozen=True)
class Grid:
    """The shapes of one calibration run (see the module docstring).

    GEMM: ``gemm_m`` x ``gemm_nk`` x ``gemm_nk``, per dtype, with the largest M values dropped
    for a dtype too slow to time them in ``gemm_point_s`` (its rate has long saturated there).
    Attention: prefill over ``prefill_bh`` x ``prefill_q`` x ``prefill_past`` (a past of 0 is
    the table's coordinate 1), encoder over ``encoder_bh`` x ``encoder_seq``, decode over
    ``decode_bkv`` x ``decode_kv``, each for every head dimension in ``head_dims``.
    Memory-bound implementations over ``memory_elements`` elements per tensor. DLRM embedding
    bags over ``bag_batch`` queries. ResNet-50's distinct convolutions over ``conv_batch``
    images. Collectives over ``collective_bytes``; host-device copies over ``copy_bytes``; a
    storage read of ``storage_bytes`` and a streaming copy of ``stream_bytes``.
    """

    gemm_m: tuple[int, ...]
    gemm_nk: tuple[int, ...]
    gemm_point_s: float
    prefill_bh: tuple[int, ...]
    prefill_q: tuple[int, ...]
    prefill_past: tuple[int, ...]
    encoder_bh: tuple[int, ...]
    encoder_seq: tuple[int, ...]
    decode_bkv: tuple[int, ...]
    decode_kv: tuple[int, ...]
    head_dims: tuple[int, ...]
    attention_point_s: float
    memory_elements: tuple[int, ...]
    bag_batch: tuple[int, ...]
    bag_dims: tuple[int, ...]
    conv_batch: tuple[int, ...]
    collective_bytes: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    storage_bytes: int
    stream_bytes: int

    def gemm_cases(self, dtype: str, rate_flops: float) -> list[Case]:
        """The GEMM grid of ``dtype`` (M innermost, so weights are built once per N, K).

        ``rate_flops``: a rough throughput of the dtype, to drop M values whose largest point
        would take longer than ``gemm_point_s``.
        """
        top = max(self.gemm_nk) ** 2 * 2.0
        ms = [m for m in self.gemm_m if m == self.gemm_m[0] or m * top / rate_flops <= self.gemm_point_s]
        return [gemm_case(m, n, k, dtype) for n, k in itertools.product(self.gemm_nk, repeat=2) for m in ms]

    def attention_cases(self, dtype: str, rate_flops: float) -> list[Case]:
        """Prefill, encoder and decode attention grids of ``dtype`` for every head dimension.

        Query lengths whose largest point would take longer than ``attention_point_s`` at
        ``rate_flops`` are dropped (from every row, so the grid stays full).
        """
        cases: list[Case] = []
        for hd in self.head_dims:
            # the largest point of a query length: the widest batch over the longest past
            worst = max(self.prefill_bh) * 4.0 * hd
            past = max(self.prefill_past)
            qs = [
                q
                for q in self.prefill_q
                if q == self.prefill_q[0] or worst * q * (past + (q + 1) / 2) / rate_flops <= self.attention_point_s
            ]
            for bh, q, past in itertools.product(self.prefill_bh, qs, self.prefill_past):
                cases.append(attention_prefill_case(bh, q, past, hd, dtype))
            worst = max(self.encoder_bh) * 4.0 * hd
            seqs = [
                s
                for s in self.encoder_seq
                if s == self.encoder_seq[0] or worst * s * s / rate_flops <= self.attention_point_s
            ]
            for bh, s in itertools.product(self.encoder_bh, seqs):
                cases.append(attention_encoder_case(bh, s, hd, dtype))
            for bkv, kv in itertools.product(self.decode_bkv, self.decode_kv):
                cases.append(attention_decode_case(bkv, kv, hd, dtype))
        return cases

    def memory_cases(self, dtype: str) -> list[Case]:
        """Every memory-bound implementation over ``memory_elements``, in ``dtype``."""
        return [memory_case(impl, e, dtype) for impl in MEMORY_IMPLS for e in self.memory_elements]

    def embedding_bag_cases(self, dtype: str) -> list[Case]:
        """Fused DLRM embedding bags (Kaggle's 26 tables of dimension 16, rows capped)."""
        from simulator.calibrate.operators import dlrm_by_dim

        return [embedding_bag_case(dlrm_by_dim(d), b, dtype) for d in self.bag_dims for b in self.bag_batch]

    def conv_cases(self, dtype: str) -> list[Case]:
        """ResNet-50's distinct convolution geometries over ``conv_batch`` images."""
        return [conv_case(layer, b, dtype) for layer in distinct_convs() for b in self.conv_batch]


def distinct_convs() -> list[ConvLayer]:
    """The distinct geometries among ResNet-50's convolutions, in network order."""
    seen: dict[str, ConvLayer] = {}
    for layer in resnet50().convs:
        seen.setdefault(layer.variant, layer)
    return list(seen.values())


_CPU_FULL = Grid(
    gemm_m=_pow2(0, 10),
    gemm_nk=_pow2(7, 12),
    gemm_point_s=0.25,
    prefill_bh=(2, 4, 8, 16, 32),
    prefill_q=(16, 64, 256, 512, 1024),
    prefill_past=(0, 16, 64, 256, 1024),
    encoder_bh=(2, 4, 8, 16, 32),
    encoder_seq=(16, 64, 256, 1024),
    decode_bkv=(2, 4, 8, 16, 32, 64, 128),
    decode_kv=(32, 128, 512, 2048),
    head_dims=(64, 128),
    attention_point_s=0.25,
    memory_elements=_pow2(8, 24),
    bag_batch=_pow2(4, 12),
    bag_dims=(16,),
    conv_batch=(1, 2, 4, 8),
    collective_bytes=_pow2(10, 26, 2),
    copy_bytes=_pow2(10, 28, 2),
    storage_bytes=512 * 2**20,
    stream_bytes=256 * 2**20,
)

_CPU_QUICK = Grid(
    gemm_m=_pow2(0, 8),
    gemm_nk=_pow2(8, 11),
    gemm_point_s=0.03,
    prefill_bh=(4, 8, 16),
    prefill_q=(32, 128, 512),
    prefill_past=(0, 16, 64, 256),
    encoder_bh=(4, 8, 16),
    encoder_seq=(32, 128, 512),
    decode_bkv=(4, 8, 16, 32, 64),
    decode_kv=(64, 256, 1024),
    head_dims=(64, 128),
    attention_point_s=0.03,
    memory_elements=_pow2(8, 20, 2),
    bag_batch=_pow2(5, 11, 2),
    bag_dims=(16,),
    conv_batch=(1, 4),
    collective_bytes=_pow2(10, 22, 4),
    copy_bytes=_pow2(10, 26, 4),
    storage_bytes=64 * 2**20,
    stream_bytes=128 * 2**20,
)

_GPU_FULL = Grid(
    gemm_m=_pow2(0, 14),
    gemm_nk=_pow2(8, 15),
    gemm_point_s=0.05,
    prefill_bh=(8, 32, 128),
    prefill_q=(16, 64, 256, 1024, 4096),
    prefill_past=(0, 64, 512, 4096),
    encoder_bh=(8, 32, 128),
    encoder_seq=(32, 128, 512, 2048),
    decode_bkv=(8, 32, 128, 512),
    decode_kv=(64, 256, 1024, 4096, 16384),
    head_dims=(64, 128),
    attention_point_s=0.05,
    memory_elements=_pow2(10, 28),
    bag_batch=_pow2(6, 16),
    bag_dims=(16, 64),
    conv_batch=(1, 4, 16, 64),
    collective_bytes=_pow2(10, 30, 2),
    copy_bytes=_pow2(10, 30, 2),
    storage_bytes=1024 * 2**20,
    stream_bytes=2048 * 2**20,
)

_GPU_QUICK = Grid(
    gemm_m=_pow2(0, 12, 2),
    gemm_nk=_pow2(9, 14),
    gemm_point_s=0.01,
    prefill_bh=(8, 64),
    prefill_q=(64, 512, 4096),
    prefill_past=(0, 512, 4096),
    encoder_bh=(8, 64),
    encoder_seq=(64, 512, 2048),
    decode_bkv=(8, 64, 512),
    decode_kv=(256, 2048, 16384),
    head_dims=(64, 128),
    attention_point_s=0.01,
    memory_elements=_pow2(10, 28, 2),
    bag_batch=_pow2(6, 14, 2),
    bag_dims=(16,),
    conv_batch=(1, 16),
    collective_bytes=_pow2(10, 28, 6),
    copy_bytes=_pow2(10, 28, 6),
    storage_bytes=128 * 2**20,
    stream_bytes=1024 * 2**20,
)


def grid_from_dict(values: dict[str, Any]) -> Grid:
    """A :class:`Grid` from ``dataclasses.asdict`` of one (lists back to tuples)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return Grid(**fields)


def grid_for(device_kind: str, quick: bool) -> Grid:
    """The grid for a ``cpu`` or ``cuda`` device, quick or full."""
    if device_kind == "cuda":
        return _GPU_QUICK if quick else _GPU_FULL
    return _CPU_QUICK if quick else _CPU_FULL


# ---- held-out shapes --------------------------------------------------------------------------


def midpoints(axis: np.ndarray | Sequence[int], multiple: int = 1) -> list[int]:
    """Geometric midpoints of adjacent values of ``axis``, rounded to a ``multiple``; those that
    round onto a grid value are dropped."""
    values = sorted(int(v) for v in axis)
    out = []
    for lo, hi in itertools.pairwise(values):
        mid = math.sqrt(lo * hi)
        mid_int = max(multiple, round(mid / multiple) * multiple)
        if lo < mid_int < hi:
            out.append(mid_int)
    return out


def held_out(axes: list[list[int]], limit: int, seed: int) -> list[tuple[int, ...]]:
    """Up to ``limit`` points whose every coordinate is a midpoint of ``axes`` (a list of
    midpoint lists, one per dimension), spread evenly over their combinations (seeded)."""
    combos = list(itertools.product(*axes))
    if len(combos) <= limit:
        return combos
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(combos), size=limit, replace=False)
    return [combos[i] for i in sorted(picks)]
