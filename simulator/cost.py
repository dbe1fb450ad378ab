"""The cost model: (model, parallelism, device profile, batch shape) -> seconds.

Each operator is priced from the profile's measured tables when one applies
(:mod:`simulator.tables`: multilinear interpolation of the achieved rate in log space over the
measured grid; launch overhead included in what was measured). Where no table applies, by the
roofline (ARCHITECTURE.md, "The cost model")::

    time = launch_overhead + max(flops / (peak_flops[dtype] * eff_compute(kind)),
                                 bytes / (mem_bw * eff_memory(kind)))

with the profile's stated default efficiencies; such kinds are listed in
:attr:`ModelCost.uncalibrated_kinds` and in each run's metadata. An all-reduce among ``p``
devices is read from the profile's measured collective curve for that link and ``p``, or
costed as a ring all-reduce: ``2(p-1) * latency + 2(p-1)/p * bytes / bandwidth``.

The functions are pure and cached per deployment: a :class:`ModelCost` caches forward-pass
times per batch shape, and prices a decoder's pure-decode iterations vectorised over their KV
lengths, so that many identical decode steps cost one numpy call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.hardware import HardwareProfile, LinkSpec
from simulator.models import CNN, Architecture, Decoder, Encoder, Operator, Recommendation
from simulator.tables import DIMS

__all__ = ["Cost", "Deployment", "ModelCost", "allreduce_s", "operator_cost", "operator_s", "roofline_s"]

#: Seconds, FLOPs and bytes moved (FLOPs and bytes as exact integers).
Cost = tuple[float, int, int]


def allreduce_s(nbytes: float, devices: int, link: LinkSpec) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` among ``devices`` devices on ``link``."""
    if devices <= 1:
        return 0.0
    steps = 2 * (devices - 1)
    return steps * link.latency_s + (steps / devices) * nbytes / link.bandwidth_bytes_per_s


def roofline_s(op: Operator, profile: HardwareProfile, dtype: str) -> float:
    """Seconds for one instance of ``op`` by the roofline with default efficiencies."""
    compute = op.flops / (profile.peak_flops(dtype) * profile.compute_efficiency(op.kind))
    memory = op.bytes / (profile.memory_bandwidth_bytes_per_s * profile.memory_efficiency(op.kind))
    return profile.launch_overhead_s + max(compute, memory)


def operator_cost(op: Operator, profile: HardwareProfile, dtype: str, tp: int = 1) -> tuple[float, bool]:
    """Seconds for all ``op.count`` instances of ``op`` on one device, and whether a measured
    table (or collective curve) priced it."""
    if op.kind == "allreduce":
        if tp <= 1:
            return 0.0, True
        curve = profile.collective("intra_node", "allreduce", tp)
        if curve is not None:
            return op.count * curve.time_s(op.bytes), True
        return op.count * allreduce_s(op.bytes, tp, profile.node.intra_node), False
    candidates = [(op.kind, op.shape, op.variant)]
    if op.fallback is not None:
        candidates.append((op.fallback[0], op.fallback[1], ""))
    for kind, shape, variant in candidates:
        table = profile.table(kind, dtype, variant)
        if table is not None and len(shape) == table.ndim:
            work = op.bytes if DIMS[kind][1] == "bytes" else op.flops
            return op.count * table.time_one_s(shape, work), True
    return op.count * roofline_s(op, profile, dtype), False


def operator_s(op: Operator, profile: HardwareProfile, dtype: str, tp: int = 1) -> float:
    """Seconds for all ``op.count`` instances of ``op`` on one device of ``profile``."""
    return operator_cost(op, profile, dtype, tp)[0]


@dataclass(frozen=True)
class Deployment:
    """What a replica runs: an architecture in a dtype over ``tp`` tensor-parallel devices."""

    arch: Architecture
    dtype: str
    tp: int = 1


class ModelCost:
    """Cached step costs of one deployment on one hardware profile.

    Invariant: every method is a pure function of its arguments (same inputs, same float).
    """

    def __init__(self, deployment: Deployment, profile: HardwareProfile) -> None:
        self.deployment = deployment
        self.profile = profile
        self.arch = deployment.arch
        self.dtype = deployment.dtype
        self.tp = deployment.tp
        profile.peak_flops(self.dtype)  # fail early on a dtype the device lacks
        self._batch_cache: dict[tuple[int, int], Cost] = {}
        self._dense_cache: dict[tuple[int, int], Cost] = {}
        self._prefill_cache: dict[tuple[int, int], Cost] = {}
        self.uncalibrated_kinds: set[str] = set()
        self.calibrated_kinds: set[str] = set()
        self._decode_table = None
        if isinstance(self.arch, Decoder):
            a, b, c, d = self.arch.decode_attention_terms(self.dtype, self.tp)
            self._dec_terms = (a, b, c, d)
            self._decode_table = profile.table("attention_decode", self.dtype, f"hd{self.arch.head_dim}")
            self._kv_heads = max(1, self.arch.kv_heads // self.tp)
            self._dec_bytes = (b, d)
            if self._decode_table is not None:
                self.calibrated_kinds.add("attention_decode")
            else:
                peak = profile.peak_flops(self.dtype) * profile.compute_efficiency("attention_decode")
                bw = profile.memory_bandwidth_bytes_per_s * profile.memory_efficiency("attention_decode")
                # per-layer seconds = overhead + max((a*kv + c*n) / peak, (b*kv + d*n) / bw)
                self._dec = (a / peak, c / peak, b / bw, d / bw)
                self.uncalibrated_kinds.add("attention_decode")

    def _sum(self, ops: Iterable[Operator]) -> Cost:
        total = 0.0
        flops = 0
        nbytes = 0
        for op in ops:
            seconds, measured = operator_cost(op, self.profile, self.dtype, self.tp)
            (self.calibrated_kinds if measured else self.uncalibrated_kinds).add(op.kind)
            total += seconds
            flops += round(op.flops * op.count)
            nbytes += round(op.bytes * op.count)
        return total, flops, nbytes

    # ---- non-autoregressive models -------------------------------------------------------

    def batch(self, samples: int, seq_len: int = 0) -> Cost:
        """Seconds, FLOPs and bytes of one forward pass over a batch.

        ``samples`` images (CNN), queries (DLRM) or sequences (encoder, padded to
        ``seq_len`` tokens).
        """
        key = (samples, seq_len)
        cached = self._batch_cache.get(key)
        if cached is not None:
            return cached
        arch = self.arch
        if isinstance(arch, Encoder):
            ops = arch.operators(samples, seq_len, self.dtype, self.tp)
        elif isinstance(arch, CNN | Recommendation):
            ops = arch.operators(samples, self.dtype)
        else:
            raise TypeError(f"{arch.name} is autoregressive: cost it per iteration")
        value = self._sum(ops)
        self._batch_cache[key] = value
        return value

    def batch_s(self, samples: int, seq_len: int = 0) -> float:
        """Seconds of one forward pass over a batch (see :meth:`batch`)."""
        return self.batch(samples, seq_len)[0]

    # ---- decoders ------------------------------------------------------------------------

    def dense(self, n_tokens: int, n_seqs: int) -> Cost:
        """Every non-attention operator of one iteration (see ``Decoder.dense_operators``)."""
        key = (n_tokens, n_seqs)
        cached = self._dense_cache.get(key)
        if cached is None:
            assert isinstance(self.arch, Decoder)
            cached = self._sum(self.arch.dense_operators(n_tokens, n_seqs, self.dtype, self.tp))
            self._dense_cache[key] = cached
        return cached

    def dense_s(self, n_tokens: int, n_seqs: int) -> float:
        """Seconds of :meth:`dense`."""
        return self.dense(n_tokens, n_seqs)[0]

    def prefill_attention(self, q_len: int, kv_len: int) -> Cost:
        """Attention of one request prefilling ``q_len`` tokens over ``kv_len`` keys (its past
        plus the new tokens), every layer."""
        key = (q_len, kv_len)
        cached = self._prefill_cache.get(key)
        if cached is None:
            assert isinstance(self.arch, Decoder)
            cached = self._sum([self.arch.prefill_attention(q_len, kv_len, self.dtype, self.tp)])
            self._prefill_cache[key] = cached
        return cached

    def prefill_attention_s(self, q_len: int, kv_len: int) -> float:
        """Seconds of :meth:`prefill_attention`."""
        return self.prefill_attention(q_len, kv_len)[0]

    def decode_attention_s(self, n_seqs: int, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds of decode attention for ``n_seqs`` sequences holding ``kv_tokens`` keys in
        total, elementwise over an array of KV totals (one per iteration)."""
        assert isinstance(self.arch, Decoder)
        table = self._decode_table
        if table is not None:
            b, d = self._dec_bytes
            coords = np.empty((len(kv_tokens), 2))
            coords[:, 0] = n_seqs * self._kv_heads
            coords[:, 1] = kv_tokens / n_seqs
            return self.arch.layers * table.time_s(coords, b * kv_tokens + d * n_seqs)
        fa, fc, ba, bd = self._dec
        per_layer = np.maximum(fa * kv_tokens + fc * n_seqs, ba * kv_tokens + bd * n_seqs)
        return self.arch.layers * (self.profile.launch_overhead_s + per_layer)

    def decode_attention_work(self, n_seqs: int, kv_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and bytes (int64 arrays) of decode attention, elementwise over KV totals."""
        assert isinstance(self.arch, Decoder)
        a, b, c, d = self._dec_terms
        layers = self.arch.layers
        flops = np.rint(layers * (a * kv_tokens + c * n_seqs)).astype(np.int64)
        nbytes = np.rint(layers * (b * kv_tokens + d * n_seqs)).astype(np.int64)
        return flops, nbytes

    def decode_steps_s(self, n_seqs: int, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds of each of a run of pure-decode iterations of ``n_seqs`` sequences.

        ``kv_tokens[i]`` is the batch's total KV length attended in iteration ``i``. This is
        the one function both the coalesced and the step-by-step engine use, so the two give
        bit-identical times.
        """
        return self.dense_s(n_seqs, n_seqs) + self.decode_attention_s(n_seqs, kv_tokens)

    def decode_steps_work(self, n_seqs: int, kv_tokens: np.ndarray) -> tuple[int, int]:
        """Total FLOPs and bytes (exact integers) of a run of pure-decode iterations."""
        _, dense_flops, dense_bytes = self.dense(n_seqs, n_seqs)
        flops, nbytes = self.decode_attention_work(n_seqs, kv_tokens)
        k = len(kv_tokens)
        return k * dense_flops + int(flops.sum()), k * dense_bytes + int(nbytes.sum())

    def iteration(self, prefills: Sequence[tuple[int, int]], n_decode: int, decode_kv_tokens: int) -> Cost:
        """Seconds, FLOPs and bytes of one mixed iteration.

        ``prefills``: ``(q_len, kv_len)`` of each request prefilling in it (``kv_len`` = its
        past plus ``q_len``); ``n_decode`` requests decode one token each, attending
        ``decode_kv_tokens`` keys in total.
        """
        kv = np.array([float(decode_kv_tokens)])
        if not prefills:
            flops, nbytes = self.decode_steps_work(n_decode, kv)
            return float(self.decode_steps_s(n_decode, kv)[0]), flops, nbytes
        n_tokens = n_decode + sum(q for q, _ in prefills)
        total, flops, nbytes = self.dense(n_tokens, n_decode + len(prefills))
        for q_len, kv_len in prefills:
            seconds, f, b = self.prefill_attention(q_len, kv_len)
            total += seconds
            flops += f
            nbytes += b
        if n_decode:
            total += float(self.decode_attention_s(n_decode, kv)[0])
            f_arr, b_arr = self.decode_attention_work(n_decode, kv)
            flops += int(f_arr[0])
            nbytes += int(b_arr[0])
        return total, flops, nbytes

    def iteration_s(self, prefills: Sequence[tuple[int, int]], n_decode: int, decode_kv_tokens: int) -> float:
        """Seconds of :meth:`iteration`."""
        return self.iteration(prefills, n_decode, decode_kv_tokens)[0]
