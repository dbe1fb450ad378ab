"""Conformance checks for policies: :func:`check_policy`, run by plug-in authors in their own CI.

Like Gymnasium's ``check_env``, :func:`check_policy` takes a policy (a registry name, a
``"module:Class"`` path, or the class or function itself) and its YAML ``params``, builds it
exactly as an experiment would, and drives it through many randomly generated but valid
read-only views. It fails with :class:`PolicyCheckError` (an :class:`AssertionError`, so pytest
shows the message) as soon as the policy breaks the contract of :mod:`simulator.policy`, and
then runs a short end-to-end simulation with the policy plugged in. A plug-in's test suite
needs one line per policy::

    # tests/test_conformance.py of the plug-in
    from simulator.testing import check_policy
    from my_lab.batching import Sarathi

    def test_sarathi_conforms():
        check_policy("batching", Sarathi, {"max_batch_size": 64, "chunk_tokens": 512})

    def test_edf_conforms():
        check_policy("scheduling", "my_lab.sched:Edf")

What is checked, for every decision:

* batching (``next_batch``): it returns a :class:`~simulator.policy.BatchDecision` whose
  ``admit`` and ``drop`` are tuples of requests waiting in the view's queue, none twice and
  none both admitted and dropped; the running batch plus the admitted requests stay within
  the policy's own ``params.max_batch_size``; on a decoder view the KV cache holds every
  running and admitted request's whole sequence (``input_tokens + output_tokens``) and, when
  the policy declares ``max_batch_tokens``, an iteration's new tokens (one per running request
  plus the prompts of the admitted ones) stay within it, except that one prompt may run alone
  (as :class:`policies.batching.ContinuousBatching` documents); and ``wake_at_s``, when the
  replica would sit idle, lies strictly after ``now_s``.
* scheduling (``key``, and ``admit`` if defined): the key is a finite real number; ``admit``
  returns a bool.
* routing (``pick_replica``): an ``int`` index into the replicas, or ``None``.
* every family: the policy does not mutate the view (queue and running lists, replica fields,
  every field of every request), does not raise, and is deterministic: a second instance
  built with the same seed and fed the same sequence of views returns equal decisions.

The end-to-end smoke runs a small experiment with the policy on a CNN (``resnet-50``) and a
decoder (``llama-2-7b``) and checks that every request ends exactly once with a final status,
that the run did not stall, that the clocks of completed requests are ordered, and that two
runs with the same seed give identical results.

:class:`StubReplica` and :func:`make_request` build hand-made views for a policy's own unit
tests.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator.config import expand
from simulator.engine import Simulation
from simulator.errors import LdsimError
from simulator.experiment import ResolvedRun, resolve
from simulator.metrics import requests_frame
from simulator.policy import BatchDecision, PolicyParams, instantiate, validate_params
from simulator.registry import REGISTRIES, Registry
from simulator.request import COMPLETED, PENDING, Request

__all__ = ["PolicyCheckError", "StubReplica", "check_policy", "make_request"]

#: The models of the end-to-end smoke run: a CNN (no tokens) and a decoder (KV cache).
SMOKE_MODELS = ("resnet-50", "llama-2-7b")


class PolicyCheckError(AssertionError):
    """A policy broke the policy contract. The message names the policy, the rule it broke,
    the time and the view it was given."""


def make_request(
    request_id: int,
    arrival_s: float,
    *,
    model: str = "m",
    tenant: str = "default",
    input_tokens: int = 0,
    input_samples: int = 1,
    output_tokens: int = 0,
    priority: int = 0,
    ttft_slo_s: float = math.nan,
    tpot_slo_s: float = math.nan,
    e2e_slo_s: float = math.nan,
    prefix_ids: Sequence[int] = (),
) -> Request:
    """A waiting :class:`~simulator.request.Request` (a :class:`~simulator.policy.RequestView`)
    for a hand-built view. Times in seconds (``nan``: no SLO), sizes in tokens or samples;
    ``prefix_ids`` the ids of its prompt's prefix units (for prefix caching)."""
    return Request(
        request_id,
        model,
        tenant,
        arrival_s,
        input_tokens,
        input_samples,
        output_tokens,
        priority,
        ttft_slo_s,
        tpot_slo_s,
        e2e_slo_s,
        list(prefix_ids),
    )


@dataclass(eq=False)
class StubReplica:
    """A hand-built :class:`~simulator.policy.ReplicaView`: plain, mutable fields.

    A decoder view has a KV cache of ``kv_capacity_tokens`` in blocks of ``kv_block_tokens``
    (default 1 token, so that hand-made cases can count in tokens). ``kv_used_blocks`` defaults
    to what the running requests hold under ``kv_reservation`` (the policy's, as the engine
    would allocate it: ``paged`` their stored tokens, ``oracle`` input + output, ``max`` the
    context, ``pow2``); ``busy`` to whether anything runs. ``outstanding`` is always
    ``len(queue) + len(running)``.
    """

    queue: list[Any] = field(default_factory=list)
    running: list[Any] = field(default_factory=list)
    replica_id: int = 0
    model: str = "m"
    autoregressive: bool = False
    kv_capacity_tokens: int = 0
    kv_block_tokens: int = 1
    kv_used_blocks: int = -1
    kv_watermark_blocks: int = 0
    kv_reservation: str = "oracle"
    context_tokens: int = 4096
    arrivals_done: bool = False
    busy: bool | None = None
    cached_prefix_units: set[int] = field(default_factory=set)
    prefix_block_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.autoregressive:
            self.kv_block_tokens = self.kv_block_tokens or 1
        if self.kv_used_blocks < 0:
            self.kv_used_blocks = (
                sum(self._blocks(self._held_tokens(r)) for r in self.running) if self.autoregressive else 0
            )
        if self.busy is None:
            self.busy = bool(self.running)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.kv_block_tokens)

    def _reserve(self, req: Any) -> int:
        final = req.input_tokens + req.output_tokens
        if self.kv_reservation == "max":
            return max(self.context_tokens, final)
        if self.kv_reservation == "pow2":
            return min(max(self.context_tokens, final), 1 << (final - 1).bit_length())
        if self.kv_reservation == "oracle":
            return final
        return int(req.prefill_target)

    def _held_tokens(self, req: Any) -> int:
        if self.kv_reservation == "paged":
            return int(req.prefilled_tokens + max(0, req.generated_tokens - 1))
        return self._reserve(req)

    @property
    def outstanding(self) -> int:
        """Requests waiting or running on this replica."""
        return len(self.queue) + len(self.running)

    @property
    def kv_total_blocks(self) -> int:
        """Blocks of the whole cache."""
        return self.kv_capacity_tokens // self.kv_block_tokens if self.autoregressive else 0

    @property
    def kv_used_tokens(self) -> int:
        """Tokens' worth of blocks held."""
        return self.kv_used_blocks * self.kv_block_tokens

    @property
    def kv_free_blocks(self) -> int:
        """Blocks free."""
        return self.kv_total_blocks - self.kv_used_blocks

    def kv_blocks_to_admit(self, request: Any) -> int:
        """Blocks admitting ``request`` would allocate (its prompt, or its reservation)."""
        return self._blocks(self._reserve(request)) if self.autoregressive else 0

    def prompt_tokens_to_compute(self, request: Any) -> int:
        """Prompt tokens the request's prefill still has to compute."""
        return int(request.prefill_target - request.prefilled_tokens)

    def cached_prefix_tokens(self, request: Any) -> int:
        """Prompt tokens of ``request`` whose prefix units are in ``cached_prefix_units``
        (the leading run of them, as a prefix cache reuses)."""
        if not self.autoregressive:
            return 0
        ids = list(getattr(request, "prefix_ids", ()))
        usable = min(len(ids), max(0, (int(request.input_tokens) - 1) // self.prefix_block_tokens))
        hits = 0
        while hits < usable and ids[hits] in self.cached_prefix_units:
            hits += 1
        return hits * self.prefix_block_tokens


# --------------------------------------------------------------------------------------------
# the entry point


def check_policy(
    family: str,
    policy_or_name: Any,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    cases: int = 200,
    models: Sequence[str] = SMOKE_MODELS,
) -> None:
    """Check that a policy keeps the policy contract (see the module docstring).

    ``family`` is ``"batching"``, ``"scheduling"`` or ``"routing"``; ``policy_or_name`` a
    registry name, a ``"module:Class"`` path, or the class or function itself; ``params`` the
    YAML parameters (validated against the policy's ``Params``). ``cases`` decisions are
    checked on random views drawn from ``seed``; then one short simulation per model in
    ``models`` (architecture names; empty to skip them) runs with the policy plugged in.

    Raises :class:`PolicyCheckError` on the first violation, and
    :class:`~simulator.errors.ConfigError` if the name does not resolve or ``params`` do not
    fit. Deterministic for a given ``seed``.
    """
    if family not in REGISTRIES:
        raise ValueError(f"unknown policy family {family!r}; known: {', '.join(REGISTRIES)}")
    registry = REGISTRIES[family]
    named = isinstance(policy_or_name, str)
    target = registry.resolve(policy_or_name) if named else policy_or_name
    label = policy_or_name if named else getattr(target, "__qualname__", repr(target))
    where = f"check_policy({family}, {label})"
    validated = validate_params(target, dict(params or {}), where)

    def build(ss: np.random.SeedSequence) -> Any:
        return instantiate(family, target, validated, np.random.default_rng(ss), where)

    checker = _Checker(family, label, validated)
    root = np.random.SeedSequence(seed)
    view_ss, policy_ss = root.spawn(2)
    rng = np.random.default_rng(view_ss)
    episode = {"batching": _batching_episode, "scheduling": _scheduling_episode, "routing": _routing_episode}[family]
    done = 0
    while done < cases:
        steps = min(cases - done, int(rng.integers(5, 41)))
        (ss,) = policy_ss.spawn(1)
        episode(checker, build(ss), build(ss), rng, steps, first_id=done * 8)
        done += steps

    with _yaml_name(registry, policy_or_name if named else target) as yaml_name:
        for model in models:
            _smoke(checker, family, yaml_name, dict(params or {}), model, seed)


# --------------------------------------------------------------------------------------------
# checking one decision


_REPLICA_FIELDS = (
    "replica_id",
    "model",
    "outstanding",
    "busy",
    "autoregressive",
    "kv_capacity_tokens",
    "kv_used_tokens",
    "arrivals_done",
)
_REQUEST_FIELDS = (
    "request_id",
    "model",
    "tenant",
    "arrival_s",
    "input_tokens",
    "input_samples",
    "output_tokens",
    "priority",
    "ttft_slo_s",
    "tpot_slo_s",
    "e2e_slo_s",
    "deadline_s",
    "prefilled_tokens",
    "generated_tokens",
)


def _plain(value: Any) -> Any:
    """``value`` with ``nan`` replaced by a marker, so that snapshots compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _request_state(req: Any) -> tuple[Any, ...]:
    names = getattr(type(req), "__slots__", None) or _REQUEST_FIELDS
    return tuple((name, _plain(getattr(req, name, None))) for name in names)


def _snapshot(replicas: Sequence[Any], requests: Sequence[Any], replicas_list: Any = None) -> dict[str, Any]:
    """Everything of a view a policy could change: list identities and contents, fields."""
    snap: dict[str, Any] = {}
    if replicas_list is not None:
        snap["replicas (list object)"] = id(replicas_list)
        snap["replicas"] = tuple(id(r) for r in replicas_list)
    seen: dict[int, Any] = {id(r): r for r in requests}
    for k, rep in enumerate(replicas):
        for name in _REPLICA_FIELDS:
            snap[f"replicas[{k}].{name}"] = _plain(getattr(rep, name))
        for name in ("queue", "running"):
            lst = getattr(rep, name)
            snap[f"replicas[{k}].{name} (list object)"] = id(lst)
            snap[f"replicas[{k}].{name}"] = tuple(getattr(r, "request_id", id(r)) for r in lst)
            snap[f"replicas[{k}].{name} (objects)"] = tuple(id(r) for r in lst)
            seen.update((id(r), r) for r in lst)
    for req in seen.values():
        snap[f"request {req.request_id}"] = _request_state(req)
    return snap


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    changed = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in before if before.get(k) != after.get(k)]
    changed += [f"{k}: (absent) -> {after[k]!r}" for k in after if k not in before]
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def _short(reqs: Sequence[Any], limit: int = 6) -> str:
    head = ", ".join(repr(r) for r in list(reqs)[:limit])
    return f"[{head}{', ...' if len(reqs) > limit else ''}] ({len(reqs)})"


def _describe(view: Any) -> str:
    text = f"queue={_short(view.queue)}, running={_short(view.running)}, arrivals_done={view.arrivals_done}"
    if view.autoregressive:
        text += f", kv {view.kv_used_tokens}/{view.kv_capacity_tokens} tokens"
    return text


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


class _Checker:
    """Calls a policy, checks each answer, and raises :class:`PolicyCheckError` with context."""

    def __init__(self, family: str, label: str, params: PolicyParams | None) -> None:
        self.family = family
        self.label = label

        def first(names: tuple[str, ...]) -> int | None:
            values = [getattr(params, n, None) for n in names]
            return next((v for v in values if isinstance(v, int) and not isinstance(v, bool)), None)

        self.max_batch_size = first(("max_batch_size", "max_num_seqs"))
        self.max_batch_tokens = first(("max_batch_tokens", "max_num_batched_tokens", "chunk_tokens"))

    def fail(self, message: str) -> PolicyCheckError:
        return PolicyCheckError(f"{self.family} policy {self.label}: {message}")

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        replicas: Sequence[Any],
        requests: Sequence[Any],
        context: str,
        replicas_list: Any = None,
    ) -> Any:
        """Call ``fn(*args)``; fail if it raises or changes anything of the view."""
        name = getattr(fn, "__name__", "the decision method")
        before = _snapshot(replicas, requests, replicas_list)
        try:
            result = fn(*args)
        except Exception as exc:
            raise self.fail(f"{name} raised {type(exc).__name__}: {exc} ({context})") from exc
        after = _snapshot(replicas, requests, replicas_list)
        if after != before:
            raise self.fail(f"{name} mutated the read-only view: {_diff(before, after)} ({context})")
        return result

    def same(self, first: Any, second: Any, method: str, context: str) -> None:
        """Fail unless two instances built with the same seed answered alike."""
        if first != second:
            raise self.fail(
                f"{method} is not deterministic: two instances built with the same seed and fed the"
                f" same views answered {first!r} and {second!r} ({context})"
            )

    # ---- batching --------------------------------------------------------------------

    def batch(self, decision: Any, view: Any, now: float, context: str) -> tuple[Any, ...]:
        """Check one batching decision against ``view``; return its comparable form."""
        if not isinstance(decision, BatchDecision):
            raise self.fail(f"next_batch returned {type(decision).__name__}, not a BatchDecision ({context})")
        for name in ("admit", "drop"):
            group = getattr(decision, name)
            if not isinstance(group, tuple):
                raise self.fail(f"BatchDecision.{name} must be a tuple of requests, got {type(group).__name__}")
        admit, drop, wake = decision.admit, decision.drop, decision.wake_at_s
        waiting = {id(r) for r in view.queue}
        taken: dict[int, str] = {}
        for verb, group in (("admitted", admit), ("dropped", drop)):
            for req in group:
                if id(req) not in waiting:
                    raise self.fail(f"{verb} {req!r}, which is not waiting in the queue ({context})")
                if id(req) in taken:
                    how = "twice" if taken[id(req)] == verb else f"both {taken[id(req)]} and {verb}"
                    raise self.fail(f"{req!r} was {how} in one decision ({context})")
                taken[id(req)] = verb
        if wake is not None and not _is_real(wake):
            raise self.fail(f"wake_at_s must be a float in seconds or None, got {wake!r} ({context})")
        if not admit and not view.running and wake is not None and not wake > now:
            raise self.fail(
                f"admitted nothing, runs nothing and asked to wake at {wake!r} <= now_s ({now!r}):"
                f" the replica would never decide again ({context})"
            )
        running = len(view.running)
        if self.max_batch_size is not None and running + len(admit) > self.max_batch_size:
            raise self.fail(
                f"running ({running}) + admitted ({len(admit)}) requests exceed its"
                f" max_batch_size ({self.max_batch_size}) ({context})"
            )
        if view.autoregressive:
            need = sum(view.kv_blocks_to_admit(r) for r in admit)
            if need > view.kv_free_blocks:
                raise self.fail(
                    f"admitted {len(admit)} requests needing {need} KV blocks with {view.kv_free_blocks}"
                    f" free: beyond the KV cache ({context})"
                )
            decoding = sum(1 for r in view.running if r.prefilled_tokens >= r.prefill_target)
            chunks = decision.prefill_tokens
            if chunks is None:
                prefills = [view.prompt_tokens_to_compute(r) for r in (*view.running, *admit)]
            else:
                prefills = [int(v) for v in chunks.values()]
            tokens = decoding + sum(prefills)
            alone = len([p for p in prefills if p]) == 1 and not decoding  # one prompt may run alone
            if self.max_batch_tokens is not None and tokens > self.max_batch_tokens and not alone:
                raise self.fail(
                    f"the iteration's new tokens ({decoding} decoding + {sum(prefills)} prompt tokens"
                    f" = {tokens}) exceed its token budget ({self.max_batch_tokens}) ({context})"
                )
        return (
            tuple(r.request_id for r in admit),
            tuple(r.request_id for r in drop),
            wake,
            tuple(sorted((decision.prefill_tokens or {}).items())),
        )

    # ---- scheduling ------------------------------------------------------------------

    def key(self, value: Any, context: str) -> Any:
        """Check a scheduling key: a finite real number."""
        if not _is_real(value):
            raise self.fail(f"key returned {value!r} ({type(value).__name__}), not a float ({context})")
        if not math.isfinite(value):
            raise self.fail(f"key returned {value!r}, not a finite number ({context})")
        return value

    def admission(self, value: Any, context: str) -> Any:
        """Check an admission answer: a bool."""
        if not isinstance(value, bool | np.bool_):
            raise self.fail(f"admit returned {value!r} ({type(value).__name__}), not a bool ({context})")
        return bool(value)

    # ---- routing ---------------------------------------------------------------------

    def pick(self, value: Any, n: int, context: str) -> Any:
        """Check a routing answer: an index in ``range(n)`` or ``None``."""
        if value is None:
            return None
        if not isinstance(value, numbers.Integral) or isinstance(value, bool | np.bool_):
            raise self.fail(f"pick_replica returned {value!r} ({type(value).__name__}), not an int or None ({context})")
        index = int(value)
        if not 0 <= index < n:
            raise self.fail(f"pick_replica returned index {index}, out of range for {n} replicas ({context})")
        return index


# --------------------------------------------------------------------------------------------
# random episodes: coherent sequences of views, as one replica (or router) would see them


@dataclass
class _Sizes:
    """How one episode draws request sizes: a CNN, an encoder or a decoder replica."""

    kind: str
    kv_capacity_tokens: int = 0

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        if self.kind == "cnn":
            return {"input_samples": int(rng.integers(1, 9))}
        if self.kind == "encoder":
            return {"input_tokens": int(rng.integers(1, 513))}
        total = int(rng.integers(2, min(self.kv_capacity_tokens, 2048) + 1))
        first = int(rng.integers(1, total))
        return {"input_tokens": first, "output_tokens": total - first}


def _new_sizes(rng: np.random.Generator) -> _Sizes:
    kind = str(rng.choice(["cnn", "encoder", "decoder", "decoder"]))
    capacity = int(rng.choice([16, 300, 2048, 20000])) if kind == "decoder" else 0
    return _Sizes(kind, capacity)


def _new_request(rng: np.random.Generator, request_id: int, arrival_s: float, sizes: _Sizes) -> Request:
    slo = rng.random()
    return make_request(
        request_id,
        arrival_s,
        tenant=str(rng.choice(["a", "b"])),
        priority=int(rng.integers(0, 3)),
        ttft_slo_s=float(rng.uniform(1e-3, 0.5)) if slo < 0.3 else math.nan,
        e2e_slo_s=float(rng.uniform(1e-3, 2.0)) if slo < 0.5 else math.nan,
        **sizes.draw(rng),
    )


def _order_key(order: str) -> Callable[[Request], Any]:
    if order == "priority":
        return lambda r: -r.priority
    if order == "shortest":
        return lambda r: r.input_tokens + r.output_tokens + r.input_samples
    return lambda r: r.arrival_s


def _batching_episode(
    checker: _Checker, first: Any, second: Any, rng: np.random.Generator, steps: int, first_id: int
) -> None:
    """One replica over ``steps`` decision points; the first instance's decisions are applied."""
    sizes = _new_sizes(rng)
    ar = sizes.kind == "decoder"
    order = _order_key(str(rng.choice(["arrival", "arrival", "priority", "shortest"])))
    queue: list[Request] = []
    running: list[Request] = []
    reservation = str(getattr(first, "kv_reservation", "paged"))
    context_tokens = max(2, min(sizes.kv_capacity_tokens, 2048))
    next_id = first_id
    now = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 100.0))
    last = now
    done_at = int(rng.integers(steps // 2, steps + 1))
    for step in range(steps):
        done = step >= done_at
        if not done and len(queue) < 48:
            for t in sorted(rng.uniform(last, now, int(rng.choice([0, 0, 1, 1, 2, 3, 6])))):
                req = _new_request(rng, next_id, float(min(t, now)), sizes)
                next_id += 1
                keys = [order(r) for r in queue]
                queue.insert(int(np.searchsorted(keys, order(req), side="right")), req)
        view = StubReplica(
            queue=queue,
            running=running,
            replica_id=3,
            autoregressive=ar,
            kv_capacity_tokens=sizes.kv_capacity_tokens,
            kv_reservation=reservation,
            context_tokens=context_tokens,
            arrivals_done=done,
            busy=False,
        )
        context = f"step {step} at now_s={now!r}; view: {_describe(view)}"
        requests = list(queue) + list(running)
        decision = checker.call(first.next_batch, (view, now), [view], requests, context)
        seen = checker.batch(decision, view, now, context)
        again = checker.call(second.next_batch, (view, now), [view], requests, context)
        checker.same(seen, checker.batch(again, view, now, context), "next_batch", context)
        # apply the decision as the engine would
        gone = {id(r) for r in decision.admit + decision.drop}
        queue[:] = [r for r in queue if id(r) not in gone]
        last = now
        if ar:
            chunks = decision.prefill_tokens
            for req in decision.admit:
                running.append(req)
            for req in running:
                left = req.prefill_target - req.prefilled_tokens
                if left > 0:  # prefilling: a chunk (or the whole prompt) this iteration
                    req.prefilled_tokens += left if chunks is None else min(left, int(chunks.get(req.request_id, 0)))
                    if req.prefilled_tokens >= req.prefill_target:
                        req.generated_tokens += 1
                else:
                    req.generated_tokens = min(req.output_tokens, req.generated_tokens + int(rng.integers(1, 4)))
            for req in [r for r in running if r.generated_tokens >= r.output_tokens]:
                running.remove(req)
            probe = StubReplica(
                running=running,
                autoregressive=True,
                kv_capacity_tokens=sizes.kv_capacity_tokens,
                kv_reservation=reservation,
                context_tokens=context_tokens,
            )
            while running and probe.kv_free_blocks < 0:  # out of blocks: preempt the newest by recompute
                victim = running.pop()
                victim.prefill_target = victim.input_tokens + victim.generated_tokens
                victim.prefilled_tokens = 0
                victim.preemptions += 1
                queue.insert(0, victim)
                probe = StubReplica(
                    running=running,
                    autoregressive=True,
                    kv_capacity_tokens=sizes.kv_capacity_tokens,
                    kv_reservation=reservation,
                    context_tokens=context_tokens,
                )
        busy = bool(decision.admit) or bool(running)
        wake = decision.wake_at_s
        if busy:
            now += float(rng.exponential(5e-3))
        elif wake is not None and (done or rng.random() < 0.6):
            now = float(wake)  # the timer fires
        elif wake is not None:
            now += float(wake - now) * float(rng.random())  # an arrival comes first
        elif rng.random() < 0.2:
            pass  # another event at the same instant
        else:
            now += float(rng.exponential(2e-3))


def _scheduling_episode(
    checker: _Checker, first: Any, second: Any, rng: np.random.Generator, steps: int, first_id: int
) -> None:
    """``steps`` arrivals at one replica: ``admit`` (if defined) then ``key`` for each."""
    sizes = _new_sizes(rng)
    ar = sizes.kind == "decoder"
    now = float(rng.uniform(0.0, 10.0))
    queue: list[Request] = []
    admits = callable(getattr(first, "admit", None))
    for step in range(steps):
        now += float(rng.exponential(1e-2)) if rng.random() < 0.9 else 0.0
        req = _new_request(rng, first_id + step, now, sizes)
        view = StubReplica(
            queue=queue,
            running=[],
            replica_id=1,
            autoregressive=ar,
            kv_capacity_tokens=sizes.kv_capacity_tokens,
            arrivals_done=False,
        )
        context = f"step {step} at now_s={now!r}; request {req!r}; view: {_describe(view)}"
        requests = [req, *queue]
        if admits:
            answer = checker.admission(checker.call(first.admit, (req, view, now), [view], requests, context), context)
            other = checker.admission(checker.call(second.admit, (req, view, now), [view], requests, context), context)
            checker.same(answer, other, "admit", context)
        key = checker.key(checker.call(first.key, (req, now), [], [req], context), context)
        checker.same(
            key, checker.key(checker.call(second.key, (req, now), [], [req], context), context), "key", context
        )
        queue.append(req)
        if len(queue) > 12 or rng.random() < 0.3:
            del queue[: int(rng.integers(1, len(queue) + 1))]


def _routing_episode(
    checker: _Checker, first: Any, second: Any, rng: np.random.Generator, steps: int, first_id: int
) -> None:
    """``steps`` arrivals routed among 1 to 8 replicas whose loads come and go."""
    sizes = _new_sizes(rng)
    ar = sizes.kind == "decoder"
    n = int(rng.integers(1, 9))
    replicas = [
        StubReplica(
            replica_id=10 + k,
            autoregressive=ar,
            kv_capacity_tokens=sizes.kv_capacity_tokens,
            cached_prefix_units={int(u) for u in rng.integers(0, 12, size=int(rng.integers(0, 8)))},
            prefix_block_tokens=16,
        )
        for k in range(n)
    ]
    now = float(rng.uniform(0.0, 10.0))
    for step in range(steps):
        for rep in replicas:  # some work finishes, some starts
            if rep.running and rng.random() < 0.4:
                rep.running.pop(0)
            if rep.queue and rng.random() < 0.4:
                rep.running.append(rep.queue.pop(0))
            rep.busy = bool(rep.running)
            rep.kv_used_blocks = sum(r.input_tokens + r.output_tokens for r in rep.running) if ar else 0
        now += float(rng.exponential(1e-2)) if rng.random() < 0.9 else 0.0
        req = _new_request(rng, first_id + step, now, sizes)
        if ar and rng.random() < 0.7:  # a prompt sharing prefix units with earlier ones
            req.prefix_ids = [int(u) for u in rng.integers(0, 12, size=int(rng.integers(1, 6)))]
        loads = [r.outstanding for r in replicas]
        context = f"step {step} at now_s={now!r}; request {req!r}; {n} replicas with outstanding {loads}"
        requests = [req]
        pick = checker.pick(
            checker.call(first.pick_replica, (req, replicas, now), replicas, requests, context, replicas), n, context
        )
        other = checker.pick(
            checker.call(second.pick_replica, (req, replicas, now), replicas, requests, context, replicas), n, context
        )
        checker.same(pick, other, "pick_replica", context)
        if pick is not None:
            replicas[pick].queue.append(req)


# --------------------------------------------------------------------------------------------
# the end-to-end smoke run


@contextmanager
def _yaml_name(registry: Registry, target: Any) -> Iterator[str]:
    """A name by which an experiment YAML reaches ``target`` (a name is used as it is; an
    object is registered under a private name for the duration of the block)."""
    if isinstance(target, str):
        yield target
        return
    name = f"_check_policy.{getattr(target, '__qualname__', 'policy')}.{id(target):x}"
    registry.register(name, target, origin="simulator.testing.check_policy")
    try:
        yield name
    finally:
        registry.unregister(name)


_SMOKE_BATCHING = {
    "resnet-50": {"policy": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 1.0},
    "llama-2-7b": {"policy": "continuous", "max_batch_size": 16, "max_batch_tokens": 2048},
}


def _smoke_doc(family: str, name: str, params: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    """A small experiment with the policy under test plugged into its ``family``."""
    spec = {"policy": name, **params}
    deployment: dict[str, Any] = {
        "architecture": model,
        "batching": spec if family == "batching" else _SMOKE_BATCHING.get(model, {"policy": "none"}),
    }
    if family == "scheduling":
        deployment["scheduling"] = spec
    routing = spec if family == "routing" else {"policy": "least_loaded"}
    if model == "llama-2-7b" or model.startswith(("llama", "mixtral")):
        sizes = {
            "input_tokens": {"dist": "uniform", "low": 1, "high": 1024},
            "output_tokens": {"dist": "uniform", "low": 1, "high": 64},
        }
        rate, n = 20.0, 120
    elif model.startswith("bert"):
        sizes = {"input_tokens": {"dist": "uniform", "low": 1, "high": 512}}
        rate, n = 1500.0, 300
    else:
        sizes = {"input_samples": {"dist": "uniform", "low": 1, "high": 4}}
        rate, n = 1500.0, 300
    return {
        "name": "check_policy",
        "seed": seed,
        "cluster": {"replicas": 2},
        "models": {"m": deployment},
        "routing": routing,
        "workload": {
            "rate_rps": rate,
            "num_requests": n,
            "arrival": {"process": "gamma", "cv": 2.0},
            "mix": [
                {"model": "m", "tenant": "batch", **sizes},
                {"model": "m", "tenant": "interactive", "priority": 1, "slo": {"e2e_ms": 50.0}, **sizes},
            ],
        },
    }


class _CountingSimulation(Simulation):
    """A simulation that counts how often each request reaches a final status."""

    def __init__(self, resolved: ResolvedRun) -> None:
        super().__init__(resolved)
        self.final_counts = np.zeros(len(self.table), dtype=np.int64)

    def finalize(self, req: Request, status: int, t: float, reason: str | None = None) -> None:
        """Count, then record the final status."""
        self.final_counts[req.request_id] += 1
        super().finalize(req, status, t, reason)


def _smoke(checker: _Checker, family: str, name: str, params: dict[str, Any], model: str, seed: int) -> None:
    """Simulate a small experiment twice; check conservation, clocks and determinism."""
    doc = _smoke_doc(family, name, params, model, seed)
    (run,) = expand(doc, Path("check_policy.yaml"))
    frames = []
    for _ in range(2):
        try:
            resolved = resolve(run)
        except LdsimError as exc:
            raise checker.fail(
                f"the smoke simulation on {model} could not be set up: {exc} (pass models=... to"
                f" check_policy to choose the models this policy is meant for)"
            ) from exc
        sim = _CountingSimulation(resolved)
        try:
            result = sim.run()
        except Exception as exc:
            raise checker.fail(f"the smoke simulation on {model} failed: {type(exc).__name__}: {exc}") from exc
        _check_outcome(checker, model, result, sim.final_counts)
        frames.append(requests_frame(result.table))
    if not frames[0].equals(frames[1]):
        raise checker.fail(f"two smoke simulations on {model} with the same seed gave different requests tables")


def _check_outcome(checker: _Checker, model: str, result: Any, counts: np.ndarray) -> None:
    """Every request ended exactly once, with a final status; the run did not stall."""
    table = result.table
    where = f"the smoke simulation on {model}"
    if result.warnings:
        raise checker.fail(f"{where}: {'; '.join(result.warnings)}")
    wrong = np.flatnonzero(counts != 1)
    if wrong.size:
        i = int(wrong[0])
        raise checker.fail(f"{where}: request {i} reached a final status {counts[i]} times, not once")
    pending = np.flatnonzero(table.status == PENDING)
    if pending.size:
        raise checker.fail(f"{where}: {pending.size} requests never reached a final status")
    done = np.flatnonzero(table.status == COMPLETED)
    clocks = ("arrival_s", "start_s", "first_token_s", "completion_s")
    for earlier, later in itertools.pairwise(clocks):
        bad = done[~(getattr(table, earlier)[done] <= getattr(table, later)[done])]
        if bad.size:
            i = int(bad[0])
            raise checker.fail(
                f"{where}: completed request {i} has {later} ({getattr(table, later)[i]!r}) before"
                f" {earlier} ({getattr(table, earlier)[i]!r})"
            )
