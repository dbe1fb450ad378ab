"""Requests: columnar arrays for a whole workload, one light object per request in flight.

A workload is generated (or read from a trace) as a :class:`RequestTable` of numpy columns,
sorted by arrival. The engine turns a row into a :class:`Request` only when it arrives and
forgets the object once the request reaches a final status, writing its times back into the
table's result columns; so memory holds one Python object per request *in flight*, not per
request of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["STATUSES", "Request", "RequestTable"]

#: Final statuses, in the order of their integer codes in :attr:`RequestTable.status`.
STATUSES = ("pending", "completed", "rejected", "dropped", "failed")
PENDING, COMPLETED, REJECTED, DROPPED, FAILED = range(5)


@dataclass
class RequestTable:
    """A workload's requests as columns (one row per request, sorted by ``arrival_s``).

    Input columns: ``arrival_s``, ``model`` and ``tenant`` (integer codes into
    ``model_names``/``tenant_names``), ``input_tokens``, ``input_samples``, ``output_tokens``,
    ``priority``, and the SLOs ``ttft_slo_s``, ``tpot_slo_s``, ``e2e_slo_s`` (``nan`` = none).
    Result columns (filled by the engine): ``replica``, ``status``, ``start_s``,
    ``first_token_s``, ``completion_s``, ``final_s``.
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
    replica: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    start_s: np.ndarray = field(init=False)
    first_token_s: np.ndarray = field(init=False)
    completion_s: np.ndarray = field(init=False)
    final_s: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in (
            "model",
            "tenant",
            "input_tokens",
            "input_samples",
            "output_tokens",
            "priority",
            "ttft_slo_s",
            "tpot_slo_s",
            "e2e_slo_s",
        ):
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
        "deadline_s",
        "e2e_slo_s",
        "first_token_s",
        "generated_tokens",
        "input_samples",
        "input_tokens",
        "model",
        "output_tokens",
        "prefilled_tokens",
        "priority",
        "queue_key",
        "replica",
        "request_id",
        "start_s",
        "tenant",
        "tpot_slo_s",
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
        self.prefilled_tokens = 0
        self.generated_tokens = 0
        self.queue_key = 0.0
        self.replica = -1
        self.start_s = math.nan
        self.first_token_s = math.nan

    def __repr__(self) -> str:
        return (
            f"Request(id={self.request_id}, model={self.model!r}, arrival_s={self.arrival_s:.6f},"
            f" in={self.input_tokens or self.input_samples}, out={self.output_tokens})"
        )
