"""Decoder replicas: iteration-level execution with a paged KV cache.

At every iteration boundary the batching policy decides which waiting requests join the
running batch (and which are dropped or preempted) and, for chunked prefill, how many prompt
tokens each prefilling request processes. The iteration then runs those prefill chunks and one
decode step for every request whose prompt is done, priced by the cost model. A request whose
prefill completes emits a token at the end of that iteration (its first token, or, after a
preemption by recompute, the next one); a decoding request emits one token per iteration.

KV memory (:mod:`simulator.kvcache`): blocks are allocated as the tokens an iteration stores
require (or reserved at admission for policies that declare ``kv_reservation``). When an
iteration needs more blocks than are free, the newest running request is preempted (vLLM's
rule), by recompute (its blocks freed; it later re-prefills its prompt and the tokens it has
generated) or by swap (its blocks copied to host memory over the host link and back, the copy
time added to the iteration that does it). Prefix caching lets a request skip prefilling the
leading prefix units that are resident.

Coalescing: while the batch is pure decode and unchanged, the replica prices every iteration
up to the next completion in one vectorised call and sleeps until the end of that run, cut at
the first iteration boundary after an arrival, at or after the policy's ``wake_at_s``, or
before the first iteration that would not find the KV blocks it needs. The results (requests,
timeseries, statistics) are identical to stepping iteration by iteration; a test proves it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from simulator.kvcache import KVCache, blocks_for
from simulator.policy import BatchDecision
from simulator.replica import Replica, waker
from simulator.request import COMPLETED, REJECTED, Request

if TYPE_CHECKING:
    from simulator.engine import Simulation
    from simulator.experiment import ModelPlan

__all__ = ["ITL_BINS_PER_DECADE", "ITL_LOG10_MIN_S", "ITL_NBINS", "DecoderReplica", "itl_bins"]

#: Inter-token-latency histogram: log-spaced bins from 1 us, 20 per decade, 9 decades.
ITL_LOG10_MIN_S = -6.0
ITL_BINS_PER_DECADE = 20
ITL_NBINS = 9 * ITL_BINS_PER_DECADE


def itl_bins(values_s: np.ndarray) -> np.ndarray:
    """Histogram bin of each inter-token latency (vectorised; the one binning both engines use)."""
    idx = np.floor((np.log10(np.maximum(values_s, 1e-12)) - ITL_LOG10_MIN_S) * ITL_BINS_PER_DECADE)
    return np.clip(idx, 0, ITL_NBINS - 1).astype(np.intp)


class DecoderReplica(Replica):
    """A decoder LLM instance (see the module docstring)."""

    autoregressive = True

    def __init__(
        self,
        sim: Simulation,
        replica_id: int,
        plan: ModelPlan,
        batching: Any,
        scheduling: Any,
        node: int,
        devices: tuple[int, ...],
        coalesce: bool,
    ) -> None:
        assert plan.kv is not None
        self._kv = KVCache(plan.kv)
        self._block = plan.kv.block_tokens
        self._unit_blocks = self._kv.prefix_blocks
        self._reservation = getattr(batching, "kv_reservation", "paged")
        self._request_level = bool(getattr(batching, "request_level", False))
        self._swap = plan.preemption == "swap"
        self._host = sim.resolved.profile.host.link
        self._prefill: list[Request] = []  # running requests whose current prefill is unfinished
        self._n_dec = 0  # running requests that are decoding
        self._dec_kv = 0  # sum over decoding requests of (kv_tokens + 1): keys attended next
        self._pending_s = 0.0  # swap copies to add to the next iteration
        self._jump_ends: np.ndarray | None = None
        self._jump_accounted = 0
        self._jump_base_used = 0
        self._hands_off = plan.role == "prefill"  # a disaggregated deployment's prefill pool
        self.in_transfer = 0  # decode pool: requests whose KV cache is on its way here
        self.handoffs = 0
        self.itl_counts = np.zeros(ITL_NBINS, dtype=np.int64)
        self.preemptions = 0
        self.recomputed_tokens = 0
        self.swapped_bytes = 0
        super().__init__(sim, replica_id, plan, batching, scheduling, node, devices, coalesce)

    # ---- the view a policy reads ---------------------------------------------------------

    @property
    def arrivals_done(self) -> bool:
        """True once no request will ever arrive again (for a decode pool: nor be handed
        over by a prefill replica)."""
        if self.plan.role == "decode":
            return self._sim.decode_arrivals_done(self.model)
        return self._sim.arrivals_done

    @property
    def kv_capacity_tokens(self) -> int:  # type: ignore[override]
        """Tokens the KV cache holds."""
        return self._kv.config.capacity_tokens

    @property
    def kv_used_tokens(self) -> int:  # type: ignore[override]
        """Tokens' worth of blocks held by requests or pinned by the prefix cache."""
        return self._kv.used_blocks * self._block

    @property
    def kv_block_tokens(self) -> int:  # type: ignore[override]
        """Tokens per KV block."""
        return self._block

    @property
    def kv_free_blocks(self) -> int:  # type: ignore[override]
        """Blocks that can be allocated now (free plus evictable cached ones)."""
        return self._kv.available_blocks

    @property
    def kv_watermark_blocks(self) -> int:  # type: ignore[override]
        """Blocks kept free when admitting new requests."""
        return self._kv.config.watermark_blocks

    def _reserve_tokens(self, req: Request) -> int:
        """Tokens whose blocks are allocated when ``req`` is admitted."""
        final = req.input_tokens + req.output_tokens
        if self._reservation == "max":
            return max(self._context_limit, final)
        if self._reservation == "pow2":
            return min(max(self._context_limit, final), 1 << (final - 1).bit_length())
        if self._reservation == "oracle":
            return final
        return req.prefill_target

    def _peek_units(self, req: Request) -> tuple[int, int]:
        """The prefix-cache units ``req`` would reuse now, and how many of them are unused
        (evictable) entries that pinning would take out of the free pool."""
        if not self._unit_blocks or not len(req.prefix_ids) or req.prefilled_tokens:
            return 0, 0
        return self._kv.peek_prefix(req.prefix_ids, req.input_tokens)

    def kv_blocks_to_admit(self, request: Any) -> int:
        """Blocks admitting the waiting ``request`` takes from the free pool now: its swapped-out
        blocks; the blocks of the KV cache it brings from a prefill replica (or its
        reservation); or its prompt (or its reservation) minus the prefix-cache units it
        reuses, plus those of them that were unused (pinning takes them out of the evictable
        pool)."""
        if request.swapped_blocks:
            return int(request.swapped_blocks)
        if getattr(request, "remote_kv", False):
            return blocks_for(max(request.kv_tokens, self._reserve_tokens(request)), self._block)
        hits, idle = self._peek_units(request)
        fresh = max(0, blocks_for(self._reserve_tokens(request), self._block) - hits * self._unit_blocks)
        return fresh + idle * self._unit_blocks

    def cached_prefix_tokens(self, request: Any) -> int:
        """Leading prompt tokens of ``request`` whose prefix units are resident here now."""
        if not self._unit_blocks or not len(request.prefix_ids):
            return 0
        return self._kv.peek_prefix(request.prefix_ids, request.input_tokens)[0] * self._kv.config.prefix_block_tokens

    def prompt_tokens_to_compute(self, request: Any) -> int:
        """Prompt tokens the request's prefill still has to compute (after prefix-cache hits)."""
        if request.swapped_blocks or getattr(request, "remote_kv", False):
            return 0
        if request.prefilled_tokens:
            return int(request.prefill_target - request.prefilled_tokens)
        return int(request.prefill_target - self._peek_units(request)[0] * self._kv.config.prefix_block_tokens)

    @property
    def memory_used_bytes(self) -> float:
        """Bytes in use on each device: weights, activation reserve, KV blocks held."""
        mem = self.plan.memory
        return mem.weights_bytes + mem.activation_bytes + self.kv_used_blocks_now() * self._kv.config.block_bytes

    def kv_used_blocks_now(self) -> int:
        """Blocks held now, counting those a coalesced run has allocated for its iterations so
        far (as stepping would have allocated them at each iteration's start)."""
        used = self._kv.used_blocks
        if self._jump_ends is not None:
            done = int(np.searchsorted(self._jump_ends, self._env.now, side="right"))
            used = self._jump_base_used + self._run_blocks(min(done + 1, len(self._jump_ends)))
        return used

    def accepts(self, req: Request) -> str | None:
        """Why this replica can never serve ``req``: longer than the model's context, or than
        the whole KV cache (``None`` if it can)."""
        reason = super().accepts(req)
        if reason is not None:
            return reason
        need = max(req.input_tokens + req.output_tokens, self._reserve_tokens(req))
        if blocks_for(need, self._block) > self._kv.config.total_blocks:
            return "kv_capacity"
        return None

    # ---- admission, preemption, completion -------------------------------------------------

    def _held(self, req: Request) -> int:
        return req.kv_blocks + req.prefix_units * self._unit_blocks

    def _start(self, req: Request, now: float) -> None:
        """Admit ``req`` to the running batch."""
        if math.isnan(req.start_s):
            req.start_s = now
        kv = self._kv
        self.running.append(req)
        if req.swapped_blocks:
            n = req.swapped_blocks
            if not kv.swap_in(n):
                raise self._policy_error(
                    f"admitted {req!r} whose {n} swapped blocks do not fit ({kv.available_blocks} free)"
                )
            req.kv_blocks, req.swapped_blocks = n, 0
            self._pending_s += self._host.transfer_s(n * kv.config.block_bytes)
            self.swapped_bytes += int(n * kv.config.block_bytes)
            self._n_dec += 1
            self._dec_kv += req.kv_tokens + 1
            return
        if req.remote_kv:  # prefilled on a prefill replica: its KV cache has arrived
            req.remote_kv = False
            n = blocks_for(max(req.kv_tokens, self._reserve_tokens(req)), self._block)
            if not kv.allocate(n):
                raise self._policy_error(
                    f"admitted {req!r} whose {n} transferred KV blocks do not fit ({kv.available_blocks} free)"
                )
            req.kv_blocks = n
            self._n_dec += 1
            self._dec_kv += req.kv_tokens + 1
            return
        if not req.prefilled_tokens and len(req.prefix_ids):
            units, tokens = kv.pin_prefix(req.prefix_ids, req.input_tokens)
            req.prefix_units = units
            req.prefilled_tokens = req.kv_tokens = tokens
            kv.record_lookup(req.input_tokens, tokens)
            if req.preemptions == 0:
                req.cached_tokens = tokens
        if self._reservation != "paged":
            need = blocks_for(self._reserve_tokens(req), self._block) - self._held(req)
            if need > 0:
                if not kv.allocate(need):
                    raise self._policy_error(f"admitted {req!r} whose {need}-block reservation does not fit")
                req.kv_blocks += need
        self._prefill.append(req)

    def _preempt(self, req: Request, now: float) -> None:
        """Send a running request back to the queue, by swap or recompute."""
        kv = self._kv
        self.running.remove(req)
        decoding = req.prefilled_tokens >= req.prefill_target and req not in self._prefill
        if decoding:
            self._n_dec -= 1
            self._dec_kv -= req.kv_tokens + 1
        else:
            self._prefill.remove(req)
        req.preemptions += 1
        self.preemptions += 1
        if self._swap and decoding and req.kv_blocks and kv.swap_out(req.kv_blocks):
            req.swapped_blocks, req.kv_blocks = req.kv_blocks, 0
            self._pending_s += self._host.transfer_s(req.swapped_blocks * kv.config.block_bytes)
            self.swapped_bytes += int(req.swapped_blocks * kv.config.block_bytes)
        else:
            kv.release(req.kv_blocks)
            kv.unpin_prefix(req.prefix_ids, req.prefix_units)
            self.recomputed_tokens += req.kv_tokens
            req.kv_blocks = req.prefix_units = req.kv_tokens = req.prefilled_tokens = 0
            req.prefill_target = req.input_tokens + req.generated_tokens
        self._enqueue(req, req.queue_key, now)

    def _finish(self, done: list[Request], end: float) -> None:
        kv = self._kv
        sim = self._sim
        gone = {id(r) for r in done}
        self.running[:] = [r for r in self.running if id(r) not in gone]
        for req in done:
            self._n_dec -= 1
            self._dec_kv -= req.kv_tokens + 1
            kv.release(req.kv_blocks)
            kv.unpin_prefix(req.prefix_ids, req.prefix_units)
            req.kv_blocks = req.prefix_units = 0
            self.outstanding -= 1
            sim.finalize(req, COMPLETED, end)

    # ---- disaggregation -------------------------------------------------------------------

    def _hand_off(self, req: Request, now: float) -> None:
        """Prefill pool: ``req`` has its first token; send it (and its KV cache) to the decode
        pool. Its blocks stay held here until the transfer ends."""
        self.running.remove(req)
        self._n_dec -= 1
        self._dec_kv -= req.kv_tokens + 1
        self.outstanding -= 1
        self.handoffs += 1
        blocks, units, ids = req.kv_blocks, req.prefix_units, req.prefix_ids
        req.kv_blocks = req.prefix_units = 0
        ready = self._sim.handoff(req, self, now)

        def release(_event: simpy.Event) -> None:
            self._kv.release(blocks)
            self._kv.unpin_prefix(ids, units)
            self.notify()

        self._env.timer_at(ready).callbacks.append(release)

    def expect(self, req: Request) -> None:
        """Decode pool: ``req``'s KV cache is on its way here; it counts as outstanding now."""
        self.outstanding += 1
        self.in_transfer += 1

    def receive(self, req: Request, now: float) -> None:
        """Decode pool: the KV cache of ``req``, prefilled elsewhere, has arrived; queue it (or
        reject it if this replica can never hold it)."""
        self.in_transfer -= 1
        req.remote_kv = True
        req.replica = self.replica_id
        reason = self.accepts(req)
        if reason is None and self._admit is not None and not self._admit(req, self, now):
            reason = "admission"
        if reason is not None:
            self.outstanding -= 1
            self._sim.finalize(req, REJECTED, now, reason)
            return
        self._enqueue(req, self._key(req, now), now)
        self.notify()

    # ---- planning an iteration ------------------------------------------------------------

    def _chunks(self, decision: BatchDecision) -> list[tuple[Request, int]]:
        wanted = decision.prefill_tokens
        chunks = []
        for req in self._prefill:
            left = req.prefill_target - req.prefilled_tokens
            c = left if wanted is None else min(left, int(wanted.get(req.request_id, 0)))
            if c < 0:
                raise self._policy_error(f"asked {req!r} to prefill {c} tokens")
            if c:
                chunks.append((req, c))
        return chunks

    def _need(self, chunks: Sequence[tuple[Request, int]]) -> dict[int, int]:
        """Blocks each request must be given before the next iteration can run."""
        need: dict[int, int] = {}
        block = self._block
        for req, c in chunks:
            n = blocks_for(req.kv_tokens + c, block) - self._held(req)
            if n > 0:
                need[id(req)] = n
        prefilling = {id(r) for r in self._prefill}
        for req in self.running:
            if id(req) not in prefilling:
                n = blocks_for(req.kv_tokens + 1, block) - self._held(req)
                if n > 0:
                    need[id(req)] = n
        return need

    def _plan(self, decision: BatchDecision, now: float) -> list[tuple[Request, int]]:
        """The prefill chunks of the next iteration, after preempting the newest requests until
        the KV blocks the iteration needs are available; then allocate them."""
        while True:
            chunks = self._chunks(decision)
            need = self._need(chunks)
            total = sum(need.values())
            if total <= self._kv.available_blocks:
                break
            self._preempt(self.running[-1], now)
            if not self.running:
                return []
        for req in self.running:
            n = need.get(id(req), 0)
            if n:
                self._kv.allocate(n)
                req.kv_blocks += n
        return chunks

    # ---- the loop ------------------------------------------------------------------------

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env = self._env
        cost = self._cost
        while True:
            now = env.now
            decision = self._decide(now)
            for req in decision.preempt:
                if req not in self.running:
                    raise self._policy_error(f"preempted {req!r}, which is not running")
                self._preempt(req, now)
            if self._request_level and decision.admit and not self.running:
                stop = max(r.output_tokens for r in decision.admit)
                for req in decision.admit:
                    req.stop_tokens = stop
            for req in decision.admit:
                self._start(req, now)
            if not self.running:
                yield from self._idle(now, decision.wake_at_s)
                continue
            quiet = not (decision.admit or decision.drop or decision.preempt or self._pending_s or self._prefill)
            if quiet and self._coalesce and self._kv.available_blocks >= len(self.running):
                # a pure-decode run whose first iteration surely fits: its blocks are allocated
                # when it ends (the same blocks, and the same evictions, as stepping would take)
                self._busy(now)
                done = yield from self._decode_run(now, decision.wake_at_s, planned=False)
                if done:
                    self._finish(done, env.now)
                continue
            chunks = self._plan(decision, now)
            if not self.running:
                continue
            self._busy(now)
            if quiet and not chunks and not self._pending_s and self._coalesce:  # _plan may have swapped
                done = yield from self._decode_run(now, decision.wake_at_s, planned=True)
            else:
                if self._request_level and chunks:
                    pad = max(r.prefill_target for r, _ in chunks)
                    prefills = [(pad, pad) for _ in chunks]
                else:
                    prefills = [(c, r.kv_tokens + c) for r, c in chunks]
                seconds, flops, nbytes = cost.iteration(prefills, self._n_dec, self._dec_kv)
                if self._jitter is not None:
                    seconds *= self._jitter.take()
                seconds += self._pending_s + self._take_wake()  # swap copies; waking after idling
                self._pending_s = 0.0
                self.flops += flops
                self.bytes_moved += nbytes
                yield env.timer_at(now + seconds)
                done = self._advance(chunks, env.now)
            if done:
                self._finish(done, env.now)

    def _record_itls(self, itls: np.ndarray, weight: int = 1) -> float:
        """Add inter-token latencies to the histogram; return their maximum."""
        if not len(itls):
            return -math.inf
        self.itl_counts += np.bincount(itl_bins(itls), minlength=ITL_NBINS) * weight
        return float(itls.max())

    def _emit(self, req: Request, end: float, itl: float) -> None:
        """``req`` produced a token at ``end``, ``itl`` after its previous one (nan: its first)."""
        req.generated_tokens += 1
        if math.isnan(req.first_token_s):
            req.first_token_s = end
        elif not math.isnan(itl) and not itl <= req.max_itl_s:
            req.max_itl_s = itl
        req.last_token_s = end

    def _advance(self, chunks: list[tuple[Request, int]], end: float) -> list[Request]:
        """Apply one iteration that ended at ``end``; return the requests that are finished."""
        decoding = [r for r in self.running if r.prefilled_tokens >= r.prefill_target and r not in self._prefill]
        n_dec = len(decoding)
        done = []
        if decoding:
            itls = end - np.array([r.last_token_s for r in decoding])
            self._record_itls(itls)
            for req, itl in zip(decoding, itls.tolist(), strict=True):
                req.kv_tokens += 1
                self._emit(req, end, itl)
                if req.generated_tokens >= req.stop_tokens:
                    done.append(req)
            self._dec_kv += n_dec
        finished_prefill = []
        for req, c in chunks:
            req.prefilled_tokens += c
            req.kv_tokens += c
            if req.prefilled_tokens >= req.prefill_target:
                finished_prefill.append(req)
        resumed = [r for r in finished_prefill if not math.isnan(r.first_token_s)]
        if resumed:
            self._record_itls(end - np.array([r.last_token_s for r in resumed]))
        for req in finished_prefill:
            self._prefill.remove(req)
            if self._unit_blocks and len(req.prefix_ids):
                units, moved = self._kv.publish_prefix(req.prefix_ids, req.prefix_units, req.input_tokens)
                req.prefix_units = units
                req.kv_blocks -= moved
            self._emit(req, end, end - req.last_token_s if not math.isnan(req.first_token_s) else math.nan)
            self._n_dec += 1
            self._dec_kv += req.kv_tokens + 1
            if req.generated_tokens >= req.stop_tokens:
                done.append(req)
            elif self._hands_off:
                self._hand_off(req, end)
        self.steps += 1
        self.step_items += n_dec + len(chunks)
        self.tokens_generated += n_dec + len(finished_prefill)
        return done

    # ---- coalesced decode runs -------------------------------------------------------------

    def _run_blocks(self, m: int) -> int:
        """Blocks the running requests need, beyond those they hold, to run ``m`` more decode
        iterations (from the state at the start of the current coalesced run)."""
        block = self._block
        total = 0
        for req in self.running:
            extra = -(-(req.kv_tokens + m) // block) - self._held(req)
            if extra > 0:
                total += extra
        return total

    def _decode_run(
        self, now: float, wake_at_s: float | None, planned: bool
    ) -> Generator[simpy.Event, Any, list[Request]]:
        """Run pure-decode iterations (see the module docstring); return the finished requests.

        ``planned``: :meth:`_plan` already allocated the first iteration's blocks (otherwise
        every block of the run is allocated at its end)."""
        env = self._env
        running = self.running
        n = self._n_dec
        k = min(r.stop_tokens - r.generated_tokens for r in running)
        available = self._kv.available_blocks
        # cheap bound first: no request needs more than k // block + 1 new blocks in k iterations
        if n * (k // self._block + 1) > available and self._run_blocks(k) > available:
            lo, hi = 1, k  # iteration 1 fits (planned, or enough blocks for one each)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._run_blocks(mid) <= available:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        kv = self._dec_kv + n * np.arange(k, dtype=np.float64)
        durations = self._cost.decode_steps_s(n, kv)
        if self._jitter is not None:
            durations = durations * self._jitter.peek(k)
        ends = np.cumsum(np.concatenate(([now], durations)))[1:]
        if wake_at_s is not None and wake_at_s < ends[-1]:
            k = int(np.searchsorted(ends, wake_at_s, side="left")) + 1
            ends = ends[:k]
        last = float(ends[-1])
        self._jump_ends = ends
        self._jump_accounted = 0
        self._jump_base_used = self._kv.used_blocks
        event = env.event()
        self._wake = event
        self._wake_on_arrival = True
        env.timer_at(last).callbacks.append(waker(event))
        yield event
        self._wake = None
        self._wake_on_arrival = False
        t = env.now
        if t >= last:
            m = k
        else:
            m = int(np.searchsorted(ends, t, side="left")) + 1
            boundary = float(ends[m - 1])
            if boundary > t:
                yield env.timer_at(boundary)
        self._account_jump(env.now)
        self._jump_ends = None
        ends = ends[:m]
        if self._jitter is not None:
            self._jitter.advance(m)
        flops, nbytes = self._cost.decode_steps_work(n, kv[:m])
        self.flops += flops
        self.bytes_moved += nbytes
        # inter-token latencies: each request's first gap, then the run's iteration durations
        first_end = float(ends[0])
        last_end = float(ends[-1])
        shared = running[0].last_token_s
        if all(r.last_token_s == shared for r in running):  # the usual case: one first gap for all
            gaps = np.diff(np.concatenate(([shared], ends)))
            widest = self._record_itls(gaps, weight=n)
            firsts = None
        else:
            firsts = first_end - np.array([r.last_token_s for r in running])
            self._record_itls(firsts)
            widest = self._record_itls(np.diff(ends), weight=n) if m > 1 else -math.inf
        # blocks for the m iterations, allocated as stepping would have (same LRU evictions)
        block = self._block
        extra_total = 0
        done = []
        for i, req in enumerate(running):
            extra = -(-(req.kv_tokens + m) // block) - self._held(req)
            if extra > 0:
                req.kv_blocks += extra
                extra_total += extra
            req.kv_tokens += m
            req.generated_tokens += m
            if firsts is not None:
                gap = float(firsts[i])
                worst = gap if gap > widest else widest
            else:
                worst = widest
            if not worst <= req.max_itl_s:
                req.max_itl_s = worst
            req.last_token_s = last_end
            if req.generated_tokens >= req.stop_tokens:
                done.append(req)
        if extra_total:
            ok = self._kv.allocate(extra_total)
            assert ok, "a coalesced run was bounded by the blocks available"
        self._dec_kv += m * n
        return done

    def _account_jump(self, now: float) -> None:
        """Count the iterations of the current coalesced run that ended by ``now``."""
        assert self._jump_ends is not None
        done = int(np.searchsorted(self._jump_ends, now, side="right"))
        if done > self._jump_accounted:
            extra = done - self._jump_accounted
            self.steps += extra
            self.step_items += extra * self._n_dec
            self.tokens_generated += extra * self._n_dec
            self._jump_accounted = done

    def flush_stats(self, now: float) -> tuple[float, float]:
        """As :meth:`Replica.flush_stats`, also counting a coalesced run's finished iterations."""
        result = super().flush_stats(now)
        if self._jump_ends is not None:
            self._account_jump(now)
        return result

    def stats(self) -> dict[str, Any]:
        """Per-replica counters, with the KV cache's."""
        out = super().stats()
        kv = self._kv
        out.update(
            kv_capacity_tokens=kv.config.capacity_tokens,
            kv_blocks=kv.config.total_blocks,
            kv_block_tokens=kv.config.block_tokens,
            role=self.plan.role,
            handoffs=self.handoffs,
            preemptions=self.preemptions,
            recomputed_tokens=self.recomputed_tokens,
            swapped_bytes=self.swapped_bytes,
            prefix_prompt_tokens=kv.prefix_lookups_tokens,
            prefix_hit_tokens=kv.prefix_hit_tokens,
        )
        return out
