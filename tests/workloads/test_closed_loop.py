"""Closed-loop clients driven by the engine: each user waits for its answer, then thinks."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.conftest import CNN, LLM, run_doc


def _closed(doc, users, think, num_requests, **workload):
    doc = copy.deepcopy(doc)
    doc["workload"].pop("rate_rps", None)
    doc["workload"]["arrival"] = {"process": "closed_loop", "users": users, "think_time": think}
    doc["workload"]["num_requests"] = num_requests
    doc["workload"].update(workload)
    return doc


def _max_in_flight(df):
    times = np.concatenate([df["arrival_s"].to_numpy(), df["final_s"].to_numpy()])
    steps = np.concatenate([np.ones(len(df)), -np.ones(len(df))])
    order = np.lexsort((steps, times))  # at a tie, a completion frees its user before the next arrival
    return int(np.cumsum(steps[order]).max())


def test_one_user_with_a_fixed_think_time_issues_one_request_after_each_answer():
    doc = _closed(CNN, 1, {"dist": "fixed", "mean_s": 0.5}, 12)
    _, _, df = run_doc(doc)
    assert len(df) == 12 and (df["status"] == "completed").all()
    arrivals, finals = df["arrival_s"].to_numpy(), df["final_s"].to_numpy()
    assert arrivals[0] == pytest.approx(0.5)  # staggered start: one think time
    np.testing.assert_allclose(arrivals[1:], finals[:-1] + 0.5, rtol=0, atol=1e-12)


@pytest.mark.parametrize("users", [1, 4, 16])
def test_never_more_requests_in_flight_than_users(users):
    doc = _closed(LLM, users, {"mean_s": 0.3}, 120)
    _, _, df = run_doc(doc)
    assert len(df) == 120 and (df["status"] == "completed").all()
    assert _max_in_flight(df) <= users
    if users > 1:
        assert _max_in_flight(df) > 1  # the users really overlapped


def test_throughput_obeys_the_interactive_response_time_law():
    # N = X (R + Z): throughput X times (mean response R + mean think Z) is the user count
    users, think_s = 8, 0.05
    doc = _closed(LLM, users, {"mean_s": think_s}, 2000)
    doc["models"]["llama"]["replicas"] = 1
    _, result, df = run_doc(doc)
    done = df[df["status"] == "completed"]
    response_s = (done["final_s"] - done["arrival_s"]).mean()
    span_s = result.sim_end_s
    throughput_rps = len(done) / span_s
    assert throughput_rps * (response_s + think_s) == pytest.approx(users, rel=0.05)


def test_a_duration_cuts_the_loop_short_and_keeps_only_the_issued_requests():
    doc = _closed(LLM, 4, {"dist": "fixed", "mean_s": 1.0}, 10_000, duration_s=20.0)
    _, _, df = run_doc(doc)
    assert 4 < len(df) < 10_000
    assert df["arrival_s"].max() < 20.0 and not df["arrival_s"].isna().any()
    assert (df["status"] == "completed").all()
    assert list(df["request_id"]) == list(range(len(df)))


def test_users_starting_together_and_a_small_budget():
    doc = _closed(CNN, 10, {"mean_s": 1.0}, 6)
    doc["workload"]["arrival"]["start"] = "together"
    _, _, df = run_doc(doc)
    assert len(df) == 6 and (df["arrival_s"] == 0.0).all()


def test_a_closed_loop_run_is_deterministic():
    doc = _closed(LLM, 5, {"dist": "gamma", "mean_s": 0.2, "cv": 2.0}, 80)
    _, _, first = run_doc(doc)
    _, _, second = run_doc(doc)
    assert first.equals(second)
