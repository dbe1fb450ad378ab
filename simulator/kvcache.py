"""The paged KV cache of a decoder replica, with prefix caching and host swap space.

Memory is a pool of blocks of ``block_tokens`` tokens (vLLM's PagedAttention). A request holds
``ceil(tokens_stored / block_tokens)`` blocks, allocated as its context grows; every device of
a tensor-parallel group holds the same number of blocks (each for its share of the KV heads).
The number of blocks is computed as vLLM computes it (``Worker.determine_num_available_blocks``)::

    blocks = floor((device_memory x memory_utilization - weights - peak_activations - reserve)
                   / (block_tokens x kv_bytes_per_token_per_device))

with the peak activations of one forward pass of ``max_num_batched_tokens`` tokens. A
``watermark`` fraction of the blocks is kept free when admitting new requests, so that running
requests can grow without immediate preemption (vLLM's ``watermark``, default 1%).

Prefix caching: a prompt may carry the ids of its prefix units (``prefix_block_tokens`` tokens
each, e.g. the Mooncake trace's 512-token ``hash_ids``). After a request's prompt is prefilled,
each of its complete units becomes a cache entry of ``prefix_block_tokens / block_tokens``
blocks; a later request whose leading ids are resident skips prefilling them. Entries in use are
pinned (reference-counted); unused ones are evicted least-recently-used when blocks are needed.

Swap: a preempted request's blocks may move to host memory (``swap_space_gib`` per device, as
vLLM's ``swap_space``) and back, at the host link's bandwidth.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["KVCache", "KVConfig", "blocks_for"]


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks needed to hold ``tokens`` tokens."""
    return -(-tokens // block_tokens)


@dataclass(frozen=True)
class KVConfig:
    """Sizes of one replica's KV cache (see the module docstring for how they are derived)."""

    total_blocks: int
    block_tokens: int
    block_bytes: float
    watermark_blocks: int = 0
    cpu_blocks: int = 0
    prefix_block_tokens: int = 0  # 0: no prefix caching

    @property
    def capacity_tokens(self) -> int:
        """Tokens the whole cache holds."""
        return self.total_blocks * self.block_tokens


@dataclass
class _Entry:
    blocks: int
    refs: int = 0


@dataclass
class KVCache:
    """Block accounting of one replica. Invariants: ``0 <= free_blocks``; ``free_blocks +
    used_blocks + cached blocks == total_blocks``; an entry with ``refs > 0`` is never evicted."""

    config: KVConfig
    free_blocks: int = field(init=False)
    cpu_free_blocks: int = field(init=False)
    evictable_blocks: int = field(init=False, default=0)
    _entries: dict[int, _Entry] = field(init=False, default_factory=dict)
    _lru: OrderedDict[int, None] = field(init=False, default_factory=OrderedDict)
    prefix_lookups_tokens: int = field(init=False, default=0)
    prefix_hit_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.free_blocks = self.config.total_blocks
        self.cpu_free_blocks = self.config.cpu_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks that can be allocated now: free ones plus evictable cached ones."""
        return self.free_blocks + self.evictable_blocks

    @property
    def used_blocks(self) -> int:
        """Blocks held by requests or by pinned cache entries."""
        return self.config.total_blocks - self.free_blocks - self.evictable_blocks

    def allocate(self, n: int) -> bool:
        """Take ``n`` blocks, evicting unused cache entries (LRU) if needed; ``False`` (and no
        change) when even eviction cannot free enough."""
        if n <= self.free_blocks:
            self.free_blocks -= n
            return True
        if n > self.available_blocks:
            return False
        while self.free_blocks < n:
            key, _ = self._lru.popitem(last=False)
            entry = self._entries.pop(key)
            self.evictable_blocks -= entry.blocks
            self.free_blocks += entry.blocks
        self.free_blocks -= n
        return True

    def release(self, n: int) -> None:
        """Return ``n`` blocks to the free pool."""
        self.free_blocks += n

    # ---- prefix caching ------------------------------------------------------------------

    @property
    def prefix_blocks(self) -> int:
        """KV blocks per prefix unit (0 without prefix caching)."""
        unit = self.config.prefix_block_tokens
        return unit // self.config.block_tokens if unit else 0

    def pin_prefix(self, ids: Sequence[int], prompt_tokens: int) -> tuple[int, int]:
        """Pin the resident leading units of ``ids``; return ``(units, tokens)`` reused.

        At least one prompt token is always left to compute (the step must produce logits), so
        a prompt fully in the cache reuses all but its last unit.
        """
        unit = self.config.prefix_block_tokens
        if not unit or not len(ids):
            return 0, 0
        usable = min(len(ids), (prompt_tokens - 1) // unit)
        hits = 0
        while hits < usable and ids[hits] in self._entries:
            key = ids[hits]
            entry = self._entries[key]
            if entry.refs == 0:
                del self._lru[key]
                self.evictable_blocks -= entry.blocks
            entry.refs += 1
            hits += 1
        return hits, hits * unit

    def peek_prefix(self, ids: Sequence[int], prompt_tokens: int) -> tuple[int, int]:
        """Without pinning: how many leading units of ``ids`` :meth:`pin_prefix` would reuse,
        and how many of those are unused (evictable) entries."""
        unit = self.config.prefix_block_tokens
        if not unit or not len(ids):
            return 0, 0
        usable = min(len(ids), (prompt_tokens - 1) // unit)
        hits = idle = 0
        while hits < usable:
            entry = self._entries.get(ids[hits])
            if entry is None:
                break
            idle += entry.refs == 0
            hits += 1
        return hits, idle

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        """Count a prefill's prompt and how much of it the cache supplied (for the hit rate)."""
        self.prefix_lookups_tokens += prompt_tokens
        self.prefix_hit_tokens += hit_tokens

    def publish_prefix(self, ids: Sequence[int], first: int, prompt_tokens: int) -> tuple[int, int]:
        """After a prefill, hand the request's complete units ``ids[first:]`` to the cache.

        Each unit becomes a cache entry made of the request's own blocks, pinned by it; a unit
        that a concurrent request cached meanwhile is pinned instead and the request's duplicate
        blocks are freed. Return ``(units, blocks)``: the units the request now pins in all
        (``ids[:units]``), and how many of its private blocks left its private count.
        """
        unit = self.config.prefix_block_tokens
        if not unit or not len(ids):
            return first, 0
        complete = max(first, min(len(ids), prompt_tokens // unit))
        per = self.prefix_blocks
        for key in ids[first:complete]:
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(per, refs=1)
                continue
            if entry.refs == 0:
                del self._lru[key]
                self.evictable_blocks -= entry.blocks
            entry.refs += 1
            self.free_blocks += per  # the request's duplicate copy
        return complete, (complete - first) * per

    def unpin_prefix(self, ids: Sequence[int], count: int) -> None:
        """Release a request's hold on the first ``count`` entries of ``ids``."""
        for key in ids[:count]:
            entry = self._entries.get(key)
            if entry is None:
                continue
            entry.refs -= 1
            if entry.refs == 0:
                self._lru[key] = None
                self.evictable_blocks += entry.blocks

    # ---- swap ----------------------------------------------------------------------------

    def swap_out(self, n: int) -> bool:
        """Move ``n`` blocks of a request to host memory; ``False`` if host space lacks."""
        if n > self.cpu_free_blocks:
            return False
        self.cpu_free_blocks -= n
        self.free_blocks += n
        return True

    def swap_in(self, n: int) -> bool:
        """Bring ``n`` blocks back from host memory; ``False`` if device blocks lack."""
        if not self.allocate(n):
            return False
        self.cpu_free_blocks += n
        return True
