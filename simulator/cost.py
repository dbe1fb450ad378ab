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

A profile measured by running a serving runtime adds its host overhead to every step
(:meth:`ModelCost.host_s`: a fixed part and a part per request or sample) and gives the extra
seconds of a step after an idle period (:meth:`ModelCost.wake_s`, which the replicas apply to
the first step of a busy period).

The functions are pure and cached per deployment: a :class:`ModelCost` caches forward-pass
times per batch shape, and prices a decoder's pure-decode iterations vectorised over their KV
lengths, so that many identical decode steps cost one numpy call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.hardware import HardwareProfile, LinkSpec
from simulator.models import CNN, DTYPE_BYTES, Architecture, Decoder, Encoder, Operator, Recommendation
from simulator.tables import DIMS

__all__ = [
    "Cost",
    "Deployment",
    "ModelCost",
    "allreduce_s",
    "kv_transfer_s",
    "operator_cost",
    "operator_s",
    "roofline_s",
]

#: Seconds, FLOPs and bytes moved (FLOPs and bytes as exact integers).
Cost = tuple[float, int, int]


def allreduce_s(nbytes: float, devices: int, link: LinkSpec) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` among ``devices`` devices on ``link``."""
    if devices <= 1:
        return 0.0
    steps = 2 * (devices - 1)
    return steps * link.latency_s + (steps / devices) * nbytes / link.bandwidth_bytes_per_s


def alltoall_s(nbytes: float, devices: int, link: LinkSpec) -> float:
    """Seconds for an all-to-all in which each of ``devices`` devices holds ``nbytes``: it keeps
    ``1/devices`` and exchanges the rest, one peer after another."""
    if devices <= 1:
        return 0.0
    return (devices - 1) * link.latency_s + (devices - 1) / devices * nbytes / link.bandwidth_bytes_per_s


def roofline_s(op: Operator, profile: HardwareProfile, dtype: str) -> float:
    """Seconds for one instance of ``op`` by the roofline with default efficiencies."""
    compute = op.flops / (profile.peak_flops(dtype) * profile.compute_efficiency(op.kind))
    memory = op.bytes / (profile.memory_bandwidth_bytes_per_s * profile.memory_efficiency(op.kind))
    return profile.launch_overhead_s + max(compute, memory)


def operator_cost(op: Operator, profile: HardwareProfile, dtype: str, tp: int = 1, ep: int = 1) -> tuple[float, bool]:
    """Seconds for all ``op.count`` instances of ``op`` on one device, and whether a measured
    table (or collective curve) priced it. All-reduces run among the ``tp`` devices of a
    tensor-parallel group, all-to-alls among the ``ep`` devices of an expert-parallel one."""
    if op.kind in ("allreduce", "alltoall"):
        devices = tp if op.kind == "allreduce" else ep
        if devices <= 1:
            return 0.0, True
        curve = profile.collective("intra_node", op.kind, devices)
        if curve is not None:
            return op.count * curve.time_s(op.bytes), True
        formula = allreduce_s if op.kind == "allreduce" else alltoall_s
        return op.count * formula(op.bytes, devices, profile.node.intra_node), False
    candidates = [(op.kind, op.shape, op.variant)]
    if op.variant and op.kind in _GENERIC_VARIANT_KINDS:  # e.g. an 'add' priced by the generic elementwise table
        candidates.append((op.kind, op.shape, ""))
    if op.fallback is not None:
        candidates.append((op.fallback[0], op.fallback[1], ""))
    for kind, shape, variant in candidates:
        table = profile.table(kind, dtype, variant)
        if table is not None and len(shape) == table.ndim:
            work = op.bytes if DIMS[kind][1] == "bytes" else op.flops
            return op.count * table.time_one_s(shape, work), True
    return op.count * roofline_s(op, profile, dtype), False


#: Kinds whose variants are refinements of one generic table (unlike attention's head dimension
#: or a convolution's geometry, which are different operators).
_GENERIC_VARIANT_KINDS = ("elementwise", "norm", "embedding")


def operator_s(op: Operator, profile: HardwareProfile, dtype: str, tp: int = 1) -> float:
    """Seconds for all ``op.count`` instances of ``op`` on one device of ``profile``."""
    return operator_cost(op, profile, dtype, tp)[0]


def kv_transfer_s(tokens: int, src: Any, dst: Any, same_node: bool) -> float:
    """Seconds to move a request's KV cache (``tokens`` tokens of every layer) from a prefill
    replica to a decode replica of a disaggregated deployment.

    ``src``/``dst``: the two pools' plans (:class:`simulator.experiment.ModelPlan`). Each of
    ``min(src devices, dst devices)`` device pairs moves its share at once; over the node's
    link when both replicas sit on one node of one device type, otherwise over the network,
    at the pace of the slower end. A measured send/recv table of the link is used when the
    profile has one. With ``src.kv_transfer == "layerwise"`` (Splitwise) every layer's KV is
    sent as soon as it is computed, so only the last layer's share remains after the prefill.
    """
    arch = src.arch
    nbytes = tokens * arch.kv_bytes_per_token(src.dtype, 1)
    per_stream = nbytes / max(1, min(src.devices_per_replica, dst.devices_per_replica))
    if src.kv_transfer == "layerwise":
        per_stream /= arch.layers
    inside = same_node and src.profile is dst.profile
    link_name = "intra_node" if inside else "inter_node"
    seconds = 0.0
    for profile in (src.profile,) if inside else (src.profile, dst.profile):
        curve = profile.collective(link_name, "sendrecv", 2)
        link = profile.node.intra_node if inside else profile.network.inter_node
        seconds = max(seconds, curve.time_s(per_stream) if curve is not None else link.transfer_s(per_stream))
    return seconds


@dataclass(frozen=True)
class Deployment:
    """What a replica runs: an architecture in a dtype, and how it is parallelised.

    ``tp`` tensor-parallel devices per stage; ``pp`` pipeline stages (layers split evenly),
    through which an iteration's batch flows as ``microbatches`` micro-batches (default
    ``pp``), the stages joined by the node's link or, when ``cross_node``, the network;
    ``ep`` expert-parallel devices for a mixture-of-experts model, routed with Zipf ``skew``.
    """

    arch: Architecture
    dtype: str
    tp: int = 1
    pp: int = 1
    ep: int = 1
    skew: float = 0.0
    microbatches: int | None = None
    cross_node: bool = False

    @property
    def devices(self) -> int:
        """Devices one replica occupies."""
        return self.tp * self.pp * self.ep


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
        self.pp = deployment.pp
        self.ep = deployment.ep
        self._microbatches = deployment.microbatches or deployment.pp
        self._stage_link = profile.network.inter_node if deployment.cross_node else profile.node.intra_node
        self._stage_link_name = "inter_node" if deployment.cross_node else "intra_node"
        profile.peak_flops(self.dtype)  # fail early on a dtype the device lacks
        self._batch_cache: dict[tuple[int, int], Cost] = {}
        self._dense_cache: dict[tuple[int, int], Cost] = {}
        self._token_cache: dict[int, Cost] = {}  # dense operators that scale with tokens
        self._seq_cache: dict[int, Cost] = {}  # ... and those that scale with sequences
        self._prefill_cache: dict[tuple[int, int], Cost] = {}
        self.uncalibrated_kinds: set[str] = set()
        self.calibrated_kinds: set[str] = set()
        self.fallback_kinds: dict[str, str] = {}  # kind -> the kind whose table priced it
        runtime = profile.runtime
        #: Host seconds every step takes beyond its operators, and per item (request or sample)
        #: in the step (the profile's measured runtime; 0 without one).
        self.step_overhead_s, self.item_overhead_s = (
            runtime.step_overhead_s(self.arch.name) if runtime is not None else (0.0, 0.0)
        )
        #: Quantiles of measured / priced step time (empty: steps take exactly their price).
        self.step_time_quantiles = runtime.step_time_quantiles(self.arch.name) if runtime is not None else []
        #: Lag-1 correlation of consecutive steps' ratios (normal scores; 0: independent).
        self.step_time_correlation = runtime.step_time_correlation(self.arch.name) if runtime is not None else 0.0
        self._decode_table = None
        self._decode_curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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
            seconds, measured = operator_cost(op, self.profile, self.dtype, self.tp, self.ep)
            if measured and op.fallback is not None and self.profile.table(op.kind, self.dtype, op.variant) is None:
                self.fallback_kinds[op.kind] = op.fallback[0]
            else:
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
        seconds, flops, nbytes = self._sum(ops)
        value = (seconds + self.host_s(samples), flops, nbytes)
        self._batch_cache[key] = value
        return value

    def host_s(self, items: int | np.ndarray) -> Any:
        """The profile's host overhead of a step of ``items`` requests or samples, seconds."""
        return self.step_overhead_s + self.item_overhead_s * items

    def wake_s(self, idle_s: float) -> float:
        """Extra seconds of the first step after the device idled ``idle_s`` seconds (the
        profile's measured ``runtime.wake_after_idle`` curve of this architecture; 0 without)."""
        runtime = self.profile.runtime
        return runtime.wake_s(self.arch.name, idle_s) if runtime is not None else 0.0

    def batch_s(self, samples: int, seq_len: int = 0) -> float:
        """Seconds of one forward pass over a batch (see :meth:`batch`)."""
        return self.batch(samples, seq_len)[0]

    # ---- decoders ------------------------------------------------------------------------

    def dense(self, n_tokens: int, n_seqs: int) -> Cost:
        """Every non-attention operator of one iteration (see ``Decoder.dense_operators``)."""
        key = (n_tokens, n_seqs)
        cached = self._dense_cache.get(key)
        if cached is None:
            tokens = self._token_cache.get(n_tokens)
            if tokens is None:
                assert isinstance(self.arch, Decoder)
                ops = self.arch.dense_operators(n_tokens, 0, self.dtype, self.tp, self.ep, self.deployment.skew)
                tokens = self._token_cache[n_tokens] = self._sum(ops)
            seqs = self._seq_cache.get(n_seqs)
            if seqs is None:
                assert isinstance(self.arch, Decoder)
                seqs = self._seq_cache[n_seqs] = self._sum(
                    self.arch.sequence_operators(n_seqs, self.dtype, self.tp, self.ep)
                )
            cached = self._dense_cache[key] = (tokens[0] + seqs[0], tokens[1] + seqs[1], tokens[2] + seqs[2])
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

    def _local(self, n_seqs: int, kv_tokens: np.ndarray) -> tuple[int, np.ndarray]:
        """The busiest expert-parallel device's share of a decode batch (all of it without EP)."""
        if self.ep == 1:
            return n_seqs, kv_tokens
        local = -(-n_seqs // self.ep)
        return local, kv_tokens * (local / n_seqs)

    def decode_attention_s(self, n_seqs: int, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds of decode attention for ``n_seqs`` sequences holding ``kv_tokens`` keys in
        total, elementwise over an array of KV totals (one per iteration)."""
        assert isinstance(self.arch, Decoder)
        n_seqs, kv_tokens = self._local(n_seqs, kv_tokens)
        table = self._decode_table
        if table is not None:
            b, d = self._dec_bytes
            curve = self._decode_curves.get(n_seqs)
            if curve is None:  # the batch coordinate is fixed: interpolate along the KV length only
                curve = self._decode_curves[n_seqs] = table.along_last((n_seqs * self._kv_heads,))
            return self.arch.layers * table.time_along_s(curve, kv_tokens / n_seqs, b * kv_tokens + d * n_seqs)
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

    # ---- pipeline parallelism ------------------------------------------------------------

    def _stage_transfer_s(self, tokens: int) -> float:
        """Seconds to send one micro-batch's activations (``tokens`` x hidden) to the next stage."""
        assert isinstance(self.arch, Decoder)
        nbytes = tokens * self.arch.hidden * DTYPE_BYTES[self.dtype]
        curve = self.profile.collective(self._stage_link_name, "sendrecv", 2)
        return curve.time_s(nbytes) if curve is not None else self._stage_link.transfer_s(nbytes)

    def _pipeline_s(self, stage_s: float | np.ndarray, microbatches: int, tokens: int) -> float | np.ndarray:
        """A GPipe-style schedule: ``microbatches`` micro-batches through ``pp`` stages of
        ``stage_s`` each (the full model's time / ``pp``), with ``pp - 1`` bubbles and the
        last micro-batch's stage-to-stage transfers on the critical path."""
        pp = self.pp
        return (microbatches + pp - 1) * stage_s + (pp - 1) * self._stage_transfer_s(tokens)

    # ---- whole iterations ----------------------------------------------------------------

    def _decode_once_s(self, n_seqs: int, kv_tokens: np.ndarray) -> np.ndarray:
        return self.dense_s(n_seqs, n_seqs) + self.decode_attention_s(n_seqs, kv_tokens)

    def decode_steps_s(self, n_seqs: int, kv_tokens: np.ndarray) -> np.ndarray:
        """Seconds of each of a run of pure-decode iterations of ``n_seqs`` sequences.

        ``kv_tokens[i]`` is the batch's total KV length attended in iteration ``i``. This is
        the one function both the coalesced and the step-by-step engine use, so the two give
        bit-identical times. With pipeline parallelism the batch is split into micro-batches
        of ``ceil(n_seqs / microbatches)`` sequences. Each step includes the profile's host
        overhead (:meth:`host_s`).
        """
        if self.pp == 1:
            return self._decode_once_s(n_seqs, kv_tokens) + self.host_s(n_seqs)
        m = min(self._microbatches, n_seqs)
        size = -(-n_seqs // m)
        stage = self._decode_once_s(size, kv_tokens * (size / n_seqs)) / self.pp
        return np.asarray(self._pipeline_s(stage, m, size)) + self.host_s(n_seqs)

    def decode_steps_work(self, n_seqs: int, kv_tokens: np.ndarray) -> tuple[int, int]:
        """Total FLOPs and bytes (exact integers) of a run of pure-decode iterations, on the
        busiest device of an expert-parallel group (the whole replica otherwise)."""
        _, dense_flops, dense_bytes = self.dense(n_seqs, n_seqs)
        k = len(kv_tokens)
        a, b, c, d = self._dec_terms
        if self.ep == 1 and all(float(x).is_integer() for x in (a, b, c, d)):
            # integer terms: the sum over the run's KV totals in closed form, exactly
            kv_sum = round(float(kv_tokens.sum())) if k < 2**20 else int(kv_tokens.astype(np.int64).sum())
            layers = self.arch.layers  # type: ignore[attr-defined]
            flops = layers * (int(a) * kv_sum + int(c) * n_seqs * k)
            nbytes = layers * (int(b) * kv_sum + int(d) * n_seqs * k)
            return k * dense_flops + flops, k * dense_bytes + nbytes
        f_arr, b_arr = self.decode_attention_work(*self._local(n_seqs, kv_tokens))
        return k * dense_flops + int(f_arr.sum()), k * dense_bytes + int(b_arr.sum())

    def _iteration_once(self, prefills: Sequence[tuple[int, int]], n_decode: int, decode_kv: float) -> Cost:
        """One mixed iteration of the whole model on one stage-set (no pipelining)."""
        kv = np.array([float(decode_kv)])
        n_tokens = n_decode + sum(q for q, _ in prefills)
        total, flops, nbytes = self.dense(n_tokens, n_decode + len(prefills))
        attention = [self.prefill_attention(q_len, kv_len) for q_len, kv_len in prefills]
        seconds = [a[0] for a in attention]
        # expert parallelism: each prefill runs on one device of the group
        total += max(max(seconds, default=0.0), sum(seconds) / self.ep) if self.ep > 1 else sum(seconds)
        flops += sum(a[1] for a in attention)
        nbytes += sum(a[2] for a in attention)
        if n_decode:
            total += float(self.decode_attention_s(n_decode, kv)[0])
            f_arr, b_arr = self.decode_attention_work(*self._local(n_decode, kv))
            flops += int(f_arr[0])
            nbytes += int(b_arr[0])
        return total, flops, nbytes

    def iteration(self, prefills: Sequence[tuple[int, int]], n_decode: int, decode_kv_tokens: int) -> Cost:
        """Seconds, FLOPs and bytes of one mixed iteration.

        ``prefills``: ``(q_len, kv_len)`` of each request prefilling in it (``kv_len`` = its
        past plus ``q_len``); ``n_decode`` requests decode one token each, attending
        ``decode_kv_tokens`` keys in total. With pipeline parallelism the requests are dealt
        round-robin into micro-batches and the slowest sets the pipeline's pace. Includes the
        profile's host overhead (:meth:`host_s`).
        """
        kv = np.array([float(decode_kv_tokens)])
        if not prefills:
            flops, nbytes = self.decode_steps_work(n_decode, kv)
            return float(self.decode_steps_s(n_decode, kv)[0]), flops, nbytes
        if self.pp == 1:
            seconds, flops, nbytes = self._iteration_once(prefills, n_decode, decode_kv_tokens)
            return seconds + self.host_s(len(prefills) + n_decode), flops, nbytes
        m = max(1, min(self._microbatches, len(prefills) + n_decode))
        costs = []
        tokens = []
        for g in range(m):
            group = list(prefills[g::m])
            dec = n_decode // m + (1 if g < n_decode % m else 0)
            if not group and not dec:
                continue
            costs.append(self._iteration_once(group, dec, decode_kv_tokens * (dec / n_decode) if dec else 0))
            tokens.append(dec + sum(q for q, _ in group))
        stage = max(c[0] for c in costs) / self.pp
        seconds = float(self._pipeline_s(stage, len(costs), max(tokens))) + self.host_s(len(prefills) + n_decode)
        return seconds, sum(c[1] for c in costs), sum(c[2] for c in costs)

    def iteration_s(self, prefills: Sequence[tuple[int, int]], n_decode: int, decode_kv_tokens: int) -> float:
        """Seconds of :meth:`iteration`."""
        return self.iteration(prefills, n_decode, decode_kv_tokens)[0]
