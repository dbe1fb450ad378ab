"""An example ldsim plug-in: a shortest-prompt-first scheduling policy and a routing function.

Copy this file beside an experiment YAML (or anywhere on ``sys.path``) and name its objects
as ``module:attribute``::

    models:
      bert:
        architecture: bert-base
        scheduling: {policy: "shortest_first:ShortestFirst", aging_tokens_per_s: 0}
    routing: {policy: "shortest_first:fewest_waiting"}

A scheduling policy only ranks requests: the engine keeps each replica's waiting queue sorted
by ``key`` (smaller first; equal keys in arrival order) and its batching policy takes requests
from the front. Ranking by prompt length is shortest-job-first when the service time grows
with the prompt, which minimises the mean wait of a single server (at the price of starving
long prompts under sustained overload; ``aging_tokens_per_s`` bounds that).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from simulator.policy import Policy, PolicyParams, ReplicaView, RequestView

__all__ = ["ShortestFirst", "fewest_waiting"]


class ShortestFirst(Policy):
    """Serve the waiting request with the fewest input tokens first.

    The key of a request is ``input_tokens + aging_tokens_per_s * arrival_s`` (tokens): with
    the default ``aging_tokens_per_s = 0`` it is the prompt length alone; a positive rate
    makes a request that arrived ``d`` seconds earlier rank as if ``aging_tokens_per_s * d``
    tokens shorter, so no request waits forever. The key is fixed when the request is
    enqueued, as the scheduling contract requires.
    """

    class Params(PolicyParams):
        """``aging_tokens_per_s`` (>= 0): tokens of priority a request gains per second of age."""

        aging_tokens_per_s: float = Field(default=0.0, ge=0)

    def key(self, request: RequestView, now_s: float) -> float:
        """Rank in tokens; smaller is served first."""
        return request.input_tokens + self.params.aging_tokens_per_s * request.arrival_s


def fewest_waiting(request: RequestView, replicas: Sequence[ReplicaView], now_s: float) -> int:
    """Route to the replica with the fewest waiting requests (the first such replica on a tie).

    A stateless routing policy may be a plain function with the signature of
    ``pick_replica``; it takes no parameters.
    """
    return min(range(len(replicas)), key=lambda i: len(replicas[i].queue))
