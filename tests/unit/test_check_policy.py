"""simulator.testing.check_policy: every registered policy conforms; broken ones are caught."""

from __future__ import annotations

import random

import numpy as np
import pytest

from policies.batching import ContinuousBatching, StaticBatching
from policies.routing import RoundRobin
from simulator.errors import ConfigError
from simulator.policy import WAIT, BatchDecision, Policy, PolicyParams
from simulator.registry import BATCHING, REGISTRIES
from simulator.testing import PolicyCheckError, StubReplica, check_policy, make_request

#: Representative params of each registered policy (several variants where they matter).
PARAMS: dict[tuple[str, str], list[dict]] = {
    ("batching", "none"): [{}],
    ("batching", "static"): [{"max_batch_size": 1}, {"max_batch_size": 4}, {"max_batch_size": 32}],
    ("batching", "dynamic"): [
        {"max_batch_size": 4, "max_queue_delay_ms": 2.0},
        {"max_batch_size": 8, "max_queue_delay_ms": 0.0},
        {"max_batch_size": 16, "max_queue_delay_ms": 5.0, "preferred_batch_sizes": [4, 8]},
    ],
    ("batching", "continuous"): [
        {},
        {"max_batch_size": 4, "max_batch_tokens": 64},
        {"max_batch_size": 64, "max_batch_tokens": 1024},
    ],
    ("scheduling", "fcfs"): [{}],
    ("routing", "round_robin"): [{}],
    ("routing", "random"): [{}],
    ("routing", "least_loaded"): [{}],
}


def _registered() -> list:
    cases = []
    for family, registry in REGISTRIES.items():
        for name in registry.names():
            for k, params in enumerate(PARAMS.get((family, name), [{}])):
                cases.append(pytest.param(family, name, params, id=f"{family}-{name}-{k}"))
    return cases


@pytest.mark.parametrize(("family", "name", "params"), _registered())
def test_every_registered_policy_conforms(family, name, params):
    check_policy(family, name, params)


# ---- policies that keep the contract, in the forms a plug-in may take -----------------------


def shortest_prompt_first(request, now_s):
    """A scheduling policy as a plain function."""
    return float(request.input_tokens + request.input_samples)


class CappedPriority(Policy):
    """A scheduling policy with admission control and parameters."""

    class Params(PolicyParams):
        max_queue: int = 8

    def key(self, request, now_s):
        return -float(request.priority)

    def admit(self, request, replica, now_s):
        return len(replica.queue) < self.params.max_queue


class LargestFirst(StaticBatching):
    """A subclass of a built-in: static batching that serves the longest prompts first."""

    def next_batch(self, replica, now_s):
        decision = super().next_batch(replica, now_s)
        return BatchDecision(admit=tuple(sorted(decision.admit, key=lambda r: -r.input_tokens)))


def test_a_plain_function_policy_conforms():
    check_policy("scheduling", shortest_prompt_first)


def test_a_policy_class_with_admission_conforms():
    check_policy("scheduling", CappedPriority, {"max_queue": 3})


def test_a_subclass_of_a_builtin_conforms():
    check_policy("batching", LargestFirst, {"max_batch_size": 8})


def test_a_dotted_path_conforms():
    check_policy("routing", "policies.routing:LeastLoaded")


def test_a_subclassed_builtin_by_class_conforms():
    check_policy("batching", ContinuousBatching, {"max_batch_size": 4}, seed=3, cases=300)


def test_the_registry_is_left_as_it_was():
    before = list(BATCHING.entries())
    check_policy("batching", LargestFirst, {"max_batch_size": 2}, cases=20)
    assert list(BATCHING.entries()) == before


def test_unknown_names_and_bad_params_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'fcfs'"):
        check_policy("scheduling", "fcsf")
    with pytest.raises(ConfigError, match="max_batch_size"):
        check_policy("batching", "static", {})
    with pytest.raises(ConfigError, match="max_batch_sise"):
        check_policy("batching", "static", {"max_batch_sise": 4})


def test_policy_check_error_is_an_assertion_error():
    assert issubclass(PolicyCheckError, AssertionError)


# ---- broken policies are caught -------------------------------------------------------------


class AdmitsStranger(Policy):
    """Admits a request that is not in the queue (a copy of the head)."""

    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        head = replica.queue[0]
        return BatchDecision(admit=(make_request(head.request_id + 10_000, head.arrival_s),))


class AdmitsTwice(Policy):
    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=(replica.queue[0], replica.queue[0]))


class AdmitsAndDrops(Policy):
    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=(replica.queue[0],), drop=(replica.queue[0],))


class OverBatches(Policy):
    """Declares max_batch_size but admits one more."""

    class Params(PolicyParams):
        max_batch_size: int = 2

    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=tuple(replica.queue[: self.params.max_batch_size + 1]))


class KvBlind(Policy):
    """Runs up to max_batch_size waiting requests, whatever the KV cache holds."""

    class Params(PolicyParams):
        max_batch_size: int = 8

    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        return BatchDecision(admit=tuple(replica.queue[: self.params.max_batch_size]))


class OverTokens(ContinuousBatching):
    """Continuous batching that forgets its token budget."""

    def next_batch(self, replica, now_s):
        if not replica.autoregressive or replica.running or len(replica.queue) < 2:
            return super().next_batch(replica, now_s)
        return BatchDecision(admit=tuple(replica.queue[:2]))


class MutatesQueue(Policy):
    """Pops the head of the queue itself."""

    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        head = replica.queue.pop(0)
        replica.queue.insert(0, head)
        replica.queue.reverse()
        return BatchDecision(admit=(replica.queue[-1],))


class MutatesRequest(Policy):
    def key(self, request, now_s):
        request.priority += 1
        return request.arrival_s


class WakesNow(Policy):
    """Asks to be woken at the current time instead of later."""

    def next_batch(self, replica, now_s):
        if replica.running or not replica.queue:
            return WAIT
        if len(replica.queue) < 3:
            return BatchDecision(wake_at_s=now_s)
        return BatchDecision(admit=(replica.queue[0],))


class ReturnsList(Policy):
    def next_batch(self, replica, now_s):
        return list(replica.queue[:1])


class NeverRuns(Policy):
    """Always waits: the smoke simulation stalls."""

    def next_batch(self, replica, now_s):
        return WAIT


class GlobalRandomRouter(Policy):
    """Draws from the global random module instead of its own generator."""

    def pick_replica(self, request, replicas, now_s):
        return random.randrange(len(replicas))


class OutOfRangeRouter(RoundRobin):
    def pick_replica(self, request, replicas, now_s):
        return super().pick_replica(request, replicas, now_s) + 1


class BoolRouter(Policy):
    def pick_replica(self, request, replicas, now_s):
        return True


class NanKey(Policy):
    def key(self, request, now_s):
        return float("nan") if request.priority == 2 else request.arrival_s


class StringKey(Policy):
    def key(self, request, now_s):
        return str(request.arrival_s)


class IntAdmit(Policy):
    def key(self, request, now_s):
        return request.arrival_s

    def admit(self, request, replica, now_s):
        return 1


class Crashes(Policy):
    def pick_replica(self, request, replicas, now_s):
        return [0][len(replicas)]


@pytest.mark.parametrize(
    ("family", "policy", "params", "message"),
    [
        ("batching", AdmitsStranger, {}, "not waiting in the queue"),
        ("batching", AdmitsTwice, {}, "twice"),
        ("batching", AdmitsAndDrops, {}, "both admitted and dropped"),
        ("batching", OverBatches, {"max_batch_size": 2}, r"exceed its max_batch_size \(2\)"),
        ("batching", OverTokens, {"max_batch_tokens": 4}, r"exceed its token budget \(4\)"),
        ("batching", KvBlind, {"max_batch_size": 8}, "beyond the KV cache"),
        ("batching", MutatesQueue, {}, "mutated the read-only view: replicas.0..queue"),
        ("batching", WakesNow, {}, r"asked to wake at .* <= now_s"),
        ("batching", ReturnsList, {}, "returned list, not a BatchDecision"),
        ("batching", NeverRuns, {}, "stalled"),
        ("scheduling", MutatesRequest, {}, r"mutated the read-only view: request \d+"),
        ("scheduling", NanKey, {}, "not a finite number"),
        ("scheduling", StringKey, {}, "not a float"),
        ("scheduling", IntAdmit, {}, "admit returned 1 .int., not a bool"),
        ("routing", GlobalRandomRouter, {}, "pick_replica is not deterministic"),
        ("routing", OutOfRangeRouter, {}, "out of range"),
        ("routing", BoolRouter, {}, "not an int or None"),
        ("routing", Crashes, {}, "pick_replica raised IndexError"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else getattr(v, "__name__", None),
)
def test_broken_policies_are_caught(family, policy, params, message):
    with pytest.raises(PolicyCheckError, match=message):
        check_policy(family, policy, params)


def test_a_nondeterministic_batcher_is_caught():
    class Coin(Policy):
        def next_batch(self, replica, now_s):
            if replica.running or not replica.queue:
                return WAIT
            if np.random.default_rng().random() < 0.5:
                return BatchDecision(admit=(replica.queue[0],))
            return WAIT

    with pytest.raises(PolicyCheckError, match="next_batch is not deterministic"):
        check_policy("batching", Coin)


def test_a_router_using_its_own_generator_is_deterministic():
    class Seeded(Policy):
        def pick_replica(self, request, replicas, now_s):
            return int(self.rng.integers(len(replicas)))

    check_policy("routing", Seeded)


def test_the_stub_replica_reserves_kv_for_running_requests():
    running = [make_request(0, 0.0, input_tokens=10, output_tokens=5), make_request(1, 0.0, input_tokens=3)]
    view = StubReplica(running=running, queue=[make_request(2, 0.1)], autoregressive=True, kv_capacity_tokens=100)
    assert (view.kv_used_tokens, view.outstanding, view.busy) == (18, 3, True)
    assert StubReplica(running=running).kv_used_tokens == 0  # not a decoder: no KV cache
