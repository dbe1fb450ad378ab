"""The built-in policies on small views built by hand, with answers checkable by hand."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from policies.batching import ContinuousBatching, DynamicBatching, NoBatching, StaticBatching
from policies.routing import LeastLoaded, RandomRouting, RoundRobin
from policies.scheduling import Fcfs
from simulator.policy import WAIT, BatchDecision
from simulator.testing import StubReplica, make_request


def requests(*arrivals: float, input_tokens: int = 0, output_tokens: int = 0) -> list:
    """Waiting requests with ids 0, 1, ... arriving at ``arrivals``."""
    return [make_request(i, t, input_tokens=input_tokens, output_tokens=output_tokens) for i, t in enumerate(arrivals)]


def decoding(*sizes: tuple[int, int], first_id: int = 100) -> list:
    """Running decoder requests (prompt done, first token out) of (input, output) tokens."""
    out = []
    for k, (i, o) in enumerate(sizes):
        req = make_request(first_id + k, 0.0, input_tokens=i, output_tokens=o)
        req.prefilled_tokens, req.generated_tokens = i, 1
        out.append(req)
    return out


def ids(decision: BatchDecision) -> list[int]:
    return [r.request_id for r in decision.admit]


def dynamic(max_batch_size: int = 4, delay_ms: float = 2.0, preferred: list[int] | None = None) -> DynamicBatching:
    params = DynamicBatching.Params(
        max_batch_size=max_batch_size, max_queue_delay_ms=delay_ms, preferred_batch_sizes=preferred or []
    )
    return DynamicBatching(params)


def continuous(max_batch_size: int = 256, max_batch_tokens: int = 8192) -> ContinuousBatching:
    return ContinuousBatching(
        ContinuousBatching.Params(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
    )


# ---- none ------------------------------------------------------------------------------------


def test_none_runs_the_head_of_the_queue_alone():
    policy = NoBatching()
    assert policy.next_batch(StubReplica(), 0.0) == WAIT
    assert ids(policy.next_batch(StubReplica(queue=requests(1.0, 1.1, 1.2)), 2.0)) == [0]


def test_none_waits_while_a_decoder_request_runs():
    view = StubReplica(queue=requests(1.0), running=decoding((10, 5)), autoregressive=True, kv_capacity_tokens=100)
    assert NoBatching().next_batch(view, 2.0) == WAIT


# ---- static ----------------------------------------------------------------------------------


def test_static_waits_for_a_full_batch_without_a_timer():
    policy = StaticBatching(StaticBatching.Params(max_batch_size=3))
    decision = policy.next_batch(StubReplica(queue=requests(1.0, 1.1)), 5.0)
    assert decision == WAIT  # no wake_at_s: only an arrival can complete the batch


def test_static_runs_exactly_max_batch_size():
    policy = StaticBatching(StaticBatching.Params(max_batch_size=3))
    assert ids(policy.next_batch(StubReplica(queue=requests(1.0, 1.1, 1.2)), 1.2)) == [0, 1, 2]
    assert ids(policy.next_batch(StubReplica(queue=requests(1.0, 1.1, 1.2, 1.3, 1.4)), 1.4)) == [0, 1, 2]


def test_static_flushes_a_partial_batch_only_when_arrivals_are_done():
    policy = StaticBatching(StaticBatching.Params(max_batch_size=3))
    assert policy.next_batch(StubReplica(queue=requests(1.0, 1.1), arrivals_done=False), 9.0) == WAIT
    assert ids(policy.next_batch(StubReplica(queue=requests(1.0, 1.1), arrivals_done=True), 9.0)) == [0, 1]


def test_static_waits_while_a_decoder_batch_runs():
    policy = StaticBatching(StaticBatching.Params(max_batch_size=1))
    view = StubReplica(queue=requests(1.0), running=decoding((4, 4)), autoregressive=True, kv_capacity_tokens=64)
    assert policy.next_batch(view, 2.0) == WAIT


def test_static_batching_respects_the_kv_cache_on_decoders():
    # Three requests of 40 + 10 tokens need 150 KV tokens; the cache has 100: two of them run.
    # (Before the fix, the whole batch was admitted and the engine raised PolicyError.)
    policy = StaticBatching(StaticBatching.Params(max_batch_size=3))
    view = StubReplica(
        queue=requests(1.0, 1.1, 1.2, input_tokens=40, output_tokens=10), autoregressive=True, kv_capacity_tokens=100
    )
    assert ids(policy.next_batch(view, 1.2)) == [0, 1]


# ---- dynamic ---------------------------------------------------------------------------------


def test_dynamic_waits_for_the_oldest_request_to_reach_the_delay():
    policy = dynamic(max_batch_size=4, delay_ms=2.0)
    view = StubReplica(queue=requests(1.000, 1.0004, 1.0008))
    decision = policy.next_batch(view, 1.001)
    assert decision.admit == ()
    assert decision.wake_at_s == pytest.approx(1.002, abs=1e-12)
    assert ids(policy.next_batch(view, decision.wake_at_s)) == [0, 1, 2]
    assert ids(policy.next_batch(view, 1.002)) == [0, 1, 2]


def test_dynamic_runs_a_full_batch_at_once():
    policy = dynamic(max_batch_size=4, delay_ms=2.0)
    view = StubReplica(queue=requests(1.000, 1.0001, 1.0002, 1.0003, 1.0004))
    assert ids(policy.next_batch(view, 1.0004)) == [0, 1, 2, 3]


def test_dynamic_uses_the_oldest_arrival_whatever_the_queue_order():
    policy = dynamic(max_batch_size=8, delay_ms=10.0)
    queue = requests(3.0, 2.0, 2.5)  # e.g. a priority order
    decision = policy.next_batch(StubReplica(queue=queue), 2.005)
    assert decision.wake_at_s == pytest.approx(2.010)


def test_dynamic_with_zero_delay_runs_whatever_waits():
    assert ids(dynamic(max_batch_size=8, delay_ms=0.0).next_batch(StubReplica(queue=requests(1.0, 1.0)), 1.0)) == [
        0,
        1,
    ]


def test_dynamic_runs_the_largest_reachable_preferred_size_at_once():
    policy = dynamic(max_batch_size=8, delay_ms=100.0, preferred=[2, 3])
    queue = requests(1.0, 1.0, 1.0, 1.0, 1.0)
    assert ids(policy.next_batch(StubReplica(queue=queue[:1]), 1.0)).__len__() == 0
    assert ids(policy.next_batch(StubReplica(queue=queue[:2]), 1.0)) == [0, 1]
    assert ids(policy.next_batch(StubReplica(queue=queue[:3]), 1.0)) == [0, 1, 2]
    assert ids(policy.next_batch(StubReplica(queue=queue), 1.0)) == [0, 1, 2]


def test_dynamic_flushes_before_the_delay_once_arrivals_are_done():
    policy = dynamic(max_batch_size=4, delay_ms=50.0)
    assert ids(policy.next_batch(StubReplica(queue=requests(1.0), arrivals_done=True), 1.001)) == [0]


def test_dynamic_rejects_preferred_sizes_above_the_maximum():
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        DynamicBatching.Params(max_batch_size=4, max_queue_delay_ms=1, preferred_batch_sizes=[8])


def test_dynamic_batching_respects_the_kv_cache_on_decoders():
    # Four waiting requests of 40 + 10 tokens (200) against a cache of 100: two of them run.
    policy = dynamic(max_batch_size=4, delay_ms=2.0)
    view = StubReplica(
        queue=requests(1.0, 1.0, 1.0, 1.0, input_tokens=40, output_tokens=10),
        autoregressive=True,
        kv_capacity_tokens=100,
    )
    assert ids(policy.next_batch(view, 1.0)) == [0, 1]


# ---- continuous ------------------------------------------------------------------------------


def test_continuous_stops_at_the_kv_cache():
    # each request reserves 30 + 20 = 50 tokens; 120 free: two join, the third does not fit
    view = StubReplica(
        queue=requests(1.0, 1.1, 1.2, input_tokens=30, output_tokens=20),
        autoregressive=True,
        kv_capacity_tokens=120,
    )
    assert ids(continuous().next_batch(view, 2.0)) == [0, 1]


def test_continuous_does_not_skip_a_head_that_does_not_fit():
    queue = [
        make_request(0, 1.0, input_tokens=60, output_tokens=20),
        make_request(1, 1.1, input_tokens=5, output_tokens=5),
    ]
    running = decoding((20, 10))  # reserves 30 of 100
    view = StubReplica(queue=queue, running=running, autoregressive=True, kv_capacity_tokens=100)
    assert view.kv_used_tokens == 30
    assert continuous().next_batch(view, 2.0) == WAIT  # 80 > 70 free; the small one waits behind


def test_continuous_stops_at_max_batch_size():
    view = StubReplica(
        queue=requests(1.0, 1.1, 1.2, input_tokens=4, output_tokens=4),
        running=decoding((4, 4), (4, 4)),
        autoregressive=True,
        kv_capacity_tokens=1000,
    )
    assert ids(continuous(max_batch_size=3).next_batch(view, 2.0)) == [0]
    full = StubReplica(
        queue=view.queue, running=decoding((4, 4), (4, 4), (4, 4)), autoregressive=True, kv_capacity_tokens=1000
    )
    assert continuous(max_batch_size=3).next_batch(full, 2.0) == WAIT


def test_continuous_stops_at_the_token_budget():
    # 10 decoding requests cost 10 tokens; prompts of 50 each: 10 + 50 = 60 <= 100, + 50 > 100
    view = StubReplica(
        queue=requests(1.0, 1.1, 1.2, input_tokens=50, output_tokens=1),
        running=decoding(*[(1, 8)] * 10),
        autoregressive=True,
        kv_capacity_tokens=10_000,
    )
    assert ids(continuous(max_batch_tokens=100).next_batch(view, 2.0)) == [0]


def test_continuous_runs_a_prompt_over_the_budget_alone():
    queue = requests(1.0, 1.1, input_tokens=500, output_tokens=2)
    idle = StubReplica(queue=queue, autoregressive=True, kv_capacity_tokens=10_000)
    assert ids(continuous(max_batch_tokens=100).next_batch(idle, 2.0)) == [0]
    busy = StubReplica(queue=queue, running=decoding((1, 8)), autoregressive=True, kv_capacity_tokens=10_000)
    assert continuous(max_batch_tokens=100).next_batch(busy, 2.0) == WAIT


def test_continuous_on_a_cnn_runs_what_waits_up_to_max_batch_size():
    view = StubReplica(queue=requests(1.0, 1.1, 1.2, 1.3, 1.4))
    assert ids(continuous(max_batch_size=3).next_batch(view, 2.0)) == [0, 1, 2]
    assert ids(continuous(max_batch_size=8).next_batch(view, 2.0)) == [0, 1, 2, 3, 4]
    assert continuous().next_batch(StubReplica(), 2.0) == WAIT


# ---- scheduling ------------------------------------------------------------------------------


def test_fcfs_key_is_the_arrival_time():
    policy = Fcfs()
    assert policy.key(make_request(0, 1.25), 3.0) == 1.25
    assert policy.key(make_request(1, 0.5, input_tokens=9), 0.5) == 0.5


# ---- routing ---------------------------------------------------------------------------------


def test_round_robin_cycles():
    policy = RoundRobin()
    replicas = [StubReplica(replica_id=i) for i in range(3)]
    assert [policy.pick_replica(make_request(k, 0.0), replicas, 0.0) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_loaded_picks_the_minimum():
    loads = [2, 0, 1]
    replicas = [StubReplica(queue=requests(*[0.0] * n)) for n in loads]
    assert LeastLoaded().pick_replica(make_request(9, 1.0), replicas, 1.0) == 1


def test_least_loaded_rotates_among_ties():
    policy = LeastLoaded()
    replicas = [StubReplica(replica_id=i) for i in range(3)]
    picks = [policy.pick_replica(make_request(k, 0.0), replicas, 0.0) for k in range(6)]
    assert picks == [0, 1, 2, 0, 1, 2]
    # from just after the previous pick (0): replicas 1 and 2 tie at 0; 1 comes first
    policy = LeastLoaded()
    replicas = [StubReplica(queue=requests(0.0)), StubReplica(), StubReplica()]
    assert [policy.pick_replica(make_request(k, 0.0), replicas, 0.0) for k in range(2)] == [1, 2]


def test_random_routing_is_uniformish():
    policy = RandomRouting(rng=np.random.default_rng(5))
    replicas = [StubReplica(replica_id=i) for i in range(3)]
    n = 6000
    counts = Counter(policy.pick_replica(make_request(k, 0.0), replicas, 0.0) for k in range(n))
    assert set(counts) == {0, 1, 2}
    sd = (n * (1 / 3) * (2 / 3)) ** 0.5
    for c in counts.values():
        assert abs(c - n / 3) < 5 * sd


def test_random_routing_is_deterministic_for_a_seed():
    replicas = [StubReplica(replica_id=i) for i in range(4)]

    def picks(seed: int) -> list[int]:
        policy = RandomRouting(rng=np.random.default_rng(seed))
        return [policy.pick_replica(make_request(k, 0.0), replicas, 0.0) for k in range(50)]

    assert picks(11) == picks(11)
    assert picks(11) != picks(12)
