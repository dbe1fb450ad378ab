"""The request mix: from arrival processes, request classes and sizes to request columns.

A workload is one or more request classes (a model, a tenant, sizes, SLOs, a priority).
Classes without an arrival process of their own share the workload's process, and each
arrival picks its class by weight; a class with its own ``arrival``/``rate_rps`` arrives by
itself, and the streams are merged by time. Or a trace supplies the arrivals (with sizes,
labels and prefix blocks where the format has them): each class takes the trace rows its
``match`` selects, and the rest are shared by weight among the classes without ``match``.

Everything is columnar. :func:`stream_requests` yields :class:`RequestColumns` chunks of at
most :data:`workloads.arrivals.CHUNK` requests per arrival stream, so generating any number of
requests takes bounded memory; :meth:`RequestColumns.concat` joins them for the engine.

Randomness: the workload's :class:`numpy.random.SeedSequence` has fixed children: 0 for the
shared arrivals (or the closed-loop clients), 1 for the class choice, ``2 + c`` for the sizes
of class ``c``, and ``2 + C + j`` for the ``j``-th class with its own arrivals (``C``
classes). Changing one class's sizes never moves the arrivals or another class's sizes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from workloads.arrivals import CHUNK, arrival_stream
from workloads.traces import Trace

__all__ = [
    "RequestClass",
    "RequestColumns",
    "assign_classes",
    "child_seed",
    "closed_loop_requests",
    "requests_from_trace",
    "stream_requests",
]


class RequestClass(Protocol):
    """What the mix needs of one request class (``simulator.experiment.ClassPlan`` has it).

    ``model_code``/``tenant_code``: integer codes; ``priority``; ``weight``: share of the
    shared arrivals; ``slo_s``: (TTFT, TPOT, e2e) objectives in seconds, ``nan`` for none.
    ``input_tokens``/``output_tokens``/``input_samples``: size samplers (``sample(n, rng)``),
    ``None`` where the class gives none (then the trace's column is used, or 0); ``lengths``:
    joint (input, output) pairs to sample rows of. ``token_input``: the model takes input
    tokens and one sample (decoders, encoders), so input tokens are at least 1;
    ``autoregressive``: output tokens are at least 1. ``arrival``/``rate_rps``: the class's
    own arrival process and mean rate (requests/s), ``None`` when it shares the workload's.
    ``match``: the trace labels the class takes rows by (``None``: a share of the rest).
    """

    model_code: int
    tenant_code: int
    priority: int
    weight: float
    slo_s: tuple[float, float, float]
    input_tokens: Any
    output_tokens: Any
    input_samples: Any
    lengths: tuple[np.ndarray, np.ndarray] | None
    token_input: bool
    autoregressive: bool
    arrival: Any
    rate_rps: float | None
    match: Mapping[str, Sequence[str]] | None


@dataclass
class RequestColumns:
    """Requests as columns (one row per request, sorted by ``arrival_s``), as
    :class:`simulator.request.RequestTable` takes them: ``arrival_s`` (s), ``model`` and
    ``tenant`` (int32 codes), ``input_tokens``, ``input_samples``, ``output_tokens`` (int64),
    ``priority`` (int32), SLOs ``ttft_slo_s``, ``tpot_slo_s``, ``e2e_slo_s`` (s, ``nan`` =
    none), and optionally each request's prefix-block ids ``prefix_ids[prefix_offsets[i]:
    prefix_offsets[i + 1]]`` (flat int64 ids and ``n + 1`` offsets)."""

    arrival_s: np.ndarray
    model: np.ndarray
    tenant: np.ndarray
    input_tokens: np.ndarray
    input_samples: np.ndarray
    output_tokens: np.ndarray
    priority: np.ndarray
    ttft_slo_s: np.ndarray
    tpot_slo_s: np.ndarray
    e2e_slo_s: np.ndarray
    prefix_ids: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def concat(cls, chunks: Sequence[RequestColumns]) -> RequestColumns:
        """One table of ``chunks`` in order (a single chunk is returned as it is)."""
        if len(chunks) == 1:
            return chunks[0]
        if not chunks:
            return _empty()
        names = [f.name for f in fields(cls) if not f.name.startswith("prefix")]
        out = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in names}
        ids = [c.prefix_ids for c in chunks]
        offs = [c.prefix_offsets for c in chunks]
        if all(i is not None for i in ids) and all(o is not None for o in offs):
            flat = [i for i in ids if i is not None]
            starts = np.cumsum([0] + [len(i) for i in flat[:-1]])
            parts = [o[1:] + s for o, s in zip([o for o in offs if o is not None], starts, strict=True)]
            return cls(**out, prefix_ids=np.concatenate(flat), prefix_offsets=np.concatenate([[0], *parts]))
        return cls(**out)

    def table_kwargs(self, table_fields: Sequence[str]) -> dict[str, Any]:
        """Keyword arguments for a ``RequestTable`` whose init fields are ``table_fields``
        (prefix blocks are passed only to a table that has fields for them)."""
        names = [f.name for f in fields(self)]
        out = {n: getattr(self, n) for n in names if not n.startswith("prefix")}
        if self.prefix_ids is not None and "prefix_ids" in table_fields and "prefix_offsets" in table_fields:
            out["prefix_ids"] = self.prefix_ids
            out["prefix_offsets"] = self.prefix_offsets
        return out


def _empty() -> RequestColumns:
    i32, i64, f64 = (np.zeros(0, dtype=t) for t in (np.int32, np.int64, np.float64))
    return RequestColumns(f64, i32, i32, i64, i64, i64, i32, f64, f64, f64)


def child_seed(seed_seq: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    """The ``i``-th child of ``seed_seq``, as ``seed_seq.spawn(i + 1)[i]`` on a fresh sequence
    (but without changing ``seed_seq``: the same child every time)."""
    return np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, i), pool_size=seed_seq.pool_size)


def _rng(seed_seq: np.random.SeedSequence, i: int) -> np.random.Generator:
    return np.random.default_rng(child_seed(seed_seq, i))


# --------------------------------------------------------------------------------------------
# columns of one chunk


class _Lookup:
    """Per-class constants as arrays indexed by class (vectorised column building)."""

    def __init__(self, classes: Sequence[RequestClass]) -> None:
        self.model = np.array([c.model_code for c in classes], dtype=np.int32)
        self.tenant = np.array([c.tenant_code for c in classes], dtype=np.int32)
        self.priority = np.array([c.priority for c in classes], dtype=np.int32)
        self.slo = np.array([c.slo_s for c in classes], dtype=np.float64).reshape(len(classes), 3)


def _columns(
    times: np.ndarray,
    which: np.ndarray,
    classes: Sequence[RequestClass],
    size_rngs: Sequence[np.random.Generator],
    lookup: _Lookup,
    trace: Trace | None = None,
) -> RequestColumns:
    """Columns for arrivals ``times`` of classes ``which``: sizes drawn per class, in class
    order, from each class's own generator (or taken from ``trace`` rows when the class
    gives no size and the trace has the column)."""
    n = len(times)
    input_tokens = np.zeros(n, dtype=np.int64)
    input_samples = np.zeros(n, dtype=np.int64)
    output_tokens = np.zeros(n, dtype=np.int64)
    single = len(classes) == 1
    for c, (plan, rng) in enumerate(zip(classes, size_rngs, strict=True)):
        idx: Any = slice(None) if single else np.flatnonzero(which == c)
        k = n if single else len(idx)
        if plan.lengths is not None:
            rows = rng.integers(0, len(plan.lengths[0]), k)
            input_tokens[idx] = plan.lengths[0][rows]
            output_tokens[idx] = plan.lengths[1][rows]
        else:
            if plan.input_tokens is not None:
                input_tokens[idx] = plan.input_tokens.sample(k, rng)
            elif trace is not None and trace.input_tokens is not None and plan.token_input:
                input_tokens[idx] = trace.input_tokens[idx]
            if plan.output_tokens is not None:
                output_tokens[idx] = plan.output_tokens.sample(k, rng)
            elif trace is not None and trace.output_tokens is not None and plan.autoregressive:
                output_tokens[idx] = trace.output_tokens[idx]
        input_samples[idx] = plan.input_samples.sample(k, rng)
        if plan.token_input:
            input_tokens[idx] = np.maximum(input_tokens[idx], 1)
            input_samples[idx] = 1
        else:
            input_samples[idx] = np.maximum(input_samples[idx], 1)
        if plan.autoregressive:
            output_tokens[idx] = np.maximum(output_tokens[idx], 1)
    slo = lookup.slo[which]
    return RequestColumns(
        arrival_s=times,
        model=lookup.model[which],
        tenant=lookup.tenant[which],
        input_tokens=input_tokens,
        input_samples=input_samples,
        output_tokens=output_tokens,
        priority=lookup.priority[which],
        ttft_slo_s=np.ascontiguousarray(slo[:, 0]),
        tpot_slo_s=np.ascontiguousarray(slo[:, 1]),
        e2e_slo_s=np.ascontiguousarray(slo[:, 2]),
    )


# --------------------------------------------------------------------------------------------
# generated arrivals


def _labelled(
    stream: Iterator[np.ndarray], members: list[int], weights: np.ndarray, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each chunk of arrivals with the class of each arrival, drawn by weight."""
    member_arr = np.asarray(members, dtype=np.int64)
    p = weights[members] / weights[members].sum()
    for times in stream:
        if len(members) == 1:
            which = np.full(len(times), members[0], dtype=np.int64)
        else:
            which = member_arr[rng.choice(len(members), len(times), p=p)]
        yield times, which


def _merge(
    groups: list[Iterator[tuple[np.ndarray, np.ndarray]]], num_requests: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Merge time-sorted streams into one, chunk by chunk: everything before the earliest
    'last known time' of the live streams is final and emitted (ties: stream order)."""
    if len(groups) == 1:
        yield from groups[0]
        return
    left = num_requests if num_requests is not None else np.inf
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    live: list[bool] = []
    for g in groups:
        first = next(g, None)
        pending.append(first if first is not None else (np.zeros(0), np.zeros(0, dtype=np.int64)))
        live.append(first is not None)
    while left > 0 and (any(live) or any(len(p[0]) for p in pending)):
        horizon = min((float(p[0][-1]) for p, ok in zip(pending, live, strict=True) if ok), default=np.inf)
        parts_t, parts_w = [], []
        for i, (t, w) in enumerate(pending):
            cut = int(np.searchsorted(t, horizon, side="right"))
            parts_t.append(t[:cut])
            parts_w.append(w[:cut])
            pending[i] = (t[cut:], w[cut:])
        times = np.concatenate(parts_t)
        which = np.concatenate(parts_w)
        order = np.argsort(times, kind="stable")
        times, which = times[order], which[order]
        if len(times) > left:
            times, which = times[: int(left)], which[: int(left)]
        if len(times):
            left -= len(times)
            yield times, which
        for i, g in enumerate(groups):
            if live[i] and not len(pending[i][0]):
                nxt = next(g, None)
                if nxt is None:
                    live[i] = False
                else:
                    pending[i] = nxt


def stream_requests(
    classes: Sequence[RequestClass],
    shared_process: Any,
    shared_rate_rps: float | None,
    seed_seq: np.random.SeedSequence,
    num_requests: int | None,
    duration_s: float | None,
    chunk: int = CHUNK,
) -> Iterator[RequestColumns]:
    """Generate a workload as :class:`RequestColumns` chunks (see the module docstring).

    ``shared_process`` at ``shared_rate_rps`` drives the classes without their own
    ``arrival``. Stops at ``num_requests`` in all or at ``duration_s``, whichever first.
    """
    n_classes = len(classes)
    weights = np.array([c.weight for c in classes], dtype=float)
    size_rngs = [_rng(seed_seq, 2 + c) for c in range(n_classes)]
    lookup = _Lookup(classes)
    shared = [c for c, plan in enumerate(classes) if plan.arrival is None]
    own = [c for c, plan in enumerate(classes) if plan.arrival is not None]
    groups = []
    if shared:
        stream = arrival_stream(shared_process, shared_rate_rps, _rng(seed_seq, 0), num_requests, duration_s, chunk)
        groups.append(_labelled(stream, shared, weights, _rng(seed_seq, 1)))
    for j, c in enumerate(own):
        plan = classes[c]
        stream = arrival_stream(
            plan.arrival, plan.rate_rps, _rng(seed_seq, 2 + n_classes + j), num_requests, duration_s, chunk
        )
        groups.append(_labelled(stream, [c], weights, _rng(seed_seq, 1)))
    for times, which in _merge(groups, num_requests):
        yield _columns(times, which, classes, size_rngs, lookup)


def closed_loop_requests(
    classes: Sequence[RequestClass], num_requests: int, seed_seq: np.random.SeedSequence
) -> RequestColumns:
    """The classes and sizes of a closed loop's ``num_requests`` requests, in the order the
    clients will issue them; ``arrival_s`` is ``nan`` until the engine issues each one."""
    weights = np.array([c.weight for c in classes], dtype=float)
    if len(classes) == 1:
        which = np.zeros(num_requests, dtype=np.int64)
    else:
        which = _rng(seed_seq, 1).choice(len(classes), num_requests, p=weights / weights.sum())
    size_rngs = [_rng(seed_seq, 2 + c) for c in range(len(classes))]
    return _columns(np.full(num_requests, np.nan), which, classes, size_rngs, _Lookup(classes))


# --------------------------------------------------------------------------------------------
# trace arrivals


def assign_classes(classes: Sequence[RequestClass], trace: Trace, rng: np.random.Generator | None) -> np.ndarray:
    """The class of each trace row: the first class whose ``match`` selects it (all its
    label values in the listed ones), else one of the classes without ``match`` by weight
    (``rng`` draws when there are several), else ``-1`` (the row is left out)."""
    n = len(trace)
    which = np.full(n, -1, dtype=np.int64)
    fallback = [c for c, plan in enumerate(classes) if not plan.match]
    for c, plan in enumerate(classes):
        if not plan.match:
            continue
        mask = which == -1
        for label, values in plan.match.items():
            mask &= trace.labels[label].mask(list(values))
        which[mask] = c
    rest = np.flatnonzero(which == -1)
    if fallback and len(rest):
        if len(fallback) == 1:
            which[rest] = fallback[0]
        else:
            assert rng is not None
            weights = np.array([classes[c].weight for c in fallback], dtype=float)
            which[rest] = np.asarray(fallback)[rng.choice(len(fallback), len(rest), p=weights / weights.sum())]
    return which


def requests_from_trace(
    classes: Sequence[RequestClass],
    trace: Trace,
    seed_seq: np.random.SeedSequence,
    num_requests: int | None,
    duration_s: float | None,
) -> RequestColumns:
    """A workload from ``trace``: its first ``num_requests`` arrivals before ``duration_s``,
    each of the class :func:`assign_classes` gives it (rows of no class are left out), with the
    trace's sizes and prefix blocks where the class gives no sizes of its own."""
    if duration_s is not None:
        trace = trace.select(np.arange(int(np.searchsorted(trace.arrival_s, duration_s, side="left"))))
    if num_requests is not None:
        trace = trace.head(num_requests)
    which = assign_classes(classes, trace, _rng(seed_seq, 1))
    if np.any(which < 0):
        keep = which >= 0
        trace = trace.select(keep)
        which = which[keep]
    size_rngs = [_rng(seed_seq, 2 + c) for c in range(len(classes))]
    out = _columns(trace.arrival_s, which, classes, size_rngs, _Lookup(classes), trace)
    out.prefix_ids = trace.prefix_ids
    out.prefix_offsets = trace.prefix_offsets
    return out
