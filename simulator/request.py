"""Requests: columnar arrays for a whole workload, one light object per request in flight.

A workload is generated (or read from a trace) as a :class:`RequestTable` of numpy columns,
sorted by arrival. The engine turns a row into a :class:`Request` only when it arrives and
forgets the object once the request reaches a final status, writing its times back into the
table's result columns; so memory holds one Python object per request *in flight*, not per
request of the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["ROW_COLUMNS", "STATUSES", "Request", "RequestTable"]

_EMPTY = np.zeros(0, dtype=np.int64)

#: Final statuses, in the order of their integer codes in :attr:`RequestTable.status`.
STATUSES = ("pending", "completed", "rejected", "dropped", "failed")
PENDING, COMPLETED, REJECTED, DROPPED, FAILED = range(5)

#: The input columns of a :class:`RequestTable` beside ``arrival_s``, in the order of the
#: :class:`Request` constructor's arguments after the arrival time.
ROW_COLUMNS = (
    "model",
    "tenant",
    "input_tokens",
    "input_samples",
    "output_tokens",
    "priority",
    "ttft_slo_s",
    "tpot_slo_s",
    "e2e_slo_s",
)


@dataclass
class RequestTable:
    """A workload's requests as columns (one row per request, sorted by ``arrival_s``).

    Input columns: ``arrival_s``, ``model`` and ``tenant`` (integer codes into
    ``model_names``/``tenant_names``), ``input_tokens``, ``input_samples``, ``output_tokens``,
    ``priority``, and the SLOs ``ttft_slo_s``, ``tpot_slo_s``, ``e2e_slo_s`` (``nan`` = none);
    optionally each request's prefix-unit ids for prefix caching, as one flat array
    ``prefix_ids`` sliced by ``prefix_offsets`` (``n + 1`` offsets; no object per request).
    Result columns (filled by the engine): ``replica``, ``status``, ``start_s``,
    ``first_token_s``, ``completion_s``, ``final_s``, ``preemptions``, ``cached_tokens``
    (prompt tokens served from the prefix cache), ``max_itl_s`` (longest gap between two
    consecutive output tokens), ``truncated_tokens`` (cut to fit the model's context), and, in a
    disaggregated deployment, ``prefill_replica`` (-1: none) and ``kv_transfer_s`` (the KV
    cache's move to the decode replica; ``nan``: none).
    """

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
    model_names: list[str]
    tenant_names: list[str]
    prefix_ids: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None
    replica: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    start_s: np.ndarray = field(init=False)
    first_token_s: np.ndarray = field(init=False)
    completion_s: np.ndarray = field(init=False)
    final_s: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    cached_tokens: np.ndarray = field(init=False)
    max_itl_s: np.ndarray = field(init=False)
    truncated_tokens: np.ndarray = field(init=False)
    prefill_replica: np.ndarray = field(init=False)
    kv_transfer_s: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ROW_COLUMNS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("arrival_s must be sorted")
        self.replica = np.full(n, -1, dtype=np.int32)
        self.status = np.zeros(n, dtype=np.int8)
        self.start_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.completion_s = np.full(n, np.nan)
        self.final_s = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        self.max_itl_s = np.full(n, np.nan)
        self.truncated_tokens = np.zeros(n, dtype=np.int64)
        self.prefill_replica = np.full(n, -1, dtype=np.int32)
        self.kv_transfer_s = np.full(n, np.nan)
        if (self.prefix_ids is None) != (self.prefix_offsets is None):
            raise ValueError("prefix_ids and prefix_offsets come together")
        if self.prefix_offsets is not None and len(self.prefix_offsets) != n + 1:
            raise ValueError(f"prefix_offsets has {len(self.prefix_offsets)} entries, expected {n + 1}")

    def prefix_of(self, i: int) -> np.ndarray:
        """The prefix-unit ids of request ``i`` (empty when the workload has none)."""
        if self.prefix_ids is None or self.prefix_offsets is None:
            return _EMPTY
        return self.prefix_ids[self.prefix_offsets[i] : self.prefix_offsets[i + 1]]

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` rows only (a closed loop cut short by a duration issues fewer
        requests than its budget)."""
        if n >= len(self):
            return
        rows = len(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("prefix_ids", "prefix_offsets") and isinstance(value, np.ndarray) and len(value) == rows:
                setattr(self, f.name, value[:n].copy())
        if self.prefix_offsets is not None and self.prefix_ids is not None:
            self.prefix_offsets = self.prefix_offsets[: n + 1].copy()
            self.prefix_ids = self.prefix_ids[: int(self.prefix_offsets[-1])].copy()

    def __len__(self) -> int:
        return len(self.arrival_s)


class Request:
    """One request in flight. Implements :class:`simulator.policy.RequestView`.

    Identity fields are set at arrival and never change; ``prefilled_tokens`` and
    ``generated_tokens`` are the engine's progress. ``queue_key`` is the scheduling key the
    replica's queue is sorted by.
    """

    __slots__ = (
        "arrival_s",
        "cached_tokens",
        "deadline_s",
        "e2e_slo_s",
        "first_token_s",
        "generated_tokens",
        "input_samples",
        "input_tokens",
        "kv_blocks",
        "kv_tokens",
        "last_token_s",
        "max_itl_s",
        "model",
        "output_tokens",
        "preemptions",
        "prefill_target",
        "prefilled_tokens",
        "prefix_ids",
        "prefix_units",
        "priority",
        "queue_key",
        "remote_kv",
        "replica",
        "request_id",
        "start_s",
        "stop_tokens",
        "swapped_blocks",
        "tenant",
        "tpot_slo_s",
        "truncated_tokens",
        "ttft_slo_s",
    )

    def __init__(
        self,
        request_id: int,
        model: str,
        tenant: str,
        arrival_s: float,
        input_tokens: int,
        input_samples: int,
        output_tokens: int,
        priority: int,
        ttft_slo_s: float,
        tpot_slo_s: float,
        e2e_slo_s: float,
        prefix_ids: Sequence[int] = (),
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.tenant = tenant
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.input_samples = input_samples
        self.output_tokens = output_tokens
        self.priority = priority
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.e2e_slo_s = e2e_slo_s
        self.deadline_s = arrival_s + e2e_slo_s if not math.isnan(e2e_slo_s) else math.inf
        self.prefix_ids = prefix_ids
        self.prefilled_tokens = 0
        self.generated_tokens = 0
        self.prefill_target = input_tokens
        self.stop_tokens = output_tokens  # tokens after which it leaves the batch
        self.kv_tokens = 0  # tokens whose K/V are stored
        self.kv_blocks = 0  # private KV blocks held (prefix units pinned are extra)
        self.prefix_units = 0  # prefix-cache units it pins
        self.swapped_blocks = 0  # blocks in host memory while swapped out
        self.remote_kv = False  # its KV cache was prefilled on another replica (disaggregation)
        self.preemptions = 0
        self.cached_tokens = 0
        self.truncated_tokens = 0
        self.max_itl_s = math.nan
        self.last_token_s = math.nan
        self.queue_key = 0.0
        self.replica = -1
        self.start_s = math.nan
        self.first_token_s = math.nan

    def __repr__(self) -> str:
        return (
            f"Request(id={self.request_id}, model={self.model!r}, arrival_s={self.arrival_s:.6f},"
            f" in={self.input_tokens or self.input_samples}, out={self.output_tokens})"
        )
