"""The policy contract: read-only views in, small frozen decisions out.

A policy never touches simpy, a clock or a global random generator (ARCHITECTURE.md,
principle 1). It receives a read-only view of the state it may see and the current time
``now_s``, and returns a decision that the engine applies. The same policy object therefore
drives the simulator, the real executor and a unit test.

Families and their decision methods (each one a :class:`typing.Protocol`):

* :class:`BatchingPolicy` -- ``next_batch(replica, now_s) -> BatchDecision``: at each
  decision point of one replica, which waiting requests join the running batch, which are
  dropped, and when to decide again if nothing runs.
* :class:`SchedulingPolicy` -- ``key(request, now_s) -> float``: the order of a replica's
  waiting queue (smaller first, ties by arrival), fixed when the request is enqueued; and the
  optional ``admit(request, replica, now_s) -> bool`` for admission control.
* :class:`RoutingPolicy` -- ``pick_replica(request, replicas, now_s) -> int | None``: the index
  of the replica that serves a request, or ``None`` to reject it.

A policy is a class built as ``Cls(params, rng)``, where ``params`` is an instance of the
class's ``Params`` (a frozen pydantic model; the YAML ``params`` are validated against it) and
``rng`` is the policy's own :class:`numpy.random.Generator`. A stateless policy without
parameters may be a plain function with the signature of the decision method.

A batching policy for decoders may also declare, as class attributes, how the engine holds
its requests' KV cache and batches: ``kv_reservation`` -- ``"paged"`` (default: blocks are
allocated as a request's context grows, and the newest request is preempted when they run
out, as vLLM), ``"oracle"`` (reserve ``input_tokens + output_tokens`` at admission) or
``"max"`` (reserve the model's whole context at admission, as Orca and FasterTransformer);
``request_level = True`` -- a batch keeps every request until its longest has finished (finished
ones are padding and complete with the batch), and prompts are padded to the batch's longest
(FasterTransformer); ``decides_every_iteration = True`` -- see :class:`BatchDecision`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from simulator.errors import ConfigError, validation_message

__all__ = [
    "BatchDecision",
    "BatchingPolicy",
    "Policy",
    "PolicyParams",
    "ReplicaView",
    "RequestView",
    "RoutingPolicy",
    "SchedulingPolicy",
    "decision_method",
    "instantiate",
    "validate_params",
]


class RequestView(Protocol):
    """What a policy may read of one request. Times in seconds, sizes in tokens or samples.

    ``deadline_s`` is ``arrival_s + e2e_slo_s`` (``inf`` without an end-to-end SLO).
    ``prefilled_tokens`` and ``generated_tokens`` are the engine's progress on a request;
    ``prefill_target`` is how many tokens its current prefill must reach (``input_tokens``, or,
    after a preemption by recompute, its prompt plus the tokens generated so far);
    ``preemptions`` counts how often it was preempted.
    """

    @property
    def request_id(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def arrival_s(self) -> float: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def input_samples(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def ttft_slo_s(self) -> float: ...
    @property
    def tpot_slo_s(self) -> float: ...
    @property
    def e2e_slo_s(self) -> float: ...
    @property
    def deadline_s(self) -> float: ...
    @property
    def prefilled_tokens(self) -> int: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def prefill_target(self) -> int: ...
    @property
    def preemptions(self) -> int: ...


class ReplicaView(Protocol):
    """What a policy may read of one replica.

    ``queue`` holds the waiting requests in the scheduling policy's order; ``running`` the
    requests admitted to the batch and not yet finished (always empty between batches of a
    non-autoregressive model). ``arrivals_done`` turns true once no request will ever arrive
    again, so a policy that waits for a full batch can flush a partial one.

    A decoder replica's KV cache (all 0 for other models): ``kv_capacity_tokens`` and
    ``kv_used_tokens`` (blocks held x block size), ``kv_block_tokens``, ``kv_free_blocks``
    (free plus evictable cached blocks), ``kv_watermark_blocks`` (kept free when admitting new
    requests). ``kv_blocks_to_admit(r)`` is how many blocks admitting the waiting request ``r``
    allocates now (its prompt, or its reservation, minus prefix-cache hits);
    ``prompt_tokens_to_compute(r)`` how many prompt tokens its prefill will compute;
    ``cached_prefix_tokens(r)`` how many of ``r``'s prompt tokens this replica's prefix cache
    holds now (0 without prefix caching), for cache-aware routing.
    """

    @property
    def replica_id(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def queue(self) -> Sequence[RequestView]: ...
    @property
    def running(self) -> Sequence[RequestView]: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def busy(self) -> bool: ...
    @property
    def autoregressive(self) -> bool: ...
    @property
    def kv_capacity_tokens(self) -> int: ...
    @property
    def kv_used_tokens(self) -> int: ...
    @property
    def kv_block_tokens(self) -> int: ...
    @property
    def kv_free_blocks(self) -> int: ...
    @property
    def kv_watermark_blocks(self) -> int: ...
    @property
    def arrivals_done(self) -> bool: ...
    def kv_blocks_to_admit(self, request: RequestView) -> int: ...
    def prompt_tokens_to_compute(self, request: RequestView) -> int: ...
    def cached_prefix_tokens(self, request: RequestView) -> int: ...


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """A batching decision for one replica at one decision point.

    ``admit``: waiting requests that join the running batch now (a subset of
    ``replica.queue``; for a non-autoregressive model, the batch that runs next).
    ``drop``: waiting requests removed with status ``dropped`` (e.g. SLO already missed).
    ``preempt``: running requests sent back to the queue (by recompute or swap, as the
    deployment's KV cache is configured).
    ``prefill_tokens``: for a decoder, how many prompt tokens each prefilling request (by
    ``request_id``) processes in the next iteration (chunked prefill); a prefilling request
    absent from it processes none. ``None``: every prefilling request processes all of its
    remaining prompt (whole-prompt prefill, as Orca and vLLM).
    ``wake_at_s``: decide again at this time at the latest (``None``: at the next arrival or
    completion). While a decoder's batch runs, the decision comes at the first iteration
    boundary at or after it; while a non-autoregressive batch runs, at its end.

    Contract (what lets the engine skip consulting the policy): without ``wake_at_s``, a
    policy's decision may change only when a request arrives, finishes, or is admitted,
    dropped or preempted. A policy that needs to decide at every decoder iteration regardless
    (e.g. preemption on generated length) sets the class attribute
    ``decides_every_iteration = True``.
    """

    admit: tuple[Any, ...] = ()
    drop: tuple[Any, ...] = ()
    wake_at_s: float | None = None
    preempt: tuple[Any, ...] = ()
    prefill_tokens: Mapping[int, int] | None = None


#: The decision "run nothing new; decide again at the next arrival or completion".
WAIT = BatchDecision()


@runtime_checkable
class BatchingPolicy(Protocol):
    """Decides when a replica runs and what: one call per decision point of that replica."""

    def next_batch(self, replica: ReplicaView, now_s: float) -> BatchDecision:
        """Return the requests to admit (and drop), or when to decide again."""
        ...


@runtime_checkable
class SchedulingPolicy(Protocol):
    """Orders a replica's waiting queue.

    ``key`` is called once, when a request is enqueued; the queue is kept sorted by
    ``(key, arrival order)``. A policy may also define ``admit(request, replica, now_s) ->
    bool``; returning ``False`` rejects the request (status ``rejected``).
    """

    def key(self, request: RequestView, now_s: float) -> float:
        """Return the request's rank in the queue; smaller is served first."""
        ...


@runtime_checkable
class RoutingPolicy(Protocol):
    """Chooses the replica of a model that serves a request, at its arrival."""

    def pick_replica(self, request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int | None:
        """Return an index into ``replicas``, or ``None`` to reject the request."""
        ...


class PolicyParams(BaseModel):
    """Base for a policy's parameters: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy:
    """Optional base class for policies: keeps ``params`` and ``rng``.

    Subclasses declare ``class Params(PolicyParams)`` with their parameters (units in the
    names) and implement their family's decision method.
    """

    Params: type[PolicyParams] = PolicyParams

    def __init__(self, params: PolicyParams | None = None, rng: np.random.Generator | None = None):
        self.params = params if params is not None else self.Params()
        self.rng = rng if rng is not None else np.random.default_rng(0)


#: The decision method of each policy family.
_METHODS = {"batching": "next_batch", "scheduling": "key", "routing": "pick_replica"}


def decision_method(family: str) -> str:
    """The name of the decision method of ``family`` (e.g. ``next_batch`` for batching)."""
    return _METHODS[family]


def validate_params(
    target: Any, params: Mapping[str, Any], source: str, prefix: Sequence[Any] = (), name_key: str = "policy"
) -> PolicyParams | None:
    """Validate YAML ``params`` against ``target.Params``.

    Errors name ``source`` and the key path ``prefix.key``, with a did-you-mean among the
    parameters (a typo never falls back to a default). Functions and classes without
    ``Params`` take no parameters. ``name_key`` is the YAML key that names the plug-in
    (offered as a suggestion for a misspelt key).
    """
    where = f"{source}: {'.'.join(str(p) for p in prefix)}" if prefix else source
    params_cls = getattr(target, "Params", None) if isinstance(target, type) else None
    if params_cls is None:
        if params:
            raise ConfigError(
                f"{where}: {getattr(target, '__qualname__', target)} takes no"
                f" parameters, got {', '.join(sorted(params))}"
            )
        return None
    try:
        if isinstance(params_cls, type) and issubclass(params_cls, BaseModel):
            validated: Any = params_cls.model_validate(dict(params))
        else:
            validated = params_cls(**params)
        return cast(PolicyParams, validated)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, params_cls, prefix, (name_key,))) from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def instantiate(family: str, target: Any, params: PolicyParams | None, rng: np.random.Generator, where: str) -> Any:
    """Build one policy object of ``family`` from a resolved registry ``target``.

    A class is built as ``target(params, rng)`` (``target()`` when it has no ``Params``); a
    plain function becomes an object whose decision method is the function itself (no wrapper
    on the hot path). The result must have the family's decision method.
    """
    method = _METHODS[family]
    if isinstance(target, type):
        obj = target(params, rng) if getattr(target, "Params", None) is not None else target()
    elif callable(target):
        obj = SimpleNamespace(**{method: target})
    else:
        raise ConfigError(f"{where}: expected a policy class or function, got {type(target).__name__}")
    if not callable(getattr(obj, method, None)):
        raise ConfigError(
            f"{where}: {getattr(target, '__qualname__', target)} is not a {family} policy: it has no method '{method}'"
        )
    return obj


def params_of(policy: Any) -> dict[str, Any]:
    """The parameters of a built policy as a plain dict (empty for functions)."""
    params = getattr(policy, "params", None)
    if isinstance(params, BaseModel):
        return params.model_dump()
    return {}
